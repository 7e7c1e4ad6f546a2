//! [`CandleReranker`]: a cross-encoder that scores query-passage pairs in
//! this process, behind the core crate's [`Reranker`] trait.
//!
//! Why it exists: reranking the fused candidates with a cross-encoder
//! (BAAI/bge-reranker-v2-m3 by default) is the last step of search, and the
//! reranker service (`datafactory rerank-server`) and in-process reranking run
//! the same code. It reuses the embedder's pieces: model resolution, our
//! [`Encoder`], token-budgeted batching, devices, int8 and the GPU→CPU
//! fallback; only the head and the pair tokenization are its own.
//!
//! The head is the one of Hugging Face's sequence classifiers with a single
//! label, on the first token's hidden state: `XLMRobertaForSequenceClassification`
//! (`classifier.dense`, tanh, `classifier.out_proj`; the encoder under
//! `roberta.`) and `BertForSequenceClassification` (`bert.pooler.dense`, tanh,
//! `classifier`). Both are `out(tanh(dense(h[0])))`.
//!
//! Truncation follows FlagEmbedding's reranker (the reference for
//! bge-reranker-v2-m3): the query alone is cut to `query_max_length` tokens
//! (default three quarters of `max_length`), then the pair is built with the
//! tokenizer's own template and only the passage is cut so that the pair,
//! special tokens included, fits `max_length` (default 512).

use crate::embedder::{open_weights, plan_batches, select_device, select_dtype, Counters, CpuFallback};
use crate::encoder::{Architecture, Encoder, EncoderConfig, Linears};
use crate::resolve::{resolve_request, HubEnvironment, ModelFiles, ModelRequest};
use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_nn::{Linear, VarBuilder};
use datafactory_core::config::RerankConfig;
use datafactory_core::{RerankError, RerankStats, Reranker};
use std::sync::Arc;
use tokenizers::{Encoding, PostProcessor, Tokenizer, TruncationDirection};

/// The classification head on the first token: `out(tanh(dense(h[0])))`.
struct ClassifierHead {
    dense: Linear,
    out: Linear,
}

impl ClassifierHead {
    /// Finds the head of a single-label sequence classifier in `vb` (the
    /// checkpoint's root).
    fn load(
        vb: &VarBuilder,
        architecture: Architecture,
        hidden: usize,
    ) -> candle_core::Result<ClassifierHead> {
        let (dense, out) = match architecture {
            Architecture::XlmRoberta => (vb.pp("classifier").pp("dense"), vb.pp("classifier").pp("out_proj")),
            Architecture::Bert => {
                let pooler = ["bert", "", "model"]
                    .into_iter()
                    .map(|p| if p.is_empty() { vb.pp("pooler") } else { vb.pp(p).pp("pooler") })
                    .find(|p| p.contains_tensor("dense.weight"))
                    .unwrap_or_else(|| vb.pp("bert").pp("pooler"));
                (pooler.pp("dense"), vb.pp("classifier"))
            }
        };
        if !out.contains_tensor("weight") {
            candle_core::bail!(
                "no classification head: the checkpoint has no {} tensor; a reranker is a \
                 sequence classifier (XLMRobertaForSequenceClassification or \
                 BertForSequenceClassification)",
                match architecture {
                    Architecture::XlmRoberta => "classifier.out_proj.weight",
                    Architecture::Bert => "classifier.weight",
                }
            );
        }
        let labels = out.get_unchecked("weight")?.dim(0)?;
        if labels != 1 {
            candle_core::bail!(
                "the classifier has {labels} labels; a reranker has exactly one (a relevance logit)"
            );
        }
        Ok(ClassifierHead {
            dense: candle_nn::linear(hidden, hidden, dense)?,
            out: candle_nn::linear(hidden, 1, out)?,
        })
    }

    /// `[batch, len, hidden]` → `[batch]` logits in f32.
    fn forward(&self, hidden: &Tensor) -> candle_core::Result<Vec<f32>> {
        let first = hidden.i((.., 0, ..))?.contiguous()?;
        let pooled = self.dense.forward(&first)?.tanh()?;
        self.out.forward(&pooled)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
    }
}

/// The encoder and head on one device.
struct LoadedModel {
    encoder: Encoder,
    head: ClassifierHead,
}

impl LoadedModel {
    fn load(
        files: &ModelFiles,
        config: &EncoderConfig,
        device: &Device,
        dtype: DType,
        linears: Linears,
    ) -> Result<LoadedModel, RerankError> {
        let weights = &files.weights;
        let unavailable = |what: &str, e: candle_core::Error| {
            RerankError::Unavailable(format!("cannot load {what} from {}: {e}", weights.display()))
        };
        let vb = open_weights(weights, dtype, device).map_err(|e| unavailable("the weights", e))?;
        let mut encoder = Encoder::load(vb.clone(), config).map_err(|e| unavailable("the encoder", e))?;
        encoder
            .use_linears(linears)
            .map_err(|e| unavailable(&format!("the encoder with {linears:?} linear layers"), e))?;
        let head = ClassifierHead::load(&vb, encoder.architecture(), config.hidden_size)
            .map_err(|e| unavailable("the classification head", e))?;
        Ok(LoadedModel { encoder, head })
    }
}

/// An in-process cross-encoder (BERT or XLM-RoBERTa sequence classifier with
/// one logit) on candle.
pub struct CandleReranker {
    files: ModelFiles,
    encoder_config: EncoderConfig,
    model_id: String,
    /// Neither truncates nor pads: pairs are cut by [`CandleReranker::encode_pairs`].
    tokenizer: Tokenizer,
    model: LoadedModel,
    /// A CPU copy of the model, made on the first GPU out-of-memory error.
    cpu_fallback: CpuFallback<LoadedModel>,
    /// Tokens of a pair at most, special tokens included.
    max_length: usize,
    /// Tokens of the query at most, special tokens excluded.
    query_max_length: usize,
    /// Special tokens the tokenizer's template adds to a pair.
    pair_specials: usize,
    /// Whether the model reads token type ids (BERT: the passage is type 1).
    type_ids: bool,
    batch_size: usize,
    batch_tokens: usize,
    device: Device,
    dtype: DType,
    counters: Counters,
}

/// Loads the configured cross-encoder (see [`CandleReranker::load`]) behind
/// the [`Reranker`] trait.
pub fn load_reranker(config: &RerankConfig) -> Result<Arc<dyn Reranker>, RerankError> {
    Ok(Arc::new(CandleReranker::load(config)?))
}

fn unavailable(e: impl std::fmt::Display) -> RerankError {
    RerankError::Unavailable(e.to_string())
}

impl CandleReranker {
    /// Resolves `config.model` (a directory, the Hugging Face cache or a
    /// download) and loads it.
    pub fn load(config: &RerankConfig) -> Result<CandleReranker, RerankError> {
        let request = ModelRequest {
            section: "rerank",
            role: "reranker model",
            model: &config.model,
            revision: &config.revision,
            allow_download: config.allow_download,
            sparse: false,
        };
        let files = resolve_request(&request, &HubEnvironment::from_env()).map_err(unavailable)?;
        CandleReranker::from_files(files, config)
    }

    /// Loads a model from resolved files; `config.model` is not read.
    pub fn from_files(files: ModelFiles, config: &RerankConfig) -> Result<CandleReranker, RerankError> {
        let read = |path: &std::path::Path| {
            std::fs::read_to_string(path)
                .map_err(|e| RerankError::Unavailable(format!("cannot read {}: {e}", path.display())))
        };
        let encoder_config = EncoderConfig::from_json(&read(&files.config)?)
            .and_then(|c| c.architecture().map(|_| c))
            .map_err(|e| RerankError::Unavailable(format!("{}: {e}", files.config.display())))?;
        let device = select_device(&config.device, "rerank").map_err(unavailable)?;
        let (dtype, linears) = select_dtype(&config.dtype, &device, "rerank").map_err(unavailable)?;

        let tokenizer_bytes = std::fs::read(&files.tokenizer).map_err(|e| {
            RerankError::Unavailable(format!("cannot read {}: {e}", files.tokenizer.display()))
        })?;
        let mut tokenizer = Tokenizer::from_bytes(&tokenizer_bytes).map_err(|e| {
            RerankError::Unavailable(format!("cannot load {}: {e}", files.tokenizer.display()))
        })?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| RerankError::Unavailable(format!("tokenizer {}: {e}", files.tokenizer.display())))?;
        let pair_specials = tokenizer.get_post_processor().map(|p| p.added_tokens(true)).unwrap_or(0);

        let max_length = config.max_length.min(encoder_config.max_input_tokens());
        if max_length < pair_specials + 2 {
            return Err(RerankError::Unavailable(format!(
                "rerank.max_length {max_length} leaves no room for a query and a passage \
                 ({pair_specials} special tokens per pair)"
            )));
        }
        let query_max_length = match config.query_max_length {
            0 => max_length * 3 / 4,
            n => n,
        }
        .min(max_length - pair_specials - 1);

        let model = LoadedModel::load(&files, &encoder_config, &device, dtype, linears)?;
        let model_id = format!("{};max={max_length};query_max={query_max_length}", files.name);
        tracing::info!(
            model = %files.name,
            dir = %files.dir.display(),
            device = ?device,
            ?dtype,
            ?linears,
            max_length,
            query_max_length,
            "reranker model loaded"
        );
        Ok(CandleReranker {
            type_ids: encoder_config.type_vocab_size > 1,
            files,
            encoder_config,
            model_id,
            tokenizer,
            model,
            cpu_fallback: CpuFallback::new(),
            max_length,
            query_max_length,
            pair_specials,
            batch_size: config.batch_size.max(1),
            batch_tokens: config.batch_tokens.max(1),
            device,
            dtype,
            counters: Counters::default(),
        })
    }

    /// Tokens of a pair at most (special tokens included).
    pub fn max_length(&self) -> usize {
        self.max_length
    }
    /// Tokens of a query at most (special tokens excluded).
    pub fn query_max_length(&self) -> usize {
        self.query_max_length
    }
    pub fn files(&self) -> &ModelFiles {
        &self.files
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Tokenizes query-passage pairs: the token ids and type ids of each
    /// pair, truncated as the module docs say.
    pub fn encode_pairs(&self, pairs: &[(&str, &str)]) -> Result<Vec<Encoding>, RerankError> {
        let failed = |e: tokenizers::Error| RerankError::Runtime(format!("tokenization failed: {e}"));
        let mut out = Vec::with_capacity(pairs.len());
        let mut last: Option<(&str, Encoding)> = None;
        for &(query, passage) in pairs {
            // Pairs usually share their query: tokenize it once per run.
            let query_tokens = match &last {
                Some((text, tokens)) if *text == query => tokens.clone(),
                _ => {
                    let mut tokens = self.tokenizer.encode_fast(query, false).map_err(failed)?;
                    tokens.truncate(self.query_max_length, 0, TruncationDirection::Right);
                    // The cut-off rest would be post-processed too; it is not used.
                    tokens.take_overflowing();
                    last = Some((query, tokens.clone()));
                    tokens
                }
            };
            let room = self.max_length - self.pair_specials - query_tokens.len();
            let mut passage_tokens = self.tokenizer.encode_fast(passage, false).map_err(failed)?;
            passage_tokens.truncate(room, 0, TruncationDirection::Right);
            passage_tokens.take_overflowing();
            out.push(self.tokenizer.post_process(query_tokens, Some(passage_tokens), true).map_err(failed)?);
        }
        Ok(out)
    }

    /// The raw score of each pair, in their order: pairs are sorted by
    /// length and batched by count and padded tokens, as the embedder does.
    pub fn score_pairs(&self, pairs: &[(&str, &str)]) -> Result<Vec<f32>, RerankError> {
        let pairs = self.encode_pairs(pairs)?;
        let mut order: Vec<usize> = (0..pairs.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(pairs[i].len()));
        let lengths: Vec<usize> = order.iter().map(|&i| pairs[i].len()).collect();
        let mut scores = vec![0f32; pairs.len()];
        for range in plan_batches(&lengths, self.batch_size, self.batch_tokens) {
            let members = &order[range];
            let batch: Vec<&Encoding> = members.iter().map(|&i| &pairs[i]).collect();
            for (&i, score) in members.iter().zip(self.run_batch(&batch)?) {
                scores[i] = score;
            }
        }
        Ok(scores)
    }

    /// Runs one batch, redoing it on a CPU copy of the model when the GPU
    /// runs out of memory.
    fn run_batch(&self, pairs: &[&Encoding]) -> Result<Vec<f32>, RerankError> {
        self.cpu_fallback.run(
            &self.device,
            &self.counters,
            "reranking",
            (pairs.len(), pairs.iter().map(|p| p.len()).max().unwrap_or(0)),
            &self.model,
            |model| self.forward(model, pairs),
            || LoadedModel::load(&self.files, &self.encoder_config, &Device::Cpu, DType::F32, Linears::F32),
            RerankError::Runtime,
        )
    }

    fn forward(&self, model: &LoadedModel, pairs: &[&Encoding]) -> candle_core::Result<Vec<f32>> {
        let ids: Vec<&[u32]> = pairs.iter().map(|p| p.get_ids()).collect();
        let types: Vec<&[u32]> = pairs.iter().map(|p| p.get_type_ids()).collect();
        let input = model.encoder.prepare(&ids, self.type_ids.then_some(&types[..]))?;
        let hidden = model.encoder.forward(&input)?;
        let logits = model.head.forward(&hidden)?;
        self.counters.batch(&input.lengths, input.padded_len());
        Ok(logits)
    }
}

impl Reranker for CandleReranker {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn stats(&self) -> RerankStats {
        let s = self.counters.snapshot();
        RerankStats {
            batches: s.batches,
            pairs: s.texts,
            tokens: s.tokens,
            padded_tokens: s.padded_tokens,
            gpu_fallbacks: s.gpu_fallbacks,
        }
    }

    fn score(&self, query: &str, passages: &[&str]) -> Result<Vec<f32>, RerankError> {
        let pairs: Vec<(&str, &str)> = passages.iter().map(|p| (query, *p)).collect();
        self.score_pairs(&pairs)
    }

    fn overlong_pairs(&self, query: &str, passages: &[&str]) -> Option<(Vec<Option<usize>>, usize)> {
        // A pair is cut when its query is over `query_max_length` or the
        // whole pair over `max_length` (see `encode_pairs`).
        let count = |text: &str| self.tokenizer.encode_fast(text, false).ok().map(|e| e.len());
        let q = count(query)?;
        let over = passages
            .iter()
            .map(|p| {
                let total = q + count(p)? + self.pair_specials;
                (q > self.query_max_length || total > self.max_length).then_some(total)
            })
            .collect();
        Some((over, self.max_length))
    }
}
