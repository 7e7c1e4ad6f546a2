//! `status` (and the table `up` prints): each service's process, health and
//! restarts, its GPU's memory and temperature, each Ollama instance's loaded
//! models; and `ollama unload`.

use crate::deploy::{Deployment, Kind};
use crate::gpu::GpuReport;
use crate::procfs::{self, Check};
use crate::state::{Phase, State};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub deployment: String,
    pub state_file: String,
    /// The supervising launcher's PID while it runs.
    pub launcher_pid: Option<u32>,
    /// None when no launcher state is recorded.
    pub phase: Option<Phase>,
    pub error: Option<String>,
    pub services: Vec<ServiceStatus>,
    pub gpu: GpuReport,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    pub name: String,
    pub kind: Kind,
    pub gpu: Option<u32>,
    pub port: Option<u16>,
    pub url: String,
    /// The process the launcher started, while it runs.
    pub pid: Option<u32>,
    /// `ok`, or why the health check failed.
    pub health: String,
    pub restarts: u32,
    pub last_exit: Option<String>,
    pub gpu_memory_used_mib: Option<u64>,
    pub gpu_memory_total_mib: Option<u64>,
    pub gpu_temperature_c: Option<u32>,
    /// Ollama: the models loaded now (`/api/ps`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    /// A DataFactory on PostgreSQL: the fleet of nodes sharing its store
    /// (`/ready`'s `fleet`: nodes, queued and running jobs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<serde_json::Value>,
}

impl ServiceStatus {
    pub fn healthy(&self) -> bool {
        self.health == "ok"
    }
}

/// The deployment's services as they are now (the state file's records
/// where a launcher wrote one).
pub fn status(deployment: &Deployment) -> std::io::Result<StatusReport> {
    let state_path = deployment.state_path();
    let state = State::read(&state_path)?;
    let gpu = crate::gpu::query();
    // Each service is checked on its own thread: a hung one costs its
    // timeout once, not once per service after it.
    let check = |s: &crate::deploy::Service| {
        let recorded = state.as_ref().and_then(|st| st.services.iter().find(|r| r.name == s.name));
        let pid = recorded
            .and_then(|r| r.process.as_ref())
            .filter(|p| procfs::check(p) == Check::Same)
            .map(|p| p.pid);
        let base = s.base_url();
        let health = match crate::http::health(&s.health_url()) {
            Ok(()) => "ok".to_string(),
            Err(e) => e,
        };
        let models = (s.kind == Kind::Ollama && health == "ok")
            .then(|| crate::http::ollama_loaded(&base).ok())
            .flatten();
        let fleet = (s.kind == Kind::Serve && health == "ok")
            .then(|| crate::http::datafactory_fleet(&base))
            .flatten();
        let card = s.gpu.and_then(|g| gpu.gpu(g));
        ServiceStatus {
            name: s.name.clone(),
            kind: s.kind,
            gpu: s.gpu,
            port: s.port,
            url: base,
            pid,
            health,
            restarts: recorded.map(|r| r.restarts).unwrap_or(0),
            last_exit: recorded.and_then(|r| r.last_exit.clone()),
            gpu_memory_used_mib: card.map(|c| c.memory_used_mib),
            gpu_memory_total_mib: card.map(|c| c.memory_total_mib),
            gpu_temperature_c: card.and_then(|c| c.temperature_c),
            models,
            fleet,
        }
    };
    let services: Vec<ServiceStatus> = std::thread::scope(|scope| {
        let running: Vec<_> = deployment.services.iter().map(|s| scope.spawn(move || check(s))).collect();
        running.into_iter().map(|t| t.join().expect("a status check panicked")).collect()
    });
    Ok(StatusReport {
        deployment: deployment.source.clone(),
        state_file: state_path.display().to_string(),
        launcher_pid: state
            .as_ref()
            .and_then(|s| s.supervisor.as_ref())
            .filter(|p| procfs::check(p) == Check::Same)
            .map(|p| p.pid),
        phase: state.as_ref().map(|s| s.phase),
        error: state.as_ref().and_then(|s| s.error.clone()),
        services,
        gpu,
    })
}

/// One Ollama instance's unload.
#[derive(Debug, Clone, Serialize)]
pub struct Unloaded {
    pub name: String,
    pub url: String,
    pub models: Vec<String>,
    pub error: Option<String>,
}

/// Unloads every loaded model on every Ollama instance of the deployment (`keep_alive: 0`).
pub fn ollama_unload(deployment: &Deployment) -> Vec<Unloaded> {
    deployment
        .services
        .iter()
        .filter(|s| s.kind == Kind::Ollama)
        .map(|s| {
            let url = s.base_url();
            let mut done = Unloaded { name: s.name.clone(), url: url.clone(), models: vec![], error: None };
            match crate::http::ollama_loaded(&url) {
                Ok(models) => {
                    for m in models {
                        match crate::http::ollama_unload(&url, &m) {
                            Ok(()) => done.models.push(m),
                            Err(e) => done.error = Some(format!("{m}: {e}")),
                        }
                    }
                }
                Err(e) => done.error = Some(e),
            }
            done
        })
        .collect()
}
