//! Processes as Linux's /proc shows them: who a PID is (start time and
//! command line, so a recorded PID that now belongs to someone else is never
//! signalled), signals to a process group, and who holds a listening port.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// What identifies a process over time: a PID is reused, a PID with the same
/// start time (clock ticks after boot, /proc/<pid>/stat field 22) is not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub pid: u32,
    pub start_time: u64,
    pub cmdline: Vec<String>,
}

impl Identity {
    /// The live process `pid`, or None when there is none (or only a zombie).
    pub fn of(pid: u32) -> Option<Identity> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (state, start_time) = parse_stat(&stat)?;
        if state == 'Z' || state == 'X' {
            return None;
        }
        Some(Identity { pid, start_time, cmdline: cmdline(pid)? })
    }

    /// The command line as one string (for people).
    pub fn command(&self) -> String {
        self.cmdline.join(" ")
    }
}

/// What a recorded process is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// The same process: same PID, start time and command line.
    Same,
    /// No live process has the PID.
    Gone,
    /// The PID belongs to another process now.
    Other(Identity),
}

/// Compares the recorded process with what has its PID now.
pub fn check(recorded: &Identity) -> Check {
    match Identity::of(recorded.pid) {
        None => Check::Gone,
        Some(now) if now == *recorded => Check::Same,
        Some(now) => Check::Other(now),
    }
}

/// State (field 3) and start time (field 22) from /proc/<pid>/stat. The
/// command name (field 2) is in parentheses and may hold spaces and ')',
/// so fields are counted after the last ')'.
fn parse_stat(stat: &str) -> Option<(char, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start_time = fields.get(22 - 3)?.parse().ok()?;
    Some((state, start_time))
}

fn cmdline(pid: u32) -> Option<Vec<String>> {
    let bytes = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        bytes
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// Sends `signal` to every process of the group `pgid` (the launcher starts
/// each service as the leader of its own group, so its children go too).
pub fn signal_group(pgid: u32, signal: i32) -> std::io::Result<()> {
    let pgid = libc::pid_t::try_from(pgid).map_err(|_| std::io::Error::other("PID out of range"))?;
    if pgid <= 1 {
        return Err(std::io::Error::other("refusing to signal process group 0 or 1"));
    }
    // Safety: kill(2) with a negative PID signals a process group; no memory is touched.
    if unsafe { libc::kill(-pgid, signal) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Sends `signal` to one process.
pub fn signal(pid: u32, signal: i32) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| std::io::Error::other("PID out of range"))?;
    if pid <= 1 {
        return Err(std::io::Error::other("refusing to signal PID 0 or 1"));
    }
    // Safety: kill(2) on one PID; no memory is touched.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether any process is left in the group `pgid`.
pub fn group_alive(pgid: u32) -> bool {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else { return false };
    // Safety: signal 0 only checks that the group exists and may be signalled.
    pgid > 1 && unsafe { libc::kill(-pgid, 0) } == 0
}

/// Who listens on a TCP port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortHolder {
    pub port: u16,
    /// The process, when this user may see it.
    pub process: Option<Identity>,
    /// The socket owner's user id.
    pub uid: Option<u32>,
}

impl std::fmt::Display for PortHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.process, self.uid) {
            (Some(p), _) => write!(f, "port {} is taken by PID {} ({})", self.port, p.pid, p.command()),
            (None, Some(uid)) => {
                write!(
                    f,
                    "port {} is taken by a process of user id {uid} that this user cannot see",
                    self.port
                )
            }
            (None, None) => write!(f, "port {} is taken", self.port),
        }
    }
}

/// Whether `host:port` can be listened on now; if not, who holds it.
pub fn port_taken(host: &str, port: u16) -> Option<PortHolder> {
    let addr = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    match std::net::TcpListener::bind(&addr) {
        Ok(_) => None,
        Err(_) => Some(port_holder(port).unwrap_or(PortHolder { port, process: None, uid: None })),
    }
}

/// The process listening on `port` (any address), from /proc/net/tcp(6):
/// the socket's inode, then the process with that socket among its descriptors.
pub fn port_holder(port: u16) -> Option<PortHolder> {
    let (inode, uid) = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .find_map(|table| listening_inode(&table, port))?;
    let target = format!("socket:[{inode}]");
    let process = std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let fds = std::fs::read_dir(entry.path().join("fd")).ok()?;
        fds.flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == Path::new(&target)))
            .then(|| Identity::of(pid))
            .flatten()
    });
    Some(PortHolder { port, process, uid: Some(uid) })
}

/// The inode and owner of the socket listening on `port` in one /proc/net/tcp table.
fn listening_inode(table: &str, port: u16) -> Option<(u64, u32)> {
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let local_port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
        // State 0A is LISTEN.
        if local_port != port || *f.get(3)? != "0A" {
            return None;
        }
        Some((f.get(9)?.parse().ok()?, f.get(7)?.parse().ok()?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "42 (a (weird) name) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 123 45";
        assert_eq!(parse_stat(stat), Some(('S', 987654)));
    }

    #[test]
    fn this_process_has_an_identity_and_its_holder_of_a_port_is_found() {
        let me = Identity::of(std::process::id()).unwrap();
        assert_eq!(check(&me), Check::Same);
        let mut other = me.clone();
        other.start_time += 1;
        assert!(matches!(check(&other), Check::Other(_)));

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let holder = port_taken("127.0.0.1", port).expect("the port is taken");
        assert_eq!(holder.process.as_ref().map(|p| p.pid), Some(std::process::id()));
        assert!(holder.to_string().contains(&format!("PID {}", std::process::id())), "{holder}");
        drop(listener);
        assert_eq!(port_taken("127.0.0.1", port), None);
    }
}
