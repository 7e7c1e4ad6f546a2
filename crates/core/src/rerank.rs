//! The rerank stage: a query and candidate passages in, one relevance score
//! per passage out.
//!
//! Implemented in-process by `datafactory-models` (a cross-encoder on candle)
//! and over HTTP by a client of `datafactory rerank-server`; search sees only
//! this trait. Scores are the model's raw logits: [`sigmoid`] turns them into
//! the 0-1 scores the text-embeddings-inference `/rerank` route returns by
//! default.

/// Why a rerank failed.
#[derive(Debug, thiserror::Error)]
pub enum RerankError {
    /// The model cannot be found or loaded, or the reranker service cannot be
    /// reached; the message says what and how to fix it.
    #[error("{0}")]
    Unavailable(String),
    /// The model (or the remote service) failed while scoring.
    #[error("rerank failed: {0}")]
    Runtime(String),
}

/// Work a reranker did since it was loaded (for metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RerankStats {
    /// Forward passes run.
    pub batches: u64,
    /// Query-passage pairs scored.
    pub pairs: u64,
    /// Real tokens of those pairs (special tokens included, padding not).
    pub tokens: u64,
    /// Tokens computed including padding.
    pub padded_tokens: u64,
    /// Batches that ran out of GPU memory and were redone on the CPU.
    pub gpu_fallbacks: u64,
}

pub trait Reranker: Send + Sync {
    /// A stable name of the model and its settings.
    fn model_id(&self) -> &str;
    /// The raw relevance score (logit) of each passage for `query`, in the
    /// order of `passages`; higher is more relevant.
    fn score(&self, query: &str, passages: &[&str]) -> Result<Vec<f32>, RerankError>;
    /// Work done so far; zeros when the implementation does not count (a
    /// remote reranker counts on its own side).
    fn stats(&self) -> RerankStats {
        RerankStats::default()
    }
    /// The remote workers it reranks on; empty for a model in this process.
    fn workers(&self) -> Vec<crate::WorkerState> {
        Vec::new()
    }
    /// Where the reranker can tell (a model in this process): for each
    /// passage, the tokens of its pair with `query` before any truncation,
    /// or None when the pair fits as it is; and the model's limit.
    fn overlong_pairs(&self, _query: &str, _passages: &[&str]) -> Option<(Vec<Option<usize>>, usize)> {
        None
    }
}

/// The logistic function: a raw score as a 0-1 relevance.
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigmoid_is_monotone_and_bounded() {
        assert_eq!(sigmoid(0.0), 0.5);
        assert!(sigmoid(-100.0) >= 0.0 && sigmoid(-100.0) < 1e-30);
        assert!(sigmoid(100.0) <= 1.0 && sigmoid(100.0) > 0.999_999);
        assert!(sigmoid(1.0) > sigmoid(0.5));
    }
}
