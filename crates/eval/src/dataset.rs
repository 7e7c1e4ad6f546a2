//! An evaluation set in memory: documents (with the set's own chunks, when it
//! has them), queries, and relevance judgements; and recognition of the
//! layouts on disk.

use crate::loaders;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The on-disk layouts the loaders read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DatasetFormat {
    /// The contextual-retrieval cookbook's codebase set: `codebase_chunks.json`
    /// and `evaluation_set.jsonl`.
    Codebase,
    /// The cookbook's docs set: `anthropic_docs.json` and `docs_evaluation_dataset.json`.
    AnthropicDocs,
    /// SQuAD v1.1 JSON (XQuAD): question → the paragraph holding its answer.
    Squad,
    /// BEIR: `corpus.jsonl`, `queries.jsonl`, `qrels/*.tsv`.
    Beir,
    /// Cranfield in SMART format: `cran.all.1400`, `cran.qry`, `cranqrel`.
    Cranfield,
}

impl DatasetFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DatasetFormat::Codebase => "codebase",
            DatasetFormat::AnthropicDocs => "anthropic_docs",
            DatasetFormat::Squad => "squad",
            DatasetFormat::Beir => "beir",
            DatasetFormat::Cranfield => "cranfield",
        }
    }
}

/// What a golden unit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RelevanceLevel {
    /// Golden chunks: a result counts when it overlaps a golden chunk's characters.
    Chunk,
    /// Relevant documents: a result counts when its document is relevant.
    Document,
}

/// A document of the set. Offsets are character offsets into `text`.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalDocument {
    /// The set's own identifier.
    pub id: String,
    pub title: String,
    pub text: String,
    /// The set's own chunks, in order, non-overlapping; empty when it has none.
    pub chunks: Vec<GivenChunk>,
}

/// A chunk the set itself cut.
#[derive(Debug, Clone, PartialEq)]
pub struct GivenChunk {
    /// The chunk's heading, when the set gives one.
    pub heading: Option<String>,
    pub start: usize,
    pub end: usize,
}

/// One golden unit of a query.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    /// Index into `Dataset::documents`.
    pub document: usize,
    /// A golden chunk's character range; None: the whole document is relevant.
    pub span: Option<(usize, usize)>,
    /// Graded relevance (> 0; higher is more relevant).
    pub grade: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EvalQuery {
    pub id: String,
    pub text: String,
    /// At least one.
    pub relevant: Vec<Judgement>,
}

#[derive(Debug, Clone)]
pub struct Dataset {
    /// A short name, e.g. `cranfield` or `xquad.en`.
    pub name: String,
    pub format: DatasetFormat,
    /// The file or folder it was read from.
    pub path: PathBuf,
    pub level: RelevanceLevel,
    pub documents: Vec<EvalDocument>,
    /// Queries with at least one relevant unit, in the set's order.
    pub queries: Vec<EvalQuery>,
    /// What the loader had to leave out or choose, for the report.
    pub notes: Vec<String>,
}

impl Dataset {
    /// Whether the set comes with its own chunks.
    pub fn has_given_chunks(&self) -> bool {
        self.documents.iter().any(|d| !d.chunks.is_empty())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{0}")]
    Unrecognised(String),
}

impl DatasetError {
    pub(crate) fn invalid(path: &Path, message: impl Into<String>) -> DatasetError {
        DatasetError::Invalid { path: path.to_path_buf(), message: message.into() }
    }
}

pub(crate) fn read_to_string(path: &Path) -> Result<String, DatasetError> {
    let bytes =
        std::fs::read(path).map_err(|source| DatasetError::Io { path: path.to_path_buf(), source })?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, DatasetError> {
    let text = read_to_string(path)?;
    serde_json::from_str(&text)
        .map_err(|e| DatasetError::invalid(path, format!("not the expected JSON: {e}")))
}

/// Reads a dataset, recognising its layout from the folder's (or file's) names.
pub fn load(path: &Path) -> Result<Dataset, DatasetError> {
    let meta =
        std::fs::metadata(path).map_err(|source| DatasetError::Io { path: path.to_path_buf(), source })?;
    if meta.is_dir() {
        let has = |name: &str| path.join(name).is_file();
        if has("codebase_chunks.json") && has("evaluation_set.jsonl") {
            return loaders::codebase::load(path);
        }
        if has("anthropic_docs.json") && has("docs_evaluation_dataset.json") {
            return loaders::anthropic_docs::load(path);
        }
        if has("corpus.jsonl") && has("queries.jsonl") && path.join("qrels").is_dir() {
            return loaders::beir::load(path);
        }
        if has("cran.all.1400") && has("cran.qry") && has("cranqrel") {
            return loaders::cranfield::load(path);
        }
        if let Some(file) = loaders::squad::pick_file(path)? {
            let mut set = loaders::squad::load(&file)?;
            set.notes.push(format!(
                "{} holds SQuAD files; read {} (name a file to read another)",
                path.display(),
                file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
            ));
            return Ok(set);
        }
        return Err(unrecognised(path));
    }
    // A file: the set's main file, or (SQuAD) the set itself.
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    match name.as_str() {
        "codebase_chunks.json" | "evaluation_set.jsonl" => loaders::codebase::load(parent),
        "anthropic_docs.json" | "docs_evaluation_dataset.json" => loaders::anthropic_docs::load(parent),
        "corpus.jsonl" | "queries.jsonl" => loaders::beir::load(parent),
        "cran.all.1400" | "cran.qry" | "cranqrel" => loaders::cranfield::load(parent),
        _ if name.ends_with(".json") && loaders::squad::looks_like_squad(path) => loaders::squad::load(path),
        _ => Err(unrecognised(path)),
    }
}

fn unrecognised(path: &Path) -> DatasetError {
    DatasetError::Unrecognised(format!(
        "{} is not an evaluation set this version reads. Recognised: a folder with codebase_chunks.json and \
         evaluation_set.jsonl (contextual-retrieval cookbook); anthropic_docs.json and \
         docs_evaluation_dataset.json (cookbook docs set); corpus.jsonl, queries.jsonl and qrels/ (BEIR); \
         cran.all.1400, cran.qry and cranqrel (Cranfield); or a SQuAD/XQuAD JSON file",
        path.display()
    ))
}

/// Character offset of each byte offset, for converting `str::find` results.
pub(crate) fn char_offset(text: &str, byte: usize) -> usize {
    text[..byte].chars().count()
}
