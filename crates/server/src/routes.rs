//! The DataFactory service's routes and handlers (keys, limits, timeouts and
//! metrics around them: `limits.rs`).

use crate::AppState;
use axum::extract::{Multipart, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use datafactory_core::{Embedding, InputKind, PlanOverride};
use datafactory_ingest::IngestRequest;
use datafactory_store::{SearchFilter, SearchMode, SearchRequest};
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

type Shared = Arc<AppState>;

/// An error answered as `{"error": "..."}` with its status.
pub struct ApiError(pub(crate) StatusCode, pub(crate) String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

pub(crate) fn bad_request(m: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, m.into())
}

pub(crate) fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

pub fn router(state: Shared) -> Router {
    let routes = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(|| async { Json(crate::openapi::document()) }))
        .route("/ingest", post(ingest))
        .route("/jobs/{id}", get(job))
        .route("/jobs/{id}/events", get(job_events))
        .route("/v1/embeddings", post(openai_embeddings))
        .route("/embed", post(tei_embed))
        .route("/search", get(search_get).post(search_post))
        .route("/documents", get(documents))
        .route("/documents/{id}", get(document).delete(delete_document));
    state.guard.clone().apply(routes, &state.config.server).with_state(state)
}

pub(crate) async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// How long `/ready` waits for each LLM endpoint's health probe.
const LLM_PROBE: Duration = Duration::from_secs(2);

async fn ready(State(state): State<Shared>) -> Json<Value> {
    let embedder = state.pipeline.embedder();
    let store = state.store.clone();
    let stats = tokio::task::spawn_blocking(move || store.stats()).await.ok().and_then(|r| r.ok());
    let enricher = state.pipeline.enricher().clone();
    let llm_endpoints = tokio::task::spawn_blocking(move || enricher.endpoint_states(Some(LLM_PROBE)))
        .await
        .unwrap_or_default();
    Json(json!({
        "ready": stats.is_some(),
        "store": {
            "open": stats.is_some(),
            "consistent": stats.as_ref().map(|s| s.consistent),
            "documents": stats.as_ref().map(|s| s.documents),
            "chunks": stats.as_ref().map(|s| s.chunks),
        },
        "embedding": {
            "loaded": embedder.is_some(),
            "model": embedder.map(|e| e.model_id().to_string()),
            "note": state.embedding_note,
        },
        "rerank": {
            "mode": state.config.rerank.mode,
            "model": state.reranker.as_ref().map(|r| r.model_id().to_string()),
        },
        "enrichment": {
            "mode": state.pipeline.enricher().mode(),
            "endpoints": llm_endpoints,
        },
        "fleet": crate::fleet::view(&state).await,
    }))
}

async fn metrics(State(state): State<Shared>) -> impl IntoResponse {
    let mut out = state.metrics.render();
    let embedder = state.pipeline.embedder().map(|e| e.stats()).unwrap_or_default();
    state.metrics.render_ingest(&mut out, embedder);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

#[derive(Deserialize, Default)]
struct IngestParams {
    #[serde(default)]
    wait: bool,
    collection: Option<String>,
}

/// One document given as JSON.
#[derive(Deserialize)]
struct JsonDocument {
    text: String,
    title: Option<String>,
    id: Option<String>,
    #[serde(default)]
    metadata: serde_json::Map<String, Value>,
}

#[derive(Deserialize)]
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

/// `POST /ingest`: multipart files, or JSON (`text`, `title`, `metadata`,
/// `id`, `collection`, or `documents: [...]`). 202 with a job id, or the
/// finished job with `?wait=true`.
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
    Ok((StatusCode::ACCEPTED, Json(json!({"job_id": job_id, "state": "queued"}))).into_response())
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

/// `GET /jobs/{id}`: live progress, or the stored record of a finished job.
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
/// `done` event when it ends.
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

#[derive(Deserialize)]
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

#[derive(Deserialize)]
struct OpenAiRequest {
    input: OneOrMany,
    model: Option<String>,
    /// `float` (default) or `base64` (little-endian f32s, as OpenAI's clients ask for).
    encoding_format: Option<String>,
}

/// `POST /v1/embeddings`, the OpenAI shape, over the in-process model.
async fn openai_embeddings(
    State(state): State<Shared>,
    Json(r): Json<OpenAiRequest>,
) -> Result<Json<Value>, ApiError> {
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
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                use base64::Engine as _;
                let bytes: Vec<u8> = v.dense.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v.dense)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })))
}

#[derive(Deserialize)]
struct TeiRequest {
    inputs: OneOrMany,
}

/// `POST /embed`, the text-embeddings-inference shape: a list of vectors.
async fn tei_embed(State(state): State<Shared>, Json(r): Json<TeiRequest>) -> Result<Json<Value>, ApiError> {
    let e = embedder(&state)?;
    let texts = r.inputs.into_vec();
    let vectors = tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        e.embed(&refs, InputKind::Passage)
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    Ok(Json(json!(vectors.into_iter().map(|v| v.dense).collect::<Vec<_>>())))
}

#[derive(Deserialize)]
struct SearchBody {
    #[serde(alias = "q")]
    query: String,
    top_k: Option<usize>,
    collection: Option<String>,
    mode: Option<String>,
    /// POST: `{"document_ids": [...], "metadata": {"key": value}}`.
    #[serde(default)]
    filter: Option<SearchFilter>,
    /// GET: comma-separated document ids.
    document_ids: Option<String>,
    /// Rerank this search (default: whether `rerank.mode` is not `off`).
    rerank: Option<bool>,
}

async fn search_get(
    State(state): State<Shared>,
    Query(q): Query<SearchBody>,
) -> Result<Json<Value>, ApiError> {
    search(state, q).await
}

async fn search_post(
    State(state): State<Shared>,
    Json(q): Json<SearchBody>,
) -> Result<Json<Value>, ApiError> {
    search(state, q).await
}

/// `GET|POST /search`: the same result shape as `datafactory search --json`.
async fn search(state: Shared, q: SearchBody) -> Result<Json<Value>, ApiError> {
    if q.query.trim().is_empty() {
        return Err(bad_request("`query` is empty"));
    }
    let mode_name = q.mode.clone().unwrap_or_else(|| state.config.search.mode.clone());
    let mode = SearchMode::parse_name(&mode_name).ok_or_else(|| {
        bad_request(format!("unknown mode {mode_name:?}: use hybrid, lexical, dense or sparse"))
    })?;
    let top_k = q.top_k.unwrap_or(state.config.search.top_k).clamp(1, 1000);
    let mut filter = q.filter.clone().unwrap_or_default();
    if let Some(ids) = &q.document_ids {
        filter.document_ids.extend(ids.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from));
    }
    let s = state.clone();
    let result = tokio::task::spawn_blocking(move || -> Result<Value, String> {
        let started = Instant::now();
        let mut notes = Vec::new();
        let embedding: Option<Embedding> = match (mode, s.pipeline.embedder()) {
            (SearchMode::Lexical, _) => None,
            (_, None) => {
                if s.store.vector_options().is_some() {
                    notes
                        .push(s.embedding_note.clone().unwrap_or_else(|| "no embedding model loaded".into()));
                }
                None
            }
            (_, Some(e)) => {
                datafactory_ingest::query_embedding(&s.store, Some(e.as_ref()), &q.query, &mut notes)
                    .map_err(|e| e.to_string())?
            }
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
        Ok(json!({
            "query": q.query,
            "mode": mode_name,
            "retrievers": results.retrievers,
            "rerank": rerank,
            "notes": notes,
            "took_ms": started.elapsed().as_secs_f64() * 1000.0,
            "results": results.hits,
        }))
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    Ok(Json(result))
}

#[derive(Deserialize)]
struct ListParams {
    collection: Option<String>,
}

async fn documents(
    State(state): State<Shared>,
    Query(p): Query<ListParams>,
) -> Result<Json<Value>, ApiError> {
    let store = state.store.clone();
    let docs = tokio::task::spawn_blocking(move || store.list_documents(p.collection.as_deref()))
        .await
        .map_err(internal)?
        .map_err(internal)?;
    Ok(Json(json!(docs)))
}

async fn document(State(state): State<Shared>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || store.get_document(&id))
        .await
        .map_err(internal)?
        .map_err(internal)?
    {
        Some(d) => Ok(Json(json!(d))),
        None => Err(ApiError(StatusCode::NOT_FOUND, "no such document".into())),
    }
}

async fn delete_document(
    State(state): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
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
        Some(id) => Ok(Json(json!({"id": id, "deleted": true}))),
        None => Err(ApiError(StatusCode::NOT_FOUND, "no such document".into())),
    }
}

use axum::extract::FromRequest;
