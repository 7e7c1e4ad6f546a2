//! PDF, through pdf-extract: one section per page.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Once;

use datafactory_core::document::{Document, Format, Section};

use crate::{fallback_title, finish, first_line_title, ParseError};

pub(crate) fn parse(bytes: &[u8], path_hint: Option<&Path>) -> Result<Document, ParseError> {
    let encrypted = has_encrypt_dictionary(bytes);
    let pages = match extract_pages(bytes) {
        Ok(pages) => pages,
        Err(_) if encrypted => return Err(ParseError::Encrypted { format: Format::Pdf }),
        Err(e) => return Err(e),
    };
    let pages: Vec<String> = pages.iter().map(|p| tidy_page(p)).collect();
    if pages.iter().all(|p| p.is_empty()) {
        return Err(if encrypted {
            ParseError::Encrypted { format: Format::Pdf }
        } else {
            ParseError::NoText { format: Format::Pdf }
        });
    }

    let mut text = String::new();
    let mut chars = 0usize;
    let mut sections = Vec::new();
    for (i, page) in pages.iter().enumerate() {
        if page.is_empty() {
            continue;
        }
        if !text.is_empty() {
            text.push_str("\n\n");
            chars += 2;
        }
        let start = chars;
        text.push_str(page);
        chars += page.chars().count();
        sections.push(Section {
            heading_path: Vec::new(),
            start,
            end: chars,
            page: Some(u32::try_from(i + 1).unwrap_or(u32::MAX)),
        });
    }
    let title = pages.first().and_then(|p| first_line_title(p)).unwrap_or_else(|| fallback_title(path_hint));
    let mut metadata = serde_json::Map::new();
    metadata.insert("pages".to_string(), pages.len().into());
    finish(Document { title, format: Format::Pdf, text, sections, metadata, external_id: None })
}

thread_local! {
    /// Set while this thread runs pdf-extract: its panics are expected.
    static IN_PDF_EXTRACT: Cell<bool> = const { Cell::new(false) };
}

/// Wraps the process's panic hook (once) so that panics inside pdf-extract,
/// which are caught and reported as corrupt PDFs, do not also print a
/// "thread panicked" message and backtrace. Other panics go to the previous
/// hook as before.
fn install_quiet_panic_hook() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_PDF_EXTRACT.with(Cell::get) {
                tracing::debug!(%info, "pdf-extract panicked");
            } else {
                previous(info);
            }
        }));
    });
}

/// Text of each page. pdf-extract panics on some malformed files: a panic is
/// reported as a corrupt PDF.
fn extract_pages(bytes: &[u8]) -> Result<Vec<String>, ParseError> {
    install_quiet_panic_hook();
    IN_PDF_EXTRACT.with(|f| f.set(true));
    let result = catch_unwind(AssertUnwindSafe(|| pdf_extract::extract_text_from_mem_by_pages(bytes)));
    IN_PDF_EXTRACT.with(|f| f.set(false));
    match result {
        Ok(Ok(pages)) => Ok(pages),
        Ok(Err(e)) => {
            let detail = e.to_string();
            if detail.to_ascii_lowercase().contains("decrypt")
                || detail.to_ascii_lowercase().contains("password")
            {
                Err(ParseError::Encrypted { format: Format::Pdf })
            } else {
                Err(ParseError::Corrupt { format: Format::Pdf, detail })
            }
        }
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown error".to_string());
            tracing::debug!(panic = %msg, "pdf-extract panicked");
            Err(ParseError::Corrupt {
                format: Format::Pdf,
                detail: format!("the PDF reader failed on this file ({msg})"),
            })
        }
    }
}

/// Whether the trailer (or a cross-reference stream) names an `/Encrypt`
/// dictionary. Looks at the first and last MiB, where trailers live.
fn has_encrypt_dictionary(bytes: &[u8]) -> bool {
    const WINDOW: usize = 1024 * 1024;
    let needle = b"/Encrypt";
    let contains = |hay: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    if bytes.len() <= 2 * WINDOW {
        contains(bytes)
    } else {
        contains(&bytes[..WINDOW]) || contains(&bytes[bytes.len() - WINDOW..])
    }
}

/// Trims line ends, collapses runs of spaces and of blank lines.
fn tidy_page(page: &str) -> String {
    let mut out = String::with_capacity(page.len());
    let mut blank_run = 0usize;
    for line in page.lines() {
        let mut collapsed = String::with_capacity(line.len());
        let mut prev_space = false;
        for ch in line.trim().chars() {
            let ch = if ch == '\t' || ch == '\u{A0}' { ' ' } else { ch };
            if ch == ' ' {
                if !prev_space {
                    collapsed.push(' ');
                }
                prev_space = true;
            } else {
                collapsed.push(ch);
                prev_space = false;
            }
        }
        if collapsed.is_empty() {
            blank_run += 1;
            continue;
        }
        if !out.is_empty() {
            out.push_str(if blank_run > 0 { "\n\n" } else { "\n" });
        }
        blank_run = 0;
        out.push_str(&collapsed);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tidy_collapses_spaces_and_blank_lines() {
        assert_eq!(
            tidy_page("\n\n  Title   here  \n\n\n\n\nBody  text\nmore\t\ttext \n\n"),
            "Title here\n\nBody text\nmore text"
        );
    }

    #[test]
    fn garbage_after_header_is_corrupt_not_a_panic() {
        let err = parse(b"%PDF-1.7\n1 0 obj << /Type /Catalog", None).unwrap_err();
        assert!(matches!(err, ParseError::Corrupt { .. }), "{err:?}");
    }

    #[test]
    fn encrypt_marker() {
        assert!(has_encrypt_dictionary(b"trailer << /Root 1 0 R /Encrypt 5 0 R >>"));
        assert!(!has_encrypt_dictionary(b"trailer << /Root 1 0 R >>"));
    }
}
