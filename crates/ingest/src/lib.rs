//! The ingest pipeline: input files → parse → analyse → chunk → one atomic
//! commit per document. Used by the CLI now and by the HTTP service later; it knows
//! nothing of either (progress goes to an [`IngestObserver`]).
//!
//! Parsing and chunking run on worker threads; then an enrichment stage, an
//! embedding stage and the committing thread, joined by bounded queues, so
//! that embedding of early documents overlaps enrichment of later ones. One
//! thread commits, one document per transaction, in the order documents
//! became ready. A file that fails (unreadable, too large,
//! corrupt, empty) is recorded with its reason and the batch goes on; only a
//! failure of the store itself stops it.

use datafactory_analyze::{Analysis, Analyzer};
use datafactory_chunk::Chunker;
use datafactory_core::config::{validate_collection, Config};
use datafactory_core::{
    content_hash, document_id, Chunk, Document, Embedder, Embedding, HeuristicTokenCounter, InputKind,
    PlanOverride, TokenCounter,
};
use datafactory_enrich::{CacheKey, CallRecord, ContextCache, DocumentInput, Enricher, EnrichmentSummary};
use datafactory_parse::{ParseError, ParseOptions};

mod rerank;
use datafactory_store::{CommitOutcome, DocumentKey, Store, StoreError, VectorOptions};
pub use rerank::{rerank_hits, search_depth, RerankReport};
use serde::Serialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// Commit the word index at least this often during a long ingest, so that
/// documents become searchable while the rest is still being read.
const FLUSH_EVERY: Duration = Duration::from_secs(2);
const FLUSH_EVERY_DOCUMENTS: usize = 2_000;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Invalid(String),
}

/// Tokens kept free for the contextual chunk header (title and heading
/// path) when chunks are budgeted by the embedding model's own length.
const HEADER_RESERVE_TOKENS: usize = 48;

/// Parser, chunker and embedder settings, and their fingerprint.
#[derive(Clone)]
pub struct Pipeline {
    chunker: Chunker,
    analyzer: Analyzer,
    /// Chunk each document by its analysis' plan (`analysis.follow_plan`).
    follow_plan: bool,
    /// The largest chunk a plan may ask for: what the embedding model takes.
    plan_cap: usize,
    embedder: Option<Arc<dyn Embedder>>,
    enricher: Arc<Enricher>,
    include_headings: bool,
    vector_options: Option<VectorOptions>,
    parse_options: ParseOptions,
    max_file_bytes: u64,
    extensions: Vec<String>,
    workers: usize,
    /// Server slots over all LLM endpoints (what sizes an enrichment group).
    llm_slots: usize,
    fingerprint: String,
}

impl Pipeline {
    /// A pipeline without embeddings (words only).
    pub fn new(config: &Config) -> Pipeline {
        Self::with_embedder(config, None)
    }

    /// A pipeline that embeds every chunk with `embedder`; its tokenizer then
    /// budgets the chunks, which also fit the model's input length.
    pub fn with_embedder(config: &Config, embedder: Option<Arc<dyn Embedder>>) -> Pipeline {
        let (counter, chunking, plan_cap): (Arc<dyn TokenCounter>, _, _) = match &embedder {
            Some(e) => {
                let mut chunking = config.chunking.clone();
                let reserve = if config.embedding.include_headings { HEADER_RESERVE_TOKENS } else { 0 };
                let fits = e.max_input_tokens().saturating_sub(reserve).max(16);
                chunking.max_tokens = chunking.max_tokens.min(fits);
                chunking.overlap_tokens = chunking.overlap_tokens.min(chunking.max_tokens / 2);
                (e.token_counter(), chunking, fits)
            }
            None => (Arc::new(HeuristicTokenCounter), config.chunking.clone(), usize::MAX),
        };
        let analyzer = Analyzer::from_config(&config.analysis);
        let chunker = Chunker::new(&chunking, counter);
        let vector_options = embedder.as_ref().map(|e| VectorOptions {
            model: e.model_id().to_string(),
            dimensions: e.dimension(),
            quantization: config.vectors.quantization.clone(),
            connectivity: config.vectors.connectivity,
            expansion_add: config.vectors.expansion_add,
            expansion_search: config.vectors.expansion_search,
            exact_below: config.vectors.exact_below,
        });
        let enricher = Arc::new(Enricher::from_config(&config.enrichment));
        let fingerprint = format!(
            "parser-v{};{};embedding={}{};analysis={}{}{}",
            datafactory_parse::PARSER_VERSION,
            chunker.fingerprint(),
            embedder.as_ref().map_or("none", |e| e.model_id()),
            if embedder.is_some() && config.embedding.include_headings { ";headings" } else { "" },
            analyzer.id(),
            if config.analysis.follow_plan { ";follow_plan" } else { "" },
            enricher.fingerprint().map(|f| format!(";context={f}")).unwrap_or_default(),
        );
        let workers = match config.ingest.workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        Pipeline {
            chunker,
            analyzer,
            follow_plan: config.analysis.follow_plan,
            plan_cap,
            embedder,
            enricher,
            include_headings: config.embedding.include_headings,
            vector_options,
            parse_options: ParseOptions { max_decompressed_bytes: config.ingest.max_decompressed_bytes },
            max_file_bytes: config.ingest.max_file_bytes,
            extensions: config.ingest.extensions.iter().map(|e| e.to_ascii_lowercase()).collect(),
            workers,
            llm_slots: config.enrichment.endpoints.iter().map(|e| e.slots).sum(),
            fingerprint,
        }
    }

    /// Everything that decides the stored chunks for the same input.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn chunker(&self) -> &Chunker {
        &self.chunker
    }

    pub fn analyzer(&self) -> &Analyzer {
        &self.analyzer
    }

    /// Phase 1 and 2 for one document: analyses it, records the analysis in
    /// its metadata (`metadata.analysis`, with `chunked_by`: `plan`,
    /// `override` or `config`), and cuts it by its plan (when
    /// `analysis.follow_plan`, or when `plan` overrides parts of it) or by the
    /// configured chunker. Returns the chunks, the analysis and the seconds it took.
    pub fn analyze_and_chunk(
        &self,
        document: &mut Document,
        plan: Option<&PlanOverride>,
    ) -> (Vec<Chunk>, Analysis, f64) {
        let started = Instant::now();
        let analysis = self.analyzer.analyze(document);
        let seconds = started.elapsed().as_secs_f64();
        let plan = plan.filter(|o| !o.is_empty());
        let (chunker, chunked_by) = match plan {
            Some(o) => (Some(self.chunker.with_plan(&o.apply(&analysis.plan), self.plan_cap)), "override"),
            None if self.follow_plan => (Some(self.chunker.with_plan(&analysis.plan, self.plan_cap)), "plan"),
            None => (None, "config"),
        };
        let chunker = chunker.as_ref().unwrap_or(&self.chunker);
        let mut record = serde_json::to_value(&analysis).unwrap_or_default();
        if let Some(map) = record.as_object_mut() {
            map.insert(
                "chunked_by".into(),
                serde_json::json!({
                    "source": chunked_by,
                    "max_tokens": chunker.max_tokens(),
                    "fingerprint": chunker.fingerprint(),
                }),
            );
        }
        document.metadata.insert("analysis".into(), record);
        (chunker.chunk(document), analysis, seconds)
    }

    pub fn embedder(&self) -> Option<&Arc<dyn Embedder>> {
        self.embedder.as_ref()
    }

    /// The enrichment stage (contexts per chunk).
    pub fn enricher(&self) -> &Arc<Enricher> {
        &self.enricher
    }

    /// The vector index this pipeline's embeddings go to.
    pub fn vector_options(&self) -> Option<&VectorOptions> {
        self.vector_options.as_ref()
    }

    /// The text embedded for a chunk: with `include_headings`, the document
    /// title and heading path first (a "contextual chunk header").
    /// The chunk's context, when it has one, comes before the chunk (a
    /// heuristic context already holds the title and heading path, so it
    /// replaces them).
    pub fn embedding_text(&self, title: &str, chunk: &Chunk) -> String {
        let context =
            chunk.context.as_ref().map(|c| (c.text.as_str(), c.kind == datafactory_core::ContextKind::Llm));
        self.contextual_text(title, &chunk.heading_path, context, &chunk.text)
    }

    /// [`Pipeline::embedding_text`] from a chunk's parts (a search hit has no
    /// [`Chunk`]): what the reranker reads too. `context` is the chunk's
    /// context and whether the title and heading path go before it (an LLM's
    /// context; a heuristic one already holds them).
    pub fn contextual_text(
        &self,
        title: &str,
        heading_path: &[String],
        context: Option<(&str, bool)>,
        text: &str,
    ) -> String {
        if let Some((context, with_header)) = context.filter(|(c, _)| !c.trim().is_empty()) {
            let mut header = String::new();
            if self.include_headings && with_header {
                if !title.trim().is_empty() {
                    header.push_str(title.trim());
                    header.push('\n');
                }
                if !heading_path.is_empty() {
                    header.push_str(&heading_path.join(" > "));
                    header.push('\n');
                }
            }
            return format!("{header}{}\n\n{text}", context.trim());
        }
        if !self.include_headings {
            return text.to_string();
        }
        let mut header = String::new();
        if !title.trim().is_empty() {
            header.push_str(title.trim());
            header.push('\n');
        }
        if !heading_path.is_empty() {
            header.push_str(&heading_path.join(" > "));
            header.push('\n');
        }
        if header.is_empty() {
            text.to_string()
        } else {
            format!("{header}\n{text}")
        }
    }
}

/// Embeds a search query with the model the store's vectors were made with.
/// None when the store has no vectors (its search says so) or there is no
/// model; None with a note in `notes` when the model is another one.
pub fn query_embedding(
    store: &Store,
    embedder: Option<&dyn Embedder>,
    text: &str,
    notes: &mut Vec<String>,
) -> Result<Option<Embedding>, datafactory_core::EmbedError> {
    let (Some(stored), Some(embedder)) = (store.vector_options(), embedder) else {
        return Ok(None);
    };
    if embedder.model_id() != stored.model {
        notes.push(format!(
            "the store's vectors are from {}, the loaded model is {}: dense retrieval off",
            stored.model,
            embedder.model_id()
        ));
        return Ok(None);
    }
    Ok(embedder.embed(&[text], InputKind::Query)?.pop())
}

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
    fn merge(&mut self, other: AnalysisSummary) {
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

    fn add(&mut self, source: &str, a: &Analysis) {
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
    fn absorb(&mut self, part: IngestSummary) {
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

/// One document ready to commit.
struct Prepared {
    key: DocumentKey,
    document: Document,
    chunks: Vec<Chunk>,
    analysis: Analysis,
}

/// What a worker made of one file.
enum FileResult {
    Documents {
        source: String,
        prepared: Vec<Prepared>,
        unchanged: usize,
        failures: Vec<Failure>,
        warnings: Vec<Note>,
    },
    Skipped(Note),
    Failed(Failure),
}

/// A file to read, and whether it was named explicitly.
struct Input {
    path: PathBuf,
    explicit: bool,
    /// The source name, when it is not the path.
    source: Option<String>,
}

/// Ingests files and folders into the store, recording the run as a job.
pub fn ingest(
    store: &Store,
    pipeline: &Pipeline,
    request: &IngestRequest,
    observer: &dyn IngestObserver,
) -> Result<IngestSummary, IngestError> {
    validate_collection(&request.collection).map_err(IngestError::Invalid)?;
    let started = Instant::now();
    let mut summary = IngestSummary { collection: request.collection.clone(), ..Default::default() };
    if let Some(options) = pipeline.vector_options() {
        store.enable_vectors(options)?;
        summary.embedding.model = Some(options.model.clone());
    }
    let mut inputs = collect_inputs(&request.paths, pipeline, request.all_files, &mut summary.failed);
    for (path, name) in &request.named {
        if path.is_file() {
            inputs.push(Input { path: path.clone(), explicit: true, source: Some(name.clone()) });
        } else {
            summary.failed.push(Failure {
                source: name.clone(),
                location: None,
                error: format!("cannot read {}", path.display()),
            });
        }
    }
    summary.files = inputs.len();
    observer.started(inputs.len());
    let job_id = match &request.job_id {
        Some(id) => id.clone(),
        None => store.create_job("ingest", Some(&request.collection))?,
    };
    summary.job_id = job_id.clone();

    let result = run(store, pipeline, request, &inputs, observer, &mut summary);
    // Like the seed's torch.cuda.empty_cache(): what the GPU's memory pool
    // kept between batches goes back to the card once the job is done.
    if summary.chunks > 0 {
        if let Some(embedder) = &pipeline.embedder {
            embedder.release_cached_memory();
        }
    }
    summary.documents.failed = summary.failed.len();
    summary.elapsed_seconds = started.elapsed().as_secs_f64();
    let written = summary.documents.added + summary.documents.replaced;
    if summary.elapsed_seconds > 0.0 {
        summary.documents_per_second = written as f64 / summary.elapsed_seconds;
        summary.chunks_per_second = summary.chunks as f64 / summary.elapsed_seconds;
    }
    let cancelled = request.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed));
    let state = match &result {
        Ok(()) if cancelled => "interrupted",
        Ok(()) if summary.has_failures() => "completed_with_errors",
        Ok(()) => "succeeded",
        Err(_) => "failed",
    };
    let mut record = serde_json::to_value(&summary).unwrap_or_default();
    if let (Err(e), Some(map)) = (&result, record.as_object_mut()) {
        map.insert("error".into(), e.to_string().into());
    }
    store.finish_job(&job_id, state, &record)?;
    result.map(|()| summary)
}

fn run(
    store: &Store,
    pipeline: &Pipeline,
    request: &IngestRequest,
    inputs: &[Input],
    observer: &dyn IngestObserver,
    summary: &mut IngestSummary,
) -> Result<(), IngestError> {
    let next = AtomicUsize::new(0);
    let workers = pipeline.workers.clamp(1, inputs.len().max(1));
    std::thread::scope(|scope| -> Result<(), IngestError> {
        // workers ─► enrichment stage ─► embedding stage ─► committer (this
        // thread), each queue bounded, documents in the order they became ready.
        let (tx, rx) = mpsc::sync_channel::<FileResult>(workers * 4);
        for _ in 0..workers {
            let tx = tx.clone();
            let next = &next;
            scope.spawn(move || loop {
                if request.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(input) = inputs.get(i) else { break };
                let started = Instant::now();
                let result = prepare_file(store, pipeline, request, input, observer);
                observer.phase_progress(Phase::Chunking, 1, started.elapsed().as_secs_f64());
                if tx.send(result).is_err() {
                    break; // the later stages stopped
                }
            });
        }
        drop(tx);
        let (enriched_tx, enriched_rx) = mpsc::sync_channel::<Staged>(STAGE_QUEUE);
        let (embedded_tx, embedded_rx) = mpsc::sync_channel::<Embedded>(STAGE_QUEUE);
        let enriching = std::thread::Builder::new()
            .name("ingest-enrich".into())
            .spawn_scoped(scope, move || enrich_stage(store, pipeline, observer, rx, enriched_tx))
            .expect("spawning the enrichment stage");
        let embedding = std::thread::Builder::new()
            .name("ingest-embed".into())
            .spawn_scoped(scope, move || embed_stage(pipeline, observer, enriched_rx, embedded_tx))
            .expect("spawning the embedding stage");
        let mut committer =
            Committer { store, observer, summary, last_flush: Instant::now(), since_flush: 0 };
        let outcome = (|| -> Result<(), IngestError> {
            for item in &embedded_rx {
                committer.commit_item(item)?;
            }
            Ok(())
        })();
        // Stop the workers and stages early if committing failed: their
        // next send fails once the queue after them is gone.
        next.store(inputs.len(), Ordering::Relaxed);
        drop(embedded_rx);
        let enriched = enriching.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        let embedded = embedding.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        summary.absorb(enriched);
        summary.absorb(embedded);
        outcome?;
        store.checkpoint()?;
        Ok(())
    })
}

/// Documents a queue between two stages holds at most.
const STAGE_QUEUE: usize = 64;

/// Chunks gathered for one embedding call (the model batches by length
/// inside it).
const EMBED_BATCH_CHUNKS: usize = 256;

/// Prepared documents on their way to the committer, and what the observer
/// is to hear when they are committed.
struct Pending {
    /// Its number in this ingest (what an early context names it by).
    seq: u64,
    prepared: Option<Prepared>,
    /// Set on the last item of a file: (source, whether something failed).
    file_done: Option<(String, bool)>,
}

/// What the enrichment stage hands the embedding stage.
enum Staged {
    /// A chunk's LLM context came while the rest of its document waits for
    /// theirs: the text to embed for it, which can be embedded early.
    Early { seq: u64, chunk: usize, text: String },
    /// A document with all its contexts.
    Ready(Box<Pending>),
}

/// A pending item with its chunks' embeddings (None without an embedder), or
/// why they could not be made.
struct Embedded {
    pending: Pending,
    embeddings: Result<Option<Vec<Embedding>>, String>,
}

/// Chunks the enrichment stage gathers for one enrichment call with an LLM:
/// enough to keep every server slot busy, few enough that embedding of a
/// group overlaps the enrichment of the next.
fn enrich_group_chunks(pipeline: &Pipeline) -> usize {
    if pipeline.enricher.uses_llm() {
        (pipeline.llm_slots * 8).clamp(32, 256)
    } else {
        1
    }
}

/// The enrichment stage: takes what the workers made ready, gives its chunks
/// their contexts (LLM answers are kept in the store as they arrive), and
/// passes each document on. Returns its part of the summary.
fn enrich_stage(
    store: &Store,
    pipeline: &Pipeline,
    observer: &dyn IngestObserver,
    rx: mpsc::Receiver<FileResult>,
    tx: mpsc::SyncSender<Staged>,
) -> IngestSummary {
    let mut part = IngestSummary::default();
    let group = enrich_group_chunks(pipeline);
    let mut pending: Vec<Pending> = Vec::new();
    let mut seq = 0;
    // Early contexts only help where there is an embedder to start on them.
    let early = pipeline.embedder.is_some().then_some(&tx);
    while let Ok(first) = rx.recv() {
        let mut chunks = accept(&mut part, observer, &mut pending, &mut seq, first);
        while chunks < group {
            match rx.try_recv() {
                Ok(next) => chunks += accept(&mut part, observer, &mut pending, &mut seq, next),
                Err(_) => break,
            }
        }
        enrich(store, pipeline, observer, &mut part, &mut pending, early);
        for item in pending.drain(..) {
            if tx.send(Staged::Ready(Box::new(item))).is_err() {
                return part; // the committer stopped
            }
        }
    }
    part
}

/// Takes a worker's result into `pending`; returns the chunks it added.
fn accept(
    part: &mut IngestSummary,
    observer: &dyn IngestObserver,
    pending: &mut Vec<Pending>,
    seq: &mut u64,
    result: FileResult,
) -> usize {
    let mut next = || {
        *seq += 1;
        *seq
    };
    match result {
        FileResult::Documents { source, prepared, unchanged, failures, warnings } => {
            part.documents.unchanged += unchanged;
            let failed = !failures.is_empty();
            part.failed.extend(failures);
            part.warnings.extend(warnings);
            let n = prepared.len();
            let mut chunks = 0;
            for (i, p) in prepared.into_iter().enumerate() {
                part.analysis.add(&p.key.source, &p.analysis);
                chunks += p.chunks.len();
                pending.push(Pending {
                    seq: next(),
                    prepared: Some(p),
                    file_done: (i + 1 == n).then(|| (source.clone(), failed)),
                });
            }
            if n == 0 {
                pending.push(Pending { seq: next(), prepared: None, file_done: Some((source, failed)) });
            }
            chunks
        }
        FileResult::Skipped(note) => {
            observer.file_done(&note.source, false);
            part.skipped.push(note);
            0
        }
        FileResult::Failed(failure) => {
            observer.file_done(&failure.source, true);
            tracing::warn!("{}: {}", failure.source, failure.error);
            part.failed.push(failure);
            0
        }
    }
}

/// Gives every pending chunk its context (LLM answers are kept in the
/// store as they arrive). A document where the LLM could not answer for
/// some chunk is committed with heuristic contexts there and a
/// fingerprint that makes the next ingest try again. Each LLM context is
/// also sent `early` as it comes, with the text its chunk will be embedded
/// from, so the embedding stage can start on it while the rest of the
/// document is enriched (dropped when the queue is full: the chunk is then
/// embedded with its document).
fn enrich(
    store: &Store,
    pipeline: &Pipeline,
    observer: &dyn IngestObserver,
    part: &mut IngestSummary,
    pending: &mut [Pending],
    early: Option<&mpsc::SyncSender<Staged>>,
) {
    let enricher = &pipeline.enricher;
    if !enricher.enabled() {
        return;
    }
    let seqs: Vec<u64> = pending.iter().filter(|p| p.prepared.is_some()).map(|p| p.seq).collect();
    let prepared: Vec<&mut Prepared> = pending.iter_mut().filter_map(|p| p.prepared.as_mut()).collect();
    if prepared.iter().all(|p| p.chunks.is_empty()) {
        return;
    }
    let inputs: Vec<DocumentInput<'_>> = prepared
        .iter()
        .map(|p| DocumentInput { source: &p.key.source, document: &p.document, chunks: &p.chunks })
        .collect();
    let progress = |n: usize, seconds: f64| observer.phase_progress(Phase::Enrichment, n, seconds);
    let arrived = |doc: usize, chunk: usize, context: &datafactory_core::ChunkContext| {
        let (Some(tx), Some(d)) = (early, inputs.get(doc)) else { return };
        let Some(c) = d.chunks.get(chunk) else { return };
        let with_header = context.kind == datafactory_core::ContextKind::Llm;
        let text = pipeline.contextual_text(
            &d.document.title,
            &c.heading_path,
            Some((&context.text, with_header)),
            &c.text,
        );
        let _ = tx.try_send(Staged::Early { seq: seqs[doc], chunk, text });
    };
    let (contexts, summary) = enricher.enrich_streaming(&inputs, &StoreCache(store), &progress, &arrived);
    drop(inputs);
    for (p, c) in prepared.into_iter().zip(contexts) {
        if !c.complete {
            p.key.pipeline.push_str(";enrichment-incomplete");
        }
        for (chunk, context) in p.chunks.iter_mut().zip(c.contexts) {
            chunk.context = Some(context);
        }
    }
    part.enrichment.merge(summary);
}

/// How long an early context waits, at most, for others to be embedded
/// with (from the first of them: a steady stream of answers does not put
/// it off), and how many are embedded at once.
const EARLY_WAIT: Duration = Duration::from_millis(100);
const EARLY_BATCH_CHUNKS: usize = 32;

/// Chunks whose LLM context came before the rest of their document's:
/// waiting to be embedded, and embedded (with the text it was made from).
#[derive(Default)]
struct EarlyVectors {
    todo: Vec<(u64, usize, String)>,
    done: HashMap<(u64, usize), (String, Embedding)>,
}

impl EarlyVectors {
    /// Embeds what waits, in one call. A failure only costs the head start:
    /// those chunks are embedded again with their document.
    fn embed(&mut self, pipeline: &Pipeline, observer: &dyn IngestObserver, part: &mut IngestSummary) {
        let Some(embedder) = &pipeline.embedder else { return };
        if self.todo.is_empty() {
            return;
        }
        let todo = std::mem::take(&mut self.todo);
        let started = Instant::now();
        let refs: Vec<&str> = todo.iter().map(|t| t.2.as_str()).collect();
        match embedder.embed(&refs, InputKind::Passage) {
            Ok(vectors) => {
                let seconds = started.elapsed().as_secs_f64();
                part.embedding.seconds += seconds;
                observer.phase_progress(Phase::Embedding, todo.len(), seconds);
                for ((seq, chunk, text), v) in todo.into_iter().zip(vectors) {
                    self.done.insert((seq, chunk), (text, v));
                }
            }
            Err(e) => tracing::debug!("early embedding failed ({e}); embedding with the document instead"),
        }
    }

    /// Forgets what still waits for these documents: they are embedded
    /// whole now.
    fn drop_waiting(&mut self, seqs: &[u64]) {
        self.todo.retain(|t| !seqs.contains(&t.0));
    }

    /// The early vector of a chunk if it was made from `text` (its final
    /// embedding text); forgets the chunk either way.
    fn take(&mut self, seq: u64, chunk: usize, text: &str) -> Option<Embedding> {
        self.done.remove(&(seq, chunk)).filter(|(t, _)| t == text).map(|(_, v)| v)
    }
}

/// The embedding stage: embeds chunks whose LLM context came early (in
/// batches of `EARLY_BATCH_CHUNKS`, or when no more came for `EARLY_WAIT`), gathers enriched
/// documents up to a batch of chunks (what is ready, across documents),
/// embeds what of them was not embedded early in one call, and passes each
/// document on with its vectors. Returns its part of the summary.
fn embed_stage(
    pipeline: &Pipeline,
    observer: &dyn IngestObserver,
    rx: mpsc::Receiver<Staged>,
    tx: mpsc::SyncSender<Embedded>,
) -> IngestSummary {
    let mut part = IngestSummary::default();
    let batch = if pipeline.embedder.is_some() { EMBED_BATCH_CHUNKS } else { 1 };
    let chunks_of = |p: &Pending| p.prepared.as_ref().map_or(0, |p| p.chunks.len());
    let mut early = EarlyVectors::default();
    let mut early_since: Option<Instant> = None;
    loop {
        let message = if early.todo.is_empty() {
            early_since = None;
            rx.recv().ok()
        } else {
            let since = *early_since.get_or_insert_with(Instant::now);
            match rx.recv_timeout(EARLY_WAIT.saturating_sub(since.elapsed())) {
                Ok(m) => Some(m),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    early.embed(pipeline, observer, &mut part);
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => None,
            }
        };
        let first = match message {
            None => break,
            Some(Staged::Early { seq, chunk, text }) => {
                early.todo.push((seq, chunk, text));
                if early.todo.len() >= EARLY_BATCH_CHUNKS {
                    early.embed(pipeline, observer, &mut part);
                }
                continue;
            }
            Some(Staged::Ready(p)) => *p,
        };
        let mut chunks = chunks_of(&first);
        let mut pending = vec![first];
        while chunks < batch {
            match rx.try_recv() {
                Ok(Staged::Ready(next)) => {
                    chunks += chunks_of(&next);
                    pending.push(*next);
                }
                Ok(Staged::Early { seq, chunk, text }) => early.todo.push((seq, chunk, text)),
                Err(_) => break,
            }
        }
        let embeddings = embed(pipeline, observer, &mut part, &pending, &mut early);
        for (i, item) in pending.into_iter().enumerate() {
            let embeddings = match &embeddings {
                Err(e) => Err(e.clone()),
                Ok(all) => Ok(all[i].clone()),
            };
            if tx.send(Embedded { pending: item, embeddings }).is_err() {
                return part; // the committer stopped
            }
        }
    }
    part
}

/// The vectors of all pending chunks: those embedded early from the same
/// text, and one embedding call for the rest; per pending item, its chunks'
/// embeddings (None without an embedder).
fn embed(
    pipeline: &Pipeline,
    observer: &dyn IngestObserver,
    part: &mut IngestSummary,
    pending: &[Pending],
    early: &mut EarlyVectors,
) -> Result<Vec<Option<Vec<Embedding>>>, String> {
    let Some(embedder) = &pipeline.embedder else {
        return Ok(pending.iter().map(|_| None).collect());
    };
    early.drop_waiting(&pending.iter().map(|p| p.seq).collect::<Vec<_>>());
    // Per chunk, its early vector or its place among the texts to embed now.
    let mut slots: Vec<Result<Embedding, usize>> = Vec::new();
    let mut texts = Vec::new();
    for p in pending {
        let Some(prepared) = &p.prepared else { continue };
        for (i, c) in prepared.chunks.iter().enumerate() {
            let text = pipeline.embedding_text(&prepared.document.title, c);
            match early.take(p.seq, i, &text) {
                Some(v) => slots.push(Ok(v)),
                None => {
                    slots.push(Err(texts.len()));
                    texts.push(text);
                }
            }
        }
    }
    let mut fresh: Vec<Option<Embedding>> = Vec::new();
    if !texts.is_empty() {
        let started = Instant::now();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let vectors = embedder.embed(&refs, InputKind::Passage).map_err(|e| e.to_string())?;
        let seconds = started.elapsed().as_secs_f64();
        part.embedding.seconds += seconds;
        observer.phase_progress(Phase::Embedding, texts.len(), seconds);
        fresh = vectors.into_iter().map(Some).collect();
    }
    part.embedding.chunks += slots.len();
    let mut slots = slots.into_iter().map(|s| match s {
        Ok(v) => v,
        Err(i) => fresh[i].take().expect("one vector per text"),
    });
    Ok(pending
        .iter()
        .map(|p| p.prepared.as_ref().map(|p| slots.by_ref().take(p.chunks.len()).collect()))
        .collect())
}

/// The committing side of an ingest: one SQLite transaction per document,
/// in the order documents arrive; the word index committed in batches.
struct Committer<'a> {
    store: &'a Store,
    observer: &'a dyn IngestObserver,
    summary: &'a mut IngestSummary,
    last_flush: Instant,
    since_flush: usize,
}

impl Committer<'_> {
    fn commit_item(&mut self, item: Embedded) -> Result<(), IngestError> {
        let Embedded { pending, embeddings } = item;
        let mut failed = false;
        if let Some(p) = pending.prepared {
            match embeddings {
                Err(e) => {
                    failed = true;
                    self.summary.failed.push(Failure {
                        source: p.key.source.clone(),
                        location: None,
                        error: e,
                    });
                }
                Ok(vectors) => self.commit(&p, vectors.as_deref())?,
            }
        }
        if let Some((source, file_failed)) = pending.file_done {
            self.observer.file_done(&source, file_failed || failed);
        }
        self.flush()
    }

    /// Commits the word index when enough was written or enough time went
    /// by (the end of the ingest commits the rest: `Store::checkpoint`).
    fn flush(&mut self) -> Result<(), IngestError> {
        if self.since_flush > 0
            && (self.since_flush >= FLUSH_EVERY_DOCUMENTS || self.last_flush.elapsed() >= FLUSH_EVERY)
        {
            self.store.flush()?;
            self.last_flush = Instant::now();
            self.since_flush = 0;
        }
        Ok(())
    }

    fn commit(&mut self, p: &Prepared, embeddings: Option<&[Embedding]>) -> Result<(), IngestError> {
        let started = Instant::now();
        let outcome = self.store.commit_document(&p.key, &p.document, &p.chunks, embeddings)?;
        self.observer.phase_progress(Phase::Storage, 1, started.elapsed().as_secs_f64());
        let s = &mut self.summary;
        match outcome {
            CommitOutcome::Added => s.documents.added += 1,
            CommitOutcome::Replaced => s.documents.replaced += 1,
            CommitOutcome::Unchanged => {
                s.documents.unchanged += 1;
                return Ok(());
            }
        }
        s.chunks += p.chunks.len();
        self.since_flush += 1;
        Ok(())
    }
}

/// The store as the enrichment cache: LLM answers keyed by (document hash,
/// chunk hash, model, template version).
struct StoreCache<'a>(&'a Store);

impl ContextCache for StoreCache<'_> {
    fn get(&self, key: &CacheKey) -> Option<String> {
        self.0
            .llm_context(&key.document_hash, &key.chunk_hash, &key.model, &key.template)
            .map_err(|e| tracing::warn!("reading the context cache: {e}"))
            .ok()
            .flatten()
    }

    fn put(&self, key: &CacheKey, context: &str, call: &CallRecord) {
        let call = serde_json::to_value(call).unwrap_or_default();
        if let Err(e) = self.0.save_llm_context(
            &key.document_hash,
            &key.chunk_hash,
            &key.model,
            &key.template,
            context,
            &call,
        ) {
            tracing::warn!("keeping an LLM context: {e}");
        }
    }
}

/// Expands folders; reports paths that do not exist. Sorted, deduplicated.
fn collect_inputs(
    paths: &[PathBuf],
    pipeline: &Pipeline,
    all_files: bool,
    failed: &mut Vec<Failure>,
) -> Vec<Input> {
    let mut inputs = Vec::new();
    for path in paths {
        match std::fs::metadata(path) {
            Err(e) => failed.push(Failure {
                source: path.display().to_string(),
                location: None,
                error: format!("cannot read: {e}"),
            }),
            Ok(meta) if meta.is_dir() => {
                let walk = walkdir::WalkDir::new(path)
                    .sort_by_file_name()
                    .into_iter()
                    .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.'));
                for entry in walk {
                    match entry {
                        Ok(e) if e.file_type().is_file() => {
                            let ext = e
                                .path()
                                .extension()
                                .map(|x| x.to_string_lossy().to_ascii_lowercase())
                                .unwrap_or_default();
                            if all_files || pipeline.extensions.contains(&ext) {
                                inputs.push(Input { path: e.into_path(), explicit: false, source: None });
                            }
                        }
                        Ok(_) => {}
                        Err(e) => failed.push(Failure {
                            source: e.path().unwrap_or(path).display().to_string(),
                            location: None,
                            error: format!("cannot read: {e}"),
                        }),
                    }
                }
            }
            Ok(_) => inputs.push(Input { path: path.clone(), explicit: true, source: None }),
        }
    }
    for input in &mut inputs {
        if let Ok(p) = std::fs::canonicalize(&input.path) {
            input.path = p;
        }
    }
    inputs.sort_by(|a, b| a.path.cmp(&b.path));
    inputs.dedup_by(|a, b| {
        let same = a.path == b.path;
        if same {
            b.explicit |= a.explicit;
        }
        same
    });
    inputs
}

/// Reads, parses and chunks one file (worker side).
fn prepare_file(
    store: &Store,
    pipeline: &Pipeline,
    request: &IngestRequest,
    input: &Input,
    observer: &dyn IngestObserver,
) -> FileResult {
    let collection = request.collection.as_str();
    // A plan override is part of what decides the chunks.
    let fingerprint = match request.plan.as_ref().filter(|o| !o.is_empty()) {
        Some(o) => {
            format!("{};plan_override={}", pipeline.fingerprint, serde_json::to_string(o).unwrap_or_default())
        }
        None => pipeline.fingerprint.clone(),
    };
    let source = input.source.clone().unwrap_or_else(|| input.path.display().to_string());
    let fail = |error: String| FileResult::Failed(Failure { source: source.clone(), location: None, error });
    match std::fs::metadata(&input.path) {
        Ok(m) if m.len() > pipeline.max_file_bytes => {
            return fail(format!(
                "file is {} bytes, over the limit of {} (ingest.max_file_bytes)",
                m.len(),
                pipeline.max_file_bytes
            ))
        }
        Ok(_) => {}
        Err(e) => return fail(format!("cannot read: {e}")),
    }
    let bytes = match std::fs::read(&input.path) {
        Ok(b) => b,
        Err(e) => return fail(format!("cannot read: {e}")),
    };
    let format = match datafactory_parse::sniff(&bytes, Some(&input.path)) {
        Ok(f) => f,
        Err(e @ (ParseError::Binary { .. } | ParseError::Unsupported { .. })) if !input.explicit => {
            return FileResult::Skipped(Note { source, message: e.to_string() })
        }
        Err(e) => return fail(e.to_string()),
    };
    let file_hash = content_hash(&bytes);
    let single_id = document_id(collection, &source);
    // Unchanged input under the same pipeline: nothing to do, not even parsing.
    if format != datafactory_core::Format::Jsonl {
        if let Ok(Some((hash, fp))) = store.document_fingerprint(&single_id) {
            if hash == file_hash && fp == fingerprint {
                return FileResult::Documents {
                    source,
                    prepared: Vec::new(),
                    unchanged: 1,
                    failures: Vec::new(),
                    warnings: Vec::new(),
                };
            }
        }
    }
    let parsed = match datafactory_parse::parse(&bytes, Some(&input.path), &pipeline.parse_options) {
        Ok(p) => p,
        Err(e) => return fail(e.to_string()),
    };
    let multi = parsed.documents.len() > 1 || format == datafactory_core::Format::Jsonl;
    let mut prepared = Vec::with_capacity(parsed.documents.len());
    let mut unchanged = 0;
    for (i, mut document) in parsed.documents.into_iter().enumerate() {
        let (id, hash, doc_source) = if multi {
            let key = match &document.external_id {
                Some(ext) => format!("jsonl:{ext}"),
                None => format!("{source}#{}", i + 1),
            };
            let record = serde_json::to_vec(&document).unwrap_or_default();
            (document_id(collection, &key), content_hash(&record), format!("{source}#{}", i + 1))
        } else {
            (single_id.clone(), file_hash.clone(), source.clone())
        };
        if multi {
            if let Ok(Some((stored_hash, fp))) = store.document_fingerprint(&id) {
                if stored_hash == hash && fp == fingerprint {
                    unchanged += 1;
                    continue;
                }
            }
        }
        let (chunks, analysis, seconds) = pipeline.analyze_and_chunk(&mut document, request.plan.as_ref());
        observer.phase_progress(Phase::Analysis, 1, seconds);
        prepared.push(Prepared {
            key: DocumentKey {
                id,
                collection: collection.to_string(),
                source: doc_source,
                content_hash: hash,
                pipeline: fingerprint.clone(),
                byte_size: if multi { document.text.len() as u64 } else { bytes.len() as u64 },
            },
            document,
            chunks,
            analysis,
        });
    }
    let failures = parsed
        .failures
        .into_iter()
        .map(|f| Failure { source: source.clone(), location: Some(f.location), error: f.error })
        .collect();
    let warnings =
        parsed.warnings.into_iter().map(|message| Note { source: source.clone(), message }).collect();
    FileResult::Documents { source, prepared, unchanged, failures, warnings }
}
