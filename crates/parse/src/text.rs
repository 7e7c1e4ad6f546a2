//! Decoding bytes to text, and the plain-text parser.

use std::path::Path;

use datafactory_core::document::Document;

use crate::{fallback_title, finish, first_line_title, ParseError};

/// Text decoded from bytes, with what was noticed on the way.
pub(crate) struct Decoded {
    pub text: String,
    pub warnings: Vec<String>,
}

/// A byte-order mark of a wide encoding (UTF-32 is checked first: its
/// little-endian mark begins with UTF-16LE's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WideBom {
    Utf32Le,
    Utf32Be,
    Utf16Le,
    Utf16Be,
}

impl WideBom {
    pub(crate) fn of(bytes: &[u8]) -> Option<WideBom> {
        if bytes.starts_with(&[0xFF, 0xFE, 0, 0]) {
            Some(WideBom::Utf32Le)
        } else if bytes.starts_with(&[0, 0, 0xFE, 0xFF]) {
            Some(WideBom::Utf32Be)
        } else if bytes.starts_with(&[0xFF, 0xFE]) {
            Some(WideBom::Utf16Le)
        } else if bytes.starts_with(&[0xFE, 0xFF]) {
            Some(WideBom::Utf16Be)
        } else {
            None
        }
    }

    /// Bytes per code unit.
    pub(crate) fn unit(self) -> usize {
        match self {
            WideBom::Utf32Le | WideBom::Utf32Be => 4,
            WideBom::Utf16Le | WideBom::Utf16Be => 2,
        }
    }
}

/// Decodes bytes to text: UTF-32 and UTF-16 with a BOM are decoded as such,
/// anything else as UTF-8 (lossily, with a warning); a BOM is dropped and
/// line ends become `\n`.
pub(crate) fn decode(bytes: &[u8]) -> Decoded {
    let mut warnings = Vec::new();
    // A BOM is as long as one code unit of its encoding.
    let wide = WideBom::of(bytes).map(|bom| (bom, &bytes[bom.unit()..]));
    let text = if let Some((bom, rest)) = wide {
        match bom {
            WideBom::Utf32Le => decode_utf32(rest, u32::from_le_bytes, &mut warnings),
            WideBom::Utf32Be => decode_utf32(rest, u32::from_be_bytes, &mut warnings),
            WideBom::Utf16Le => decode_utf16(rest, u16::from_le_bytes, &mut warnings),
            WideBom::Utf16Be => decode_utf16(rest, u16::from_be_bytes, &mut warnings),
        }
    } else {
        let bytes = bytes.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(bytes);
        let invalid = count_invalid_utf8(bytes).0;
        if invalid > 0 {
            warnings.push(format!("invalid UTF-8 decoded lossily ({invalid} replacement characters)"));
        }
        String::from_utf8_lossy(bytes).into_owned()
    };
    Decoded { text: normalize_newlines(text), warnings }
}

fn decode_utf16(bytes: &[u8], unit: fn([u8; 2]) -> u16, warnings: &mut Vec<String>) -> String {
    let units = bytes.chunks_exact(2).map(|c| unit([c[0], c[1]]));
    let mut bad = 0usize;
    let mut text: String = char::decode_utf16(units)
        .map(|r| {
            r.unwrap_or_else(|_| {
                bad += 1;
                char::REPLACEMENT_CHARACTER
            })
        })
        .collect();
    if bytes.len() % 2 == 1 {
        bad += 1;
        text.push(char::REPLACEMENT_CHARACTER);
    }
    if bad > 0 {
        warnings.push(format!("invalid UTF-16 decoded lossily ({bad} replacement characters)"));
    }
    text.strip_prefix('\u{FEFF}').map(str::to_string).unwrap_or(text)
}

fn decode_utf32(bytes: &[u8], unit: fn([u8; 4]) -> u32, warnings: &mut Vec<String>) -> String {
    let mut bad = 0usize;
    let mut text: String = bytes
        .chunks_exact(4)
        .map(|c| {
            char::from_u32(unit([c[0], c[1], c[2], c[3]])).unwrap_or_else(|| {
                bad += 1;
                char::REPLACEMENT_CHARACTER
            })
        })
        .collect();
    if !bytes.len().is_multiple_of(4) {
        bad += 1;
        text.push(char::REPLACEMENT_CHARACTER);
    }
    if bad > 0 {
        warnings.push(format!("invalid UTF-32 decoded lossily ({bad} replacement characters)"));
    }
    text
}

/// (number of invalid sequences, number of bytes in them) — each invalid
/// sequence becomes one U+FFFD when decoded lossily.
pub(crate) fn count_invalid_utf8(bytes: &[u8]) -> (usize, usize) {
    let mut sequences = 0;
    let mut invalid_bytes = 0;
    for chunk in bytes.utf8_chunks() {
        if !chunk.invalid().is_empty() {
            sequences += 1;
            invalid_bytes += chunk.invalid().len();
        }
    }
    (sequences, invalid_bytes)
}

/// CRLF and lone CR become LF.
pub(crate) fn normalize_newlines(text: String) -> String {
    if !text.contains('\r') {
        return text;
    }
    text.replace("\r\n", "\n").replace('\r', "\n")
}

/// Plain text: the whole text is the document, one section.
pub(crate) fn parse(text: String, path_hint: Option<&Path>) -> Result<Document, ParseError> {
    let title = first_line_title(&text).unwrap_or_else(|| fallback_title(path_hint));
    finish(Document::plain(title, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_bom_and_crlf() {
        let d = decode(b"\xEF\xBB\xBFa\r\nb\rc");
        assert_eq!(d.text, "a\nb\nc");
        assert!(d.warnings.is_empty());
    }

    #[test]
    fn invalid_utf8_is_replaced_with_a_warning() {
        let d = decode(b"caf\xE9 cr\xE8me");
        assert_eq!(d.text, "caf\u{FFFD} cr\u{FFFD}me");
        assert_eq!(d.warnings, vec!["invalid UTF-8 decoded lossily (2 replacement characters)"]);
    }

    #[test]
    fn utf16_with_bom() {
        let mut le = vec![0xFF, 0xFE];
        for u in "héllo\r\n€".encode_utf16() {
            le.extend_from_slice(&u.to_le_bytes());
        }
        assert_eq!(decode(&le).text, "héllo\n€");
        let mut be = vec![0xFE, 0xFF];
        for u in "wörld".encode_utf16() {
            be.extend_from_slice(&u.to_be_bytes());
        }
        assert_eq!(decode(&be).text, "wörld");
    }

    #[test]
    fn utf32_with_bom_is_not_taken_for_utf16() {
        let mut le = vec![0xFF, 0xFE, 0, 0];
        let mut be = vec![0, 0, 0xFE, 0xFF];
        for c in "Text €\r\n𝄞".chars() {
            le.extend_from_slice(&(c as u32).to_le_bytes());
            be.extend_from_slice(&(c as u32).to_be_bytes());
        }
        for bytes in [&le, &be] {
            let d = decode(bytes);
            assert_eq!(d.text, "Text €\n𝄞");
            assert!(d.warnings.is_empty(), "{:?}", d.warnings);
        }
        le.extend_from_slice(&0x11_0000u32.to_le_bytes());
        le.push(b'x');
        let d = decode(&le);
        assert_eq!(d.text, "Text €\n𝄞\u{FFFD}\u{FFFD}");
        assert_eq!(d.warnings, vec!["invalid UTF-32 decoded lossily (2 replacement characters)"]);
    }

    #[test]
    fn text_title_and_section() {
        let d = parse("\n  Notes on birds  \n\nThe hummingbird hovers.\n".into(), None).unwrap();
        assert_eq!(d.title, "Notes on birds");
        assert_eq!(d.sections.len(), 1);
        assert_eq!(d.section_text(&d.sections[0]), "Notes on birds  \n\nThe hummingbird hovers.");
    }

    #[test]
    fn long_first_line_falls_back_to_file_stem() {
        let long = "word ".repeat(40);
        let d = parse(long, Some(Path::new("/x/my-notes.txt"))).unwrap();
        assert_eq!(d.title, "my-notes");
        let d = parse("word ".repeat(40), None).unwrap();
        assert_eq!(d.title, "Untitled");
    }
}
