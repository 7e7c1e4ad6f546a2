//! The ingest pipeline: input files → parse → chunk → one atomic commit per
//! document. Used by the CLI now and by the HTTP service later; it knows
//! nothing of either (progress goes to an [`IngestObserver`]).
//!
//! Parsing and chunking run on worker threads; one thread commits, in the
//! order documents become ready. A file that fails (unreadable, too large,
//! corrupt, empty) is recorded with its reason and the batch goes on; only a
//! failure of the store itself stops it.

use datafactory_chunk::Chunker;
use datafactory_core::config::{validate_collection, Config};
use datafactory_core::{
    content_hash, document_id, Chunk, Document, HeuristicTokenCounter, TokenCounter,
};
use datafactory_parse::{ParseError, ParseOptions};
use datafactory_store::{CommitOutcome, DocumentKey, Store, StoreError};
use serde::Serialize;
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

/// Parser and chunker settings, and their fingerprint.
#[derive(Clone)]
pub struct Pipeline {
    chunker: Chunker,
    parse_options: ParseOptions,
    max_file_bytes: u64,
    extensions: Vec<String>,
    workers: usize,
    fingerprint: String,
}

impl Pipeline {
    pub fn new(config: &Config) -> Pipeline {
        Self::with_counter(config, Arc::new(HeuristicTokenCounter))
    }

    /// A pipeline whose chunks are budgeted by `counter` (e.g. the embedding
    /// model's tokenizer).
    pub fn with_counter(config: &Config, counter: Arc<dyn TokenCounter>) -> Pipeline {
        let chunker = Chunker::new(&config.chunking, counter);
        let fingerprint = format!(
            "parser-v{};{}",
            datafactory_parse::PARSER_VERSION,
            chunker.fingerprint()
        );
        let workers = match config.ingest.workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        Pipeline {
            chunker,
            parse_options: ParseOptions {
                max_decompressed_bytes: config.ingest.max_decompressed_bytes,
            },
            max_file_bytes: config.ingest.max_file_bytes,
            extensions: config
                .ingest
                .extensions
                .iter()
                .map(|e| e.to_ascii_lowercase())
                .collect(),
            workers,
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
}

/// What to ingest.
#[derive(Debug, Clone)]
pub struct IngestRequest {
    /// Files and folders; folders are walked recursively.
    pub paths: Vec<PathBuf>,
    pub collection: String,
    /// Take every file in walked folders, not only known document extensions
    /// (files that are not documents are then skipped, not failed).
    pub all_files: bool,
}

/// Told about progress as the ingest runs.
pub trait IngestObserver: Sync {
    fn started(&self, _files: usize) {}
    fn file_done(&self, _source: &str, _failed: bool) {}
}

/// An observer that ignores everything.
pub struct Quiet;
impl IngestObserver for Quiet {}

#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub source: String,
    /// Where in the file, for multi-record inputs (`"line 12"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    pub error: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Note {
    pub source: String,
    pub message: String,
}

/// The result of one ingest; its JSON shape is the CLI's `ingest --json`.
#[derive(Debug, Clone, Default, Serialize)]
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
    pub elapsed_seconds: f64,
    pub documents_per_second: f64,
    pub chunks_per_second: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
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
}

/// One document ready to commit.
struct Prepared {
    key: DocumentKey,
    document: Document,
    chunks: Vec<Chunk>,
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
    let mut summary = IngestSummary {
        collection: request.collection.clone(),
        ..Default::default()
    };
    let inputs = collect_inputs(
        &request.paths,
        pipeline,
        request.all_files,
        &mut summary.failed,
    );
    summary.files = inputs.len();
    observer.started(inputs.len());
    let job_id = store.create_job("ingest", Some(&request.collection))?;
    summary.job_id = job_id.clone();

    let result = run(store, pipeline, request, &inputs, observer, &mut summary);
    summary.documents.failed = summary.failed.len();
    summary.elapsed_seconds = started.elapsed().as_secs_f64();
    let written = summary.documents.added + summary.documents.replaced;
    if summary.elapsed_seconds > 0.0 {
        summary.documents_per_second = written as f64 / summary.elapsed_seconds;
        summary.chunks_per_second = summary.chunks as f64 / summary.elapsed_seconds;
    }
    let state = match &result {
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
        let (tx, rx) = mpsc::sync_channel::<FileResult>(workers * 4);
        for _ in 0..workers {
            let tx = tx.clone();
            let next = &next;
            scope.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(input) = inputs.get(i) else { break };
                let result = prepare_file(store, pipeline, &request.collection, input);
                if tx.send(result).is_err() {
                    break; // the committer stopped
                }
            });
        }
        drop(tx);
        let mut last_flush = Instant::now();
        let mut since_flush = 0usize;
        let outcome = (|| -> Result<(), IngestError> {
            for result in rx.iter() {
                match result {
                    FileResult::Documents {
                        source,
                        prepared,
                        unchanged,
                        failures,
                        warnings,
                    } => {
                        summary.documents.unchanged += unchanged;
                        for p in prepared {
                            match store.commit_document(&p.key, &p.document, &p.chunks)? {
                                CommitOutcome::Added => summary.documents.added += 1,
                                CommitOutcome::Replaced => summary.documents.replaced += 1,
                                CommitOutcome::Unchanged => {
                                    summary.documents.unchanged += 1;
                                    continue;
                                }
                            }
                            summary.chunks += p.chunks.len();
                            since_flush += 1;
                        }
                        let failed = !failures.is_empty();
                        summary.failed.extend(failures);
                        summary.warnings.extend(warnings);
                        observer.file_done(&source, failed);
                    }
                    FileResult::Skipped(note) => {
                        observer.file_done(&note.source, false);
                        summary.skipped.push(note);
                    }
                    FileResult::Failed(failure) => {
                        observer.file_done(&failure.source, true);
                        tracing::warn!("{}: {}", failure.source, failure.error);
                        summary.failed.push(failure);
                    }
                }
                if since_flush >= FLUSH_EVERY_DOCUMENTS
                    || (since_flush > 0 && last_flush.elapsed() >= FLUSH_EVERY)
                {
                    store.flush()?;
                    last_flush = Instant::now();
                    since_flush = 0;
                }
            }
            Ok(())
        })();
        // Stop the workers early if committing failed.
        next.store(inputs.len(), Ordering::Relaxed);
        drop(rx);
        outcome?;
        store.flush()?;
        Ok(())
    })
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
                    .filter_entry(|e| {
                        e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.')
                    });
                for entry in walk {
                    match entry {
                        Ok(e) if e.file_type().is_file() => {
                            let ext = e
                                .path()
                                .extension()
                                .map(|x| x.to_string_lossy().to_ascii_lowercase())
                                .unwrap_or_default();
                            if all_files || pipeline.extensions.contains(&ext) {
                                inputs.push(Input {
                                    path: e.into_path(),
                                    explicit: false,
                                });
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
            Ok(_) => inputs.push(Input {
                path: path.clone(),
                explicit: true,
            }),
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
fn prepare_file(store: &Store, pipeline: &Pipeline, collection: &str, input: &Input) -> FileResult {
    let source = input.path.display().to_string();
    let fail = |error: String| {
        FileResult::Failed(Failure {
            source: source.clone(),
            location: None,
            error,
        })
    };
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
        Err(e @ (ParseError::Binary { .. } | ParseError::Unsupported { .. }))
            if !input.explicit =>
        {
            return FileResult::Skipped(Note {
                source,
                message: e.to_string(),
            })
        }
        Err(e) => return fail(e.to_string()),
    };
    let file_hash = content_hash(&bytes);
    let single_id = document_id(collection, &source);
    // Unchanged input under the same pipeline: nothing to do, not even parsing.
    if format != datafactory_core::Format::Jsonl {
        if let Ok(Some((hash, fp))) = store.document_fingerprint(&single_id) {
            if hash == file_hash && fp == pipeline.fingerprint {
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
    let parsed = match datafactory_parse::parse(&bytes, Some(&input.path), &pipeline.parse_options)
    {
        Ok(p) => p,
        Err(e) => return fail(e.to_string()),
    };
    let multi = parsed.documents.len() > 1 || format == datafactory_core::Format::Jsonl;
    let mut prepared = Vec::with_capacity(parsed.documents.len());
    for (i, document) in parsed.documents.into_iter().enumerate() {
        let (id, hash, doc_source) = if multi {
            let key = match &document.external_id {
                Some(ext) => format!("jsonl:{ext}"),
                None => format!("{source}#{}", i + 1),
            };
            let record = serde_json::to_vec(&document).unwrap_or_default();
            (
                document_id(collection, &key),
                content_hash(&record),
                format!("{source}#{}", i + 1),
            )
        } else {
            (single_id.clone(), file_hash.clone(), source.clone())
        };
        let chunks = pipeline.chunker.chunk(&document);
        prepared.push(Prepared {
            key: DocumentKey {
                id,
                collection: collection.to_string(),
                source: doc_source,
                content_hash: hash,
                pipeline: pipeline.fingerprint.clone(),
                byte_size: if multi {
                    document.text.len() as u64
                } else {
                    bytes.len() as u64
                },
            },
            document,
            chunks,
        });
    }
    let failures = parsed
        .failures
        .into_iter()
        .map(|f| Failure {
            source: source.clone(),
            location: Some(f.location),
            error: f.error,
        })
        .collect();
    let warnings = parsed
        .warnings
        .into_iter()
        .map(|message| Note {
            source: source.clone(),
            message,
        })
        .collect();
    FileResult::Documents {
        source,
        prepared,
        unchanged: 0,
        failures,
        warnings,
    }
}
