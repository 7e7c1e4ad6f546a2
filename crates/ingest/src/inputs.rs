//! Input collection and the work of one file: folders walked, files read,
//! parsed, analysed and chunked on the worker threads (`prepare_file`).
//!
//! Reads the store only to skip unchanged documents; never writes it.

use super::*;

/// One document ready to commit.
pub(crate) struct Prepared {
    pub(crate) key: DocumentKey,
    pub(crate) document: Document,
    pub(crate) chunks: Vec<Chunk>,
    pub(crate) analysis: Analysis,
}

/// What a worker made of one file.
pub(crate) enum FileResult {
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
pub(crate) struct Input {
    pub(crate) path: PathBuf,
    pub(crate) explicit: bool,
    /// The source name, when it is not the path.
    pub(crate) source: Option<String>,
}

/// Expands folders; reports paths that do not exist. Sorted, deduplicated.
pub(crate) fn collect_inputs(
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
pub(crate) fn prepare_file(
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
