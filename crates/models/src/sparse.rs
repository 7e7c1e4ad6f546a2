//! bge-m3's sparse (lexical) head.
//!
//! Why it exists: bge-m3 scores each input token with `relu(w · h + b)` on the
//! last hidden state (`sparse_linear.pt`: `weight` `[1, hidden]`, `bias`
//! `[1]`). The weights of a text, keyed by token id, give a learned lexical
//! match that complements the dense vector. As in FlagEmbedding, a token id
//! that occurs several times keeps its largest weight, special tokens (CLS,
//! EOS, PAD, UNK, …) are dropped, and so are zero weights.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

/// The `sparse_linear` projection to one weight per token.
pub struct SparseHead {
    linear: Linear,
}

impl SparseHead {
    /// Reads `sparse_linear.pt` (a PyTorch state dict with `weight` and `bias`).
    pub fn load(path: &Path, hidden_size: usize, device: &Device) -> Result<SparseHead> {
        let vb = VarBuilder::from_pth(path, DType::F32, device)?;
        let weight = vb.get((1, hidden_size), "weight")?;
        let bias = vb.get(1, "bias")?;
        Ok(SparseHead { linear: Linear::new(weight, Some(bias)) })
    }

    /// Token weights `[batch, len]` (f32) from the f32 last hidden state.
    pub fn token_weights(&self, hidden: &Tensor) -> Result<Tensor> {
        self.linear.forward(hidden)?.relu()?.squeeze(2)
    }
}

/// Collects one text's weights: the largest weight per token id over its
/// real tokens, without `special` ids and zeros, sorted by token id.
pub fn collect_weights(ids: &[u32], weights: &[f32], special: &HashSet<u32>) -> Vec<(u32, f32)> {
    let mut best: BTreeMap<u32, f32> = BTreeMap::new();
    for (&id, &w) in ids.iter().zip(weights) {
        if w > 0.0 && !special.contains(&id) {
            let e = best.entry(id).or_insert(0.0);
            if w > *e {
                *e = w;
            }
        }
    }
    best.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_max_per_id_without_specials_or_zeros() {
        let special: HashSet<u32> = [0, 2].into_iter().collect();
        let got = collect_weights(&[0, 17, 5, 17, 9, 2], &[0.9, 0.2, 0.0, 0.7, 0.1, 0.8], &special);
        assert_eq!(got, vec![(9, 0.1), (17, 0.7)]);
    }
}
