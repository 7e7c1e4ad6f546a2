//! The in-process embedding runtime of DataFactory, on candle.
//!
//! Why it exists: embeddings are computed next to the pipeline, with no
//! server to run, from the model's own files (a local directory or the
//! Hugging Face cache). [`load_embedder`] resolves the configured model
//! ([`resolve_model`]), loads its tokenizer, encoder weights, pooling and, for
//! bge-m3, its sparse head, and returns it behind the core crate's
//! [`Embedder`] trait.
//!
//! What it guarantees: dense vectors are always L2-normalised, whatever the
//! model's own configuration says; results come back in the caller's order
//! and do not depend on how texts were batched or padded; f32, f16 and bf16
//! give finite, matching vectors.
//!
//! Pieces: [`resolve`] finds the files, [`encoder`] is our BERT/XLM-RoBERTa
//! implementation (reusable for other heads: it returns the last hidden
//! state), [`pooling`] turns token vectors into a text vector, [`sparse`] is
//! bge-m3's lexical head, and [`embedder`] ties them to tokenization,
//! batching and devices. `kernels` holds the CPU kernels the encoder uses in
//! f32 beside candle's (fused epilogues, per-sequence attention) and the int8
//! linear layer (AVX-512 VNNI) behind `embedding.dtype = "int8"`.
//!
//! [`reranker`] puts a sequence-classification head on the same encoder: the
//! cross-encoder behind the core crate's `Reranker` trait ([`load_reranker`]),
//! with the same resolution, batching, devices and fallback.

#[cfg(feature = "cuda")]
pub mod cuda_kernels;
pub mod embedder;
pub mod encoder;
pub mod gpu;
mod kernels;
pub mod pooling;
pub mod profile;
pub mod reranker;
pub mod resolve;
pub mod sparse;

pub use datafactory_core::{EmbedError, Embedder, Embedding, InputKind};
pub use embedder::{load_embedder, window_overlap, CandleEmbedder, EmbedderStats, ModelTokenCounter};
pub use encoder::{bf16_amx_available, Architecture, Encoder, EncoderConfig, EncoderInput, Linears};
pub use pooling::{Pooling, PoolingMode};
pub use reranker::{load_reranker, CandleReranker};
pub use resolve::{
    resolve_model, resolve_model_in, resolve_request, HubEnvironment, ModelFiles, ModelRequest,
};
