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
        .routes(routes!(metrics))
        .routes(routes!(openapi_json))
        .routes(routes!(ingest))
        .routes(routes!(job))
        .routes(routes!(job_events))
        .routes(routes!(openai_embeddings))
        .routes(routes!(tei_embed))
        .routes(routes!(tei_info))
        .routes(routes!(search_get, search_post))
        .routes(routes!(documents))
        .routes(routes!(document, delete_document))
}

pub fn router(state: Shared) -> Router {
    let (routes, _) = api_routes().split_for_parts();
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

/// How long `/ready` waits for each LLM endpoint's health probe.
const LLM_PROBE: Duration = Duration::from_secs(2);

/// `GET /ready`: what the service can do now.
#[derive(Serialize, ToSchema)]
struct Ready {
    /// The store answers.
    ready: bool,
    store: ReadyStore,
    embedding: ReadyEmbedding,
    rerank: ReadyRerank,
    enrichment: ReadyEnrichment,
    /// The nodes sharing a PostgreSQL store and its job queue (null on the
    /// embedded store).
    fleet: Option<datafactory_store::Fleet>,
}

#[derive(Serialize, ToSchema)]
struct ReadyStore {
    open: bool,
    /// The word and vector indexes include every committed change.
    consistent: Option<bool>,
    documents: Option<u64>,
    chunks: Option<u64>,
}

#[derive(Serialize, ToSchema)]
struct ReadyEmbedding {
    loaded: bool,
    model: Option<String>,
    /// Why no model is loaded (searches then use words only).
    note: Option<String>,
    /// The embedding workers (`embedding.remote_urls`) as the pool knows
    /// them; empty when the model runs in this process.
    workers: Vec<datafactory_core::WorkerState>,
}

#[derive(Serialize, ToSchema)]
struct ReadyRerank {
    /// `off`, `remote` or `local`.
    mode: String,
    model: Option<String>,
    /// The reranker services (`mode = "remote"`) as the pool knows them.
    workers: Vec<datafactory_core::WorkerState>,
}

#[derive(Serialize, ToSchema)]
struct ReadyEnrichment {
    /// `off`, `heuristic` or `llm`.
    mode: &'static str,
    /// Each configured LLM endpoint: its address, model, health and counters.
    endpoints: Vec<datafactory_enrich::EndpointState>,
}

/// Store, model, reranker and LLM endpoint state.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses((status = 200, description = "State of each part", body = Ready)))]
async fn ready(State(state): State<Shared>) -> Json<Ready> {
    let embedder = state.pipeline.embedder();
    let store = state.store.clone();
    let stats = tokio::task::spawn_blocking(move || store.stats()).await.ok().and_then(|r| r.ok());
    let enricher = state.pipeline.enricher().clone();
    let llm_endpoints = tokio::task::spawn_blocking(move || enricher.endpoint_states(Some(LLM_PROBE)))
        .await
        .unwrap_or_default();
    Json(Ready {
        ready: stats.is_some(),
        store: ReadyStore {
            open: stats.is_some(),
            consistent: stats.as_ref().map(|s| s.consistent),
            documents: stats.as_ref().map(|s| s.documents),
            chunks: stats.as_ref().map(|s| s.chunks),
        },
        embedding: ReadyEmbedding {
            loaded: embedder.is_some(),
            model: embedder.map(|e| e.model_id().to_string()),
            note: state.embedding_note.clone(),
            workers: embedder.map(|e| e.workers()).unwrap_or_default(),
        },
        rerank: ReadyRerank {
            mode: state.config.rerank.mode.clone(),
            model: state.reranker.as_ref().map(|r| r.model_id().to_string()),
            workers: state.reranker.as_ref().map(|r| r.workers()).unwrap_or_default(),
        },
        enrichment: ReadyEnrichment { mode: state.pipeline.enricher().mode(), endpoints: llm_endpoints },
        fleet: crate::fleet::view(&state).await,
    })
}

/// Prometheus metrics (text format 0.0.4): requests, ingest, phases, LLM
/// tokens per endpoint, embedder batches and GPU fallbacks.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text", body = String, content_type = "text/plain")))]
async fn metrics(State(state): State<Shared>) -> impl IntoResponse {
    let mut out = state.metrics.render();
    let embedder = state.pipeline.embedder().map(|e| e.stats()).unwrap_or_default();
    state.metrics.render_ingest(&mut out, embedder);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

#[derive(Deserialize, Default, IntoParams)]
#[into_params(parameter_in = Query)]
struct IngestParams {
    /// Answer when the job has ended (200 with the job) instead of at once (202).
    #[serde(default)]
    wait: bool,
    /// The collection (default: `ingest.default_collection`).
    collection: Option<String>,
}

/// One document given as JSON.
#[derive(Deserialize, ToSchema)]
struct JsonDocument {
    text: String,
    title: Option<String>,
    id: Option<String>,
    #[serde(default)]
    metadata: serde_json::Map<String, Value>,
}

/// A JSON ingest: one document, or several under `documents`.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
enum JsonIngest {
    Many {
        documents: Vec<JsonDocument>,
        collection: Option<String>,
        plan: Option<PlanOverride>,
    },
    One {
        collection: Option<String>,
        plan: Option<PlanOverride>,
        #[serde(flatten)]
        document: JsonDocument,
    },
}

/// A multipart ingest: files (any number of parts), and optional
/// `collection` and `plan` parts.
#[derive(ToSchema)]
#[allow(dead_code)] // describes the multipart body; the handler reads the parts
struct IngestUpload {
    #[schema(value_type = Vec<String>, format = Binary)]
    file: Vec<Vec<u8>>,
    collection: Option<String>,
    /// The `plan` object as JSON text.
    plan: Option<String>,
}

/// A job was created and queued.
#[derive(Serialize, ToSchema)]
struct JobAccepted {
    job_id: String,
    /// `queued`.
    state: &'static str,
}

/// Ingest uploaded files or JSON documents as a job. Multipart files, or
/// JSON (`text`, `title`, `metadata`, `id`, `collection`, or
/// `documents: [...]`). 202 with a job id, or the finished job with
/// `?wait=true`.
#[utoipa::path(post, path = "/ingest", tag = "ingest", params(IngestParams),
    request_body(content(
        (JsonIngest = "application/json"),
        (IngestUpload = "multipart/form-data"))),
    responses(
        (status = 202, description = "Queued", body = JobAccepted),
        (status = 200, description = "Ended (`wait=true`): the job (its stored record when a fleet on PostgreSQL ran it)", body = JobAnswer),
        (status = 400, description = "Bad request", body = ErrorBody),
        (status = 503, description = "The store cannot take the job", body = ErrorBody)))]
async fn ingest(
    State(state): State<Shared>,
    Query(params): Query<IngestParams>,
    request: Request,
) -> Result<Response, ApiError> {
    let content_type =
        request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let mut collection = params.collection.clone();
    let job_collection =
        |c: &Option<String>| c.clone().unwrap_or_else(|| state.config.ingest.default_collection.clone());
    let uploads = state.config.data_dir.join("uploads");

    // Files land in a folder named after a fresh id; names are ours.
    let batch = format!("{:016x}", rand_id());
    let folder = uploads.join(&batch);
    tokio::fs::create_dir_all(&folder).await.map_err(internal)?;
    let mut named: Vec<(PathBuf, String)> = Vec::new();
    let mut plan_override: Option<PlanOverride> = None;

    if content_type.starts_with("multipart/form-data") {
        let mut multipart =
            Multipart::from_request(request, &()).await.map_err(|e| bad_request(e.to_string()))?;
        let mut n = 0;
        while let Some(field) = multipart.next_field().await.map_err(|e| bad_request(e.to_string()))? {
            if field.name() == Some("collection") {
                collection = Some(field.text().await.map_err(|e| bad_request(e.to_string()))?);
                continue;
            }
            if field.name() == Some("plan") {
                let text = field.text().await.map_err(|e| bad_request(e.to_string()))?;
                plan_override =
                    Some(serde_json::from_str(&text).map_err(|e| bad_request(format!("`plan` part: {e}")))?);
                continue;
            }
            let client_name = field.file_name().map(sanitize_name).unwrap_or_else(|| format!("upload-{n}"));
            let bytes = field.bytes().await.map_err(|e| match e.status() {
                StatusCode::PAYLOAD_TOO_LARGE => ApiError(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
                _ => bad_request(e.to_string()),
            })?;
            n += 1;
            // Keep the extension (a hint for the format), never the path.
            let ext = std::path::Path::new(client_name.rsplit('/').next().unwrap_or(""))
                .extension()
                .map(|e| format!(".{}", e.to_string_lossy()))
                .unwrap_or_default();
            let path = folder.join(format!("{n:05}{ext}"));
            tokio::fs::write(&path, &bytes).await.map_err(internal)?;
            named.push((path, format!("upload:{client_name}")));
        }
        if named.is_empty() {
            return Err(bad_request("no file in the multipart body"));
        }
    } else {
        let body = axum::body::to_bytes(request.into_body(), state.config.server.max_body_bytes as usize)
            .await
            .map_err(|e| ApiError(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()))?;
        let parsed: JsonIngest = serde_json::from_slice(&body)
            .map_err(|e| bad_request(format!("expected JSON with `text` (or `documents`): {e}")))?;
        let documents = match parsed {
            JsonIngest::Many { documents, collection: c, plan } => {
                collection = collection.or(c);
                plan_override = plan;
                documents
            }
            JsonIngest::One { collection: c, document, plan } => {
                collection = collection.or(c);
                plan_override = plan;
                vec![document]
            }
        };
        if documents.is_empty() {
            return Err(bad_request("`documents` is empty"));
        }
        let mut lines = String::new();
        for d in documents {
            if d.text.trim().is_empty() {
                return Err(bad_request("a document's `text` is empty"));
            }
            // Without an id, identical texts are one document.
            let id = d.id.unwrap_or_else(|| blake3::hash(d.text.as_bytes()).to_hex()[..16].to_string());
            let mut record = json!({"id": id, "text": d.text, "metadata": d.metadata});
            if let Some(t) = d.title {
                record["title"] = Value::String(t);
            }
            lines.push_str(&record.to_string());
            lines.push('\n');
        }
        let path = folder.join("documents.jsonl");
        tokio::fs::write(&path, lines).await.map_err(internal)?;
        named.push((path, "api".to_string()));
    }

    let collection = job_collection(&collection);
    datafactory_core::config::validate_collection(&collection).map_err(bad_request)?;
    if crate::fleet::enabled(&state) {
        if let Some(Err(e)) = plan_override.as_ref().map(check_plan) {
            return Err(bad_request(e));
        }
        return crate::fleet::ingest(&state, collection, named, plan_override, folder, params.wait).await;
    }
    let store = state.store.clone();
    let c = collection.clone();
    let job_id = tokio::task::spawn_blocking(move || store.create_job("ingest", Some(&c)))
        .await
        .map_err(internal)?
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    if let Some(Err(e)) = plan_override.as_ref().map(check_plan) {
        return Err(bad_request(e));
    }
    let plan = JobPlan { job_id: job_id.clone(), collection, named, plan: plan_override };
    std::fs::write(folder.join(JOB_PLAN), serde_json::to_vec(&plan).map_err(internal)?).map_err(internal)?;
    let task = start_job(state.clone(), plan, folder);
    if params.wait {
        let progress = task.await.map_err(internal)?;
        return Ok((StatusCode::OK, Json(progress.view())).into_response());
    }
    Ok((StatusCode::ACCEPTED, Json(JobAccepted { job_id, state: "queued" })).into_response())
}

/// What a job ingests, saved beside its uploads so that a job cut short (the
/// service stopped or died) is resumed when the service starts again.
#[derive(serde::Serialize, Deserialize)]
pub(crate) struct JobPlan {
    pub(crate) job_id: String,
    pub(crate) collection: String,
    pub(crate) named: Vec<(PathBuf, String)>,
    /// Changes to the chunking plan of every document (`plan` in the request).
    #[serde(default)]
    pub(crate) plan: Option<PlanOverride>,
}

/// What serde cannot check in a plan override.
fn check_plan(o: &PlanOverride) -> Result<(), String> {
    match o.max_tokens {
        Some(m) if m < 16 => Err("`plan.max_tokens` must be at least 16".into()),
        _ => Ok(()),
    }
}

const JOB_PLAN: &str = "job.json";

/// Runs an ingest job on a blocking thread (at most `ingest_slots` at once).
/// The upload folder is removed when the job has run to its end; a job that
/// was cancelled keeps it, to be resumed.
pub(crate) fn start_job(
    state: Shared,
    plan: JobPlan,
    folder: PathBuf,
) -> tokio::task::JoinHandle<Arc<crate::jobs::JobProgress>> {
    let progress = state.jobs.add(
        &plan.job_id,
        &plan.collection,
        state.pipeline.embedder().is_some(),
        state.pipeline.enricher().enabled(),
    );
    let request = IngestRequest {
        collection: plan.collection,
        named: plan.named,
        job_id: Some(plan.job_id),
        cancel: Some(progress.cancel.clone()),
        plan: plan.plan,
        ..Default::default()
    };
    tokio::spawn(async move {
        let permit = state.ingest_slots.clone().acquire_owned().await;
        let s = state.clone();
        let p = progress.clone();
        let result = tokio::task::spawn_blocking(move || {
            let r = datafactory_ingest::ingest(&s.store, &s.pipeline, &request, p.as_ref());
            if r.is_ok() && !p.cancel.load(Ordering::Relaxed) {
                let _ = std::fs::remove_dir_all(&folder);
            }
            r
        })
        .await;
        drop(permit);
        let result = match result {
            Ok(Ok(summary)) => {
                let m = &state.metrics;
                m.documents_ingested.fetch_add(
                    (summary.documents.added + summary.documents.replaced) as u64,
                    Ordering::Relaxed,
                );
                m.chunks_ingested.fetch_add(summary.chunks as u64, Ordering::Relaxed);
                m.chunks_embedded.fetch_add(summary.embedding.chunks as u64, Ordering::Relaxed);
                m.ingest_failures.fetch_add(summary.failed.len() as u64, Ordering::Relaxed);
                m.record_enrichment(&summary);
                Ok(summary)
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("ingest task failed: {e}")),
        };
        progress.finish(result);
        state.metrics.record_phases(&progress.view().phases);
        state.jobs.done();
        progress
    })
}

/// Starts again every job whose upload folder is still there (it did not run
/// to its end). Files it had already stored are recognised as unchanged.
pub(crate) fn resume_jobs(state: &Shared) -> usize {
    let uploads = state.config.data_dir.join("uploads");
    let Ok(entries) = std::fs::read_dir(&uploads) else { return 0 };
    let mut resumed = 0;
    for entry in entries.flatten() {
        let folder = entry.path();
        let plan: Option<JobPlan> =
            std::fs::read(folder.join(JOB_PLAN)).ok().and_then(|b| serde_json::from_slice(&b).ok());
        match plan {
            Some(plan) => {
                tracing::info!("resuming ingest job {}", plan.job_id);
                drop(start_job(state.clone(), plan, folder));
                resumed += 1;
            }
            // A request that died before its job was recorded: nothing to resume.
            None => {
                let _ = std::fs::remove_dir_all(&folder);
            }
        }
    }
    resumed
}

/// A client's file name as a safe relative name: every path component
/// reduced to safe characters, `.`, `..` and empty ones dropped (so
/// `../../etc/x.txt` becomes `etc/x.txt`). It is only ever a source name: the
/// bytes are stored under a name the server makes.
fn sanitize_name(name: &str) -> String {
    let parts: Vec<String> = name
        .split(['/', '\\'])
        .map(|part| {
            let clean: String = part
                .chars()
                .map(|c| if c.is_alphanumeric() || matches!(c, '.' | '-' | '_' | ' ') { c } else { '_' })
                .collect();
            clean.trim_matches(['.', ' ']).chars().take(200).collect::<String>()
        })
        .filter(|p| !p.is_empty())
        .collect();
    if parts.is_empty() {
        "upload".to_string()
    } else {
        parts.join("/")
    }
}

fn rand_id() -> u64 {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let h =
        blake3::hash(format!("{nanos}{:?}{}", std::thread::current().id(), std::process::id()).as_bytes());
    u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap_or([0; 8]))
}

/// A job: live progress while it runs in this process, else its stored
/// record.
#[derive(Serialize, ToSchema)]
#[allow(dead_code, clippy::large_enum_variant)] // describes the two answers `job` gives; never built
#[serde(untagged)]
enum JobAnswer {
    Live(JobView),
    Stored(datafactory_store::JobRecord),
}

/// `GET /jobs/{id}`: live progress, or the stored record of a finished job.
#[utoipa::path(get, path = "/jobs/{id}", tag = "ingest", params(("id" = String, Path, description = "job id")),
    responses(
        (status = 200, description = "The job", body = JobAnswer),
        (status = 404, description = "No such job", body = ErrorBody)))]
async fn job(State(state): State<Shared>, Path(id): Path<String>) -> Result<Response, ApiError> {
    if let Some(p) = state.jobs.get(&id) {
        return Ok(Json(p.view()).into_response());
    }
    let store = state.store.clone();
    let record =
        tokio::task::spawn_blocking(move || store.get_job(&id)).await.map_err(internal)?.map_err(internal)?;
    match record {
        Some(r) => Ok(Json(r).into_response()),
        None => Err(ApiError(StatusCode::NOT_FOUND, "no such job".into())),
    }
}

/// `GET /jobs/{id}/events`: the job's state as Server-Sent Events, one
/// `progress` event whenever it changes (polled every 200 ms), and a last
/// `done` event when it ends; each event's data is the job as JSON.
#[utoipa::path(get, path = "/jobs/{id}/events", tag = "ingest",
    params(("id" = String, Path, description = "job id")),
    responses(
        (status = 200, description = "`progress` events, then `done`", content_type = "text/event-stream",
         body = String),
        (status = 404, description = "No running job with that id", body = ErrorBody)))]
async fn job_events(State(state): State<Shared>, Path(id): Path<String>) -> Result<Response, ApiError> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let Some(progress) = state.jobs.get(&id) else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            "no running job with that id (GET /jobs/{id} for finished ones)".into(),
        ));
    };
    let stream =
        futures_util::stream::unfold((progress, String::new(), false), |(p, last, finished)| async move {
            if finished {
                return None;
            }
            loop {
                let view = p.view();
                let body = serde_json::to_string(&view).unwrap_or_default();
                let ended = !matches!(view.state.as_str(), "queued" | "running");
                if ended {
                    let event = Event::default().event("done").data(body);
                    return Some((Ok::<_, std::convert::Infallible>(event), (p, String::new(), true)));
                }
                if body != last {
                    let event = Event::default().event("progress").data(body.clone());
                    return Some((Ok(event), (p, body, false)));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}

/// The in-process embedder, or 503 saying why there is none.
fn embedder(state: &AppState) -> Result<Arc<dyn datafactory_core::Embedder>, ApiError> {
    state.pipeline.embedder().cloned().ok_or_else(|| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            state.embedding_note.clone().unwrap_or_else(|| "no embedding model loaded".into()),
        )
    })
}

/// One text or a list of texts.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Deserialize, ToSchema)]
struct OpenAiRequest {
    input: OneOrMany,
    model: Option<String>,
    /// `float` (default) or `base64` (little-endian f32s, as OpenAI's clients ask for).
    encoding_format: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct OpenAiResponse {
    /// `list`.
    object: &'static str,
    data: Vec<OpenAiEmbedding>,
    model: String,
    usage: OpenAiUsage,
}

#[derive(Serialize, ToSchema)]
struct OpenAiEmbedding {
    /// `embedding`.
    object: &'static str,
    index: usize,
    embedding: EmbeddingData,
}

/// Floats, or with `encoding_format: base64` a base64 string of little-endian f32s.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
enum EmbeddingData {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Serialize, ToSchema)]
struct OpenAiUsage {
    prompt_tokens: usize,
    total_tokens: usize,
}

/// `POST /v1/embeddings`, the OpenAI shape, over the in-process model.
#[utoipa::path(post, path = "/v1/embeddings", tag = "embeddings", request_body = OpenAiRequest,
    responses(
        (status = 200, description = "One embedding per input", body = OpenAiResponse),
        (status = 400, description = "Bad request", body = ErrorBody),
        (status = 503, description = "No embedding model loaded", body = ErrorBody)))]
async fn openai_embeddings(
    State(state): State<Shared>,
    Json(r): Json<OpenAiRequest>,
) -> Result<Json<OpenAiResponse>, ApiError> {
    let e = embedder(&state)?;
    let texts = r.input.into_vec();
    if texts.is_empty() {
        return Err(bad_request("`input` is empty"));
    }
    let model = r.model.unwrap_or_else(|| e.model_id().to_string());
    let counter = e.token_counter();
    let tokens: usize = texts.iter().map(|t| counter.count(t)).sum();
    let vectors = tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        e.embed(&refs, InputKind::Passage)
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    let base64 = match r.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => return Err(bad_request(format!("encoding_format {other:?}: use float or base64"))),
    };
    let data = vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = if base64 {
                use base64::Engine as _;
                let bytes: Vec<u8> = v.dense.iter().flat_map(|x| x.to_le_bytes()).collect();
                EmbeddingData::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                EmbeddingData::Float(v.dense)
            };
            OpenAiEmbedding { object: "embedding", index, embedding }
        })
        .collect();
    Ok(Json(OpenAiResponse {
        object: "list",
        data,
        model,
        usage: OpenAiUsage { prompt_tokens: tokens, total_tokens: tokens },
    }))
}

#[derive(Deserialize, ToSchema)]
struct TeiRequest {
    inputs: OneOrMany,
    /// `query`: embed the inputs as search queries (the model's query
    /// instruction, if it has one); absent: as passages.
    prompt_name: Option<String>,
    /// Accepted for compatibility: vectors are always normalised.
    #[allow(dead_code)]
    normalize: Option<bool>,
    /// Accepted for compatibility: inputs are always truncated to the model's length.
    #[allow(dead_code)]
    truncate: Option<bool>,
}

/// `GET /info`, text-embeddings-inference's shape (what embedding clients
/// such as other DataFactory nodes ask first).
#[derive(Serialize, ToSchema)]
struct TeiInfo {
    /// The model and its settings, as stored with the vectors it makes.
    model_id: String,
    /// Tokens of one input the model reads.
    max_input_length: usize,
    /// Inputs per request at most (the service's body limit is the real one).
    max_client_batch_size: usize,
    /// Vector size (not in TEI's answer; clients may use it).
    dimensions: usize,
    /// This service's version.
    version: &'static str,
}

/// The embedding model this service serves.
#[utoipa::path(get, path = "/info", tag = "embeddings",
    responses(
        (status = 200, description = "The model", body = TeiInfo),
        (status = 503, description = "No embedding model loaded", body = ErrorBody)))]
async fn tei_info(State(state): State<Shared>) -> Result<Json<TeiInfo>, ApiError> {
    let e = embedder(&state)?;
    Ok(Json(TeiInfo {
        model_id: e.model_id().to_string(),
        max_input_length: e.max_input_tokens(),
        max_client_batch_size: 512,
        dimensions: e.dimension(),
        version: env!("CARGO_PKG_VERSION"),
    }))
}

/// `POST /embed`, the text-embeddings-inference shape: a list of vectors.
#[utoipa::path(post, path = "/embed", tag = "embeddings", request_body = TeiRequest,
    responses(
        (status = 200, description = "One vector per input", body = Vec<Vec<f32>>),
        (status = 400, description = "Too many inputs", body = ErrorBody),
        (status = 422, description = "Unknown prompt_name", body = ErrorBody),
        (status = 503, description = "No embedding model loaded", body = ErrorBody)))]
async fn tei_embed(
    State(state): State<Shared>,
    Json(r): Json<TeiRequest>,
) -> Result<Json<Vec<Vec<f32>>>, ApiError> {
    let e = embedder(&state)?;
    let kind = match r.prompt_name.as_deref() {
        None | Some("passage" | "document") => InputKind::Passage,
        Some("query") => InputKind::Query,
        Some(other) => {
            return Err(ApiError(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("prompt_name {other:?}: use query, passage or document"),
            ))
        }
    };
    let texts = r.inputs.into_vec();
    if texts.len() > 512 {
        return Err(bad_request(format!("{} inputs: at most 512 per request", texts.len())));
    }
    let vectors = tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        e.embed(&refs, kind)
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    Ok(Json(vectors.into_iter().map(|v| v.dense).collect()))
}

/// A search (`POST /search`).
#[derive(Deserialize, ToSchema)]
struct SearchBody {
    #[serde(alias = "q")]
    query: String,
    /// Results (default `search.top_k`; 1 to 1000).
    top_k: Option<usize>,
    /// Only this collection.
    collection: Option<String>,
    /// `hybrid`, `lexical`, `dense` or `sparse` (default `search.mode`).
    #[schema(value_type = Option<SearchModeName>)]
    mode: Option<String>,
    /// Only these documents, only documents with this metadata.
    #[serde(default)]
    filter: Option<SearchFilter>,
    /// Rerank this search (default: whether `rerank.mode` is not `off`).
    rerank: Option<bool>,
}

/// A search (`GET /search?q=`).
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct SearchQuery {
    /// The query.
    q: String,
    /// Results (default `search.top_k`; 1 to 1000).
    top_k: Option<usize>,
    /// Only this collection.
    collection: Option<String>,
    /// `hybrid`, `lexical`, `dense` or `sparse` (default `search.mode`).
    #[param(value_type = Option<SearchModeName>)]
    mode: Option<String>,
    /// Comma-separated document ids: only these documents.
    document_ids: Option<String>,
    /// Rerank this search (default: whether `rerank.mode` is not `off`).
    rerank: Option<bool>,
}

/// The search modes, by name.
#[derive(ToSchema)]
#[allow(dead_code)] // names the strings `mode` accepts
#[schema(rename_all = "lowercase")]
enum SearchModeName {
    Hybrid,
    Lexical,
    Dense,
    Sparse,
}

/// Search results: the same shape as `datafactory search --json`.
#[derive(Serialize, ToSchema)]
struct SearchResponse {
    query: String,
    mode: String,
    /// The retrievers that ran, e.g. `["words", "dense"]`.
    retrievers: Vec<&'static str>,
    /// What reranking did, when this search was reranked.
    rerank: Option<datafactory_ingest::RerankReport>,
    /// Why a requested stage did not run, if one did not.
    notes: Vec<String>,
    took_ms: f64,
    results: Vec<datafactory_store::SearchHit>,
}

/// Search by words, meaning or both, fused, optionally reranked.
#[utoipa::path(get, path = "/search", tag = "search", params(SearchQuery),
    responses(
        (status = 200, description = "Results, best first", body = SearchResponse),
        (status = 400, description = "Bad request", body = ErrorBody)))]
async fn search_get(
    State(state): State<Shared>,
    Query(q): Query<SearchQuery>,
) -> Result<Json<SearchResponse>, ApiError> {
    let mut filter = SearchFilter::default();
    if let Some(ids) = &q.document_ids {
        filter.document_ids.extend(ids.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from));
    }
    let body = SearchBody {
        query: q.q,
        top_k: q.top_k,
        collection: q.collection,
        mode: q.mode,
        filter: Some(filter),
        rerank: q.rerank,
    };
    search(state, body).await
}

/// Search, with filters on document ids and metadata.
#[utoipa::path(post, path = "/search", tag = "search", request_body = SearchBody,
    responses(
        (status = 200, description = "Results, best first", body = SearchResponse),
        (status = 400, description = "Bad request", body = ErrorBody)))]
async fn search_post(
    State(state): State<Shared>,
    Json(q): Json<SearchBody>,
) -> Result<Json<SearchResponse>, ApiError> {
    search(state, q).await
}

/// `GET|POST /search`: the same result shape as `datafactory search --json`.
async fn search(state: Shared, q: SearchBody) -> Result<Json<SearchResponse>, ApiError> {
    if q.query.trim().is_empty() {
        return Err(bad_request("`query` is empty"));
    }
    let mode_name = q.mode.clone().unwrap_or_else(|| state.config.search.mode.clone());
    let mode = SearchMode::parse_name(&mode_name).ok_or_else(|| {
        bad_request(format!("unknown mode {mode_name:?}: use hybrid, lexical, dense or sparse"))
    })?;
    let top_k = q.top_k.unwrap_or(state.config.search.top_k).clamp(1, 1000);
    let filter = q.filter.clone().unwrap_or_default();
    // A search by words alone on the embedded store takes a fraction of a
    // millisecond: it runs on the request's own thread, without the hop to
    // a blocking thread and back; anything that may take longer (a model,
    // the reranker, PostgreSQL) runs on a blocking thread.
    let inline = mode == SearchMode::Lexical
        && (q.rerank == Some(false) || state.reranker.is_none())
        && state.store.backend() == "embedded";
    let result = if inline {
        run_search(&state, q, mode, mode_name, top_k, filter)
    } else {
        let s = state.clone();
        tokio::task::spawn_blocking(move || run_search(&s, q, mode, mode_name, top_k, filter))
            .await
            .map_err(internal)?
    }
    .map_err(internal)?;
    Ok(Json(result))
}

/// One search through the store, the query embedding and the reranker.
fn run_search(
    s: &AppState,
    q: SearchBody,
    mode: SearchMode,
    mode_name: String,
    top_k: usize,
    filter: SearchFilter,
) -> Result<SearchResponse, String> {
    let started = Instant::now();
    let mut notes = Vec::new();
    let embedding: Option<Embedding> = match (mode, s.pipeline.embedder()) {
        (SearchMode::Lexical, _) => None,
        (_, None) => {
            if s.store.vector_options().is_some() {
                notes.push(s.embedding_note.clone().unwrap_or_else(|| "no embedding model loaded".into()));
            }
            None
        }
        (_, Some(e)) => datafactory_ingest::query_embedding(&s.store, Some(e.as_ref()), &q.query, &mut notes)
            .map_err(|e| e.to_string())?,
    };
    let candidates = s.config.rerank.candidates;
    let reranker = match q.rerank {
        Some(false) => None,
        Some(true) if s.reranker.is_none() => {
            notes.push("reranking asked for, but rerank.mode is off: results in fused order".into());
            None
        }
        _ => s.reranker.as_ref(),
    };
    let depth = datafactory_ingest::search_depth(top_k, reranker.is_some(), candidates);
    let mut results = s
        .store
        .search(&SearchRequest {
            embedding: embedding.as_ref(),
            collection: q.collection.as_deref(),
            filter: (!filter.is_empty()).then_some(&filter),
            ..SearchRequest::new(&q.query, mode, depth, &s.config.search)
        })
        .map_err(|e| e.to_string())?;
    notes.append(&mut results.notes);
    if mode != SearchMode::Lexical && !results.retrievers.contains(&"dense") {
        s.metrics.searches_words_only.fetch_add(1, Ordering::Relaxed);
    }
    let rerank = reranker.map(|r| {
        let report = datafactory_ingest::rerank_hits(
            r.as_ref(),
            &s.pipeline,
            &q.query,
            &mut results.hits,
            candidates,
            top_k,
        );
        if report.reranked {
            s.metrics.searches_reranked.fetch_add(1, Ordering::Relaxed);
        } else {
            s.metrics.rerank_failures.fetch_add(1, Ordering::Relaxed);
            notes.push(format!(
                "reranking failed, results in fused order: {}",
                report.error.as_deref().unwrap_or("unknown error")
            ));
        }
        report
    });
    Ok(SearchResponse {
        query: q.query,
        mode: mode_name,
        retrievers: results.retrievers,
        rerank,
        notes,
        took_ms: started.elapsed().as_secs_f64() * 1000.0,
        results: results.hits,
    })
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// Only this collection.
    collection: Option<String>,
}

/// The stored documents.
#[utoipa::path(get, path = "/documents", tag = "documents", params(ListParams),
    responses((status = 200, description = "Documents", body = Vec<datafactory_store::DocumentSummary>)))]
async fn documents(
    State(state): State<Shared>,
    Query(p): Query<ListParams>,
) -> Result<Json<Vec<datafactory_store::DocumentSummary>>, ApiError> {
    let store = state.store.clone();
    let docs = tokio::task::spawn_blocking(move || store.list_documents(p.collection.as_deref()))
        .await
        .map_err(internal)?
        .map_err(internal)?;
    Ok(Json(docs))
}

/// A document with its text, sections and chunks (by id, or the id its input gave it).
#[utoipa::path(get, path = "/documents/{id}", tag = "documents",
    params(("id" = String, Path, description = "document id")),
    responses(
        (status = 200, description = "The document", body = datafactory_store::DocumentDetail),
        (status = 404, description = "No such document", body = ErrorBody)))]
async fn document(
    State(state): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<datafactory_store::DocumentDetail>, ApiError> {
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || store.get_document(&id))
        .await
        .map_err(internal)?
        .map_err(internal)?
    {
        Some(d) => Ok(Json(d)),
        None => Err(ApiError(StatusCode::NOT_FOUND, "no such document".into())),
    }
}

/// A document was removed.
#[derive(Serialize, ToSchema)]
struct Deleted {
    id: String,
    deleted: bool,
}

/// Remove a document everywhere (text, chunks, word and vector indexes).
#[utoipa::path(delete, path = "/documents/{id}", tag = "documents",
    params(("id" = String, Path, description = "document id")),
    responses(
        (status = 200, description = "Removed", body = Deleted),
        (status = 404, description = "No such document", body = ErrorBody)))]
async fn delete_document(
    State(state): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<Deleted>, ApiError> {
    let store = state.store.clone();
    let deleted = tokio::task::spawn_blocking(move || -> Result<Option<String>, String> {
        let Some(d) = store.get_document(&id).map_err(|e| e.to_string())? else { return Ok(None) };
        store.delete_document(&d.summary.id).map_err(|e| e.to_string())?;
        Ok(Some(d.summary.id))
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    match deleted {
        Some(id) => Ok(Json(Deleted { id, deleted: true })),
        None => Err(ApiError(StatusCode::NOT_FOUND, "no such document".into())),
    }
}

use axum::extract::FromRequest;
