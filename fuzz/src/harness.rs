//! What every parser fuzz target does with one input, shared by the fuzz
//! targets (`fuzz/fuzz_targets/*.rs`) and by the regression test that replays
//! the committed corpora without the fuzzer
//! (`crates/parse/tests/fuzz_regressions.rs`, which includes this file).
//!
//! Each target steers the input to its parser through the public entry
//! points only ([`datafactory_parse::parse`] and [`datafactory_parse::sniff`]):
//! the format is sniffed from the content first, so a target gives the
//! extension of its format as the path hint and, where the content decides
//! (PDF, DOCX), shapes the bytes so that they are sniffed as its format.
//! A panic, or a document that breaks the invariants the crate promises
//! (sections ordered, non-empty, trimmed, inside the text), is a finding.

use std::path::Path;

use datafactory_core::document::{Document, Format};
use datafactory_parse::{parse, sniff, ParseOptions, Parsed};

/// The targets, by name (the name of the fuzz target, the folder under
/// `fuzz/corpus/` and `fuzz/regressions/`).
pub const TARGETS: &[&str] = &["sniff", "text", "markdown", "html", "jsonl", "pdf", "docx"];

/// Limit for DOCX decompression in the targets: small, so that a fuzzed
/// archive hits the limit path instead of allocating the default 256 MiB.
const FUZZ_MAX_DECOMPRESSED: u64 = 8 * 1024 * 1024;

/// Runs one input through the target `name`. Panics on a finding.
pub fn run(name: &str, data: &[u8]) {
    match name {
        "sniff" => sniff_target(data),
        "text" => parse_checked(data, "input.txt", None),
        "markdown" => parse_checked(data, "input.md", None),
        "html" => parse_checked(data, "input.html", None),
        "jsonl" => parse_checked(data, "input.jsonl", None),
        "pdf" => pdf_target(data),
        "docx" => docx_target(data),
        other => panic!("unknown fuzz target {other:?}"),
    }
}

/// Extensions the sniffer is given as hints (the first byte picks one).
const HINTS: &[&str] = &[
    "", "txt", "md", "markdown", "html", "htm", "xhtml", "jsonl", "ndjson", "pdf", "docx", "json", "xml",
    "csv", "rst", "bin",
];

fn sniff_target(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else { return };
    let ext = HINTS[usize::from(pick) % HINTS.len()];
    let hint = format!("input.{ext}");
    let hint = (!ext.is_empty()).then(|| Path::new(&hint));
    if let Ok(format) = sniff(rest, hint) {
        // What the sniffer calls a format is what parse goes on to parse.
        if let Ok(parsed) = parse(rest, hint, &options()) {
            for doc in &parsed.documents {
                let want = if format == Format::Jsonl { doc.format } else { format };
                assert_eq!(doc.format, want, "sniffed {format:?}, parsed as {:?}", doc.format);
            }
        }
    }
}

/// PDF: the bytes after a `%PDF-` header, so that every input is sniffed as
/// PDF and reaches the PDF parser (lopdf through pdf-extract).
fn pdf_target(data: &[u8]) {
    if data.starts_with(b"%PDF-") {
        parse_checked(data, "input.pdf", Some(Format::Pdf));
    } else {
        let mut bytes = b"%PDF-".to_vec();
        bytes.extend_from_slice(data);
        parse_checked(&bytes, "input.pdf", Some(Format::Pdf));
    }
}

/// Separates the parts of a DOCX built by [`docx_target`].
const PART_SEPARATOR: &[u8] = b"\n--PART--\n";

/// DOCX, two ways (the first byte chooses): the bytes as the whole file (the
/// ZIP container itself is fuzzed), or the bytes cut at [`PART_SEPARATOR`]
/// into `word/document.xml`, `word/styles.xml` and `docProps/core.xml` of an
/// archive built here (the XML readers are fuzzed).
fn docx_target(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode & 1 == 0 {
        parse_checked(rest, "input.docx", None);
        return;
    }
    let mut parts = Vec::new();
    let mut remaining = rest;
    while parts.len() < 2 {
        match remaining.windows(PART_SEPARATOR.len()).position(|w| w == PART_SEPARATOR) {
            Some(at) => {
                parts.push(&remaining[..at]);
                remaining = &remaining[at + PART_SEPARATOR.len()..];
            }
            None => break,
        }
    }
    parts.push(remaining);
    let names = ["word/document.xml", "word/styles.xml", "docProps/core.xml"];
    let bytes = zip_of(names.iter().copied().zip(parts.iter().copied()), mode & 2 != 0);
    parse_checked(&bytes, "input.docx", Some(Format::Docx));
}

/// A ZIP archive of the given parts, stored or deflated.
pub fn zip_of<'a>(parts: impl Iterator<Item = (&'a str, &'a [u8])>, deflate: bool) -> Vec<u8> {
    use std::io::Write;
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let method = if deflate { zip::CompressionMethod::Deflated } else { zip::CompressionMethod::Stored };
    let opts = zip::write::SimpleFileOptions::default().compression_method(method);
    for (name, bytes) in parts {
        writer.start_file(name, opts).expect("start a ZIP entry in memory");
        writer.write_all(bytes).expect("write a ZIP entry in memory");
    }
    writer.finish().expect("finish a ZIP archive in memory").into_inner()
}

/// In-process parsing (no worker is registered in a fuzz target), with the
/// decompression cap lowered so a bomb is found fast; the nesting bound stays
/// the default, so deep inputs exercise it.
fn options() -> ParseOptions {
    ParseOptions { max_decompressed_bytes: FUZZ_MAX_DECOMPRESSED, ..ParseOptions::default() }
}

/// Parses with `hint`; whatever comes back must keep the crate's promises.
/// With `expect`, a successful sniff must name that format.
fn parse_checked(data: &[u8], hint: &str, expect: Option<Format>) {
    let hint = Path::new(hint);
    if let (Some(want), Ok(got)) = (expect, sniff(data, Some(hint))) {
        assert_eq!(got, want, "the target's input is not sniffed as its format");
    }
    match parse(data, Some(hint), &options()) {
        Ok(parsed) => check_parsed(&parsed),
        Err(e) => {
            // Errors are shown to users as they are: never empty.
            assert!(!e.to_string().trim().is_empty(), "empty error message: {e:?}");
        }
    }
}

/// The promises of `datafactory_parse` about its output.
pub fn check_parsed(parsed: &Parsed) {
    for doc in &parsed.documents {
        check_document(doc);
    }
    for failure in &parsed.failures {
        assert!(!failure.error.is_empty() && !failure.location.is_empty(), "{failure:?}");
    }
}

/// Sections are non-empty, trimmed, ordered, non-overlapping and inside the
/// text; the text is not blank; the title is not blank.
pub fn check_document(doc: &Document) {
    assert!(!doc.text.trim().is_empty(), "document with blank text");
    assert!(!doc.title.trim().is_empty(), "document with a blank title");
    assert!(!doc.sections.is_empty(), "document without sections");
    let len = doc.char_len();
    let mut prev_end = 0;
    for s in &doc.sections {
        assert!(
            prev_end <= s.start && s.start < s.end && s.end <= len,
            "bad section {s:?} (previous end {prev_end}, text length {len} chars)"
        );
        let body = doc.section_text(s);
        assert_eq!(body.trim(), body, "untrimmed section {s:?}");
        prev_end = s.end;
    }
}
