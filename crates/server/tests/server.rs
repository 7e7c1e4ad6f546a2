//! The real service on a loopback port: ingest (JSON and uploads), jobs,
//! search, documents, keys, limits, metrics, concurrency.

mod common;

use common::{check_answer, minilm, Running};
use datafactory_core::Config;
use datafactory_server::{serve_on, AppState};
use datafactory_store::Store;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const KEY: &str = "test-key-0123456789abcdef";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

struct Server {
    running: Running,
    _tmp: tempfile::TempDir,
    data: PathBuf,
}

impl Server {
    async fn start(configure: impl FnOnce(&mut Config)) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let mut config = Config { data_dir: data.clone(), ..Default::default() };
        config.embedding.model = String::new();
        configure(&mut config);
        let embedder = if config.embedding.model.is_empty() {
            None
        } else {
            Some(datafactory_models::load_embedder(&config.embedding).unwrap())
        };
        let store = Arc::new(Store::open(&data).unwrap());
        let state = Arc::new(AppState::new(config, store, embedder, Some("words only (test)".into())));
        let running = Running::start(|l, s| serve_on(state, l, s)).await;
        Server { running, _tmp: tmp, data }
    }

    fn url(&self, path: &str) -> String {
        self.running.url(path)
    }

    async fn stop(self) {
        self.running.stop().await;
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap()
}

/// POSTs `body` as JSON and reads the answer as JSON, whatever its status.
async fn post_json(c: &reqwest::Client, url: impl reqwest::IntoUrl, body: &Value) -> Value {
    c.post(url).json(body).send().await.unwrap().json().await.unwrap()
}

async fn sources(c: &reqwest::Client, s: &Server, q: &str) -> Vec<String> {
    let v: Value = c
        .get(s.url("/search"))
        .query(&[("q", q), ("top_k", "5")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["results"].as_array().unwrap().iter().map(|r| r["source"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_search_documents_over_http() {
    let s = Server::start(|_| {}).await;
    let c = client();
    assert_eq!(c.get(s.url("/health")).send().await.unwrap().status(), 200);

    // JSON, waiting for the job.
    let r = c
        .post(s.url("/ingest?wait=true"))
        .json(
            &json!({"text": "The walrus is a large flippered marine mammal.", "title": "Walrus", "id": "w1"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let job: Value = r.json().await.unwrap();
    assert_eq!(job["state"], "succeeded", "{job:#}");
    assert_eq!(job["summary"]["documents"]["added"], 1);

    // Uploads, without waiting: 202, then the job is polled to its end.
    let mut form = reqwest::multipart::Form::new();
    for name in ["sample.pdf", "sample.docx", "sample.md"] {
        let bytes = std::fs::read(fixtures().join(name)).unwrap();
        form = form.part("file", reqwest::multipart::Part::bytes(bytes).file_name(name.to_string()));
    }
    // A hostile name: `..` is dropped, and the name is only a source name.
    form = form.part(
        "file",
        reqwest::multipart::Part::bytes(b"Notes about narwhals.".to_vec())
            .file_name("../../../../tmp/evil.txt"),
    );
    let r = c.post(s.url("/ingest")).multipart(form).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let accepted: Value = r.json().await.unwrap();
    let id = accepted["job_id"].as_str().unwrap().to_string();
    let mut state = String::new();
    for _ in 0..200 {
        let v: Value = c.get(s.url(&format!("/jobs/{id}"))).send().await.unwrap().json().await.unwrap();
        state = v["state"].as_str().unwrap().to_string();
        if state != "queued" && state != "running" {
            assert_eq!(v["files"]["total"], 4, "{v:#}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state, "succeeded");
    assert_eq!(sources(&c, &s, "quasar").await[0], "upload:sample.pdf");
    assert_eq!(sources(&c, &s, "zeppelin").await[0], "upload:sample.docx");
    assert_eq!(sources(&c, &s, "narwhals").await[0], "upload:tmp/evil.txt");
    assert!(
        !Path::new("/tmp/evil.txt").exists()
            || std::fs::read("/tmp/evil.txt").unwrap() != b"Notes about narwhals."
    );
    // Upload folders are removed once ingested.
    assert_eq!(std::fs::read_dir(s.data.join("uploads")).unwrap().count(), 0);

    // The same file again is the same document: unchanged.
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(std::fs::read(fixtures().join("sample.md")).unwrap())
            .file_name("sample.md"),
    );
    let v: Value =
        c.post(s.url("/ingest?wait=true")).multipart(form).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["summary"]["documents"]["unchanged"], 1, "{v:#}");

    // POST search, documents, delete.
    let v: Value =
        post_json(&c, s.url("/search"), &json!({"query": "marzipan", "top_k": 3, "mode": "lexical"})).await;
    assert_eq!(v["retrievers"], json!(["words"]));
    let doc_id = v["results"][0]["document_id"].as_str().unwrap().to_string();
    // Filters: by document id (GET) and by metadata (POST).
    let other = c
        .get(s.url("/search"))
        .query(&[("q", "marzipan walrus"), ("document_ids", "w1")])
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let found: Vec<&str> =
        other["results"].as_array().unwrap().iter().map(|r| r["title"].as_str().unwrap()).collect();
    assert_eq!(found, ["Walrus"], "{other:#}");
    // No LLM configured: the hit's context is a heuristic one, and says so.
    let hit = &other["results"][0];
    assert!(hit["context"].as_str().is_some_and(|c| !c.is_empty()), "{hit:#}");
    assert_eq!(hit["context_kind"], "heuristic", "{hit:#}");
    // Asking for reranking without a reranker: fused order, and a note.
    let v: Value = c
        .get(s.url("/search"))
        .query(&[("q", "walrus"), ("rerank", "true")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["rerank"], Value::Null, "{v:#}");
    assert!(v["notes"].to_string().contains("rerank.mode is off"), "{v:#}");
    let none: Value = post_json(
        &c,
        s.url("/search"),
        &json!({"query": "marzipan walrus", "filter": {"metadata": {"team": "nobody"}}}),
    )
    .await;
    assert!(none["results"].as_array().unwrap().is_empty(), "{none:#}");
    let docs: Value = c.get(s.url("/documents")).send().await.unwrap().json().await.unwrap();
    assert_eq!(docs.as_array().unwrap().len(), 5);
    let d: Value = c.get(s.url(&format!("/documents/{doc_id}"))).send().await.unwrap().json().await.unwrap();
    assert!(!d["chunks"].as_array().unwrap().is_empty());
    assert_eq!(c.delete(s.url(&format!("/documents/{doc_id}"))).send().await.unwrap().status(), 200);
    assert_eq!(c.delete(s.url(&format!("/documents/{doc_id}"))).send().await.unwrap().status(), 404);
    assert!(sources(&c, &s, "marzipan").await.is_empty());

    // Bad requests say what is wrong.
    let r = c.post(s.url("/ingest")).json(&json!({"title": "no text"})).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("text"));
    let r = c.get(s.url("/search")).query(&[("q", "x"), ("mode", "psychic")]).send().await.unwrap();
    assert_eq!(r.status(), 400);

    let metrics = c.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("datafactory_http_requests_total{route=\"/search\",status=\"200\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("datafactory_documents_ingested_total 5"), "{metrics}");
    let ready: Value = c.get(s.url("/ready")).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["store"]["consistent"], true, "{ready:#}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_limits_are_enforced() {
    let s = Server::start(|c| {
        c.server.api_keys = vec![KEY.to_string()];
        c.server.max_body_bytes = 10_000;
    })
    .await;
    let c = client();
    assert_eq!(c.get(s.url("/health")).send().await.unwrap().status(), 200);
    assert_eq!(c.get(s.url("/ready")).send().await.unwrap().status(), 401);
    assert_eq!(
        c.get(s.url("/search?q=x")).bearer_auth("wrong-key-0123456789").send().await.unwrap().status(),
        401
    );
    assert_eq!(c.get(s.url("/search?q=x")).bearer_auth(KEY).send().await.unwrap().status(), 200);
    let big = "word ".repeat(5000);
    let r = c.post(s.url("/ingest")).bearer_auth(KEY).json(&json!({"text": big})).send().await.unwrap();
    assert_eq!(r.status(), 413);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_ingests_while_searching() {
    let s = Arc::new(Server::start(|_| {}).await);
    let c = client();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (c, s) = (c.clone(), s.clone());
        tasks.push(tokio::spawn(async move {
            let docs: Vec<Value> =
                (0..20).map(|j| json!({"id": format!("{i}-{j}"), "text": format!("Report {i}-{j} about tapirs number t{i}x{j}.")})).collect();
            let v: Value = post_json(&c, s.url("/ingest?wait=true"), &json!({"documents": docs, "collection": format!("c{i}")})).await;
            assert_eq!(v["state"], "succeeded", "{v:#}");
        }));
    }
    let searcher = {
        let (c, s) = (c.clone(), s.clone());
        tokio::spawn(async move {
            for _ in 0..50 {
                let r = c.get(s.url("/search?q=tapirs")).send().await.unwrap();
                assert_eq!(r.status(), 200);
            }
        })
    };
    for t in tasks {
        t.await.unwrap();
    }
    searcher.await.unwrap();
    let docs: Value = c.get(s.url("/documents")).send().await.unwrap().json().await.unwrap();
    assert_eq!(docs.as_array().unwrap().len(), 160);
    let v: Value = c.get(s.url("/search?q=t3x7&collection=c3")).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["results"].as_array().unwrap().len(), 1, "{v:#}");
    let ready: Value = c.get(s.url("/ready")).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["store"]["consistent"], true, "{ready:#}");
    if let Ok(s) = Arc::try_unwrap(s) {
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_events_stream_until_done() {
    let s = Server::start(|_| {}).await;
    let c = client();
    let docs: Vec<Value> = (0..300)
        .map(|j| json!({"id": format!("d{j}"), "text": format!("Document {j} on okapis.")}))
        .collect();
    let accepted: Value = post_json(&c, s.url("/ingest"), &json!({"documents": docs})).await;
    let id = accepted["job_id"].as_str().unwrap();
    let body = c.get(s.url(&format!("/jobs/{id}/events"))).send().await.unwrap().text().await.unwrap();
    // The stream ends with a `done` event holding the finished job.
    let done = body.split("\n\n").find(|e| e.contains("event: done")).expect("no done event");
    let data = done.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
    let v: Value = serde_json::from_str(data).unwrap();
    assert_eq!(v["state"], "succeeded", "{v:#}");
    assert_eq!(v["summary"]["documents"]["added"], 300);
    // Per phase: analysis 300 documents, chunking one file, enrichment 300 chunks
    // (heuristic contexts: no LLM configured), storage 300 documents; no model, no embedding.
    let phases: Vec<(String, String, u64)> = v["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["phase"].as_str().unwrap().into(),
                p["state"].as_str().unwrap().into(),
                p["items"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        phases,
        [
            ("analysis".into(), "done".into(), 300),
            ("chunking".into(), "done".into(), 1),
            ("enrichment".into(), "done".into(), 300),
            ("embedding".into(), "not_run".into(), 0),
            ("storage".into(), "done".into(), 300),
        ]
    );
    // Progress events came before the end.
    assert!(body.contains("event: progress"));
    assert_eq!(c.get(s.url("/jobs/job-none/events")).send().await.unwrap().status(), 404);
    // Without a model the embedding routes say why.
    let r = c.post(s.url("/v1/embeddings")).json(&json!({"input": "x"})).send().await.unwrap();
    assert_eq!(r.status(), 503);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_and_tei_embedding_routes() {
    let model = minilm();
    let s = Server::start(|c| c.embedding.model = model.display().to_string()).await;
    let c = client();
    let v: Value = post_json(
        &c,
        s.url("/v1/embeddings"),
        &json!({"input": ["a cat sat on the mat", "stock markets fell"], "model": "minilm"}),
    )
    .await;
    assert_eq!(v["object"], "list");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[1]["index"], 1);
    let a: Vec<f64> = data[0]["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert_eq!(a.len(), 384);
    assert!((a.iter().map(|x| x * x).sum::<f64>() - 1.0).abs() < 1e-3);
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    // base64: little-endian f32s, what OpenAI's clients ask for by default.
    let b64: Value = post_json(
        &c,
        s.url("/v1/embeddings"),
        &json!({"input": "a cat sat on the mat", "encoding_format": "base64"}),
    )
    .await;
    let encoded = b64["data"][0]["embedding"].as_str().expect("a base64 string");
    let bytes = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, encoded).unwrap();
    let decoded: Vec<f64> =
        bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64).collect();
    assert_eq!(decoded.len(), 384);
    assert!(decoded.iter().zip(&a).all(|(x, y)| (x - y).abs() < 1e-6));
    let t: Value = post_json(&c, s.url("/embed"), &json!({"inputs": "a cat sat on the mat"})).await;
    let b: Vec<f64> = t[0].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    let cos: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
    assert!(cos > 0.9999, "the two routes disagree: {cos}");
    s.stop().await;
}

/// Serves `data` (words only).
async fn serve_dir(data: &Path) -> Running {
    let mut config = Config { data_dir: data.to_path_buf(), ..Default::default() };
    config.embedding.model = String::new();
    let store = Arc::new(Store::open(data).unwrap());
    let state = Arc::new(AppState::new(config, store, None, None));
    Running::start(|l, s| serve_on(state, l, s)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cut_short_by_shutdown_resumes_on_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let c = client();
    let service = serve_dir(&data).await;
    let base = service.base.clone();
    let docs: Vec<Value> = (0..3000)
        .map(|j| json!({"id": format!("d{j}"), "text": format!("Document {j} about quokkas q{j}.")}))
        .collect();
    let accepted: Value = post_json(&c, format!("{base}/ingest"), &json!({"documents": docs})).await;
    let id = accepted["job_id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Graceful stop: the job stops at a file boundary and is checkpointed.
    service.stop().await;
    let stored = Store::open(&data).unwrap();
    let job = stored.get_job(&id).unwrap().unwrap();
    assert_eq!(job.state, "interrupted", "{job:?}");
    drop(stored);

    let service = serve_dir(&data).await;
    let base = service.base.clone();
    let mut last = Value::Null;
    for _ in 0..600 {
        last = c.get(format!("{base}/jobs/{id}")).send().await.unwrap().json().await.unwrap();
        if last["state"] != "queued" && last["state"] != "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last["state"], "succeeded", "{last:#}");
    let docs: Value = c.get(format!("{base}/documents")).send().await.unwrap().json().await.unwrap();
    assert_eq!(docs.as_array().unwrap().len(), 3000);
    let v: Value = c.get(format!("{base}/search?q=q2999")).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["results"].as_array().unwrap().len(), 1);
    service.stop().await;
    assert_eq!(std::fs::read_dir(data.join("uploads")).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_limit_get_429() {
    let s = Arc::new(Server::start(|c| c.server.max_concurrent_requests = 1).await);
    let c = client();
    let docs: Vec<Value> =
        (0..3000).map(|j| json!({"id": format!("d{j}"), "text": format!("Text {j} on lemurs.")})).collect();
    // An ingest that waits for its job holds the one slot while it runs.
    let slow = {
        let (c, s) = (c.clone(), s.clone());
        tokio::spawn(async move {
            c.post(s.url("/ingest?wait=true"))
                .json(&json!({"documents": docs}))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let r = c.get(s.url("/search?q=lemurs")).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.text().await.unwrap().contains("too many requests"));
    assert_eq!(slow.await.unwrap(), 200);
    // The slot is free again.
    assert_eq!(c.get(s.url("/search?q=lemurs")).send().await.unwrap().status(), 200);
    if let Ok(s) = Arc::try_unwrap(s) {
        s.stop().await;
    }
}

/// Every operation /openapi.json describes is served (no 404 or 405).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_described_operation_is_served() {
    let s = Server::start(|_| {}).await;
    let c = client();
    let spec: Value = c.get(s.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    assert_eq!(spec["openapi"], "3.1.0");
    let paths = spec["paths"].as_object().unwrap();
    assert!(paths.len() >= 12);
    for (path, ops) in paths {
        let concrete = path.replace("{id}", "none");
        for method in ops.as_object().unwrap().keys() {
            let url = s.url(&concrete);
            let r = match method.as_str() {
                "get" => c.get(&url).query(&[("q", "x")]).send().await.unwrap(),
                "post" => c.post(&url).json(&json!({})).send().await.unwrap(),
                "delete" => c.delete(&url).send().await.unwrap(),
                m => panic!("unexpected method {m}"),
            };
            let status = r.status().as_u16();
            let body = r.text().await.unwrap();
            // 404 is a fine answer for a missing id, not for a missing route.
            let missing_route = status == 405
                || (status == 404 && !body.contains("no such") && !body.contains("no running job"));
            assert!(!missing_route, "{} {path}: {status} {body}", method.to_uppercase());
        }
    }
    s.stop().await;
}

/// What the service answers is what /openapi.json says it answers: each
/// route's live body checked against its generated schema (ingest, job,
/// search GET and POST, documents, document, delete, the embedding routes,
/// ready, health, and error bodies).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_match_the_generated_schemas() {
    let s = Server::start(|c| c.embedding.model = minilm().to_string_lossy().into_owned()).await;
    let c = client();
    let spec: Value = c.get(s.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    // Every schema the operations refer to is in the components.
    let text = spec.to_string();
    for name in [
        "SearchHit",
        "StageScores",
        "StageRanks",
        "DocumentDetail",
        "JobView",
        "JobEntry",
        "RerankReport",
        "ErrorBody",
        "Duplicate",
    ] {
        assert!(spec["components"]["schemas"][name].is_object(), "schema {name} missing");
        assert!(text.contains(&format!("#/components/schemas/{name}")), "{name} never referred to");
    }

    let r = c
        .post(s.url("/ingest?wait=true"))
        .json(&json!({"text": "# Lemurs\n\nLemurs live on Madagascar and eat fruit.", "title": "Lemurs",
                      "metadata": {"topic": "animals"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let job: Value = r.json().await.unwrap();
    check_answer(&spec, "/ingest", "post", 200, &job);
    let job_id = job["id"].as_str().unwrap().to_string();
    let r = c.post(s.url("/ingest")).json(&json!({"text": "Aye-ayes are lemurs too."})).send().await.unwrap();
    assert_eq!(r.status(), 202);
    check_answer(&spec, "/ingest", "post", 202, &r.json().await.unwrap());
    let r = c.post(s.url("/ingest")).json(&json!({"text": ""})).send().await.unwrap();
    assert_eq!(r.status(), 400);
    check_answer(&spec, "/ingest", "post", 400, &r.json().await.unwrap());
    let finished: Value =
        c.get(s.url(&format!("/jobs/{job_id}"))).send().await.unwrap().json().await.unwrap();
    check_answer(&spec, "/jobs/{id}", "get", 200, &finished);

    // The same passage in a second document: one hit, naming the other.
    let r = c
        .post(s.url("/ingest?wait=true"))
        .json(
            &json!({"text": "# Lemurs\n\nLemurs live on Madagascar and eat fruit.", "title": "Lemurs again",
                      "id": "lemurs-copy", "metadata": {"topic": "animals"}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let get: Value = c.get(s.url("/search?q=lemurs&mode=hybrid")).send().await.unwrap().json().await.unwrap();
    assert!(!get["results"].as_array().unwrap().is_empty(), "{get:#}");
    let lemurs: Vec<&Value> = get["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["text"].as_str().unwrap().contains("Madagascar"))
        .collect();
    assert_eq!(lemurs.len(), 1, "the passage once: {get:#}");
    let top = lemurs[0];
    assert_eq!(top["duplicate_count"], 1, "{get:#}");
    let other = &top["duplicates"][0];
    assert_ne!(other["document_id"], top["document_id"]);
    let titles = [top["title"].as_str().unwrap(), other["title"].as_str().unwrap()];
    assert!(titles.contains(&"Lemurs") && titles.contains(&"Lemurs again"), "{titles:?}");
    check_answer(&spec, "/search", "get", 200, &get);
    let post: Value = post_json(
        &c,
        s.url("/search"),
        &json!({"query": "what do lemurs eat", "filter": {"metadata": {"topic": "animals"}}}),
    )
    .await;
    check_answer(&spec, "/search", "post", 200, &post);
    let r = c.get(s.url("/search?q=x&mode=psychic")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    check_answer(&spec, "/search", "get", 400, &r.json().await.unwrap());

    let docs: Value = c.get(s.url("/documents")).send().await.unwrap().json().await.unwrap();
    check_answer(&spec, "/documents", "get", 200, &docs);
    let paged: Value =
        c.get(s.url("/documents?limit=1&offset=1")).send().await.unwrap().json().await.unwrap();
    check_answer(&spec, "/documents", "get", 200, &paged);
    let r = c.get(s.url("/documents?limit=0")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    check_answer(&spec, "/documents", "get", 400, &r.json().await.unwrap());
    let collections: Value = c.get(s.url("/collections")).send().await.unwrap().json().await.unwrap();
    check_answer(&spec, "/collections", "get", 200, &collections);
    let jobs: Value = c.get(s.url("/jobs")).send().await.unwrap().json().await.unwrap();
    assert!(!jobs.as_array().unwrap().is_empty());
    check_answer(&spec, "/jobs", "get", 200, &jobs);
    // Hits carry their highlights and ranks, as described.
    assert!(
        get["results"][0]["highlights"].is_array() && get["results"][0]["scores"]["ranks"].is_object(),
        "{get:#}"
    );
    let id = docs[0]["id"].as_str().unwrap().to_string();
    let doc: Value = c.get(s.url(&format!("/documents/{id}"))).send().await.unwrap().json().await.unwrap();
    check_answer(&spec, "/documents/{id}", "get", 200, &doc);
    let r = c.get(s.url("/documents/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    check_answer(&spec, "/documents/{id}", "get", 404, &r.json().await.unwrap());

    for format in ["float", "base64"] {
        let r: Value = post_json(
            &c,
            s.url("/v1/embeddings"),
            &json!({"input": ["lemurs", "fruit"], "encoding_format": format}),
        )
        .await;
        check_answer(&spec, "/v1/embeddings", "post", 200, &r);
    }
    let tei: Value = post_json(&c, s.url("/embed"), &json!({"inputs": "lemurs"})).await;
    check_answer(&spec, "/embed", "post", 200, &tei);
    let info: Value = c.get(s.url("/info")).send().await.unwrap().json().await.unwrap();
    check_answer(&spec, "/info", "get", 200, &info);
    assert_eq!((&info["max_windows"], &info["sparse"]), (&json!(8), &json!(false)), "{info:#}");
    let long = "Lemurs eat fruit and leaves in the forests of Madagascar. ".repeat(40);
    let windows: Value = post_json(&c, s.url("/embed_windows"), &json!({"inputs": ["lemurs", long]})).await;
    check_answer(&spec, "/embed_windows", "post", 200, &windows);
    let counts: Vec<usize> =
        windows.as_array().unwrap().iter().map(|w| w.as_array().unwrap().len()).collect();
    assert!(counts[0] == 1 && counts[1] > 1, "windows per input: {counts:?}");
    let ready: Value = c.get(s.url("/ready")).send().await.unwrap().json().await.unwrap();
    check_answer(&spec, "/ready", "get", 200, &ready);
    let health: Value = c.get(s.url("/health")).send().await.unwrap().json().await.unwrap();
    check_answer(&spec, "/health", "get", 200, &health);

    let deleted: Value =
        c.delete(s.url(&format!("/documents/{id}"))).send().await.unwrap().json().await.unwrap();
    check_answer(&spec, "/documents/{id}", "delete", 200, &deleted);
    s.stop().await;
}

/// Every stored document carries its analysis; a request's `plan` overrides
/// the plan for its documents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_records_the_analysis_and_follows_the_plan() {
    let s = Server::start(|_| {}).await;
    let c = client();
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(std::fs::read(fixtures().join("sample.md")).unwrap())
            .file_name("sample.md"),
    );
    let r = c.post(s.url("/ingest?wait=true")).multipart(form).send().await.unwrap();
    let job: Value = r.json().await.unwrap();
    assert_eq!(job["state"], "succeeded", "{job:#}");
    let docs: Value = c.get(s.url("/documents")).send().await.unwrap().json().await.unwrap();
    let id = docs[0]["id"].as_str().unwrap();
    let doc: Value = c.get(s.url(&format!("/documents/{id}"))).send().await.unwrap().json().await.unwrap();
    let a = &doc["metadata"]["analysis"];
    assert_eq!(a["doc_type"], "manual", "{a:#}");
    assert_eq!(a["route"], "heuristic");
    assert_eq!(a["language"]["code"], "eng");
    assert_eq!(a["chunked_by"]["source"], "plan");
    assert_eq!(a["chunked_by"]["max_tokens"], a["plan"]["max_tokens"]);
    let planned_chunks = doc["chunks"].as_array().unwrap().len();

    // The same text with a plan override: smaller chunks, recorded as such.
    let text = std::fs::read_to_string(fixtures().join("sample.md")).unwrap();
    let r = c
        .post(s.url("/ingest?wait=true"))
        .json(&json!({"text": text, "id": "small", "plan": {"max_tokens": 32, "strategy": "lines"}}))
        .send()
        .await
        .unwrap();
    let job: Value = r.json().await.unwrap();
    assert_eq!(job["state"], "succeeded", "{job:#}");
    let docs: Value = c.get(s.url("/documents")).send().await.unwrap().json().await.unwrap();
    let small = docs.as_array().unwrap().iter().find(|d| d["external_id"] == "small").unwrap();
    let id = small["id"].as_str().unwrap();
    let doc: Value = c.get(s.url(&format!("/documents/{id}"))).send().await.unwrap().json().await.unwrap();
    let a = &doc["metadata"]["analysis"];
    assert_eq!(a["chunked_by"]["source"], "override", "{a:#}");
    assert_eq!(a["chunked_by"]["max_tokens"], 32);
    let chunks = doc["chunks"].as_array().unwrap();
    assert!(chunks.len() > planned_chunks, "{} <= {planned_chunks}", chunks.len());
    assert!(chunks.iter().all(|c| c["token_count"].as_u64().unwrap() <= 32));
    // In a multipart upload, the override is a `plan` part.
    let form =
        reqwest::multipart::Form::new().text("plan", r#"{"max_tokens": 40, "keep_code_whole": false}"#).part(
            "file",
            reqwest::multipart::Part::bytes(std::fs::read(fixtures().join("sample.md")).unwrap())
                .file_name("sample.md"),
        );
    let job: Value =
        c.post(s.url("/ingest?wait=true")).multipart(form).send().await.unwrap().json().await.unwrap();
    assert_eq!(job["summary"]["documents"]["replaced"], 1, "{job:#}");
    let docs: Value = c.get(s.url("/documents")).send().await.unwrap().json().await.unwrap();
    let md = docs.as_array().unwrap().iter().find(|d| d["source"] == "upload:sample.md").unwrap();
    let id = md["id"].as_str().unwrap();
    let doc: Value = c.get(s.url(&format!("/documents/{id}"))).send().await.unwrap().json().await.unwrap();
    assert_eq!(doc["metadata"]["analysis"]["chunked_by"]["source"], "override");
    assert_eq!(doc["metadata"]["analysis"]["chunked_by"]["max_tokens"], 40);
    // A bad override is refused before any work.
    let r =
        c.post(s.url("/ingest")).json(&json!({"text": "x y z", "plan": {"size": 3}})).send().await.unwrap();
    assert_eq!(r.status(), 400);
    s.stop().await;
}

/// `/metrics` read by the real Prometheus text parser (the Python
/// `prometheus_client`, pinned by `.ci/run`): every family and sample as JSON.
fn parse_exposition(text: &str) -> Value {
    use std::io::Write;
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for f in text_string_to_metric_families(sys.stdin.read()):
    out.append({"name": f.name, "type": f.type,
                "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples]})
print(json.dumps(out))
"#;
    let mut child = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the exposition (is prometheus_client installed? .ci/run installs it): {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Sends `GET path` as raw bytes (no client escaping), answers the status line.
async fn raw_get(base: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(base.trim_start_matches("http://")).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer).lines().next().unwrap_or_default().to_string()
}

/// Requests to many random paths, `"`, `{`, `}` and `\` included, add no
/// series: every unmatched path counts under route="unmatched", and the
/// exposition stays parseable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_stay_bounded_and_parseable_under_random_paths() {
    let s = Server::start(|_| {}).await;
    let c = client();
    assert_eq!(c.get(s.url("/search?q=x")).send().await.unwrap().status(), 200);
    let mut seed = 0x9e3779b97f4a7c15u64;
    for i in 0..300 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let path = format!("/r{i}-{seed:x}");
        assert_eq!(c.get(s.url(&path)).send().await.unwrap().status(), 404);
    }
    for path in [r#"/a"b"#, "/{}", r#"/x{y="z"}"#, r#"/back\slash"#, "/%22%7B%7D", "/documents/a/b/c"] {
        let status = raw_get(&s.running.base, path).await;
        assert!(status.contains(" 404 ") || status.contains(" 400 "), "{path}: {status}");
    }
    let text = c.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let families = parse_exposition(&text);
    let spec: Value = c.get(s.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    let templates: Vec<&str> = spec["paths"].as_object().unwrap().keys().map(String::as_str).collect();
    let requests = families
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "datafactory_http_requests")
        .unwrap_or_else(|| panic!("no datafactory_http_requests family: {families:#}"));
    assert_eq!(requests["type"], "counter");
    let mut routes: Vec<&str> = requests["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["labels"]["route"].as_str().unwrap())
        .collect();
    routes.sort();
    routes.dedup();
    for r in &routes {
        assert!(*r == "unmatched" || templates.contains(r), "route label {r:?} is not a route template");
    }
    assert!(routes.contains(&"unmatched") && routes.contains(&"/search"), "{routes:?}");
    let unmatched: f64 = requests["samples"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["labels"]["route"] == "unmatched" && s["name"] == "datafactory_http_requests_total")
        .map(|s| s["value"].as_f64().unwrap())
        .sum();
    assert!(unmatched >= 300.0, "{unmatched}");
    // The names dashboards use are kept.
    for name in [
        "datafactory_http_requests_total{",
        "datafactory_http_request_duration_seconds_bucket{route=\"/search\",le=\"0.001\"}",
        "datafactory_documents_ingested_total 0",
        "datafactory_embed_batches_total 0",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    s.stop().await;
}

/// A query with more terms than `server.max_query_terms` is refused, naming the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_with_too_many_terms_gets_400() {
    let s = Server::start(|c| c.server.max_query_terms = 100).await;
    let c = client();
    let huge: String = (0..5000).map(|i| format!("w{i} ")).collect();
    for r in [
        c.get(s.url("/search")).query(&[("q", huge.as_str())]).send().await.unwrap(),
        c.post(s.url("/search")).json(&json!({"query": huge})).send().await.unwrap(),
    ] {
        assert_eq!(r.status(), 400);
        let e = r.text().await.unwrap();
        assert!(e.contains("5000 terms") && e.contains("100 (server.max_query_terms)"), "{e}");
    }
    let ok: String = (0..100).map(|i| format!("w{i} ")).collect();
    assert_eq!(c.get(s.url("/search")).query(&[("q", ok.as_str())]).send().await.unwrap().status(), 200);
    s.stop().await;
}

/// A search that takes long (a filter comparing every document with a long
/// list of ids) runs off the async threads: on a one-thread runtime /health
/// still answers while it runs, and the time limit answers it with 408.
#[tokio::test(flavor = "current_thread")]
async fn a_slow_search_does_not_block_health_and_times_out() {
    let s = Server::start(|c| c.server.request_timeout_seconds = 1).await;
    let c = client();
    let docs: Vec<Value> = (0..2000)
        .map(|j| json!({"id": format!("doc-{j:08}"), "text": format!("Notes {j} on the okapi.")}))
        .collect();
    // Not `wait=true`: the job may take longer than the 1 s time limit.
    let accepted: Value = post_json(&c, s.url("/ingest"), &json!({"documents": docs})).await;
    let job = s.url(&format!("/jobs/{}", accepted["job_id"].as_str().unwrap()));
    loop {
        let v: Value = c.get(&job).send().await.unwrap().json().await.unwrap();
        if v["state"] != "queued" && v["state"] != "running" {
            assert_eq!(v["state"], "succeeded", "{v:#}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Ids of the same length as the documents' that match none of them.
    let ids: Vec<String> = (0..200_000).map(|j| format!("doc-{:08}", 10_000_000 + j)).collect();
    let slow = {
        let (c, url) = (c.clone(), s.url("/search"));
        tokio::spawn(async move {
            let r = c
                .post(url)
                .json(&json!({"query": "okapi", "mode": "lexical", "filter": {"document_ids": ids}}))
                .send()
                .await
                .unwrap();
            (r.status(), r.text().await.unwrap())
        })
    };
    // Let the search reach the server first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let health = c.get(s.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert!(!slow.is_finished(), "the search ended before /health answered: it was not slow, or it blocked");
    let (status, body) = slow.await.unwrap();
    assert_eq!(status, 408, "{body}");
    s.stop().await;
}

/// How many job records the store holds.
fn job_count(data: &Path) -> i64 {
    let db = rusqlite::Connection::open_with_flags(
        data.join("datafactory.sqlite3"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    db.query_row("SELECT count(*) FROM jobs", [], |r| r.get(0)).unwrap()
}

/// What the uploads folder holds (nothing, once every request was refused).
fn uploads(data: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(data.join("uploads")) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

/// A refused upload leaves no file and no job: a bad plan, a bad
/// collection, a file or a JSON document over `ingest.max_file_bytes` (413
/// naming it and the limit). Documents that fit one by one but not together
/// are taken whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_uploads_leave_no_files_and_no_job() {
    let s = Server::start(|c| c.ingest.max_file_bytes = 2_000).await;
    let c = client();
    let file = || reqwest::multipart::Part::bytes(b"# Title\n\nSome text.\n".to_vec()).file_name("a.md");
    // A plan serde accepts but the check refuses.
    let form = reqwest::multipart::Form::new().part("file", file()).text("plan", r#"{"max_tokens": 4}"#);
    let r = c.post(s.url("/ingest")).multipart(form).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("max_tokens"));
    let form = reqwest::multipart::Form::new().part("file", file()).text("collection", "bad name!");
    assert_eq!(c.post(s.url("/ingest")).multipart(form).send().await.unwrap().status(), 400);
    let big = reqwest::multipart::Part::bytes(vec![b'a'; 5_000]).file_name("big.txt");
    let form = reqwest::multipart::Form::new().part("file", file()).part("file", big);
    let r = c.post(s.url("/ingest")).multipart(form).send().await.unwrap();
    assert_eq!(r.status(), 413);
    let e = r.text().await.unwrap();
    assert!(e.contains("big.txt") && e.contains("2000 (ingest.max_file_bytes)"), "{e}");
    let r = c
        .post(s.url("/ingest"))
        .json(&json!({"documents": [{"id": "small", "text": "fine"}, {"id": "large", "text": "word ".repeat(1000)}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let e = r.text().await.unwrap();
    assert!(e.contains("document 1") && e.contains("\\\"large\\\"") && e.contains("2000"), "{e}");
    assert_eq!(uploads(&s.data), Vec::<PathBuf>::new());
    assert_eq!(job_count(&s.data), 0);

    // 40 documents of ~100 bytes: over the file limit together, each under it.
    let docs: Vec<Value> = (0..40)
        .map(|j| json!({"id": format!("n{j}"), "text": format!("Note {j} about tapirs {}", "x".repeat(60))}))
        .collect();
    let r = c.post(s.url("/ingest?wait=true")).json(&json!({"documents": docs})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let job: Value = r.json().await.unwrap();
    assert_eq!(job["state"], "succeeded", "{job:#}");
    let listed: Value = c.get(s.url("/documents")).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 40);
    assert_eq!(uploads(&s.data), Vec::<PathBuf>::new());
    assert_eq!(job_count(&s.data), 1);
    s.stop().await;
}
