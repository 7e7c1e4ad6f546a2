//! [`CandleEmbedder`]: the [`Embedder`] that runs a model in this process.
//!
//! Why it exists: it owns everything between texts and vectors that the
//! model's files decide — the tokenizer and its limits, the instruction
//! prefixes, batching, the device, the pooling and the sparse head — so the
//! pipeline sees only `embed(texts) -> vectors`.
//!
//! Tokenization overrides the tokenizer file's own truncation and padding
//! (all-MiniLM-L6-v2's file truncates at 128 and pads to a fixed 128): texts
//! are truncated at the effective maximum length and padded only to the
//! longest text of their batch. Texts are sorted by token length and grouped
//! into batches bounded by `batch_size` texts and `batch_tokens` padded tokens,
//! so little compute goes to padding; results come back in the caller's order.

use crate::encoder::{bf16_amx_available, Encoder, EncoderConfig, Linears};
use crate::pooling::Pooling;
use crate::resolve::{resolve_model, ModelFiles};
use crate::sparse::{collect_weights, SparseHead};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use datafactory_core::config::EmbeddingConfig;
use datafactory_core::{EmbedError, Embedder, Embedding, InputKind, TokenCounter};
use std::collections::HashSet;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokenizers::{
    Encoding, PostProcessor, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

/// Counters of the work done since the embedder was loaded (the
/// [`Embedder::stats`] of every embedder).
pub use datafactory_core::EmbedderStats;

#[derive(Default)]
pub(crate) struct Counters {
    batches: AtomicU64,
    texts: AtomicU64,
    tokens: AtomicU64,
    padded_tokens: AtomicU64,
    gpu_fallbacks: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> EmbedderStats {
        EmbedderStats {
            batches: self.batches.load(Ordering::Relaxed),
            texts: self.texts.load(Ordering::Relaxed),
            tokens: self.tokens.load(Ordering::Relaxed),
            padded_tokens: self.padded_tokens.load(Ordering::Relaxed),
            gpu_fallbacks: self.gpu_fallbacks.load(Ordering::Relaxed),
        }
    }

    /// Counts one forward pass over `lengths` real tokens padded to `padded_len`.
    pub(crate) fn batch(&self, lengths: &[usize], padded_len: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.texts.fetch_add(lengths.len() as u64, Ordering::Relaxed);
        self.tokens.fetch_add(lengths.iter().sum::<usize>() as u64, Ordering::Relaxed);
        self.padded_tokens.fetch_add((lengths.len() * padded_len) as u64, Ordering::Relaxed);
    }

    pub(crate) fn gpu_fallback(&self) {
        self.gpu_fallbacks.fetch_add(1, Ordering::Relaxed);
    }
}

/// The encoder and heads on one device.
struct LoadedModel {
    encoder: Encoder,
    sparse: Option<SparseHead>,
}

impl LoadedModel {
    fn load(
        files: &ModelFiles,
        config: &EncoderConfig,
        sparse: bool,
        device: &Device,
        dtype: DType,
        linears: Linears,
    ) -> Result<LoadedModel, EmbedError> {
        let unavailable =
            |what: &str, e: candle_core::Error| EmbedError::Unavailable(format!("cannot load {what}: {e}"));
        let weights = &files.weights;
        let vb = open_weights(weights, dtype, device)
            .map_err(|e| unavailable(&weights.display().to_string(), e))?;
        let mut encoder = Encoder::load(vb, config)
            .map_err(|e| unavailable(&format!("the encoder from {}", weights.display()), e))?;
        encoder
            .use_linears(linears)
            .map_err(|e| unavailable(&format!("the encoder with {linears:?} linear layers"), e))?;
        let sparse = match (&files.sparse_linear, sparse) {
            (Some(path), true) => Some(
                SparseHead::load(path, config.hidden_size, device)
                    .map_err(|e| unavailable(&path.display().to_string(), e))?,
            ),
            _ => None,
        };
        Ok(LoadedModel { encoder, sparse })
    }
}

/// A model's weights (`model.safetensors`, memory-mapped, or `pytorch_model.bin`).
pub(crate) fn open_weights(
    weights: &std::path::Path,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<VarBuilder<'static>> {
    if weights.extension().is_some_and(|e| e == "safetensors") {
        // SAFETY: the file is memory-mapped read-only; it must not be
        // truncated or rewritten while mapped. Model files are written once
        // (a download renames a finished file into place) and never changed
        // in place, the assumption every safetensors loader makes.
        unsafe { VarBuilder::from_mmaped_safetensors(&[weights], dtype, device) }
    } else {
        VarBuilder::from_pth(weights, dtype, device)
    }
}

/// An in-process embedding model (BERT or XLM-RoBERTa family) on candle.
pub struct CandleEmbedder {
    files: ModelFiles,
    encoder_config: EncoderConfig,
    model_id: String,
    /// Truncates at `max_length`, never pads.
    tokenizer: Tokenizer,
    /// Windows per passage at most (`embed_passages`).
    max_windows: usize,
    counter: Arc<ModelTokenCounter>,
    model: LoadedModel,
    /// A CPU copy of the model, made on the first GPU out-of-memory error.
    cpu_fallback: CpuFallback<LoadedModel>,
    pooling: Pooling,
    special_ids: HashSet<u32>,
    max_length: usize,
    batch_size: usize,
    batch_tokens: usize,
    query_prefix: String,
    passage_prefix: String,
    dimension: usize,
    device: Device,
    dtype: DType,
    counters: Counters,
}

/// Loads the configured model (see [`CandleEmbedder::load`]) behind the
/// [`Embedder`] trait.
pub fn load_embedder(config: &EmbeddingConfig) -> Result<Arc<dyn Embedder>, EmbedError> {
    Ok(Arc::new(CandleEmbedder::load(config)?))
}

impl CandleEmbedder {
    /// Resolves the model's files ([`resolve_model`]) and loads it.
    pub fn load(config: &EmbeddingConfig) -> Result<CandleEmbedder, EmbedError> {
        let files = resolve_model(config)?;
        CandleEmbedder::from_files(files, config)
    }

    /// Loads a model from resolved files; `config.model` is not read.
    pub fn from_files(files: ModelFiles, config: &EmbeddingConfig) -> Result<CandleEmbedder, EmbedError> {
        let read = |path: &std::path::Path| {
            std::fs::read_to_string(path)
                .map_err(|e| EmbedError::Unavailable(format!("cannot read {}: {e}", path.display())))
        };
        let encoder_config = EncoderConfig::from_json(&read(&files.config)?)
            .and_then(|c| c.architecture().map(|_| c))
            .map_err(|e| EmbedError::Unavailable(format!("{}: {e}", files.config.display())))?;
        let device = select_device(&config.device, "embedding")?;
        let (dtype, linears) = select_dtype(&config.dtype, &device, "embedding")?;

        // The effective limit: the configuration, the position table, and the
        // length the sentence-transformers model was set up for.
        let mut max_length = config.max_length.min(encoder_config.max_input_tokens());
        if let Some(path) = &files.sentence_bert_config {
            if let Some(n) = serde_json::from_str::<serde_json::Value>(&read(path)?)
                .ok()
                .and_then(|v| v.get("max_seq_length").and_then(|n| n.as_u64()))
            {
                max_length = max_length.min(n as usize);
            }
        }

        let tokenizer_bytes = std::fs::read(&files.tokenizer).map_err(|e| {
            EmbedError::Unavailable(format!("cannot read {}: {e}", files.tokenizer.display()))
        })?;
        let mut base = Tokenizer::from_bytes(&tokenizer_bytes).map_err(|e| {
            EmbedError::Unavailable(format!("cannot load {}: {e}", files.tokenizer.display()))
        })?;
        base.with_padding(None);
        let mut counting = base.clone();
        counting
            .with_truncation(None)
            .map_err(|e| EmbedError::Unavailable(format!("tokenizer {}: {e}", files.tokenizer.display())))?;
        let mut tokenizer = base;
        tokenizer
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| EmbedError::Unavailable(format!("tokenizer {}: {e}", files.tokenizer.display())))?;
        let special_ids: HashSet<u32> = tokenizer
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| id)
            .chain([encoder_config.pad_token_id])
            .collect();

        let pooling = Pooling::from_file(files.pooling_config.as_deref()).map_err(EmbedError::Unavailable)?;
        let model = LoadedModel::load(&files, &encoder_config, config.sparse, &device, dtype, linears)?;
        crate::gpu::keep_cache(&device);
        if config.sparse && model.sparse.is_none() {
            tracing::debug!(model = %files.name, "no sparse_linear.pt: dense vectors only");
        }

        let mut model_id = format!("{};pool={};max={max_length}", files.name, pooling.name());
        if !config.passage_prefix.is_empty() {
            let hash = blake3::hash(config.passage_prefix.as_bytes()).to_hex();
            model_id.push_str(&format!(";passage_prefix={}", &hash.as_str()[..8]));
        }
        let tokenizer_hash = blake3::hash(&tokenizer_bytes).to_hex();
        let counter = Arc::new(ModelTokenCounter {
            tokenizer: counting,
            name: format!("tokenizer:{}:{}", files.name, &tokenizer_hash.as_str()[..8]),
        });
        tracing::info!(
            model = %files.name,
            dir = %files.dir.display(),
            device = ?device,
            ?dtype,
            ?linears,
            pooling = %pooling.name(),
            max_length,
            sparse = model.sparse.is_some(),
            "embedding model loaded"
        );
        Ok(CandleEmbedder {
            dimension: encoder_config.hidden_size * pooling.modes.len(),
            files,
            encoder_config,
            model_id,
            tokenizer,
            max_windows: config.max_windows.max(1),
            counter,
            model,
            cpu_fallback: CpuFallback::new(),
            pooling,
            special_ids,
            max_length,
            batch_size: config.batch_size.max(1),
            batch_tokens: config.batch_tokens.max(1),
            query_prefix: config.query_prefix.clone(),
            passage_prefix: config.passage_prefix.clone(),
            device,
            dtype,
            counters: Counters::default(),
        })
    }

    /// Work done so far.
    pub fn stats(&self) -> EmbedderStats {
        self.counters.snapshot()
    }

    /// Tokens per input at most (special tokens and prefix included).
    pub fn max_length(&self) -> usize {
        self.max_length
    }
    pub fn pooling(&self) -> &Pooling {
        &self.pooling
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
    /// The encoder, for heads built on the same weights.
    pub fn encoder(&self) -> &Encoder {
        &self.model.encoder
    }

    /// Runs one batch, redoing it on a CPU copy of the model when the GPU
    /// runs out of memory.
    fn run_batch(&self, ids: &[&[u32]]) -> Result<Vec<Embedding>, EmbedError> {
        self.cpu_fallback.run(
            &self.device,
            &self.counters,
            "embedding",
            (ids.len(), ids.iter().map(|s| s.len()).max().unwrap_or(0)),
            &self.model,
            |model| self.forward(model, ids),
            || {
                let sparse = self.model.sparse.is_some();
                LoadedModel::load(
                    &self.files,
                    &self.encoder_config,
                    sparse,
                    &Device::Cpu,
                    DType::F32,
                    Linears::F32,
                )
            },
            EmbedError::Runtime,
        )
    }

    /// Embeds token sequences, in length-sorted batches; results in the
    /// order of `ids`.
    fn run_all(&self, ids: &[&[u32]]) -> Result<Vec<Embedding>, EmbedError> {
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
        let lengths: Vec<usize> = order.iter().map(|&i| ids[i].len()).collect();
        let mut out = vec![Embedding::default(); ids.len()];
        for range in plan_batches(&lengths, self.batch_size, self.batch_tokens) {
            let members = &order[range];
            let batch: Vec<&[u32]> = members.iter().map(|&i| ids[i]).collect();
            for (&i, embedding) in members.iter().zip(self.run_batch(&batch)?) {
                out[i] = embedding;
            }
        }
        Ok(out)
    }

    fn forward(&self, model: &LoadedModel, ids: &[&[u32]]) -> candle_core::Result<Vec<Embedding>> {
        let input = model.encoder.prepare(ids, None)?;
        let hidden = model.encoder.forward(&input)?.to_dtype(DType::F32)?;
        let dense = self.pooling.pool_normalized(&hidden, &input.mask)?.to_vec2::<f32>()?;
        let sparse: Option<Vec<Vec<f32>>> = match &model.sparse {
            Some(head) => Some(head.token_weights(&hidden)?.to_vec2::<f32>()?),
            None => None,
        };
        self.counters.batch(&input.lengths, input.padded_len());
        Ok(dense
            .into_iter()
            .enumerate()
            .map(|(i, dense)| Embedding {
                dense,
                sparse: sparse
                    .as_ref()
                    .map(|w| collect_weights(ids[i], &w[i], &self.special_ids))
                    .unwrap_or_default(),
            })
            .collect())
    }
}

impl Embedder for CandleEmbedder {
    fn stats(&self) -> EmbedderStats {
        self.counters.snapshot()
    }

    fn release_cached_memory(&self) -> Option<(u64, u64)> {
        let released = crate::gpu::release_cached(&self.device);
        if let Some((before, after)) = released {
            tracing::info!(before, after, "released cached GPU memory");
        }
        released
    }

    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn max_input_tokens(&self) -> usize {
        self.max_length
    }

    fn dimension(&self) -> usize {
        self.dimension
    }

    fn produces_sparse(&self) -> bool {
        self.model.sparse.is_some()
    }

    fn embed(&self, texts: &[&str], kind: InputKind) -> Result<Vec<Embedding>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let prefix = match kind {
            InputKind::Query => &self.query_prefix,
            InputKind::Passage => &self.passage_prefix,
        };
        let encodings = encode(&self.tokenizer, texts, prefix)?;
        let ids: Vec<&[u32]> = encodings.iter().map(|e| e.get_ids()).collect();
        self.run_all(&ids)
    }

    fn max_windows(&self) -> usize {
        self.max_windows
    }

    fn embed_passages(&self, texts: &[&str]) -> Result<Vec<Vec<Embedding>>, EmbedError> {
        if self.max_windows <= 1 {
            return Ok(self.embed(texts, InputKind::Passage)?.into_iter().map(|e| vec![e]).collect());
        }
        // The whole text's tokens, cut into windows (each with its special
        // tokens, as the post-processor adds them).
        let processor = self.tokenizer.get_post_processor();
        let added = processor.map_or(0, |p| p.added_tokens(false));
        let content = self.max_length.saturating_sub(added).max(1);
        let overlap = window_overlap(self.max_length, added);
        let inputs: Vec<String> =
            texts.iter().map(|t| format!("{}{t}", self.passage_prefix).trim().to_string()).collect();
        let encodings = self
            .counter
            .tokenizer
            .encode_batch(inputs, false)
            .map_err(|e| EmbedError::Runtime(format!("tokenization failed: {e}")))?;
        let mut windows: Vec<Vec<u32>> = Vec::new();
        let mut counts = Vec::with_capacity(encodings.len());
        for mut e in encodings {
            e.truncate(content, overlap, TruncationDirection::Right);
            let parts: Vec<Encoding> =
                std::iter::once(e.clone()).chain(e.take_overflowing()).take(self.max_windows).collect();
            counts.push(parts.len());
            for mut part in parts {
                part.take_overflowing();
                let part = match processor {
                    Some(p) => p
                        .process(part, None, true)
                        .map_err(|e| EmbedError::Runtime(format!("tokenization failed: {e}")))?,
                    None => part,
                };
                windows.push(part.get_ids().to_vec());
            }
        }
        let ids: Vec<&[u32]> = windows.iter().map(Vec::as_slice).collect();
        let mut vectors = self.run_all(&ids)?.into_iter();
        Ok(counts.into_iter().map(|n| vectors.by_ref().take(n).collect()).collect())
    }

    fn token_counter(&self) -> Arc<dyn TokenCounter> {
        self.counter.clone()
    }
}

/// Tokenizes texts with a prefix, stripped of surrounding white space as
/// sentence-transformers does.
fn encode(tokenizer: &Tokenizer, texts: &[&str], prefix: &str) -> Result<Vec<Encoding>, EmbedError> {
    let inputs: Vec<String> = texts.iter().map(|t| format!("{prefix}{t}").trim().to_string()).collect();
    tokenizer.encode_batch(inputs, true).map_err(|e| EmbedError::Runtime(format!("tokenization failed: {e}")))
}

/// How many tokens a window shares with the one before: a quarter of the
/// text a window holds (63 of MiniLM's 254). A sentence cut at one window's
/// end is then whole in the next unless it is longer than a quarter window,
/// for 4/3 of the windows (and compute) that cutting without overlap takes.
pub fn window_overlap(max_length: usize, added_tokens: usize) -> usize {
    max_length.saturating_sub(added_tokens) / 4
}

/// Splits texts sorted by descending token length into consecutive batches of
/// at most `batch_size` texts and `batch_tokens` padded tokens (count × the
/// batch's first, longest, length); a text longer than `batch_tokens` still
/// gets a batch of its own.
pub(crate) fn plan_batches(
    sorted_lengths: &[usize],
    batch_size: usize,
    batch_tokens: usize,
) -> Vec<Range<usize>> {
    let mut batches = Vec::new();
    let mut start = 0;
    while start < sorted_lengths.len() {
        let longest = sorted_lengths[start].max(1);
        let by_tokens = (batch_tokens / longest).max(1);
        let end = sorted_lengths.len().min(start + batch_size.max(1).min(by_tokens));
        batches.push(start..end);
        start = end;
    }
    batches
}

/// Counts tokens with the model's tokenizer, without special tokens and
/// without truncation.
pub struct ModelTokenCounter {
    tokenizer: Tokenizer,
    name: String,
}

impl TokenCounter for ModelTokenCounter {
    fn count(&self, text: &str) -> usize {
        match self.tokenizer.encode_fast(text, false) {
            Ok(encoding) => encoding.len(),
            // Tokenizers fail only on inputs they cannot normalise; fall
            // back to an estimate rather than lose the chunk.
            Err(_) => datafactory_core::HeuristicTokenCounter.count(text),
        }
    }

    fn name(&self) -> String {
        self.name.clone()
    }
}

/// The device named by `<section>.device`.
pub(crate) fn select_device(name: &str, section: &str) -> Result<Device, EmbedError> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(0).inspect(crate::gpu::prepare_device).map_err(|e| {
            EmbedError::Unavailable(format!(
                "{section}.device = \"cuda\" but no CUDA device can be used: {e}. \
                 The GPU needs a build with the `cuda` feature of datafactory-models; \
                 otherwise set {section}.device to \"cpu\" or \"auto\"."
            ))
        }),
        "auto" => {
            if candle_core::utils::cuda_is_available() {
                match Device::new_cuda(0) {
                    Ok(device) => {
                        crate::gpu::prepare_device(&device);
                        return Ok(device);
                    }
                    Err(e) => {
                        tracing::info!(error = %e, section, "no usable CUDA device; running on the CPU")
                    }
                }
            }
            Ok(Device::Cpu)
        }
        other => {
            Err(EmbedError::Unavailable(format!("{section}.device must be cpu, cuda or auto, is {other:?}")))
        }
    }
}

/// The dtype the model loads in, and how its linear layers multiply: in
/// int8 (`"int8"`: CPU only), in bf16 on AMX tiles (`"bf16"` on a CPU with
/// AMX-BF16: f32 tensors, the matmuls' inputs rounded to bf16; candle's bf16
/// on other devices), f32 everywhere else; `name` is `<section>.dtype`.
pub(crate) fn select_dtype(
    name: &str,
    device: &Device,
    section: &str,
) -> Result<(DType, Linears), EmbedError> {
    match name {
        "auto" if device.is_cuda() => Ok((DType::F16, Linears::F32)),
        "auto" | "f32" => Ok((DType::F32, Linears::F32)),
        "f16" => Ok((DType::F16, Linears::F32)),
        "bf16" if device.is_cpu() && bf16_amx_available() => Ok((DType::F32, Linears::Bf16Amx)),
        "bf16" => Ok((DType::BF16, Linears::F32)),
        "int8" if device.is_cpu() => Ok((DType::F32, Linears::Int8)),
        "int8" => Err(EmbedError::Unavailable(format!(
            "{section}.dtype = \"int8\" runs on the CPU only; set {section}.device to \"cpu\" \
             or choose f16, bf16 or f32 for the GPU"
        ))),
        other => Err(EmbedError::Unavailable(format!(
            "{section}.dtype must be auto, f32, f16, bf16 or int8, is {other:?}"
        ))),
    }
}

/// Whether a candle error is a GPU allocation failure (cudarc reports
/// `CUDA_ERROR_OUT_OF_MEMORY`, "out of memory").
pub(crate) fn is_out_of_memory(e: &candle_core::Error) -> bool {
    let text = e.to_string().to_ascii_lowercase();
    text.contains("out of memory") || text.contains("out_of_memory")
}

/// The CPU copy of a model that runs on the GPU, loaded (f32) the first time
/// a batch runs the GPU out of memory; the embedder and the reranker share it.
pub(crate) struct CpuFallback<M>(Mutex<Option<Arc<M>>>);

impl<M> CpuFallback<M> {
    pub(crate) fn new() -> CpuFallback<M> {
        CpuFallback(Mutex::new(None))
    }

    /// `forward` on `model` (on `device`); when that runs the GPU out of
    /// memory, the batch (`size` inputs, the longest `longest` tokens) is
    /// counted, logged and redone on the CPU copy, made by `load_cpu` once.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn run<T, E>(
        &self,
        device: &Device,
        counters: &Counters,
        task: &str,
        (size, longest): (usize, usize),
        model: &M,
        forward: impl Fn(&M) -> candle_core::Result<T>,
        load_cpu: impl FnOnce() -> Result<M, E>,
        runtime: impl Fn(String) -> E,
    ) -> Result<T, E> {
        match forward(model) {
            Ok(out) => Ok(out),
            // A CUDA out-of-memory error on a large batch falls back to the
            // CPU instead of failing the job (crates/models/tests/gpu.rs).
            Err(e) if device.is_cuda() && is_out_of_memory(&e) => {
                counters.gpu_fallback();
                tracing::warn!(size, longest, error = %e, "GPU out of memory; {task} this batch on the CPU");
                let cpu = {
                    let mut slot =
                        self.0.lock().map_err(|_| runtime("CPU fallback lock poisoned".to_string()))?;
                    match slot.as_ref() {
                        Some(cpu) => cpu.clone(),
                        None => slot.insert(Arc::new(load_cpu()?)).clone(),
                    }
                };
                forward(&cpu).map_err(|e| runtime(e.to_string()))
            }
            Err(e) => Err(runtime(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_respect_both_bounds() {
        let lengths = [100, 90, 50, 50, 50, 10, 10, 10, 10, 3];
        let b = plan_batches(&lengths, 4, 200);
        assert_eq!(b, vec![0..2, 2..6, 6..10]);
        for r in &b {
            assert!(r.len() <= 4);
            assert!(r.len() * lengths[r.start] <= 200);
        }
        // A text longer than the token bound still gets its own batch.
        assert_eq!(plan_batches(&[500, 5], 8, 100), vec![0..1, 1..2]);
        assert!(plan_batches(&[], 8, 100).is_empty());
    }

    #[test]
    fn devices_and_dtypes() {
        assert!(select_device("cpu", "embedding").unwrap().is_cpu());
        assert!(select_device("auto", "embedding").is_ok());
        assert!(select_device("tpu", "rerank").unwrap_err().to_string().contains("rerank.device"));
        assert_eq!(select_dtype("auto", &Device::Cpu, "embedding").unwrap(), (DType::F32, Linears::F32));
        let bf16 =
            if bf16_amx_available() { (DType::F32, Linears::Bf16Amx) } else { (DType::BF16, Linears::F32) };
        assert_eq!(select_dtype("bf16", &Device::Cpu, "embedding").unwrap(), bf16);
        assert_eq!(select_dtype("int8", &Device::Cpu, "embedding").unwrap(), (DType::F32, Linears::Int8));
        assert!(select_dtype("int4", &Device::Cpu, "embedding").is_err());
        if !candle_core::utils::cuda_is_available() {
            let e = select_device("cuda", "embedding").unwrap_err().to_string();
            assert!(e.contains("cuda"), "{e}");
        }
    }

    #[test]
    fn out_of_memory_is_recognised() {
        let e = candle_core::Error::Msg("DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")".into());
        assert!(is_out_of_memory(&e));
        assert!(!is_out_of_memory(&candle_core::Error::Msg("shape mismatch".into())));
    }
}
