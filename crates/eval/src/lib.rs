//! Retrieval evaluation: how well the configured pipeline finds what a public
//! question set says it should.
//!
//! [`load`] reads a set from disk, recognising its layout (the
//! contextual-retrieval cookbook's codebase and docs sets, SQuAD/XQuAD, BEIR,
//! Cranfield); [`evaluate`] ingests its documents into a fresh store with the
//! configured pipeline (the set's own chunks, or DataFactory's chunker), runs
//! every query in every search mode the configuration allows, and scores the
//! rankings with the pure functions of [`metrics`]: Pass@k, Recall@k, MRR@10,
//! nDCG@10 and query latency.
//!
//! The crate knows nothing of the CLI: it takes a configuration, an optional
//! embedder and a folder for the store, and returns an [`EvalReport`].

pub mod dataset;
pub mod loaders;
pub mod metrics;
mod runner;

pub use dataset::{
    load, Dataset, DatasetError, DatasetFormat, EvalDocument, EvalQuery, GivenChunk, Judgement,
    RelevanceLevel,
};
pub use runner::{
    evaluate, ChunkerChoice, DatasetInfo, EvalError, EvalObserver, EvalReport, EvalSettings, FusionVariant,
    Latency, ModeReport, QuietEval, SettingsInfo, StoreInfo, COLLECTION, MRR_NDCG_K,
};
