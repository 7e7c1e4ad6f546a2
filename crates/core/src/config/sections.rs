//! The configuration's sections, one struct each, with their built-in defaults.
//!
//! Every key here is listed in docs/CONFIGURATION.md; checks that span keys
//! live in `validate.rs`, loading in `mod.rs`.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

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
    /// Cap on the decompressed size of a container format (DOCX) or of a
    /// PDF's compressed streams, against zip and Flate/LZW bombs (bytes).
    pub max_decompressed_bytes: u64,
    /// Deepest nesting of HTML elements or Markdown block quotes and lists
    /// accepted; deeper files are refused with an error naming the limit.
    pub max_nesting: usize,
    /// Which formats are parsed in a child process under a memory limit and a
    /// timeout: `pdf` (default), `all` or `none`.
    pub parse_isolation: String,
    /// Wall-clock limit of one file's parse in the child process (seconds).
    pub parse_timeout_seconds: u64,
    /// Address-space limit (RLIMIT_AS) of the parse child process (MiB).
    pub parse_memory_mb: u64,
    /// Program run as the parse child process; empty: this `datafactory`
    /// binary itself (`datafactory parse-worker`).
    pub parse_worker: PathBuf,
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
    /// `auto` (f32 on CPU, f16 on GPU), `f32`, `f16`, `bf16` (on a CPU with
    /// AMX-BF16: the linear layers in bf16 on AMX tiles, the rest in f32), or
    /// `int8` (CPU only: the encoder's linear layers in int8, AMX-INT8 or
    /// AVX-512 VNNI where available).
    pub dtype: String,
    /// Tokens per passage window (the model's input, special tokens included).
    pub max_length: usize,
    /// Windows per passage at most: a passage longer than the model's input
    /// gets one vector per window of `max_length` tokens, each overlapping the
    /// one before by a quarter, and is scored by its best window; what lies
    /// past the last window is not embedded. 1: truncate (one vector).
    pub max_windows: usize,
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
    /// How hybrid search fuses the retrievers' lists: `rrf` (weighted
    /// reciprocal rank), `minmax`, `zscore` or `dbsf` (each retriever's
    /// scores normalised over its candidates, then a weighted sum). See
    /// [`FusionMethod`].
    pub fusion: String,
    /// The k of weighted reciprocal-rank fusion: score = Σ weight / (rrf_k + rank).
    pub rrf_k: f32,
    /// Per query, each retriever other than words is weighted by how much its
    /// first 10 results agree with the words' first 10 (the share in both).
    pub agreement: bool,
    pub weight_words: f32,
    pub weight_dense: f32,
    /// 0 leaves the sparse retriever out of hybrid search.
    pub weight_sparse: f32,
    /// Return a passage found in several chunks (the same text once
    /// normalised: white space collapsed, lower-cased) once, naming the
    /// other chunks and documents that hold it (`duplicates`).
    pub collapse_duplicates: bool,
}

/// How hybrid search combines its retrievers' ranked lists (`search.fusion`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FusionMethod {
    /// Weighted reciprocal rank: Σ weight / (rrf_k + rank). Scores are ignored.
    Rrf,
    /// Each list's scores scaled to 0-1 by its minimum and maximum; a
    /// candidate a retriever did not return counts 0 there.
    MinMax,
    /// Each list's scores as standard scores ((s - mean) / deviation); a
    /// candidate a retriever did not return counts as that list's lowest.
    ZScore,
    /// Distribution-based score fusion: each list's scores scaled to 0-1
    /// between mean - 3 deviations and mean + 3 deviations (clamped); a
    /// candidate a retriever did not return counts 0 there.
    Dbsf,
}

impl FusionMethod {
    pub const NAMES: &'static str = "rrf, minmax, zscore or dbsf";

    pub fn parse_name(s: &str) -> Option<FusionMethod> {
        Some(match s {
            "rrf" => FusionMethod::Rrf,
            "minmax" => FusionMethod::MinMax,
            "zscore" => FusionMethod::ZScore,
            "dbsf" => FusionMethod::Dbsf,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FusionMethod::Rrf => "rrf",
            FusionMethod::MinMax => "minmax",
            FusionMethod::ZScore => "zscore",
            FusionMethod::Dbsf => "dbsf",
        }
    }
}

impl SearchConfig {
    /// The configured fusion (validated at load; an unknown name reads as RRF).
    pub fn fusion_method(&self) -> FusionMethod {
        FusionMethod::parse_name(&self.fusion).unwrap_or(FusionMethod::Rrf)
    }
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
    /// Words (runs of letters and digits) a search query may have; more get 400.
    pub max_query_terms: usize,
    /// Let a service listen on a non-loopback address without `api_keys`
    /// (`--insecure`); otherwise it refuses to start.
    pub allow_insecure: bool,
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
    /// Storage of vectors in the index: `f16` (default), `bf16`, `f32` or `i8`.
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
            max_nesting: 512,
            parse_isolation: "pdf".to_string(),
            parse_timeout_seconds: 120,
            parse_memory_mb: 2048,
            parse_worker: PathBuf::new(),
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
            max_windows: 8,
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
            fusion: "zscore".to_string(),
            rrf_k: 60.0,
            agreement: false,
            weight_words: 0.5,
            weight_dense: 0.5,
            weight_sparse: 0.0,
            collapse_duplicates: true,
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
            address: "127.0.0.1:9200".to_string(),
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
            address: "127.0.0.1:9000".to_string(),
            api_keys: Vec::new(),
            max_body_bytes: 256 * 1024 * 1024,
            max_concurrent_requests: 256,
            request_timeout_seconds: 600,
            max_query_terms: 1024,
            allow_insecure: false,
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
            address: "127.0.0.1:9100".to_string(),
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
