//! Remote model workers: `datafactory serve` nodes with the model serve
//! `/info`, `/embed` and `/embed_windows`; a node without it embeds through them
//! (`datafactory_remote::RemoteEmbedder`), spreading batches over them and
//! failing over when one stops. All on loopback, with the real
//! all-MiniLM-L6-v2.

mod common;

use common::{minilm, Running};
use datafactory_core::config::RemoteConfig;
use datafactory_core::{Config, Embedder, InputKind};
use datafactory_remote::RemoteEmbedder;
use datafactory_server::{serve_on, AppState};
use datafactory_store::Store;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

const KEY: &str = "worker-key-0123456789abcdef";

/// A service and the folder its store lives in.
struct Node {
    running: Running,
    _tmp: tempfile::TempDir,
}

impl std::ops::Deref for Node {
    type Target = Running;
    fn deref(&self) -> &Running {
        &self.running
    }
}

impl Node {
    /// A service on a loopback port, with `embedder` (or none) and the key.
    async fn start(embedder: Option<Arc<dyn Embedder>>, configure: impl FnOnce(&mut Config)) -> Node {
        let tmp = tempfile::tempdir().unwrap();
        let mut config = Config { data_dir: tmp.path().join("data"), ..Default::default() };
        config.server.api_keys = vec![KEY.to_string()];
        configure(&mut config);
        let store = Arc::new(Store::open(&config.data_dir).unwrap());
        let state = Arc::new(AppState::new(config, store, embedder, Some("no model (test)".into())));
        let running = Running::start(|l, s| serve_on(state, l, s)).await;
        Node { running, _tmp: tmp }
    }

    async fn stop(self) {
        self.running.stop().await;
    }
}

fn local_model(dir: &std::path::Path) -> Arc<dyn Embedder> {
    local_model_with(dir, Config::default().embedding.max_windows)
}

/// The model, cutting a long passage into `max_windows` windows at most.
fn local_model_with(dir: &std::path::Path, max_windows: usize) -> Arc<dyn Embedder> {
    let mut c = Config::default().embedding;
    c.max_windows = max_windows;
    c.model = dir.to_string_lossy().into_owned();
    c.allow_download = false;
    c.device = "cpu".into();
    datafactory_models::load_embedder(&c).unwrap()
}

/// bge-m3's architecture with a sparse head, tiny and random.
fn tiny_sparse() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures/tiny-xlmr-sparse")
}

fn settings() -> RemoteConfig {
    RemoteConfig {
        batch: 4,
        parallel: 2,
        attempts: 4,
        backoff_ms: 10,
        down_seconds: 60,
        ..Default::default()
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (n(a) * n(b))
}

fn texts(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("passage {i} about lemurs, rivers and the weather on Madagascar")).collect()
}

/// The client spreads a call's batches over both workers, answers what the
/// model in-process answers, and carries on when a worker stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedding_spreads_over_workers_and_fails_over() {
    let model = local_model(&minilm());
    let w1 = Node::start(Some(model.clone()), |_| {}).await;
    let w2 = Node::start(Some(model.clone()), |_| {}).await;
    let urls = vec![w1.base.clone(), w2.base.clone()];
    let (remote, first) = tokio::task::spawn_blocking({
        let (urls, model) = (urls.clone(), model.clone());
        move || {
            let remote = RemoteEmbedder::connect(&urls, KEY, "", &settings()).unwrap();
            assert_eq!(remote.model_id(), model.model_id());
            assert_eq!(remote.dimension(), model.dimension());
            let t = texts(20);
            let refs: Vec<&str> = t.iter().map(String::as_str).collect();
            let got = remote.embed(&refs, InputKind::Passage).unwrap();
            let want = model.embed(&refs, InputKind::Passage).unwrap();
            for (g, w) in got.iter().zip(&want) {
                assert!(cosine(&g.dense, &w.dense) > 0.99999, "{}", cosine(&g.dense, &w.dense));
            }
            let states = remote.endpoints();
            (remote, states)
        }
    })
    .await
    .unwrap();
    // 20 texts in batches of 4 (and the probe): both workers had a share.
    assert!(first.iter().all(|s| s.requests >= 1 && s.failures == 0), "{first:?}");
    assert_eq!(first.iter().map(|s| s.requests).sum::<u64>(), 6, "{first:?}");

    // A wrong key is refused at once, naming the worker and the status.
    let refused = tokio::task::spawn_blocking({
        let urls = urls.clone();
        move || RemoteEmbedder::connect(&urls, "wrong", "", &settings()).err().unwrap().to_string()
    })
    .await
    .unwrap();
    assert!(refused.contains("401"), "{refused}");

    // One worker stops: the next calls go to the other.
    w1.stop().await;
    let (remote, after) = tokio::task::spawn_blocking(move || {
        let t = texts(12);
        let refs: Vec<&str> = t.iter().map(String::as_str).collect();
        let got = remote.embed(&refs, InputKind::Query).unwrap();
        assert_eq!(got.len(), 12);
        let states = remote.endpoints();
        (remote, states)
    })
    .await
    .unwrap();
    assert!(after[0].failures >= 1 && !after[0].in_pool, "{after:?}");
    assert!(after[1].requests > first[1].requests, "{after:?}");

    // No worker left: a clear error.
    w2.stop().await;
    let error = tokio::task::spawn_blocking(move || remote.embed(&["x"], InputKind::Passage).unwrap_err())
        .await
        .unwrap()
        .to_string();
    assert!(error.contains("no worker answered") && error.contains("unreachable"), "{error}");
}

/// A node with no model ingests and searches by meaning through a worker;
/// its vectors are stored as the worker's model's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_model_ingests_and_searches_through_a_worker() {
    let model = local_model(&minilm());
    let worker = Node::start(Some(model.clone()), |_| {}).await;
    let url = worker.base.clone();
    let remote: Arc<dyn Embedder> = tokio::task::spawn_blocking(move || {
        Arc::new(RemoteEmbedder::connect(&[url], KEY, "", &settings()).unwrap()) as Arc<dyn Embedder>
    })
    .await
    .unwrap();
    let node = Node::start(Some(remote), |c| c.embedding.model = String::new()).await;
    let c = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    let documents = json!({"documents": [
        {"id": "cats", "text": "Cats are small felines that purr and chase mice."},
        {"id": "rain", "text": "Precipitation forms when water vapour condenses in clouds."},
        {"id": "cars", "text": "An internal combustion engine burns fuel to move a vehicle."},
    ]});
    let r = c
        .post(format!("{}/ingest?wait=true", node.base))
        .bearer_auth(KEY)
        .json(&documents)
        .send()
        .await
        .unwrap();
    let job: Value = r.json().await.unwrap();
    assert_eq!(job["state"], "succeeded", "{job:#}");
    assert_eq!(job["summary"]["embedding"]["model"], model.model_id(), "{job:#}");
    let v: Value = c
        .get(format!("{}/search", node.base))
        .bearer_auth(KEY)
        .query(&[("q", "why does it rain"), ("mode", "dense"), ("top_k", "1")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["results"][0]["document_id"].as_str().map(|s| s.len()), Some(32), "{v:#}");
    assert!(v["results"][0]["text"].as_str().unwrap().contains("Precipitation"), "{v:#}");
    // /ready shows the worker as the node's pool knows it.
    let ready: Value =
        c.get(format!("{}/ready", node.base)).bearer_auth(KEY).send().await.unwrap().json().await.unwrap();
    let workers = ready["embedding"]["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 1, "{ready:#}");
    assert_eq!(workers[0]["url"], worker.base, "{ready:#}");
    assert_eq!(workers[0]["in_pool"], true, "{ready:#}");
    assert!(workers[0]["requests"].as_u64().unwrap() >= 2, "{ready:#}");
    node.stop().await;
    worker.stop().await;
}

/// A passage longer than the model reads is embedded whole on a DataFactory
/// worker, one vector per window, as the model in-process embeds it: a node
/// embedding remotely stores what a node with the model stores. Workers
/// that cut passages into different numbers of windows are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_passages_get_every_window_through_a_worker() {
    let model = local_model(&minilm());
    assert!(model.max_windows() > 1);
    let w1 = Node::start(Some(model.clone()), |_| {}).await;
    let w2 = Node::start(Some(model.clone()), |_| {}).await;
    let urls = vec![w1.base.clone(), w2.base.clone()];
    tokio::task::spawn_blocking({
        let (urls, model) = (urls.clone(), model.clone());
        move || {
            let remote = RemoteEmbedder::connect(&urls, KEY, "", &settings()).unwrap();
            assert_eq!(remote.max_windows(), model.max_windows());
            // Short passages, and long ones of about 2, 4 and 20 windows
            // (MiniLM reads 256 tokens; past max_windows the rest is not embedded).
            let mut passages = texts(5);
            for words in [300, 700, 4000] {
                passages.push(
                    (0..words).map(|i| format!("word{} ", i % 97)).collect::<String>()
                        + "and the lemurs of Madagascar.",
                );
            }
            let refs: Vec<&str> = passages.iter().map(String::as_str).collect();
            let got = remote.embed_passages(&refs).unwrap();
            let want = model.embed_passages(&refs).unwrap();
            let counts =
                |v: &Vec<Vec<datafactory_core::Embedding>>| v.iter().map(Vec::len).collect::<Vec<_>>();
            assert_eq!(counts(&got), counts(&want));
            assert_eq!(counts(&got)[..5], [1; 5]);
            assert!(counts(&got)[6] > counts(&got)[5] && counts(&got)[5] > 1, "{:?}", counts(&got));
            assert_eq!(counts(&got)[7], model.max_windows());
            for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
                assert!(cosine(&g.dense, &w.dense) > 0.99999, "{}", cosine(&g.dense, &w.dense));
            }
            // Both workers had a share (batches of 4 passages), each a request.
            let states = remote.endpoints();
            assert!(states.iter().all(|s| s.requests >= 1 && s.failures == 0), "{states:?}");
        }
    })
    .await
    .unwrap();

    // A worker that truncates (max_windows 1) beside one with windows: refused.
    let w3 = Node::start(Some(local_model_with(&minilm(), 1)), |_| {}).await;
    let error = tokio::task::spawn_blocking({
        let urls = vec![w1.base.clone(), w3.base.clone()];
        move || RemoteEmbedder::connect(&urls, KEY, "", &settings()).err().unwrap().to_string()
    })
    .await
    .unwrap();
    assert!(error.contains("embed differently") && error.contains("embedding.max_windows"), "{error}");
    // Alone, it is used as it embeds: a long passage's first window only.
    let (truncated, first) = tokio::task::spawn_blocking({
        let url = w3.base.clone();
        move || {
            let remote = RemoteEmbedder::connect(&[url], KEY, "", &settings()).unwrap();
            let long = "lemurs of Madagascar ".repeat(300);
            let passages = remote.embed_passages(&[long.as_str()]).unwrap();
            (remote.max_windows(), passages[0].len())
        }
    })
    .await
    .unwrap();
    assert_eq!((truncated, first), (1, 1));
    for w in [w1, w2, w3] {
        w.stop().await;
    }
}

/// A worker whose model has a sparse head (bge-m3's architecture, tiny and
/// random) sends its sparse weights with the dense vectors, for queries and
/// for every window of a passage: a node embedding on it searches by sparse
/// weights too and stores what a node with the model stores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparse_weights_come_back_from_a_worker() {
    let model = local_model(&tiny_sparse());
    assert!(model.produces_sparse());
    let worker = Node::start(Some(model.clone()), |_| {}).await;
    let url = worker.base.clone();
    tokio::task::spawn_blocking(move || {
        let remote = RemoteEmbedder::connect(&[url], KEY, "", &settings()).unwrap();
        assert!(remote.produces_sparse());
        let mut passages = texts(3);
        passages.push("lemurs and rivers of Madagascar ".repeat(200));
        let refs: Vec<&str> = passages.iter().map(String::as_str).collect();
        let same = |g: &datafactory_core::Embedding, w: &datafactory_core::Embedding| {
            assert!(cosine(&g.dense, &w.dense) > 0.99999, "{}", cosine(&g.dense, &w.dense));
            assert!(!w.sparse.is_empty());
            let ids = |e: &datafactory_core::Embedding| e.sparse.iter().map(|p| p.0).collect::<Vec<_>>();
            assert_eq!(ids(g), ids(w));
            for (a, b) in g.sparse.iter().zip(&w.sparse) {
                assert!((a.1 - b.1).abs() <= 1e-5 * b.1.abs().max(1.0), "{a:?} {b:?}");
            }
        };
        for kind in [InputKind::Query, InputKind::Passage] {
            let got = remote.embed(&refs, kind).unwrap();
            let want = model.embed(&refs, kind).unwrap();
            assert_eq!(got.len(), want.len());
            got.iter().zip(&want).for_each(|(g, w)| same(g, w));
        }
        let got = remote.embed_passages(&refs).unwrap();
        let want = model.embed_passages(&refs).unwrap();
        assert_eq!(
            got.iter().map(Vec::len).collect::<Vec<_>>(),
            want.iter().map(Vec::len).collect::<Vec<_>>()
        );
        assert!(want[3].len() > 1, "the long passage has windows");
        got.iter().flatten().zip(want.iter().flatten()).for_each(|(g, w)| same(g, w));
    })
    .await
    .unwrap();
    worker.stop().await;
}

/// A worker that speaks only TEI's API, as text-embeddings-inference does:
/// `GET /info` without DataFactory's fields, `POST /embed` answering dense
/// vectors of the inputs truncated (`prompt_name` picks the query prompt).
/// Simulated here over the in-process model: TEI itself cannot run on
/// these machines.
async fn tei_like(model: Arc<dyn Embedder>) -> Running {
    use axum::routing::{get, post};
    let info = json!({"model_id": model.model_id(), "max_input_length": model.max_input_tokens(),
                      "max_client_batch_size": 32, "version": "1.8.0"});
    let app = axum::Router::new().route("/info", get(move || async move { axum::Json(info) })).route(
        "/embed",
        post(move |axum::Json(r): axum::Json<Value>| async move {
            let texts: Vec<String> = match &r["inputs"] {
                Value::String(s) => vec![s.clone()],
                v => serde_json::from_value(v.clone()).unwrap(),
            };
            let kind = if r["prompt_name"] == "query" { InputKind::Query } else { InputKind::Passage };
            let vectors = tokio::task::spawn_blocking(move || {
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                model.embed(&refs, kind).unwrap().into_iter().map(|e| e.dense).collect::<Vec<_>>()
            })
            .await
            .unwrap();
            axum::Json(vectors)
        }),
    );
    Running::start(|l, s| async move { axum::serve(l, app).with_graceful_shutdown(s).await }).await
}

/// TEI workers are used as TEI embeds: dense only, a long passage's first
/// window, queries with the configured `prompt_name`. A TEI worker beside
/// DataFactory ones is refused (their vectors for long passages differ).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tei_workers_give_dense_vectors_of_the_first_window() {
    let model = local_model(&minilm());
    let tei = tei_like(model.clone()).await;
    let node = Node::start(Some(model.clone()), |_| {}).await;
    let (tei_url, node_url) = (tei.base.clone(), node.base.clone());
    tokio::task::spawn_blocking(move || {
        let remote =
            RemoteEmbedder::connect(std::slice::from_ref(&tei_url), "", "query", &settings()).unwrap();
        assert_eq!((remote.max_windows(), remote.produces_sparse()), (1, false));
        let long = "lemurs of Madagascar ".repeat(300);
        let mut passages = texts(5);
        passages.push(long);
        let refs: Vec<&str> = passages.iter().map(String::as_str).collect();
        let got = remote.embed_passages(&refs).unwrap();
        assert!(got.iter().all(|w| w.len() == 1));
        let want = model.embed(&refs, InputKind::Passage).unwrap();
        for (g, w) in got.iter().flatten().zip(&want) {
            assert!(cosine(&g.dense, &w.dense) > 0.99999 && g.sparse.is_empty());
        }
        let got = remote.embed(&refs[..2], InputKind::Query).unwrap();
        let want = model.embed(&refs[..2], InputKind::Query).unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!(cosine(&g.dense, &w.dense) > 0.99999);
        }
        let error =
            RemoteEmbedder::connect(&[node_url, tei_url], KEY, "", &settings()).err().unwrap().to_string();
        assert!(error.contains("embed differently") && error.contains("as TEI does"), "{error}");
    })
    .await
    .unwrap();
    tei.stop().await;
    node.stop().await;
}

/// Workers must serve one model; an unknown prompt is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_of_different_models_are_refused() {
    let w1 = Node::start(Some(local_model(&minilm())), |_| {}).await;
    let w2 = Node::start(Some(local_model(&tiny_sparse())), |_| {}).await;
    let urls = vec![w1.base.clone(), w2.base.clone()];
    let error = tokio::task::spawn_blocking(move || {
        RemoteEmbedder::connect(&urls, KEY, "", &settings()).err().unwrap().to_string()
    })
    .await
    .unwrap();
    assert!(error.contains("serve different models"), "{error}");
    let c = reqwest::Client::new();
    let r = c
        .post(format!("{}/embed", w1.base))
        .bearer_auth(KEY)
        .json(&json!({"inputs": ["x"], "prompt_name": "summary"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    w1.stop().await;
    w2.stop().await;
}
