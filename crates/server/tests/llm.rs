//! The service with an LLM enrichment pool of real endpoints on loopback: a
//! llama-server over the tiny model (see crates/enrich/tests/common) and a
//! port where nothing listens.

#[path = "../../enrich/tests/common/mod.rs"]
mod common;
#[path = "common/mod.rs"]
mod service_common;

use common::{free_port, llama_server, openai_endpoint, tools};
use datafactory_core::Config;
use datafactory_server::{serve_on, AppState};
use datafactory_store::Store;
use serde_json::Value;
use service_common::{minilm, Running};
use std::sync::Arc;
use std::time::Duration;

struct Service {
    running: Running,
    _tmp: tempfile::TempDir,
}

impl Service {
    /// With `embed`, the real all-MiniLM-L6-v2 (see `.ci/run`) embeds.
    async fn start(llm_urls: &[String], embed: bool) -> Service {
        let tmp = tempfile::tempdir().unwrap();
        let mut config = Config { data_dir: tmp.path().join("data"), ..Default::default() };
        config.embedding.model = if embed { minilm().display().to_string() } else { String::new() };
        config.enrichment.mode = "auto".into();
        config.enrichment.endpoints = llm_urls.iter().map(|u| openai_endpoint(u, 2, 4096)).collect();
        config.enrichment.max_answer_tokens = 16;
        config.enrichment.backoff_ms = 50;
        config.enrichment.attempts = 2;
        let store = Arc::new(Store::open(&config.data_dir).unwrap());
        let embedder = embed.then(|| datafactory_models::load_embedder(&config.embedding).unwrap());
        let state = Arc::new(AppState::new(config, store, embedder, Some("words only (test)".into())));
        let running = Running::start(|l, s| serve_on(state, l, s)).await;
        Service { running, _tmp: tmp }
    }

    fn url(&self, path: &str) -> String {
        self.running.url(path)
    }

    async fn stop(self) {
        self.running.stop().await;
    }
}

/// The value of the metric line that starts with `series` (name and labels).
fn value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
        .parse()
        .unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(120)).build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_shows_each_llm_endpoint() {
    let Some(t) = tools() else { return };
    let llama = llama_server(&t, 2, 4096);
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let service = Service::start(&[llama.url.clone(), nobody.clone()], false).await;
    let c = client();

    // Both probes answered (the dead port with its error), whatever their duration.
    let ready: Value = c.get(service.url("/ready")).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["ready"], true, "{ready:#}");
    assert_eq!(ready["enrichment"]["mode"], "llm", "{ready:#}");
    let endpoints = ready["enrichment"]["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 2, "{ready:#}");
    let (up, down) = (&endpoints[0], &endpoints[1]);
    assert_eq!(up["url"], llama.url.as_str(), "{ready:#}");
    assert_eq!(up["kind"], "openai");
    assert_eq!(up["model"], "tiny");
    assert_eq!(up["up"], true, "{ready:#}");
    assert_eq!(up["in_pool"], true, "{ready:#}");
    assert!(up.get("error").is_none(), "{ready:#}");
    assert_eq!(down["url"], nobody.as_str(), "{ready:#}");
    assert_eq!(down["up"], false, "{ready:#}");
    assert!(!down["error"].as_str().unwrap().is_empty(), "{ready:#}");
    // A probe does not take an endpoint out of the pool; only failed work does.
    assert_eq!(down["in_pool"], true, "{ready:#}");
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_llm_tokens_phases_and_embedder_batches() {
    let Some(t) = tools() else { return };
    let llama = llama_server(&t, 2, 4096);
    let service = Service::start(std::slice::from_ref(&llama.url), true).await;
    let c = client();
    let metrics = || async { c.get(service.url("/metrics")).send().await.unwrap().text().await.unwrap() };

    // Before any job: the embedder's counters are there, at zero; no LLM series
    // yet (prometheus-client leaves a family with no series out).
    let before = metrics().await;
    assert_eq!(value(&before, "datafactory_embed_batches_total"), 0.0);
    assert_eq!(value(&before, "datafactory_embed_gpu_fallbacks_total"), 0.0);
    assert!(!before.contains("datafactory_llm_prompt_tokens_total{"), "{before}");

    let text = common::document_text(7, 3, 300);
    let job: Value = c
        .post(service.url("/ingest?wait=true"))
        .json(&serde_json::json!({"text": text, "title": "Report", "id": "r1"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(job["state"], "succeeded", "{job:#}");
    let e = &job["summary"]["enrichment"];
    assert_eq!(e["mode"], "llm", "{job:#}");
    let chunks = job["summary"]["chunks"].as_u64().unwrap();
    assert!(chunks > 1, "{job:#}");

    let after = metrics().await;
    // Per endpoint, as the job's summary counted them.
    let series = |name: &str| format!("{name}{{url=\"{}\",model=\"tiny\"}}", llama.url);
    let endpoint = &e["endpoints"][0];
    for (metric, field) in [
        ("datafactory_llm_requests_total", "requests"),
        ("datafactory_llm_prompt_tokens_total", "prompt_tokens"),
        ("datafactory_llm_cached_tokens_total", "cached_tokens"),
        ("datafactory_llm_evaluated_tokens_total", "evaluated_tokens"),
        ("datafactory_llm_completion_tokens_total", "completion_tokens"),
    ] {
        assert_eq!(value(&after, &series(metric)), endpoint[field].as_f64().unwrap(), "{metric}\n{after}");
    }
    assert!(value(&after, &series("datafactory_llm_requests_total")) >= chunks as f64, "{after}");
    assert!(value(&after, &series("datafactory_llm_prompt_tokens_total")) > 0.0, "{after}");
    assert!(value(&after, &series("datafactory_llm_evaluated_tokens_total")) > 0.0, "{after}");
    assert_eq!(value(&after, "datafactory_chunk_contexts_total{kind=\"llm\"}"), chunks as f64, "{after}");
    // Phases: items and seconds summed over jobs.
    assert_eq!(value(&after, "datafactory_ingest_phase_items_total{phase=\"embedding\"}"), chunks as f64);
    assert_eq!(value(&after, "datafactory_ingest_phase_items_total{phase=\"storage\"}"), 1.0);
    for phase in ["analysis", "chunking", "enrichment", "embedding", "storage"] {
        let s = value(&after, &format!("datafactory_ingest_phase_seconds_total{{phase=\"{phase}\"}}"));
        assert!(s > 0.0, "{phase}: {after}");
    }
    // The embedder's own counters moved (CPU: no GPU fallbacks).
    assert!(value(&after, "datafactory_embed_batches_total") >= 1.0, "{after}");
    assert!(value(&after, "datafactory_embed_texts_total") >= chunks as f64, "{after}");
    assert!(value(&after, "datafactory_embed_tokens_total") > 0.0, "{after}");
    assert_eq!(value(&after, "datafactory_embed_gpu_fallbacks_total"), 0.0);

    // A second job's figures add to the first's.
    let text = common::document_text(8, 2, 200);
    let job: Value = c
        .post(service.url("/ingest?wait=true"))
        .json(&serde_json::json!({"text": text, "title": "Other", "id": "r2"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(job["state"], "succeeded", "{job:#}");
    let again = metrics().await;
    let requests = series("datafactory_llm_requests_total");
    assert_eq!(
        value(&again, &requests),
        value(&after, &requests) + job["summary"]["enrichment"]["endpoints"][0]["requests"].as_f64().unwrap(),
        "{again}"
    );
    assert!(value(&again, &requests) > value(&after, &requests), "{again}");
    assert!(
        value(&again, "datafactory_embed_batches_total") > value(&after, "datafactory_embed_batches_total"),
        "{again}"
    );
    assert_eq!(value(&again, "datafactory_ingest_phase_items_total{phase=\"storage\"}"), 2.0);
    service.stop().await;
}
