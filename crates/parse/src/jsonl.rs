//! JSONL: one JSON object per line, each a document.
//!
//! Fields: `text` (required, non-empty string), `id` (string or number),
//! `title` (string), `metadata` (object), `format` (`"text"` or
//! `"markdown"`: Markdown records get sections by heading). Other top-level
//! fields are kept in the metadata.

use datafactory_core::document::{Document, Format, Section};
use serde_json::{Map, Value};

use crate::{clip_title, finish, markdown, ParseError, Parsed, RecordFailure};

pub(crate) fn parse(text: &str, max_nesting: usize) -> Parsed {
    let mut parsed = Parsed::default();
    for (i, line) in text.split('\n').enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match record(line, max_nesting) {
            Ok(doc) => parsed.documents.push(doc),
            Err(error) => parsed.failures.push(RecordFailure { location: format!("line {}", i + 1), error }),
        }
    }
    parsed
}

fn record(line: &str, max_nesting: usize) -> Result<Document, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    let Value::Object(mut obj) = value else {
        return Err("expected a JSON object".to_string());
    };
    let text = match obj.remove("text") {
        Some(Value::String(s)) => s,
        Some(_) => return Err("field \"text\" must be a string".to_string()),
        None => return Err("missing required field \"text\"".to_string()),
    };
    if text.trim().is_empty() {
        return Err("field \"text\" is empty".to_string());
    }
    let external_id = match obj.remove("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => return Err("field \"id\" must be a string or a number".to_string()),
    };
    let title = match obj.remove("title") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s).filter(|s| !s.trim().is_empty()),
        Some(_) => return Err("field \"title\" must be a string".to_string()),
    };
    let mut metadata = match obj.remove("metadata") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return Err("field \"metadata\" must be an object".to_string()),
    };
    let markdown = match obj.remove("format") {
        None | Some(Value::Null) => false,
        Some(Value::String(f)) => match f.to_ascii_lowercase().as_str() {
            "markdown" | "md" => true,
            "text" | "plain" => false,
            _ => return Err(format!("unsupported \"format\" {f:?} (use \"text\" or \"markdown\")")),
        },
        Some(_) => return Err("field \"format\" must be a string".to_string()),
    };
    for (key, value) in obj {
        metadata.entry(key).or_insert(value);
    }

    let (sections, heading_title) = if markdown {
        let scan = markdown::scan(&text, max_nesting).map_err(|e| e.to_string())?;
        let title = scan.front_matter_title.or(scan.first_h1);
        (scan.sections, title)
    } else {
        let end = text.chars().count();
        let whole = Section { heading_path: Vec::new(), start: 0, end, page: None };
        (vec![whole], None)
    };
    let title = title
        .map(|t| clip_title(&t))
        .or(heading_title)
        .or_else(|| text.lines().map(str::trim).find(|l| !l.is_empty()).map(clip_title))
        .unwrap_or_else(|| "Untitled".to_string());
    finish(Document { title, format: Format::Jsonl, text, sections, metadata, external_id })
        .map_err(|e: ParseError| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_and_bad_lines() {
        let input = concat!(
            "{\"id\": \"a1\", \"title\": \"First\", \"text\": \"Alpha text.\", \"metadata\": {\"k\": 1}, \"url\": \"u\"}\n",
            "\n",
            "{\"id\": 7, \"text\": \"  Second line one\\nline two\"}\n",
            "not json\n",
            "{\"id\": 8}\n",
            "{\"text\": \"   \"}\n",
            "[1, 2]\n",
            "{\"text\": 5}\n",
            "{\"text\": \"x\", \"metadata\": 3}\n",
        );
        let p = parse(input, 512);
        assert_eq!(p.documents.len(), 2);
        let a = &p.documents[0];
        assert_eq!(a.external_id.as_deref(), Some("a1"));
        assert_eq!(a.title, "First");
        assert_eq!(a.metadata["k"], 1);
        assert_eq!(a.metadata["url"], "u");
        let b = &p.documents[1];
        assert_eq!(b.external_id.as_deref(), Some("7"));
        assert_eq!(b.title, "Second line one");
        assert_eq!(b.section_text(&b.sections[0]), "Second line one\nline two");
        let locations: Vec<_> = p.failures.iter().map(|f| f.location.as_str()).collect();
        assert_eq!(locations, vec!["line 4", "line 5", "line 6", "line 7", "line 8", "line 9"]);
        assert!(p.failures[0].error.starts_with("invalid JSON"));
        assert_eq!(p.failures[1].error, "missing required field \"text\"");
        assert_eq!(p.failures[2].error, "field \"text\" is empty");
    }

    #[test]
    fn markdown_records_get_sections() {
        let p =
            parse(r##"{"text": "# Guide\n\nIntro.\n\n## Install\n\nSteps.", "format": "markdown"}"##, 512);
        let d = &p.documents[0];
        assert_eq!(d.title, "Guide");
        let paths: Vec<_> = d.sections.iter().map(|s| s.heading_path.join("/")).collect();
        assert_eq!(paths, vec!["Guide", "Guide/Install"]);
    }

    #[test]
    fn all_bad_is_still_ok() {
        let p = parse("nope\n{}\n", 512);
        assert!(p.documents.is_empty());
        assert_eq!(p.failures.len(), 2);
    }
}
