//! The embedder on a real NVIDIA GPU. These tests exist only in a build with
//! the `cuda` feature (`cargo test -p datafactory-models --features cuda
//! --test gpu`), which needs the CUDA toolkit to build and a GPU to run: CI
//! has neither, so they are run on a GPU machine by `bench/gpu/check.sh`
//! (see docs/BENCHMARKS.md, "GPU"). The tests share one GPU and one of them
//! fills its memory, so they take a lock and run one at a time.
#![cfg(feature = "cuda")]

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
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

#[test]
fn the_cross_encoder_on_cuda_matches_the_cpu() {
    let _gpu = GPU.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_xlmr_reranker(&tmp.path().join("reranker"), 1);
    let texts = sample_texts();
    let pairs: Vec<(&str, &str)> = texts.iter().map(|t| ("search the index", t.as_str())).collect();
    let config = |device: &str, dtype: &str| datafactory_core::config::RerankConfig {
        model: dir.to_str().unwrap().to_string(),
        allow_download: false,
        device: device.to_string(),
        dtype: dtype.to_string(),
        ..Default::default()
    };
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
