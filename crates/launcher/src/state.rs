//! The state file: what a launcher started, so that `status` can report it
//! and `down` can stop exactly those processes. JSON, replaced atomically
//! (written beside, then renamed), so a reader never sees half a file.

use crate::procfs::Identity;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Set by the launcher on each DataFactory service (`serve`) it starts: the
/// absolute path of its state file, from which the service's `/deployment`
/// reports the deployment it belongs to. Not a configuration key.
pub const STATE_VAR: &str = "DATAFACTORY_LAUNCHER_STATE";

/// Where a launcher is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = LauncherPhase)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Services started, health checks pending.
    Starting,
    /// Every service answered its health check; supervising.
    Up,
    /// Stopping what it started.
    Stopping,
    /// `up` failed; it stops what it started.
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// The deployment file (or `built-in seed layout`).
    pub deployment: String,
    /// The supervising `datafactory up` process.
    pub supervisor: Option<Identity>,
    pub phase: Phase,
    /// Why `up` failed.
    pub error: Option<String>,
    pub services: Vec<ServiceState>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceState {
    pub name: String,
    pub kind: crate::Kind,
    pub gpu: Option<u32>,
    pub port: Option<u16>,
    pub health_url: String,
    pub log: Option<PathBuf>,
    /// The process started last (None: runs elsewhere, or waiting to restart).
    pub process: Option<Identity>,
    /// Restarts after a crash.
    pub restarts: u32,
    /// How the previous process ended.
    pub last_exit: Option<String>,
}

impl State {
    /// Reads the state file; None when there is none.
    pub fn read(path: &Path) -> std::io::Result<Option<State>> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("the state file {} is not valid: {e}", path.display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Replaces the state file atomically.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert!(State::read(&path).unwrap().is_none());
        let state = State {
            deployment: "d.toml".into(),
            supervisor: Identity::of(std::process::id()),
            phase: Phase::Up,
            error: None,
            services: vec![],
        };
        state.write(&path).unwrap();
        let back = State::read(&path).unwrap().unwrap();
        assert_eq!(back.supervisor, state.supervisor);
        assert_eq!(back.phase, Phase::Up);
        std::fs::write(&path, "{").unwrap();
        assert!(State::read(&path).unwrap_err().to_string().contains("state.json"));
    }
}
