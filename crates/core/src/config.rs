//! One typed configuration for every command and service.
//!
//! Sources, later ones winning: built-in defaults, the TOML file
//! (`datafactory.toml` in the working directory, or `--config PATH`),
//! `DATAFACTORY_*` environment variables (nested keys joined by `__`, e.g.
//! `DATAFACTORY_CHUNKING__MAX_TOKENS=256`), then command-line flags. The result
//! is validated once; every error names the offending key.

use figment::providers::{Env, Format as _, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The configuration file read when `--config` is not given (if it exists).
pub const DEFAULT_CONFIG_FILE: &str = "datafactory.toml";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the store lives (SQLite database and word index).
    pub data_dir: PathBuf,
    pub ingest: IngestConfig,
    pub chunking: ChunkingConfig,
    pub embedding: EmbeddingConfig,
    pub vectors: VectorConfig,
    pub search: SearchConfig,
    pub rerank: RerankConfig,
    pub server: ServerConfig,
    pub analysis: AnalysisConfig,
    pub enrichment: EnrichmentConfig,
    pub remote: RemoteConfig,
    pub store: StoreConfig,
}

/// How the clients of remote model workers (embedding: `embedding.remote_urls`;
/// reranking: `rerank.url` and `rerank.urls`) batch, retry and fail over.
/// (A reranking request's time limit is `rerank.timeout_seconds`.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteConfig {
    /// Time limit of one embedding request, seconds.
    pub timeout_seconds: u64,
    /// Texts (or query-passage pairs) per request at most.
    pub batch: usize,
    /// Requests in flight per endpoint at most.
    pub parallel: usize,
    /// Tries of one request, on different endpoints where there are several.
    pub attempts: u32,
    /// Wait before a retry (doubled at each further try), milliseconds.
    pub backoff_ms: u64,
    /// Failed requests in a row that take an endpoint out of the pool.
    pub failures_before_down: u32,
    /// How long an endpoint stays out before it is tried again, seconds.
    pub down_seconds: u64,
}

impl Default for RemoteConfig {
    fn default() -> Self {
        RemoteConfig {
            timeout_seconds: 60,
            batch: 32,
            parallel: 2,
            attempts: 4,
            backoff_ms: 200,
            failures_before_down: 2,
            down_seconds: 30,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Collection used when a command names none.
    pub default_collection: String,
    /// Files larger than this are refused (bytes).
    pub max_file_bytes: u64,
    /// Cap on the decompressed size of a container format (DOCX), against zip bombs (bytes).
    pub max_decompressed_bytes: u64,
    /// Extensions taken when walking a folder; files named explicitly are always tried.
    pub extensions: Vec<String>,
    /// Parallel parse-and-chunk workers; 0 means one per CPU.
    pub workers: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChunkingConfig {
    /// Upper bound on a chunk's tokens.
    pub max_tokens: usize,
    /// Tokens of the previous chunk (same section) repeated at the start of the next.
    pub overlap_tokens: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddingConfig {
    /// The embedding model: a local directory, or a Hugging Face repository id
    /// (looked up in the Hugging Face cache, then downloaded if allowed).
    /// Empty: no embeddings (words only).
    pub model: String,
    /// Repository revision for Hugging Face ids.
    pub revision: String,
    /// Download from the Hugging Face hub when the model is not cached
    /// (never when `HF_HUB_OFFLINE=1`).
    pub allow_download: bool,
    /// `cpu`, `cuda` (the first visible GPU; pin it with CUDA_VISIBLE_DEVICES), or `auto`.
    pub device: String,
    /// `auto` (f32 on CPU, f16 on GPU), `f32`, `f16`, `bf16`, or `int8` (CPU
    /// only: the encoder's linear layers in int8, AVX-512 VNNI where available).
    pub dtype: String,
    /// Tokens per passage; longer passages are truncated.
    pub max_length: usize,
    /// Texts per batch at most.
    pub batch_size: usize,
    /// Padded tokens per batch at most (batch size × longest text).
    pub batch_tokens: usize,
    /// Compute sparse lexical weights when the model has a sparse head (bge-m3).
    pub sparse: bool,
    /// Put before every query / passage (for models trained with instructions).
    pub query_prefix: String,
    pub passage_prefix: String,
    /// Embed the document title and heading path with the chunk ("contextual chunk header").
    pub include_headings: bool,
    /// Embedding workers: text-embeddings-inference-compatible endpoints
    /// (`POST /embed`, `GET /info`), such as other `datafactory serve` nodes
    /// or TEI. When set, no model is loaded here: `model` and the settings
    /// above are the workers' business. Batching, retries and failover:
    /// `[remote]`.
    pub remote_urls: Vec<String>,
    /// Bearer key sent to the embedding workers.
    pub remote_api_key: String,
    /// TEI's `prompt_name` sent with queries to the workers (e.g. `query`
    /// for a model with a query instruction); empty: queries are embedded
    /// as passages are (right for bge-m3, which has no instruction).
    pub remote_query_prompt: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SearchConfig {
    /// Results returned when a request names no count.
    pub top_k: usize,
    /// Weight of a match in the document title, relative to the chunk text (1.0).
    pub title_boost: f32,
    /// Weight of a match in the chunk's heading path, relative to the chunk text.
    pub heading_boost: f32,
    /// `hybrid`, `lexical`, `dense` or `sparse`. Hybrid falls back to lexical
    /// when no embedding model is available.
    pub mode: String,
    /// Candidates taken from each retriever before fusion.
    pub candidates: usize,
    /// Weighted reciprocal-rank fusion: score = Σ weight / (rrf_k + rank).
    pub rrf_k: f32,
    pub weight_words: f32,
    pub weight_dense: f32,
    /// 0 leaves the sparse retriever out of hybrid search.
    pub weight_sparse: f32,
}

/// Reranking of search candidates with a cross-encoder, and the reranker
/// service (`datafactory rerank-server`), which reads the model settings here
/// and the limits and API keys of `[server]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RerankConfig {
    /// How search reranks: `off`, `remote` (through the reranker service at
    /// `url`) or `local` (the model in this process).
    pub mode: String,
    /// The reranker service, for `mode = "remote"`.
    pub url: String,
    /// More reranker services (TEI-compatible `POST /rerank`), pooled with
    /// `url`: batches spread over them, failover as `[remote]` says.
    pub urls: Vec<String>,
    /// Bearer key sent to the reranker service (one of its `server.api_keys`).
    pub api_key: String,
    /// Time limit of one call to the reranker service, seconds.
    pub timeout_seconds: u64,
    /// Fused candidates reranked per search (the best ones; the rest keep
    /// their fused order below them).
    pub candidates: usize,
    /// Address `datafactory rerank-server` listens on.
    pub address: String,
    /// The cross-encoder: a local directory or a Hugging Face repository id
    /// (looked up in the Hugging Face cache, then downloaded if allowed).
    pub model: String,
    pub revision: String,
    pub allow_download: bool,
    /// `cpu`, `cuda` or `auto`, as `embedding.device`.
    pub device: String,
    /// `auto`, `f32`, `f16`, `bf16` or `int8`, as `embedding.dtype`.
    pub dtype: String,
    /// Tokens of a query-passage pair (special tokens included); the passage
    /// is truncated first.
    pub max_length: usize,
    /// Tokens of the query at most; 0 means three quarters of `max_length`
    /// (as FlagEmbedding's reranker).
    pub query_max_length: usize,
    /// Pairs per batch at most.
    pub batch_size: usize,
    /// Padded tokens per batch at most (pairs × longest pair).
    pub batch_tokens: usize,
}

/// The HTTP service (`datafactory serve`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub address: String,
    /// Bearer tokens accepted on every route but `/health`; empty: no authentication.
    pub api_keys: Vec<String>,
    /// Largest request body (uploads included), bytes; larger ones get 413.
    pub max_body_bytes: u64,
    /// Requests handled at once; more get 429.
    pub max_concurrent_requests: usize,
    /// Per-request time limit, seconds (an ingest with `wait=true` included).
    pub request_timeout_seconds: u64,
}

/// Phase 1 of an ingest: what kind of document this is and how to cut it
/// (`datafactory-analyze`; `datafactory analyze-server` serves it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalysisConfig {
    /// `heuristic` (fast, deterministic) or `llm` (asks `llm_url`; falls back
    /// to the heuristics when the LLM fails, times out or answers badly).
    pub route: String,
    /// A running analyzer service (`http://host:9100`) to ask instead of
    /// analysing in-process; empty: in-process. It falls back to in-process
    /// heuristics when it cannot be reached.
    pub url: String,
    /// Bearer key for `url`.
    pub api_key: String,
    /// An OpenAI-compatible server (`http://host:8080/v1`) for `route = "llm"`.
    pub llm_url: String,
    pub llm_model: String,
    /// Bearer key for `llm_url`.
    pub llm_api_key: String,
    /// Time allowed for one analysis by the LLM or the remote analyzer, seconds.
    pub timeout_seconds: u64,
    /// Chunk each document by its plan; false: every document by `[chunking]`.
    pub follow_plan: bool,
    /// Where `datafactory analyze-server` listens.
    pub address: String,
}

/// The dense vector index (HNSW, usearch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VectorConfig {
    /// Storage of vectors in the index: `f16` (default), `f32` or `i8`.
    /// SQLite always keeps the f32 vectors, so the index can be rebuilt.
    pub quantization: String,
    /// HNSW graph degree (M).
    pub connectivity: usize,
    /// HNSW efConstruction.
    pub expansion_add: usize,
    /// HNSW efSearch.
    pub expansion_search: usize,
    /// Below this many vectors, search is exact (brute force) instead of HNSW.
    pub exact_below: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./datafactory-data"),
            ingest: IngestConfig::default(),
            chunking: ChunkingConfig::default(),
            embedding: EmbeddingConfig::default(),
            vectors: VectorConfig::default(),
            search: SearchConfig::default(),
            rerank: RerankConfig::default(),
            server: ServerConfig::default(),
            analysis: AnalysisConfig::default(),
            enrichment: EnrichmentConfig::default(),
            remote: RemoteConfig::default(),
            store: StoreConfig::default(),
        }
    }
}

/// Where documents, chunks, vectors and jobs live: the embedded store in
/// `data_dir` (SQLite, tantivy, usearch), or a PostgreSQL database with
/// pgvector shared by several nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `embedded` (default) or `postgres`.
    pub backend: String,
    /// The PostgreSQL connection URL (`postgres://user:password@host:port/database`);
    /// The URL's `sslmode` (`disable`, `prefer`, the default, or `require`) chooses TLS.
    pub url: String,
    /// PEM file of the certificate authority that signed the server's
    /// certificate (managed offerings publish theirs); empty: the Mozilla roots.
    pub ca_file: String,
    /// The schema DataFactory's tables live in (created if missing).
    pub schema: String,
    /// Connections kept open to PostgreSQL.
    pub pool_size: usize,
    /// How long opening a connection may take.
    pub connect_timeout_seconds: u64,
    /// The longest any one statement may run (0: no limit).
    pub statement_timeout_seconds: u64,
    /// A fleet node's lease on an ingest job: renewed every third of it; a
    /// node silent for this long loses the job to another node.
    pub lease_seconds: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: "embedded".to_string(),
            url: String::new(),
            ca_file: String::new(),
            schema: "datafactory".to_string(),
            pool_size: 8,
            connect_timeout_seconds: 10,
            statement_timeout_seconds: 300,
            lease_seconds: 30,
        }
    }
}

/// Contextual enrichment: a short context per chunk, written by an LLM (a pool
/// of Ollama or OpenAI-compatible servers) or, without one, made from the
/// document's structure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnrichmentConfig {
    /// `auto`: LLM contexts when endpoints are configured, heuristic ones
    /// otherwise; `heuristic`: never call an LLM; `off`: no contexts.
    pub mode: String,
    /// `affine`: keep a document on few slots so its prefix stays cached;
    /// `round_robin`: scatter chunks over every slot (the seed's thread pool).
    pub schedule: String,
    /// The prompt: empty for the built-in template (after Anthropic's
    /// contextual-retrieval prompt); else a text with `{document}` and `{chunk}`.
    pub template: String,
    /// Names the custom template's version; part of the cache key, so change it
    /// whenever the template changes meaning. Ignored for the built-in one.
    pub template_version: String,
    /// Cap on the answer (tokens).
    pub max_answer_tokens: u32,
    pub temperature: f32,
    /// Per-request timeout (seconds), and to connect (seconds).
    pub request_timeout_seconds: u64,
    pub connect_timeout_seconds: u64,
    /// Attempts per chunk (on other endpoints where there are) before the chunk
    /// gets a heuristic context.
    pub attempts: u32,
    /// First wait before a retry (milliseconds); doubles per attempt.
    pub backoff_ms: u64,
    /// Consecutive failures that take an endpoint out of the pool, and how
    /// long it stays out before it is tried again (seconds).
    pub failures_before_down: u32,
    pub down_seconds: u64,
    /// Ollama's `keep_alive` (models stay loaded between documents).
    pub keep_alive: String,
    pub endpoints: Vec<EndpointConfig>,
}

/// One LLM server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EndpointConfig {
    /// `ollama` (`/api/chat`) or `openai` (`/v1/chat/completions`: vLLM,
    /// llama.cpp's llama-server, TGI).
    pub kind: String,
    /// Base URL, e.g. `http://127.0.0.1:11434`.
    pub url: String,
    pub model: String,
    /// Requests it serves at once (OLLAMA_NUM_PARALLEL, llama-server's `-np`).
    pub slots: usize,
    /// The model's context (tokens) as served: Ollama gets `num_ctx` up to this;
    /// for llama-server, the per-slot context (`-c` / `-np`).
    pub context_tokens: usize,
    /// Pin requests to slots with llama-server's `id_slot` (openai kind only).
    pub pin_slots: bool,
    /// The server shares one prefix cache across its slots (vLLM's automatic
    /// prefix caching): a warmed document then fans out at no prefill cost.
    pub shared_prefix_cache: bool,
    /// Count prompt tokens with the server's `/tokenize` (llama-server);
    /// else a model-free estimate with a safety margin.
    pub tokenize: bool,
    /// Without `tokenize`: characters per token of this model's tokenizer, for
    /// the estimate (0: a model-free estimate with a third added).
    pub chars_per_token: f64,
    /// Bearer token, if the server wants one.
    pub api_key: String,
    /// Extra JSON fields merged into each request body (e.g. `logit_bias`).
    pub extra: std::collections::BTreeMap<String, serde_json::Value>,
}

impl Default for EnrichmentConfig {
    fn default() -> Self {
        EnrichmentConfig {
            mode: "auto".into(),
            schedule: "affine".into(),
            template: String::new(),
            template_version: String::new(),
            max_answer_tokens: 100,
            temperature: 0.0,
            request_timeout_seconds: 120,
            connect_timeout_seconds: 5,
            attempts: 4,
            backoff_ms: 250,
            failures_before_down: 3,
            down_seconds: 30,
            keep_alive: "30m".into(),
            endpoints: Vec::new(),
        }
    }
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            kind: "ollama".into(),
            url: "http://127.0.0.1:11434".into(),
            model: "llama3.1:8b".into(),
            slots: 1,
            context_tokens: 8192,
            pin_slots: false,
            shared_prefix_cache: false,
            tokenize: false,
            chars_per_token: 0.0,
            api_key: String::new(),
            extra: Default::default(),
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            default_collection: "default".to_string(),
            max_file_bytes: 100 * 1024 * 1024,
            max_decompressed_bytes: 256 * 1024 * 1024,
            extensions: [
                "txt", "text", "md", "markdown", "html", "htm", "xhtml", "pdf", "docx", "jsonl", "ndjson",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            workers: 0,
        }
    }
}

impl Default for ChunkingConfig {
    fn default() -> Self {
        ChunkingConfig { max_tokens: 512, overlap_tokens: 0 }
    }
}

impl Default for EmbeddingConfig {
    fn default() -> Self {
        EmbeddingConfig {
            model: "BAAI/bge-m3".to_string(),
            revision: "main".to_string(),
            allow_download: true,
            device: "auto".to_string(),
            dtype: "auto".to_string(),
            max_length: 512,
            batch_size: 32,
            batch_tokens: 16_384,
            sparse: true,
            query_prefix: String::new(),
            passage_prefix: String::new(),
            include_headings: true,
            remote_urls: Vec::new(),
            remote_api_key: String::new(),
            remote_query_prompt: String::new(),
        }
    }
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            top_k: 10,
            title_boost: 0.5,
            heading_boost: 0.8,
            mode: "hybrid".to_string(),
            candidates: 150,
            rrf_k: 60.0,
            weight_words: 0.2,
            weight_dense: 0.8,
            weight_sparse: 0.0,
        }
    }
}

impl Default for RerankConfig {
    fn default() -> Self {
        RerankConfig {
            mode: "off".to_string(),
            url: "http://127.0.0.1:9200".to_string(),
            urls: Vec::new(),
            api_key: String::new(),
            timeout_seconds: 30,
            candidates: 50,
            address: "0.0.0.0:9200".to_string(),
            model: "BAAI/bge-reranker-v2-m3".to_string(),
            revision: "main".to_string(),
            allow_download: true,
            device: "auto".to_string(),
            dtype: "auto".to_string(),
            max_length: 512,
            query_max_length: 0,
            batch_size: 32,
            batch_tokens: 16_384,
        }
    }
}

impl RerankConfig {
    /// The query's token limit: `query_max_length`, or 3/4 of `max_length`.
    pub fn effective_query_max_length(&self) -> usize {
        match self.query_max_length {
            0 => self.max_length * 3 / 4,
            n => n.min(self.max_length),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            address: "0.0.0.0:9000".to_string(),
            api_keys: Vec::new(),
            max_body_bytes: 256 * 1024 * 1024,
            max_concurrent_requests: 256,
            request_timeout_seconds: 600,
        }
    }
}

impl Default for AnalysisConfig {
    fn default() -> Self {
        AnalysisConfig {
            route: "heuristic".to_string(),
            url: String::new(),
            api_key: String::new(),
            llm_url: String::new(),
            llm_model: String::new(),
            llm_api_key: String::new(),
            timeout_seconds: 30,
            follow_plan: true,
            address: "0.0.0.0:9100".to_string(),
        }
    }
}

impl Default for VectorConfig {
    fn default() -> Self {
        VectorConfig {
            quantization: "f16".to_string(),
            connectivity: 16,
            expansion_add: 128,
            expansion_search: 64,
            exact_below: 20_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("configuration key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

impl Config {
    /// Loads defaults ← file ← environment ← `overrides` (a serialisable
    /// partial configuration, e.g. from flags), then validates.
    ///
    /// `file`: `Some(path)` must exist; `None` reads `datafactory.toml` if present.
    pub fn load<O: Serialize>(file: Option<&Path>, overrides: &O) -> Result<Config, ConfigError> {
        Self::load_with_env(file, overrides, Env::prefixed("DATAFACTORY_"))
    }

    fn load_with_env<O: Serialize>(
        file: Option<&Path>,
        overrides: &O,
        env: Env,
    ) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(path) => {
                if !path.exists() {
                    return Err(ConfigError::MissingFile(path.to_path_buf()));
                }
                figment = figment.merge(Toml::file_exact(path));
            }
            None => {
                if Path::new(DEFAULT_CONFIG_FILE).exists() {
                    figment = figment.merge(Toml::file_exact(DEFAULT_CONFIG_FILE));
                }
            }
        }
        // Variables of the programs, not configuration keys: the file
        // (`DATAFACTORY_CONFIG`), the log filter, the CLI client's service
        // and key (`DATAFACTORY_SERVER`, `DATAFACTORY_API_KEY`; the
        // `[server]` section's keys have a `SERVER__` prefix), the launcher's
        // deployment file, stage profiling, and the test suite's
        // `DATAFACTORY_TEST_*` paths.
        let env = env
            .split("__")
            .ignore(&["config", "log", "server", "api_key", "deploy", "profile_stages"])
            .filter(|key| !key.as_str().to_ascii_lowercase().starts_with("test_"));
        let config: Config = figment
            .merge(env)
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(|e| ConfigError::Load(Box::new(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(key: &'static str, message: impl Into<String>) -> Result<(), ConfigError> {
            Err(ConfigError::Invalid { key, message: message.into() })
        }
        if self.data_dir.as_os_str().is_empty() {
            return invalid("data_dir", "must not be empty");
        }
        if self.ingest.default_collection.trim().is_empty() {
            return invalid("ingest.default_collection", "must not be empty");
        }
        if self.ingest.max_file_bytes == 0 {
            return invalid("ingest.max_file_bytes", "must be greater than 0");
        }
        if self.ingest.max_decompressed_bytes == 0 {
            return invalid("ingest.max_decompressed_bytes", "must be greater than 0");
        }
        if self.chunking.max_tokens < 16 {
            return invalid(
                "chunking.max_tokens",
                format!("must be at least 16 (is {})", self.chunking.max_tokens),
            );
        }
        if self.chunking.overlap_tokens * 2 > self.chunking.max_tokens {
            return invalid(
                "chunking.overlap_tokens",
                format!(
                    "must be at most half of chunking.max_tokens ({}), is {}",
                    self.chunking.max_tokens, self.chunking.overlap_tokens
                ),
            );
        }
        let n = &self.enrichment;
        if !matches!(n.mode.as_str(), "auto" | "heuristic" | "off") {
            return invalid("enrichment.mode", format!("must be auto, heuristic or off, is {:?}", n.mode));
        }
        if !matches!(n.schedule.as_str(), "affine" | "round_robin") {
            return invalid(
                "enrichment.schedule",
                format!("must be affine or round_robin, is {:?}", n.schedule),
            );
        }
        if !n.template.is_empty() {
            if !n.template.contains("{document}") || !n.template.contains("{chunk}") {
                return invalid("enrichment.template", "must contain {document} and {chunk}");
            }
            if n.template_version.trim().is_empty() {
                return invalid("enrichment.template_version", "must name the custom template's version");
            }
        }
        if n.max_answer_tokens == 0 || n.max_answer_tokens > 4096 {
            return invalid("enrichment.max_answer_tokens", "must be between 1 and 4096");
        }
        if n.attempts == 0 {
            return invalid("enrichment.attempts", "must be at least 1");
        }
        if n.request_timeout_seconds == 0 {
            return invalid("enrichment.request_timeout_seconds", "must be greater than 0");
        }
        for ep in &n.endpoints {
            if !matches!(ep.kind.as_str(), "ollama" | "openai") {
                return invalid(
                    "enrichment.endpoints.kind",
                    format!("must be ollama or openai, is {:?}", ep.kind),
                );
            }
            if !(ep.url.starts_with("http://") || ep.url.starts_with("https://")) {
                return invalid(
                    "enrichment.endpoints.url",
                    format!("must be an http(s) URL, is {:?}", ep.url),
                );
            }
            if ep.model.trim().is_empty() {
                return invalid("enrichment.endpoints.model", "must not be empty");
            }
            if ep.slots == 0 || ep.slots > 256 {
                return invalid("enrichment.endpoints.slots", "must be between 1 and 256");
            }
            if ep.context_tokens < 256 {
                return invalid("enrichment.endpoints.context_tokens", "must be at least 256");
            }
        }
        let e = &self.embedding;
        if !matches!(e.device.as_str(), "cpu" | "cuda" | "auto") {
            return invalid("embedding.device", format!("must be cpu, cuda or auto, is {:?}", e.device));
        }
        if !matches!(e.dtype.as_str(), "auto" | "f32" | "f16" | "bf16" | "int8") {
            return invalid(
                "embedding.dtype",
                format!("must be auto, f32, f16, bf16 or int8, is {:?}", e.dtype),
            );
        }
        if e.max_length < 8 || e.max_length > 8192 {
            return invalid(
                "embedding.max_length",
                format!("must be between 8 and 8192, is {}", e.max_length),
            );
        }
        if e.batch_size == 0 {
            return invalid("embedding.batch_size", "must be at least 1");
        }
        if e.batch_tokens < e.max_length {
            return invalid(
                "embedding.batch_tokens",
                format!("must be at least embedding.max_length ({}), is {}", e.max_length, e.batch_tokens),
            );
        }
        let r = &self.rerank;
        if !matches!(r.mode.as_str(), "off" | "remote" | "local") {
            return invalid("rerank.mode", format!("must be off, remote or local, is {:?}", r.mode));
        }
        if r.mode == "remote" && !(r.url.starts_with("http://") || r.url.starts_with("https://")) {
            return invalid("rerank.url", format!("must be an http:// or https:// URL, is {:?}", r.url));
        }
        if r.timeout_seconds == 0 {
            return invalid("rerank.timeout_seconds", "must be at least 1");
        }
        let is_url = |u: &str| u.starts_with("http://") || u.starts_with("https://");
        if let Some(u) = r.urls.iter().find(|u| !is_url(u)) {
            return invalid("rerank.urls", format!("must be http:// or https:// URLs, has {u:?}"));
        }
        if let Some(u) = self.embedding.remote_urls.iter().find(|u| !is_url(u)) {
            return invalid("embedding.remote_urls", format!("must be http:// or https:// URLs, has {u:?}"));
        }
        let p = &self.remote;
        if p.timeout_seconds == 0 {
            return invalid("remote.timeout_seconds", "must be at least 1");
        }
        if p.batch == 0 {
            return invalid("remote.batch", "must be at least 1");
        }
        if p.parallel == 0 {
            return invalid("remote.parallel", "must be at least 1");
        }
        if p.attempts == 0 {
            return invalid("remote.attempts", "must be at least 1");
        }
        if r.candidates == 0 || r.candidates > 1_000 {
            return invalid("rerank.candidates", format!("must be between 1 and 1000, is {}", r.candidates));
        }
        if r.address.parse::<std::net::SocketAddr>().is_err() {
            return invalid(
                "rerank.address",
                format!("must be an IP address and port such as 0.0.0.0:9200, is {:?}", r.address),
            );
        }
        if !matches!(r.device.as_str(), "cpu" | "cuda" | "auto") {
            return invalid("rerank.device", format!("must be cpu, cuda or auto, is {:?}", r.device));
        }
        if !matches!(r.dtype.as_str(), "auto" | "f32" | "f16" | "bf16" | "int8") {
            return invalid(
                "rerank.dtype",
                format!("must be auto, f32, f16, bf16 or int8, is {:?}", r.dtype),
            );
        }
        if r.max_length < 8 || r.max_length > 8192 {
            return invalid("rerank.max_length", format!("must be between 8 and 8192, is {}", r.max_length));
        }
        if r.query_max_length > r.max_length.saturating_sub(4) {
            return invalid(
                "rerank.query_max_length",
                format!(
                    "must leave room for the passage: at most rerank.max_length - 4 ({}), is {}",
                    r.max_length.saturating_sub(4),
                    r.query_max_length
                ),
            );
        }
        if r.batch_size == 0 {
            return invalid("rerank.batch_size", "must be at least 1");
        }
        if r.batch_tokens < r.max_length {
            return invalid(
                "rerank.batch_tokens",
                format!("must be at least rerank.max_length ({}), is {}", r.max_length, r.batch_tokens),
            );
        }
        if self.search.top_k == 0 || self.search.top_k > 10_000 {
            return invalid("search.top_k", "must be between 1 and 10000");
        }
        if !matches!(self.search.mode.as_str(), "hybrid" | "lexical" | "dense" | "sparse") {
            return invalid(
                "search.mode",
                format!("must be hybrid, lexical, dense or sparse, is {:?}", self.search.mode),
            );
        }
        if self.search.candidates == 0 || self.search.candidates > 10_000 {
            return invalid("search.candidates", "must be between 1 and 10000");
        }
        if !matches!(self.vectors.quantization.as_str(), "f16" | "f32" | "i8") {
            return invalid(
                "vectors.quantization",
                format!("must be f16, f32 or i8, is {:?}", self.vectors.quantization),
            );
        }
        if self.vectors.connectivity < 2 {
            return invalid("vectors.connectivity", "must be at least 2");
        }
        if self.vectors.expansion_add == 0 || self.vectors.expansion_search == 0 {
            return invalid("vectors.expansion_search", "expansions must be at least 1");
        }
        match self.store.backend.as_str() {
            "embedded" => {}
            "postgres" => {
                if !(self.store.url.starts_with("postgres://") || self.store.url.starts_with("postgresql://"))
                {
                    return invalid("store.url", "must be a postgres:// URL when store.backend is postgres");
                }
                let s = &self.store.schema;
                if s.is_empty()
                    || s.len() > 63
                    || !s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                    || !s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                {
                    return invalid("store.schema", "must be a lower-case SQL identifier (a-z, 0-9, _)");
                }
                if self.store.pool_size == 0 {
                    return invalid("store.pool_size", "must be at least 1");
                }
                if self.store.connect_timeout_seconds == 0 {
                    return invalid("store.connect_timeout_seconds", "must be at least 1");
                }
                if self.store.lease_seconds < 2 {
                    return invalid("store.lease_seconds", "must be at least 2");
                }
            }
            other => {
                return invalid("store.backend", format!("must be embedded or postgres, is {other:?}"));
            }
        }
        if self.server.address.parse::<std::net::SocketAddr>().is_err() {
            return invalid(
                "server.address",
                format!("must be an IP address and port such as 0.0.0.0:9000, is {:?}", self.server.address),
            );
        }
        if self.server.api_keys.iter().any(|k| k.len() < 16) {
            return invalid("server.api_keys", "every key must be at least 16 characters");
        }
        if self.server.max_concurrent_requests == 0 {
            return invalid("server.max_concurrent_requests", "must be at least 1");
        }
        if self.server.request_timeout_seconds == 0 {
            return invalid("server.request_timeout_seconds", "must be at least 1");
        }
        let a = &self.analysis;
        if !matches!(a.route.as_str(), "heuristic" | "llm") {
            return invalid("analysis.route", format!("must be heuristic or llm, is {:?}", a.route));
        }
        if a.route == "llm" && a.url.is_empty() && (a.llm_url.is_empty() || a.llm_model.is_empty()) {
            return invalid(
                "analysis.llm_url",
                "route = \"llm\" needs analysis.llm_url and analysis.llm_model",
            );
        }
        for (key, url) in [("analysis.url", &a.url), ("analysis.llm_url", &a.llm_url)] {
            if !url.is_empty() && !url.starts_with("http://") && !url.starts_with("https://") {
                return invalid(key, format!("must start with http:// or https://, is {url:?}"));
            }
        }
        if a.timeout_seconds == 0 {
            return invalid("analysis.timeout_seconds", "must be at least 1");
        }
        if a.address.parse::<std::net::SocketAddr>().is_err() {
            return invalid(
                "analysis.address",
                format!("must be an IP address and port such as 0.0.0.0:9100, is {:?}", a.address),
            );
        }
        for (key, v) in [
            ("search.title_boost", self.search.title_boost),
            ("search.heading_boost", self.search.heading_boost),
            ("search.rrf_k", self.search.rrf_k),
            ("search.weight_words", self.search.weight_words),
            ("search.weight_dense", self.search.weight_dense),
            ("search.weight_sparse", self.search.weight_sparse),
        ] {
            if !v.is_finite() || v < 0.0 {
                return invalid(key, format!("must be a finite number >= 0, is {v}"));
            }
        }
        Ok(())
    }

    /// The effective configuration as TOML (for `datafactory config show`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// Validates a collection name: 1-64 characters of letters, digits, `-`, `_`, `.`.
pub fn validate_collection(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!("collection name must be 1 to 64 characters, got {} characters", name.len()));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
        return Err(format!(
            "collection name {name:?} has the character {c:?}; use letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn no_overrides() -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    fn env() -> Env {
        // A prefix no real environment has, so tests do not depend on the caller's.
        Env::prefixed("DATAFACTORY_TEST_UNUSED_")
    }

    /// The programs' own variables are not configuration keys; a section's
    /// keys still are, and a misspelt one is still an error.
    #[test]
    fn program_variables_are_not_configuration() {
        let vars = [
            ("DATAFACTORY_PROGTEST_API_KEY", "k"),
            ("DATAFACTORY_PROGTEST_SERVER", "http://127.0.0.1:9000"),
            ("DATAFACTORY_PROGTEST_DEPLOY", "deploy.toml"),
            ("DATAFACTORY_PROGTEST_PROFILE_STAGES", "1"),
            ("DATAFACTORY_PROGTEST_TEST_MINILM", "/models/minilm"),
            ("DATAFACTORY_PROGTEST_SERVER__MAX_BODY_BYTES", "12345"),
        ];
        for (k, v) in vars {
            std::env::set_var(k, v);
        }
        let c = Config::load_with_env(None, &no_overrides(), Env::prefixed("DATAFACTORY_PROGTEST_")).unwrap();
        assert_eq!(c.server.max_body_bytes, 12345);
        std::env::set_var("DATAFACTORY_PROGTEST_EMBEDING__MODEL", "x");
        let e = Config::load_with_env(None, &no_overrides(), Env::prefixed("DATAFACTORY_PROGTEST_"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("embeding"), "{e}");
        for (k, _) in vars {
            std::env::remove_var(k);
        }
        std::env::remove_var("DATAFACTORY_PROGTEST_EMBEDING__MODEL");
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn file_and_overrides_layer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("df.toml");
        std::fs::write(&path, "data_dir = \"/x\"\n[chunking]\nmax_tokens = 200\n").unwrap();
        let c = Config::load_with_env(Some(&path), &no_overrides(), env()).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/x"));
        assert_eq!(c.chunking.max_tokens, 200);
        let o = serde_json::json!({"chunking": {"max_tokens": 300}});
        let c = Config::load_with_env(Some(&path), &o, env()).unwrap();
        assert_eq!(c.chunking.max_tokens, 300);
        assert_eq!(c.data_dir, PathBuf::from("/x"));
    }

    #[test]
    fn errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("df.toml");
        std::fs::write(&path, "[chunking]\nmax_tokns = 200\n").unwrap();
        let e = Config::load_with_env(Some(&path), &no_overrides(), env()).unwrap_err().to_string();
        assert!(e.contains("max_tokns"), "{e}");
        std::fs::write(&path, "[chunking]\nmax_tokens = \"many\"\n").unwrap();
        let e = Config::load_with_env(Some(&path), &no_overrides(), env()).unwrap_err().to_string();
        assert!(e.contains("chunking.max_tokens"), "{e}");
        std::fs::write(&path, "[chunking]\nmax_tokens = 100\noverlap_tokens = 90\n").unwrap();
        let e = Config::load_with_env(Some(&path), &no_overrides(), env()).unwrap_err().to_string();
        assert!(e.contains("chunking.overlap_tokens"), "{e}");
        let e = Config::load_with_env(Some(&dir.path().join("none.toml")), &no_overrides(), env())
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
        std::fs::write(&path, "[analysis]\nroute = \"magic\"\n").unwrap();
        let e = Config::load_with_env(Some(&path), &no_overrides(), env()).unwrap_err().to_string();
        assert!(e.contains("analysis.route"), "{e}");
        std::fs::write(&path, "[analysis]\nroute = \"llm\"\n").unwrap();
        let e = Config::load_with_env(Some(&path), &no_overrides(), env()).unwrap_err().to_string();
        assert!(e.contains("analysis.llm_url"), "{e}");
    }

    #[test]
    fn rerank_section() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("df.toml");
        std::fs::write(
            &path,
            "[rerank]\nmode = \"remote\"\nurl = \"http://10.0.0.2:9200\"\ncandidates = 20\n",
        )
        .unwrap();
        let c = Config::load_with_env(Some(&path), &no_overrides(), env()).unwrap();
        assert_eq!(c.rerank.mode, "remote");
        assert_eq!(c.rerank.candidates, 20);
        assert_eq!(c.rerank.effective_query_max_length(), 384);
        for (toml, key) in [
            ("mode = \"sometimes\"", "rerank.mode"),
            ("mode = \"remote\"\nurl = \"localhost:9200\"", "rerank.url"),
            ("candidates = 0", "rerank.candidates"),
            ("query_max_length = 510", "rerank.query_max_length"),
            ("dtype = \"int4\"", "rerank.dtype"),
            ("mdoel = \"x\"", "mdoel"),
        ] {
            std::fs::write(&path, format!("[rerank]\n{toml}\n")).unwrap();
            let e = Config::load_with_env(Some(&path), &no_overrides(), env()).unwrap_err().to_string();
            assert!(e.contains(key), "{toml}: {e}");
        }
    }

    #[test]
    fn store_section() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("df.toml");
        let c = Config::load_with_env(None, &no_overrides(), env()).unwrap();
        assert_eq!(c.store.backend, "embedded");
        std::fs::write(
            &path,
            "[store]\nbackend = \"postgres\"\nurl = \"postgres://df@db:5432/df?sslmode=require\"\npool_size = 16\n",
        )
        .unwrap();
        let c = Config::load_with_env(Some(&path), &no_overrides(), env()).unwrap();
        assert_eq!((c.store.backend.as_str(), c.store.pool_size), ("postgres", 16));
        assert_eq!(c.store.schema, "datafactory");
        for (toml, key) in [
            ("backend = \"mysql\"", "store.backend"),
            ("backend = \"postgres\"", "store.url"),
            ("backend = \"postgres\"\nurl = \"postgres://x/y\"\nschema = \"Bad-Name\"", "store.schema"),
            ("backend = \"postgres\"\nurl = \"postgres://x/y\"\npool_size = 0", "store.pool_size"),
            ("urll = \"x\"", "urll"),
        ] {
            std::fs::write(&path, format!("[store]\n{toml}\n")).unwrap();
            let e = Config::load_with_env(Some(&path), &no_overrides(), env()).unwrap_err().to_string();
            assert!(e.contains(key), "{toml}: {e}");
        }
    }

    #[test]
    fn collection_names() {
        assert!(validate_collection("docs-2024_v1.0").is_ok());
        assert!(validate_collection("").is_err());
        assert!(validate_collection("a b").unwrap_err().contains("' '"));
    }
}
