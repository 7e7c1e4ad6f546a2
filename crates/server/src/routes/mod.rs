//! The DataFactory service's routes and handlers (keys, limits, timeouts and
//! metrics around them: `limits.rs`).

use crate::jobs::JobView;
use crate::AppState;
use axum::extract::{Multipart, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use datafactory_core::{Embedding, InputKind, PlanOverride};
use datafactory_ingest::IngestRequest;
use datafactory_store::{SearchFilter, SearchMode, SearchRequest};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

mod deployment;
mod documents;
mod embeddings;
mod ingest;
mod jobs;
mod search;
mod status;
use deployment::*;
use documents::*;
use embeddings::*;
use ingest::*;
pub(crate) use ingest::{resume_jobs, start_job, JobPlan, Staged};
use jobs::*;
use search::*;
use status::*;

type Shared = Arc<AppState>;

/// An error answered as `{"error": "..."}` with its status.
pub struct ApiError(pub(crate) StatusCode, pub(crate) String);

/// The body of every error answer.
#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorBody {
    /// What went wrong, naming the field or value at fault.
    error: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

pub(crate) fn bad_request(m: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, m.into())
}

pub(crate) fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// Every route of the service, each registered together with its OpenAPI
/// operation (the `#[utoipa::path]` on its handler): what is served and what
/// `/openapi.json` describes are one list.
pub(crate) fn api_routes() -> OpenApiRouter<Shared> {
    OpenApiRouter::with_openapi(crate::openapi::base())
        .routes(routes!(health))
        .routes(routes!(ready))
        .routes(routes!(deployment))
        .routes(routes!(metrics))
        .routes(routes!(openapi_json))
        .routes(routes!(ingest))
        .routes(routes!(jobs))
        .routes(routes!(job))
        .routes(routes!(job_events))
        .routes(routes!(openai_embeddings))
        .routes(routes!(tei_embed))
        .routes(routes!(tei_info))
        .routes(routes!(embed_windows))
        .routes(routes!(search_get, search_post))
        .routes(routes!(documents))
        .routes(routes!(document, delete_document))
        .routes(routes!(collections))
}

/// The API and the web console (`console.rs`, not in the OpenAPI
/// description: it is a page, not an API), behind the guard.
pub fn router(state: Shared) -> Router {
    let (routes, _) = api_routes().split_for_parts();
    let routes = routes.merge(crate::console::router());
    state.guard.clone().apply(routes, &state.config.server).with_state(state)
}

/// `{"status": "ok"}`.
#[derive(Serialize, ToSchema)]
pub(crate) struct Health {
    status: &'static str,
}

/// Alive (no key needed).
#[utoipa::path(get, path = "/health", tag = "operations", security(()),
    responses((status = 200, description = "The process answers", body = Health)))]
pub(crate) async fn health() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// This document: the service's OpenAPI 3.1 description.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3.1", body = Object)))]
async fn openapi_json() -> Json<Value> {
    Json(crate::openapi::document())
}
