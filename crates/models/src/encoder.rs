//! Our own BERT-family encoder on candle: BERT and XLM-RoBERTa.
//!
//! Why not candle-transformers' `BertModel`: it builds the attention mask as
//! `(1 - mask) * f32::MIN` in the model's dtype, which becomes `-inf` in
//! f16/bf16 and turns outputs into NaN. Here the additive mask is an f32
//! tensor with a finite large negative value, and the attention scores are
//! softmaxed in f32 whatever the model's dtype, so f32, f16 and bf16 all give
//! finite, matching outputs.
//!
//! The two architectures share every layer; they differ only in position ids
//! (XLM-RoBERTa counts from `pad_token_id + 1` and gives padding the position
//! `pad_token_id`) and in having a single token type. [`Encoder::forward`]
//! returns the last hidden state, so heads (pooling, bge-m3's sparse weights, a
//! reranker's classifier) sit on top of the same code.
//!
//! For speed: the query, key and value projections are fused into one matmul,
//! the `1/sqrt(head_dim)` scale is folded into the query weights at load time,
//! and layer norm uses candle's fused kernel. On the CPU in f32, the linear
//! layers' matmul adds onto the bias and residual and the GELU runs in place
//! after it, and attention runs per sequence in register tiles with the mask
//! added inside the softmax ([`crate::kernels`]); with
//! [`Encoder::quantize_int8`] the linear layers run in int8 (AVX-512 VNNI).
//! On a CUDA device (the `cuda` feature) the same steps run as our fused
//! kernels after cuBLAS's matrix products ([`crate::cuda_kernels`]: bias and
//! activation in one pass, bias + residual + layer norm in one pass, the Q/K/V
//! bias and head split in one pass, the length-masked softmax in place, the
//! heads merged back in one pass), unless `DATAFACTORY_CUDA_FUSED=0`.

use crate::kernels::{self, Bf16Linear, Epilogue, Int8Linear};
use candle_core::{CpuStorage, DType, Device, InplaceOp2, Layout, Module, Result, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};
use serde::Deserialize;

/// The additive attention mask value of padding positions. Finite in f32 (the
/// mask and the softmax are always f32), so `0 * MASK_VALUE` is 0, not NaN.
pub const MASK_VALUE: f32 = -1.0e9;

/// Which position scheme and weight layout a checkpoint uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// `model_type` "bert": positions 0, 1, 2, …
    Bert,
    /// `model_type` "xlm-roberta" (also "roberta"): positions start at
    /// `pad_token_id + 1` and skip padding.
    XlmRoberta,
}

/// The fields of Hugging Face's `config.json` the encoder reads.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EncoderConfig {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab_size")]
    pub type_vocab_size: usize,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: u32,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
}

fn default_hidden_act() -> String {
    "gelu".to_string()
}
fn default_type_vocab_size() -> usize {
    2
}
fn default_layer_norm_eps() -> f64 {
    1e-12
}

impl EncoderConfig {
    pub fn from_json(text: &str) -> std::result::Result<EncoderConfig, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    pub fn architecture(&self) -> std::result::Result<Architecture, String> {
        match self.model_type.as_str() {
            "bert" => Ok(Architecture::Bert),
            "xlm-roberta" | "roberta" => Ok(Architecture::XlmRoberta),
            other => {
                Err(format!("model_type {other:?} is not supported (supported: bert, xlm-roberta, roberta)"))
            }
        }
    }

    /// The first position id of a real token (0 for BERT, `pad_token_id + 1`
    /// for XLM-RoBERTa).
    pub fn position_offset(&self) -> usize {
        match self.architecture() {
            Ok(Architecture::XlmRoberta) => self.pad_token_id as usize + 1,
            _ => 0,
        }
    }

    /// The longest input (special tokens included) the position table allows.
    pub fn max_input_tokens(&self) -> usize {
        self.max_position_embeddings.saturating_sub(self.position_offset())
    }

    fn check(&self) -> std::result::Result<(), String> {
        self.architecture()?;
        if self.hidden_size.checked_rem(self.num_attention_heads) != Some(0) {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if let Some(kind) = &self.position_embedding_type {
            if kind != "absolute" {
                return Err(format!("position_embedding_type {kind:?} is not supported (only \"absolute\")"));
            }
        }
        activation(&self.hidden_act)?;
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
enum Activation {
    /// The exact GELU (`hidden_act` "gelu").
    GeluErf,
    /// The tanh approximation ("gelu_new", "gelu_pytorch_tanh", "gelu_fast").
    GeluTanh,
    Relu,
}

fn activation(name: &str) -> std::result::Result<Activation, String> {
    match name {
        "gelu" => Ok(Activation::GeluErf),
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Activation::GeluTanh),
        "relu" => Ok(Activation::Relu),
        other => Err(format!("hidden_act {other:?} is not supported")),
    }
}

impl Activation {
    fn apply(self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Activation::GeluErf => xs.gelu_erf(),
            Activation::GeluTanh => xs.gelu(),
            Activation::Relu => xs.relu(),
        }
    }
}

/// Whether the CPU kernels of [`crate::kernels`] apply to a tensor.
fn cpu_f32(xs: &Tensor) -> bool {
    xs.device().is_cpu() && xs.dtype() == DType::F32
}

/// Whether our fused CUDA kernels ([`crate::cuda_kernels`]) apply to a
/// tensor: on a CUDA device, switched on, and loaded.
fn gpu_fused(xs: &Tensor) -> bool {
    #[cfg(feature = "cuda")]
    {
        crate::cuda_kernels::active(xs.device(), xs.dtype())
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = xs;
        false
    }
}

#[cfg(feature = "cuda")]
fn fused_act(act: Option<Activation>) -> crate::cuda_kernels::Act {
    use crate::cuda_kernels::Act;
    match act {
        None => Act::None,
        Some(Activation::GeluErf) => Act::GeluErf,
        Some(Activation::GeluTanh) => Act::GeluTanh,
        Some(Activation::Relu) => Act::Relu,
    }
}

/// A layer norm over `dense`'s output plus a residual, with the dense
/// layer's bias, the norm's weight and the norm's bias in one `[3, n]`
/// tensor for the fused CUDA kernel (made on CUDA devices only).
struct AddNorm {
    norm: LayerNorm,
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    params: Option<Tensor>,
    /// On the CPU: gamma and beta as f32, for the layer norm fused into the
    /// linear layer's epilogue ([`Epilogue::LayerNorm`]).
    cpu: Option<(Vec<f32>, Vec<f32>)>,
    eps: f32,
}

impl AddNorm {
    fn new(norm: LayerNorm, dense: &Dense, eps: f64) -> Result<AddNorm> {
        let params = match (dense.linear.bias(), norm.bias()) {
            (Some(b), Some(nb)) if b.device().is_cuda() => {
                let n = b.dim(0)?;
                Some(Tensor::cat(&[b, norm.weight(), nb], 0)?.reshape((3, n))?.contiguous()?)
            }
            _ => None,
        };
        let cpu = match norm.bias() {
            Some(beta) if norm.weight().device().is_cpu() => {
                let f32s = |t: &Tensor| t.to_dtype(DType::F32)?.to_vec1::<f32>();
                Some((f32s(norm.weight())?, f32s(beta)?))
            }
            _ => None,
        };
        Ok(AddNorm { norm, params, cpu, eps: eps as f32 })
    }
}

/// How an encoder's linear layers multiply on the CPU (f32 tensors): with
/// candle's f32 matmul, in int8 ([`Int8Linear`]) or in bf16 on AMX tiles
/// ([`Bf16Linear`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Linears {
    F32,
    Int8,
    Bf16Amx,
}

/// A linear layer's own CPU kernel, in place of candle's matmul.
enum LinearKernel {
    Int8(Int8Linear),
    Bf16(Bf16Linear),
}

/// A linear layer: candle's, with a fused f32 epilogue on the CPU, or one
/// of our kernels.
struct Dense {
    linear: Linear,
    kernel: Option<LinearKernel>,
    /// For the stage profile ([`crate::profile`]).
    name: &'static str,
}

impl Dense {
    fn new(linear: Linear, name: &'static str) -> Dense {
        Dense { linear, kernel: None, name }
    }

    /// Makes the layer's kernel for `linears` from its weights (none: f32).
    fn use_linears(&mut self, linears: Linears) -> Result<()> {
        if linears == Linears::F32 {
            self.kernel = None;
            return Ok(());
        }
        let w = self.linear.weight();
        let (n, k) = w.dims2()?;
        let weight = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let bias = self.linear.bias().map(|b| b.to_dtype(DType::F32)?.to_vec1::<f32>()).transpose()?;
        self.kernel = Some(match linears {
            Linears::Int8 => LinearKernel::Int8(Int8Linear::new(&weight, bias.as_deref(), n, k)),
            _ => LinearKernel::Bf16(Bf16Linear::new(&weight, bias.as_deref(), n, k)),
        });
        Ok(())
    }

    /// `xs Wᵀ` for `xs` `[b, l, k]` (cuBLAS on a GPU), without the bias.
    fn matmul(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, l, k) = xs.dims3()?;
        let w = self.linear.weight();
        crate::profile::stage(xs.device(), self.name, "matmul", || {
            xs.contiguous()?.reshape((b * l, k))?.matmul(&w.t()?)?.reshape((b, l, ()))
        })
    }

    /// `norm(xs Wᵀ + b + residual)`: on a CUDA device the bias, the residual
    /// and the layer norm are one fused kernel after the matmul.
    fn forward_add_norm(&self, xs: &Tensor, residual: &Tensor, norm: &AddNorm) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if let (Some(params), None) = (&norm.params, &self.kernel) {
            if gpu_fused(xs) {
                let out = self.matmul(xs)?;
                let residual = residual.contiguous()?;
                crate::profile::stage(xs.device(), self.name, "bias_residual_layer_norm", || {
                    crate::cuda_kernels::bias_residual_layer_norm(&out, &residual, params, norm.eps)
                })?;
                return Ok(out);
            }
        }
        if let Some((gamma, beta)) = &norm.cpu {
            let epilogue = Epilogue::LayerNorm { gamma, beta, eps: norm.eps };
            if let Some(out) = self.forward_cpu(xs, Some(residual), epilogue)? {
                return Ok(out);
            }
        }
        let out = self.forward(xs, Some(residual), None)?;
        crate::profile::stage(out.device(), self.name, "layer_norm", || norm.norm.forward(&out))
    }

    /// `act(xs Wᵀ + b [+ residual])` for `xs` `[b, l, k]`.
    fn forward(&self, xs: &Tensor, residual: Option<&Tensor>, act: Option<Activation>) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if let (None, None, Some(bias)) = (residual, &self.kernel, self.linear.bias()) {
            if gpu_fused(xs) {
                let out = self.matmul(xs)?;
                crate::profile::stage(xs.device(), self.name, "bias_act", || {
                    crate::cuda_kernels::bias_act(&out, bias, fused_act(act))
                })?;
                return Ok(out);
            }
        }
        let epilogue = match act {
            None => Some(Epilogue::None),
            Some(Activation::GeluErf) => Some(Epilogue::GeluErf),
            Some(_) => None,
        };
        if let Some(epilogue) = epilogue {
            if let Some(out) = self.forward_cpu(xs, residual, epilogue)? {
                return Ok(out);
            }
        }
        // candle's Linear, step by step (one 2-D matmul, then the bias).
        let (dev, name) = (xs.device(), self.name);
        let mut out = self.matmul(xs)?;
        if let Some(bias) = self.linear.bias() {
            out = crate::profile::stage(dev, name, "bias", || out.broadcast_add(bias))?;
        }
        if let Some(r) = residual {
            out = crate::profile::stage(dev, name, "residual", || out + r)?;
        }
        match act {
            Some(act) => crate::profile::stage(dev, name, "activation", || act.apply(&out)),
            None => Ok(out),
        }
    }

    /// `epilogue(xs Wᵀ + b [+ residual])` by our CPU kernels, for f32
    /// tensors on the CPU; `None` where they do not apply (another device
    /// or dtype, or an f32 layer without bias).
    fn forward_cpu(
        &self,
        xs: &Tensor,
        residual: Option<&Tensor>,
        epilogue: Epilogue<'_>,
    ) -> Result<Option<Tensor>> {
        let bias = self.linear.bias();
        if !cpu_f32(xs) || bias.is_none() && self.kernel.is_none() {
            return Ok(None);
        }
        let (b, l, k) = xs.dims3()?;
        let n = self.linear.weight().dim(0)?;
        let xs = xs.contiguous()?;
        let residual = residual.map(|r| r.contiguous()).transpose()?;
        let with_residual = |f: &dyn Fn(Option<&[f32]>) -> Vec<f32>| -> Result<Vec<f32>> {
            match &residual {
                Some(r) => kernels::f32_slice(r, |r| f(Some(r))),
                None => Ok(f(None)),
            }
        };
        let out = match &self.kernel {
            Some(LinearKernel::Int8(q)) => {
                kernels::f32_slice(&xs, |x| with_residual(&|r| q.forward(x, r, epilogue)))??
            }
            Some(LinearKernel::Bf16(l)) => {
                kernels::f32_slice(&xs, |x| with_residual(&|r| l.forward(x, r, epilogue)))??
            }
            None => {
                let bias = bias.map(|b| b.to_vec1::<f32>()).transpose()?.unwrap_or_default();
                let w = self.linear.weight().contiguous()?;
                kernels::f32_slice(&xs, |x| {
                    kernels::f32_slice(&w, |w| {
                        with_residual(&|r| kernels::linear_f32(x, k, w, &bias, r, epilogue))
                    })
                })???
            }
        };
        kernels::f32_tensor(out, (b, l, n)).map(Some)
    }
}

/// Adds the attention mask (`[b, 1, 1, len]`) to the scores (`[b, heads, l,
/// len]`) and softmaxes the last dimension, in place.
struct MaskedSoftmax;

impl InplaceOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "masked-softmax"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        let (Some((a, b)), Some((c, d))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            candle_core::bail!("masked-softmax needs contiguous tensors");
        };
        let (CpuStorage::F32(scores), CpuStorage::F32(mask)) = (s1, s2) else {
            candle_core::bail!("masked-softmax needs f32 tensors");
        };
        let [_, heads, l, len] = l1.dims() else {
            candle_core::bail!("masked-softmax needs [b, heads, l, len]")
        };
        kernels::masked_softmax(&mut scores[a..b], &mask[c..d], *heads, *l, *len);
        Ok(())
    }
}

/// A padded batch ready for [`Encoder::forward`].
#[derive(Debug, Clone)]
pub struct EncoderInput {
    /// Token ids, `[batch, len]` u32, padded with `pad_token_id`.
    pub input_ids: Tensor,
    /// Position ids, `[batch, len]` u32.
    pub position_ids: Tensor,
    /// Token type ids, `[batch, len]` u32; `None` means all 0.
    pub token_type_ids: Option<Tensor>,
    /// Additive attention mask, `[batch, 1, 1, len]` f32: 0 or [`MASK_VALUE`].
    pub attention_bias: Tensor,
    /// 1 for real tokens and 0 for padding, `[batch, len]` f32 (for pooling).
    pub mask: Tensor,
    /// Real tokens per sequence.
    pub lengths: Vec<usize>,
}

impl EncoderInput {
    pub fn batch_size(&self) -> usize {
        self.lengths.len()
    }
    /// The padded length.
    pub fn padded_len(&self) -> usize {
        self.lengths.iter().copied().max().unwrap_or(0)
    }
}

struct SelfAttention {
    /// Query, key and value projections in one `[3 * hidden, hidden]` matrix;
    /// the query rows are pre-scaled by `1/sqrt(head_dim)`.
    qkv: Dense,
    output: Dense,
    output_norm: AddNorm,
    heads: usize,
    head_dim: usize,
}

impl SelfAttention {
    fn load(vb: VarBuilder, config: &EncoderConfig) -> Result<SelfAttention> {
        let hidden = config.hidden_size;
        let heads = config.num_attention_heads;
        let head_dim = hidden / heads;
        let scale = 1.0 / (head_dim as f64).sqrt();
        let sv = vb.pp("self");
        let get = |name: &str| -> Result<(Tensor, Tensor)> {
            let p = sv.pp(name);
            Ok((p.get((hidden, hidden), "weight")?, p.get(hidden, "bias")?))
        };
        let (qw, qb) = get("query")?;
        let (kw, kb) = get("key")?;
        let (vw, vbias) = get("value")?;
        let (qw, qb) = ((qw * scale)?, (qb * scale)?);
        let qkv = Dense::new(
            Linear::new(Tensor::cat(&[&qw, &kw, &vw], 0)?, Some(Tensor::cat(&[&qb, &kb, &vbias], 0)?)),
            "qkv",
        );
        let ov = vb.pp("output");
        let output = Dense::new(candle_nn::linear(hidden, hidden, ov.pp("dense"))?, "attention_output");
        let output_norm = AddNorm::new(
            candle_nn::layer_norm(hidden, config.layer_norm_eps, ov.pp("LayerNorm"))?,
            &output,
            config.layer_norm_eps,
        )?;
        Ok(SelfAttention { qkv, output, output_norm, heads, head_dim })
    }

    /// `lengths` (`[b]` u32 on the device) is given when the fused CUDA
    /// kernels run ([`gpu_fused`]); then the mask is taken from it.
    fn forward(&self, hidden: &Tensor, attention_bias: &Tensor, lengths: Option<&Tensor>) -> Result<Tensor> {
        let (b, l, h) = hidden.dims3()?;
        let dtype = hidden.dtype();
        #[cfg(feature = "cuda")]
        if let (Some(lengths), Some(bias), None) = (lengths, self.qkv.linear.bias(), &self.qkv.kernel) {
            use crate::cuda_kernels as cu;
            let dev = hidden.device();
            let qkv = self.qkv.matmul(hidden)?; // [b, l, 3 * hidden], no bias yet
            let qkv = crate::profile::stage(dev, "attention", "split_heads", || {
                cu::qkv_split(&qkv, bias, self.heads)
            })?;
            let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?); // [b, heads, l, head_dim]
            let scores = crate::profile::stage(dev, "attention", "scores", || q.matmul(&k.t()?))?;
            crate::profile::stage(dev, "attention", "mask_softmax", || cu::masked_softmax(&scores, lengths))?;
            let context =
                crate::profile::stage(dev, "attention", "context", || cu::merge_heads(&scores.matmul(&v)?))?;
            return self.output.forward_add_norm(&context, hidden, &self.output_norm);
        }
        #[cfg(not(feature = "cuda"))]
        let _ = lengths;
        if cpu_f32(hidden) && attention_bias.is_contiguous() && matches!(self.head_dim, 32 | 64) {
            // One pass per sequence over the fused projections' output.
            let qkv = self.qkv.forward(hidden, None, None)?;
            let heads = self.heads;
            let context = kernels::f32_slice(&qkv, |qkv| {
                kernels::f32_slice(attention_bias, |mask| match self.head_dim {
                    32 => kernels::attention::<32>(qkv, mask, b, l, heads),
                    _ => kernels::attention::<64>(qkv, mask, b, l, heads),
                })
            })??;
            let context = kernels::f32_tensor(context, (b, l, h))?;
            return self.output.forward_add_norm(&context, hidden, &self.output_norm);
        }
        let dev = hidden.device();
        let qkv = self.qkv.forward(hidden, None, None)?;
        let qkv = crate::profile::stage(dev, "attention", "split_heads", || {
            qkv.reshape((b, l, 3, self.heads, self.head_dim))?.permute((2, 0, 3, 1, 4))?.contiguous()
        })?; // [3, b, heads, l, head_dim]
        let q = qkv.get(0)?;
        let k = qkv.get(1)?;
        let v = qkv.get(2)?;
        // [b, heads, l, l]; softmaxed in f32 with the f32 mask: finite in every dtype.
        let scores = crate::profile::stage(dev, "attention", "scores", || q.matmul(&k.t()?))?;
        let probs = if cpu_f32(&scores) && scores.is_contiguous() && attention_bias.is_contiguous() {
            scores.inplace_op2(attention_bias, &MaskedSoftmax)?;
            scores
        } else {
            crate::profile::stage(dev, "attention", "mask_softmax", || {
                let scores = scores.to_dtype(DType::F32)?.broadcast_add(attention_bias)?;
                candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dtype)
            })?
        };
        let context = crate::profile::stage(dev, "attention", "context", || {
            probs
                .matmul(&v)? // [b, heads, l, head_dim]
                .transpose(1, 2)?
                .reshape((b, l, h))
        })?;
        self.output.forward_add_norm(&context, hidden, &self.output_norm)
    }
}

struct Layer {
    attention: SelfAttention,
    intermediate: Dense,
    activation: Activation,
    output: Dense,
    output_norm: AddNorm,
}

impl Layer {
    fn load(vb: VarBuilder, config: &EncoderConfig) -> Result<Layer> {
        let act = activation(&config.hidden_act).map_err(candle_core::Error::msg)?;
        let output = Dense::new(
            candle_nn::linear(config.intermediate_size, config.hidden_size, vb.pp("output").pp("dense"))?,
            "output",
        );
        let output_norm = AddNorm::new(
            candle_nn::layer_norm(
                config.hidden_size,
                config.layer_norm_eps,
                vb.pp("output").pp("LayerNorm"),
            )?,
            &output,
            config.layer_norm_eps,
        )?;
        Ok(Layer {
            attention: SelfAttention::load(vb.pp("attention"), config)?,
            intermediate: Dense::new(
                candle_nn::linear(
                    config.hidden_size,
                    config.intermediate_size,
                    vb.pp("intermediate").pp("dense"),
                )?,
                "intermediate",
            ),
            activation: act,
            output,
            output_norm,
        })
    }

    fn forward(&self, hidden: &Tensor, attention_bias: &Tensor, lengths: Option<&Tensor>) -> Result<Tensor> {
        let attended = self.attention.forward(hidden, attention_bias, lengths)?;
        let inner = self.intermediate.forward(&attended, None, Some(self.activation))?;
        self.output.forward_add_norm(&inner, &attended, &self.output_norm)
    }

    fn use_linears(&mut self, linears: Linears) -> Result<()> {
        for dense in
            [&mut self.attention.qkv, &mut self.attention.output, &mut self.intermediate, &mut self.output]
        {
            dense.use_linears(linears)?;
        }
        Ok(())
    }
}

/// A BERT or XLM-RoBERTa encoder returning the last hidden state.
pub struct Encoder {
    config: EncoderConfig,
    architecture: Architecture,
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    token_type_embeddings: Embedding,
    /// Row 0 of the token type table, added when no type ids are given.
    token_type_zero: Tensor,
    embeddings_norm: LayerNorm,
    layers: Vec<Layer>,
    device: Device,
    dtype: DType,
    linears: Linears,
}

/// Prefixes under which checkpoints store the encoder (`BertModel` saves
/// none; task models save `bert.` or `roberta.`).
const PREFIXES: [&str; 4] = ["", "bert", "roberta", "model"];

impl Encoder {
    /// Loads the encoder from a checkpoint whose tensors may sit under one of
    /// the usual prefixes (none, `bert.`, `roberta.`, `model.`); `vb` is the
    /// checkpoint's root.
    pub fn load(vb: VarBuilder, config: &EncoderConfig) -> Result<Encoder> {
        for prefix in PREFIXES {
            let p = if prefix.is_empty() { vb.clone() } else { vb.pp(prefix) };
            if p.contains_tensor("embeddings.word_embeddings.weight") {
                return Self::load_at(p, config);
            }
        }
        candle_core::bail!(
            "no encoder weights found: expected embeddings.word_embeddings.weight, \
             optionally under bert., roberta. or model."
        )
    }

    /// Loads the encoder from `vb`, which points at the `embeddings` and
    /// `encoder` tensors.
    pub fn load_at(vb: VarBuilder, config: &EncoderConfig) -> Result<Encoder> {
        config.check().map_err(candle_core::Error::msg)?;
        let architecture = config.architecture().map_err(candle_core::Error::msg)?;
        let h = config.hidden_size;
        let ev = vb.pp("embeddings");
        let word_embeddings = candle_nn::embedding(config.vocab_size, h, ev.pp("word_embeddings"))?;
        let position_embeddings =
            candle_nn::embedding(config.max_position_embeddings, h, ev.pp("position_embeddings"))?;
        let token_type_embeddings =
            candle_nn::embedding(config.type_vocab_size, h, ev.pp("token_type_embeddings"))?;
        let token_type_zero = token_type_embeddings.embeddings().get(0)?.contiguous()?;
        let embeddings_norm = candle_nn::layer_norm(h, config.layer_norm_eps, ev.pp("LayerNorm"))?;
        let lv = vb.pp("encoder").pp("layer");
        let layers = (0..config.num_hidden_layers)
            .map(|i| Layer::load(lv.pp(i), config))
            .collect::<Result<Vec<_>>>()?;
        Ok(Encoder {
            config: config.clone(),
            architecture,
            word_embeddings,
            position_embeddings,
            token_type_embeddings,
            token_type_zero,
            embeddings_norm,
            layers,
            device: vb.device().clone(),
            dtype: vb.dtype(),
            linears: Linears::F32,
        })
    }

    pub fn config(&self) -> &EncoderConfig {
        &self.config
    }
    pub fn architecture(&self) -> Architecture {
        self.architecture
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    /// Runs the linear layers in int8 from now on: weights quantised per
    /// output channel, inputs per token at run time, products summed in i32
    /// (AMX-INT8 or AVX-512 VNNI where the CPU has them). CPU and f32 only;
    /// embeddings, attention and layer norms stay f32.
    pub fn quantize_int8(&mut self) -> Result<()> {
        self.use_linears(Linears::Int8)
    }

    /// Runs the linear layers with `linears` from now on (CPU and f32 only;
    /// embeddings, attention and layer norms stay f32). `Bf16Amx` needs a
    /// CPU with AMX-BF16 ([`bf16_amx_available`]).
    pub fn use_linears(&mut self, linears: Linears) -> Result<()> {
        if linears != Linears::F32 && (!self.device.is_cpu() || self.dtype != DType::F32) {
            candle_core::bail!("{linears:?} linear layers run on the CPU in f32 only");
        }
        if linears == Linears::Bf16Amx && !bf16_amx_available() {
            candle_core::bail!(
                "bf16 linear layers need a CPU with AMX-BF16 (Intel Xeon from Sapphire Rapids on)"
            );
        }
        for layer in &mut self.layers {
            layer.use_linears(linears)?;
        }
        self.linears = linears;
        Ok(())
    }

    /// How the linear layers multiply ([`Encoder::use_linears`]).
    pub fn linears(&self) -> Linears {
        self.linears
    }

    /// Whether [`Encoder::quantize_int8`] was applied.
    pub fn is_int8(&self) -> bool {
        self.linears == Linears::Int8
    }

    /// Pads token sequences (special tokens already added) to the longest one
    /// and builds positions and masks. `type_ids`, when given, holds one
    /// sequence per input of the same length.
    pub fn prepare(&self, ids: &[&[u32]], type_ids: Option<&[&[u32]]>) -> Result<EncoderInput> {
        let b = ids.len();
        let len = ids.iter().map(|s| s.len()).max().unwrap_or(0).max(1);
        if len > self.config.max_input_tokens() {
            candle_core::bail!(
                "sequence of {len} tokens exceeds the model's {} positions",
                self.config.max_input_tokens()
            );
        }
        let pad = self.config.pad_token_id;
        let offset = self.config.position_offset() as u32;
        // XLM-RoBERTa gives padding the position `pad_token_id`; BERT's padding
        // positions are masked out, so any valid index does.
        let pad_position = match self.architecture {
            Architecture::XlmRoberta => pad,
            Architecture::Bert => 0,
        };
        let mut flat_ids = Vec::with_capacity(b * len);
        let mut positions = Vec::with_capacity(b * len);
        let mut bias = Vec::with_capacity(b * len);
        let mut mask = Vec::with_capacity(b * len);
        let mut flat_types = type_ids.map(|_| Vec::with_capacity(b * len));
        for (i, seq) in ids.iter().enumerate() {
            let n = seq.len();
            flat_ids.extend_from_slice(seq);
            flat_ids.extend(std::iter::repeat_n(pad, len - n));
            positions.extend((0..n as u32).map(|p| p + offset));
            positions.extend(std::iter::repeat_n(pad_position, len - n));
            bias.extend(std::iter::repeat_n(0f32, n));
            bias.extend(std::iter::repeat_n(MASK_VALUE, len - n));
            mask.extend(std::iter::repeat_n(1f32, n));
            mask.extend(std::iter::repeat_n(0f32, len - n));
            if let (Some(flat), Some(types)) = (flat_types.as_mut(), type_ids) {
                let t = types.get(i).copied().unwrap_or(&[]);
                if t.len() != n {
                    candle_core::bail!("type ids of sequence {i} do not match its tokens");
                }
                flat.extend_from_slice(t);
                flat.extend(std::iter::repeat_n(0u32, len - n));
            }
        }
        let dev = &self.device;
        Ok(EncoderInput {
            input_ids: Tensor::from_vec(flat_ids, (b, len), dev)?,
            position_ids: Tensor::from_vec(positions, (b, len), dev)?,
            token_type_ids: flat_types.map(|t| Tensor::from_vec(t, (b, len), dev)).transpose()?,
            attention_bias: Tensor::from_vec(bias, (b, 1, 1, len), dev)?,
            mask: Tensor::from_vec(mask, (b, len), dev)?,
            lengths: ids.iter().map(|s| s.len()).collect(),
        })
    }

    /// The last hidden state, `[batch, len, hidden]` in the model's dtype.
    pub fn forward(&self, input: &EncoderInput) -> Result<Tensor> {
        let _launch = crate::gpu::launch_scope(input.input_ids.device());
        let dev = input.input_ids.device();
        let mut hidden = crate::profile::stage(dev, "embeddings", "all", || self.embed(input))?;
        // The fused CUDA kernels mask by the sequences' lengths (the batch is
        // right-padded), not by the additive mask.
        let lengths = if gpu_fused(&hidden) {
            if input.lengths.len() != hidden.dim(0)?
                || input.lengths.iter().any(|&n| n > hidden.dim(1).unwrap_or(0))
            {
                candle_core::bail!("the input's lengths do not match its padded batch");
            }
            let lengths: Vec<u32> = input.lengths.iter().map(|&n| n as u32).collect();
            Some(Tensor::from_vec(lengths, input.lengths.len(), dev)?)
        } else {
            None
        };
        for layer in &self.layers {
            hidden = layer.forward(&hidden, &input.attention_bias, lengths.as_ref())?;
        }
        Ok(hidden)
    }

    fn embed(&self, input: &EncoderInput) -> Result<Tensor> {
        let words = self.word_embeddings.forward(&input.input_ids)?;
        let positions = self.position_embeddings.forward(&input.position_ids)?;
        let mut hidden = (words + positions)?;
        hidden = match &input.token_type_ids {
            Some(types) => (hidden + self.token_type_embeddings.forward(types)?)?,
            None => hidden.broadcast_add(&self.token_type_zero)?,
        };
        self.embeddings_norm.forward(&hidden)
    }
}

/// Whether this CPU (and the kernel) run bf16 linear layers on AMX tiles
/// ([`Linears::Bf16Amx`]).
pub fn bf16_amx_available() -> bool {
    kernels::amx_bf16_available()
}
