//! Ingest jobs as the service sees them: live progress in memory, the record
//! in SQLite (`jobs` table) for after the job or a restart.

use datafactory_ingest::{IngestObserver, IngestSummary, Phase};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct Jobs {
    live: Mutex<HashMap<String, Arc<JobProgress>>>,
    running: AtomicUsize,
    idle: tokio::sync::Notify,
}

/// Progress of one job, updated by the ingest's observer.
#[derive(Default)]
pub struct JobProgress {
    pub id: String,
    pub collection: String,
    state: Mutex<&'static str>,
    files_total: AtomicUsize,
    files_done: AtomicUsize,
    files_failed: AtomicUsize,
    summary: Mutex<Option<IngestSummary>>,
    error: Mutex<Option<String>>,
    pub cancel: Arc<AtomicBool>,
    /// Per phase (in `Phase::ALL` order): items done and seconds spent.
    phases: Mutex<[(usize, f64); 5]>,
    /// Whether this job embeds (a model is loaded).
    pub embeds: bool,
    /// Whether this job gives chunks contexts (enrichment is not `off`).
    pub enriches: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct PhaseView {
    pub phase: Phase,
    /// `pending`, `running`, `done`, or `not_run` (the stage does not exist
    /// yet, or there is no model to embed with).
    pub state: &'static str,
    pub items: usize,
    pub seconds: f64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct JobView {
    pub id: String,
    pub collection: String,
    /// `queued`, `running`, `succeeded`, `completed_with_errors`, `failed`, `interrupted`.
    pub state: String,
    pub files: FileCounts,
    pub phases: Vec<PhaseView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<IngestSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct FileCounts {
    pub total: usize,
    pub done: usize,
    pub failed: usize,
}

impl JobProgress {
    pub fn view(&self) -> JobView {
        let state = self.state.lock().map(|s| s.to_string()).unwrap_or_default();
        let finished = !matches!(state.as_str(), "queued" | "running");
        let counts = self.phases.lock().map(|p| *p).unwrap_or_default();
        let phases = Phase::ALL
            .iter()
            .zip(counts)
            .map(|(&phase, (items, seconds))| {
                let exists = match phase {
                    Phase::Enrichment => self.enriches,
                    Phase::Embedding => self.embeds,
                    Phase::Analysis | Phase::Chunking | Phase::Storage => true,
                };
                let state = match (exists, finished, items) {
                    (false, _, _) => "not_run",
                    (true, true, _) => "done",
                    (true, false, 0) => "pending",
                    (true, false, _) => "running",
                };
                PhaseView { phase, state, items, seconds }
            })
            .collect();
        JobView {
            id: self.id.clone(),
            collection: self.collection.clone(),
            phases,
            state,
            files: FileCounts {
                total: self.files_total.load(Ordering::Relaxed),
                done: self.files_done.load(Ordering::Relaxed),
                failed: self.files_failed.load(Ordering::Relaxed),
            },
            summary: self.summary.lock().ok().and_then(|s| s.clone()),
            error: self.error.lock().ok().and_then(|e| e.clone()),
        }
    }

    pub fn set_state(&self, state: &'static str) {
        if let Ok(mut s) = self.state.lock() {
            *s = state;
        }
    }

    pub fn finish(&self, result: Result<IngestSummary, String>) {
        match result {
            Ok(summary) => {
                let state = if self.cancel.load(Ordering::Relaxed) {
                    "interrupted"
                } else if summary.has_failures() {
                    "completed_with_errors"
                } else {
                    "succeeded"
                };
                self.set_state(state);
                if let Ok(mut s) = self.summary.lock() {
                    *s = Some(summary);
                }
            }
            Err(e) => {
                self.set_state("failed");
                if let Ok(mut slot) = self.error.lock() {
                    *slot = Some(e);
                }
            }
        }
    }
}

impl IngestObserver for JobProgress {
    fn started(&self, files: usize) {
        self.files_total.store(files, Ordering::Relaxed);
        self.set_state("running");
    }

    fn phase_progress(&self, phase: Phase, items: usize, seconds: f64) {
        if let (Some(i), Ok(mut p)) = (Phase::ALL.iter().position(|&x| x == phase), self.phases.lock()) {
            p[i].0 += items;
            p[i].1 += seconds;
        }
    }

    fn file_done(&self, _source: &str, failed: bool) {
        self.files_done.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.files_failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Jobs {
    pub fn add(&self, id: &str, collection: &str, embeds: bool, enriches: bool) -> Arc<JobProgress> {
        let job = Arc::new(JobProgress {
            id: id.to_string(),
            collection: collection.to_string(),
            embeds,
            enriches,
            state: Mutex::new("queued"),
            ..Default::default()
        });
        if let Ok(mut live) = self.live.lock() {
            live.insert(id.to_string(), job.clone());
        }
        self.running.fetch_add(1, Ordering::SeqCst);
        job
    }

    pub fn done(&self) {
        if self.running.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle.notify_waiters();
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<JobProgress>> {
        self.live.lock().ok().and_then(|l| l.get(id).cloned())
    }

    pub fn cancel_all(&self) {
        if let Ok(live) = self.live.lock() {
            for job in live.values() {
                job.cancel.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Waits until no job runs.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.running.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}
