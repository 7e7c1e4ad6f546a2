//! What every service puts around its routes, so the DataFactory service and
//! the analyzer service behave the same: bearer keys (all routes but
//! `/health`), the body limit (413), the concurrency limit (429), the
//! request timeout (408), and request metrics.

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

/// The keys, the request slots and the metrics of one service.
pub struct Guard {
    api_keys: Vec<String>,
    slots: Arc<tokio::sync::Semaphore>,
    max_body_bytes: usize,
    timeout: Duration,
    pub(crate) metrics: Arc<Metrics>,
}

impl Guard {
    pub fn new(server: &ServerConfig) -> Guard {
        Guard {
            api_keys: server.api_keys.clone(),
            slots: Arc::new(tokio::sync::Semaphore::new(server.max_concurrent_requests)),
            max_body_bytes: server.max_body_bytes as usize,
            timeout: Duration::from_secs(server.request_timeout_seconds),
            metrics: Arc::new(Metrics::default()),
        }
    }

    /// `routes` behind the limits, keys and metrics.
    pub fn protect(self: &Arc<Self>, routes: Router) -> Router {
        routes
            .layer(DefaultBodyLimit::max(self.max_body_bytes))
            .layer(tower_http::timeout::TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                self.timeout,
            ))
            .layer(middleware::from_fn_with_state(self.clone(), guard))
    }

    /// Compares the bearer token with every key in constant time.
    fn authorized(&self, headers: &HeaderMap) -> bool {
        if self.api_keys.is_empty() {
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
        for key in &self.api_keys {
            // ct_eq is constant time for equal lengths; lengths are not secret.
            ok |= token.as_bytes().ct_eq(key.as_bytes());
        }
        ok.into()
    }
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// Keys, the concurrency limit, and metrics, around every request.
async fn guard(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| request.uri().path().to_string());
    let response = if route != "/health" && !guard.authorized(request.headers()) {
        refuse(StatusCode::UNAUTHORIZED, "missing or wrong API key (Authorization: Bearer KEY)")
    } else {
        match guard.slots.clone().try_acquire_owned() {
            Ok(_permit) => next.run(request).await,
            Err(_) => refuse(StatusCode::TOO_MANY_REQUESTS, "too many requests at once; retry later"),
        }
    };
    guard.metrics.observe(&route, response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}
