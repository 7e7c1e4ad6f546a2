//! What the store hands back: plain serialisable records. Their JSON shapes are
//! part of the CLI's documented, stable `--json` output.

use datafactory_core::{Embedding, Format, Section};
use serde::Serialize;

/// Which retrievers a search uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SearchMode {
    /// Words only (BM25).
    Lexical,
    /// Dense vectors only.
    Dense,
    /// Sparse lexical weights only (bge-m3).
    Sparse,
    /// Words, dense and (if weighted) sparse, fused as `search.fusion` says.
    Hybrid,
}

impl SearchMode {
    pub fn parse_name(s: &str) -> Option<SearchMode> {
        Some(match s {
            "lexical" | "words" => SearchMode::Lexical,
            "dense" => SearchMode::Dense,
            "sparse" => SearchMode::Sparse,
            "hybrid" => SearchMode::Hybrid,
            _ => return None,
        })
    }
}

/// A search over one or more retrievers.
#[derive(Debug, Clone)]
pub struct SearchRequest<'a> {
    pub text: &'a str,
    /// The query's embedding: needed by the dense and sparse retrievers.
    pub embedding: Option<&'a Embedding>,
    pub mode: SearchMode,
    pub collection: Option<&'a str>,
    pub top_k: usize,
    /// Candidates taken from each retriever before fusion.
    pub candidates: usize,
    /// How hybrid search fuses the retrievers' lists.
    pub fusion: datafactory_core::config::FusionMethod,
    pub rrf_k: f32,
    /// Weight each retriever but words by its agreement with words (`search.agreement`).
    pub agreement: bool,
    pub weight_words: f32,
    pub weight_dense: f32,
    pub weight_sparse: f32,
    pub title_boost: f32,
    pub heading_boost: f32,
    /// Only chunks of documents that pass this filter.
    pub filter: Option<&'a SearchFilter>,
    /// Return a passage held by several chunks (the same `passage_hash`)
    /// once, at its best rank, naming the others (`SearchHit::duplicates`);
    /// more candidates are taken until `top_k` distinct passages come back
    /// or the retrievers run out.
    pub collapse: bool,
}

impl<'a> SearchRequest<'a> {
    /// A request with the configured fusion and boosts, no query embedding,
    /// no collection and no filter; set those with struct update syntax.
    pub fn new(
        text: &'a str,
        mode: SearchMode,
        top_k: usize,
        settings: &datafactory_core::config::SearchConfig,
    ) -> SearchRequest<'a> {
        SearchRequest {
            text,
            embedding: None,
            mode,
            collection: None,
            top_k,
            candidates: settings.candidates,
            fusion: settings.fusion_method(),
            rrf_k: settings.rrf_k,
            agreement: settings.agreement,
            weight_words: settings.weight_words,
            weight_dense: settings.weight_dense,
            weight_sparse: settings.weight_sparse,
            title_boost: settings.title_boost,
            heading_boost: settings.heading_boost,
            filter: None,
            collapse: settings.collapse_duplicates,
        }
    }
}

/// Restricts a search to some documents.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, utoipa::ToSchema)]
pub struct SearchFilter {
    /// Only these documents (ids, or the ids their input gave them); empty: any.
    #[serde(default)]
    pub document_ids: Vec<String>,
    /// Only documents whose metadata has each of these keys with this exact value.
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

impl SearchFilter {
    pub fn is_empty(&self) -> bool {
        self.document_ids.is_empty() && self.metadata.is_empty()
    }
}

/// The score each stage gave a result (absent: the stage did not find it or did not run).
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct StageScores {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub words: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dense: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sparse: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fused: Option<f32>,
    /// The cross-encoder's relevance (0-1, the sigmoid of its logit), when
    /// the result was reranked.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rerank: Option<f32>,
    /// Where each retriever ranked the result (1 = its best), for the
    /// retrievers that found it.
    #[serde(skip_serializing_if = "StageRanks::is_empty", default)]
    pub ranks: StageRanks,
}

/// Each retriever's rank of a result, 1-based (absent: it did not find it or did not run).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct StageRanks {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub words: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub dense: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sparse: Option<u32>,
}

impl StageRanks {
    pub fn is_empty(&self) -> bool {
        self.words.is_none() && self.dense.is_none() && self.sparse.is_none()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SearchResults {
    /// The retrievers that ran, e.g. `["words", "dense"]`.
    pub retrievers: Vec<&'static str>,
    pub hits: Vec<SearchHit>,
    /// Why a requested retriever did not run, if one did not.
    pub notes: Vec<String>,
}

/// A word query.
#[derive(Debug, Clone)]
pub struct WordQuery<'a> {
    pub text: &'a str,
    pub collection: Option<&'a str>,
    pub top_k: usize,
    pub title_boost: f32,
    pub heading_boost: f32,
}

impl<'a> WordQuery<'a> {
    /// The same query as a search request: words only, no filter.
    pub fn request(&self) -> SearchRequest<'a> {
        SearchRequest {
            text: self.text,
            embedding: None,
            mode: SearchMode::Lexical,
            collection: self.collection,
            top_k: self.top_k,
            candidates: self.top_k,
            fusion: datafactory_core::config::FusionMethod::Rrf,
            rrf_k: 60.0,
            agreement: false,
            weight_words: 1.0,
            weight_dense: 0.0,
            weight_sparse: 0.0,
            title_boost: self.title_boost,
            heading_boost: self.heading_boost,
            filter: None,
            collapse: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct SearchHit {
    pub chunk_id: String,
    /// The ranking score: the reranker's relevance when the result was
    /// reranked (`scores.rerank`), else fused in hybrid mode, else the one
    /// retriever's.
    pub score: f32,
    pub scores: StageScores,
    pub document_id: String,
    pub collection: String,
    pub title: String,
    pub source: String,
    pub heading_path: Vec<String>,
    pub ordinal: u32,
    pub start: usize,
    pub end: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page: Option<u32>,
    pub text: String,
    /// The context enrichment gave the chunk (its text).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub context: Option<String>,
    /// Who wrote `context`: `llm` or `heuristic` (with `context` only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub context_kind: Option<datafactory_core::ContextKind>,
    /// The document's language (ISO 639-3, as the analyzer found it), when
    /// known: its words are stemmed for it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub language: Option<String>,
    /// Where the query's words occur in `text`: `[start, end)` pairs of
    /// character offsets into `text` (not bytes), in order, not overlapping.
    /// Words are matched as the word index analyses them (code-aware tokens,
    /// lower-cased, stemmed for `language`, accents folded), whatever the
    /// search mode.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub highlights: Vec<[usize; 2]>,
    /// The other chunks holding the same passage (the same text once white
    /// space is collapsed and case folded), in the search's scope (its
    /// collection and filter), each with its document: the search returns
    /// the passage once, at its best rank (`search.collapse_duplicates`).
    /// At most 100 are listed; `duplicate_count` says how many there are.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub duplicates: Vec<Duplicate>,
    /// How many other chunks hold the passage (0: none, or not collapsed).
    #[serde(skip_serializing_if = "is_zero", default)]
    pub duplicate_count: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Another chunk holding a hit's passage.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Duplicate {
    pub chunk_id: String,
    pub document_id: String,
    pub title: String,
    pub source: String,
    /// Character offsets of the chunk in its document, as `start`/`end` of a hit.
    pub start: usize,
    pub end: usize,
}

/// What is known of a stored document besides its content.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DocumentInfo {
    pub id: String,
    pub collection: String,
    pub source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    pub title: String,
    pub format: Format,
    pub content_hash: String,
    pub byte_size: u64,
    /// 1 when first stored, +1 on each replacement.
    pub version: i64,
    /// Unix time in milliseconds.
    pub created_at: i64,
    pub updated_at: i64,
}

/// A document in a listing: its info and how many chunks it has. Derefs to
/// the info (`summary.id`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DocumentSummary {
    #[serde(flatten)]
    pub info: DocumentInfo,
    /// How many chunks it has.
    pub chunks: u64,
    /// The type its analysis gave it (`metadata.analysis.doc_type`), if analysed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub doc_type: Option<String>,
    /// The language its analysis found (`metadata.analysis.language.code`, ISO 639-3), if any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub language: Option<String>,
}

/// Which documents a listing returns, and which page of them.
#[derive(Debug, Clone, Default)]
pub struct DocumentQuery<'a> {
    pub collection: Option<&'a str>,
    /// The analysis's `doc_type`.
    pub doc_type: Option<&'a str>,
    /// The analysis's language code (`eng`).
    pub language: Option<&'a str>,
    /// The format's name (`pdf`, `markdown`, ...).
    pub format: Option<&'a str>,
    /// At most this many (None: all).
    pub limit: Option<u64>,
    /// Skip this many first (in the listing's order: collection, then source).
    pub offset: u64,
}

/// A page of a listing and how many documents match in all.
#[derive(Debug, Clone, Serialize)]
pub struct DocumentPage {
    pub documents: Vec<DocumentSummary>,
    pub total: u64,
}

impl std::ops::Deref for DocumentSummary {
    type Target = DocumentInfo;
    fn deref(&self) -> &DocumentInfo {
        &self.info
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StoredChunk {
    pub id: String,
    pub ordinal: u32,
    pub heading_path: Vec<String>,
    pub start: usize,
    pub end: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page: Option<u32>,
    pub token_count: u32,
    pub text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<datafactory_core::ChunkContext>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DocumentDetail {
    /// (Its chunk count is `chunks.len()`: `chunks` here is the list.)
    #[serde(flatten)]
    pub summary: DocumentInfo,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub sections: Vec<Section>,
    pub text: String,
    pub chunks: Vec<StoredChunk>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CollectionStats {
    pub name: String,
    pub documents: u64,
    pub chunks: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct IndexStats {
    pub chunks: u64,
    /// The last SQLite change the index includes.
    pub applied_change: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct VectorStats {
    pub model: String,
    pub dimensions: usize,
    pub vectors: u64,
    /// The last SQLite change the vector index includes (in this process).
    pub applied_change: i64,
    /// The last SQLite change its saved file includes.
    pub saved_change: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub documents: u64,
    pub chunks: u64,
    pub collections: Vec<CollectionStats>,
    pub word_index: IndexStats,
    /// Chunks with an embedding in SQLite (a chunk longer than the model's
    /// input has several vectors, one per window: `vector_index.vectors`).
    pub embedded_chunks: u64,
    /// Absent when the store has no vectors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vector_index: Option<VectorStats>,
    pub latest_change: i64,
    pub consistent: bool,
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JobRecord {
    pub id: String,
    pub kind: String,
    /// `running`, `succeeded`, `failed`, or `interrupted` (its process died).
    pub state: String,
    pub collection: Option<String>,
    pub summary: serde_json::Value,
    pub created_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
}

/// A job a node claimed from the fleet's queue (PostgreSQL store).
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub id: String,
    pub kind: String,
    pub collection: Option<String>,
    /// What the job asks for, as given when it was queued.
    pub request: serde_json::Value,
    /// 1 on the first claim; more when nodes died running it.
    pub attempt: u32,
    /// Its input files: (name, bytes).
    pub files: Vec<(String, Vec<u8>)>,
}

/// A node of the fleet, as its last heartbeat left it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FleetNode {
    pub id: String,
    pub address: String,
    pub started_at: i64,
    pub seen_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub running_job: Option<String>,
    /// Seen recently enough to count as running.
    pub alive: bool,
}

/// The fleet sharing a PostgreSQL store: its nodes and its queue.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Fleet {
    pub nodes: Vec<FleetNode>,
    pub queued: u64,
    /// Running under a current lease.
    pub running: u64,
    /// Running under a lease that ran out: their node died; the next claim takes them.
    pub lease_expired: u64,
}
