//! The launcher: brings DataFactory's services up from one deployment file
//! (`datafactory up`), supervises them, reports on them and their GPUs
//! (`status`, `gpu`), and takes down exactly what it started (`down`).
//!
//! Every service is pinned from outside to its own GPU (`CUDA_VISIBLE_DEVICES`)
//! or to none; it runs as its own process group with its output in
//! `logs/<service>.log`. What was started is recorded in a state file with
//! each process's PID, start time and command line, and only a process that
//! still matches all three is ever signalled. Nothing is found or killed by
//! name, so other people's servers on a shared machine are never touched.
//!
//! The CLI (`crates/cli`) only turns flags into calls here and prints.

pub mod deploy;
pub mod down;
pub mod gpu;
mod http;
pub mod procfs;
pub mod state;
pub mod status;
pub mod supervisor;

pub use deploy::{DeployError, Deployment, Kind, Planned, Service};
pub use down::{down, DownReport};
pub use status::{ollama_unload, status, status_of_state, ServiceStatus, StatusReport};
pub use supervisor::{stop_on_signals, LaunchError, Launcher, Stopped};
