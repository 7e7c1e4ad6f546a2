//! bge-m3's sparse head and our XLM-RoBERTa encoder against references
//! computed with transformers' `XLMRobertaModel` and torch, on a tiny random
//! model committed under `tests/fixtures/tiny-xlmr-sparse` (made by
//! `tests/parity/make_sparse_golden.py`).

mod common;

use common::cosine;
use datafactory_core::config::EmbeddingConfig;
use datafactory_models::{CandleEmbedder, Embedder, InputKind};
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Deserialize)]
struct Golden {
    texts: Vec<GoldenText>,
}

#[derive(Deserialize)]
struct GoldenText {
    text: String,
    ids: Vec<u32>,
    dense: Vec<f32>,
    sparse: Vec<(u32, f32)>,
}

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-xlmr-sparse")
}

fn golden() -> Golden {
    serde_json::from_str(&std::fs::read_to_string(fixture().join("golden.json")).unwrap()).unwrap()
}

fn load(tweak: impl FnOnce(&mut EmbeddingConfig)) -> CandleEmbedder {
    let mut config = common::config_for(&fixture());
    tweak(&mut config);
    CandleEmbedder::load(&config).unwrap()
}

#[test]
fn dense_and_sparse_match_the_reference() {
    let golden = golden();
    let texts: Vec<&str> = golden.texts.iter().map(|t| t.text.as_str()).collect();
    for batch_size in [1, 3, 32] {
        let e = load(|c| {
            c.sparse = true;
            c.batch_size = batch_size;
        });
        assert!(e.produces_sparse());
        let got = e.embed(&texts, InputKind::Passage).unwrap();
        for (g, want) in got.iter().zip(&golden.texts) {
            let c = cosine(&g.dense, &want.dense);
            assert!(c >= 0.99999, "{:?}: dense cosine {c}", want.text);
            let ids: Vec<u32> = g.sparse.iter().map(|(id, _)| *id).collect();
            let want_ids: Vec<u32> = want.sparse.iter().map(|(id, _)| *id).collect();
            assert_eq!(ids, want_ids, "{:?}: sparse token ids", want.text);
            for ((id, w), (_, want_w)) in g.sparse.iter().zip(&want.sparse) {
                assert!((w - want_w).abs() < 1e-4, "{:?}: weight of token {id}: {w} vs {want_w}", want.text);
            }
        }
    }
}

#[test]
fn tokenization_matches_the_reference() {
    let e = load(|_| {});
    let counter = e.token_counter();
    for t in golden().texts {
        assert_eq!(counter.count(&t.text), t.ids.len() - 2, "{:?}", t.text);
    }
}

#[test]
fn sparse_off_gives_dense_only() {
    let e = load(|c| c.sparse = false);
    assert!(!e.produces_sparse());
    let got = e.embed(&["the cat is on the mat"], InputKind::Query).unwrap();
    assert!(got[0].sparse.is_empty());
    assert_eq!(got[0].dense.len(), 32);
}

#[test]
fn half_precision_keeps_the_sparse_weights_close() {
    let golden = golden();
    let texts: Vec<&str> = golden.texts.iter().map(|t| t.text.as_str()).collect();
    for dtype in ["f16", "bf16"] {
        let got = load(|c| c.dtype = dtype.into()).embed(&texts, InputKind::Passage).unwrap();
        for (g, want) in got.iter().zip(&golden.texts) {
            let c = cosine(&g.dense, &want.dense);
            assert!(c >= 0.99, "{dtype} {:?}: dense cosine {c}", want.text);
            assert!(g.sparse.iter().all(|(_, w)| w.is_finite() && *w > 0.0));
        }
    }
}
