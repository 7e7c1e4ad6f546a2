//! Several `datafactory serve` nodes on one PostgreSQL store share the ingest
//! work. A node that receives an ingest queues it in PostgreSQL, its files
//! included; every node runs a worker that claims queued jobs (`FOR UPDATE
//! SKIP LOCKED`) under a lease, renews the lease while the job runs, and
//! heartbeats as a node. A node that dies stops renewing: once its lease has
//! run out another node claims the job and runs it again; documents already
//! committed are unchanged (skipped) and LLM answers already given come from
//! the enrichment cache. A node that stops (SIGTERM) puts its job back.

use crate::routes::{internal, start_job, ApiError, JobPlan};
use crate::AppState;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use datafactory_core::PlanOverride;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often an idle node looks for queued work.
const POLL: Duration = Duration::from_millis(500);

type Shared = Arc<AppState>;

/// This node's id: its address and process, unique while it runs.
pub(crate) fn node_id(address: &str) -> String {
    format!("{address}/{}", std::process::id())
}

/// Whether this service runs as a node of a fleet (the PostgreSQL store).
pub(crate) fn enabled(state: &AppState) -> bool {
    state.store.backend() == "postgres"
}

/// `POST /ingest` on a fleet node: the job is queued for whichever node
/// claims it first (202), or, with `wait`, answered when it has ended.
pub(crate) async fn ingest(
    state: &Shared,
    collection: String,
    staged: Vec<crate::routes::Staged>,
    plan: Option<PlanOverride>,
    wait: bool,
) -> Result<Response, ApiError> {
    let job_id = enqueue(state, collection, staged, plan).await?;
    if !wait {
        return Ok((StatusCode::ACCEPTED, Json(json!({"job_id": job_id, "state": "queued"}))).into_response());
    }
    loop {
        tokio::time::sleep(POLL).await;
        let store = state.store.clone();
        let id = job_id.clone();
        let record = tokio::task::spawn_blocking(move || store.get_job(&id))
            .await
            .map_err(internal)?
            .map_err(internal)?;
        if let Some(r) = record.filter(|r| r.state != "queued" && r.state != "running") {
            return Ok((StatusCode::OK, Json(r)).into_response());
        }
    }
}

/// Queues an ingest for any node: the request's checked inputs go into
/// PostgreSQL with the job (nothing is written to this node's disk).
async fn enqueue(
    state: &Shared,
    collection: String,
    staged: Vec<crate::routes::Staged>,
    plan: Option<PlanOverride>,
) -> Result<String, ApiError> {
    let mut files = Vec::with_capacity(staged.len());
    let mut sources = Vec::with_capacity(staged.len());
    for (i, s) in staged.into_iter().enumerate() {
        // Keep the extension: a hint for the format.
        let name = format!("{i:05}{}", s.ext);
        sources.push(json!([name, s.source]));
        files.push((name, s.bytes));
    }
    let request = json!({"sources": sources, "plan": plan});
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || store.enqueue_job("ingest", Some(&collection), &request, &files))
        .await
        .map_err(internal)?
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
}

/// Runs queued jobs on this node until `stop` is set.
pub(crate) fn spawn_worker(state: Shared, node: String, address: String, stop: Arc<AtomicBool>) {
    tokio::spawn(async move {
        let lease = Duration::from_secs(state.config.store.lease_seconds);
        let store = state.store.clone();
        let n = node.clone();
        if !matches!(tokio::task::spawn_blocking(move || store.set_node(&n)).await, Ok(Ok(()))) {
            tracing::warn!("fleet worker not started: the store is not PostgreSQL");
            return;
        }
        while !stop.load(Ordering::Relaxed) {
            let store = state.store.clone();
            let (n, a) = (node.clone(), address.clone());
            let _ = tokio::task::spawn_blocking(move || store.node_heartbeat(&n, &a, None)).await;
            // Claim only with a free ingest slot, so a claimed job starts now.
            if state.ingest_slots.available_permits() == 0 {
                tokio::time::sleep(POLL).await;
                continue;
            }
            let store = state.store.clone();
            let n = node.clone();
            let claimed = tokio::task::spawn_blocking(move || store.claim_job(&n, lease)).await;
            let job = match claimed {
                Ok(Ok(Some(job))) => job,
                Ok(Ok(None)) => {
                    tokio::time::sleep(POLL).await;
                    continue;
                }
                Ok(Err(e)) => {
                    tracing::warn!("fleet: cannot claim a job: {e}");
                    tokio::time::sleep(POLL * 4).await;
                    continue;
                }
                Err(_) => continue,
            };
            if let Err(e) = run_claimed(&state, &node, &address, job, lease, &stop).await {
                tracing::warn!("fleet: {e}");
            }
        }
    });
}

/// Runs one claimed job: its files to a local folder, the ordinary ingest,
/// the lease renewed meanwhile (a lost lease cancels the run).
async fn run_claimed(
    state: &Shared,
    node: &str,
    address: &str,
    job: datafactory_store::ClaimedJob,
    lease: Duration,
    stop: &Arc<AtomicBool>,
) -> Result<(), String> {
    tracing::info!("fleet: running job {} (attempt {})", job.id, job.attempt);
    let folder = state.config.data_dir.join("uploads").join(format!("fleet-{}", job.id));
    tokio::fs::create_dir_all(&folder).await.map_err(|e| e.to_string())?;
    for (name, bytes) in &job.files {
        tokio::fs::write(folder.join(name), bytes).await.map_err(|e| e.to_string())?;
    }
    let sources: Vec<(String, String)> =
        serde_json::from_value(job.request["sources"].clone()).map_err(|e| e.to_string())?;
    let plan: Option<PlanOverride> =
        serde_json::from_value(job.request.get("plan").cloned().unwrap_or(Value::Null)).unwrap_or(None);
    let named = sources.into_iter().map(|(name, source)| (folder.join(name), source)).collect();
    let collection = job.collection.clone().unwrap_or_else(|| state.config.ingest.default_collection.clone());
    let plan = JobPlan { job_id: job.id.clone(), collection, named, plan };
    let task = start_job(state.clone(), plan, folder.clone());
    let progress = state.jobs.get(&job.id).ok_or("the job vanished")?;

    // The lease, renewed every third of it while the job runs.
    let renewing = {
        let (state, id, node, address, stop) =
            (state.clone(), job.id.clone(), node.to_string(), address.to_string(), stop.clone());
        let cancel = progress.cancel.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(lease / 3).await;
                if stop.load(Ordering::Relaxed) {
                    cancel.store(true, Ordering::Relaxed);
                }
                let store = state.store.clone();
                let (i, n, a) = (id.clone(), node.clone(), address.clone());
                let kept = tokio::task::spawn_blocking(move || {
                    let _ = store.node_heartbeat(&n, &a, Some(&i));
                    store.renew_lease(&i, &n, lease)
                })
                .await;
                if matches!(kept, Ok(Ok(false))) {
                    tracing::warn!("fleet: lost the lease on job {id}; another node runs it");
                    cancel.store(true, Ordering::Relaxed);
                    return;
                }
            }
        })
    };
    let progress = task.await.map_err(|e| e.to_string())?;
    renewing.abort();
    let _ = tokio::fs::remove_dir_all(&folder).await;
    if progress.cancel.load(Ordering::Relaxed) {
        // Stopped, not finished: back in the queue (if this node still holds it).
        let store = state.store.clone();
        let (id, n) = (job.id.clone(), node.to_string());
        let _ = tokio::task::spawn_blocking(move || store.release_job(&id, &n)).await;
    }
    Ok(())
}

/// The fleet as `/ready` shows it (nodes seen within three lease renewals).
pub(crate) async fn view(state: &Shared) -> Option<datafactory_store::Fleet> {
    if !enabled(state) {
        return None;
    }
    let store = state.store.clone();
    let alive = Duration::from_secs(state.config.store.lease_seconds);
    tokio::task::spawn_blocking(move || store.fleet(alive)).await.ok()?.ok()
}
