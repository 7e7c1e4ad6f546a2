//! The domain of DataFactory: the types that flow through the ingest pipeline
//! (`Document` → `Chunk`), their identifiers, the typed configuration, and the
//! traits that each pipeline stage implements.
//!
//! This crate does no I/O beyond reading the configuration file: parsers,
//! chunkers and stores live in their own crates and depend on this one.

pub mod config;
pub mod document;
pub mod embed;
pub mod ids;
pub mod plan;
pub mod rerank;
pub mod stage;

pub use config::{Config, ConfigError};
pub use document::{Chunk, ChunkContext, ContextKind, Document, Format, Section};
pub use embed::{EmbedError, Embedder, EmbedderStats, Embedding, InputKind, WorkerState};
pub use ids::{chunk_id, content_hash, document_id};
pub use plan::{ChunkPlan, ChunkStrategy, PlanOverride};
pub use rerank::{sigmoid, RerankError, RerankStats, Reranker};
pub use stage::{HeuristicTokenCounter, TokenCounter};
