//! `GET /jobs` (the recent ones), `GET /jobs/{id}` and its event stream: a job's live progress in this
//! process, or its stored record.
//!
//! Reads jobs; never starts or changes one.

use super::*;

/// A job: live progress while it runs in this process, else its stored
/// record.
#[derive(Serialize, ToSchema)]
#[allow(dead_code, clippy::large_enum_variant)] // describes the two answers `job` gives; never built
#[serde(untagged)]
pub(crate) enum JobAnswer {
    Live(JobView),
    Stored(datafactory_store::JobRecord),
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct JobsParams {
    /// At most this many, newest first (1 to 1000; default 20).
    pub(crate) limit: Option<u64>,
}

/// A job in the list: its record, with the live state and file counts of a
/// job running in this process.
#[derive(Serialize, ToSchema)]
pub(crate) struct JobEntry {
    pub(crate) id: String,
    /// `ingest`.
    pub(crate) kind: String,
    /// `queued`, `running`, `succeeded`, `completed_with_errors`, `failed`, `interrupted`.
    pub(crate) state: String,
    pub(crate) collection: Option<String>,
    /// Unix time in milliseconds.
    pub(crate) created_at: i64,
    pub(crate) finished_at: Option<i64>,
    /// Files done and failed so far (jobs this process runs or ran); else null.
    pub(crate) files: Option<crate::jobs::FileCounts>,
    /// Running or queued in this process: `GET /jobs/{id}/events` follows it.
    pub(crate) live: bool,
}

/// `GET /jobs`: the most recent jobs (running, queued and ended), newest first.
#[utoipa::path(get, path = "/jobs", tag = "ingest", params(JobsParams),
    responses(
        (status = 200, description = "Jobs, newest first", body = Vec<JobEntry>),
        (status = 400, description = "A bad `limit`", body = ErrorBody)))]
pub(crate) async fn jobs(
    State(state): State<Shared>,
    Query(p): Query<JobsParams>,
) -> Result<Json<Vec<JobEntry>>, ApiError> {
    let limit = p.limit.unwrap_or(20);
    if !(1..=1000).contains(&limit) {
        return Err(bad_request(format!("`limit` is {limit}: it must be between 1 and 1000")));
    }
    let store = state.store.clone();
    let records = tokio::task::spawn_blocking(move || store.list_jobs(limit))
        .await
        .map_err(internal)?
        .map_err(internal)?;
    let entries = records
        .into_iter()
        .map(|r| {
            let view = state.jobs.get(&r.id).map(|p| p.view());
            let live = view.as_ref().is_some_and(|v| matches!(v.state.as_str(), "queued" | "running"));
            JobEntry {
                state: view.as_ref().map(|v| v.state.clone()).unwrap_or(r.state),
                files: view.map(|v| v.files),
                live,
                id: r.id,
                kind: r.kind,
                collection: r.collection,
                created_at: r.created_at,
                finished_at: r.finished_at,
            }
        })
        .collect();
    Ok(Json(entries))
}

/// `GET /jobs/{id}`: live progress, or the stored record of a finished job.
#[utoipa::path(get, path = "/jobs/{id}", tag = "ingest", params(("id" = String, Path, description = "job id")),
    responses(
        (status = 200, description = "The job", body = JobAnswer),
        (status = 404, description = "No such job", body = ErrorBody)))]
pub(crate) async fn job(State(state): State<Shared>, Path(id): Path<String>) -> Result<Response, ApiError> {
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
pub(crate) async fn job_events(
    State(state): State<Shared>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
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
