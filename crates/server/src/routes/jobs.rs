//! `GET /jobs/{id}` and its event stream: a job's live progress in this
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
