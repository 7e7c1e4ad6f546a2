//! The enrichment and embedding stages between the workers and the committer,
//! joined by bounded queues, and early vectors for chunks whose LLM context
//! arrived before their document was done.
//!
//! Never writes documents (the committer does); LLM answers are cached through
//! `StoreCache`.

use super::*;

/// Documents a queue between two stages holds at most.
pub(crate) const STAGE_QUEUE: usize = 64;

/// Chunks gathered for one embedding call (the model batches by length
/// inside it).
pub(crate) const EMBED_BATCH_CHUNKS: usize = 256;

/// Prepared documents on their way to the committer, and what the observer
/// is to hear when they are committed.
pub(crate) struct Pending {
    /// Its number in this ingest (what an early context names it by).
    pub(crate) seq: u64,
    pub(crate) prepared: Option<Prepared>,
    /// Set on the last item of a file: (source, whether something failed).
    pub(crate) file_done: Option<(String, bool)>,
}

/// What the enrichment stage hands the embedding stage.
pub(crate) enum Staged {
    /// A chunk's LLM context came while the rest of its document waits for
    /// theirs: the text to embed for it, which can be embedded early.
    Early { seq: u64, chunk: usize, text: String },
    /// A document with all its contexts.
    Ready(Box<Pending>),
}

/// A pending item with its chunks' embeddings (None without an embedder), or
/// why they could not be made.
pub(crate) struct Embedded {
    pub(crate) pending: Pending,
    /// Per chunk, its vectors: one per window of its text.
    pub(crate) embeddings: Result<Option<Vec<Vec<Embedding>>>, String>,
}

/// Chunks the enrichment stage gathers for one enrichment call with an LLM:
/// enough to keep every server slot busy, few enough that embedding of a
/// group overlaps the enrichment of the next.
pub(crate) fn enrich_group_chunks(pipeline: &Pipeline) -> usize {
    if pipeline.enricher.uses_llm() {
        (pipeline.llm_slots * 8).clamp(32, 256)
    } else {
        1
    }
}

/// The enrichment stage: takes what the workers made ready, gives its chunks
/// their contexts (LLM answers are kept in the store as they arrive), and
/// passes each document on. Returns its part of the summary.
pub(crate) fn enrich_stage(
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
pub(crate) fn accept(
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
pub(crate) fn enrich(
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
pub(crate) const EARLY_WAIT: Duration = Duration::from_millis(100);
pub(crate) const EARLY_BATCH_CHUNKS: usize = 32;

/// Chunks whose LLM context came before the rest of their document's:
/// waiting to be embedded, and embedded (with the text it was made from).
#[derive(Default)]
pub(crate) struct EarlyVectors {
    pub(crate) todo: Vec<(u64, usize, String)>,
    pub(crate) done: HashMap<(u64, usize), (String, Vec<Embedding>)>,
}

impl EarlyVectors {
    /// Embeds what waits, in one call. A failure only costs the head start:
    /// those chunks are embedded again with their document.
    pub(crate) fn embed(
        &mut self,
        pipeline: &Pipeline,
        observer: &dyn IngestObserver,
        part: &mut IngestSummary,
    ) {
        let Some(embedder) = &pipeline.embedder else { return };
        if self.todo.is_empty() {
            return;
        }
        let todo = std::mem::take(&mut self.todo);
        let started = Instant::now();
        let refs: Vec<&str> = todo.iter().map(|t| t.2.as_str()).collect();
        match embedder.embed_passages(&refs) {
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
    pub(crate) fn drop_waiting(&mut self, seqs: &[u64]) {
        self.todo.retain(|t| !seqs.contains(&t.0));
    }

    /// The early vector of a chunk if it was made from `text` (its final
    /// embedding text); forgets the chunk either way.
    pub(crate) fn take(&mut self, seq: u64, chunk: usize, text: &str) -> Option<Vec<Embedding>> {
        self.done.remove(&(seq, chunk)).filter(|(t, _)| t == text).map(|(_, v)| v)
    }
}

/// The embedding stage: embeds chunks whose LLM context came early (in
/// batches of `EARLY_BATCH_CHUNKS`, or when no more came for `EARLY_WAIT`), gathers enriched
/// documents up to a batch of chunks (what is ready, across documents),
/// embeds what of them was not embedded early in one call, and passes each
/// document on with its vectors. Returns its part of the summary.
pub(crate) fn embed_stage(
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
pub(crate) fn embed(
    pipeline: &Pipeline,
    observer: &dyn IngestObserver,
    part: &mut IngestSummary,
    pending: &[Pending],
    early: &mut EarlyVectors,
) -> Result<Vec<Option<Vec<Vec<Embedding>>>>, String> {
    let Some(embedder) = &pipeline.embedder else {
        return Ok(pending.iter().map(|_| None).collect());
    };
    early.drop_waiting(&pending.iter().map(|p| p.seq).collect::<Vec<_>>());
    // Per chunk, its early vector or its place among the texts to embed now.
    let mut slots: Vec<Result<Vec<Embedding>, usize>> = Vec::new();
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
    let mut fresh: Vec<Option<Vec<Embedding>>> = Vec::new();
    if !texts.is_empty() {
        let started = Instant::now();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let vectors = embedder.embed_passages(&refs).map_err(|e| e.to_string())?;
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
