//! Rough CPU throughput of the embedder: passages per second.
//!
//! `cargo run -p datafactory-models --example embed_speed -- MODEL_DIR [PASSAGES] [WORDS] [BATCH_SIZE]`
//!
//! Generates PASSAGES (default 100) deterministic passages of WORDS (default
//! 200) English words, embeds them once to warm up, then three times timed,
//! and prints the best run. `DATAFACTORY_SPEED_TEXTS=FILE` also writes the
//! passages to FILE (one per line) so another engine can embed the same ones.
//! Threads follow `RAYON_NUM_THREADS`.

use datafactory_core::config::EmbeddingConfig;
use datafactory_models::{CandleEmbedder, Embedder, InputKind};
use std::time::Instant;

const WORDS: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "with",
    "was",
    "on",
    "are",
    "by",
    "this",
    "be",
    "from",
    "at",
    "or",
    "which",
    "an",
    "have",
    "not",
    "document",
    "search",
    "index",
    "retrieval",
    "passage",
    "vector",
    "embedding",
    "model",
    "token",
    "chunk",
    "query",
    "system",
    "database",
    "transaction",
    "parser",
    "format",
    "language",
    "network",
    "memory",
    "performance",
    "latency",
    "throughput",
    "benchmark",
    "configuration",
    "section",
    "heading",
    "table",
    "figure",
    "result",
    "method",
    "analysis",
    "evaluation",
    "dataset",
    "training",
    "inference",
    "accuracy",
    "recall",
    "precision",
    "relevance",
    "ranking",
    "fusion",
    "lexical",
    "semantic",
    "dense",
    "sparse",
    "encoder",
    "attention",
    "layer",
    "hidden",
    "output",
    "input",
    "between",
    "because",
    "however",
    "therefore",
    "although",
    "during",
    "without",
    "within",
    "process",
    "service",
    "request",
    "response",
    "server",
    "client",
    "storage",
    "commit",
];

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().expect("usage: embed_speed MODEL_DIR [PASSAGES] [WORDS] [BATCH_SIZE]");
    let passages: usize = args.next().map(|a| a.parse().unwrap()).unwrap_or(100);
    let words: usize = args.next().map(|a| a.parse().unwrap()).unwrap_or(200);
    let batch_size: usize = args.next().map(|a| a.parse().unwrap()).unwrap_or(32);

    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let texts: Vec<String> = (0..passages)
        .map(|_| {
            let n = words * 3 / 4 + (next() as usize % (words / 2 + 1));
            (0..n).map(|_| WORDS[next() as usize % WORDS.len()]).collect::<Vec<_>>().join(" ")
        })
        .collect();
    if let Ok(path) = std::env::var("DATAFACTORY_SPEED_TEXTS") {
        std::fs::write(&path, texts.join("\n") + "\n").unwrap();
    }
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();

    let config = EmbeddingConfig {
        model: dir,
        allow_download: false,
        device: "cpu".to_string(),
        batch_size,
        ..EmbeddingConfig::default()
    };
    let embedder = CandleEmbedder::load(&config).unwrap();
    embedder.embed(&refs, InputKind::Passage).unwrap();
    let mut best = f64::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        embedder.embed(&refs, InputKind::Passage).unwrap();
        best = best.min(start.elapsed().as_secs_f64());
    }
    let s = embedder.stats();
    println!(
        "{} passages (~{words} words, {:.0} tokens each after truncation at {}): best {:.3} s, \
         {:.1} passages/s; padding overhead {:.1}%",
        passages,
        s.tokens as f64 / s.texts as f64,
        embedder.max_length(),
        best,
        passages as f64 / best,
        100.0 * (s.padded_tokens as f64 / s.tokens as f64 - 1.0)
    );
}
