//! The reranker service on a loopback port with the real cross-encoder (the
//! tiny random XLM-RoBERTa classifier of `crates/models/tests/fixtures`, whose
//! logits transformers computed), and the DataFactory service's search
//! reranking through it, then answering without it when it is down.

mod common;

use common::Running;
use datafactory_core::config::RerankConfig;
use datafactory_core::{sigmoid, Config, Reranker};
use datafactory_models::CandleReranker;
use datafactory_server::{serve_on, serve_rerank_on, AppState, RemoteReranker, RerankState};
use datafactory_store::Store;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const KEY: &str = "rerank-key-0123456789abcdef";

fn tiny_reranker_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures/tiny-xlmr-reranker")
}

fn tiny_reranker() -> Arc<dyn Reranker> {
    let config = RerankConfig {
        model: tiny_reranker_dir().to_str().unwrap().to_string(),
        allow_download: false,
        device: "cpu".into(),
        ..RerankConfig::default()
    };
    Arc::new(CandleReranker::load(&config).unwrap())
}

async fn start_reranker(configure: impl FnOnce(&mut Config)) -> Running {
    let mut config = Config::default();
    configure(&mut config);
    let state = Arc::new(RerankState::new(config, tiny_reranker()));
    Running::start(|l, s| serve_rerank_on(state, l, s)).await
}

fn settings() -> datafactory_remote::PoolSettings {
    datafactory_remote::PoolSettings::from_config(&Default::default())
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap()
}

#[derive(serde::Deserialize)]
struct GoldenPair {
    query: String,
    passage: String,
    logit: f32,
}

fn golden_for(query: &str) -> Vec<GoldenPair> {
    #[derive(serde::Deserialize)]
    struct Golden {
        pairs: Vec<GoldenPair>,
    }
    let g: Golden =
        serde_json::from_str(&std::fs::read_to_string(tiny_reranker_dir().join("golden.json")).unwrap())
            .unwrap();
    g.pairs.into_iter().filter(|p| p.query == query).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_answers_in_text_embeddings_inference_shapes() {
    let s = start_reranker(|c| {
        c.server.api_keys = vec![KEY.to_string()];
        c.server.max_body_bytes = 4_000;
    })
    .await;
    let c = client();
    let golden = golden_for("what is a cat");
    let texts: Vec<&str> = golden.iter().map(|p| p.passage.as_str()).collect();
    let body = json!({"query": "what is a cat", "texts": texts});

    assert_eq!(c.get(s.url("/health")).send().await.unwrap().status(), 200);
    assert_eq!(c.post(s.url("/rerank")).json(&body).send().await.unwrap().status(), 401);

    // Default: sigmoid scores, best first, no text.
    let r = c.post(s.url("/rerank")).bearer_auth(KEY).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ranks: Vec<Value> = r.json().await.unwrap();
    assert_eq!(ranks.len(), texts.len());
    let mut seen: Vec<usize> = ranks.iter().map(|r| r["index"].as_u64().unwrap() as usize).collect();
    for w in ranks.windows(2) {
        assert!(w[0]["score"].as_f64().unwrap() >= w[1]["score"].as_f64().unwrap(), "{ranks:?}");
    }
    for r in &ranks {
        let i = r["index"].as_u64().unwrap() as usize;
        let want = sigmoid(golden[i].logit) as f64;
        assert!((r["score"].as_f64().unwrap() - want).abs() < 1e-4, "{r} vs {want}");
        assert!(r.get("text").is_none());
    }
    seen.sort();
    assert_eq!(seen, (0..texts.len()).collect::<Vec<_>>());

    // raw_scores, return_text, top_k.
    let r = c
        .post(s.url("/rerank"))
        .bearer_auth(KEY)
        .json(&json!({"query": "what is a cat", "texts": texts, "raw_scores": true, "return_text": true,
                      "truncate": true, "truncation_direction": "Right", "top_k": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ranks: Vec<Value> = r.json().await.unwrap();
    assert_eq!(ranks.len(), 2);
    for r in &ranks {
        let i = r["index"].as_u64().unwrap() as usize;
        assert!((r["score"].as_f64().unwrap() - golden[i].logit as f64).abs() < 1e-4);
        assert_eq!(r["text"], texts[i]);
    }
    let best = golden.iter().map(|p| p.logit).fold(f32::MIN, f32::max);
    assert!((ranks[0]["score"].as_f64().unwrap() - best as f64).abs() < 1e-4);

    // Bad requests and the body limit.
    for bad in [
        json!({"query": "q", "texts": []}),
        json!({"query": "q", "texts": ["a"], "truncation_direction": "Left"}),
        json!({"query": "q", "texts": ["a"], "top_k": 0}),
    ] {
        let r = c.post(s.url("/rerank")).bearer_auth(KEY).json(&bad).send().await.unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        let e: Value = r.json().await.unwrap();
        assert!(e["error"].is_string());
    }
    let big = json!({"query": "q", "texts": ["word ".repeat(1000)]});
    assert_eq!(c.post(s.url("/rerank")).bearer_auth(KEY).json(&big).send().await.unwrap().status(), 413);

    let info: Value = c.get(s.url("/info")).bearer_auth(KEY).send().await.unwrap().json().await.unwrap();
    assert_eq!(info["model_id"], "tiny-xlmr-reranker;max=32;query_max=24");
    let metrics = c.get(s.url("/metrics")).bearer_auth(KEY).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(&format!("datafactory_rerank_pairs_total {}", 2 * texts.len())), "{metrics}");
    assert!(
        metrics.contains(r#"datafactory_http_requests_total{route="/rerank",status="200"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"datafactory_http_requests_total{route="/rerank",status="401"} 1"#),
        "{metrics}"
    );
    s.stop().await;
}

/// `truncate: false` refuses a pair the model would cut (HTTP 413 naming
/// it), as text-embeddings-inference does; left out or true, it is cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_false_refuses_a_pair_that_would_be_cut() {
    let s = start_reranker(|_| {}).await;
    let c = client();
    let long = "a cat sat on the mat ".repeat(12);
    let rerank = |texts: Vec<&str>, truncate: Option<bool>| {
        let mut body = json!({"query": "what is a cat", "texts": texts});
        if let Some(t) = truncate {
            body["truncate"] = json!(t);
        }
        c.post(s.url("/rerank")).json(&body).send()
    };
    let r = rerank(vec!["a cat", &long], Some(false)).await.unwrap();
    assert_eq!(r.status(), 413);
    let e: Value = r.json().await.unwrap();
    let e = e["error"].as_str().unwrap();
    assert!(e.contains("texts[1] with the query is") && e.contains("over the model's 32"), "{e}");
    for truncate in [None, Some(true)] {
        let r = rerank(vec!["a cat", &long], truncate).await.unwrap();
        assert_eq!(r.status(), 200, "truncate {truncate:?}");
    }
    let r = rerank(vec!["a cat", "a dog"], Some(false)).await.unwrap();
    assert_eq!(r.status(), 200, "pairs that fit are scored");
    // A query over its share of the pair would be cut too.
    let body = json!({"query": "what is a cat ".repeat(10), "texts": ["a cat"], "truncate": false});
    assert_eq!(c.post(s.url("/rerank")).json(&body).send().await.unwrap().status(), 413);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_scores_in_the_callers_order() {
    let s = start_reranker(|c| c.server.api_keys = vec![KEY.to_string()]).await;
    let golden = golden_for("what is a cat");
    let texts: Vec<String> = golden.iter().map(|p| p.passage.clone()).collect();
    let url = s.base.clone();
    let scores = tokio::task::spawn_blocking(move || {
        let remote =
            RemoteReranker::new(std::slice::from_ref(&url), Some(KEY), Duration::from_secs(10), settings());
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let good = remote.score("what is a cat", &refs).unwrap();
        let keyless =
            RemoteReranker::new(std::slice::from_ref(&url), None, Duration::from_secs(10), settings());
        let refused = keyless.score("what is a cat", &refs).unwrap_err().to_string();
        (good, refused)
    })
    .await
    .unwrap();
    for (got, want) in scores.0.iter().zip(&golden) {
        assert!((got - want.logit).abs() < 1e-4, "{got} vs {}", want.logit);
    }
    assert!(scores.1.contains("401"), "{}", scores.1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_reranks_through_the_service_and_answers_without_it() {
    let reranker = start_reranker(|c| c.server.api_keys = vec![KEY.to_string()]).await;
    let tmp = tempfile::tempdir().unwrap();
    let mut config = Config { data_dir: tmp.path().join("data"), ..Default::default() };
    config.embedding.model = String::new();
    config.rerank.mode = "remote".into();
    config.rerank.url = reranker.base.clone();
    config.rerank.api_key = KEY.into();
    config.rerank.candidates = 4;
    let remote: Arc<dyn Reranker> = Arc::new(RemoteReranker::from_config(&config));
    let store = Arc::new(Store::open(&config.data_dir).unwrap());
    let state = Arc::new(
        AppState::new(config, store, None, Some("words only (test)".into())).with_reranker(Some(remote)),
    );
    let service = Running::start(|l, s| serve_on(state, l, s)).await;
    let c = client();

    let documents: Vec<Value> = [
        "the cat is on the mat",
        "a cat and a dog run fast",
        "the small cat is slow",
        "a big cat in the index",
        "cat text word weight",
        "the dog runs",
    ]
    .iter()
    .enumerate()
    .map(|(i, t)| json!({"id": format!("doc{i}"), "title": format!("Title {i}"), "text": t}))
    .collect();
    let r =
        c.post(service.url("/ingest?wait=true")).json(&json!({"documents": documents})).send().await.unwrap();
    assert_eq!(r.status(), 200);

    let ready: Value = c.get(service.url("/ready")).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["rerank"]["mode"], "remote", "{ready:#}");
    assert_eq!(ready["rerank"]["model"], format!("remote:{}", reranker.base), "{ready:#}");
    assert_eq!(ready["rerank"]["workers"][0]["url"], reranker.base, "{ready:#}");

    // Up: the best 4 fused candidates are reranked, 3 are returned.
    let v: Value = c
        .get(service.url("/search"))
        .query(&[("q", "cat"), ("top_k", "3")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["rerank"]["reranked"], true, "{v:#}");
    assert_eq!(v["rerank"]["candidates"], 4, "{v:#}");
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    for w in results.windows(2) {
        assert!(w[0]["score"].as_f64().unwrap() >= w[1]["score"].as_f64().unwrap(), "{v:#}");
    }
    // Each score is the model's relevance of the contextual text: the title,
    // the chunk's context (here a heuristic one), then the chunk.
    let local = tiny_reranker();
    for r in results {
        let context = r["context"].as_str().unwrap();
        // A heuristic context (no LLM here) already holds the title: the
        // embedder's text is the context, then the chunk.
        assert_eq!(r["context_kind"], "heuristic", "{r}");
        let text = format!("{context}\n\n{}", r["text"].as_str().unwrap());
        let want = sigmoid(local.score("cat", &[&text]).unwrap()[0]) as f64;
        assert!((r["scores"]["rerank"].as_f64().unwrap() - want).abs() < 1e-4, "{r}");
        assert_eq!(r["score"], r["scores"]["rerank"]);
    }

    // Per request: `rerank=false` (GET) and `"rerank": false` (POST) skip the reranker.
    let off: Value = c
        .get(service.url("/search"))
        .query(&[("q", "cat"), ("top_k", "3"), ("rerank", "false")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let posted: Value = c
        .post(service.url("/search"))
        .json(&json!({"query": "cat", "top_k": 3, "rerank": false}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for v in [&off, &posted] {
        assert_eq!(v["rerank"], Value::Null, "{v:#}");
        for r in v["results"].as_array().unwrap() {
            assert!(r["scores"].get("rerank").is_none(), "{r}");
        }
    }
    assert_eq!(off["results"], posted["results"]);

    // Down: search still answers, in fused order, and says so.
    reranker.stop().await;
    let v: Value = c
        .get(service.url("/search"))
        .query(&[("q", "cat"), ("top_k", "3")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["rerank"]["reranked"], false, "{v:#}");
    assert!(v["rerank"]["error"].as_str().unwrap().contains("unreachable"), "{v:#}");
    assert!(
        v["notes"].as_array().unwrap().iter().any(|n| n.as_str().unwrap().contains("reranking failed")),
        "{v:#}"
    );
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    for r in results {
        assert!(r["scores"].get("rerank").is_none(), "{r}");
        assert_eq!(r["score"], r["scores"]["words"], "{r}");
    }
    let metrics = c.get(service.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("datafactory_searches_reranked_total 1"), "{metrics}");
    assert!(metrics.contains("datafactory_rerank_failures_total 1"), "{metrics}");
    service.stop().await;
}

/// Several reranker services are one pool: a search's passages are spread
/// over them in batches, and when one stops the other scores everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_spreads_batches_and_fails_over_between_services() {
    let a = start_reranker(|c| c.server.api_keys = vec![KEY.to_string()]).await;
    let b = start_reranker(|c| c.server.api_keys = vec![KEY.to_string()]).await;
    let golden = golden_for("what is a cat");
    let texts: Vec<String> = golden.iter().map(|p| p.passage.clone()).collect();
    assert!(texts.len() >= 3);
    let mut config = Config::default();
    config.rerank.url = a.base.clone();
    config.rerank.urls = vec![b.base.clone()];
    config.rerank.api_key = KEY.into();
    config.remote.batch = 1;
    config.remote.backoff_ms = 10;
    let remote = Arc::new(RemoteReranker::from_config(&config));
    let score = |remote: Arc<RemoteReranker>, texts: Vec<String>| async move {
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let scores = remote.score("what is a cat", &refs).unwrap();
            (scores, remote.endpoints())
        })
        .await
        .unwrap()
    };
    let (scores, states) = score(remote.clone(), texts.clone()).await;
    for (got, want) in scores.iter().zip(&golden) {
        assert!((got - want.logit).abs() < 1e-4, "{got} vs {}", want.logit);
    }
    assert!(states.iter().all(|s| s.requests >= 1), "both services had a share: {states:?}");
    a.stop().await;
    let (scores, states) = score(remote, texts).await;
    for (got, want) in scores.iter().zip(&golden) {
        assert!((got - want.logit).abs() < 1e-4, "after the stop: {got} vs {}", want.logit);
    }
    assert!(states[0].failures >= 1, "{states:?}");
    b.stop().await;
}
