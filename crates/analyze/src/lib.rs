//! Phase 1 of an ingest: what kind of document this is and how to cut it.
//!
//! [`analyze`] reads a parsed [`Document`] and returns an [`Analysis`]: its
//! format, language, document type, structure figures, an estimate of its
//! tokens, and a [`ChunkPlan`] chosen for that type. The heuristics are fast,
//! deterministic and explained (the answer lists the signals that decided).
//!
//! An [`Analyzer`] picks the route from the configuration: the heuristics
//! in-process (the default), a running analyzer service (`datafactory
//! analyze-server`), or an LLM behind an OpenAI-compatible chat endpoint,
//! whose answer is checked against the schema. Whatever fails — a service
//! that cannot be reached, an LLM that times out or answers something that is
//! not a valid analysis — falls back to the heuristics, and the answer says
//! so (`route`, `fallback`). An analysis is never an error.

mod heuristic;
mod llm;

use datafactory_core::config::AnalysisConfig;
use datafactory_core::{ChunkPlan, Document, Format};
use serde::{Deserialize, Serialize};
use std::time::Duration;

pub use heuristic::{analyze, plan_for, structure_of};
pub use llm::{LlmAnalyzer, LlmVerdict, REASON_MAX_CHARS};

/// Version of the heuristics: part of the ingest fingerprint, so a change
/// re-analyses (and re-chunks) documents on their next ingest.
pub const HEURISTICS_VERSION: &str = "heuristic-v1";

/// What the analyzer found out about a document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    /// Which route produced the type and plan.
    pub route: Route,
    /// The analyzer's version (heuristics) or the LLM's model.
    pub analyzer: String,
    pub format: Format,
    /// None when the text is too short or not natural language.
    pub language: Option<Language>,
    pub doc_type: DocType,
    /// How clearly the winning type won, 0 to 1.
    pub confidence: f64,
    pub structure: Structure,
    /// Tokens of the whole text (model-free estimate).
    pub estimated_tokens: usize,
    pub plan: ChunkPlan,
    /// The signals that decided the type (heuristics), strongest first.
    pub signals: Vec<Signal>,
    /// One sentence: why this type and this plan.
    pub reason: String,
    /// Why the configured route was not the one that answered (LLM or
    /// service failure), when it was not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Route {
    Heuristic,
    Llm,
}

/// The kinds of document the analyzer tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DocType {
    /// Articles, essays, reports, stories: running text.
    Prose,
    /// Manuals and documentation: headings, instructions, examples.
    Manual,
    /// Program source.
    SourceCode,
    /// Contracts, terms, statutes.
    Legal,
    /// Papers: abstract, citations, references.
    Academic,
    /// Slide decks: many short pages of bullets.
    Slides,
    /// Tables, CSV, records: mostly data.
    Data,
    /// Emails and chat logs.
    Conversation,
}

impl DocType {
    pub const ALL: [DocType; 8] = [
        DocType::Prose,
        DocType::Manual,
        DocType::SourceCode,
        DocType::Legal,
        DocType::Academic,
        DocType::Slides,
        DocType::Data,
        DocType::Conversation,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DocType::Prose => "prose",
            DocType::Manual => "manual",
            DocType::SourceCode => "source_code",
            DocType::Legal => "legal",
            DocType::Academic => "academic",
            DocType::Slides => "slides",
            DocType::Data => "data",
            DocType::Conversation => "conversation",
        }
    }

    pub fn parse_name(name: &str) -> Option<DocType> {
        DocType::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

/// The detected language (whatlang).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Language {
    /// ISO 639-3 code, e.g. `eng`, `deu`.
    pub code: String,
    /// English name, e.g. `English`.
    pub name: String,
    pub confidence: f64,
    /// Whether the detector itself considers the answer reliable.
    pub reliable: bool,
}

/// Structure figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Structure {
    pub characters: usize,
    pub words: usize,
    pub lines: usize,
    /// Sections the parser found (headings, pages).
    pub sections: usize,
    /// Distinct headings, and how many at each depth (index 0: depth 1).
    pub headings: usize,
    pub headings_by_depth: Vec<usize>,
    pub max_heading_depth: usize,
    /// Pages, for paged formats (PDF); 0 otherwise.
    pub pages: usize,
    pub tables: usize,
    pub table_rows: usize,
    pub code_blocks: usize,
    /// Share of the characters inside code blocks or code lines, 0 to 1.
    pub code_share: f64,
    /// Lists (runs of list items) and their items.
    pub lists: usize,
    pub list_items: usize,
    pub paragraphs: usize,
    pub average_paragraph_words: f64,
}

/// One piece of evidence and how much it weighed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signal {
    /// What was measured, e.g. `code_share`, `legal_terms_per_1000_words`.
    pub name: String,
    pub value: f64,
    /// Its contribution to the winning type's score.
    pub weight: f64,
}

/// Analyses documents by the configured route. Cheap to clone.
#[derive(Debug, Clone)]
pub enum Analyzer {
    /// The heuristics, in-process.
    Heuristic,
    /// A running `datafactory analyze-server`.
    Remote { url: String, api_key: Option<String>, timeout: Duration },
    /// An LLM behind an OpenAI-compatible chat endpoint.
    Llm(LlmAnalyzer),
}

impl Analyzer {
    pub fn from_config(config: &AnalysisConfig) -> Analyzer {
        let timeout = Duration::from_secs(config.timeout_seconds);
        let key = |k: &str| (!k.is_empty()).then(|| k.to_string());
        if !config.url.is_empty() {
            return Analyzer::Remote {
                url: config.url.trim_end_matches('/').to_string(),
                api_key: key(&config.api_key),
                timeout,
            };
        }
        match config.route.as_str() {
            "llm" => Analyzer::Llm(LlmAnalyzer::new(
                &config.llm_url,
                &config.llm_model,
                key(&config.llm_api_key),
                timeout,
            )),
            _ => Analyzer::Heuristic,
        }
    }

    /// A stable name for the ingest fingerprint. The LLM's answers are not
    /// reproducible, so its documents are fingerprinted by model only.
    pub fn id(&self) -> String {
        match self {
            Analyzer::Heuristic | Analyzer::Remote { .. } => HEURISTICS_VERSION.to_string(),
            Analyzer::Llm(l) => format!("llm:{}", l.model()),
        }
    }

    /// Analyses one document; never fails (falls back to the heuristics).
    pub fn analyze(&self, doc: &Document) -> Analysis {
        match self {
            Analyzer::Heuristic => analyze(doc),
            Analyzer::Llm(llm) => llm.analyze(doc),
            Analyzer::Remote { url, api_key, timeout } => {
                match remote(url, api_key.as_deref(), *timeout, doc) {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!("analyzer service {url}: {e}; using the heuristics in-process");
                        let mut a = analyze(doc);
                        a.fallback = Some(format!("analyzer service {url}: {e}"));
                        a
                    }
                }
            }
        }
    }
}

/// Asks a running analyzer service to analyse a parsed document.
fn remote(url: &str, api_key: Option<&str>, timeout: Duration, doc: &Document) -> Result<Analysis, String> {
    let mut request = ureq::post(&format!("{url}/analyze")).timeout(timeout);
    if let Some(key) = api_key {
        request = request.set("Authorization", &format!("Bearer {key}"));
    }
    let response = request.send_json(serde_json::json!({ "document": doc })).map_err(|e| match e {
        ureq::Error::Status(code, r) => format!("HTTP {code}: {}", r.into_string().unwrap_or_default()),
        other => other.to_string(),
    })?;
    response.into_json::<Analysis>().map_err(|e| format!("not an analysis: {e}"))
}
