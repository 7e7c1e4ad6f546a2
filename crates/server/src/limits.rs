//! What every DataFactory HTTP service applies around its routes, from the
//! `[server]` configuration: bearer keys (all routes but `/health` and the
//! console's static files), the
//! body limit (413), the concurrency limit (429), the time limit (408), and
//! request metrics (labelled by route template; every path that matches no
//! route under one label). The DataFactory service and the reranker service share it.

use crate::metrics::Metrics;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use datafactory_core::config::ServerConfig;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// The keys, the request slots and the metrics one service shares among its requests.
#[derive(Clone)]
pub(crate) struct Guard {
    keys: Arc<Vec<String>>,
    slots: Arc<tokio::sync::Semaphore>,
    metrics: Arc<Metrics>,
}

impl Guard {
    pub(crate) fn new(server: &ServerConfig, metrics: Arc<Metrics>) -> Guard {
        Guard {
            keys: Arc::new(server.api_keys.clone()),
            slots: Arc::new(tokio::sync::Semaphore::new(server.max_concurrent_requests)),
            metrics,
        }
    }

    /// Wraps every route of `router` in the limits of `server`.
    pub(crate) fn apply<S: Clone + Send + Sync + 'static>(
        self,
        router: Router<S>,
        server: &ServerConfig,
    ) -> Router<S> {
        let timeout = Duration::from_secs(server.request_timeout_seconds);
        router
            .layer(DefaultBodyLimit::max(server.max_body_bytes as usize))
            .layer(tower_http::timeout::TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, timeout))
            .layer(middleware::from_fn_with_state(self, guard))
    }

    /// Compares the bearer token with every key in constant time.
    fn authorized(&self, headers: &HeaderMap) -> bool {
        if self.keys.is_empty() {
            return true;
        }
        let Some(token) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        let mut ok = subtle::Choice::from(0);
        for key in self.keys.iter() {
            // ct_eq is constant time for equal lengths; lengths are not secret.
            ok |= token.as_bytes().ct_eq(key.as_bytes());
        }
        ok.into()
    }
}

/// The routes that need no key: `/health`, and the web console's static
/// files (the page must load to ask for a key; every API call it makes sends one).
const PUBLIC_ROUTES: [&str; 3] = ["/health", crate::console::ROUTES[0], crate::console::ROUTES[1]];

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// Keys, the concurrency limit, and metrics, around every request.
async fn guard(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string())
        // Never the raw path: clients choose it, and every distinct label is a series kept forever.
        .unwrap_or_else(|| crate::metrics::UNMATCHED.to_string());
    let response = if !PUBLIC_ROUTES.contains(&route.as_str()) && !guard.authorized(request.headers()) {
        error(StatusCode::UNAUTHORIZED, "missing or wrong API key (Authorization: Bearer KEY)")
    } else {
        match guard.slots.clone().try_acquire_owned() {
            Ok(_permit) => next.run(request).await,
            Err(_) => error(StatusCode::TOO_MANY_REQUESTS, "too many requests at once; retry later"),
        }
    };
    guard.metrics.observe(&route, response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}
