//! GPU state through NVML (`nvml-wrapper`). The library, libnvidia-ml, is
//! opened when asked, not linked: on a machine without an NVIDIA driver the
//! binary still runs and [`query`] says so instead of failing to start.
//! (Freeing cached GPU memory after a job is each service's own business:
//! `datafactory_models::gpu::release_cached`.)

use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::enums::device::UsedGpuMemory;
use serde::Serialize;

/// Overrides where libnvidia-ml is looked for (a path), e.g. a driver in a
/// non-standard place; tests point it nowhere to see the no-driver path, or
/// at a stand-in library with fixed figures (`crates/cli/tests/fake_nvml.c`).
/// The launcher passes it on to the services it starts.
pub const LIBRARY_VAR: &str = "DATAFACTORY_NVML_LIBRARY";

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct GpuReport {
    /// The driver's version; None when NVML could not be used.
    pub driver: Option<String>,
    /// Why there is no GPU information.
    pub error: Option<String>,
    pub gpus: Vec<Gpu>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Gpu {
    /// NVML's index (PCI bus order, as nvidia-smi and the deployment file number them).
    pub index: u32,
    pub name: String,
    pub memory_used_mib: u64,
    pub memory_total_mib: u64,
    pub utilization_percent: Option<u32>,
    pub temperature_c: Option<u32>,
    pub processes: Vec<GpuProcess>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct GpuProcess {
    pub pid: u32,
    pub memory_used_mib: Option<u64>,
    /// The command line, when this user may read it.
    pub command: Option<String>,
}

impl GpuReport {
    pub fn gpu(&self, index: u32) -> Option<&Gpu> {
        self.gpus.iter().find(|g| g.index == index)
    }
}

const MIB: u64 = 1024 * 1024;

/// Every GPU's state, or the reason there is none.
pub fn query() -> GpuReport {
    let lib = std::env::var_os(LIBRARY_VAR);
    let mut builder = nvml_wrapper::Nvml::builder();
    if let Some(path) = &lib {
        builder.lib_path(path);
    }
    let nvml = match builder.init() {
        Ok(n) => n,
        Err(e) => {
            let why = match &e {
                nvml_wrapper::error::NvmlError::LibloadingError(_) => format!(
                    "no NVIDIA driver: {} cannot be loaded ({e})",
                    lib.as_ref()
                        .map(|l| l.to_string_lossy().into_owned())
                        .unwrap_or_else(|| "libnvidia-ml.so".into())
                ),
                nvml_wrapper::error::NvmlError::DriverNotLoaded => {
                    "no NVIDIA driver is loaded (NVML: driver not loaded)".to_string()
                }
                _ => format!("NVML cannot be initialised: {e}"),
            };
            return GpuReport { driver: None, error: Some(why), gpus: vec![] };
        }
    };
    let driver = nvml.sys_driver_version().ok();
    let count = match nvml.device_count() {
        Ok(c) => c,
        Err(e) => return GpuReport { driver, error: Some(format!("NVML: {e}")), gpus: vec![] },
    };
    let mut gpus = Vec::new();
    for index in 0..count {
        let Ok(device) = nvml.device_by_index(index) else { continue };
        let memory = device.memory_info().ok();
        let mut processes = Vec::new();
        for p in device
            .running_compute_processes()
            .unwrap_or_default()
            .into_iter()
            .chain(device.running_graphics_processes().unwrap_or_default())
        {
            if processes.iter().any(|q: &GpuProcess| q.pid == p.pid) {
                continue;
            }
            processes.push(GpuProcess {
                pid: p.pid,
                memory_used_mib: match p.used_gpu_memory {
                    UsedGpuMemory::Used(b) => Some(b / MIB),
                    UsedGpuMemory::Unavailable => None,
                },
                command: crate::procfs::Identity::of(p.pid).map(|i| i.command()),
            });
        }
        gpus.push(Gpu {
            index,
            name: device.name().unwrap_or_else(|_| "?".into()),
            memory_used_mib: memory.as_ref().map(|m| m.used / MIB).unwrap_or(0),
            memory_total_mib: memory.as_ref().map(|m| m.total / MIB).unwrap_or(0),
            utilization_percent: device.utilization_rates().ok().map(|u| u.gpu),
            temperature_c: device.temperature(TemperatureSensor::Gpu).ok(),
            processes,
        });
    }
    GpuReport { driver, error: None, gpus }
}
