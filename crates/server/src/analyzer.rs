//! The analyzer service (`datafactory analyze-server`, port 9100 by default):
//! `POST /analyze` answers what kind of document this is and how to cut it;
//! `GET /health`; `GET /metrics`. It runs the configured [`Analyzer`] (the
//! heuristics, or an LLM with the heuristics as fallback) behind the same
//! keys and limits as the DataFactory service (`limits.rs`).
//!
//! Input: a multipart upload (one `file` part; any format the parsers read),
//! JSON `{"text", "title"?}` (the text is sniffed like a file: Markdown gets
//! its headings), or JSON `{"document": Document}` — a document already
//! parsed, which is what the ingest pipeline sends when `analysis.url` points
//! here. Answer: the analysis, or `{"analyses": [...]}` for a file that holds
//! several documents (JSONL).

use crate::limits::Guard;
use crate::metrics::Metrics;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use datafactory_analyze::Analyzer;
use datafactory_core::{Config, Document};
use datafactory_parse::ParseOptions;
use serde::Deserialize;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// What the analyzer service's handlers need.
pub struct AnalyzerState {
    analyzer: Analyzer,
    parse_options: ParseOptions,
    max_file_bytes: u64,
    max_body_bytes: usize,
    server: datafactory_core::config::ServerConfig,
    metrics: Arc<Metrics>,
    guard: Guard,
}

impl AnalyzerState {
    pub fn new(config: &Config) -> AnalyzerState {
        // The service analyses itself: `analysis.url` (a remote analyzer) is
        // for its clients, and pointing it here would call itself.
        let mut analysis = config.analysis.clone();
        analysis.url.clear();
        let metrics = Arc::new(Metrics::default());
        AnalyzerState {
            analyzer: Analyzer::from_config(&analysis),
            parse_options: ParseOptions::from_config(&config.ingest),
            max_file_bytes: config.ingest.max_file_bytes,
            max_body_bytes: config.server.max_body_bytes as usize,
            server: config.server.clone(),
            metrics: metrics.clone(),
            guard: Guard::new(&config.server, metrics),
        }
    }
}

type Shared = Arc<AnalyzerState>;

pub fn router(state: Shared) -> Router {
    let routes = Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/metrics", get(metrics))
        .route("/analyze", post(analyze));
    state.guard.clone().apply(routes, &state.server).with_state(state)
}

/// Serves on `address` until `shutdown` completes.
pub async fn serve(
    state: Shared,
    address: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    serve_on(state, listener, shutdown).await
}

/// Like [`serve`], on a listener the caller bound (tests bind port 0).
pub async fn serve_on(
    state: Shared,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    tracing::info!("analyzer listening on {}", listener.local_addr()?);
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}

async fn metrics(State(state): State<Shared>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], state.metrics.render_requests())
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

#[derive(Deserialize)]
#[serde(untagged)]
enum JsonInput {
    Parsed { document: Box<Document> },
    Text { text: String, title: Option<String> },
}

/// The input as bytes to parse (with a name, for the extension) or a document.
enum Input {
    Bytes(Vec<u8>, Option<String>, Option<String>),
    Parsed(Box<Document>),
}

async fn analyze(State(state): State<Shared>, request: Request) -> Response {
    let content_type =
        request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let input = if content_type.starts_with("multipart/form-data") {
        let mut multipart = match Multipart::from_request(request, &()).await {
            Ok(m) => m,
            Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        };
        let mut found = None;
        loop {
            match multipart.next_field().await {
                Ok(Some(field)) if field.name() == Some("file") => {
                    let name = field.file_name().map(str::to_string);
                    match field.bytes().await {
                        Ok(b) => found = Some(Input::Bytes(b.to_vec(), name, None)),
                        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                            return error(StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
                        }
                        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
                    }
                    break;
                }
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
            }
        }
        match found {
            Some(i) => i,
            None => return error(StatusCode::BAD_REQUEST, "no `file` part in the multipart body"),
        }
    } else {
        let body = match axum::body::to_bytes(request.into_body(), state.max_body_bytes).await {
            Ok(b) => b,
            Err(e) => return error(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
        };
        match serde_json::from_slice::<JsonInput>(&body) {
            Ok(JsonInput::Parsed { document }) => Input::Parsed(document),
            Ok(JsonInput::Text { text, title }) if !text.trim().is_empty() => {
                Input::Bytes(text.into_bytes(), None, title)
            }
            Ok(JsonInput::Text { .. }) => return error(StatusCode::BAD_REQUEST, "`text` is empty"),
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("expected a multipart `file`, or JSON with `text` or `document`: {e}"),
                )
            }
        }
    };
    let s = state.clone();
    let result = tokio::task::spawn_blocking(move || run(&s, input)).await;
    match result {
        Ok(Ok(value)) => Json(value).into_response(),
        Ok(Err(message)) => error(StatusCode::UNPROCESSABLE_ENTITY, message),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Parses (when needed) and analyses, on a blocking thread.
fn run(state: &AnalyzerState, input: Input) -> Result<Value, String> {
    let documents = match input {
        Input::Parsed(d) => vec![*d],
        Input::Bytes(bytes, name, title) => {
            if bytes.len() as u64 > state.max_file_bytes {
                return Err(format!(
                    "the file is {} bytes, over the limit of {} (ingest.max_file_bytes)",
                    bytes.len(),
                    state.max_file_bytes
                ));
            }
            // The client's name only hints at the format (its extension); it is never a path we open.
            let hint = name.as_deref().and_then(|n| n.rsplit(['/', '\\']).next()).map(PathBuf::from);
            let parsed = datafactory_parse::parse(&bytes, hint.as_deref(), &state.parse_options)
                .map_err(|e| e.to_string())?;
            let mut documents = parsed.documents;
            if let (Some(t), [d]) = (title, documents.as_mut_slice()) {
                d.title = t;
            }
            if documents.is_empty() {
                return Err("no document in the input".into());
            }
            documents
        }
    };
    let analyses: Vec<_> = documents.iter().map(|d| state.analyzer.analyze(d)).collect();
    if analyses.len() == 1 {
        serde_json::to_value(&analyses[0]).map_err(|e| e.to_string())
    } else {
        Ok(json!({ "analyses": analyses }))
    }
}
