//! `down`: stop exactly the processes a launcher started, as its state file
//! records them. Each PID is signalled only after checking it still is the
//! process that was started (start time and command line), through a pidfd
//! opened before the check; a service's group is signalled process by
//! process, never by group id (see `Group`); nothing is ever found or killed
//! by name.

use crate::procfs::{self, Check, Identity};
use crate::state::State;
use serde::Serialize;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
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
        let outcome = stop_verified(sup, grace + Duration::from_secs(5));
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
                let mut group = Group::new(p, true);
                group.refresh();
                group.signal(libc::SIGTERM);
                pending.push((s.name.clone(), group));
            }
            // Stopped by the launcher just now.
            Check::Gone if supervisor_stopped => {
                processes.push(entry(&s.name, p, Outcome { word: "stopped", now: None, kind: Kind::Done }))
            }
            other => processes.push(entry(&s.name, p, other.into())),
        }
    }
    let deadline = Instant::now() + grace;
    for (name, mut group) in pending {
        let outcome = wait_or_kill(&mut group, deadline);
        processes.push(entry(&name, &group.leader, outcome));
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

/// SIGTERM to `p` if it still is `p`; then wait, SIGKILL at the end of the grace period.
fn stop_verified(p: &Identity, grace: Duration) -> Outcome {
    match procfs::check(p) {
        Check::Same => {
            let mut one = Group::new(p, false);
            one.signal(libc::SIGTERM);
            wait_or_kill(&mut one, Instant::now() + grace)
        }
        other => other.into(),
    }
}

/// Waits for the group to end; at the deadline, SIGKILL to what still is ours.
fn wait_or_kill(group: &mut Group, deadline: Instant) -> Outcome {
    loop {
        group.refresh();
        if !group.alive() {
            return Outcome { word: "stopped", now: None, kind: Kind::Done };
        }
        if Instant::now() >= deadline {
            group.signal(libc::SIGKILL);
            let until = Instant::now() + Duration::from_secs(5);
            while group.alive() && Instant::now() < until {
                group.refresh();
                std::thread::sleep(Duration::from_millis(50));
            }
            let kind = if group.leader_is_ours() { Kind::Alive } else { Kind::Done };
            return Outcome { word: "killed", now: None, kind };
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A recorded process and, for a service, the processes of its group that
/// are known to be its own. The launcher starts each service as the leader
/// of a group of its PID. Nothing is signalled by group id (`kill(-pgid)`):
/// once the leader has exited and the group has emptied, its id is free for
/// another process to lead a group of the same number. Each process is
/// signalled on its own, through a pidfd opened before its identity is
/// checked, so a signal cannot reach a process that took a PID over.
struct Group {
    leader: Identity,
    /// Whether the leader's group is searched for members (a service: yes;
    /// the supervisor, which stops its own services: no).
    with_members: bool,
    /// Members (not the leader), by PID and start time: found in the group
    /// while the leader was still verified to be ours, or children of such members.
    members: Vec<Member>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Member {
    pid: u32,
    start_time: u64,
}

impl Group {
    fn new(leader: &Identity, with_members: bool) -> Group {
        Group { leader: leader.clone(), with_members, members: Vec::new() }
    }

    fn leader_is_ours(&self) -> bool {
        procfs::check(&self.leader) == Check::Same
    }

    /// Adds the group's processes that are provably ours: the group is read
    /// first, the leader checked after; if the leader still is ours, the group
    /// id was never free in between, so everything read in it is ours. Once
    /// the leader is gone, only children of known members join.
    fn refresh(&mut self) {
        if !self.with_members {
            return;
        }
        let found = processes();
        let leader_ours = self.leader_is_ours();
        let mut grew = true;
        while grew {
            grew = false;
            for p in &found {
                let member = Member { pid: p.pid, start_time: p.start_time };
                if p.pid == self.leader.pid || self.members.contains(&member) {
                    continue;
                }
                let in_group = p.pgrp == self.leader.pid && leader_ours;
                // A child of a member: ours whatever group it moved to. A
                // child is younger than its parent; a parent PID that was
                // reused by a younger process fails the check.
                let child_of_member =
                    self.members.iter().any(|m| m.pid == p.ppid && m.start_time <= p.start_time && same(m));
                if in_group || child_of_member {
                    self.members.push(member);
                    grew = true;
                }
            }
        }
        self.members.retain(same);
    }

    /// Whether the leader or any known member is still running.
    fn alive(&self) -> bool {
        self.leader_is_ours() || self.members.iter().any(same)
    }

    /// Sends `signal` to the leader and each known member that still is itself.
    fn signal(&self, signal: i32) {
        let leader = self.leader.clone();
        signal_if(self.leader.pid, signal, || procfs::check(&leader) == Check::Same);
        for m in &self.members {
            signal_if(m.pid, signal, || same(m));
        }
    }
}

/// Whether the process `m` still runs (same PID, same start time).
fn same(m: &Member) -> bool {
    Identity::of(m.pid).is_some_and(|now| now.start_time == m.start_time)
}

/// A running process as /proc/<pid>/stat shows it.
struct ProcStat {
    pid: u32,
    ppid: u32,
    pgrp: u32,
    start_time: u64,
}

/// Every live process (zombies left out).
fn processes() -> Vec<ProcStat> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // Fields are counted after the command name's last ')': state is field 3.
            let f: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
            if matches!(*f.first()?, "Z" | "X") {
                return None;
            }
            Some(ProcStat {
                pid,
                ppid: f.get(4 - 3)?.parse().ok()?,
                pgrp: f.get(5 - 3)?.parse().ok()?,
                start_time: f.get(22 - 3)?.parse().ok()?,
            })
        })
        .collect()
}

/// Sends `signal` to `pid` if `still_ours` says, after a pidfd for `pid` was
/// opened, that the PID still is the process meant: the pidfd then refers to
/// that process, and the signal goes through it, so it cannot reach another
/// process that took the PID over since. Kernels before 5.3 have no pidfd:
/// there the check is made immediately before kill(2).
fn signal_if(pid: u32, signal: i32, still_ours: impl Fn() -> bool) -> bool {
    let Ok(raw) = libc::pid_t::try_from(pid) else { return false };
    if raw <= 1 {
        return false;
    }
    // Safety: pidfd_open(2) takes a PID and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, raw, 0) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return e.raw_os_error() == Some(libc::ENOSYS) && still_ours() && procfs::signal(pid, signal).is_ok();
    }
    // Safety: the descriptor was just returned to us and is owned here only.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    if !still_ours() {
        return false;
    }
    // Safety: pidfd_send_signal(2) on a pidfd we own, with no siginfo and no flags.
    let sent = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    sent == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Phase, ServiceState};
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};

    fn state_with(process: Identity) -> State {
        State {
            deployment: "test".into(),
            supervisor: None,
            phase: Phase::Up,
            error: None,
            services: vec![ServiceState {
                name: "svc".into(),
                kind: crate::Kind::Serve,
                gpu: None,
                port: None,
                health_url: String::new(),
                log: None,
                process: Some(process),
                restarts: 0,
                last_exit: None,
            }],
        }
    }

    /// Starts `script` under sh as the leader of its own group; returns it
    /// once /proc shows it running sh. The callers wait for it.
    #[allow(clippy::zombie_processes)]
    fn leader(script: &str) -> (std::process::Child, Identity) {
        let child = Command::new("sh")
            .args(["-c", script])
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        loop {
            let id = Identity::of(child.id()).expect("the child runs");
            if id.cmdline.first().is_some_and(|c| c == "sh") {
                return (child, id);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The recorded service ends during the grace period and its PID now
    /// leads a group of the same number but is another process (simulated:
    /// on SIGTERM the shell replaces itself with another program, so the PID,
    /// still leading its group, no longer is the recorded process). `down`
    /// must leave that process and its group alone.
    #[test]
    fn a_group_whose_leader_is_no_longer_ours_is_not_killed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let (mut child, id) = leader("trap 'exec sleep 30' TERM; while :; do sleep 0.1; done");
        state_with(id.clone()).write(&path).unwrap();
        let report = down(&path, Duration::from_secs(1)).unwrap();
        // The PID now runs `sleep 30`, which nobody asked to stop.
        let now = Identity::of(id.pid);
        let survived = child.try_wait().unwrap().is_none();
        let _ = child.kill();
        let _ = child.wait();
        assert!(survived, "down killed the process that took over the group: {report:?}");
        assert_eq!(now.map(|n| n.cmdline), Some(vec!["sleep".to_string(), "30".to_string()]));
        assert_eq!(report.processes[0].outcome, "stopped", "{report:?}");
    }

    /// A service that ignores SIGTERM is killed at the end of the grace
    /// period, with the child it started in its group.
    #[test]
    fn a_stubborn_service_and_its_child_are_killed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let (mut child, id) = leader("trap '' TERM; sh -c 'trap \"\" TERM; sleep 30' & wait; sleep 30");
        // The grandchild is in the group once /proc shows it.
        let grandchild = loop {
            let found = processes().into_iter().find(|p| p.ppid == id.pid);
            if let Some(p) = found {
                break Member { pid: p.pid, start_time: p.start_time };
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        state_with(id.clone()).write(&path).unwrap();
        let report = down(&path, Duration::from_millis(300)).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(report.processes[0].outcome, "killed", "{report:?}");
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL));
        assert!(!same(&grandchild), "the service's child survived");
        assert!(!path.exists(), "the state file is removed once everything stopped");
    }
}
