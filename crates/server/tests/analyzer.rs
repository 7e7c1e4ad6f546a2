//! The analyzer service on a loopback port: uploads, text and parsed
//! documents; keys and the body limit; and the ingest pipeline asking it
//! (`analysis.url`), or falling back to its own heuristics when it is gone.

mod common;

use common::Running;
use datafactory_core::Config;
use datafactory_ingest::{IngestRequest, Pipeline, Quiet};
use datafactory_server::analyzer::{serve_on, AnalyzerState};
use datafactory_store::Store;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const KEY: &str = "analyzer-key-0123456789";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// Starts the service on a loopback port.
async fn start(configure: impl FnOnce(&mut Config)) -> Running {
    let mut config = Config::default();
    configure(&mut config);
    let state = Arc::new(AnalyzerState::new(&config));
    Running::start(|l, s| serve_on(state, l, s)).await
}

fn upload(name: &str) -> reqwest::multipart::Form {
    let bytes = std::fs::read(fixtures().join(name)).unwrap();
    reqwest::multipart::Form::new()
        .part("file", reqwest::multipart::Part::bytes(bytes).file_name(name.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyze_over_http() {
    let service = start(|c| {
        c.server.api_keys = vec![KEY.into()];
        c.server.max_body_bytes = 64 * 1024;
    })
    .await;
    let base = service.base.clone();
    let c = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let url = format!("{base}/analyze");
    assert_eq!(c.get(format!("{base}/health")).send().await.unwrap().status(), 200);
    // Keys as in the DataFactory service.
    let r = c.post(&url).json(&json!({"text": "hello there"})).send().await.unwrap();
    assert_eq!(r.status(), 401);

    // An upload: the Markdown handbook.
    let r = c.post(&url).bearer_auth(KEY).multipart(upload("sample.md")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let a: Value = r.json().await.unwrap();
    assert_eq!(a["doc_type"], "manual", "{a:#}");
    assert_eq!(a["route"], "heuristic");
    assert_eq!(a["format"], "markdown");
    assert_eq!(a["language"]["code"], "eng");
    assert_eq!(a["structure"]["headings"], 7);
    assert_eq!(a["plan"]["keep_code_whole"], true);
    assert!(a["signals"].as_array().unwrap().len() >= 2);
    // The same again: the same answer.
    let again: Value = c
        .post(&url)
        .bearer_auth(KEY)
        .multipart(upload("sample.md"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(a, again);

    // A PDF, and a JSONL file of two records (one analysis each).
    let a: Value = c
        .post(&url)
        .bearer_auth(KEY)
        .multipart(upload("sample.pdf"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(a["structure"]["pages"], 3, "{a:#}");
    let v: Value = c
        .post(&url)
        .bearer_auth(KEY)
        .multipart(upload("sample.jsonl"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["analyses"].as_array().unwrap().len(), 2, "{v:#}");

    // Text, sniffed like a file.
    let licence = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/anthropic_docs_rag/LICENSE");
    let contract = std::fs::read_to_string(licence).unwrap();
    let a: Value = c
        .post(&url)
        .bearer_auth(KEY)
        .json(&json!({"text": contract, "title": "LICENSE"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(a["doc_type"], "legal", "{a:#}");

    // A parsed document, as the ingest pipeline sends it.
    let bytes = std::fs::read(fixtures().join("sample.docx")).unwrap();
    let doc = datafactory_parse::parse(&bytes, Some(Path::new("x.docx")), &Default::default())
        .unwrap()
        .documents[0]
        .clone();
    let a: Value = c
        .post(&url)
        .bearer_auth(KEY)
        .json(&json!({"document": doc}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(a, serde_json::to_value(datafactory_analyze::analyze(&doc)).unwrap());

    // Refusals: empty text, not a document, over the body limit.
    let r = c.post(&url).bearer_auth(KEY).json(&json!({"text": "  "})).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let r = c.post(&url).bearer_auth(KEY).json(&json!({"nothing": 1})).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let garbage = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(vec![0u8, 159, 146, 150, 0, 1, 2, 255]).file_name("x.bin"),
    );
    let r = c.post(&url).bearer_auth(KEY).multipart(garbage).send().await.unwrap();
    assert_eq!(r.status(), 422);
    let big = "word ".repeat(20_000);
    let r = c.post(&url).bearer_auth(KEY).json(&json!({"text": big})).send().await.unwrap();
    assert_eq!(r.status(), 413);
    let metrics =
        c.get(format!("{base}/metrics")).bearer_auth(KEY).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("route=\"/analyze\",status=\"200\""), "{metrics}");
    // Only what this service does: no ingest or search counters stuck at 0.
    assert!(!metrics.contains("datafactory_documents_ingested_total"), "{metrics}");
    assert!(!metrics.contains("datafactory_searches_reranked_total"), "{metrics}");
    service.stop().await;
}

/// Ingest with `analysis.url`: the service's analysis is stored; with the
/// service gone, the pipeline's own heuristics answer and the analysis says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_asks_the_analyzer_service() {
    let service = start(|c| c.server.api_keys = vec![KEY.into()]).await;
    let base = service.base.clone();
    let tmp = tempfile::tempdir().unwrap();
    let mut config = Config { data_dir: tmp.path().join("data"), ..Default::default() };
    config.embedding.model = String::new();
    config.analysis.url = base.clone();
    config.analysis.api_key = KEY.into();
    let analysis = |config: Config| {
        tokio::task::spawn_blocking(move || {
            let store = Store::open(&config.data_dir).unwrap();
            let pipeline = Pipeline::new(&config);
            let request = IngestRequest {
                paths: vec![fixtures().join("sample.md")],
                collection: "default".into(),
                ..Default::default()
            };
            let summary = datafactory_ingest::ingest(&store, &pipeline, &request, &Quiet).unwrap();
            assert_eq!(summary.documents.added + summary.documents.replaced, 1, "{summary:?}");
            assert_eq!(summary.analysis.documents, 1);
            let fallbacks = summary.analysis.fallbacks.len();
            let listed = store.list_documents(None).unwrap();
            let doc = store.get_document(&listed[0].id).unwrap().unwrap();
            (serde_json::to_value(&doc).unwrap()["metadata"]["analysis"].clone(), fallbacks)
        })
    };
    let (a, fallbacks) = analysis(config.clone()).await.unwrap();
    assert_eq!(a["doc_type"], "manual", "{a:#}");
    assert!(a.get("fallback").is_none(), "{a:#}");
    assert_eq!(fallbacks, 0);
    service.stop().await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    // The service is gone: the heuristics in-process, with the reason.
    config.data_dir = tmp.path().join("data2");
    let (a, fallbacks) = analysis(config).await.unwrap();
    assert_eq!(fallbacks, 1);
    assert_eq!(a["doc_type"], "manual", "{a:#}");
    assert!(a["fallback"].as_str().unwrap().contains(&base), "{a:#}");
}

/// A chat-completions server on a loopback port that answers a valid verdict
/// after `delay`.
async fn slow_llm(delay: Duration) -> String {
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(move || async move {
            tokio::time::sleep(delay).await;
            let verdict = json!({"doc_type": "prose", "plan": {"strategy": "sections", "max_tokens": 300,
                "overlap_tokens": 0, "keep_tables_whole": true, "keep_code_whole": true}, "reason": "llm"});
            axum::Json(
                json!({"choices": [{"message": {"role": "assistant", "content": verdict.to_string()}}]}),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

/// The LLM route behind the service: its answer, its fallback when the LLM
/// is slower than `analysis.timeout_seconds`, 408 when the request takes
/// longer than `server.request_timeout_seconds`, 429 beyond the concurrency limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_llm_route_behind_the_service() {
    let llm = slow_llm(Duration::from_millis(1500)).await;
    let text = json!({"text": "A short note about the weather in spring and the birds that come back."});
    let c = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let configure = |llm: String, llm_timeout: u64, request_timeout: u64| {
        move |c: &mut Config| {
            c.analysis.route = "llm".into();
            c.analysis.llm_url = llm;
            c.analysis.llm_model = "test-model".into();
            c.analysis.timeout_seconds = llm_timeout;
            c.server.request_timeout_seconds = request_timeout;
            c.server.max_concurrent_requests = 1;
        }
    };
    // The LLM answers in time.
    let service = start(configure(llm.clone(), 10, 10)).await;
    let base = service.base.clone();
    let url = format!("{base}/analyze");
    let a: Value = c.post(&url).json(&text).send().await.unwrap().json().await.unwrap();
    assert_eq!((a["route"].as_str(), a["reason"].as_str()), (Some("llm"), Some("llm")), "{a:#}");
    // One request at a time: a second one while the first waits for the LLM gets 429.
    let first = tokio::spawn({
        let (c, url, text) = (c.clone(), url.clone(), text.clone());
        async move { c.post(&url).json(&text).send().await.unwrap().status() }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(c.post(&url).json(&text).send().await.unwrap().status(), 429);
    assert_eq!(first.await.unwrap(), 200);
    service.stop().await;

    // The LLM is slower than analysis.timeout_seconds: the heuristics answer.
    let service = start(configure(llm.clone(), 1, 10)).await;
    let base = service.base.clone();
    let a: Value = c.post(format!("{base}/analyze")).json(&text).send().await.unwrap().json().await.unwrap();
    assert_eq!(a["route"], "heuristic", "{a:#}");
    assert!(a["fallback"].as_str().unwrap().contains("LLM"), "{a:#}");
    service.stop().await;

    // The request is slower than server.request_timeout_seconds: 408.
    let service = start(configure(llm, 10, 1)).await;
    let base = service.base.clone();
    let r = c.post(format!("{base}/analyze")).json(&text).send().await.unwrap();
    assert_eq!(r.status(), 408);
    service.stop().await;
}
