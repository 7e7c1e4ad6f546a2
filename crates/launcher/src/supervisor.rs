//! `up`: start every service of a deployment, wait for its health check,
//! then supervise — restart a crashed service with backoff — until told to
//! stop, and stop exactly what was started.
//!
//! Each service is started as the leader of its own process group, so
//! stopping it (SIGTERM, then SIGKILL after the grace period) reaches its
//! children too, and a Ctrl-C at the terminal reaches only the launcher,
//! which then stops the services in order. While the launcher holds a
//! service's unreaped `Child`, its PID cannot be reused, so the launcher
//! never signals a stranger; `down`, another process, checks identity first.

use crate::deploy::{Deployment, Kind, Launch, Planned};
use crate::procfs::{self, Identity, PortHolder};
use crate::state::{Phase, ServiceState, State};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often children and health are looked at.
const POLL: Duration = Duration::from_millis(200);
/// A service that ran this long before crashing restarts after 1 s again.
const STABLE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Deploy(#[from] crate::deploy::DeployError),
    #[error("this deployment is already up: {what} (state file {state}); run `datafactory down` first")]
    AlreadyUp { state: PathBuf, what: String },
    #[error("{}; nothing was started (stop that process or change the port in the deployment file)", list(.0))]
    PortsTaken(Vec<PortHolder>),
    #[error("cannot start service {service:?} ({program}): {source}")]
    Spawn { service: String, program: String, source: std::io::Error },
    #[error("service {service:?} exited ({status}) before it was healthy; see {log}:\n{tail}")]
    Exited { service: String, status: String, log: String, tail: String },
    #[error("no answer from {services} within {timeout_s} s; logs in {logs}")]
    Unhealthy { services: String, timeout_s: u64, logs: String },
    #[error("interrupted while starting; what was started is stopped")]
    Interrupted,
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
}

fn list(holders: &[PortHolder]) -> String {
    holders.iter().map(|h| h.to_string()).collect::<Vec<_>>().join("; ")
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LaunchError {
    let what = what.into();
    move |source| LaunchError::Io { what, source }
}

/// One started service.
struct Slot {
    planned: Planned,
    child: Option<Child>,
    started: Instant,
    healthy: bool,
    /// Restarts so far after crashes, and the next backoff's exponent.
    restarts: u32,
    backoff: u32,
    restart_at: Option<Instant>,
}

/// How a service ended when stopped.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Stopped {
    pub name: String,
    pub pid: u32,
    /// `stopped` (SIGTERM), `killed` (SIGKILL after the grace period), `exited` (already).
    pub how: &'static str,
}

/// A deployment that is up (or being started), with its processes.
pub struct Launcher {
    deployment: Deployment,
    slots: Vec<Slot>,
    state_path: PathBuf,
    state: State,
    /// Warm-ups that failed, for the report.
    pub notes: Vec<String>,
    /// Held while this launcher runs: one `up` per deployment at a time.
    _lock: std::fs::File,
}

impl Launcher {
    /// Starts every service that runs here and waits for all health checks.
    /// On any failure it stops what it started and says why.
    pub fn start(
        deployment: Deployment,
        datafactory: &Path,
        stop: &AtomicBool,
        progress: &dyn Fn(&str),
    ) -> Result<Launcher, LaunchError> {
        let state_path = deployment.state_path();
        if let Some(dir) = state_path.parent() {
            std::fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
        }
        let lock = lock(&state_path)?;
        let planned = preflight(&deployment, datafactory)?;
        let logs = deployment.logs_dir();
        std::fs::create_dir_all(&logs).map_err(io(format!("cannot create {}", logs.display())))?;
        let state = State {
            deployment: deployment.source.clone(),
            supervisor: Identity::of(std::process::id()),
            phase: Phase::Starting,
            error: None,
            services: planned
                .iter()
                .map(|p| ServiceState {
                    name: p.service.name.clone(),
                    kind: p.service.kind,
                    gpu: p.service.gpu,
                    port: p.service.port,
                    health_url: p.health_url.clone(),
                    log: p.launch.as_ref().map(|l| l.log.clone()),
                    process: None,
                    restarts: 0,
                    last_exit: None,
                })
                .collect(),
        };
        let slots = planned
            .into_iter()
            .map(|planned| Slot {
                planned,
                child: None,
                started: Instant::now(),
                healthy: false,
                restarts: 0,
                backoff: 0,
                restart_at: None,
            })
            .collect();
        let mut launcher = Launcher { deployment, slots, state_path, state, notes: Vec::new(), _lock: lock };
        launcher.save();
        match launcher.bring_up(stop, progress) {
            Ok(()) => {
                launcher.state.phase = Phase::Up;
                launcher.save();
                Ok(launcher)
            }
            Err(e) => {
                launcher.state.phase = Phase::Failed;
                launcher.state.error = Some(e.to_string());
                launcher.save();
                launcher.stop_all();
                launcher.state.phase = Phase::Failed;
                launcher.save();
                Err(e)
            }
        }
    }

    fn bring_up(&mut self, stop: &AtomicBool, progress: &dyn Fn(&str)) -> Result<(), LaunchError> {
        for i in 0..self.slots.len() {
            if let Some(launch) = self.slots[i].planned.launch.clone() {
                progress(&format!("starting {}", self.slots[i].planned.service.name));
                self.spawn(i, &launch)?;
            }
        }
        let timeout = self.deployment.launcher.health_timeout_s;
        let deadline = Instant::now() + Duration::from_secs(timeout);
        loop {
            let mut waiting = Vec::new();
            for slot in self.slots.iter_mut().filter(|s| s.planned.launch.is_some() && !s.healthy) {
                let name = slot.planned.service.name.clone();
                if let Some(child) = slot.child.as_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        let log = slot.planned.launch.as_ref().map(|l| l.log.clone()).unwrap_or_default();
                        slot.child = None;
                        return Err(LaunchError::Exited {
                            service: name,
                            status: status.to_string(),
                            tail: tail(&log, 15),
                            log: log.display().to_string(),
                        });
                    }
                }
                if crate::http::health(&slot.planned.health_url).is_ok() {
                    slot.healthy = true;
                    progress(&format!("{name} is healthy"));
                } else {
                    waiting.push(name);
                }
            }
            if waiting.is_empty() {
                break;
            }
            if stop.load(Ordering::SeqCst) {
                return Err(LaunchError::Interrupted);
            }
            if Instant::now() >= deadline {
                return Err(LaunchError::Unhealthy {
                    services: waiting.join(", "),
                    timeout_s: timeout,
                    logs: self.deployment.logs_dir().display().to_string(),
                });
            }
            std::thread::sleep(POLL);
        }
        for i in 0..self.slots.len() {
            self.refresh_identity(i);
        }
        for slot in &self.slots {
            let s = &slot.planned.service;
            if let (Kind::Ollama, Some(model), Some(launch)) = (s.kind, &s.warm, &slot.planned.launch) {
                progress(&format!("loading {model} on {}", s.name));
                let keep_alive = s.keep_alive.as_deref().unwrap_or("30m");
                let line = match crate::http::ollama_warm(&slot.planned.base_url, model, keep_alive) {
                    Ok(()) => format!("warm-up: {model} loaded"),
                    Err(e) => {
                        self.notes.push(format!("{}: warm-up of {model} failed: {e}", s.name));
                        format!("warm-up of {model} failed: {e}")
                    }
                };
                log_line(&launch.log, &line);
            }
        }
        Ok(())
    }

    fn spawn(&mut self, i: usize, launch: &Launch) -> Result<(), LaunchError> {
        let slot = &mut self.slots[i];
        let name = slot.planned.service.name.clone();
        let program = launch.program.display().to_string();
        let spawn_error =
            |source| LaunchError::Spawn { service: name.clone(), program: program.clone(), source };
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(&launch.log).map_err(spawn_error)?;
        let visible = launch.env.iter().find(|(k, _)| k == "CUDA_VISIBLE_DEVICES").map(|(_, v)| v.as_str());
        log_line(
            &launch.log,
            &format!(
                "starting {program} {} (CUDA_VISIBLE_DEVICES={:?}, restart {})",
                launch.args.join(" "),
                visible.unwrap_or_default(),
                slot.restarts
            ),
        );
        let mut cmd = Command::new(&launch.program);
        // A service's configuration is its file, its settings and its env,
        // not whatever DATAFACTORY_* variables the launcher's shell holds
        // (the log filter excepted, and where NVML is: a service reports the
        // same GPUs as the launcher).
        for (k, _) in std::env::vars_os() {
            if k.to_str().is_some_and(|k| {
                k.starts_with("DATAFACTORY_") && k != "DATAFACTORY_LOG" && k != crate::gpu::LIBRARY_VAR
            }) {
                cmd.env_remove(k);
            }
        }
        cmd.args(&launch.args)
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&launch.cwd)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(spawn_error)?)
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().map_err(spawn_error)?;
        // spawn returns after the exec, but for a moment /proc shows an empty
        // command line; the supervisor refreshes it later in any case.
        let mut identity = Identity::of(child.id());
        for _ in 0..100 {
            if identity.as_ref().is_none_or(|i| !i.cmdline.is_empty()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
            identity = Identity::of(child.id());
        }
        log_line(&launch.log, &format!("started PID {}", child.id()));
        slot.child = Some(child);
        slot.started = Instant::now();
        slot.restart_at = None;
        self.state.services[i].process = identity;
        self.save();
        Ok(())
    }

    /// Restarts crashed services (1 s, 2 s, 4 s, … up to `max_backoff_s`;
    /// back to 1 s after a minute up) until `stop` is set, then stops everything.
    pub fn supervise(&mut self, stop: &AtomicBool) -> Vec<Stopped> {
        let max_backoff = self.deployment.launcher.max_backoff_s;
        while !stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            for i in 0..self.slots.len() {
                let slot = &mut self.slots[i];
                let Some(launch) = slot.planned.launch.clone() else { continue };
                if let Some(child) = slot.child.as_mut() {
                    let Ok(Some(status)) = child.try_wait() else {
                        self.refresh_identity(i);
                        continue;
                    };
                    slot.child = None;
                    if now.duration_since(slot.started) >= STABLE {
                        slot.backoff = 0;
                    }
                    let delay = Duration::from_secs((1u64 << slot.backoff.min(20)).min(max_backoff));
                    slot.backoff += 1;
                    slot.restarts += 1;
                    slot.restart_at = Some(now + delay);
                    let line =
                        format!("exited ({status}); restart {} in {} s", slot.restarts, delay.as_secs());
                    log_line(&launch.log, &line);
                    tracing::warn!(service = %slot.planned.service.name, "{line}");
                    let st = &mut self.state.services[i];
                    st.process = None;
                    st.restarts = slot.restarts;
                    st.last_exit = Some(status.to_string());
                    self.save();
                } else if slot.restart_at.is_some_and(|t| t <= now) {
                    if let Err(e) = self.spawn(i, &launch) {
                        let slot = &mut self.slots[i];
                        let delay = Duration::from_secs((1u64 << slot.backoff.min(20)).min(max_backoff));
                        slot.backoff += 1;
                        slot.restart_at = Some(now + delay);
                        log_line(
                            &launch.log,
                            &format!("restart failed: {e}; next try in {} s", delay.as_secs()),
                        );
                    }
                }
            }
            std::thread::sleep(POLL);
        }
        self.state.phase = Phase::Stopping;
        self.save();
        let stopped = self.stop_all();
        let _ = std::fs::remove_file(&self.state_path);
        stopped
    }

    /// SIGTERM to every service's process group, SIGKILL to what is left
    /// after the grace period.
    pub fn stop_all(&mut self) -> Vec<Stopped> {
        let grace = Duration::from_secs(self.deployment.launcher.grace_s);
        let mut stopping = Vec::new();
        for slot in &mut self.slots {
            let Some(mut child) = slot.child.take() else { continue };
            let pid = child.id();
            let exited = matches!(child.try_wait(), Ok(Some(_)));
            if !exited {
                let _ = procfs::signal_group(pid, libc::SIGTERM);
            }
            stopping.push((slot.planned.service.name.clone(), slot.planned.launch.clone(), child, exited));
        }
        let deadline = Instant::now() + grace;
        let mut done = Vec::new();
        for (name, launch, mut child, exited) in stopping {
            let pid = child.id();
            let mut how = if exited { "exited" } else { "stopped" };
            loop {
                let leader_done = matches!(child.try_wait(), Ok(Some(_)));
                if leader_done && !procfs::group_alive(pid) {
                    break;
                }
                if Instant::now() >= deadline {
                    let _ = procfs::signal_group(pid, libc::SIGKILL);
                    let _ = child.wait();
                    how = "killed";
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if let Some(l) = launch {
                let line = match how {
                    "killed" => format!("PID {pid} killed (SIGKILL) after {} s of grace", grace.as_secs()),
                    "exited" => format!("PID {pid} had exited"),
                    _ => format!("PID {pid} stopped (SIGTERM)"),
                };
                log_line(&l.log, &line);
            }
            done.push(Stopped { name, pid, how });
        }
        for s in &mut self.state.services {
            s.process = None;
        }
        done
    }

    /// Records the running child's command line again if it changed: a
    /// wrapper (a shell script, a version manager's shim) that execs the real
    /// program keeps its PID and start time but not its command line. The
    /// launcher holds the unreaped child, so the PID is still its own.
    fn refresh_identity(&mut self, i: usize) {
        let Some(child) = &self.slots[i].child else { return };
        let now = Identity::of(child.id());
        if now.is_some() && now != self.state.services[i].process {
            self.state.services[i].process = now;
            self.save();
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn deployment(&self) -> &Deployment {
        &self.deployment
    }

    fn save(&self) {
        if let Err(e) = self.state.write(&self.state_path) {
            tracing::error!("cannot write the state file {}: {e}", self.state_path.display());
        }
    }
}

/// Takes `<state>.lock` (flock, released by the OS when the launcher ends):
/// two `up`s of one deployment started at once cannot both pass the checks
/// and overwrite each other's state file.
fn lock(state_path: &Path) -> Result<std::fs::File, LaunchError> {
    use std::os::fd::AsRawFd;
    let path = state_path.with_extension("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(format!("cannot open {}", path.display())))?;
    // Safety: flock(2) on a descriptor this function owns; no memory is touched.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(LaunchError::AlreadyUp {
            state: state_path.to_path_buf(),
            what: format!("another `datafactory up` holds {}", path.display()),
        });
    }
    Ok(file)
}

/// What must hold before anything starts: a valid plan, no earlier `up` of
/// this deployment still running, every port free (a taken one is reported
/// with its holder, never fought over).
pub fn preflight(deployment: &Deployment, datafactory: &Path) -> Result<Vec<Planned>, LaunchError> {
    let planned = deployment.plan(datafactory)?;
    refuse_if_up(&deployment.state_path())?;
    let taken: Vec<PortHolder> = planned
        .iter()
        .filter(|p| p.launch.is_some())
        .filter_map(|p| procfs::port_taken(&p.service.host, p.service.port?))
        .collect();
    if !taken.is_empty() {
        return Err(LaunchError::PortsTaken(taken));
    }
    Ok(planned)
}

/// An earlier `up` whose supervisor or services still run.
fn refuse_if_up(state_path: &Path) -> Result<(), LaunchError> {
    let state = match State::read(state_path) {
        Ok(Some(s)) => s,
        Ok(None) => return Ok(()),
        Err(e) => return Err(LaunchError::Io { what: "cannot read the state file".into(), source: e }),
    };
    let mut live = Vec::new();
    if let Some(sup) = state.supervisor.as_ref().filter(|s| procfs::check(s) == procfs::Check::Same) {
        live.push(format!("the launcher, PID {}", sup.pid));
    }
    for s in &state.services {
        if let Some(p) = s.process.as_ref().filter(|p| procfs::check(p) == procfs::Check::Same) {
            live.push(format!("{}, PID {}", s.name, p.pid));
        }
    }
    if live.is_empty() {
        Ok(())
    } else {
        Err(LaunchError::AlreadyUp { state: state_path.to_path_buf(), what: live.join("; ") })
    }
}

/// A flag set by SIGINT or SIGTERM (the handlers are in place when this returns).
pub fn stop_on_signals() -> std::io::Result<Arc<AtomicBool>> {
    use tokio::signal::unix::{signal, SignalKind};
    let flag = Arc::new(AtomicBool::new(false));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (mut interrupt, mut terminate) = {
        let _guard = runtime.enter();
        (signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?)
    };
    let set = flag.clone();
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        runtime.block_on(async {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        });
        set.store(true, Ordering::SeqCst);
    })?;
    Ok(flag)
}

/// Appends a launcher line (with the UTC time) to a service's log.
pub(crate) fn log_line(log: &Path, line: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
        let _ = writeln!(f, "--- {} datafactory launcher: {line}", utc_now());
    }
}

/// The last `n` lines of a file.
pub(crate) fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Now as `YYYY-MM-DD HH:MM:SS UTC`.
pub(crate) fn utc_now() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_launcher_per_state_file() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.json");
        let held = lock(&state).unwrap();
        let e = lock(&state).unwrap_err().to_string();
        assert!(e.contains("another `datafactory up` holds") && e.contains("state.lock"), "{e}");
        drop(held);
        lock(&state).unwrap();
    }

    #[test]
    fn utc_time_is_a_civil_date() {
        let now = utc_now();
        assert_eq!(now.len(), "2026-11-27 13:31:28 UTC".len(), "{now}");
        assert!(now.starts_with("20") && now.ends_with(" UTC"), "{now}");
    }
}
