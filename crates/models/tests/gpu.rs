//! The embedder on a real NVIDIA GPU. These tests exist only in a build with
//! the `cuda` feature (`cargo test -p datafactory-models --features cuda
//! --test gpu`), which needs the CUDA toolkit to build and a GPU to run: CI
//! has neither, so they are run on a GPU machine by `bench/gpu/check.sh`
//! (see docs/BENCHMARKS.md, "GPU"). The tests share one GPU and one of them
//! fills its memory, so they take a lock and run one at a time.
//!
//! Each of our fused kernels (`datafactory_models::cuda_kernels`) is checked
//! against the same arithmetic on the CPU in f32, from the same (rounded)
//! inputs, in f32, f16 and bf16 and over odd widths (the kernels' scalar
//! path), widths of whole 16-byte vectors, length 1, a batch of one and the
//! longest input the embedder takes (512 tokens); then the whole encoder,
//! embedder and cross-encoder, with the kernels on and off
//! (`DATAFACTORY_CUDA_FUSED`) against the CPU f32 model.
#![cfg(feature = "cuda")]

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use datafactory_models::cuda_kernels::{self as cu, Act};
use datafactory_models::{gpu, CandleEmbedder, Embedder, Embedding, InputKind};
use std::sync::Mutex;

static GPU: Mutex<()> = Mutex::new(());

fn load(dir: &std::path::Path, device: &str, dtype: &str) -> CandleEmbedder {
    let mut config = config_for(dir);
    config.device = device.to_string();
    config.dtype = dtype.to_string();
    CandleEmbedder::load(&config).unwrap()
}

fn embed(e: &dyn Embedder, texts: &[String]) -> Vec<Embedding> {
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    e.embed(&refs, InputKind::Passage).unwrap()
}

fn worst_cosine(a: &[Embedding], b: &[Embedding]) -> f32 {
    a.iter().zip(b).map(|(x, y)| cosine(&x.dense, &y.dense)).fold(1.0, f32::min)
}

#[test]
fn cuda_matches_the_cpu_in_every_dtype() {
    let _gpu = GPU.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let texts = sample_texts();
    for dir in [tiny_bert(&tmp.path().join("bert"), "mean"), tiny_xlmr(&tmp.path().join("xlmr"))] {
        let reference = embed(&load(&dir, "cpu", "f32"), &texts);
        for dtype in ["f32", "f16", "bf16"] {
            let e = load(&dir, "cuda", dtype);
            assert!(e.device().is_cuda(), "{dtype}: not on the GPU");
            let got = embed(&e, &texts);
            for v in &got {
                assert!(v.dense.iter().all(|x| x.is_finite()), "{dtype}: NaN or inf on the GPU");
                assert!((norm(&v.dense) - 1.0).abs() < 1e-3, "{dtype}: not unit length");
            }
            let worst = worst_cosine(&reference, &got);
            let floor = if dtype == "f32" { 0.99999 } else { 0.99 };
            println!("{} {dtype}: worst cosine against CPU f32 {worst}", dir.display());
            assert!(worst >= floor, "{dtype}: cosine {worst} < {floor}");
            assert_eq!(e.stats().gpu_fallbacks, 0);
        }
    }
}

/// Takes the GPU's memory in ever smaller blocks until not even 256 bytes can
/// be had; returns the blocks (dropping them gives the memory back).
fn fill(device: &Device) -> Vec<Tensor> {
    let mut held = Vec::new();
    for block in [1usize << 30, 64 << 20, 1 << 20, 64 << 10, 4 << 10, 256] {
        while let Ok(t) = Tensor::zeros(block, DType::U8, device) {
            held.push(t);
        }
    }
    held
}

#[test]
fn out_of_memory_on_the_gpu_falls_back_to_the_cpu() {
    let _gpu = GPU.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_xlmr(&tmp.path().join("xlmr"));
    let texts = sample_texts();
    let reference = embed(&load(&dir, "cpu", "f32"), &texts);
    let e = load(&dir, "cuda", "f16");
    let before = embed(&e, &texts);
    assert_eq!(e.stats().gpu_fallbacks, 0);

    let held = fill(e.device());
    let free = gpu::memory(e.device()).unwrap().free;
    println!("filled the GPU with {} blocks; {free} bytes free", held.len());
    let during = embed(&e, &texts);
    let fallbacks = e.stats().gpu_fallbacks;
    assert!(fallbacks >= 1, "no batch fell back to the CPU");
    assert!(worst_cosine(&reference, &during) >= 0.99999, "the CPU fallback is the f32 model");
    drop(held);

    // The GPU works again once memory is free.
    let after = embed(&e, &texts);
    assert_eq!(e.stats().gpu_fallbacks, fallbacks);
    assert!(worst_cosine(&before, &after) >= 0.99999);
}

#[test]
fn cached_gpu_memory_is_released_after_a_job() {
    let _gpu = GPU.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_xlmr(&tmp.path().join("xlmr"));
    let e = load(&dir, "cuda", "f32");
    let texts = sample_texts();
    embed(&e, &texts);
    // A tiny model's activations fit the pool's first block, which holds its
    // weights too and can't be trimmed: stand in for a big job's activations
    // with 512 MiB made and freed on the model's device.
    let big = Tensor::zeros(512usize << 20, DType::U8, e.device()).unwrap();
    drop(big);
    embed(&e, &texts);
    let held = gpu::memory(e.device()).expect("memory of a CUDA device");
    println!("after the job: {held:?}");
    assert!(held.pool_reserved >= held.pool_used + (512 << 20), "the pool did not keep the freed memory");
    let (before, after) = e.release_cached_memory().expect("a CUDA embedder releases memory");
    let now = gpu::memory(e.device()).unwrap();
    println!("released: {before} -> {after} bytes; now {now:?}");
    assert!(after + (512 << 20) <= before, "the freed memory was not released");
    assert!(now.free >= held.free + (512 << 20), "the driver did not get the memory back");
    // And the embedder still works afterwards.
    assert_eq!(embed(&e, &texts).len(), texts.len());
}

/// The reranker's configuration for the model in `dir` on `device` in `dtype`.
fn rerank_config(dir: &std::path::Path, device: &str, dtype: &str) -> datafactory_core::config::RerankConfig {
    datafactory_core::config::RerankConfig {
        model: dir.to_str().unwrap().to_string(),
        allow_download: false,
        device: device.to_string(),
        dtype: dtype.to_string(),
        ..Default::default()
    }
}

#[test]
fn the_cross_encoder_on_cuda_matches_the_cpu() {
    let _gpu = GPU.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_xlmr_reranker(&tmp.path().join("reranker"), 1);
    let texts = sample_texts();
    let pairs: Vec<(&str, &str)> = texts.iter().map(|t| ("search the index", t.as_str())).collect();
    let config = |device: &str, dtype: &str| rerank_config(&dir, device, dtype);
    let reference =
        datafactory_models::CandleReranker::load(&config("cpu", "f32")).unwrap().score_pairs(&pairs).unwrap();
    for dtype in ["f32", "f16", "bf16"] {
        let r = datafactory_models::CandleReranker::load(&config("cuda", dtype)).unwrap();
        assert!(r.device().is_cuda());
        let scores = r.score_pairs(&pairs).unwrap();
        let worst = reference.iter().zip(&scores).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        println!("cross-encoder {dtype}: largest logit difference against CPU f32 {worst}");
        assert!(scores.iter().all(|s| s.is_finite()), "{dtype}: NaN or inf");
        assert!(worst <= if dtype == "f32" { 1e-4 } else { 0.05 }, "{dtype}: logits differ by {worst}");
    }
}

// ------------------------------------------------------------------------
// Each fused kernel against the CPU in f32.

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

/// One CUDA device (one stream) for every kernel test: tensors made on
/// different candle devices could not meet in one op.
fn cuda() -> Device {
    static DEVICE: std::sync::OnceLock<Device> = std::sync::OnceLock::new();
    DEVICE.get_or_init(|| Device::new_cuda(0).expect("a CUDA device")).clone()
}

/// A random tensor on the GPU in `dtype`, and its values (as rounded to
/// `dtype`) in f32 for the CPU reference.
fn input(rng: &mut Rng, shape: &[usize], scale: f32, offset: f32, dtype: DType) -> (Tensor, Vec<f32>) {
    let t = rng.tensor(shape, scale, offset).to_dtype(dtype).unwrap();
    let values = t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    (t.to_device(&cuda()).unwrap(), values)
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_device(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

/// `v` rounded to `dtype` and back, as a kernel that stores in `dtype` does.
fn rounded(v: &[f32], dtype: DType) -> Vec<f32> {
    let t = Tensor::from_slice(v, v.len(), &Device::Cpu).unwrap();
    t.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap().to_vec1().unwrap()
}

/// Tolerances: the output's rounding to `dtype` (twice, for kernels that
/// round an intermediate), plus f32 arithmetic's own.
fn tolerance(dtype: DType) -> (f32, f32) {
    match dtype {
        DType::F32 => (1e-5, 1e-5),
        DType::F16 => (2e-3, 2e-3),
        _ => (1.6e-2, 1.6e-2),
    }
}

fn assert_close(what: &str, dtype: DType, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what} {dtype:?}: sizes differ");
    let (atol, rtol) = tolerance(dtype);
    let mut worst = 0f32;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(g.is_finite(), "{what} {dtype:?}: element {i} is {g}");
        let err = (g - w).abs();
        assert!(err <= atol + rtol * w.abs(), "{what} {dtype:?}: element {i} is {g}, the CPU says {w}");
        worst = worst.max(err);
    }
    println!("{what} {dtype:?}: largest difference {worst:e} over {} elements", got.len());
}

fn gelu_erf(x: f32) -> f32 {
    // The CPU's exact GELU, in f32 through candle's CPU kernel.
    let t = Tensor::new(&[x], &Device::Cpu).unwrap();
    t.gelu_erf().unwrap().to_vec1::<f32>().unwrap()[0]
}

fn act_cpu(x: f32, act: Act) -> f32 {
    match act {
        Act::None => x,
        Act::GeluErf => gelu_erf(x),
        Act::GeluTanh => 0.5 * x * (1.0 + (0.797_884_6 * (x + 0.044715 * x * x * x)).tanh()),
        Act::Relu => x.max(0.0),
    }
}

#[test]
fn fused_bias_and_activation_match_the_cpu() {
    let _gpu = GPU.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = Rng::new(1);
    // [rows, n]: one element, odd widths (scalar path), whole vectors, bge-m3's FFN.
    for &(rows, n) in &[(1, 1), (3, 37), (5, 64), (33, 1024), (7, 4096)] {
        for dtype in DTYPES {
            for act in [Act::None, Act::GeluErf, Act::GeluTanh, Act::Relu] {
                let (y, yv) = input(&mut rng, &[rows, n], 3.0, 0.0, dtype);
                let (bias, bv) = input(&mut rng, &[n], 0.5, 0.0, dtype);
                cu::bias_act(&y, &bias, act).unwrap();
                let want: Vec<f32> = (0..rows * n).map(|i| act_cpu(yv[i] + bv[i % n], act)).collect();
                assert_close(
                    &format!("bias_act {act:?} [{rows}, {n}]"),
                    dtype,
                    &values(&y),
                    &rounded(&want, dtype),
                );
            }
        }
    }
}

#[test]
fn fused_bias_residual_layer_norm_matches_the_cpu() {
    let _gpu = GPU.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = Rng::new(2);
    let eps = 1e-5f32;
    for &(rows, n) in &[(1, 1), (1, 32), (3, 37), (17, 384), (9, 1024), (2, 1000)] {
        for dtype in DTYPES {
            let (y, yv) = input(&mut rng, &[rows, n], 2.0, 0.0, dtype);
            let (res, rv) = input(&mut rng, &[rows, n], 2.0, 0.5, dtype);
            let (params, pv) = input(&mut rng, &[3, n], 0.5, 0.0, dtype);
            cu::bias_residual_layer_norm(&y, &res, &params, eps).unwrap();
            let mut want = Vec::with_capacity(rows * n);
            for r in 0..rows {
                let sum: Vec<f32> = (0..n).map(|c| yv[r * n + c] + pv[c] + rv[r * n + c]).collect();
                // The kernel stores the sum in the model's dtype, as PyTorch does.
                let v = rounded(&sum, dtype);
                let mean = v.iter().sum::<f32>() / n as f32;
                let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / n as f32;
                let rstd = 1.0 / (var + eps).sqrt();
                want.extend((0..n).map(|c| (v[c] - mean) * rstd * pv[n + c] + pv[2 * n + c]));
            }
            assert_close(
                &format!("bias_residual_layer_norm [{rows}, {n}]"),
                dtype,
                &values(&y),
                &rounded(&want, dtype),
            );
        }
    }
}

/// (batch, heads, len, head_dim): length 1, a batch of one, odd lengths, a
/// head size that is not a whole vector (12), bge-m3's 16 x 64 at 512 tokens.
const ATTENTION_SHAPES: [(usize, usize, usize, usize); 6] =
    [(1, 1, 1, 64), (1, 16, 1, 64), (3, 4, 17, 8), (5, 12, 33, 12), (2, 16, 512, 64), (4, 2, 7, 3)];

#[test]
fn fused_qkv_split_matches_the_cpu() {
    let _gpu = GPU.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = Rng::new(3);
    for &(b, heads, l, d) in &ATTENTION_SHAPES {
        let h = heads * d;
        for dtype in DTYPES {
            let (qkv, xv) = input(&mut rng, &[b, l, 3 * h], 2.0, 0.0, dtype);
            let (bias, bv) = input(&mut rng, &[3 * h], 0.5, 0.0, dtype);
            let out = cu::qkv_split(&qkv, &bias, heads).unwrap();
            assert_eq!(out.dims(), &[3, b, heads, l, d]);
            let mut want = vec![0f32; 3 * b * heads * l * d];
            for bi in 0..b {
                for li in 0..l {
                    for c in 0..3 * h {
                        let (which, head, dd) = (c / h, (c % h) / d, c % d);
                        let o = (((which * b + bi) * heads + head) * l + li) * d + dd;
                        want[o] = xv[(bi * l + li) * 3 * h + c] + bv[c];
                    }
                }
            }
            let what = format!("qkv_split b={b} heads={heads} l={l} d={d}");
            assert_close(&what, dtype, &values(&out), &rounded(&want, dtype));
        }
    }
}

#[test]
fn fused_masked_softmax_matches_the_cpu() {
    let _gpu = GPU.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = Rng::new(4);
    for &(b, heads, l, _) in &ATTENTION_SHAPES {
        // The longest sequence fills the padded length; the others are shorter, down to 1.
        let lengths: Vec<u32> =
            (0..b).map(|i| (if i == 0 { l } else { 1 + (l * 7 + i * 5) % l }) as u32).collect();
        for dtype in DTYPES {
            let (scores, sv) = input(&mut rng, &[b, heads, l, l], 8.0, 0.0, dtype);
            let lens = Tensor::from_slice(&lengths, b, &cuda()).unwrap();
            cu::masked_softmax(&scores, &lens).unwrap();
            let got = values(&scores);
            // The CPU path: the additive f32 mask, then softmax.
            let mut want = Vec::with_capacity(sv.len());
            for (row, chunk) in sv.chunks(l).enumerate() {
                let valid = lengths[row / (heads * l)] as usize;
                let masked: Vec<f32> = chunk
                    .iter()
                    .enumerate()
                    .map(|(j, &x)| x + if j < valid { 0.0 } else { datafactory_models::encoder::MASK_VALUE })
                    .collect();
                let m = masked.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = masked.iter().map(|x| (x - m).exp()).collect();
                let s: f32 = e.iter().sum();
                want.extend(e.iter().map(|x| x / s));
            }
            for (i, g) in got.iter().enumerate() {
                let (row, j) = (i / l, i % l);
                if j >= lengths[row / (heads * l)] as usize {
                    assert_eq!(*g, 0.0, "masked_softmax {dtype:?}: padding key {j} of row {row} has {g}");
                }
            }
            let what = format!("masked_softmax b={b} heads={heads} l={l} lengths={lengths:?}");
            assert_close(&what, dtype, &got, &rounded(&want, dtype));
        }
    }
}

#[test]
fn fused_merge_heads_matches_the_cpu() {
    let _gpu = GPU.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = Rng::new(5);
    for &(b, heads, l, d) in &ATTENTION_SHAPES {
        for dtype in DTYPES {
            let (ctx, cv) = input(&mut rng, &[b, heads, l, d], 2.0, 0.0, dtype);
            let out = cu::merge_heads(&ctx).unwrap();
            assert_eq!(out.dims(), &[b, l, heads * d]);
            let mut want = vec![0f32; cv.len()];
            for bi in 0..b {
                for head in 0..heads {
                    for li in 0..l {
                        for dd in 0..d {
                            want[(bi * l + li) * heads * d + head * d + dd] =
                                cv[((bi * heads + head) * l + li) * d + dd];
                        }
                    }
                }
            }
            // A copy: exact in every dtype.
            assert_eq!(values(&out), want, "merge_heads b={b} heads={heads} l={l} d={d} {dtype:?}");
        }
    }
}

#[test]
fn the_fused_kernels_refuse_bad_shapes_with_a_clear_error() {
    let _gpu = GPU.lock().unwrap_or_else(|e| e.into_inner());
    let dev = cuda();
    let y = Tensor::zeros((2, 8), DType::F16, &dev).unwrap();
    let err = cu::bias_act(&y, &Tensor::zeros(7, DType::F16, &dev).unwrap(), Act::None).unwrap_err();
    assert!(err.to_string().contains("bias"), "{err}");
    let err = cu::bias_act(&y, &Tensor::zeros(8, DType::F32, &dev).unwrap(), Act::None).unwrap_err();
    assert!(err.to_string().contains("dtypes differ"), "{err}");
    let err = cu::qkv_split(
        &Tensor::zeros((1, 2, 10), DType::F16, &dev).unwrap(),
        &Tensor::zeros(10, DType::F16, &dev).unwrap(),
        4,
    )
    .unwrap_err();
    assert!(err.to_string().contains("3 * heads"), "{err}");
    let scores = Tensor::zeros((2, 1, 3, 3), DType::F16, &dev).unwrap();
    let err = cu::masked_softmax(&scores, &Tensor::zeros(2, DType::F32, &dev).unwrap()).unwrap_err();
    assert!(err.to_string().contains("u32"), "{err}");
    let err =
        cu::merge_heads(&Tensor::zeros((2, 4, 3, 8), DType::F16, &dev).unwrap().transpose(1, 2).unwrap())
            .unwrap_err();
    assert!(err.to_string().contains("contiguous"), "{err}");
}

// ------------------------------------------------------------------------
// The whole encoder: fused kernels on and off against the CPU.

/// Runs `f` with the fused kernels switched `on`, then switches them back on
/// (the default).
fn with_fused<T>(on: bool, f: impl FnOnce() -> T) -> T {
    cu::set_fused(on);
    let out = f();
    cu::set_fused(true);
    out
}

#[test]
fn the_fused_encoder_matches_candle_ops_and_the_cpu() {
    let _gpu = GPU.lock().unwrap_or_else(|e| e.into_inner());
    assert!(cu::active(&cuda(), DType::F16), "the fused kernels did not load");
    let tmp = tempfile::tempdir().unwrap();
    let texts = sample_texts();
    for dir in [tiny_bert(&tmp.path().join("bert"), "mean"), tiny_xlmr(&tmp.path().join("xlmr"))] {
        let reference = embed(&load(&dir, "cpu", "f32"), &texts);
        for dtype in ["f32", "f16", "bf16"] {
            let fused = with_fused(true, || embed(&load(&dir, "cuda", dtype), &texts));
            let candle = with_fused(false, || embed(&load(&dir, "cuda", dtype), &texts));
            let (vs_cpu, vs_candle) = (worst_cosine(&reference, &fused), worst_cosine(&candle, &fused));
            let candle_vs_cpu = worst_cosine(&reference, &candle);
            println!(
                "{} {dtype}: worst cosine fused vs CPU f32 {vs_cpu}, fused vs candle ops {vs_candle}, candle ops vs CPU f32 {candle_vs_cpu}",
                dir.display()
            );
            let floor = if dtype == "f32" { 0.99999 } else { 0.99 };
            assert!(vs_cpu >= floor, "{dtype}: fused cosine against the CPU {vs_cpu} < {floor}");
            assert!(
                candle_vs_cpu >= floor,
                "{dtype}: candle ops' cosine against the CPU {candle_vs_cpu} < {floor}"
            );
        }
    }
}

#[test]
fn the_fused_cross_encoder_matches_candle_ops_and_the_cpu() {
    let _gpu = GPU.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_xlmr_reranker(&tmp.path().join("reranker"), 1);
    let texts = sample_texts();
    let pairs: Vec<(&str, &str)> = texts.iter().map(|t| ("search the index", t.as_str())).collect();
    let config = |device: &str, dtype: &str| rerank_config(&dir, device, dtype);
    let score = |device: &str, dtype: &str| {
        datafactory_models::CandleReranker::load(&config(device, dtype)).unwrap().score_pairs(&pairs).unwrap()
    };
    let reference = score("cpu", "f32");
    let largest = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    for dtype in ["f32", "f16", "bf16"] {
        let fused = with_fused(true, || score("cuda", dtype));
        let candle = with_fused(false, || score("cuda", dtype));
        assert!(fused.iter().all(|s| s.is_finite()), "{dtype}: NaN or inf");
        let (vs_cpu, candle_vs_cpu) = (largest(&reference, &fused), largest(&reference, &candle));
        println!(
            "cross-encoder {dtype}: largest logit difference fused vs CPU f32 {vs_cpu}, candle ops vs CPU f32 {candle_vs_cpu}, fused vs candle ops {}",
            largest(&candle, &fused)
        );
        let limit = if dtype == "f32" { 1e-4 } else { 0.05 };
        assert!(vs_cpu <= limit, "{dtype}: fused logits differ from the CPU by {vs_cpu}");
        assert!(candle_vs_cpu <= limit, "{dtype}: candle ops' logits differ from the CPU by {candle_vs_cpu}");
    }
}
