//! `up`, `down`, `status`, `gpu` and `ollama unload`: flags to calls into
//! `datafactory-launcher`, and its reports as tables or JSON.

use crate::output::print_json;
use anyhow::{Context, Result};
use datafactory_launcher::{gpu::GpuReport, Deployment, StatusReport};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Exit code of `gpu` on a machine without an NVIDIA driver.
pub const EXIT_NO_DRIVER: u8 = 4;
/// The deployment file read when no --file is given, if present.
pub const DEFAULT_DEPLOY_FILE: &str = "datafactory-deploy.toml";

/// `--file`, else ./datafactory-deploy.toml, else the seed's layout.
pub fn deployment(file: Option<&Path>) -> Result<Deployment> {
    match file {
        Some(f) => Ok(Deployment::load(f)?),
        None if Path::new(DEFAULT_DEPLOY_FILE).is_file() => {
            Ok(Deployment::load(Path::new(DEFAULT_DEPLOY_FILE))?)
        }
        None => {
            let cwd = std::env::current_dir().context("cannot read the current folder")?;
            Ok(Deployment::seed(cwd))
        }
    }
}

fn datafactory_program(d: &Deployment) -> Result<PathBuf> {
    match &d.launcher.datafactory {
        Some(p) => Ok(d.resolve(p)),
        None => std::env::current_exe().context("cannot find the running datafactory binary"),
    }
}

/// `datafactory up`.
pub fn up(file: Option<&Path>, plan: bool, detach: bool, json: bool, supervise: bool) -> Result<ExitCode> {
    let d = deployment(file)?;
    let exe = datafactory_program(&d)?;
    if plan {
        let planned = d.plan(&exe)?;
        if json {
            let v: Vec<_> = planned
                .iter()
                .map(|p| {
                    serde_json::json!({
                        "name": p.service.name, "kind": p.service.kind, "gpu": p.service.gpu,
                        "port": p.service.port, "health_url": p.health_url, "launch": p.launch,
                    })
                })
                .collect();
            print_json(&serde_json::json!({"deployment": d.source, "services": v}))?;
        } else {
            print_plan(&d, &planned);
        }
        return Ok(ExitCode::SUCCESS);
    }
    if detach && !supervise {
        return up_detached(file, &d, &exe, json);
    }
    let stop = datafactory_launcher::stop_on_signals().context("cannot handle SIGINT and SIGTERM")?;
    let mut launcher = datafactory_launcher::Launcher::start(d, &exe, &stop, &|m| eprintln!("{m}"))?;
    let report = datafactory_launcher::status(launcher.deployment())?;
    if json {
        print_json(&report)?;
    } else {
        print_status(&report, false);
    }
    for n in &launcher.notes {
        eprintln!("warning: {n}");
    }
    eprintln!("supervising (PID {}); Ctrl-C or `datafactory down` stops every service", std::process::id());
    let stopped = launcher.supervise(&stop);
    for s in &stopped {
        eprintln!("{}: PID {} {}", s.name, s.pid, s.how);
    }
    Ok(ExitCode::SUCCESS)
}

/// `up --detach`: the same `up` as a background process (its own process
/// group, output in logs/launcher.log); returns once it is up or has failed.
fn up_detached(file: Option<&Path>, d: &Deployment, exe: &Path, json: bool) -> Result<ExitCode> {
    datafactory_launcher::supervisor::preflight(d, exe)?;
    let logs = d.logs_dir();
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let log_path = logs.join("launcher.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let me = std::env::current_exe().context("cannot find the running datafactory binary")?;
    let mut cmd = std::process::Command::new(me);
    cmd.args(["up", "--supervise"]);
    if let Some(f) = file {
        let f = f.canonicalize().with_context(|| format!("cannot find {}", f.display()))?;
        cmd.arg("--file").arg(f);
    }
    cmd.stdin(std::process::Stdio::null()).stdout(log.try_clone()?).stderr(log);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().context("cannot start the background launcher")?;
    let state_path = d.state_path();
    let deadline = Instant::now() + Duration::from_secs(d.launcher.health_timeout_s + 60);
    loop {
        let exited = child.try_wait()?;
        if let Some(status) = exited {
            // Its own account of the failure, where it wrote one.
            let state = datafactory_launcher::state::State::read(&state_path).ok().flatten();
            if let Some(e) = state
                .filter(|s| s.supervisor.as_ref().is_some_and(|p| p.pid == child.id()))
                .and_then(|s| s.error)
            {
                anyhow::bail!("{e}");
            }
            anyhow::bail!(
                "the launcher stopped ({status}); from {}:\n{}",
                log_path.display(),
                last_lines(&log_path, 20)
            );
        }
        let state = datafactory_launcher::state::State::read(&state_path).ok().flatten();
        if let Some(s) = state.filter(|s| s.supervisor.as_ref().is_some_and(|p| p.pid == child.id())) {
            match s.phase {
                datafactory_launcher::state::Phase::Up => break,
                datafactory_launcher::state::Phase::Failed => {
                    anyhow::bail!("{}", s.error.unwrap_or_else(|| "up failed".into()))
                }
                _ => {}
            }
        }
        if Instant::now() >= deadline {
            anyhow::bail!("the launcher (PID {}) is not up yet; see {}", child.id(), log_path.display());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let report = datafactory_launcher::status(d)?;
    if json {
        print_json(&report)?;
    } else {
        print_status(&report, false);
        eprintln!(
            "supervised in the background by PID {} (log: {}); `datafactory down` stops every service",
            child.id(),
            log_path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn last_lines(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `datafactory down`.
pub fn down(file: Option<&Path>, json: bool) -> Result<ExitCode> {
    let d = deployment(file)?;
    let report = datafactory_launcher::down(&d.state_path(), Duration::from_secs(d.launcher.grace_s))
        .with_context(|| format!("cannot take down what {} records", d.state_path().display()))?;
    if json {
        print_json(&report)?;
    } else if !report.found {
        println!("nothing to take down: no state file at {}", report.state_file);
    } else {
        for p in &report.processes {
            match &p.now {
                Some(now) => println!("{}: PID {} not ours now ({now}): left alone", p.name, p.pid),
                None => println!("{}: PID {} {}", p.name, p.pid, p.outcome),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `datafactory status`.
pub fn status(file: Option<&Path>, json: bool) -> Result<ExitCode> {
    let d = deployment(file)?;
    let report = datafactory_launcher::status(&d)?;
    if json {
        print_json(&report)?;
    } else {
        print_status(&report, true);
    }
    Ok(ExitCode::SUCCESS)
}

/// `datafactory gpu`.
pub fn gpu(json: bool) -> Result<ExitCode> {
    let report = datafactory_launcher::gpu::query();
    if json {
        print_json(&report)?;
    } else {
        print_gpus(&report);
    }
    Ok(if report.error.is_some() { ExitCode::from(EXIT_NO_DRIVER) } else { ExitCode::SUCCESS })
}

/// `datafactory ollama unload`.
pub fn ollama_unload(file: Option<&Path>, json: bool) -> Result<ExitCode> {
    let d = deployment(file)?;
    let done = datafactory_launcher::ollama_unload(&d);
    if json {
        print_json(&done)?;
    } else {
        for u in &done {
            let models = if u.models.is_empty() { "nothing loaded".to_string() } else { u.models.join(", ") };
            match &u.error {
                Some(e) => println!("{} ({}): unloaded {models}; failed: {e}", u.name, u.url),
                None => println!("{} ({}): unloaded {models}", u.name, u.url),
            }
        }
    }
    Ok(if done.iter().any(|u| u.error.is_some()) {
        ExitCode::from(crate::EXIT_SOME_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_plan(d: &Deployment, planned: &[datafactory_launcher::Planned]) {
    println!("deployment: {}", d.source);
    println!("logs: {}   state file: {}", d.logs_dir().display(), d.state_path().display());
    for p in planned {
        let s = &p.service;
        let gpu = s.gpu.map(|g| format!("GPU {g}")).unwrap_or_else(|| "no GPU".into());
        match &p.launch {
            None => println!("\n{} ({}): runs elsewhere, checked at {}", s.name, s.kind.name(), p.health_url),
            Some(l) => {
                println!("\n{} ({}, {gpu}): health {}", s.name, s.kind.name(), p.health_url);
                let env: Vec<String> = l.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!("  {} {} {}", env.join(" "), l.program.display(), l.args.join(" "));
                println!("  in {}, log {}", l.cwd.display(), l.log.display());
                if let Some(m) = &s.warm {
                    println!("  then loads {m}");
                }
            }
        }
    }
}

fn print_status(r: &StatusReport, full: bool) {
    if full {
        let phase = r.phase.map(|p| format!("{p:?}").to_lowercase()).unwrap_or_else(|| "not started".into());
        let by = r.launcher_pid.map(|p| format!(", launcher PID {p}")).unwrap_or_default();
        println!("deployment: {} ({phase}{by})", r.deployment);
        if let Some(e) = &r.error {
            println!("last error: {e}");
        }
    }
    let rows: Vec<Vec<String>> = r
        .services
        .iter()
        .map(|s| {
            let dash = || "-".to_string();
            vec![
                s.name.clone(),
                s.gpu.map(|g| g.to_string()).unwrap_or_else(dash),
                s.port.map(|p| p.to_string()).unwrap_or_else(|| s.url.clone()),
                s.pid.map(|p| p.to_string()).unwrap_or_else(dash),
                s.health.clone(),
                s.restarts.to_string(),
                match (s.gpu_memory_used_mib, s.gpu_memory_total_mib) {
                    (Some(u), Some(t)) => format!("{u}/{t} MiB"),
                    _ => dash(),
                },
                s.gpu_temperature_c.map(|t| format!("{t} C")).unwrap_or_else(dash),
                s.models.as_ref().map(|m| m.join(",")).unwrap_or_default(),
            ]
        })
        .collect();
    let header = ["SERVICE", "GPU", "PORT", "PID", "HEALTH", "RESTARTS", "GPU MEMORY", "TEMP", "MODELS"];
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
    for s in &r.services {
        let Some(f) = &s.fleet else { continue };
        let nodes = f["nodes"].as_array().map(Vec::as_slice).unwrap_or_default();
        let alive = nodes.iter().filter(|n| n["alive"] == true).count();
        println!(
            "fleet of {}: {} node(s), {alive} alive; jobs queued {}, running {}, lease expired {}",
            s.name,
            nodes.len(),
            f["queued"],
            f["running"],
            f["lease_expired"]
        );
        if full {
            for n in nodes {
                let job = n["running_job"].as_str().map(|j| format!(", running job {j}")).unwrap_or_default();
                let state = if n["alive"] == true { "alive" } else { "silent" };
                println!(
                    "  {} {} ({state}{job})",
                    n["id"].as_str().unwrap_or(""),
                    n["address"].as_str().unwrap_or("")
                );
            }
        }
    }
    match &r.gpu.error {
        Some(e) => println!("GPUs: {e}"),
        None if full => print_gpus(&r.gpu),
        None => {}
    }
}

fn print_gpus(r: &GpuReport) {
    if let Some(e) = &r.error {
        eprintln!("{e}");
        return;
    }
    println!("driver {} , {} GPU(s)", r.driver.as_deref().unwrap_or("?"), r.gpus.len());
    for g in &r.gpus {
        let util = g.utilization_percent.map(|u| format!("{u}%")).unwrap_or_else(|| "?".into());
        let temp = g.temperature_c.map(|t| format!("{t} C")).unwrap_or_else(|| "?".into());
        println!(
            "GPU {}  {}  memory {}/{} MiB  utilisation {util}  {temp}",
            g.index, g.name, g.memory_used_mib, g.memory_total_mib
        );
        for p in &g.processes {
            let mem = p.memory_used_mib.map(|m| format!("{m} MiB")).unwrap_or_else(|| "?".into());
            println!("    PID {:<8} {mem:>10}  {}", p.pid, p.command.as_deref().unwrap_or("(not visible)"));
        }
    }
}
