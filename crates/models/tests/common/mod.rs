//! Tiny random BERT and XLM-RoBERTa models, written by the tests themselves:
//! `config.json`, `model.safetensors` with the real tensor names, and a
//! `tokenizer.json` built with the tokenizers crate.
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use datafactory_core::config::EmbeddingConfig;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tokenizers::models::unigram::Unigram;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

pub const WORDS: &[&str] = &[
    "the", "a", "of", "to", "and", "in", "is", "it", "that", "for", "on", "with", "search", "vector",
    "sparse", "dense", "token", "model", "query", "passage", "document", "chunk", "index", "embed", "text",
    "word", "cat", "dog", "run", "fast", "slow", "big", "small",
];

/// A deterministic pseudo-random source (xorshift), so fixtures are the same
/// on every run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    pub fn tensor(&mut self, shape: &[usize], scale: f32, offset: f32) -> Tensor {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| offset + scale * self.uniform()).collect();
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
    }
}

pub struct TinyShape {
    pub vocab: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub max_positions: usize,
    pub type_vocab: usize,
}

/// Random weights under the names Hugging Face's `BertModel` /
/// `XLMRobertaModel` save, optionally under a prefix such as `bert.`.
pub fn write_weights(path: &Path, s: &TinyShape, seed: u64, prefix: &str) {
    let mut rng = Rng::new(seed);
    let mut t: HashMap<String, Tensor> = HashMap::new();
    let mut put = |name: String, tensor: Tensor| {
        t.insert(format!("{prefix}{name}"), tensor);
    };
    let h = s.hidden;
    put("embeddings.word_embeddings.weight".into(), rng.tensor(&[s.vocab, h], 0.5, 0.0));
    put("embeddings.position_embeddings.weight".into(), rng.tensor(&[s.max_positions, h], 0.5, 0.0));
    put("embeddings.token_type_embeddings.weight".into(), rng.tensor(&[s.type_vocab, h], 0.5, 0.0));
    put("embeddings.LayerNorm.weight".into(), rng.tensor(&[h], 0.1, 1.0));
    put("embeddings.LayerNorm.bias".into(), rng.tensor(&[h], 0.1, 0.0));
    for l in 0..s.layers {
        let p = format!("encoder.layer.{l}.");
        let linear = |rng: &mut Rng, put: &mut dyn FnMut(String, Tensor), name: &str, o: usize, i: usize| {
            let scale = (3.0 / i as f32).sqrt();
            put(format!("{p}{name}.weight"), rng.tensor(&[o, i], scale, 0.0));
            put(format!("{p}{name}.bias"), rng.tensor(&[o], 0.1, 0.0));
        };
        linear(&mut rng, &mut put, "attention.self.query", h, h);
        linear(&mut rng, &mut put, "attention.self.key", h, h);
        linear(&mut rng, &mut put, "attention.self.value", h, h);
        linear(&mut rng, &mut put, "attention.output.dense", h, h);
        linear(&mut rng, &mut put, "intermediate.dense", s.intermediate, h);
        linear(&mut rng, &mut put, "output.dense", h, s.intermediate);
        for norm in ["attention.output.LayerNorm", "output.LayerNorm"] {
            put(format!("{p}{norm}.weight"), rng.tensor(&[h], 0.1, 1.0));
            put(format!("{p}{norm}.bias"), rng.tensor(&[h], 0.1, 0.0));
        }
    }
    candle_core::safetensors::save(&t, path).unwrap();
}

/// A tiny BERT: WordPiece over [`WORDS`] and single letters, uncased. Its
/// tokenizer file truncates at 16 and pads to a fixed 16, like
/// all-MiniLM-L6-v2's (128): the embedder must override both.
pub fn tiny_bert(dir: &Path, pooling: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
    let mut vocab: Vec<String> = specials.iter().map(|s| s.to_string()).collect();
    vocab.extend(WORDS.iter().map(|w| w.to_string()));
    for c in 'a'..='z' {
        vocab.push(c.to_string());
        vocab.push(format!("##{c}"));
    }
    for p in [".", ",", "!", "?", "(", ")", "-", "'"] {
        vocab.push(p.to_string());
    }
    // The vocabulary file real BERT checkpoints ship (one token a line).
    let vocab_file = dir.join("vocab.txt");
    std::fs::write(&vocab_file, vocab.join("\n") + "\n").unwrap();
    let model =
        WordPiece::from_file(vocab_file.to_str().unwrap()).unk_token("[UNK]".to_string()).build().unwrap();
    let mut tok = Tokenizer::new(model);
    tok.with_normalizer(Some(BertNormalizer::new(true, true, None, true))).unwrap();
    tok.with_pre_tokenizer(Some(BertPreTokenizer));
    tok.with_post_processor(Some(
        TemplateProcessing::builder()
            .try_single("[CLS] $A [SEP]")
            .unwrap()
            .try_pair("[CLS] $A [SEP] $B:1 [SEP]:1")
            .unwrap()
            .special_tokens(vec![("[CLS]", 2), ("[SEP]", 3)])
            .build()
            .unwrap(),
    ));
    tok.add_special_tokens(specials.iter().map(|s| AddedToken::from(*s, true))).unwrap();
    tok.with_truncation(Some(TruncationParams { max_length: 16, ..Default::default() })).unwrap();
    tok.with_padding(Some(PaddingParams {
        strategy: PaddingStrategy::Fixed(16),
        pad_token: "[PAD]".to_string(),
        ..Default::default()
    }));
    tok.save(dir.join("tokenizer.json"), true).unwrap();

    let shape = TinyShape {
        vocab: vocab.len(),
        hidden: 32,
        layers: 2,
        heads: 4,
        intermediate: 64,
        max_positions: 64,
        type_vocab: 2,
    };
    std::fs::write(
        dir.join("config.json"),
        serde_json::json!({
            "architectures": ["BertModel"],
            "model_type": "bert",
            "vocab_size": shape.vocab,
            "hidden_size": shape.hidden,
            "num_hidden_layers": shape.layers,
            "num_attention_heads": shape.heads,
            "intermediate_size": shape.intermediate,
            "hidden_act": "gelu",
            "max_position_embeddings": shape.max_positions,
            "type_vocab_size": shape.type_vocab,
            "layer_norm_eps": 1e-12,
            "pad_token_id": 0,
            "position_embedding_type": "absolute"
        })
        .to_string(),
    )
    .unwrap();
    write_weights(&dir.join("model.safetensors"), &shape, 7, "");
    std::fs::write(
        dir.join("modules.json"),
        r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
            {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"},
            {"idx":2,"name":"2","path":"2_Normalize","type":"sentence_transformers.models.Normalize"}]"#,
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
    std::fs::write(
        dir.join("1_Pooling/config.json"),
        serde_json::json!({
            "word_embedding_dimension": shape.hidden,
            "pooling_mode_cls_token": pooling == "cls",
            "pooling_mode_mean_tokens": pooling == "mean",
            "pooling_mode_max_tokens": pooling == "max",
            "pooling_mode_mean_sqrt_len_tokens": false
        })
        .to_string(),
    )
    .unwrap();
    dir.to_path_buf()
}

/// A tiny XLM-RoBERTa: a Unigram (SentencePiece-like) vocabulary with
/// XLM-R's special tokens (`<s>` 0, `<pad>` 1, `</s>` 2, `<unk>` 3), one token
/// type, positions from `pad + 1`; no modules.json (CLS pooling, as bge-m3).
/// The tensors sit under `roberta.` to exercise prefix detection.
pub fn tiny_xlmr(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let specials = ["<s>", "<pad>", "</s>", "<unk>"];
    let mut vocab: Vec<(String, f64)> = specials.iter().map(|s| (s.to_string(), 0.0)).collect();
    for (i, w) in WORDS.iter().enumerate() {
        vocab.push((format!("\u{2581}{w}"), -2.0 - 0.01 * i as f64));
    }
    vocab.push(("\u{2581}".to_string(), -8.0));
    for c in 'a'..='z' {
        vocab.push((c.to_string(), -10.0));
    }
    let n_vocab = vocab.len() + 1; // one spare row, like real checkpoints
    let model = Unigram::from(vocab, Some(3), false).unwrap();
    let mut tok = Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(Metaspace::new('\u{2581}', PrependScheme::Always, true)));
    tok.with_post_processor(Some(
        TemplateProcessing::builder()
            .try_single("<s> $A </s>")
            .unwrap()
            .try_pair("<s> $A </s> </s> $B </s>")
            .unwrap()
            .special_tokens(vec![("<s>", 0), ("</s>", 2)])
            .build()
            .unwrap(),
    ));
    tok.add_special_tokens(specials.iter().map(|s| AddedToken::from(*s, true))).unwrap();
    tok.save(dir.join("tokenizer.json"), true).unwrap();

    let shape = TinyShape {
        vocab: n_vocab,
        hidden: 32,
        layers: 2,
        heads: 4,
        intermediate: 64,
        max_positions: 42, // 40 tokens + pad_token_id + 1
        type_vocab: 1,
    };
    std::fs::write(
        dir.join("config.json"),
        serde_json::json!({
            "architectures": ["XLMRobertaModel"],
            "model_type": "xlm-roberta",
            "vocab_size": shape.vocab,
            "hidden_size": shape.hidden,
            "num_hidden_layers": shape.layers,
            "num_attention_heads": shape.heads,
            "intermediate_size": shape.intermediate,
            "hidden_act": "gelu",
            "max_position_embeddings": shape.max_positions,
            "type_vocab_size": shape.type_vocab,
            "layer_norm_eps": 1e-5,
            "pad_token_id": 1,
            "bos_token_id": 0,
            "eos_token_id": 2
        })
        .to_string(),
    )
    .unwrap();
    write_weights(&dir.join("model.safetensors"), &shape, 11, "roberta.");
    dir.to_path_buf()
}

/// An embedding configuration for a local model directory.
pub fn config_for(dir: &Path) -> EmbeddingConfig {
    EmbeddingConfig {
        model: dir.to_str().unwrap().to_string(),
        allow_download: false,
        device: "cpu".to_string(),
        ..EmbeddingConfig::default()
    }
}

pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

pub fn norm(a: &[f32]) -> f32 {
    a.iter().map(|x| x * x).sum::<f32>().sqrt()
}

/// Texts of varied lengths for the tiny models.
pub fn sample_texts() -> Vec<String> {
    let mut texts: Vec<String> = vec![
        "the cat".into(),
        "a big dog runs fast".into(),
        "".into(),
        "Search the vector index for a dense passage, then embed the query!".into(),
        "sparse".into(),
        "zebra quux unknown words xyz".into(),
    ];
    let long: Vec<&str> = WORDS.iter().cycle().take(60).copied().collect();
    texts.push(long.join(" "));
    texts.push(WORDS[..12].join(" "));
    texts
}

/// [`tiny_xlmr`] with the head of `XLMRobertaForSequenceClassification`
/// (`classifier.dense`, `classifier.out_proj` with `labels` outputs) beside
/// the `roberta.` encoder: a cross-encoder when `labels` is 1.
pub fn tiny_xlmr_reranker(dir: &Path, labels: usize) -> PathBuf {
    tiny_xlmr(dir);
    let path = dir.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let mut rng = Rng::new(23);
    let h = 32;
    let scale = (3.0 / h as f32).sqrt();
    tensors.insert("classifier.dense.weight".into(), rng.tensor(&[h, h], scale, 0.0));
    tensors.insert("classifier.dense.bias".into(), rng.tensor(&[h], 0.1, 0.0));
    tensors.insert("classifier.out_proj.weight".into(), rng.tensor(&[labels, h], scale, 0.0));
    tensors.insert("classifier.out_proj.bias".into(), rng.tensor(&[labels], 0.1, 0.0));
    candle_core::safetensors::save(&tensors, &path).unwrap();
    dir.to_path_buf()
}
