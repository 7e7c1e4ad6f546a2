//! GPU memory: what the card has free, keeping freed blocks cached while a
//! job runs, and handing them back to the driver when it is done.
//!
//! candle allocates with `cuMemAllocAsync` from the device's default memory
//! pool (where the device supports it, as every card since Pascal on a recent
//! driver does). By default that pool gives freed memory back to the driver
//! at every synchronisation, which is after every batch (the vectors are
//! copied to the host), so each batch would map its memory anew. We set the
//! pool's release threshold to "keep everything" when a model is loaded on
//! the GPU, which is what PyTorch's caching allocator does, and trim the pool
//! to zero after a job ([`release_cached`]), which is `torch.cuda.empty_cache()`.
//! On the CPU every function here is a no-op that returns `None`.

use candle_core::Device;

/// Memory of the device a model runs on, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct GpuMemory {
    /// Free on the card, as the driver reports it (other processes count).
    pub free: u64,
    pub total: u64,
    /// Held by our memory pool: in use by tensors plus cached for reuse.
    pub pool_reserved: u64,
    /// Of that, in use by live tensors.
    pub pool_used: u64,
}

/// The device's memory, or `None` on the CPU (or when the driver can't say).
pub fn memory(device: &Device) -> Option<GpuMemory> {
    imp::memory(device)
}

/// Keeps freed memory in the pool for the next batch instead of returning it
/// to the driver at each synchronisation. Called when a model is loaded.
pub fn keep_cache(device: &Device) {
    if let Err(e) = imp::set_release_threshold(device, u64::MAX) {
        tracing::warn!(error = %e, "could not set the GPU memory pool's release threshold");
    }
}

/// Waits for the device's work and hands the pool's cached (free) memory back
/// to the driver, so that other processes on the card can use it. Returns the
/// bytes the pool held before and after, or `None` on the CPU.
pub fn release_cached(device: &Device) -> Option<(u64, u64)> {
    match imp::trim(device) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "could not release cached GPU memory");
            None
        }
    }
}

/// Held around a forward pass: candle then uploads the small parameter
/// vectors of its strided kernels (shapes and strides, a few hundred bytes)
/// once per distinct content and reuses them, instead of one host-to-device
/// copy from pageable memory (and a fresh allocation) per kernel launch. The
/// uploads are keyed by their bytes, so every layer of every batch with the
/// same shapes shares them. No-op on the CPU.
pub struct LaunchScope {
    // candle's guard (a type it does not export); dropping it ends the scope.
    // Not Send: the scope is per thread.
    #[cfg(feature = "cuda")]
    _guard: Option<Box<dyn std::any::Any>>,
}

pub fn launch_scope(device: &Device) -> LaunchScope {
    #[cfg(feature = "cuda")]
    {
        LaunchScope {
            _guard: match device {
                Device::Cuda(cuda) => Some(Box::new(cuda.enable_cuda_graph_htod_cache())),
                _ => None,
            },
        }
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = device;
        LaunchScope {}
    }
}

/// A CUDA device for one model: candle gives each device its own stream, and
/// our tensors never leave it, so cudarc's per-tensor event tracking (meant
/// for tensors shared between streams: two event records per kernel
/// argument) is turned off before any tensor is made.
pub fn prepare_device(device: &Device) {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cuda) = device {
        // Safety: see above; every tensor of a model is made and used on the
        // stream of the device it was loaded on.
        unsafe { cuda.disable_event_tracking() };
    }
    #[cfg(not(feature = "cuda"))]
    let _ = device;
}

#[cfg(feature = "cuda")]
mod imp {
    use super::GpuMemory;
    use candle_core::cuda_backend::cudarc::driver::{result, sys};
    use candle_core::Device;
    use std::ffi::c_void;

    fn pool(device: &Device) -> Result<Option<sys::CUmemoryPool>, String> {
        let Device::Cuda(cuda) = device else { return Ok(None) };
        let stream = cuda.cuda_stream();
        let ctx = stream.context();
        if !ctx.has_async_alloc() {
            return Ok(None);
        }
        ctx.bind_to_thread().map_err(|e| e.to_string())?;
        // Safety: the device handle comes from a live context.
        unsafe { result::device::get_default_mem_pool(ctx.cu_device()) }.map(Some).map_err(|e| e.to_string())
    }

    fn attribute(pool: sys::CUmemoryPool, attr: sys::CUmemPool_attribute) -> Result<u64, String> {
        let mut value: u64 = 0;
        // Safety: these attributes are cuuint64_t.
        unsafe { result::mem_pool::get_attribute(pool, attr, &mut value as *mut u64 as *mut c_void) }
            .map_err(|e| e.to_string())?;
        Ok(value)
    }

    pub fn memory(device: &Device) -> Option<GpuMemory> {
        let Device::Cuda(cuda) = device else { return None };
        let (free, total) = cuda.cuda_stream().context().mem_get_info().ok()?;
        let (pool_reserved, pool_used) = match pool(device).ok().flatten() {
            Some(p) => (
                attribute(p, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT).unwrap_or(0),
                attribute(p, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT).unwrap_or(0),
            ),
            None => (0, 0),
        };
        Some(GpuMemory { free: free as u64, total: total as u64, pool_reserved, pool_used })
    }

    pub fn set_release_threshold(device: &Device, bytes: u64) -> Result<(), String> {
        let Some(p) = pool(device)? else { return Ok(()) };
        let mut value = bytes;
        // Safety: the release threshold is a cuuint64_t.
        unsafe {
            result::mem_pool::set_attribute(
                p,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                &mut value as *mut u64 as *mut c_void,
            )
        }
        .map_err(|e| e.to_string())
    }

    pub fn trim(device: &Device) -> Result<Option<(u64, u64)>, String> {
        let Device::Cuda(cuda) = device else { return Ok(None) };
        cuda.cuda_stream().synchronize().map_err(|e| e.to_string())?;
        let Some(p) = pool(device)? else { return Ok(None) };
        let before = attribute(p, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT)?;
        // Safety: a valid pool; blocks in use are never trimmed.
        unsafe { result::mem_pool::trim_to(p, 0) }.map_err(|e| e.to_string())?;
        let after = attribute(p, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT)?;
        Ok(Some((before, after)))
    }
}

#[cfg(not(feature = "cuda"))]
mod imp {
    use super::GpuMemory;
    use candle_core::Device;

    pub fn memory(_: &Device) -> Option<GpuMemory> {
        None
    }
    pub fn set_release_threshold(_: &Device, _: u64) -> Result<(), String> {
        Ok(())
    }
    pub fn trim(_: &Device) -> Result<Option<(u64, u64)>, String> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_has_no_gpu_memory() {
        assert_eq!(memory(&Device::Cpu), None);
        assert_eq!(release_cached(&Device::Cpu), None);
        keep_cache(&Device::Cpu);
    }
}
