//! Documents as parsers produce them, and chunks as the chunker cuts them.
//!
//! All offsets are **character offsets** (Unicode scalar values) into
//! `Document::text`, half-open (`start..end`), so that programs in any language
//! can map a chunk back to its place in the document.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The formats DataFactory reads. Detected from content first, extension second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Text,
    Markdown,
    Html,
    Pdf,
    Docx,
    Jsonl,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Markdown => "markdown",
            Format::Html => "html",
            Format::Pdf => "pdf",
            Format::Docx => "docx",
            Format::Jsonl => "jsonl",
        }
    }

    pub fn parse_name(name: &str) -> Option<Format> {
        Some(match name {
            "text" => Format::Text,
            "markdown" => Format::Markdown,
            "html" => Format::Html,
            "pdf" => Format::Pdf,
            "docx" => Format::Docx,
            "jsonl" => Format::Jsonl,
            _ => return None,
        })
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A contiguous part of a document under one heading path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Section {
    /// Headings from the outermost to the innermost, e.g. `["Guide", "Install"]`.
    pub heading_path: Vec<String>,
    /// Character offset of the section's body in `Document::text`.
    pub start: usize,
    /// End (exclusive) of the section's body.
    pub end: usize,
    /// 1-based page number, for paged formats (PDF).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub page: Option<u32>,
}

/// A parsed document: its whole text and the sections that partition its body.
///
/// Sections are ordered, do not overlap, and lie within `text`; text between
/// sections (headings themselves, separators) belongs to no section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Document {
    pub title: String,
    pub format: Format,
    pub text: String,
    pub sections: Vec<Section>,
    /// Free-form metadata (JSONL `metadata`, DOCX/HTML properties).
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// The identifier the input gave the document (JSONL `id`), if any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub external_id: Option<String>,
}

impl Document {
    /// Plain text: the whole text one section, no metadata.
    pub fn plain(title: impl Into<String>, text: impl Into<String>) -> Document {
        let text = text.into();
        let end = text.chars().count();
        Document {
            title: title.into(),
            format: Format::Text,
            sections: vec![Section { heading_path: Vec::new(), start: 0, end, page: None }],
            text,
            metadata: Default::default(),
            external_id: None,
        }
    }

    /// The text of a section (`start..end` in characters).
    pub fn section_text(&self, section: &Section) -> &str {
        slice_chars(&self.text, section.start, section.end)
    }

    /// Number of characters of the text.
    pub fn char_len(&self) -> usize {
        self.text.chars().count()
    }
}

/// A piece of a document small enough to embed and to show as a search result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// Position of the chunk in its document, from 0.
    pub ordinal: u32,
    pub heading_path: Vec<String>,
    /// Exactly `document.text[start..end]` (character offsets).
    pub text: String,
    pub start: usize,
    pub end: usize,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub page: Option<u32>,
    /// Tokens as counted by the chunker's token counter.
    pub token_count: u32,
    /// What situates the chunk in its document (set by enrichment); embedded
    /// and word-indexed with the chunk.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub context: Option<ChunkContext>,
}

/// A short text that situates a chunk within its document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChunkContext {
    pub text: String,
    pub kind: ContextKind,
    /// The LLM that wrote it (`llm` only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub model: Option<String>,
    /// The prompt template and version (`llm`) or the heuristic's version.
    pub template: String,
    /// The LLM saw a window around the chunk, not the whole document (the
    /// document is longer than the model's context).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub windowed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ContextKind {
    /// Written by an LLM.
    Llm,
    /// Made without an LLM: title, heading path, first sentence.
    Heuristic,
}

impl ContextKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ContextKind::Llm => "llm",
            ContextKind::Heuristic => "heuristic",
        }
    }

    pub fn parse(s: &str) -> Option<ContextKind> {
        match s {
            "llm" => Some(ContextKind::Llm),
            "heuristic" => Some(ContextKind::Heuristic),
            _ => None,
        }
    }
}

/// `&text[start..end]` in character offsets; clamps to the text's end.
pub fn slice_chars(text: &str, start: usize, end: usize) -> &str {
    let mut indices = text.char_indices().map(|(i, _)| i).chain(std::iter::once(text.len()));
    let byte_start = indices.nth(start).unwrap_or(text.len());
    let byte_end = if end > start { indices.nth(end - start - 1).unwrap_or(text.len()) } else { byte_start };
    &text[byte_start..byte_end]
}

/// Byte offsets of the given character offsets (which must be ascending).
/// Offsets past the end map to `text.len()`.
pub fn char_to_byte_offsets(text: &str, chars: &[usize]) -> Vec<usize> {
    let mut out = Vec::with_capacity(chars.len());
    let mut it = text.chars();
    let (mut ci, mut bi) = (0usize, 0usize);
    for &c in chars {
        if c < ci {
            // Not ascending: count from the start (never happens in practice).
            out.push(text.char_indices().nth(c).map_or(text.len(), |(b, _)| b));
            continue;
        }
        while ci < c {
            match it.next() {
                Some(ch) => {
                    bi += ch.len_utf8();
                    ci += 1;
                }
                None => break,
            }
        }
        out.push(bi);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_chars_counts_scalar_values() {
        let t = "héllo wörld";
        assert_eq!(slice_chars(t, 0, 5), "héllo");
        assert_eq!(slice_chars(t, 6, 11), "wörld");
        assert_eq!(slice_chars(t, 6, 100), "wörld");
        assert_eq!(slice_chars(t, 3, 3), "");
    }
}
