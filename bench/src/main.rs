//! Benchmark drivers: the Rust side of the comparisons in `bench/*.py`.
//! Each prints one JSON object per measurement on stdout; the Python script
//! that calls it runs the peer on the same data in the same run and prints
//! the ratios. See docs/BENCHMARKS.md.

mod backends;

use anyhow::{bail, Context, Result};
use datafactory_models::Embedder;
use datafactory_store::vectors::{VectorIndex, VectorOptions};
use std::path::Path;
use std::time::Instant;

/// The same allocator as the `datafactory` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("vectors") => vectors(&args[1..]),
        Some("embed") => embed(&args[1..]),
        Some("rerank") => rerank(&args[1..]),
        Some("search-during-ingest") => search_during_ingest(&args[1..]),
        Some("backends") => backends::backends(&args[1..]),
        _ => bail!(
            "usage: datafactory-bench vectors DIR QUANTIZATION EF[,EF...] \
             | embed MODEL_DIR TEXTS.json BATCH [DTYPE] [DEVICE] | rerank MODEL_DIR PAIRS.json BATCH [DTYPE] [DEVICE] \
             | search-during-ingest CHUNKS [DIM] | backends DOCS CHUNKS DIM QUERIES POSTGRES_URL"
        ),
    }
}

/// Timed runs per measurement: DATAFACTORY_BENCH_REPEATS (default 1); the
/// fastest counts.
fn repeats() -> usize {
    std::env::var("DATAFACTORY_BENCH_REPEATS").ok().and_then(|v| v.parse().ok()).unwrap_or(1).max(1)
}

/// The padded tokens a batch may hold in `embed` and `rerank`:
/// DATAFACTORY_BENCH_BATCH_TOKENS, default BATCH x 512, so that BATCH texts
/// of up to 512 tokens really make one batch (the configuration's default of
/// 16,384 would cut a batch of 128 passages of 330 tokens to 49), as they do
/// in sentence-transformers, which has no such bound.
fn batch_tokens(batch: usize) -> usize {
    std::env::var("DATAFACTORY_BENCH_BATCH_TOKENS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(batch * 512)
        .max(512)
}

/// Whether the fused CUDA kernels are switched on and loaded on `device`
/// (`DATAFACTORY_CUDA_FUSED`), for the report: `{"switch": the variable,
/// "active": bool}`; `null` without the `cuda` feature or on the CPU.
fn fused_kernels(device: &candle_core::Device) -> serde_json::Value {
    #[cfg(feature = "cuda")]
    if device.is_cuda() {
        return serde_json::json!({
            "switch": std::env::var("DATAFACTORY_CUDA_FUSED").ok(),
            "active": datafactory_models::cuda_kernels::active(device, candle_core::DType::F32),
        });
    }
    let _ = device;
    serde_json::Value::Null
}

/// The `p`-th percentile (0-100) of `v`, by the nearest rank.
fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

/// DATAFACTORY_BENCH_QUERIES=QUERIES.json (a JSON list of strings): embeds
/// each query alone, as a search does, after 10 untimed ones; the latency in
/// milliseconds (p50, p90, mean) of each call, tokenising included.
fn query_latency(embedder: &datafactory_models::CandleEmbedder) -> Result<serde_json::Value> {
    let Ok(path) = std::env::var("DATAFACTORY_BENCH_QUERIES") else { return Ok(serde_json::Value::Null) };
    let queries: Vec<String> =
        serde_json::from_slice(&std::fs::read(&path).with_context(|| format!("read {path}"))?)
            .with_context(|| format!("{path}: expected a JSON list of strings"))?;
    for q in queries.iter().take(10) {
        embedder.embed(&[q.as_str()], datafactory_core::InputKind::Query)?;
    }
    let mut ms = Vec::with_capacity(queries.len());
    for q in &queries {
        let started = Instant::now();
        embedder.embed(&[q.as_str()], datafactory_core::InputKind::Query)?;
        ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(serde_json::json!({
        "queries": ms.len(),
        "p50_ms": percentile(&ms, 50.0),
        "p90_ms": percentile(&ms, 90.0),
        "mean_ms": ms.iter().sum::<f64>() / ms.len().max(1) as f64,
    }))
}

fn read_f32(path: &Path) -> Result<Vec<f32>> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    Ok(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// `vectors DIR QUANT EFS`: DIR holds meta.json {n, d, q, k}, base.f32,
/// queries.f32 and truth.i32 (k exact neighbours per query), written by
/// bench/vectors.py. Builds DataFactory's vector index (usearch HNSW, M=16,
/// efConstruction=128) and measures single-threaded queries per second and
/// recall@k at each efSearch (the fastest of DATAFACTORY_BENCH_REPEATS runs).
fn vectors(args: &[String]) -> Result<()> {
    let [dir, quantization, efs] = args else { bail!("vectors DIR QUANTIZATION EF[,EF...]") };
    let dir = Path::new(dir);
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("meta.json"))?)?;
    let get = |k: &str| meta[k].as_u64().map(|v| v as usize).context("meta.json");
    let (n, d, q, k) = (get("n")?, get("d")?, get("q")?, get("k")?);
    let base = read_f32(&dir.join("base.f32"))?;
    let queries = read_f32(&dir.join("queries.f32"))?;
    let truth: Vec<i32> = std::fs::read(dir.join("truth.i32"))?
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let index_dir = tempfile::tempdir()?;
    let index = VectorIndex::open(
        index_dir.path(),
        &VectorOptions {
            model: "bench".into(),
            dimensions: d,
            quantization: quantization.clone(),
            connectivity: 16,
            expansion_add: 128,
            expansion_search: 64,
            exact_below: 0,
        },
    )?;
    let started = Instant::now();
    for i in 0..n {
        index.add(i as u64, &base[i * d..(i + 1) * d])?;
    }
    let build = started.elapsed().as_secs_f64();
    index.save(1)?;
    let size = std::fs::metadata(index_dir.path().join("index.usearch"))?.len();
    // EFS "-": built, say so, then measure one efSearch per line of stdin
    // (bench/vectors.py alternates them with FAISS's, so both engines see
    // the same moments of a busy machine).
    let efs: Box<dyn Iterator<Item = String>> = if efs == "-" {
        println!("{}", serde_json::json!({"ready": true, "build_seconds": build, "file_bytes": size}));
        Box::new(std::io::stdin().lines().map_while(|l| l.ok()))
    } else {
        Box::new(efs.split(',').map(str::to_string).collect::<Vec<_>>().into_iter())
    };
    for ef in efs {
        let ef: usize = ef.trim().parse()?;
        index.set_expansion_search(ef);
        let mut secs = f64::INFINITY;
        let mut found = 0usize;
        for _ in 0..repeats() {
            let started = Instant::now();
            found = 0;
            for j in 0..q {
                let hits = index.search(&queries[j * d..(j + 1) * d], k, None)?;
                let want = &truth[j * k..(j + 1) * k];
                found += hits.iter().filter(|(key, _)| want.contains(&(*key as i32))).count();
            }
            secs = secs.min(started.elapsed().as_secs_f64());
        }
        println!(
            "{}",
            serde_json::json!({
                "engine": format!("datafactory/usearch {quantization}"),
                "ef": ef,
                "qps": q as f64 / secs,
                "recall": found as f64 / (q * k) as f64,
                "build_seconds": build,
                "file_bytes": size,
            })
        );
    }
    Ok(())
}

/// `embed MODEL_DIR TEXTS.json BATCH [DTYPE] [DEVICE]`: embeds the texts (a
/// JSON list of strings) with DataFactory's embedder (`embedding.dtype`
/// DTYPE, default f32; `embedding.device` DEVICE, default cpu), once to warm
/// up on 32 texts, then all, and writes the vectors to
/// TEXTS.json.DTYPE.vectors.f32 for the cosine check. On a GPU it also
/// reports the device's memory after the run and after
/// `release_cached_memory`, and how many batches fell back to the CPU.
/// With DATAFACTORY_BENCH_QUERIES it also times single queries
/// ([`query_latency`]).
fn embed(args: &[String]) -> Result<()> {
    let (model, texts_path, batch) = match args {
        [model, texts, batch, ..] if args.len() <= 5 => (model, texts, batch),
        _ => bail!("embed MODEL_DIR TEXTS.json BATCH [DTYPE] [DEVICE]"),
    };
    let dtype = args.get(3).map_or("f32", String::as_str);
    let device = args.get(4).map_or("cpu", String::as_str);
    let texts: Vec<String> = serde_json::from_slice(&std::fs::read(texts_path)?)?;
    let batch: usize = batch.parse()?;
    let config = datafactory_core::config::EmbeddingConfig {
        model: model.clone(),
        allow_download: false,
        device: device.into(),
        batch_size: batch,
        batch_tokens: batch_tokens(batch),
        dtype: dtype.to_string(),
        sparse: false,
        ..Default::default()
    };
    let started = Instant::now();
    let embedder = datafactory_models::CandleEmbedder::load(&config)?;
    let load = started.elapsed().as_secs_f64();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    embedder.embed(&refs[..refs.len().min(32)], datafactory_core::InputKind::Passage)?;
    let mut all_seconds = Vec::new();
    let mut vectors = Vec::new();
    for _ in 0..repeats() {
        let started = Instant::now();
        vectors = embedder.embed(&refs, datafactory_core::InputKind::Passage)?;
        all_seconds.push(started.elapsed().as_secs_f64());
    }
    let secs = all_seconds.iter().copied().fold(f64::INFINITY, f64::min);
    let latency = query_latency(&embedder)?;
    let memory_after_run = datafactory_models::gpu::memory(embedder.device());
    let released = embedder.release_cached_memory();
    let memory_after_release = datafactory_models::gpu::memory(embedder.device());
    let bytes: Vec<u8> = vectors.iter().flat_map(|v| v.dense.iter().flat_map(|x| x.to_le_bytes())).collect();
    std::fs::write(format!("{texts_path}.{dtype}.vectors.f32"), bytes)?;
    let stats = embedder.stats();
    println!(
        "{}",
        serde_json::json!({
            "engine": "datafactory/candle",
            "dtype": dtype,
            "device": device,
            "fused_kernels": fused_kernels(embedder.device()),
            "model": embedder.model_id(),
            "texts": texts.len(),
            "batch": batch,
            "batch_tokens": config.batch_tokens,
            "seconds": secs,
            "all_seconds": all_seconds,
            "passages_per_second": texts.len() as f64 / secs,
            "query_latency": latency,
            "load_seconds": load,
            "tokens": stats.tokens,
            "padded_tokens": stats.padded_tokens,
            "gpu_fallbacks": stats.gpu_fallbacks,
            "gpu_memory_after_run": memory_after_run,
            "gpu_pool_released": released,
            "gpu_memory_after_release": memory_after_release,
            "stage_seconds": datafactory_models::profile::report(),
        })
    );
    Ok(())
}

/// `rerank MODEL_DIR PAIRS.json BATCH [DTYPE] [DEVICE]`: scores the pairs (a
/// JSON list of `[query, passage]`) with DataFactory's cross-encoder
/// (`rerank.dtype` DTYPE, default f32; DEVICE `cpu`, the default, or `cuda`,
/// which needs `--features cuda`), once to warm up on 32 pairs, then all, and
/// writes the raw scores to PAIRS.json.DTYPE.scores.f32 for the agreement check.
fn rerank(args: &[String]) -> Result<()> {
    let (model, pairs_path, batch, dtype, device) = match args {
        [model, pairs, batch] => (model, pairs, batch, "f32", "cpu"),
        [model, pairs, batch, dtype] => (model, pairs, batch, dtype.as_str(), "cpu"),
        [model, pairs, batch, dtype, device] => (model, pairs, batch, dtype.as_str(), device.as_str()),
        _ => bail!("rerank MODEL_DIR PAIRS.json BATCH [DTYPE] [DEVICE]"),
    };
    let pairs: Vec<(String, String)> = serde_json::from_slice(&std::fs::read(pairs_path)?)
        .with_context(|| format!("{pairs_path}: expected a JSON list of [query, passage]"))?;
    let batch: usize = batch.parse()?;
    let config = datafactory_core::config::RerankConfig {
        model: model.clone(),
        allow_download: false,
        device: device.to_string(),
        batch_size: batch,
        batch_tokens: batch_tokens(batch),
        dtype: dtype.to_string(),
        ..Default::default()
    };
    let started = Instant::now();
    let reranker = datafactory_models::CandleReranker::load(&config)?;
    let load = started.elapsed().as_secs_f64();
    let refs: Vec<(&str, &str)> = pairs.iter().map(|(q, p)| (q.as_str(), p.as_str())).collect();
    reranker.score_pairs(&refs[..refs.len().min(32)])?;
    let mut all_seconds = Vec::new();
    let mut scores = Vec::new();
    for _ in 0..repeats() {
        let started = Instant::now();
        scores = reranker.score_pairs(&refs)?;
        all_seconds.push(started.elapsed().as_secs_f64());
    }
    let secs = all_seconds.iter().copied().fold(f64::INFINITY, f64::min);
    let bytes: Vec<u8> = scores.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(format!("{pairs_path}.{dtype}.scores.f32"), bytes)?;
    let stats = datafactory_core::Reranker::stats(&reranker);
    println!(
        "{}",
        serde_json::json!({
            "engine": "datafactory/candle",
            "dtype": dtype,
            "device": device,
            "fused_kernels": fused_kernels(reranker.device()),
            "model": datafactory_core::Reranker::model_id(&reranker),
            "pairs": pairs.len(),
            "batch": config.batch_size,
            "batch_tokens": config.batch_tokens,
            "seconds": secs,
            "all_seconds": all_seconds,
            "pairs_per_second": pairs.len() as f64 / secs,
            "tokens": stats.tokens,
            "padded_tokens": stats.padded_tokens,
            "gpu_fallbacks": stats.gpu_fallbacks,
            "load_seconds": load,
        })
    );
    Ok(())
}

/// A document of `chunks` chunks (of about 40 words each) with an embedding
/// per chunk of `dim` values; the word `needle` in none of them.
fn big_document(
    name: &str,
    chunks: usize,
    dim: usize,
) -> (
    datafactory_store::DocumentKey,
    datafactory_core::Document,
    Vec<datafactory_core::Chunk>,
    Vec<datafactory_core::Embedding>,
) {
    use datafactory_core::{Chunk, Document, Embedding, Format};
    let mut text = String::new();
    let mut parts = Vec::with_capacity(chunks);
    for i in 0..chunks {
        let start = text.chars().count();
        let body = format!(
            "Paragraph {i} of the big manual explains the installation, configuration and operation of \
             component {} with its options, defaults, limits, failure modes and recovery steps for operators. ",
            i % 977
        );
        text.push_str(&body);
        parts.push(Chunk {
            ordinal: i as u32,
            heading_path: vec!["Manual".into(), format!("Part {}", i / 100)],
            text: body.clone(),
            start,
            end: start + body.chars().count(),
            page: None,
            token_count: 40,
            context: None,
        });
    }
    let embeddings =
        (0..chunks).map(|i| Embedding { dense: unit(dim, i as u64 + 1_000_000), sparse: vec![] }).collect();
    let key = datafactory_store::DocumentKey {
        id: datafactory_core::document_id("bench", name),
        collection: "bench".into(),
        source: name.into(),
        content_hash: datafactory_core::content_hash(text.as_bytes()),
        pipeline: "bench".into(),
        byte_size: text.len() as u64,
    };
    let doc = Document {
        title: name.into(),
        format: Format::Text,
        text,
        sections: vec![],
        metadata: Default::default(),
        external_id: None,
    };
    (key, doc, parts, embeddings)
}

/// Searches: when each fell due, and its latency in milliseconds.
type Samples = Vec<(Instant, f64)>;

/// A pseudo-random unit vector (xorshift from `seed`).
fn unit(dim: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f32> = (0..dim)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
    v.into_iter().map(|a| a / n).collect()
}

/// `search-during-ingest CHUNKS [DIM]`: a store holding 200 small documents;
/// one thread commits a document of CHUNKS chunks (one SQLite transaction)
/// while another issues a hybrid search (words + dense; words alone when DIM
/// is 0: no embeddings) every 10 ms on a fixed schedule. A search's latency
/// counts from when it was due, so a search held up by the commit counts for
/// every slot it blocked. A probe connection sees when the commit's SQLite
/// transaction is open (`BEGIN IMMEDIATE` fails at once). Prints the
/// latencies before the commit (idle), while its transaction was open, and
/// after it while the commit updated the derived indexes.
fn search_during_ingest(args: &[String]) -> Result<()> {
    use datafactory_store::{SearchMode, SearchRequest, Store};
    let chunks: usize = args.first().context("search-during-ingest CHUNKS [DIM]")?.parse()?;
    let dim: usize = args.get(1).map(|d| d.parse()).transpose()?.unwrap_or(384);
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path())?;
    let vectors = dim > 0;
    if vectors {
        store.enable_vectors(&VectorOptions {
            model: "bench".into(),
            dimensions: dim,
            quantization: "f16".into(),
            connectivity: 16,
            expansion_add: 64,
            expansion_search: 64,
            exact_below: 1000,
        })?;
    }
    fn embedded(vectors: bool, e: &[datafactory_core::Embedding]) -> Option<&[datafactory_core::Embedding]> {
        vectors.then_some(e)
    }
    for d in 0..200 {
        let (key, doc, parts, embeddings) = big_document(&format!("small-{d}.txt"), 5, dim);
        store.commit_document(&key, &doc, &parts, embedded(vectors, &embeddings))?;
    }
    store.checkpoint()?;
    let (key, doc, parts, embeddings) = big_document("big.txt", chunks, dim);
    let query = datafactory_core::Embedding { dense: unit(dim, 7), sparse: vec![] };
    let request = SearchRequest {
        text: "installation operators",
        embedding: vectors.then_some(&query),
        mode: if vectors { SearchMode::Hybrid } else { SearchMode::Lexical },
        collection: None,
        top_k: 10,
        candidates: 50,
        fusion: datafactory_core::config::FusionMethod::Rrf,
        rrf_k: 60.0,
        agreement: false,
        weight_words: 1.0,
        weight_dense: 1.0,
        weight_sparse: 0.0,
        title_boost: 0.5,
        heading_boost: 0.8,
        filter: None,
        collapse: false,
    };
    let period = std::time::Duration::from_millis(10);
    // Open loop: latency from the due time, not from when the search could start.
    let run = |until: &dyn Fn() -> bool| -> Result<Samples> {
        let mut latencies = Vec::new();
        let mut due = Instant::now();
        while !until() {
            let now = Instant::now();
            if now < due {
                std::thread::sleep(due - now);
            }
            let hits = store.search(&request)?.hits;
            anyhow::ensure!(!hits.is_empty(), "no hits");
            let done = Instant::now();
            // Every slot that fell due while this search ran waited for it.
            while due <= done {
                latencies.push((due, (done - due).as_secs_f64() * 1000.0));
                due += period;
            }
        }
        Ok(latencies)
    };
    let idle_until = Instant::now() + std::time::Duration::from_secs(3);
    let idle = run(&|| Instant::now() >= idle_until)?;
    let finished = std::sync::atomic::AtomicBool::new(false);
    let probe = rusqlite::Connection::open(dir.path().join("datafactory.sqlite3"))?;
    probe.busy_timeout(std::time::Duration::ZERO)?;
    let write_locked = move || -> Result<bool> {
        match probe.execute_batch("BEGIN IMMEDIATE") {
            Ok(()) => {
                probe.execute_batch("ROLLBACK")?;
                Ok(false)
            }
            Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::DatabaseBusy => {
                Ok(true)
            }
            Err(e) => Err(e.into()),
        }
    };
    let (during, commit_s, tx) = std::thread::scope(|s| -> Result<(Samples, f64, (Instant, Instant))> {
        let committer = s.spawn(|| -> Result<f64> {
            let started = Instant::now();
            let r = store.commit_document(&key, &doc, &parts, embedded(vectors, &embeddings));
            finished.store(true, std::sync::atomic::Ordering::SeqCst);
            r?;
            Ok(started.elapsed().as_secs_f64())
        });
        let watcher = s.spawn(move || -> Result<(Instant, Instant)> {
            while !write_locked()? {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            let opened = Instant::now();
            while write_locked()? {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Ok((opened, Instant::now()))
        });
        let during = run(&|| finished.load(std::sync::atomic::Ordering::SeqCst))?;
        Ok((during, committer.join().expect("committer")?, watcher.join().expect("watcher")?))
    })?;
    let stats = |v: &[(Instant, f64)], keep: &dyn Fn(Instant) -> bool| {
        let mut v: Vec<f64> = v.iter().filter(|(due, _)| keep(*due)).map(|x| x.1).collect();
        if v.is_empty() {
            return serde_json::json!({"searches": 0});
        }
        v.sort_by(f64::total_cmp);
        let q = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
        serde_json::json!({"searches": v.len(), "p50_ms": q(0.5), "p99_ms": q(0.99), "max_ms": q(1.0)})
    };
    println!(
        "{}",
        serde_json::json!({
            "bench": "search-during-ingest",
            "chunks": chunks,
            "dim": dim,
            "commit_s": commit_s,
            "transaction_s": (tx.1 - tx.0).as_secs_f64(),
            "idle": stats(&idle, &|_| true),
            "during_transaction": stats(&during, &|due| due < tx.1),
            "after_transaction": stats(&during, &|due| due >= tx.1),
        })
    );
    Ok(())
}
