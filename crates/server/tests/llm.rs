//! The service with an LLM enrichment pool of real endpoints on loopback: a
//! llama-server over the tiny model (see crates/enrich/tests/common) and a
//! port where nothing listens.

#[path = "../../enrich/tests/common/mod.rs"]
mod common;

use common::{free_port, llama_server, openai_endpoint, tools};
use datafactory_core::Config;
use datafactory_server::{serve_on, AppState};
use datafactory_store::Store;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Service {
    base: String,
    _tmp: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Service {
    async fn start(llm_urls: &[String]) -> Service {
        let tmp = tempfile::tempdir().unwrap();
        let mut config = Config { data_dir: tmp.path().join("data"), ..Default::default() };
        config.embedding.model = String::new();
        config.enrichment.mode = "auto".into();
        config.enrichment.endpoints = llm_urls.iter().map(|u| openai_endpoint(u, 2, 4096)).collect();
        config.enrichment.max_answer_tokens = 16;
        config.enrichment.backoff_ms = 50;
        config.enrichment.attempts = 2;
        let store = Arc::new(Store::open(&config.data_dir).unwrap());
        let state = Arc::new(AppState::new(config, store, None, Some("words only (test)".into())));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve_on(state, listener, async {
            let _ = rx.await;
        }));
        Service { base, _tmp: tmp, stop: Some(tx), task }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.await.unwrap().unwrap();
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(120)).build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_shows_each_llm_endpoint() {
    let Some(t) = tools() else { return };
    let llama = llama_server(&t, 2, 4096);
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let service = Service::start(&[llama.url.clone(), nobody.clone()]).await;
    let c = client();

    let started = Instant::now();
    let ready: Value = c.get(service.url("/ready")).send().await.unwrap().json().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(10), "the probes are short");
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
