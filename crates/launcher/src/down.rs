//! `down`: stop exactly the processes a launcher started, as its state file
//! records them. Each PID is signalled only after checking it still is the
//! process that was started (start time and command line); nothing is ever
//! found or killed by name.

use crate::procfs::{self, Check, Identity};
use crate::state::State;
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, Instant};

/// What `down` did to one recorded process.
#[derive(Debug, Clone, Serialize)]
pub struct DownEntry {
    /// The service's name, or `launcher` for the supervising `up`.
    pub name: String,
    pub pid: u32,
    /// `stopped` (SIGTERM), `killed` (SIGKILL after the grace period),
    /// `gone` (no longer running), `not ours` (the PID belongs to another process now: left alone).
    pub outcome: &'static str,
    /// For `not ours`: the process that has the PID now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub now: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DownReport {
    pub state_file: String,
    /// False when there was no state file (nothing was started, or already down).
    pub found: bool,
    pub processes: Vec<DownEntry>,
}

/// Stops what the state file at `state_path` records: the supervisor first
/// (it stops its services itself), then any recorded service still running.
pub fn down(state_path: &Path, grace: Duration) -> std::io::Result<DownReport> {
    let state_file = state_path.display().to_string();
    let Some(state) = State::read(state_path)? else {
        return Ok(DownReport { state_file, found: false, processes: vec![] });
    };
    let mut processes = Vec::new();
    let mut supervisor_stopped = false;
    if let Some(sup) = &state.supervisor {
        // The supervisor stops every service with the same grace period; give it a little longer.
        let outcome = stop_verified(sup, grace + Duration::from_secs(5), false);
        supervisor_stopped = matches!(outcome.word, "stopped" | "killed");
        processes.push(entry("launcher", sup, outcome));
    }
    // A supervisor that had to be killed may have restarted a service since
    // the file was first read: its last word counts.
    let state = match State::read(state_path) {
        Ok(Some(newer)) => newer,
        _ => state,
    };
    let mut pending = Vec::new();
    for s in &state.services {
        let Some(p) = &s.process else { continue };
        match procfs::check(p) {
            Check::Same => {
                let _ = procfs::signal_group(p.pid, libc::SIGTERM);
                pending.push((s.name.clone(), p.clone()));
            }
            // Stopped by the launcher just now.
            Check::Gone if supervisor_stopped => {
                processes.push(entry(&s.name, p, Outcome { word: "stopped", now: None, kind: Kind::Done }))
            }
            other => processes.push(entry(&s.name, p, other.into())),
        }
    }
    let deadline = Instant::now() + grace;
    for (name, p) in pending {
        let outcome = wait_or_kill(&p, deadline, true);
        processes.push(entry(&name, &p, outcome));
    }
    if processes.iter().all(|p| p.outcome.kind != Kind::Alive) {
        let _ = std::fs::remove_file(state_path);
    }
    Ok(DownReport { state_file, found: true, processes: processes.into_iter().map(|p| p.entry).collect() })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Done,
    Alive,
}

struct Outcome {
    word: &'static str,
    now: Option<String>,
    kind: Kind,
}

struct Entry {
    entry: DownEntry,
    outcome: Outcome,
}

impl From<Check> for Outcome {
    fn from(c: Check) -> Outcome {
        match c {
            Check::Gone => Outcome { word: "gone", now: None, kind: Kind::Done },
            Check::Same => Outcome { word: "running", now: None, kind: Kind::Alive },
            Check::Other(now) => Outcome { word: "not ours", now: Some(now.command()), kind: Kind::Done },
        }
    }
}

fn entry(name: &str, p: &Identity, outcome: Outcome) -> Entry {
    Entry {
        entry: DownEntry {
            name: name.to_string(),
            pid: p.pid,
            outcome: outcome.word,
            now: outcome.now.clone(),
        },
        outcome,
    }
}

/// SIGTERM to `p` (or its group) if it still is `p`; then wait, SIGKILL at the end of the grace period.
fn stop_verified(p: &Identity, grace: Duration, group: bool) -> Outcome {
    match procfs::check(p) {
        Check::Same => {
            let _ = if group {
                procfs::signal_group(p.pid, libc::SIGTERM)
            } else {
                procfs::signal(p.pid, libc::SIGTERM)
            };
            wait_or_kill(p, Instant::now() + grace, group)
        }
        other => other.into(),
    }
}

/// Waits for `p` to end; at the deadline, SIGKILL if it still is `p`.
fn wait_or_kill(p: &Identity, deadline: Instant, group: bool) -> Outcome {
    loop {
        let leader = procfs::check(p);
        let group_left = group && procfs::group_alive(p.pid);
        if leader != Check::Same && !group_left {
            return Outcome { word: "stopped", now: None, kind: Kind::Done };
        }
        if Instant::now() >= deadline {
            // Checked again just before the signal: only what still is ours.
            if leader == Check::Same || (group && procfs::check(p) == Check::Same) {
                let _ = if group {
                    procfs::signal_group(p.pid, libc::SIGKILL)
                } else {
                    procfs::signal(p.pid, libc::SIGKILL)
                };
            } else if group_left {
                // The leader is gone, its PID not reused (a PID stays taken while its group exists):
                // what is left in the group was started by it.
                let _ = procfs::signal_group(p.pid, libc::SIGKILL);
            }
            let until = Instant::now() + Duration::from_secs(5);
            while procfs::check(p) == Check::Same && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(50));
            }
            let kind = if procfs::check(p) == Check::Same { Kind::Alive } else { Kind::Done };
            return Outcome { word: "killed", now: None, kind };
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
