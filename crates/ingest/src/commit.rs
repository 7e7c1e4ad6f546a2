//! The committing side of an ingest: one transaction per document in the order
//! documents arrive, the word index flushed in batches, and the store as the
//! enrichment cache.
//!
//! The only code of the pipeline that writes documents.

use super::*;

/// The committing side of an ingest: one SQLite transaction per document,
/// in the order documents arrive; the word index committed in batches.
pub(crate) struct Committer<'a> {
    pub(crate) store: &'a Store,
    pub(crate) observer: &'a dyn IngestObserver,
    pub(crate) summary: &'a mut IngestSummary,
    pub(crate) last_flush: Instant,
    pub(crate) since_flush: usize,
}

impl Committer<'_> {
    pub(crate) fn commit_item(&mut self, item: Embedded) -> Result<(), IngestError> {
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
    pub(crate) fn flush(&mut self) -> Result<(), IngestError> {
        if self.since_flush > 0
            && (self.since_flush >= FLUSH_EVERY_DOCUMENTS || self.last_flush.elapsed() >= FLUSH_EVERY)
        {
            self.store.flush()?;
            self.last_flush = Instant::now();
            self.since_flush = 0;
        }
        Ok(())
    }

    pub(crate) fn commit(
        &mut self,
        p: &Prepared,
        embeddings: Option<&[Vec<Embedding>]>,
    ) -> Result<(), IngestError> {
        let started = Instant::now();
        let outcome = self.store.commit_windows(&p.key, &p.document, &p.chunks, embeddings)?;
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
pub(crate) struct StoreCache<'a>(pub(crate) &'a Store);

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
