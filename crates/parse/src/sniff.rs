//! Format detection: content first, extension second.

use std::io::Cursor;
use std::path::Path;

use datafactory_core::document::Format;

use crate::text::{count_invalid_utf8, decode};
use crate::ParseError;

const OLE_MAGIC: &[u8] = &[0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1];
const BINARY_SAMPLE: usize = 8 * 1024;
/// How much of the decoded text the text-level checks look at.
const TEXT_SAMPLE_BYTES: usize = 64 * 1024;

pub(crate) const OLE_MESSAGE: &str =
    "legacy .doc / encrypted Office file (OLE compound document) is not supported; save as .docx";

pub(crate) fn sniff(bytes: &[u8], path_hint: Option<&Path>) -> Result<Format, ParseError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ParseError::Empty);
    }
    let ext = extension(path_hint);
    let ext = ext.as_deref();

    if looks_like_pdf(bytes) {
        return Ok(Format::Pdf);
    }
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        return sniff_zip(bytes, ext);
    }
    if bytes.starts_with(OLE_MAGIC) {
        return Err(ParseError::Unsupported { reason: OLE_MESSAGE.to_string() });
    }
    let wide = crate::text::WideBom::of(bytes);
    if wide.is_none() {
        check_not_binary(&bytes[..bytes.len().min(BINARY_SAMPLE)])?;
    }
    let sample = sample_text(bytes, wide);
    if sample.trim().is_empty() {
        return Err(ParseError::Empty);
    }
    Ok(sniff_text(&sample, ext))
}

/// The lowercase extension of the hint, if any.
fn extension(path_hint: Option<&Path>) -> Option<String> {
    path_hint.and_then(|p| p.extension()).map(|e| e.to_string_lossy().to_ascii_lowercase())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `%PDF-` at the start, or within the first KiB (readers tolerate junk
/// before the header) of something that ends like a PDF or is not text — so
/// that a text file merely mentioning `%PDF-` stays text.
fn looks_like_pdf(bytes: &[u8]) -> bool {
    if bytes.starts_with(b"%PDF-") {
        return true;
    }
    if find(&bytes[..bytes.len().min(1024)], b"%PDF-").is_none() {
        return false;
    }
    let tail = &bytes[bytes.len().saturating_sub(2048)..];
    find(tail, b"%%EOF").is_some() || check_not_binary(&bytes[..bytes.len().min(BINARY_SAMPLE)]).is_err()
}

fn sniff_zip(bytes: &[u8], ext: Option<&str>) -> Result<Format, ParseError> {
    let archive = match zip::ZipArchive::new(Cursor::new(bytes)) {
        Ok(a) => a,
        Err(e) => {
            return Err(if ext == Some("docx") {
                ParseError::Corrupt {
                    format: Format::Docx,
                    detail: format!("cannot read the ZIP container: {e}"),
                }
            } else {
                ParseError::Unsupported {
                    reason: format!("unreadable ZIP archive ({e}); only .docx archives are read"),
                }
            })
        }
    };
    let has = |name: &str| archive.index_for_name(name).is_some();
    if has("word/document.xml") {
        return Ok(Format::Docx);
    }
    let what = if has("xl/workbook.xml") {
        "Excel workbook (.xlsx) is not supported"
    } else if has("ppt/presentation.xml") {
        "PowerPoint presentation (.pptx) is not supported"
    } else if has("content.xml") && has("mimetype") {
        "OpenDocument file (.odt/.ods/.odp) is not supported; save as .docx"
    } else if has("META-INF/container.xml") {
        "EPUB is not supported"
    } else if ext == Some("docx") {
        "not a DOCX document (ZIP archive without word/document.xml)"
    } else {
        "ZIP archive is not a supported document (only .docx archives are read)"
    };
    Err(ParseError::Unsupported { reason: what.to_string() })
}

/// NUL bytes, mostly control characters or mostly invalid UTF-8 in the sample
/// mean binary content.
fn check_not_binary(sample: &[u8]) -> Result<(), ParseError> {
    if sample.contains(&0) {
        return Err(ParseError::Binary { detail: "contains NUL bytes".to_string() });
    }
    let control = sample
        .iter()
        .filter(|&&b| b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r' | 0x0C | 0x1B) || b == 0x7F)
        .count();
    if control * 10 > sample.len() {
        return Err(ParseError::Binary { detail: "mostly control characters".to_string() });
    }
    // Cut at the sample end may split a character: ignore a short tail.
    let trimmed = &sample[..sample.len().saturating_sub(3)];
    let (_, invalid_bytes) = count_invalid_utf8(trimmed);
    if trimmed.len() >= 16 && invalid_bytes * 3 > trimmed.len() {
        return Err(ParseError::Binary { detail: "mostly bytes that are not text".to_string() });
    }
    Ok(())
}

/// The decoded start of the input, for the text-level checks.
fn sample_text(bytes: &[u8], wide: Option<crate::text::WideBom>) -> String {
    let unit = wide.map_or(1, |w| w.unit());
    let cut = bytes.len().min(TEXT_SAMPLE_BYTES * unit) / unit * unit;
    decode(&bytes[..cut]).text
}

fn sniff_text(text: &str, ext: Option<&str>) -> Format {
    let start = skip_prolog(text);
    if looks_like_html(start) {
        return Format::Html;
    }
    if matches!(ext, Some("html" | "htm" | "xhtml")) && start.starts_with('<') {
        return Format::Html;
    }
    if matches!(ext, Some("jsonl" | "ndjson")) || looks_like_jsonl(text) {
        return Format::Jsonl;
    }
    if matches!(ext, Some("md" | "markdown" | "mdx")) {
        return Format::Markdown;
    }
    let known_text_ext = matches!(
        ext,
        Some(
            "txt"
                | "text"
                | "log"
                | "csv"
                | "tsv"
                | "rst"
                | "adoc"
                | "asciidoc"
                | "org"
                | "tex"
                | "html"
                | "htm"
                | "xhtml"
                | "pdf"
                | "docx"
                | "json"
                | "xml"
        )
    );
    if !known_text_ext && looks_like_markdown(text) {
        return Format::Markdown;
    }
    Format::Text
}

/// Skips whitespace, a BOM, `<?xml ...?>` declarations and `<!-- -->` comments.
fn skip_prolog(text: &str) -> &str {
    let mut s = text.trim_start_matches(|c: char| c.is_whitespace() || c == '\u{FEFF}');
    loop {
        if s.starts_with("<!--") {
            match s.find("-->") {
                Some(end) => s = &s[end + 3..],
                None => return s,
            }
        } else if s.starts_with("<?") {
            match s.find("?>") {
                Some(end) => s = &s[end + 2..],
                None => return s,
            }
        } else {
            return s;
        }
        s = s.trim_start();
    }
}

fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

fn looks_like_html(start: &str) -> bool {
    if starts_with_ignore_case(start, "<!doctype html") || starts_with_ignore_case(start, "<html") {
        return true;
    }
    if !start.starts_with('<') {
        return false;
    }
    let mut early_end = start.len().min(1024);
    while !start.is_char_boundary(early_end) {
        early_end -= 1;
    }
    let early = start[..early_end].to_ascii_lowercase();
    early.contains("<head") || early.contains("<body")
}

fn looks_like_jsonl(text: &str) -> bool {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty()).take(5);
    let Some(first) = lines.next() else {
        return false;
    };
    if !first.starts_with('{') || !lines.all(|l| l.starts_with('{')) {
        return false;
    }
    match serde_json::from_str::<serde_json::Value>(first) {
        Ok(serde_json::Value::Object(map)) => map.get("text").is_some_and(|t| t.is_string()),
        _ => false,
    }
}

fn looks_like_markdown(text: &str) -> bool {
    text.lines().take(500).any(|line| {
        let line = line.trim_end();
        if line.starts_with("```") || line.starts_with("~~~") {
            return true;
        }
        let hashes = line.bytes().take_while(|&b| b == b'#').count();
        (1..=6).contains(&hashes) && line[hashes..].starts_with(' ') && !line[hashes..].trim().is_empty()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(bytes: &[u8], hint: Option<&str>) -> Result<Format, ParseError> {
        sniff(bytes, hint.map(Path::new))
    }

    #[test]
    fn empty_and_whitespace() {
        assert!(matches!(s(b"", None), Err(ParseError::Empty)));
        assert!(matches!(s(b" \n\t ", Some("a.md")), Err(ParseError::Empty)));
        assert!(matches!(s(b"\xEF\xBB\xBF \n", None), Err(ParseError::Empty)));
    }

    #[test]
    fn content_beats_extension() {
        assert_eq!(s(b"junk\n%PDF-1.7\n%%EOF\n", Some("a.txt")).unwrap(), Format::Pdf);
        assert_eq!(s(b"\0junk\n%PDF-1.7\n", None).unwrap(), Format::Pdf);
        assert_eq!(s(b"%PDF-1.7\n", Some("a.txt")).unwrap(), Format::Pdf);
        assert_eq!(s(b"Every PDF starts with %PDF-1.x, see below.", None).unwrap(), Format::Text);
        assert_eq!(s(b"<!DOCTYPE html><p>x", Some("a.txt")).unwrap(), Format::Html);
        assert_eq!(s(b"<!-- c -->\n  <HTML><body>x", Some("a.md")).unwrap(), Format::Html);
        assert_eq!(s(b"<div>x</div>", None).unwrap(), Format::Text);
        assert_eq!(s(b"<div>x</div>", Some("a.htm")).unwrap(), Format::Html);
        assert_eq!(s(b"<meta x>\n<body>hi", None).unwrap(), Format::Html);
    }

    #[test]
    fn ole_is_unsupported() {
        let mut b = OLE_MAGIC.to_vec();
        b.extend_from_slice(&[0; 100]);
        let err = s(&b, Some("a.doc")).unwrap_err();
        assert!(matches!(err, ParseError::Unsupported { .. }));
        assert_eq!(err.to_string(), OLE_MESSAGE);
    }

    #[test]
    fn binary() {
        assert!(matches!(s(b"abc\0def", None), Err(ParseError::Binary { .. })));
        assert!(matches!(s(&[1, 2, 3, 4, 5, 6, 7, 8, b'a'], None), Err(ParseError::Binary { .. })));
        let mostly_invalid: Vec<u8> = (0..200).map(|i| 0x80 + (i % 64) as u8).collect();
        assert!(matches!(s(&mostly_invalid, None), Err(ParseError::Binary { .. })));
        // Latin-1 text is text, not binary.
        assert_eq!(s(b"caf\xE9 au lait, cr\xE8me br\xFBl\xE9e", None).unwrap(), Format::Text);
    }

    #[test]
    fn utf16_is_text() {
        let mut b = vec![0xFF, 0xFE];
        for u in "# Title\n\nbody".encode_utf16() {
            b.extend_from_slice(&u.to_le_bytes());
        }
        assert_eq!(s(&b, None).unwrap(), Format::Markdown);
        assert_eq!(s(&b, Some("a.txt")).unwrap(), Format::Text);
    }

    #[test]
    fn jsonl_by_content_and_extension() {
        let j = b"{\"id\":1,\"text\":\"a\"}\n{\"id\":2,\"text\":\"b\"}\n";
        assert_eq!(s(j, None).unwrap(), Format::Jsonl);
        assert_eq!(s(b"{\"a\":1}\n", None).unwrap(), Format::Text);
        assert_eq!(s(b"{\"a\":1}\n", Some("x.ndjson")).unwrap(), Format::Jsonl);
        assert_eq!(s(b"{\"text\":\"a\"}\nnot json\n", None).unwrap(), Format::Text);
    }

    #[test]
    fn markdown_by_content_and_extension() {
        assert_eq!(s(b"intro\n\n## Usage\n", None).unwrap(), Format::Markdown);
        assert_eq!(s(b"```rust\nfn x() {}\n```\n", Some("notes")).unwrap(), Format::Markdown);
        assert_eq!(s(b"intro\n\n## Usage\n", Some("a.txt")).unwrap(), Format::Text);
        assert_eq!(s(b"plain words", Some("a.md")).unwrap(), Format::Markdown);
        assert_eq!(s(b"#hashtag only\n", None).unwrap(), Format::Text);
        assert_eq!(s(b"plain words", None).unwrap(), Format::Text);
    }
}
