//! Ingest with LLM servers: every chunk gets an LLM context, stored with it;
//! servers lost mid-ingest cost no document; a re-ingest asks the LLM only
//! for what it did not answer before. Real llama-servers over the tiny model
//! (see crates/enrich/tests/common).

#[path = "../../enrich/tests/common/mod.rs"]
mod common;

use common::{llama_server, openai_endpoint, tools};
use datafactory_core::config::Config;
use datafactory_core::ContextKind;
use datafactory_ingest::{ingest, IngestObserver, IngestRequest, Phase, Pipeline};
use datafactory_store::Store;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Kills the servers it holds once `after` chunks have their context.
struct KillAfter {
    after: usize,
    done: AtomicUsize,
    victims: Mutex<Vec<common::Process>>,
}

impl IngestObserver for KillAfter {
    fn phase_progress(&self, phase: Phase, items: usize, _seconds: f64) {
        if phase == Phase::Enrichment && self.done.fetch_add(items, Ordering::SeqCst) + items >= self.after {
            for mut p in self.victims.lock().unwrap().drain(..) {
                p.kill();
            }
        }
    }
}

fn config(data: &std::path::Path, urls: &[String]) -> Config {
    let mut c = Config { data_dir: data.to_path_buf(), ..Default::default() };
    c.embedding.model = String::new();
    // Small chunks, many per document (the analyzer's plan would cut bigger ones).
    c.chunking.max_tokens = 64;
    c.analysis.follow_plan = false;
    c.enrichment.endpoints = urls.iter().map(|u| openai_endpoint(u, 2, 16384)).collect();
    c.enrichment.max_answer_tokens = 16;
    c.enrichment.backoff_ms = 50;
    c.enrichment.attempts = 2;
    c
}

#[test]
fn llm_contexts_survive_lost_servers_and_are_never_asked_twice() {
    let _turn = common::serial();
    let Some(t) = tools() else { return };
    let dir = tempfile::tempdir().unwrap();
    let docs = dir.path().join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    for i in 0..4 {
        std::fs::write(docs.join(format!("report-{i}.md")), common::document_text(100 + i, 3, 600)).unwrap();
    }
    let data = dir.path().join("data");

    // First ingest: both servers die part of the way through.
    let servers: Vec<_> = (0..2).map(|_| llama_server(&t, 2, 16384)).collect();
    let urls: Vec<String> = servers.iter().map(|s| s.url.clone()).collect();
    let cfg = config(&data, &urls);
    let store = Store::open(&data).unwrap();
    let request =
        IngestRequest { paths: vec![docs.clone()], collection: "default".into(), ..Default::default() };
    let observer = KillAfter { after: 12, done: AtomicUsize::new(0), victims: Mutex::new(servers) };
    let first = ingest(&store, &Pipeline::new(&cfg), &request, &observer).unwrap();
    assert!(observer.victims.lock().unwrap().is_empty(), "the servers were killed");
    assert_eq!(first.documents.added, 4, "{first:#?}");
    assert!(first.failed.is_empty(), "{first:#?}");
    let e = &first.enrichment;
    assert_eq!(e.mode, "llm");
    assert_eq!(e.chunks.llm + e.chunks.fallback, first.chunks, "{e:#?}");
    assert!(e.chunks.llm >= 12 && e.chunks.fallback > 0, "{e:#?}");
    // Every answer is kept; every chunk has a context, stored with it.
    assert_eq!(store.llm_context_count().unwrap() as usize, e.chunks.llm);
    let mut kinds = (0, 0);
    for d in store.list_documents(None).unwrap() {
        for c in store.get_document(&d.id).unwrap().unwrap().chunks {
            match c.context.expect("every chunk has a context").kind {
                ContextKind::Llm => kinds.0 += 1,
                ContextKind::Heuristic => kinds.1 += 1,
            }
        }
    }
    assert_eq!(kinds, (e.chunks.llm, e.chunks.fallback));
    drop(store);

    // Second ingest, after a "restart", with fresh servers: documents left
    // with heuristic contexts are done again, asking only for the chunks
    // that got no answer.
    let servers: Vec<_> = (0..2).map(|_| llama_server(&t, 2, 16384)).collect();
    let urls: Vec<String> = servers.iter().map(|s| s.url.clone()).collect();
    let cfg = config(&data, &urls);
    let store = Store::open(&data).unwrap();
    let second = ingest(&store, &Pipeline::new(&cfg), &request, &datafactory_ingest::Quiet).unwrap();
    let e2 = &second.enrichment;
    let requests: u64 = e2.endpoints.iter().map(|x| x.requests).sum();
    assert_eq!(e2.chunks.llm, e.chunks.fallback, "{e2:#?}");
    assert_eq!(requests as usize, e.chunks.fallback, "one request per chunk not answered before: {e2:#?}");
    assert_eq!(e2.chunks.fallback, 0);
    assert_eq!(second.documents.replaced + second.documents.unchanged, 4);
    assert_eq!(store.llm_context_count().unwrap() as usize, first.chunks);
    for d in store.list_documents(None).unwrap() {
        for c in store.get_document(&d.id).unwrap().unwrap().chunks {
            let context = c.context.unwrap();
            assert_eq!(context.kind, ContextKind::Llm);
            assert_eq!(context.model.as_deref(), Some("tiny"));
        }
    }

    // Into another collection: the same documents and chunks, all answered
    // already, so no request at all.
    let other = IngestRequest { collection: "copy".into(), ..request.clone() };
    let third = ingest(&store, &Pipeline::new(&cfg), &other, &datafactory_ingest::Quiet).unwrap();
    assert_eq!(third.enrichment.chunks.cached, first.chunks, "{:#?}", third.enrichment);
    assert_eq!(third.enrichment.endpoints.iter().map(|x| x.requests).sum::<u64>(), 0);
    drop(servers);
}
