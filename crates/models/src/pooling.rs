//! From per-token vectors to one vector per text, as the model was trained.
//!
//! Why it exists: the pooling a model needs is a property of the model, not of
//! our configuration. Models in the sentence-transformers layout say it in
//! `modules.json` and the pooling folder's `config.json` (mean for
//! all-MiniLM-L6-v2, CLS for bge-m3); a model without that configuration
//! (bge-m3 as used by FlagEmbedding) takes the CLS vector. Whatever the model
//! says, the dense output is always L2-normalised: every consumer (cosine, dot
//! product, the vector index) can then treat it as unit length.

use candle_core::{Result, Tensor, D};
use serde::Deserialize;
use std::path::Path;

/// One pooling operation; a model may concatenate several (rare).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolingMode {
    /// The first token's vector (`[CLS]` / `<s>`).
    Cls,
    /// The mean over real tokens.
    Mean,
    /// The element-wise maximum over real tokens.
    Max,
    /// The sum over real tokens divided by the square root of their count.
    MeanSqrtLen,
}

impl PoolingMode {
    pub fn name(self) -> &'static str {
        match self {
            PoolingMode::Cls => "cls",
            PoolingMode::Mean => "mean",
            PoolingMode::Max => "max",
            PoolingMode::MeanSqrtLen => "mean_sqrt_len",
        }
    }
}

/// How a model turns token vectors into a text vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pooling {
    /// Concatenated in this order (sentence-transformers' order: cls, max, mean, mean_sqrt_len).
    pub modes: Vec<PoolingMode>,
}

impl Pooling {
    pub fn cls() -> Pooling {
        Pooling { modes: vec![PoolingMode::Cls] }
    }

    /// Reads the pooling folder's `config.json`; `None` (no such file) means CLS.
    pub fn from_file(path: Option<&Path>) -> std::result::Result<Pooling, String> {
        let Some(path) = path else {
            return Ok(Pooling::cls());
        };
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Pooling::from_json(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn from_json(text: &str) -> std::result::Result<Pooling, String> {
        #[derive(Deserialize)]
        struct Raw {
            #[serde(default)]
            pooling_mode_cls_token: bool,
            #[serde(default)]
            pooling_mode_mean_tokens: bool,
            #[serde(default)]
            pooling_mode_max_tokens: bool,
            #[serde(default)]
            pooling_mode_mean_sqrt_len_tokens: bool,
            #[serde(default)]
            pooling_mode_weightedmean_tokens: bool,
            #[serde(default)]
            pooling_mode_lasttoken: bool,
            #[serde(default = "yes")]
            include_prompt: bool,
        }
        fn yes() -> bool {
            true
        }
        let raw: Raw = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if raw.pooling_mode_weightedmean_tokens || raw.pooling_mode_lasttoken {
            return Err("weighted-mean and last-token pooling are not supported".to_string());
        }
        if !raw.include_prompt {
            return Err("pooling with include_prompt = false is not supported".to_string());
        }
        let modes: Vec<PoolingMode> = [
            (raw.pooling_mode_cls_token, PoolingMode::Cls),
            (raw.pooling_mode_max_tokens, PoolingMode::Max),
            (raw.pooling_mode_mean_tokens, PoolingMode::Mean),
            (raw.pooling_mode_mean_sqrt_len_tokens, PoolingMode::MeanSqrtLen),
        ]
        .into_iter()
        .filter_map(|(on, mode)| on.then_some(mode))
        .collect();
        if modes.is_empty() {
            return Ok(Pooling::cls());
        }
        Ok(Pooling { modes })
    }

    /// A short name for the model id, e.g. `mean` or `cls+mean`.
    pub fn name(&self) -> String {
        self.modes.iter().map(|m| m.name()).collect::<Vec<_>>().join("+")
    }

    /// Pools `hidden` (`[batch, len, hidden]`, f32) with `mask` (`[batch,
    /// len]`, 1 for real tokens) and L2-normalises: `[batch, dim]`.
    pub fn pool_normalized(&self, hidden: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let mut parts = Vec::with_capacity(self.modes.len());
        for mode in &self.modes {
            parts.push(match mode {
                PoolingMode::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?,
                PoolingMode::Mean => {
                    let counts = mask.sum_keepdim(1)?.clamp(1.0, f64::MAX)?;
                    masked_sum(hidden, mask)?.broadcast_div(&counts)?
                }
                PoolingMode::MeanSqrtLen => {
                    let counts = mask.sum_keepdim(1)?.clamp(1.0, f64::MAX)?.sqrt()?;
                    masked_sum(hidden, mask)?.broadcast_div(&counts)?
                }
                PoolingMode::Max => {
                    // Padding gets a large negative value so it never wins.
                    let penalty = ((mask - 1.0)? * 1.0e9)?.unsqueeze(2)?;
                    hidden.broadcast_add(&penalty)?.max(1)?
                }
            });
        }
        let pooled = if parts.len() == 1 { parts.pop().expect("one part") } else { Tensor::cat(&parts, 1)? };
        l2_normalize(&pooled)
    }
}

fn masked_sum(hidden: &Tensor, mask: &Tensor) -> Result<Tensor> {
    hidden.broadcast_mul(&mask.unsqueeze(2)?)?.sum(1)
}

/// L2-normalises each row of `[batch, dim]` (a zero row stays zero).
pub fn l2_normalize(xs: &Tensor) -> Result<Tensor> {
    let norms = xs.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
    xs.broadcast_div(&norms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn parses_sentence_transformers_configs() {
        let p = Pooling::from_json(
            r#"{"word_embedding_dimension": 384, "pooling_mode_cls_token": false,
                "pooling_mode_mean_tokens": true, "pooling_mode_max_tokens": false,
                "pooling_mode_mean_sqrt_len_tokens": false}"#,
        )
        .unwrap();
        assert_eq!(p.modes, vec![PoolingMode::Mean]);
        let p = Pooling::from_json(r#"{"pooling_mode_cls_token": true}"#).unwrap();
        assert_eq!(p, Pooling::cls());
        assert_eq!(Pooling::from_file(None).unwrap(), Pooling::cls());
        assert!(Pooling::from_json(r#"{"pooling_mode_lasttoken": true}"#).is_err());
    }

    #[test]
    fn pools_only_real_tokens() -> Result<()> {
        let dev = Device::Cpu;
        // Two texts, three positions; the second has one padding position.
        let hidden = Tensor::new(
            &[[[1f32, 0.0], [3.0, 0.0], [5.0, 4.0]], [[0.0, 2.0], [0.0, 4.0], [100.0, 100.0]]],
            &dev,
        )?;
        let mask = Tensor::new(&[[1f32, 1.0, 1.0], [1.0, 1.0, 0.0]], &dev)?;
        let mean =
            Pooling { modes: vec![PoolingMode::Mean] }.pool_normalized(&hidden, &mask)?.to_vec2::<f32>()?;
        // [3, 4/3] normalised; [0, 3] normalised.
        let n = (9.0f32 + 16.0 / 9.0).sqrt();
        assert!((mean[0][0] - 3.0 / n).abs() < 1e-6);
        assert!((mean[1][1] - 1.0).abs() < 1e-6 && mean[1][0].abs() < 1e-6);
        let max =
            Pooling { modes: vec![PoolingMode::Max] }.pool_normalized(&hidden, &mask)?.to_vec2::<f32>()?;
        assert!(max[1][0].abs() < 1e-6, "padding must not win: {max:?}");
        let cls = Pooling::cls().pool_normalized(&hidden, &mask)?.to_vec2::<f32>()?;
        assert_eq!(cls[0], vec![1.0, 0.0]);
        Ok(())
    }
}
