//! The reranker service (`datafactory rerank-server`, port 9200 by default)
//! and its client.
//!
//! The service is an adapter over any [`Reranker`] (the cross-encoder of
//! `datafactory-models`, loaded by the binary): `POST /rerank` takes and
//! answers text-embeddings-inference's shapes (`query`, `texts`,
//! `raw_scores`, `return_text`, `truncate`; a list of `{index, score, text?}`
//! best first), plus `top_k`; `GET /health`, `GET /info`, `GET /metrics`. It
//! applies the same keys and limits as the DataFactory service ([`crate::limits`]).
//! Pairs are truncated as the model's reference implementation does (query
//! capped, passage cut first) unless the request says `truncate: false`:
//! then a pair that would be cut is refused with HTTP 413, as
//! text-embeddings-inference does (which also refuses when `truncate` is
//! left out; here that truncates).
//!
//! Its client, the `Reranker` that search uses when `rerank.mode = "remote"`,
//! is `datafactory_remote::RemoteReranker` (a pool of such services).

use crate::limits::Guard;
use crate::metrics::{counters, Metrics};
use crate::routes::{bad_request, ApiError};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use datafactory_core::{sigmoid, Config, RerankError, Reranker};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;

/// Everything a request to the reranker service needs.
pub struct RerankState {
    pub config: Config,
    pub reranker: Arc<dyn Reranker>,
    metrics: Arc<Metrics>,
    guard: Guard,
}

impl RerankState {
    /// The service's limits and keys come from `config.server`.
    pub fn new(config: Config, reranker: Arc<dyn Reranker>) -> RerankState {
        let metrics = Arc::new(Metrics::default());
        let guard = Guard::new(&config.server, metrics.clone());
        RerankState { config, reranker, metrics, guard }
    }
}

type Shared = Arc<RerankState>;

pub fn rerank_router(state: Shared) -> Router {
    let routes = Router::new()
        .route("/health", get(crate::routes::health))
        .route("/info", get(info))
        .route("/metrics", get(metrics))
        .route("/rerank", post(rerank));
    state.guard.clone().apply(routes, &state.config.server).with_state(state)
}

/// Serves the reranker until `shutdown` completes.
pub async fn serve_rerank(
    state: Shared,
    address: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    serve_rerank_on(state, listener, shutdown).await
}

/// Like [`serve_rerank`], on a listener the caller bound (tests bind port 0).
pub async fn serve_rerank_on(
    state: Shared,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    tracing::info!("reranker ({}) listening on {}", state.reranker.model_id(), listener.local_addr()?);
    axum::serve(listener, rerank_router(state)).with_graceful_shutdown(shutdown).await
}

async fn info(State(state): State<Shared>) -> Json<Value> {
    Json(json!({
        "model_id": state.reranker.model_id(),
        "model_type": "reranker",
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

async fn metrics(State(state): State<Shared>) -> impl IntoResponse {
    let mut out = state.metrics.render_requests();
    let s = state.reranker.stats();
    counters(
        &mut out,
        &[
            ("datafactory_rerank_pairs_total", "Query-passage pairs scored.", s.pairs),
            ("datafactory_rerank_batches_total", "Forward passes run.", s.batches),
            ("datafactory_rerank_tokens_total", "Tokens of the pairs scored (no padding).", s.tokens),
            ("datafactory_rerank_padded_tokens_total", "Tokens computed, padding included.", s.padded_tokens),
            (
                "datafactory_rerank_gpu_fallbacks_total",
                "Batches that ran out of GPU memory and were redone on the CPU.",
                s.gpu_fallbacks,
            ),
        ],
    );
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], out)
}

/// text-embeddings-inference's `/rerank` request, plus `top_k`.
#[derive(Debug, Serialize, Deserialize)]
pub struct RerankRequest {
    pub query: String,
    pub texts: Vec<String>,
    /// The model's logits instead of their sigmoid.
    #[serde(default)]
    pub raw_scores: bool,
    /// Echo each text in its result.
    #[serde(default)]
    pub return_text: bool,
    /// Left out or true: pairs are cut as the model's reference
    /// implementation does. False: a pair that would be cut is refused (HTTP
    /// 413), as text-embeddings-inference does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncate: Option<bool>,
    /// Only `Right` (the passage's end is cut).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncation_direction: Option<String>,
    /// Only the best `top_k` results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
}

/// One text's result: its index in the request, its score, and the text if asked.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Rank {
    pub index: usize,
    pub score: f32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// `POST /rerank`: every text scored against the query, best first.
async fn rerank(
    State(state): State<Shared>,
    Json(r): Json<RerankRequest>,
) -> Result<Json<Vec<Rank>>, ApiError> {
    if r.texts.is_empty() {
        return Err(bad_request("`texts` is empty"));
    }
    if let Some(d) = r.truncation_direction.as_deref().filter(|d| !d.eq_ignore_ascii_case("right")) {
        return Err(bad_request(format!("truncation_direction {d:?} is not supported: only Right")));
    }
    if r.top_k == Some(0) {
        return Err(bad_request("`top_k` must be at least 1"));
    }
    let reranker = state.reranker.clone();
    let RerankRequest { query, texts, raw_scores, return_text, top_k, truncate, .. } = r;
    let (texts, scores) = tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        if truncate == Some(false) {
            if let Some((over, limit)) = reranker.overlong_pairs(&query, &refs) {
                if let Some((i, n)) = over.iter().enumerate().find_map(|(i, n)| n.map(|n| (i, n))) {
                    return Err(ApiError(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!(
                            "texts[{i}] with the query is {n} tokens, over the model's {limit} (or the query over \
                             its share): with truncate false it is refused; send truncate true, or leave it out, \
                             to have it cut"
                        ),
                    ));
                }
            }
        }
        let scores = reranker.score(&query, &refs);
        Ok((texts, scores))
    })
    .await
    .map_err(crate::routes::internal)??;
    let scores = scores.map_err(|e| match e {
        RerankError::Unavailable(m) => ApiError(StatusCode::SERVICE_UNAVAILABLE, m),
        e => ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    })?;
    let mut ranks: Vec<Rank> = scores
        .into_iter()
        .zip(texts)
        .enumerate()
        .map(|(index, (logit, text))| Rank {
            index,
            score: if raw_scores { logit } else { sigmoid(logit) },
            text: return_text.then_some(text),
        })
        .collect();
    ranks.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.index.cmp(&b.index)));
    ranks.truncate(top_k.unwrap_or(usize::MAX));
    Ok(Json(ranks))
}
