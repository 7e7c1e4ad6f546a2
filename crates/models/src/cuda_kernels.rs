//! Our fused CUDA kernels for the encoder (`cuda` feature only).
//!
//! The kernels live in `crates/models/kernels/encoder.cu`; `build.rs`
//! compiles them to PTX with the CUDA toolkit's nvcc when the `cuda` feature
//! is on, and the PTX is embedded in the binary. The first use on a device
//! loads the module through candle's [`CudaDevice::get_or_load_custom_func`]
//! (candle caches it per device under [`MODULE`]); every kernel is launched
//! on the device's stream, like candle's own, from a candle custom op, so the
//! tensors' storage is locked as candle's ops lock it.
//!
//! What they replace in the encoder's GPU path (ARCHITECTURE.md, "Fused CUDA
//! kernels"): candle's strided broadcast bias add, its f32 round trip of the
//! masked softmax (cast, broadcast add, softmax, cast back), the head-split
//! and head-merge copies, and the separate residual add before layer norm.
//! Matrix products stay cuBLAS (candle's matmul).
//!
//! The switch: `DATAFACTORY_CUDA_FUSED=0` (or `false`, `off`) in the
//! environment makes the encoder use candle's ops on the GPU instead, to
//! compare the two in one run or to turn off a wrong kernel; [`set_fused`]
//! does the same from code (the GPU tests compare both). If the PTX module
//! cannot be loaded, [`active`] logs one warning and answers `false` from then
//! on, and the encoder keeps candle's ops.
//!
//! The functions check shapes, dtypes and layouts and fail with a message
//! naming the problem; they are public for the GPU tests
//! (`crates/models/tests/gpu.rs`), which compare each kernel with the CPU f32
//! path.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, CudaStorageSlice, WrapErr};
use candle_core::{
    bail, CpuStorage, CudaDevice, CudaStorage, CustomOp1, CustomOp2, DType, Device, InplaceOp2, InplaceOp3,
    Layout, Result, Shape, Tensor,
};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

mod ptx {
    include!(concat!(env!("OUT_DIR"), "/ptx.rs"));
}

/// The name candle caches our PTX module under, per device.
pub const MODULE: &str = "datafactory-encoder";

/// The PTX of `kernels/encoder.cu`, as built.
pub fn ptx() -> &'static str {
    ptx::ENCODER
}

static SWITCH: AtomicU8 = AtomicU8::new(2); // 0 off, 1 on, 2 not read yet
static LOAD_FAILED: AtomicBool = AtomicBool::new(false);

/// Whether the fused kernels are switched on: by [`set_fused`], else by
/// `DATAFACTORY_CUDA_FUSED` (on unless `0`, `false` or `off`).
pub fn fused() -> bool {
    match SWITCH.load(Ordering::Relaxed) {
        0 => false,
        1 => true,
        _ => {
            let on = !std::env::var("DATAFACTORY_CUDA_FUSED")
                .is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "0" | "false" | "off"));
            SWITCH.store(on as u8, Ordering::Relaxed);
            on
        }
    }
}

/// Switches the fused kernels on or off for the whole process, overriding
/// `DATAFACTORY_CUDA_FUSED`. Takes effect at the next forward pass.
pub fn set_fused(on: bool) {
    SWITCH.store(on as u8, Ordering::Relaxed);
}

/// Whether the encoder uses the fused kernels for tensors of `dtype` on
/// `device`: a CUDA device, f32, f16 or bf16, the switch on, and our PTX
/// loaded (tried at the first call per device; a failure is logged once and
/// turns the kernels off for the process).
pub fn active(device: &Device, dtype: DType) -> bool {
    let Device::Cuda(dev) = device else { return false };
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
        || !fused()
        || LOAD_FAILED.load(Ordering::Relaxed)
    {
        return false;
    }
    match dev.get_or_load_custom_func("df_bias_act_f32", MODULE, ptx::ENCODER) {
        Ok(_) => true,
        Err(e) => {
            if !LOAD_FAILED.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    error = %e,
                    "could not load DataFactory's fused CUDA kernels; the encoder uses candle's ops on the GPU"
                );
            }
            false
        }
    }
}

/// A linear layer's activation, as the kernels number it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Act {
    None = 0,
    /// Exact GELU, `0.5 x (1 + erf(x / sqrt 2))` (`hidden_act` "gelu").
    GeluErf = 1,
    /// The tanh approximation ("gelu_new", "gelu_pytorch_tanh", "gelu_fast").
    GeluTanh = 2,
    Relu = 3,
}

fn suffix(dtype: DType, op: &str) -> Result<&'static str> {
    Ok(match dtype {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        other => bail!("{op}: no fused CUDA kernel for {other:?} (f32, f16 and bf16 only)"),
    })
}

/// The kernel's name in the PTX: `df_<op>_<f32|f16|bf16>`.
fn kernel(op: &str, dtype: DType) -> Result<String> {
    Ok(format!("df_{op}_{}", suffix(dtype, op)?))
}

/// The element range of a contiguous layout, or an error naming the op.
fn range(l: &Layout, op: &str, what: &str) -> Result<std::ops::Range<usize>> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(a..b),
        None => bail!("{op}: {what} must be contiguous"),
    }
}

/// Indices in the kernels are 32-bit.
fn check_count(n: usize, op: &str) -> Result<u32> {
    match u32::try_from(n) {
        Ok(v) if v < i32::MAX as u32 => Ok(v),
        _ => bail!("{op}: {n} elements exceed the fused kernels' 2^31 limit"),
    }
}

/// A grid-stride launch over `work` items, 256 threads a block.
fn grid(work: u32) -> LaunchConfig {
    let blocks = work.div_ceil(256).clamp(1, 1 << 16);
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

fn not_cpu<T>(op: &str) -> Result<T> {
    bail!("{op}: a CUDA kernel only (the CPU path has its own, crate::kernels)")
}

fn same_dtype(a: &CudaStorage, b: &CudaStorage, op: &str) -> Result<()> {
    if a.dtype() != b.dtype() {
        bail!("{op}: dtypes differ ({:?} and {:?})", a.dtype(), b.dtype());
    }
    Ok(())
}

/// Runs `$call` with `T` the element type of `$storage`: f32, f16 or bf16,
/// the dtypes the kernels exist in; any other fails naming `$op`.
macro_rules! by_dtype {
    ($storage:expr, $op:expr, |$t:ident| $call:expr) => {
        match &$storage.slice {
            CudaStorageSlice::F32(_) => {
                type $t = f32;
                $call
            }
            CudaStorageSlice::F16(_) => {
                type $t = half::f16;
                $call
            }
            CudaStorageSlice::BF16(_) => {
                type $t = half::bf16;
                $call
            }
            _ => bail!("{}: no fused CUDA kernel for {:?}", $op, $storage.dtype()),
        }
    };
}

// ---------------------------------------------------------------- bias + act

struct BiasAct(Act);

impl BiasAct {
    fn go<T: DeviceRepr + CudaDType>(
        &self,
        dev: &CudaDevice,
        y: &mut CudaStorage,
        yl: &Layout,
        bias: &CudaStorage,
        bl: &Layout,
    ) -> Result<()> {
        let op = "bias_act";
        let dtype = y.dtype();
        let (yr, br) = (range(yl, op, "the output")?, range(bl, op, "the bias")?);
        let n = *yl.dims().last().unwrap_or(&0);
        if bl.dims() != [n] {
            bail!("{op}: bias {:?} does not match rows of {n}", bl.dims());
        }
        let total = check_count(yr.len(), op)?;
        if total == 0 {
            return Ok(());
        }
        let f = dev.get_or_load_custom_func(&kernel(op, dtype)?, MODULE, ptx::ENCODER)?;
        let b = bias.as_cuda_slice::<T>()?.slice(br);
        let mut yv = y.as_cuda_slice_mut::<T>()?.slice_mut(yr);
        let (n, act) = (n as u32, self.0 as i32);
        let mut builder = f.builder();
        builder.arg(&mut yv).arg(&b).arg(&total).arg(&n).arg(&act);
        // Safety: the argument types match the kernel's signature.
        unsafe { builder.launch(grid(total)) }.w()?;
        Ok(())
    }
}

impl InplaceOp2 for BiasAct {
    fn name(&self) -> &'static str {
        "df-bias-act"
    }
    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<()> {
        not_cpu(InplaceOp2::name(self))
    }
    fn cuda_fwd(&self, y: &mut CudaStorage, yl: &Layout, bias: &CudaStorage, bl: &Layout) -> Result<()> {
        same_dtype(y, bias, "bias_act")?;
        let dev = y.device.clone();
        by_dtype!(y, "bias_act", |T| self.go::<T>(&dev, y, yl, bias, bl))
    }
}

/// `y = act(y + bias)` in place, `bias` broadcast over the rows of `y`
/// (`[.., n]`, contiguous, the same dtype).
pub fn bias_act(y: &Tensor, bias: &Tensor, act: Act) -> Result<()> {
    y.inplace_op2(bias, &BiasAct(act))
}

// ---------------------------------------- bias + residual + layer norm

struct BiasResidualLayerNorm {
    eps: f32,
}

impl BiasResidualLayerNorm {
    #[allow(clippy::too_many_arguments)]
    fn go<T: DeviceRepr + CudaDType>(
        &self,
        dev: &CudaDevice,
        y: &mut CudaStorage,
        yl: &Layout,
        residual: &CudaStorage,
        rl: &Layout,
        params: &CudaStorage,
        pl: &Layout,
    ) -> Result<()> {
        let op = "bias_residual_layer_norm";
        let dtype = y.dtype();
        let (yr, rr, pr) =
            (range(yl, op, "the output")?, range(rl, op, "the residual")?, range(pl, op, "params")?);
        let n = *yl.dims().last().unwrap_or(&0);
        if rl.dims() != yl.dims() {
            bail!("{op}: residual {:?} is not the shape of {:?}", rl.dims(), yl.dims());
        }
        if pl.dims() != [3, n] {
            bail!("{op}: params {:?} are not [3, {n}] (bias, weight, norm bias)", pl.dims());
        }
        check_count(yr.len(), op)?;
        if n == 0 || yr.is_empty() {
            return Ok(());
        }
        let rows = check_count(yr.len() / n, op)?;
        let f = dev.get_or_load_custom_func(&kernel(op, dtype)?, MODULE, ptx::ENCODER)?;
        let r = residual.as_cuda_slice::<T>()?.slice(rr);
        let p = params.as_cuda_slice::<T>()?.slice(pr);
        let mut yv = y.as_cuda_slice_mut::<T>()?.slice_mut(yr);
        let n = n as u32;
        let threads = n.next_multiple_of(32).clamp(32, 256);
        let cfg = LaunchConfig { grid_dim: (rows, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
        let mut builder = f.builder();
        builder.arg(&mut yv).arg(&r).arg(&p).arg(&n).arg(&self.eps);
        // Safety: the argument types match the kernel's signature.
        unsafe { builder.launch(cfg) }.w()?;
        Ok(())
    }
}

impl InplaceOp3 for BiasResidualLayerNorm {
    fn name(&self) -> &'static str {
        "df-bias-residual-layer-norm"
    }
    fn cpu_fwd(
        &self,
        _: &mut CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<()> {
        not_cpu(InplaceOp3::name(self))
    }
    fn cuda_fwd(
        &self,
        y: &mut CudaStorage,
        yl: &Layout,
        residual: &CudaStorage,
        rl: &Layout,
        params: &CudaStorage,
        pl: &Layout,
    ) -> Result<()> {
        let op = "bias_residual_layer_norm";
        same_dtype(y, residual, op)?;
        same_dtype(y, params, op)?;
        let dev = y.device.clone();
        by_dtype!(y, op, |T| self.go::<T>(&dev, y, yl, residual, rl, params, pl))
    }
}

/// `y = LayerNorm(y + bias + residual)` in place over the last dimension
/// (`n`), with `params` `[3, n]` holding the dense layer's bias, the norm's
/// weight and the norm's bias; statistics in f32.
pub fn bias_residual_layer_norm(y: &Tensor, residual: &Tensor, params: &Tensor, eps: f32) -> Result<()> {
    y.inplace_op3(residual, params, &BiasResidualLayerNorm { eps })
}

// ------------------------------------------------------- Q/K/V split

struct QkvSplit {
    heads: usize,
}

impl QkvSplit {
    fn go<T: DeviceRepr + CudaDType>(
        &self,
        dev: &CudaDevice,
        qkv: &CudaStorage,
        ql: &Layout,
        bias: &CudaStorage,
        bl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let op = "qkv_split";
        let (qr, br) = (range(ql, op, "the projections")?, range(bl, op, "the bias")?);
        let &[b, l, h3] = ql.dims() else {
            bail!("{op}: projections {:?} are not [batch, len, 3 * hidden]", ql.dims())
        };
        if h3 % 3 != 0 || (h3 / 3) % self.heads.max(1) != 0 || self.heads == 0 {
            bail!("{op}: width {h3} is not 3 * heads ({}) * head size", self.heads);
        }
        if bl.dims() != [h3] {
            bail!("{op}: bias {:?} does not match width {h3}", bl.dims());
        }
        let d = h3 / 3 / self.heads;
        let total = check_count(qr.len(), op)?;
        let shape = Shape::from((3, b, self.heads, l, d));
        // Safety: every element is written by the kernel before it is read.
        let mut out = unsafe { dev.alloc::<T>(total as usize)? };
        if total > 0 {
            let f = dev.get_or_load_custom_func(&kernel(op, qkv.dtype())?, MODULE, ptx::ENCODER)?;
            let x = qkv.as_cuda_slice::<T>()?.slice(qr);
            let bv = bias.as_cuda_slice::<T>()?.slice(br);
            let (b32, l32, h32, d32) = (b as u32, l as u32, self.heads as u32, d as u32);
            let mut builder = f.builder();
            builder.arg(&x).arg(&bv).arg(&mut out).arg(&b32).arg(&l32).arg(&h32).arg(&d32);
            // Safety: the argument types match the kernel's signature.
            unsafe { builder.launch(grid(total)) }.w()?;
        }
        Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), shape))
    }
}

impl CustomOp2 for QkvSplit {
    fn name(&self) -> &'static str {
        "df-qkv-split"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        not_cpu(CustomOp2::name(self))
    }
    fn cuda_fwd(
        &self,
        qkv: &CudaStorage,
        ql: &Layout,
        bias: &CudaStorage,
        bl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        same_dtype(qkv, bias, "qkv_split")?;
        let dev = qkv.device.clone();
        by_dtype!(qkv, "qkv_split", |T| self.go::<T>(&dev, qkv, ql, bias, bl))
    }
}

/// The fused Q/K/V projections `[b, l, 3 * hidden]` (query, key, value
/// blocks in that order) plus `bias` (`[3 * hidden]`), split into heads:
/// `[3, b, heads, l, head_dim]`, contiguous (index 0 is q, 1 k, 2 v).
pub fn qkv_split(qkv: &Tensor, bias: &Tensor, heads: usize) -> Result<Tensor> {
    qkv.apply_op2_no_bwd(bias, &QkvSplit { heads })
}

// -------------------------------------------------------- masked softmax

struct LengthMaskedSoftmax;

impl LengthMaskedSoftmax {
    fn go<T: DeviceRepr + CudaDType>(
        &self,
        dev: &CudaDevice,
        s: &mut CudaStorage,
        sl: &Layout,
        lengths: &CudaStorage,
        ll: &Layout,
    ) -> Result<()> {
        let op = "masked_softmax";
        let (sr, lr) = (range(sl, op, "the scores")?, range(ll, op, "the lengths")?);
        let &[b, heads, l, len] = sl.dims() else {
            bail!("{op}: scores {:?} are not [b, heads, l, len]", sl.dims())
        };
        if ll.dims() != [b] {
            bail!("{op}: lengths {:?} are not [{b}]", ll.dims());
        }
        check_count(sr.len(), op)?;
        let rows = (b * heads * l) as u32;
        if rows == 0 || len == 0 {
            return Ok(());
        }
        let f = dev.get_or_load_custom_func(&kernel(op, s.dtype())?, MODULE, ptx::ENCODER)?;
        let lv = lengths.as_cuda_slice::<u32>()?.slice(lr);
        let mut sv = s.as_cuda_slice_mut::<T>()?.slice_mut(sr);
        let (per_seq, len) = ((heads * l) as u32, len as u32);
        // One warp per row, four rows a block.
        let cfg =
            LaunchConfig { grid_dim: (rows.div_ceil(4), 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
        let mut builder = f.builder();
        builder.arg(&mut sv).arg(&lv).arg(&rows).arg(&per_seq).arg(&len);
        // Safety: the argument types match the kernel's signature.
        unsafe { builder.launch(cfg) }.w()?;
        Ok(())
    }
}

impl InplaceOp2 for LengthMaskedSoftmax {
    fn name(&self) -> &'static str {
        "df-masked-softmax"
    }
    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<()> {
        not_cpu(InplaceOp2::name(self))
    }
    fn cuda_fwd(&self, s: &mut CudaStorage, sl: &Layout, lengths: &CudaStorage, ll: &Layout) -> Result<()> {
        if lengths.dtype() != DType::U32 {
            bail!("masked_softmax: lengths must be u32, not {:?}", lengths.dtype());
        }
        let dev = s.device.clone();
        by_dtype!(s, "masked_softmax", |T| self.go::<T>(&dev, s, sl, lengths, ll))
    }
}

/// Softmaxes attention scores `[b, heads, l, len]` over the last dimension
/// in place, in f32, giving key `j` of sequence `s` probability 0 when `j >=
/// lengths[s]` (`lengths`: `[b]` u32 on the same device).
pub fn masked_softmax(scores: &Tensor, lengths: &Tensor) -> Result<()> {
    scores.inplace_op2(lengths, &LengthMaskedSoftmax)
}

// ------------------------------------------------------------ merge heads

struct MergeHeads;

impl MergeHeads {
    fn go<T: DeviceRepr + CudaDType>(
        &self,
        dev: &CudaDevice,
        ctx: &CudaStorage,
        cl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let op = "merge_heads";
        let cr = range(cl, op, "the context")?;
        let &[b, heads, l, d] = cl.dims() else {
            bail!("{op}: context {:?} is not [b, heads, l, head_dim]", cl.dims())
        };
        let total = check_count(cr.len(), op)?;
        // Safety: every element is written by the kernel before it is read.
        let mut out = unsafe { dev.alloc::<T>(total as usize)? };
        if total > 0 {
            let f = dev.get_or_load_custom_func(&kernel(op, ctx.dtype())?, MODULE, ptx::ENCODER)?;
            let x = ctx.as_cuda_slice::<T>()?.slice(cr);
            let (b32, l32, h32, d32) = (b as u32, l as u32, heads as u32, d as u32);
            let mut builder = f.builder();
            builder.arg(&x).arg(&mut out).arg(&b32).arg(&l32).arg(&h32).arg(&d32);
            // Safety: the argument types match the kernel's signature.
            unsafe { builder.launch(grid(total)) }.w()?;
        }
        Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), Shape::from((b, l, heads * d))))
    }
}

impl CustomOp1 for MergeHeads {
    fn name(&self) -> &'static str {
        "df-merge-heads"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        not_cpu(CustomOp1::name(self))
    }
    fn cuda_fwd(&self, ctx: &CudaStorage, cl: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = ctx.device.clone();
        by_dtype!(ctx, "merge_heads", |T| self.go::<T>(&dev, ctx, cl))
    }
}

/// The attention context `[b, heads, l, head_dim]` (contiguous) merged back
/// to `[b, l, heads * head_dim]`.
pub fn merge_heads(ctx: &Tensor) -> Result<Tensor> {
    ctx.apply_op1_no_bwd(&MergeHeads)
}
