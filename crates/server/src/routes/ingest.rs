//! `POST /ingest` (multipart uploads or JSON documents) and the job plumbing
//! behind it: a job's plan written beside its files, started on a blocking
//! thread, resumed after a restart.
//!
//! Owns the job folders under the data directory; the pipeline itself is
//! `datafactory-ingest`.

use super::*;
use axum::extract::FromRequest;

#[derive(Deserialize, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct IngestParams {
    /// Answer when the job has ended (200 with the job) instead of at once (202).
    #[serde(default)]
    pub(crate) wait: bool,
    /// The collection (default: `ingest.default_collection`).
    pub(crate) collection: Option<String>,
}

/// One document given as JSON.
#[derive(Deserialize, ToSchema)]
pub(crate) struct JsonDocument {
    pub(crate) text: String,
    pub(crate) title: Option<String>,
    pub(crate) id: Option<String>,
    #[serde(default)]
    pub(crate) metadata: serde_json::Map<String, Value>,
}

/// A JSON ingest: one document, or several under `documents`.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum JsonIngest {
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
pub(crate) struct IngestUpload {
    #[schema(value_type = Vec<String>, format = Binary)]
    pub(crate) file: Vec<Vec<u8>>,
    pub(crate) collection: Option<String>,
    /// The `plan` object as JSON text.
    pub(crate) plan: Option<String>,
}

/// A job was created and queued.
#[derive(Serialize, ToSchema)]
pub(crate) struct JobAccepted {
    pub(crate) job_id: String,
    /// `queued`.
    pub(crate) state: &'static str,
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
        (status = 400, description = "Bad request (nothing is written, no job is created)", body = ErrorBody),
        (status = 413, description = "A file or JSON document over `ingest.max_file_bytes` (named), or the body over `server.max_body_bytes`", body = ErrorBody),
        (status = 503, description = "The store cannot take the job", body = ErrorBody),
        (status = 507, description = "The upload cannot be stored: the data directory's disk is full; no job was created", body = ErrorBody)))]
pub(crate) async fn ingest(
    State(state): State<Shared>,
    Query(params): Query<IngestParams>,
    request: Request,
) -> Result<Response, ApiError> {
    // Everything is read and checked in memory first (the body is bounded by
    // `server.max_body_bytes`): nothing is written and no job is created
    // until every check has passed, so a rejected request leaves nothing.
    let (collection, staged, plan_override) =
        read_request(&state, params.collection.clone(), request).await?;
    if crate::fleet::enabled(&state) {
        return crate::fleet::ingest(&state, collection, staged, plan_override, params.wait).await;
    }
    // Files land in a folder named after a fresh id; names are ours.
    let folder = state.config.data_dir.join("uploads").join(format!("{:016x}", rand_id()));
    let named = match write_staged(&folder, &staged).await {
        Ok(named) => named,
        Err(e) => {
            let _ = tokio::fs::remove_dir_all(&folder).await;
            // A full disk is the usual cause: say so, and that nothing was kept.
            let status = if e.kind() == std::io::ErrorKind::StorageFull {
                StatusCode::INSUFFICIENT_STORAGE
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            return Err(ApiError(
                status,
                format!(
                    "cannot store the upload in {}: {e}; no job was created and nothing was kept: \
                     send it again once there is room",
                    folder.parent().unwrap_or(&folder).display()
                ),
            ));
        }
    };
    drop(staged);
    let store = state.store.clone();
    let c = collection.clone();
    let created = tokio::task::spawn_blocking(move || store.create_job("ingest", Some(&c)))
        .await
        .map_err(internal)
        .and_then(|r| r.map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())));
    let job_id = match created {
        Ok(id) => id,
        Err(e) => {
            let _ = tokio::fs::remove_dir_all(&folder).await;
            return Err(e);
        }
    };
    let plan = JobPlan { job_id: job_id.clone(), collection, named, plan: plan_override };
    let saved = serde_json::to_vec(&plan).map_err(|e| e.to_string()).and_then(|bytes| {
        std::fs::write(folder.join(JOB_PLAN), bytes).map_err(|e| format!("cannot save the job's plan: {e}"))
    });
    if let Err(e) = saved {
        // The job exists: it ends `failed` with the reason, never stays queued.
        let _ = std::fs::remove_dir_all(&folder);
        let store = state.store.clone();
        let (id, reason) = (job_id.clone(), e.clone());
        let _ =
            tokio::task::spawn_blocking(move || store.finish_job(&id, "failed", &json!({ "error": reason })))
                .await;
        return Err(internal(format!("job {job_id}: {e}")));
    }
    let task = start_job(state.clone(), plan, folder);
    if params.wait {
        let progress = task.await.map_err(internal)?;
        return Ok((StatusCode::OK, Json(progress.view())).into_response());
    }
    Ok((StatusCode::ACCEPTED, Json(JobAccepted { job_id, state: "queued" })).into_response())
}

/// One input of a request, checked and held in memory until the job is created.
pub(crate) struct Staged {
    /// The extension (`.pdf`), a hint for the format; the name itself is ours.
    pub(crate) ext: String,
    pub(crate) bytes: Vec<u8>,
    /// The document's source name (`upload:<client's name>`, `api`).
    pub(crate) source: String,
}

/// Reads the whole request and checks it: the collection, the plan, each
/// file and each JSON document against `ingest.max_file_bytes` (413 naming
/// it). Writes nothing.
async fn read_request(
    state: &Shared,
    mut collection: Option<String>,
    request: Request,
) -> Result<(String, Vec<Staged>, Option<PlanOverride>), ApiError> {
    let content_type =
        request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let max_file = state.config.ingest.max_file_bytes;
    let too_large = |what: String, n: usize| {
        ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{what} is {n} bytes, over the limit of {max_file} (ingest.max_file_bytes)"),
        )
    };
    let mut staged = Vec::new();
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
            if bytes.len() as u64 > max_file {
                return Err(too_large(format!("file {client_name:?}"), bytes.len()));
            }
            // Keep the extension (a hint for the format), never the path.
            let ext = std::path::Path::new(client_name.rsplit('/').next().unwrap_or(""))
                .extension()
                .map(|e| format!(".{}", e.to_string_lossy()))
                .unwrap_or_default();
            staged.push(Staged { ext, bytes: bytes.to_vec(), source: format!("upload:{client_name}") });
        }
        if staged.is_empty() {
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
        // One JSON Lines file per run of documents that fits the file limit
        // (the job reads each file whole, under `ingest.max_file_bytes`).
        let mut lines: Vec<u8> = Vec::new();
        for (i, d) in documents.into_iter().enumerate() {
            if d.text.trim().is_empty() {
                return Err(bad_request(format!("document {i}: `text` is empty")));
            }
            // Without an id, identical texts are one document.
            let id = d.id.unwrap_or_else(|| blake3::hash(d.text.as_bytes()).to_hex()[..16].to_string());
            let mut record = json!({"id": id, "text": d.text, "metadata": d.metadata});
            if let Some(t) = d.title {
                record["title"] = Value::String(t);
            }
            let mut line = record.to_string().into_bytes();
            line.push(b'\n');
            if line.len() as u64 > max_file {
                return Err(too_large(format!("document {i} (id {id:?}) as JSON"), line.len()));
            }
            if (lines.len() + line.len()) as u64 > max_file {
                let bytes = std::mem::take(&mut lines);
                staged.push(Staged { ext: ".jsonl".into(), bytes, source: "api".into() });
            }
            lines.extend_from_slice(&line);
        }
        staged.push(Staged { ext: ".jsonl".into(), bytes: lines, source: "api".into() });
    }
    let collection = collection.unwrap_or_else(|| state.config.ingest.default_collection.clone());
    datafactory_core::config::validate_collection(&collection).map_err(bad_request)?;
    if let Some(Err(e)) = plan_override.as_ref().map(check_plan) {
        return Err(bad_request(e));
    }
    Ok((collection, staged, plan_override))
}

/// Writes a request's inputs under `folder` with names of ours.
async fn write_staged(
    folder: &std::path::Path,
    staged: &[Staged],
) -> std::io::Result<Vec<(PathBuf, String)>> {
    tokio::fs::create_dir_all(folder).await?;
    let mut named = Vec::with_capacity(staged.len());
    for (i, s) in staged.iter().enumerate() {
        let path = folder.join(format!("{:05}{}", i + 1, s.ext));
        tokio::fs::write(&path, &s.bytes).await?;
        named.push((path, s.source.clone()));
    }
    Ok(named)
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
pub(crate) fn check_plan(o: &PlanOverride) -> Result<(), String> {
    match o.max_tokens {
        Some(m) if m < 16 => Err("`plan.max_tokens` must be at least 16".into()),
        _ => Ok(()),
    }
}

pub(crate) const JOB_PLAN: &str = "job.json";

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
                m.documents_ingested.inc_by((summary.documents.added + summary.documents.replaced) as u64);
                m.chunks_ingested.inc_by(summary.chunks as u64);
                m.chunks_embedded.inc_by(summary.embedding.chunks as u64);
                m.ingest_failures.inc_by(summary.failed.len() as u64);
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
pub(crate) fn sanitize_name(name: &str) -> String {
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

pub(crate) fn rand_id() -> u64 {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let h =
        blake3::hash(format!("{nanos}{:?}{}", std::thread::current().id(), std::process::id()).as_bytes());
    u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap_or([0; 8]))
}
