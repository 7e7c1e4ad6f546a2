//! The LLM route against real HTTP servers on loopback ports, speaking the
//! OpenAI chat-completions protocol: one that answers a valid verdict, one
//! whose message is not valid JSON, one whose JSON breaks the schema, one
//! that answers too slowly, one that fails, and none at all. Every failure
//! falls back to the heuristics and says why.

use axum::routing::post;
use axum::{Json, Router};
use datafactory_analyze::{analyze, Analyzer, DocType, Route};
use datafactory_core::config::AnalysisConfig;
use datafactory_core::{ChunkStrategy, Document};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A chat-completions server answering `content` as the assistant's message
/// after `delay`; it keeps the requests it got.
fn llm_server(content: &'static str, delay: Duration, status: u16) -> (String, Arc<Mutex<Vec<Value>>>) {
    llm_server_finishing(content, delay, status, "stop")
}

fn llm_server_finishing(
    content: &'static str,
    delay: Duration,
    status: u16,
    finish_reason: &'static str,
) -> (String, Arc<Mutex<Vec<Value>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move |Json(body): Json<Value>| {
            let log = log.clone();
            async move {
                log.lock().unwrap().push(body);
                tokio::time::sleep(delay).await;
                let answer = json!({
                    "id": "chatcmpl-test", "object": "chat.completion", "model": "test-model",
                    "choices": [{"index": 0, "finish_reason": finish_reason,
                                 "message": {"role": "assistant", "content": content}}]
                });
                (axum::http::StatusCode::from_u16(status).unwrap(), Json(answer))
            }
        }),
    );
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    let addr = rx.recv().unwrap();
    (format!("http://{addr}/v1"), seen)
}

fn analyzer(url: &str, timeout_seconds: u64) -> Analyzer {
    Analyzer::from_config(&AnalysisConfig {
        route: "llm".into(),
        llm_url: url.into(),
        llm_model: "test-model".into(),
        llm_api_key: "llm-key".into(),
        timeout_seconds,
        ..Default::default()
    })
}

fn handbook() -> Document {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/sample.md");
    let bytes = std::fs::read(&path).unwrap();
    datafactory_parse::parse(&bytes, Some(&path), &Default::default()).unwrap().documents.remove(0)
}

const VALID: &str = r#"{"doc_type": "academic", "plan": {"strategy": "lines", "max_tokens": 300,
    "overlap_tokens": 20, "keep_tables_whole": false, "keep_code_whole": true},
    "reason": "reads like a paper"}"#;

#[test]
fn a_valid_answer_is_taken() {
    let (url, seen) = llm_server(VALID, Duration::ZERO, 200);
    let doc = handbook();
    let a = analyzer(&url, 10).analyze(&doc);
    assert_eq!(a.route, Route::Llm);
    assert_eq!(a.analyzer, "llm:test-model");
    assert_eq!(a.doc_type, DocType::Academic);
    assert_eq!(a.plan.strategy, ChunkStrategy::Lines);
    assert_eq!((a.plan.max_tokens, a.plan.overlap_tokens), (300, 20));
    assert_eq!(a.reason, "reads like a paper");
    assert!(a.fallback.is_none());
    // Measured, not asked: the structure is the heuristics'.
    assert_eq!(a.structure, analyze(&doc).structure);
    // The request: the model, a JSON schema, the document's beginning.
    let requests = seen.lock().unwrap();
    let r = &requests[0];
    assert_eq!(r["model"], "test-model");
    assert_eq!(r["max_tokens"], 1024, "the answer is capped");
    assert_eq!(r["response_format"]["type"], "json_schema");
    let schema = &r["response_format"]["json_schema"]["schema"];
    assert_eq!(schema["properties"]["doc_type"]["enum"].as_array().unwrap().len(), DocType::ALL.len());
    assert!(r["messages"][1]["content"].as_str().unwrap().contains("marzipan"));
}

#[test]
fn a_fenced_answer_is_read() {
    let (url, _) = llm_server(
        "```json\n{\"doc_type\": \"manual\", \"plan\": {\"strategy\": \"sections\", \"max_tokens\": 256, \
         \"overlap_tokens\": 0, \"keep_tables_whole\": true, \"keep_code_whole\": true}, \"reason\": \"docs\"}\n```",
        Duration::ZERO,
        200,
    );
    let a = analyzer(&url, 10).analyze(&handbook());
    assert_eq!((a.route, a.doc_type, a.plan.max_tokens), (Route::Llm, DocType::Manual, 256));
}

fn assert_fell_back(a: &datafactory_analyze::Analysis, why: &str) {
    let heuristic = analyze(&handbook());
    assert_eq!(a.route, Route::Heuristic, "{a:#?}");
    assert_eq!(a.doc_type, heuristic.doc_type);
    assert_eq!(a.plan, heuristic.plan);
    let fallback = a.fallback.as_deref().unwrap_or_default();
    assert!(fallback.contains(why), "{fallback:?} should say {why:?}");
}

#[test]
fn invalid_json_falls_back() {
    let (url, _) = llm_server("Sure! This looks like a manual to me.", Duration::ZERO, 200);
    assert_fell_back(&analyzer(&url, 10).analyze(&handbook()), "not a valid verdict");
}

#[test]
fn an_answer_outside_the_schema_falls_back() {
    // An unknown type.
    let (url, _) = llm_server(
        r#"{"doc_type": "poem", "plan": {"strategy": "lines", "max_tokens": 300, "overlap_tokens": 0,
            "keep_tables_whole": false, "keep_code_whole": false}, "reason": "x"}"#,
        Duration::ZERO,
        200,
    );
    assert_fell_back(&analyzer(&url, 10).analyze(&handbook()), "not a valid verdict");
    // A size the schema forbids.
    let (url, _) = llm_server(
        r#"{"doc_type": "prose", "plan": {"strategy": "lines", "max_tokens": 5, "overlap_tokens": 0,
            "keep_tables_whole": false, "keep_code_whole": false}, "reason": "x"}"#,
        Duration::ZERO,
        200,
    );
    assert_fell_back(&analyzer(&url, 10).analyze(&handbook()), "max_tokens");
}

#[test]
fn a_slow_llm_times_out_and_falls_back() {
    // The server would answer a valid verdict, but only after a minute: the
    // analysis has given up on it (one-second timeout) and fallen back; had
    // it waited, it would have taken the verdict.
    let (url, seen) = llm_server(VALID, Duration::from_secs(60), 200);
    let a = analyzer(&url, 1).analyze(&handbook());
    assert!(!seen.lock().unwrap().is_empty(), "the request reached the server");
    assert_fell_back(&a, "timed out");
}

#[test]
fn an_error_status_or_no_server_falls_back() {
    let (url, _) = llm_server("{}", Duration::ZERO, 500);
    assert_fell_back(&analyzer(&url, 10).analyze(&handbook()), "HTTP 500");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let a = analyzer(&format!("http://127.0.0.1:{port}/v1"), 10).analyze(&handbook());
    assert_fell_back(&a, &format!("127.0.0.1:{port}"));
}

#[test]
fn an_answer_cut_at_max_tokens_falls_back() {
    // Even a verdict that parses is not taken when the server says it was cut.
    let (url, _) = llm_server_finishing(VALID, Duration::ZERO, 200, "length");
    assert_fell_back(
        &analyzer(&url, 10).analyze(&handbook()),
        "the answer was cut short (finish_reason \"length\": at max_tokens 1024",
    );
}
