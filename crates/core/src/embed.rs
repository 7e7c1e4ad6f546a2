//! The embedding stage: text in, dense (and optionally sparse) vectors out.
//!
//! Implemented in-process by `datafactory-models` (candle); remote
//! implementations (an HTTP client) can implement the same trait.

use crate::TokenCounter;
use std::sync::Arc;

/// Whether a text is a search query or a stored passage: some models embed
/// them differently (an instruction prefix), and queries are short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    Query,
    Passage,
}

/// The vectors of one text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Embedding {
    /// L2-normalised dense vector (`Embedder::dimension` values).
    pub dense: Vec<f32>,
    /// Lexical weights by token id (bge-m3's sparse head), sorted by token id,
    /// without special tokens; empty when the model has no sparse head.
    pub sparse: Vec<(u32, f32)>,
}

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The model cannot be found or loaded; the message says what was looked
    /// for and how to provide it.
    #[error("{0}")]
    Unavailable(String),
    /// The model failed while running.
    #[error("embedding failed: {0}")]
    Runtime(String),
}

/// Work an embedder did since it was loaded (for metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmbedderStats {
    /// Forward passes run.
    pub batches: u64,
    /// Texts embedded.
    pub texts: u64,
    /// Real tokens embedded (special tokens included, padding not).
    pub tokens: u64,
    /// Tokens computed including padding.
    pub padded_tokens: u64,
    /// Batches that ran out of GPU memory and were redone on the CPU.
    pub gpu_fallbacks: u64,
}

/// One remote worker (an HTTP endpoint an embedder or reranker sends its
/// work to), as the client's pool knows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct WorkerState {
    pub url: String,
    /// Not left out after failures (or its time out is over).
    pub in_pool: bool,
    pub consecutive_failures: u32,
    pub requests: u64,
    pub failures: u64,
}

pub trait Embedder: Send + Sync {
    /// A stable name of the model and its settings (stored with the vectors).
    fn model_id(&self) -> &str;
    fn dimension(&self) -> usize;
    /// Tokens of one text the model reads (longer texts are truncated).
    fn max_input_tokens(&self) -> usize;
    /// Whether `embed` fills `Embedding::sparse`.
    fn produces_sparse(&self) -> bool;
    /// Embeds texts; the result is in the order of `texts`. A text longer
    /// than the model's input is truncated.
    fn embed(&self, texts: &[&str], kind: InputKind) -> Result<Vec<Embedding>, EmbedError>;
    /// The most vectors [`Embedder::embed_passages`] gives one passage
    /// (1: it truncates, as `embed` does).
    fn max_windows(&self) -> usize {
        1
    }
    /// Embeds passages whole: per text, in the order of `texts`, one vector
    /// per window of the model's input over the text's tokens (the first
    /// window is what `embed` reads; each next one overlaps the one before),
    /// at most [`Embedder::max_windows`]. The default reads the first window
    /// only (`embed`).
    fn embed_passages(&self, texts: &[&str]) -> Result<Vec<Vec<Embedding>>, EmbedError> {
        Ok(self.embed(texts, InputKind::Passage)?.into_iter().map(|e| vec![e]).collect())
    }
    /// Counts tokens with the model's own tokenizer (for the chunker's budget).
    fn token_counter(&self) -> Arc<dyn TokenCounter>;
    /// Hands memory cached between batches back to the device (a GPU's
    /// memory pool) after a job; returns the bytes held before and after.
    /// `None` where nothing is cached (the CPU).
    fn release_cached_memory(&self) -> Option<(u64, u64)> {
        None
    }
    /// Work done so far; zeros when the implementation does not count.
    fn stats(&self) -> EmbedderStats {
        EmbedderStats::default()
    }
    /// The remote workers it embeds on; empty for a model in this process.
    fn workers(&self) -> Vec<WorkerState> {
        Vec::new()
    }
}
