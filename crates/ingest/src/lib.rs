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
mod commit;
mod inputs;
mod pipeline;
mod report;
mod stages;
use commit::*;
use inputs::*;
pub use pipeline::{query_embedding, Pipeline};
pub use report::*;
use serde::Serialize;
use stages::*;
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
