//! The cross-encoder against references computed with transformers'
//! `XLMRobertaForSequenceClassification` and `BertForSequenceClassification`
//! on tiny random models committed under `tests/fixtures/tiny-*-reranker`
//! (made by `tests/parity/make_rerank_golden.py`), and on a tiny classifier
//! the test writes itself.

mod common;

use datafactory_core::config::RerankConfig;
use datafactory_core::{sigmoid, Reranker};
use datafactory_models::{load_reranker, CandleReranker};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Deserialize)]
struct Golden {
    max_length: usize,
    query_max_length: usize,
    pairs: Vec<GoldenPair>,
}

#[derive(Deserialize)]
struct GoldenPair {
    query: String,
    passage: String,
    ids: Vec<u32>,
    type_ids: Vec<u32>,
    logit: f32,
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn golden(dir: &Path) -> Golden {
    serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap()).unwrap()
}

fn config_for(dir: &Path) -> RerankConfig {
    RerankConfig {
        model: dir.to_str().unwrap().to_string(),
        allow_download: false,
        device: "cpu".to_string(),
        ..RerankConfig::default()
    }
}

fn load(dir: &Path, tweak: impl FnOnce(&mut RerankConfig)) -> CandleReranker {
    let mut config = config_for(dir);
    tweak(&mut config);
    CandleReranker::load(&config).unwrap()
}

fn pairs(golden: &Golden) -> Vec<(&str, &str)> {
    golden.pairs.iter().map(|p| (p.query.as_str(), p.passage.as_str())).collect()
}

#[test]
fn pairs_are_truncated_like_the_reference() {
    for (name, bert) in [("tiny-xlmr-reranker", false), ("tiny-bert-reranker", true)] {
        let dir = fixture(name);
        let golden = golden(&dir);
        let r = load(&dir, |_| {});
        assert_eq!(r.max_length(), golden.max_length, "{name}");
        assert_eq!(r.query_max_length(), golden.query_max_length, "{name}");
        let encoded = r.encode_pairs(&pairs(&golden)).unwrap();
        for (e, want) in encoded.iter().zip(&golden.pairs) {
            assert_eq!(e.get_ids(), want.ids, "{name}: {:?} / {:?}", want.query, want.passage);
            if bert {
                assert_eq!(e.get_type_ids(), want.type_ids, "{name}: {:?}", want.query);
            }
        }
        // The fixtures cut a query and a passage.
        assert!(golden.pairs.iter().any(|p| p.ids.len() == golden.max_length), "{name}");
    }
}

#[test]
fn logits_match_the_reference_in_any_batching() {
    for name in ["tiny-xlmr-reranker", "tiny-bert-reranker"] {
        let dir = fixture(name);
        let golden = golden(&dir);
        for batch_size in [1, 3, 32] {
            let r = load(&dir, |c| c.batch_size = batch_size);
            let got = r.score_pairs(&pairs(&golden)).unwrap();
            for (g, want) in got.iter().zip(&golden.pairs) {
                assert!(
                    (g - want.logit).abs() < 1e-4,
                    "{name} batch {batch_size}: {:?} / {:?}: {g} vs {}",
                    want.query,
                    want.passage,
                    want.logit
                );
            }
            let stats = r.stats();
            assert_eq!(stats.pairs, golden.pairs.len() as u64);
            assert_eq!(stats.batches, golden.pairs.len().div_ceil(batch_size) as u64);
        }
    }
}

#[test]
fn the_trait_scores_passages_for_one_query() {
    let dir = fixture("tiny-xlmr-reranker");
    let golden = golden(&dir);
    let r = load_reranker(&config_for(&dir)).unwrap();
    assert_eq!(r.model_id(), "tiny-xlmr-reranker;max=32;query_max=24");
    let query = "what is a cat";
    let same: Vec<&GoldenPair> = golden.pairs.iter().filter(|p| p.query == query).collect();
    assert!(same.len() >= 3);
    let passages: Vec<&str> = same.iter().map(|p| p.passage.as_str()).collect();
    let got = r.score(query, &passages).unwrap();
    for (g, want) in got.iter().zip(&same) {
        assert!((g - want.logit).abs() < 1e-4, "{:?}: {g} vs {}", want.passage, want.logit);
        assert!((sigmoid(*g) - sigmoid(want.logit)).abs() < 1e-4);
    }
    assert!(r.score(query, &[]).unwrap().is_empty());
}

#[test]
fn reduced_precision_stays_close() {
    for name in ["tiny-xlmr-reranker", "tiny-bert-reranker"] {
        let dir = fixture(name);
        let golden = golden(&dir);
        for dtype in ["bf16", "f16", "int8"] {
            let r = load(&dir, |c| c.dtype = dtype.into());
            let got = r.score_pairs(&pairs(&golden)).unwrap();
            for (g, want) in got.iter().zip(&golden.pairs) {
                assert!(g.is_finite(), "{name} {dtype}: {:?}", want.passage);
                assert!(
                    (g - want.logit).abs() < 0.1,
                    "{name} {dtype}: {:?}: {g} vs {}",
                    want.passage,
                    want.logit
                );
            }
        }
    }
}

#[test]
fn a_classifier_written_here_scores_deterministically() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = common::tiny_xlmr_reranker(&tmp.path().join("tiny-xlmr-ce"), 1);
    let r = load(&dir, |c| c.batch_size = 2);
    // Positions 40 (42 - pad - 1); 3/4 of that for the query.
    assert_eq!((r.max_length(), r.query_max_length()), (40, 30));
    let long: String = common::WORDS.iter().cycle().take(80).copied().collect::<Vec<_>>().join(" ");
    let passages = ["the cat", "a big dog runs fast", "", long.as_str(), "zebra quux"];
    let first = r.score("search the index", &passages).unwrap();
    assert_eq!(first.len(), passages.len());
    assert!(first.iter().all(|s| s.is_finite()));
    assert!(first.windows(2).any(|w| (w[0] - w[1]).abs() > 1e-4), "{first:?}");
    // One at a time, in reverse: the same scores.
    for (i, p) in passages.iter().enumerate().rev() {
        let one = r.score("search the index", &[p]).unwrap();
        assert!((one[0] - first[i]).abs() < 1e-4, "passage {i}: {} vs {}", one[0], first[i]);
    }
    // The long passage is cut to the model's 40 positions.
    let encoded = r.encode_pairs(&[("search the index", long.as_str())]).unwrap();
    assert_eq!(encoded[0].len(), 40);
}

#[test]
fn models_that_are_not_rerankers_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let plain = common::tiny_xlmr(&tmp.path().join("no-head"));
    let e = CandleReranker::load(&config_for(&plain)).err().unwrap().to_string();
    assert!(e.contains("classifier.out_proj.weight"), "{e}");
    let two = common::tiny_xlmr_reranker(&tmp.path().join("two-labels"), 2);
    let e = CandleReranker::load(&config_for(&two)).err().unwrap().to_string();
    assert!(e.contains("2 labels"), "{e}");
    let mut config = config_for(&plain);
    config.model = tmp.path().join("missing").to_str().unwrap().to_string();
    let e = CandleReranker::load(&config).err().unwrap().to_string();
    assert!(e.contains("rerank.model"), "{e}");
    let e = CandleReranker::load(&RerankConfig { device: "tpu".into(), ..config_for(&two) })
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("rerank.device"), "{e}");
}
