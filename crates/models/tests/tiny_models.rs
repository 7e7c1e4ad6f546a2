//! The embedder end to end on tiny random BERT and XLM-RoBERTa models that the
//! tests write themselves, loaded through the real `load_embedder` path.

mod common;

use candle_core::{DType, D};
use common::*;
use datafactory_core::config::EmbeddingConfig;
use datafactory_models::{load_embedder, CandleEmbedder, Embedder, Embedding, InputKind};

fn load(dir: &std::path::Path, tweak: impl FnOnce(&mut EmbeddingConfig)) -> CandleEmbedder {
    let mut config = config_for(dir);
    tweak(&mut config);
    CandleEmbedder::load(&config).unwrap()
}

fn embed(e: &dyn Embedder, texts: &[String]) -> Vec<Embedding> {
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    e.embed(&refs, InputKind::Passage).unwrap()
}

fn assert_close(a: &[Embedding], b: &[Embedding], tolerance: f32, what: &str) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let worst = x.dense.iter().zip(&y.dense).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
        assert!(worst <= tolerance, "{what}: text {i} differs by {worst}");
    }
}

#[test]
fn bert_vectors_are_unit_length_distinct_and_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_bert(&tmp.path().join("tiny-bert"), "mean");
    let e = load_embedder(&config_for(&dir)).unwrap();
    assert_eq!(e.dimension(), 32);
    assert!(!e.produces_sparse());
    assert_eq!(e.model_id(), "tiny-bert;pool=mean;max=64");
    let texts = sample_texts();
    let first = embed(e.as_ref(), &texts);
    assert_eq!(first.len(), texts.len());
    for (t, v) in texts.iter().zip(&first) {
        assert_eq!(v.dense.len(), 32, "{t:?}");
        assert!(v.dense.iter().all(|x| x.is_finite()), "{t:?}");
        assert!((norm(&v.dense) - 1.0).abs() < 1e-5, "{t:?}");
        assert!(v.sparse.is_empty());
    }
    assert!(cosine(&first[0].dense, &first[1].dense) < 0.9999);
    assert_eq!(first, embed(e.as_ref(), &texts), "same input, same vectors");
    assert!(e.embed(&[], InputKind::Query).unwrap().is_empty());
}

#[test]
fn results_do_not_depend_on_batching_padding_or_order() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = [tiny_bert(&tmp.path().join("bert"), "mean"), tiny_xlmr(&tmp.path().join("xlmr"))];
    let texts = sample_texts();
    for dir in &dirs {
        let one_by_one = load(dir, |c| c.batch_size = 1);
        let reference = embed(&one_by_one, &texts);
        assert_eq!(one_by_one.stats().batches, texts.len() as u64);

        let all_at_once = embed(&load(dir, |c| c.batch_size = 64), &texts);
        assert_close(&reference, &all_at_once, 1e-5, "one batch");

        // Small token budget: several batches of mixed sizes.
        let budgeted = load(dir, |c| {
            c.batch_size = 3;
            c.max_length = 32;
            c.batch_tokens = 40;
        });
        let mut reversed = texts.clone();
        reversed.reverse();
        let mut got = embed(&budgeted, &reversed);
        got.reverse();
        let truncated_reference = embed(&load(dir, |c| c.max_length = 32), &texts);
        assert_close(&truncated_reference, &got, 1e-5, "budgeted, reversed");
        assert!(budgeted.stats().batches >= 3);
        assert!(budgeted.stats().padded_tokens >= budgeted.stats().tokens);
    }
}

#[test]
fn tokenizer_file_truncation_and_padding_are_overridden() {
    let tmp = tempfile::tempdir().unwrap();
    // The file truncates at 16 and pads to a fixed 16.
    let dir = tiny_bert(&tmp.path().join("bert"), "cls");
    let e = load(&dir, |c| c.max_length = 32);
    assert_eq!(e.max_length(), 32);
    let long = sample_texts()[6].clone();
    e.embed(&[&long], InputKind::Passage).unwrap();
    assert_eq!(e.stats().tokens, 32, "truncated at max_length, not at 16");
    e.embed(&["the cat"], InputKind::Passage).unwrap();
    let s = e.stats();
    assert_eq!(s.tokens, 32 + 4, "[CLS] the cat [SEP]");
    assert_eq!(s.padded_tokens, 32 + 4, "padded to the batch's longest, not 16");

    // max_length is capped by the position table (BERT 64; XLM-R 42 - 2).
    assert_eq!(load(&dir, |_| {}).max_length(), 64);
    let xlmr = load(&tiny_xlmr(&tmp.path().join("xlmr")), |_| {});
    assert_eq!(xlmr.max_length(), 40);
    let out = xlmr.embed(&[&long], InputKind::Passage).unwrap();
    assert!(out[0].dense.iter().all(|x| x.is_finite()));
    assert_eq!(xlmr.stats().tokens, 40);
}

#[test]
fn half_precision_matches_f32() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = [tiny_bert(&tmp.path().join("bert"), "mean"), tiny_xlmr(&tmp.path().join("xlmr"))];
    let texts = sample_texts();
    for dir in &dirs {
        let reference = embed(&load(dir, |c| c.dtype = "f32".into()), &texts);
        for dtype in ["f16", "bf16"] {
            let e = load(dir, |c| {
                c.dtype = dtype.into();
                c.batch_size = 4;
            });
            // bf16 on a CPU with AMX-BF16: f32 tensors, the linear layers
            // in bf16 on AMX tiles; elsewhere candle's bf16.
            let amx = dtype == "bf16" && datafactory_models::bf16_amx_available();
            let expected = match dtype {
                "f16" => DType::F16,
                _ if amx => DType::F32,
                _ => DType::BF16,
            };
            assert_eq!(e.dtype(), expected, "{dtype}");
            let linears =
                if amx { datafactory_models::Linears::Bf16Amx } else { datafactory_models::Linears::F32 };
            assert_eq!(e.encoder().linears(), linears, "{dtype}");
            let got = embed(&e, &texts);
            for (i, (r, g)) in reference.iter().zip(&got).enumerate() {
                assert!(
                    g.dense.iter().all(|x| x.is_finite()),
                    "{dtype} NaN/inf for text {i} in {}",
                    dir.display()
                );
                let c = cosine(&r.dense, &g.dense);
                assert!(c >= 0.99, "{dtype} cosine {c} for text {i} in {}", dir.display());
            }
        }
    }
}

#[test]
fn token_counter_uses_the_real_tokenizer_without_limits() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_bert(&tmp.path().join("tiny-bert"), "mean");
    let e = load_embedder(&config_for(&dir)).unwrap();
    let counter = e.token_counter();
    assert_eq!(counter.count("the cat"), 2);
    assert_eq!(counter.count("The CAT!"), 3);
    assert_eq!(counter.count("cats"), 2, "cat ##s");
    let long = sample_texts()[6].clone();
    assert_eq!(counter.count(&long), 60, "no truncation, no special tokens");
    assert!(counter.name().starts_with("tokenizer:tiny-bert:"), "{}", counter.name());
}

#[test]
fn prefixes_apply_by_input_kind() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_bert(&tmp.path().join("bert"), "mean");
    let plain = load(&dir, |_| {});
    let prefixed = load(&dir, |c| c.query_prefix = "query: ".into());
    let q = prefixed.embed(&["the cat"], InputKind::Query).unwrap();
    let p = prefixed.embed(&["the cat"], InputKind::Passage).unwrap();
    let manual = plain.embed(&["query: the cat"], InputKind::Passage).unwrap();
    assert_eq!(q, manual);
    assert_ne!(q, p);
    assert_eq!(p, plain.embed(&["the cat"], InputKind::Query).unwrap());
    // The stored vectors change only with the passage prefix.
    assert_eq!(prefixed.model_id(), plain.model_id());
    let passage_prefixed = load(&dir, |c| c.passage_prefix = "passage: ".into());
    assert_ne!(passage_prefixed.model_id(), plain.model_id());
}

#[test]
fn pooling_follows_the_model_files() {
    let tmp = tempfile::tempdir().unwrap();
    let mut vectors = Vec::new();
    for mode in ["mean", "cls", "max"] {
        let dir = tiny_bert(&tmp.path().join(mode), mode);
        let e = load(&dir, |_| {});
        assert!(e.model_id().contains(&format!("pool={mode}")), "{}", e.model_id());
        vectors.push(e.embed(&["a big dog runs fast"], InputKind::Passage).unwrap());
    }
    assert!(cosine(&vectors[0][0].dense, &vectors[1][0].dense) < 0.9999);
    assert!(cosine(&vectors[0][0].dense, &vectors[2][0].dense) < 0.9999);

    // Mean pooling equals the mean of the encoder's last hidden state, built
    // with the public encoder API (what a reranker head builds on).
    let e = load(&tmp.path().join("mean"), |_| {});
    let mut tokenizer = tokenizers::Tokenizer::from_file(tmp.path().join("mean/tokenizer.json")).unwrap();
    tokenizer.with_padding(None);
    let ids = tokenizer.encode("a big", true).unwrap().get_ids().to_vec();
    assert_eq!(ids.len(), 4, "[CLS] a big [SEP]");
    let input = e.encoder().prepare(&[&ids], None).unwrap();
    let hidden = e.encoder().forward(&input).unwrap();
    assert_eq!(hidden.dims(), &[1, 4, 32]);
    let mean = hidden.mean(1).unwrap();
    let mean = mean
        .broadcast_div(&mean.sqr().unwrap().sum_keepdim(D::Minus1).unwrap().sqrt().unwrap())
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let got = e.embed(&["a big"], InputKind::Passage).unwrap();
    assert_close(&got, &[Embedding { dense: mean[0].clone(), sparse: vec![] }], 1e-5, "manual mean pooling");
}

#[test]
fn xlm_roberta_without_modules_uses_cls_and_no_sparse_head() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_xlmr(&tmp.path().join("tiny-xlmr"));
    let e = load(&dir, |c| c.sparse = true);
    assert!(!e.produces_sparse(), "no sparse_linear.pt");
    assert_eq!(e.model_id(), "tiny-xlmr;pool=cls;max=40");
    let out = embed(&e, &sample_texts());
    assert!(out.iter().all(|v| v.sparse.is_empty() && v.dense.len() == 32));
    let counter = e.token_counter();
    assert_eq!(counter.count("the cat"), 2);
}

#[test]
fn unsupported_models_and_devices_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_bert(&tmp.path().join("bert"), "mean");
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    std::fs::write(dir.join("config.json"), config.replace("\"bert\"", "\"llama\"")).unwrap();
    let e = CandleEmbedder::load(&config_for(&dir)).err().unwrap().to_string();
    assert!(e.contains("model_type \"llama\" is not supported"), "{e}");
}

/// A passage longer than the model's input gets one vector per window of
/// its tokens, overlapping by a quarter, at most `max_windows`; the first
/// window is what `embed` reads; a passage that fits gets `embed`'s vector.
#[test]
fn long_passages_are_embedded_in_overlapping_windows() {
    let tmp = tempfile::tempdir().unwrap();
    for dir in [tiny_bert(&tmp.path().join("bert"), "mean"), tiny_xlmr(&tmp.path().join("xlmr"))] {
        let e = load(&dir, |c| {
            c.max_length = 32;
            c.max_windows = 16;
        });
        assert_eq!(e.max_windows(), 16);
        let words: Vec<&str> = common::WORDS.iter().cycle().take(200).copied().collect();
        let long = words.join(" ");
        let tokens = e.token_counter().count(&long);
        // 30 tokens of text per window (32 less [CLS] and [SEP]), 7 shared
        // with the window before: a new window every 23 tokens.
        assert_eq!(datafactory_models::window_overlap(32, 2), 7);
        let expected = 1 + (tokens - 30).div_ceil(23);
        assert!(expected > 2, "the text must need several windows ({tokens} tokens)");
        let before = e.stats().tokens;
        let got = e.embed_passages(&[&long, "the cat"]).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].len(), expected.min(16), "{tokens} tokens");
        assert_eq!(got[1].len(), 1, "a passage that fits has one window");
        let spent = e.stats().tokens - before;
        assert_eq!(
            spent as usize,
            tokens + 7 * (expected - 1) + 2 * expected + 4,
            "overlaps read twice, specials in each window"
        );
        let first = e.embed(&[&long, "the cat"], InputKind::Passage).unwrap();
        assert_close(&got[0][..1], &first[..1], 1e-5, "the first window is the truncated text");
        assert_close(&got[1], &first[1..], 1e-5, "a short passage");
        for w in &got[0] {
            assert!((norm(&w.dense) - 1.0).abs() < 1e-5);
        }
        assert!(
            cosine(&got[0][0].dense, &got[0][expected - 1].dense) < 0.9999,
            "windows read different text"
        );

        // The cap: only the first windows.
        let capped = load(&dir, |c| {
            c.max_length = 32;
            c.max_windows = 2;
        });
        let two = capped.embed_passages(&[&long]).unwrap();
        assert_eq!(two[0].len(), 2);
        assert_close(&two[0], &got[0][..2], 1e-5, "the first two windows");
        // One window: truncation, as before windows.
        let one = load(&dir, |c| {
            c.max_length = 32;
            c.max_windows = 1;
        });
        let truncated = one.embed_passages(&[&long]).unwrap();
        assert_eq!(truncated[0].len(), 1);
        assert_close(&truncated[0], &first[..1], 1e-5, "max_windows 1 truncates");
    }
}
