//! `status` (and the table `up` prints): each service's process, health and
//! restarts, its GPU's memory and temperature, each Ollama instance's loaded
//! models; the same from the state file alone, for a service the launcher
//! started (`/deployment`); and `ollama unload`.

use crate::deploy::{Deployment, Kind};
use crate::gpu::GpuReport;
use crate::procfs::{self, Check};
use crate::state::{Phase, ServiceState, State};
use serde::Serialize;
use std::path::Path;

/// A deployment's services and GPUs as they are now.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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

/// One service of a deployment.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
    #[schema(value_type = Option<Object>)]
    pub fleet: Option<serde_json::Value>,
}

impl ServiceStatus {
    pub fn healthy(&self) -> bool {
        self.health == "ok"
    }
}

/// What a service's check needs to know of it.
struct Probe<'a> {
    name: &'a str,
    kind: Kind,
    gpu: Option<u32>,
    port: Option<u16>,
    base_url: String,
    health_url: String,
    recorded: Option<&'a ServiceState>,
}

/// Checks one service: its recorded process, health, Ollama's models, the
/// fleet (`with_fleet`), its GPU's figures from `gpus`.
fn check(p: &Probe, gpus: &GpuReport, with_fleet: bool) -> ServiceStatus {
    let pid = p
        .recorded
        .and_then(|r| r.process.as_ref())
        .filter(|q| procfs::check(q) == Check::Same)
        .map(|q| q.pid);
    let health = match crate::http::health(&p.health_url) {
        Ok(()) => "ok".to_string(),
        Err(e) => e,
    };
    let models = (p.kind == Kind::Ollama && health == "ok")
        .then(|| crate::http::ollama_loaded(&p.base_url).ok())
        .flatten();
    let fleet = (with_fleet && p.kind == Kind::Serve && health == "ok")
        .then(|| crate::http::datafactory_fleet(&p.base_url))
        .flatten();
    let card = p.gpu.and_then(|g| gpus.gpu(g));
    ServiceStatus {
        name: p.name.to_string(),
        kind: p.kind,
        gpu: p.gpu,
        port: p.port,
        url: p.base_url.clone(),
        pid,
        health,
        restarts: p.recorded.map(|r| r.restarts).unwrap_or(0),
        last_exit: p.recorded.and_then(|r| r.last_exit.clone()),
        gpu_memory_used_mib: card.map(|c| c.memory_used_mib),
        gpu_memory_total_mib: card.map(|c| c.memory_total_mib),
        gpu_temperature_c: card.and_then(|c| c.temperature_c),
        models,
        fleet,
    }
}

/// Checks every service, each on its own thread: a hung one costs its
/// timeout once, not once per service after it.
fn check_all(probes: &[Probe], gpus: &GpuReport, with_fleet: bool) -> Vec<ServiceStatus> {
    std::thread::scope(|scope| {
        let running: Vec<_> =
            probes.iter().map(|p| scope.spawn(move || check(p, gpus, with_fleet))).collect();
        running.into_iter().map(|t| t.join().expect("a status check panicked")).collect()
    })
}

fn report(
    deployment: String,
    state_file: &Path,
    state: Option<&State>,
    services: Vec<ServiceStatus>,
    gpu: GpuReport,
) -> StatusReport {
    StatusReport {
        deployment,
        state_file: state_file.display().to_string(),
        launcher_pid: state
            .and_then(|s| s.supervisor.as_ref())
            .filter(|p| procfs::check(p) == Check::Same)
            .map(|p| p.pid),
        phase: state.map(|s| s.phase),
        error: state.and_then(|s| s.error.clone()),
        services,
        gpu,
    }
}

/// The deployment's services as they are now (the state file's records
/// where a launcher wrote one).
pub fn status(deployment: &Deployment) -> std::io::Result<StatusReport> {
    let state_path = deployment.state_path();
    let state = State::read(&state_path)?;
    let gpu = crate::gpu::query();
    let probes: Vec<Probe> = deployment
        .services
        .iter()
        .map(|s| Probe {
            name: &s.name,
            kind: s.kind,
            gpu: s.gpu,
            port: s.port,
            base_url: s.base_url(),
            health_url: s.health_url(),
            recorded: state.as_ref().and_then(|st| st.services.iter().find(|r| r.name == s.name)),
        })
        .collect();
    let services = check_all(&probes, &gpu, true);
    Ok(report(deployment.source.clone(), &state_path, state.as_ref(), services, gpu))
}

/// The same from the state file alone (what a service the launcher started
/// knows: `state::STATE_VAR`), without the fleet (the service has its own);
/// None when there is no state file (the launcher has stopped).
pub fn status_of_state(state_path: &Path) -> std::io::Result<Option<StatusReport>> {
    let Some(state) = State::read(state_path)? else { return Ok(None) };
    let gpu = crate::gpu::query();
    let probes: Vec<Probe> = state
        .services
        .iter()
        .map(|r| Probe {
            name: &r.name,
            kind: r.kind,
            gpu: r.gpu,
            port: r.port,
            base_url: r.health_url.strip_suffix(r.kind.health_path()).unwrap_or(&r.health_url).to_string(),
            health_url: r.health_url.clone(),
            recorded: Some(r),
        })
        .collect();
    let services = check_all(&probes, &gpu, false);
    Ok(Some(report(state.deployment.clone(), state_path, Some(&state), services, gpu)))
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
