//! `parse` never panics, and every document it returns keeps the section
//! invariants, whatever the input.

use std::path::Path;

use datafactory_core::document::Document;
use datafactory_parse::{parse, ParseOptions};
use proptest::prelude::*;

const HINTS: &[Option<&str>] = &[
    None,
    Some("a.txt"),
    Some("a.md"),
    Some("a.html"),
    Some("a.jsonl"),
    Some("a.pdf"),
    Some("a.docx"),
    Some("noext"),
];

fn fixture(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn check(bytes: &[u8], hint: Option<&str>) {
    let opts = ParseOptions { max_decompressed_bytes: 8 * 1024 * 1024, ..ParseOptions::default() };
    if let Ok(parsed) = parse(bytes, hint.map(Path::new), &opts) {
        for doc in &parsed.documents {
            check_doc(doc);
        }
    }
}

fn check_doc(doc: &Document) {
    let len = doc.char_len();
    assert!(!doc.text.trim().is_empty());
    assert!(!doc.sections.is_empty());
    let mut prev_end = 0;
    for s in &doc.sections {
        assert!(
            prev_end <= s.start && s.start <= s.end && s.end <= len,
            "bad section {s:?} (prev end {prev_end}, len {len})"
        );
        prev_end = s.end;
    }
}

/// Text made mostly of the characters that matter to the parsers.
fn markupish() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            4 => proptest::string::string_regex("[a-zé€ ]{1,8}").unwrap(),
            1 => Just("\n".to_string()),
            1 => Just("\r\n".to_string()),
            1 => Just("# ".to_string()),
            1 => Just("## ".to_string()),
            1 => Just("```".to_string()),
            1 => Just("---\n".to_string()),
            1 => Just("===\n".to_string()),
            1 => Just("> ".to_string()),
            1 => Just("- ".to_string()),
            1 => Just("<h1>".to_string()),
            1 => Just("</h1>".to_string()),
            1 => Just("<h2>".to_string()),
            1 => Just("<p>".to_string()),
            1 => Just("<pre>".to_string()),
            1 => Just("</pre>".to_string()),
            1 => Just("<br>".to_string()),
            1 => Just("<table><tr><td>".to_string()),
            1 => Just("</td><td>".to_string()),
            1 => Just("<main>".to_string()),
            1 => Just("<nav>".to_string()),
            1 => Just("<!doctype html>".to_string()),
            1 => Just("&amp;".to_string()),
            1 => Just("{\"text\": \"".to_string()),
            1 => Just("\", \"id\": 1}".to_string()),
            1 => Just("\"format\": \"markdown\", ".to_string()),
            1 => Just("\\n".to_string()),
            1 => Just("\t".to_string()),
            1 => Just("\u{FEFF}".to_string()),
            1 => any::<char>().prop_map(|c| c.to_string()),
        ],
        0..60,
    )
    .prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048), hint in 0..HINTS.len()) {
        check(&bytes, HINTS[hint]);
    }

    #[test]
    fn arbitrary_markup(text in markupish(), hint in 0..HINTS.len()) {
        check(text.as_bytes(), HINTS[hint]);
    }

    #[test]
    fn arbitrary_strings(text in any::<String>(), hint in prop_oneof![Just("a.md"), Just("a.html"), Just("a.jsonl"), Just("a.txt")]) {
        check(text.as_bytes(), Some(hint));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// A real PDF or DOCX cut somewhere, followed by random bytes.
    #[test]
    fn container_prefix_with_random_tail(
        which in 0..2usize,
        cut in 0.0..1.0f64,
        tail in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let base = fixture(["sample.pdf", "sample.docx"][which]);
        let mut bytes = base[..(base.len() as f64 * cut) as usize].to_vec();
        bytes.extend_from_slice(&tail);
        check(&bytes, None);
    }

    /// A real PDF or DOCX with a few bytes overwritten.
    #[test]
    fn container_with_flipped_bytes(
        which in 0..2usize,
        flips in proptest::collection::vec((0.0..1.0f64, any::<u8>()), 1..8),
    ) {
        let mut bytes = fixture(["sample.pdf", "sample.docx"][which]);
        let len = bytes.len();
        for (at, value) in flips {
            bytes[((len as f64 * at) as usize).min(len - 1)] = value;
        }
        check(&bytes, None);
    }
}
