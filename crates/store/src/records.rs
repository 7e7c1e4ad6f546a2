//! What the store hands back: plain serialisable records. Their JSON shapes are
//! part of the CLI's documented, stable `--json` output.

use datafactory_core::{Format, Section};
use serde::Serialize;

/// A word query.
#[derive(Debug, Clone)]
pub struct WordQuery<'a> {
    pub text: &'a str,
    pub collection: Option<&'a str>,
    pub top_k: usize,
    pub title_boost: f32,
    pub heading_boost: f32,
}

#[derive(Debug, Clone, Serialize)]
pub struct SearchHit {
    pub chunk_id: String,
    pub score: f32,
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
}

#[derive(Debug, Clone, Serialize)]
pub struct DocumentSummary {
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
    pub chunks: u64,
}

#[derive(Debug, Clone, Serialize)]
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
}

#[derive(Debug, Clone, Serialize)]
pub struct DocumentDetail {
    #[serde(flatten)]
    pub summary: DocumentSummary,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub sections: Vec<Section>,
    pub text: String,
    pub chunks: Vec<StoredChunk>,
}

#[derive(Debug, Clone, Serialize)]
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
pub struct Stats {
    pub documents: u64,
    pub chunks: u64,
    pub collections: Vec<CollectionStats>,
    pub word_index: IndexStats,
    pub latest_change: i64,
    pub consistent: bool,
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
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
