//! The context made without an LLM: document title, heading path, and the
//! first sentence of the chunk's section (or of the document).

use datafactory_core::{Chunk, Document};

/// Version of the heuristic, recorded with each context it makes.
pub const HEURISTIC_VERSION: &str = "heuristic-v1";

const MAX_SENTENCE_CHARS: usize = 300;

pub fn heuristic_context(document: &Document, chunk: &Chunk) -> String {
    let mut parts = Vec::new();
    let title = document.title.trim();
    if !title.is_empty() {
        parts.push(title.to_string());
    }
    if !chunk.heading_path.is_empty() {
        parts.push(chunk.heading_path.join(" > "));
    }
    let section = document
        .sections
        .iter()
        .find(|s| s.start <= chunk.start && chunk.start < s.end.max(s.start + 1))
        .map(|s| document.section_text(s));
    let sentence = section
        .and_then(first_sentence)
        .filter(|s| !chunk.text.trim_start().starts_with(s.as_str()))
        .or_else(|| {
            first_sentence(&document.text).filter(|s| !chunk.text.trim_start().starts_with(s.as_str()))
        });
    if let Some(s) = sentence {
        parts.push(s);
    }
    parts.join(". ")
}

/// The first sentence of a text, skipping heading-like lines (a line without
/// sentence punctuation, e.g. `# Title`); at most ~300 characters.
fn first_sentence(text: &str) -> Option<String> {
    let body: String = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join(" ");
    let body = body.trim();
    if body.is_empty() {
        return None;
    }
    let mut end = body.len();
    for (i, c) in body.char_indices() {
        if matches!(c, '.' | '!' | '?' | '。') {
            let next = body[i + c.len_utf8()..].chars().next();
            if next.is_none_or(char::is_whitespace) {
                end = i + c.len_utf8();
                break;
            }
        }
    }
    let mut s: String = body[..end].to_string();
    if s.chars().count() > MAX_SENTENCE_CHARS {
        s = s.chars().take(MAX_SENTENCE_CHARS).collect::<String>() + "…";
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafactory_core::{Format, Section};

    #[test]
    fn title_heading_and_first_sentence() {
        let text = "# Guide\n\nInstall it first. Then run it.\n\nSecond paragraph here.";
        let doc = Document {
            title: "Guide".into(),
            text: text.into(),
            sections: vec![Section {
                heading_path: vec!["Guide".into()],
                start: 0,
                end: text.chars().count(),
                page: None,
            }],
            format: Format::Markdown,
            metadata: Default::default(),
            external_id: None,
        };
        let chunk = Chunk {
            ordinal: 1,
            heading_path: vec!["Guide".into(), "Setup".into()],
            text: "Second paragraph here.".into(),
            start: 50,
            end: 72,
            page: None,
            token_count: 3,
            context: None,
        };
        assert_eq!(heuristic_context(&doc, &chunk), "Guide. Guide > Setup. Install it first.");
    }
}
