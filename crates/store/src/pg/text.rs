//! Words on PostgreSQL: the text search configuration for a language, the text
//! that is indexed and the `tsquery` built from a search (code-aware, escaped).
//!
//! Pure functions; no database access.

use super::*;

/// The text search configuration for a language (whatlang's ISO 639-3
/// code, as the analyzer records it); `simple` (no stemming, no stop words)
/// for the others and for unknown languages.
pub fn text_search_config(language: Option<&str>) -> &'static str {
    match language.unwrap_or("") {
        "nld" => "dutch",
        "eng" => "english",
        "deu" => "german",
        "fra" => "french",
        "spa" => "spanish",
        "ita" => "italian",
        "por" => "portuguese",
        "swe" => "swedish",
        "dan" => "danish",
        "nob" | "nno" => "norwegian",
        "fin" => "finnish",
        "rus" => "russian",
        "hun" => "hungarian",
        "ron" => "romanian",
        "tur" => "turkish",
        _ => "simple",
    }
}

pub(crate) use crate::words::document_language;

/// Text as the word index sees it: the embedded store's code-aware tokens
/// (`DiffExecutor` → `diffexecutor diff executor`, lower-cased, ASCII-folded),
/// then stemmed by PostgreSQL in the document's configuration.
pub(crate) fn word_text(text: &str) -> String {
    words::tokens(text).join(" ")
}

/// A tsquery source matching any of the query's tokens, each only in the
/// fields whose weight is positive (`A` title, `B` heading, `D` body).
pub(crate) fn word_query(text: &str, title_boost: f32, heading_boost: f32) -> Option<String> {
    let mut labels = String::new();
    if title_boost > 0.0 {
        labels.push('A');
    }
    if heading_boost > 0.0 {
        labels.push('B');
    }
    labels.push('D');
    let mut terms: Vec<String> = words::tokens(text)
        .into_iter()
        .map(|t| t.chars().filter(|c| c.is_alphanumeric()).collect::<String>())
        .filter(|t| !t.is_empty())
        .collect();
    terms.sort();
    terms.dedup();
    if terms.is_empty() {
        return None;
    }
    Some(terms.iter().map(|t| format!("{t}:{labels}")).collect::<Vec<_>>().join(" | "))
}
