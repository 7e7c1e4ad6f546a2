//! What a caller asks for (`IngestRequest`) and what it is told as the ingest
//! runs and when it ends: phases, the observer, failures, notes and the summary.
//!
//! Plain data and its arithmetic; no I/O.

use super::*;

/// What to ingest.
#[derive(Debug, Clone, Default)]
pub struct IngestRequest {
    /// Files and folders; folders are walked recursively.
    pub paths: Vec<PathBuf>,
    pub collection: String,
    /// Take every file in walked folders, not only known document extensions
    /// (files that are not documents are then skipped, not failed).
    pub all_files: bool,
    /// Files stored under a name of the caller's choosing instead of their
    /// path (uploads: the client's file name), as (path, source name). The
    /// name is the document's identity: uploading it again replaces it.
    pub named: Vec<(PathBuf, String)>,
    /// A job the caller already recorded (`Store::create_job`); else one is made.
    pub job_id: Option<String>,
    /// Set to stop early: no new file is started, what is done is committed,
    /// and the job ends `interrupted`.
    pub cancel: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// Changes to every document's chunking plan (followed even when
    /// `analysis.follow_plan` is off).
    pub plan: Option<PlanOverride>,
}

/// The phases an ingest runs through, in order. Enrichment is reported as
/// not run until its stage exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Analysis,
    Chunking,
    Enrichment,
    Embedding,
    Storage,
}

impl Phase {
    pub const ALL: [Phase; 5] =
        [Phase::Analysis, Phase::Chunking, Phase::Enrichment, Phase::Embedding, Phase::Storage];
}

/// Told about progress as the ingest runs (from several threads).
pub trait IngestObserver: Sync {
    fn started(&self, _files: usize) {}
    fn file_done(&self, _source: &str, _failed: bool) {}
    /// `items` more were done in `phase` (analysis: documents; chunking:
    /// files parsed and chunked; embedding: chunks; storage: documents),
    /// taking `seconds`.
    fn phase_progress(&self, _phase: Phase, _items: usize, _seconds: f64) {}
}

/// An observer that ignores everything.
pub struct Quiet;
impl IngestObserver for Quiet {}

#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Failure {
    pub source: String,
    /// Where in the file, for multi-record inputs (`"line 12"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    pub error: String,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Note {
    pub source: String,
    pub message: String,
}

/// The result of one ingest; its JSON shape is the CLI's `ingest --json`.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct IngestSummary {
    pub job_id: String,
    pub collection: String,
    pub files: usize,
    pub documents: DocumentCounts,
    /// Chunks written (of added and replaced documents).
    pub chunks: usize,
    pub failed: Vec<Failure>,
    /// Files in walked folders that were not documents (with `all_files`).
    pub skipped: Vec<Note>,
    pub warnings: Vec<Note>,
    pub embedding: EmbeddingSummary,
    #[serde(default)]
    pub analysis: AnalysisSummary,
    /// Contexts per chunk: how many of which kind, timings, tokens per endpoint.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub enrichment: EnrichmentSummary,
    pub elapsed_seconds: f64,
    pub documents_per_second: f64,
    pub chunks_per_second: f64,
}

#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct EmbeddingSummary {
    /// The model's id; null when chunks were not embedded.
    pub model: Option<String>,
    pub chunks: usize,
    pub seconds: f64,
    /// Why there are no embeddings, when there are none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// What phase 1 found, over the documents analysed (each document's own
/// analysis is stored with it, in `metadata.analysis`).
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct AnalysisSummary {
    pub documents: usize,
    /// Documents per type (`manual`, `prose`, …).
    pub types: std::collections::BTreeMap<String, usize>,
    /// Documents per language code; `unknown` when too short to tell.
    pub languages: std::collections::BTreeMap<String, usize>,
    /// Documents per route that answered (`heuristic`, `llm`).
    pub routes: std::collections::BTreeMap<String, usize>,
    /// Documents whose configured route failed, and why (the heuristics answered).
    pub fallbacks: Vec<Note>,
}

impl AnalysisSummary {
    pub(crate) fn merge(&mut self, other: AnalysisSummary) {
        self.documents += other.documents;
        for (mine, theirs) in [
            (&mut self.types, other.types),
            (&mut self.languages, other.languages),
            (&mut self.routes, other.routes),
        ] {
            for (k, v) in theirs {
                *mine.entry(k).or_default() += v;
            }
        }
        self.fallbacks.extend(other.fallbacks);
    }

    pub(crate) fn add(&mut self, source: &str, a: &Analysis) {
        self.documents += 1;
        *self.types.entry(a.doc_type.as_str().to_string()).or_default() += 1;
        let language = a.language.as_ref().map_or("unknown", |l| l.code.as_str());
        *self.languages.entry(language.to_string()).or_default() += 1;
        let route = match a.route {
            datafactory_analyze::Route::Heuristic => "heuristic",
            datafactory_analyze::Route::Llm => "llm",
        };
        *self.routes.entry(route.to_string()).or_default() += 1;
        if let Some(why) = &a.fallback {
            self.fallbacks.push(Note { source: source.to_string(), message: why.clone() });
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct DocumentCounts {
    pub added: usize,
    pub replaced: usize,
    pub unchanged: usize,
    pub failed: usize,
}

impl IngestSummary {
    pub fn has_failures(&self) -> bool {
        !self.failed.is_empty()
    }

    /// Adds what a stage of the pipeline counted on its own.
    pub(crate) fn absorb(&mut self, part: IngestSummary) {
        self.documents.unchanged += part.documents.unchanged;
        self.failed.extend(part.failed);
        self.skipped.extend(part.skipped);
        self.warnings.extend(part.warnings);
        self.analysis.merge(part.analysis);
        if !part.enrichment.mode.is_empty() {
            self.enrichment.merge(part.enrichment);
        }
        self.embedding.chunks += part.embedding.chunks;
        self.embedding.seconds += part.embedding.seconds;
    }
}
