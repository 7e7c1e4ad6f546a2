//! Pipelined phases: embedding of early documents overlaps the enrichment
//! of later ones (a real llama-server over the tiny model, see
//! crates/enrich/tests/common, and a slow test embedder), and the pipelined
//! ingest stores what a document-at-a-time ingest stores.

#[path = "../../enrich/tests/common/mod.rs"]
mod common;

use common::{llama_server, openai_endpoint, tools};
use datafactory_core::config::Config;
use datafactory_core::{
    ContextKind, EmbedError, Embedder, Embedding, HeuristicTokenCounter, InputKind, TokenCounter,
};
use datafactory_ingest::{ingest, IngestObserver, IngestRequest, Phase, Pipeline};
use datafactory_store::Store;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Vectors from the text's bytes (the same text, the same vector), each
/// call taking `delay`; remembers every text it embedded.
struct SlowEmbedder {
    delay: Duration,
    texts: Mutex<Vec<String>>,
}

impl SlowEmbedder {
    fn new(delay: Duration) -> Arc<SlowEmbedder> {
        Arc::new(SlowEmbedder { delay, texts: Mutex::new(Vec::new()) })
    }
}

fn vector_of(text: &str) -> Vec<f32> {
    let mut v = [0.0f32; 8];
    for (i, b) in text.bytes().enumerate() {
        v[i % 8] += b as f32;
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
    v.iter().map(|x| x / norm).collect()
}

impl Embedder for SlowEmbedder {
    fn model_id(&self) -> &str {
        "test/slow"
    }
    fn dimension(&self) -> usize {
        8
    }
    fn max_input_tokens(&self) -> usize {
        512
    }
    fn produces_sparse(&self) -> bool {
        false
    }
    fn embed(&self, texts: &[&str], _kind: InputKind) -> Result<Vec<Embedding>, EmbedError> {
        std::thread::sleep(self.delay);
        self.texts.lock().unwrap().extend(texts.iter().map(|t| t.to_string()));
        Ok(texts.iter().map(|t| Embedding { dense: vector_of(t), sparse: Vec::new() }).collect())
    }
    fn token_counter(&self) -> Arc<dyn TokenCounter> {
        Arc::new(HeuristicTokenCounter)
    }
}

/// When each phase reported progress: (phase, when, seconds it took).
#[derive(Default)]
struct Timeline(Mutex<Vec<(Phase, Instant, f64)>>);

impl IngestObserver for Timeline {
    fn phase_progress(&self, phase: Phase, _items: usize, seconds: f64) {
        self.0.lock().unwrap().push((phase, Instant::now(), seconds));
    }
}

fn write_docs(dir: &std::path::Path, n: u64) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        std::fs::write(dir.join(format!("report-{i:02}.md")), common::document_text(200 + i, 3, 500))
            .unwrap();
    }
}

fn base_config(data: &std::path::Path) -> Config {
    let mut c = Config { data_dir: data.to_path_buf(), ..Default::default() };
    c.chunking.max_tokens = 64;
    c.analysis.follow_plan = false;
    c
}

/// Per document source: its chunks as (text, context text, context kind).
type Stored = BTreeMap<String, Vec<(String, Option<(String, ContextKind)>)>>;

/// What the store holds, and the contextual text of every stored chunk
/// (what its vector must have been made from).
fn stored(store: &Store, pipeline: &Pipeline) -> (Stored, Vec<String>) {
    let mut out = Stored::new();
    let mut texts = Vec::new();
    for d in store.list_documents(None).unwrap() {
        let detail = store.get_document(&d.id).unwrap().unwrap();
        let name = std::path::Path::new(&d.source).file_name().unwrap().to_string_lossy().to_string();
        let mut chunks = Vec::new();
        for c in detail.chunks {
            let context = c.context.as_ref().map(|x| (x.text.as_str(), x.kind == ContextKind::Llm));
            texts.push(pipeline.contextual_text(&d.title, &c.heading_path, context, &c.text));
            chunks.push((c.text, c.context.map(|x| (x.text, x.kind))));
        }
        out.insert(name, chunks);
    }
    texts.sort();
    (out, texts)
}

/// An ingest of what `write` puts in a folder, enriched by a real
/// llama-server (2 slots, answers of 16 tokens) and embedded by a
/// [`SlowEmbedder`] taking `delay` per call.
struct LlmIngest {
    summary: datafactory_ingest::IngestSummary,
    /// When each phase reported progress.
    events: Vec<(Phase, Instant, f64)>,
    store: Store,
    pipeline: Pipeline,
    embedder: Arc<SlowEmbedder>,
    _server: common::Process,
    _dir: tempfile::TempDir,
}

fn ingest_with_llm(t: &common::Tools, write: impl FnOnce(&std::path::Path), delay: Duration) -> LlmIngest {
    let dir = tempfile::tempdir().unwrap();
    let docs = dir.path().join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    write(&docs);
    let data = dir.path().join("data");
    let server = llama_server(t, 2, 16384);
    let mut cfg = base_config(&data);
    cfg.enrichment.endpoints = vec![openai_endpoint(&server.url, 2, 16384)];
    cfg.enrichment.max_answer_tokens = 16;
    let embedder = SlowEmbedder::new(delay);
    let pipeline = Pipeline::with_embedder(&cfg, Some(embedder.clone() as Arc<dyn Embedder>));
    let store = Store::open(&data).unwrap();
    let request = IngestRequest { paths: vec![docs], collection: "default".into(), ..Default::default() };
    let timeline = Timeline::default();
    let summary = ingest(&store, &pipeline, &request, &timeline).unwrap();
    assert!(summary.failed.is_empty(), "{summary:#?}");
    assert_eq!(summary.enrichment.chunks.llm, summary.chunks, "{:#?}", summary.enrichment);
    assert_eq!(summary.embedding.chunks, summary.chunks);
    let events = timeline.0.lock().unwrap().clone();
    LlmIngest { summary, events, store, pipeline, embedder, _server: server, _dir: dir }
}

impl LlmIngest {
    /// Every chunk has its LLM context, and its vector was made from the
    /// text with that very context, once (no chunk embedded before its
    /// context was in). Returns what the store holds.
    fn assert_each_chunk_embedded_once_from_its_context(&self) -> Stored {
        let (stored, mut contextual) = stored(&self.store, &self.pipeline);
        assert!(stored.values().flatten().all(|c| matches!(&c.1, Some((_, ContextKind::Llm)))));
        let mut embedded = self.embedder.texts.lock().unwrap().clone();
        embedded.sort();
        contextual.sort();
        assert_eq!(embedded, contextual);
        assert_eq!(self.store.stats().unwrap().embedded_chunks as usize, self.summary.chunks);
        stored
    }
}

#[test]
fn embedding_overlaps_enrichment_and_every_vector_reads_its_final_context() {
    let _turn = common::serial();
    let Some(t) = tools() else { return };
    let run = ingest_with_llm(&t, |docs| write_docs(docs, 12), Duration::from_millis(1000));
    assert_eq!(run.summary.documents.added, 12, "{:#?}", run.summary);

    // Some LLM answer arrived while an embedding call was running: the two
    // phases overlapped (one after the other, none could).
    let calls: Vec<(Instant, Instant)> = run
        .events
        .iter()
        .filter(|e| e.0 == Phase::Embedding)
        .map(|&(_, end, seconds)| (end - Duration::from_secs_f64(seconds), end))
        .collect();
    let answers: Vec<Instant> = run.events.iter().filter(|e| e.0 == Phase::Enrichment).map(|e| e.1).collect();
    assert!(calls.len() >= 2, "several embedding calls: {}", calls.len());
    let during = answers.iter().filter(|&&a| calls.iter().any(|&(s, e)| s < a && a < e)).count();
    assert!(during > 0, "no LLM answer arrived during any of {} embedding calls", calls.len());
    let first_embedding_end = calls.iter().map(|c| c.1).min().unwrap();
    let last_answer = answers.iter().max().unwrap();
    assert!(
        first_embedding_end < *last_answer,
        "the first documents were embedded before the last were enriched"
    );

    let stored = run.assert_each_chunk_embedded_once_from_its_context();
    assert_eq!(stored.len(), 12);
}

/// One big document: its chunks are embedded as their LLM contexts come,
/// while the rest of the document is still being enriched, and each chunk is
/// embedded once, from its final context.
#[test]
fn one_document_is_embedded_while_it_is_enriched() {
    let _turn = common::serial();
    let Some(t) = tools() else { return };
    let write = |docs: &std::path::Path| {
        std::fs::write(docs.join("big.md"), common::document_text(300, 3, 500)).unwrap();
    };
    let run = ingest_with_llm(&t, write, Duration::from_millis(20));
    assert_eq!(run.summary.documents.added, 1, "{:#?}", run.summary);
    assert!(run.summary.chunks >= 16, "a big document: {} chunks", run.summary.chunks);

    // Chunks of the document were embedded before its last LLM answer came.
    let last_answer = run.events.iter().filter(|e| e.0 == Phase::Enrichment).map(|e| e.1).max().unwrap();
    let early = run.events.iter().filter(|e| e.0 == Phase::Embedding && e.1 < last_answer).count();
    assert!(early > 0, "no embedding call ended before the document's last LLM answer");

    run.assert_each_chunk_embedded_once_from_its_context();
}

#[test]
fn the_pipelined_ingest_stores_what_one_document_at_a_time_stores() {
    let dir = tempfile::tempdir().unwrap();
    let docs = dir.path().join("docs");
    write_docs(&docs, 10);
    let run = |name: &str, one_at_a_time: bool| {
        let data = dir.path().join(name);
        let mut cfg = base_config(&data);
        cfg.enrichment.mode = "heuristic".into();
        let embedder = SlowEmbedder::new(Duration::from_millis(5));
        let pipeline = Pipeline::with_embedder(&cfg, Some(embedder.clone() as Arc<dyn Embedder>));
        let store = Store::open(&data).unwrap();
        let mut files: Vec<_> = std::fs::read_dir(&docs).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        let batches: Vec<Vec<std::path::PathBuf>> =
            if one_at_a_time { files.into_iter().map(|f| vec![f]).collect() } else { vec![files] };
        let mut chunks = 0;
        for paths in batches {
            let request = IngestRequest { paths, collection: "default".into(), ..Default::default() };
            let s = ingest(&store, &pipeline, &request, &datafactory_ingest::Quiet).unwrap();
            assert!(s.failed.is_empty(), "{s:#?}");
            assert_eq!(s.embedding.chunks, s.chunks);
            chunks += s.chunks;
        }
        let (stored, contextual) = stored(&store, &pipeline);
        let mut embedded = embedder.texts.lock().unwrap().clone();
        embedded.sort();
        assert_eq!(embedded, contextual, "every vector reads its chunk's context");
        assert_eq!(store.stats().unwrap().embedded_chunks as usize, chunks);
        (stored, embedded)
    };
    let pipelined = run("pipelined", false);
    let sequential = run("sequential", true);
    assert_eq!(pipelined.0.len(), 10);
    assert!(pipelined.0.values().flatten().all(|c| matches!(&c.1, Some((_, ContextKind::Heuristic)))));
    assert_eq!(pipelined.0, sequential.0, "the same chunks and contexts");
    assert_eq!(pipelined.1, sequential.1, "the same embedded texts, so the same vectors");
}
