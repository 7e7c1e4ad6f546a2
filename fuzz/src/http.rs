//! The `http` target: the service's router, in-process, on an embedded store
//! in a temporary directory, given requests with fuzzed paths, queries and
//! JSON bodies (search, ingest of JSON documents, embeddings, documents,
//! jobs). A panic, or a 500 answer, is a finding: bad input must get a 4xx
//! with an error that says what is wrong.

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use datafactory_core::Config;
use datafactory_server::AppState;
use datafactory_store::Store;
use tower::ServiceExt;

struct App {
    runtime: tokio::runtime::Runtime,
    router: Router,
    _dir: tempfile::TempDir,
}

fn app() -> &'static App {
    static APP: OnceLock<App> = OnceLock::new();
    APP.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary data directory");
        let mut config = Config::default();
        config.data_dir = dir.path().to_path_buf();
        let store = Arc::new(Store::open(dir.path()).expect("open an embedded store"));
        let state = Arc::new(AppState::new(config, store, None, Some("words only (fuzzing)".into())));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime");
        App { runtime, router: datafactory_server::router(state), _dir: dir }
    })
}

/// The requests the first byte picks: method, path, and whether the fuzzed
/// line that follows is appended to the path (a query or an id).
const ROUTES: &[(Method, &str, bool)] = &[
    (Method::POST, "/search", false),
    (Method::GET, "/search?", true),
    (Method::POST, "/ingest", false),
    (Method::POST, "/ingest?", true),
    (Method::POST, "/v1/embeddings", false),
    (Method::POST, "/embed", false),
    (Method::GET, "/documents?", true),
    (Method::GET, "/documents/", true),
    (Method::DELETE, "/documents/", true),
    (Method::GET, "/jobs/", true),
    (Method::GET, "/", true),
    (Method::POST, "/embed_windows", false),
];

/// Input: one byte choosing the route, then (for routes that take one) a
/// line appended to the path, then the body.
pub fn run(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else { return };
    let (method, path, takes_line) = &ROUTES[usize::from(pick) % ROUTES.len()];
    let (line, body) = if *takes_line {
        match rest.iter().position(|&b| b == b'\n') {
            Some(at) => (&rest[..at], &rest[at + 1..]),
            None => (rest, &[][..]),
        }
    } else {
        (&[][..], rest)
    };
    let uri = format!("{path}{}", String::from_utf8_lossy(line));
    let Ok(request) = Request::builder()
        .method(method.clone())
        .uri(uri.as_str())
        .header("content-type", "application/json")
        .body(Body::from(body.to_vec()))
    else {
        return; // not a URI a client could send
    };
    let app = app();
    let status = app.runtime.block_on(async {
        let response = app.router.clone().oneshot(request).await.expect("the router is infallible");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("read the answer");
        if status.is_client_error() && !bytes.is_empty() {
            if let Ok(json) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                if let Some(error) = json.get("error") {
                    assert!(error.as_str().is_some_and(|e| !e.trim().is_empty()), "blank error for {uri}");
                }
            }
        }
        status
    });
    assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR, "500 for {method} {uri}");
}
