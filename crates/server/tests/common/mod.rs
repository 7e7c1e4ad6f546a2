//! Helpers shared by the service's integration tests.
#![allow(dead_code)]

use serde_json::Value;
use std::path::PathBuf;

/// The real all-MiniLM-L6-v2 (`.ci/run` unpacks it; `DATAFACTORY_TEST_MINILM`).
pub fn minilm() -> PathBuf {
    let dir = std::env::var_os("DATAFACTORY_TEST_MINILM").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/datafactory-test-models/all-MiniLM-L6-v2")
    });
    assert!(dir.join("config.json").is_file(), "all-MiniLM-L6-v2 missing at {} (run .ci/run)", dir.display());
    dir
}

/// How a test asks a running service to stop (its graceful-shutdown future).
pub type Shutdown = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// A service on a loopback port, stopped by [`Running::stop`].
pub struct Running {
    pub base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Binds a free loopback port and runs `serve(listener, shutdown)` on
    /// it, e.g. `|l, s| serve_on(state, l, s)`.
    pub async fn start<F>(serve: impl FnOnce(tokio::net::TcpListener, Shutdown) -> F) -> Running
    where
        F: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(
            listener,
            Box::pin(async {
                let _ = rx.await;
            }),
        ));
        Running { base, stop: Some(tx), task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Asks the service to stop and waits until it has (graceful shutdown).
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.await.unwrap().unwrap();
    }
}

/// Checks a live answer against the schema `/openapi.json` gives for it
/// (status `code`, JSON body), with the document's components in reach of
/// its `$ref`s.
pub fn check_answer(spec: &Value, path: &str, method: &str, code: u16, body: &Value) {
    let op = &spec["paths"][path][method];
    let response = &op["responses"][code.to_string()];
    assert!(response.is_object(), "{method} {path}: answer {code} not described");
    let response = match response["$ref"].as_str() {
        Some(r) => &spec["components"]["responses"][r.rsplit('/').next().unwrap()],
        None => response,
    };
    let mut schema = response["content"]["application/json"]["schema"].clone();
    assert!(schema.is_object(), "{method} {path} {code}: no JSON schema");
    schema["components"] = spec["components"].clone();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let problems: Vec<String> = validator
        .iter_errors(body)
        .map(|e| format!("{} at {}", e.to_string().chars().take(300).collect::<String>(), e.instance_path()))
        .collect();
    let shown: String = body.to_string().chars().take(2000).collect();
    assert!(problems.is_empty(), "{method} {path} {code}: {problems:#?}\n{shown}");
}
