//! The committed fixtures in `tests/fixtures/` (see its README) parse as
//! expected, and the bad ones fail with the right errors.

use std::path::{Path, PathBuf};

use datafactory_core::document::{Document, Format};
use datafactory_parse::{parse, sniff, ParseError, ParseOptions, Parsed};

fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name)
}

fn read(name: &str) -> (Vec<u8>, PathBuf) {
    let path = fixture_path(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (bytes, path)
}

fn parse_fixture(name: &str) -> Result<Parsed, ParseError> {
    let (bytes, path) = read(name);
    parse(&bytes, Some(&path), &ParseOptions::default())
}

fn parse_one(name: &str) -> Document {
    let parsed = parse_fixture(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(parsed.failures.is_empty(), "{name}: {:?}", parsed.failures);
    assert!(parsed.warnings.is_empty(), "{name}: {:?}", parsed.warnings);
    assert_eq!(parsed.documents.len(), 1, "{name}");
    let doc = parsed.documents.into_iter().next().unwrap();
    check_invariants(&doc);
    doc
}

/// Sections are non-empty, trimmed, ordered, non-overlapping and inside the text.
fn check_invariants(doc: &Document) {
    let len = doc.char_len();
    assert!(!doc.sections.is_empty(), "{}: no sections", doc.title);
    let mut prev_end = 0;
    for s in &doc.sections {
        assert!(
            prev_end <= s.start && s.start < s.end && s.end <= len,
            "{}: bad section {s:?} (prev end {prev_end}, len {len})",
            doc.title
        );
        let body = doc.section_text(s);
        assert_eq!(body.trim(), body, "{}: untrimmed section {s:?}", doc.title);
        prev_end = s.end;
    }
}

/// The text of the (first) section containing `needle`, with its heading path.
fn section_with<'a>(doc: &'a Document, needle: &str) -> (Vec<String>, &'a str, Option<u32>) {
    doc.sections
        .iter()
        .find(|s| doc.section_text(s).contains(needle))
        .map(|s| (s.heading_path.clone(), doc.section_text(s), s.page))
        .unwrap_or_else(|| panic!("{}: no section contains {needle:?}", doc.title))
}

fn path(p: &[&str]) -> Vec<String> {
    p.iter().map(|s| s.to_string()).collect()
}

#[test]
fn text_fixture() {
    let d = parse_one("sample.txt");
    assert_eq!(d.format, Format::Text);
    assert_eq!(d.title, "Notes on Backyard Birds");
    assert_eq!(d.sections.len(), 1);
    assert!(section_with(&d, "hummingbird").0.is_empty());
}

#[test]
fn markdown_fixture() {
    let d = parse_one("sample.md");
    assert_eq!(d.format, Format::Markdown);
    assert_eq!(d.title, "Release Engineering Handbook");
    assert!(d.metadata["front_matter"].as_str().unwrap().contains("owner: build-team"));
    // Front matter belongs to no section; the intro has an empty path.
    assert!(!d.sections.iter().any(|s| d.section_text(s).contains("owner:")));
    assert_eq!(section_with(&d, "This handbook describes").0, path(&[]));
    assert_eq!(section_with(&d, "marzipan").0, path(&["Release Engineering Handbook"]));
    let (p, body, _) = section_with(&d, "DiffExecutor");
    assert_eq!(p, path(&["Release Engineering Handbook", "Preparing a Release", "Checking the Changes"]));
    // `#` inside the code fence is not a heading.
    assert!(body.contains("# This line is a comment in the code, not a heading."));
    assert_eq!(
        section_with(&d, "Rolling back is always preferred").0,
        path(&["Release Engineering Handbook", "Rollback plan"]),
        "setext heading"
    );
    // Headings are in the text but in no section.
    assert!(d.text.contains("## Shipping"));
    assert!(!d.sections.iter().any(|s| d.section_text(s).contains("## Shipping")));
}

#[test]
fn markdown_with_crlf_and_utf16_gives_the_same_sections() {
    let (bytes, p) = read("sample.md");
    let lf = parse(&bytes, Some(&p), &ParseOptions::default()).unwrap().documents;
    let crlf_bytes = String::from_utf8(bytes.clone()).unwrap().replace('\n', "\r\n");
    let crlf = parse(crlf_bytes.as_bytes(), Some(&p), &ParseOptions::default()).unwrap().documents;
    assert_eq!(lf, crlf);
    let mut utf16 = vec![0xFF, 0xFE];
    for u in String::from_utf8(bytes).unwrap().encode_utf16() {
        utf16.extend_from_slice(&u.to_le_bytes());
    }
    let utf16 = parse(&utf16, Some(&p), &ParseOptions::default()).unwrap().documents;
    assert_eq!(lf, utf16);
}

#[test]
fn html_fixture() {
    let d = parse_one("sample.html");
    assert_eq!(d.format, Format::Html);
    assert_eq!(d.title, "A Short History of Optical Toys");
    assert_eq!(d.metadata["author"], "Museum of Small Machines");
    let top = "A Short History of Optical Toys";
    assert_eq!(section_with(&d, "kaleidoscope").0, path(&[top, "The Kaleidoscope"]));
    assert_eq!(
        section_with(&d, "zoetrope showed").0,
        path(&[top, "Persistence of Vision", "Spinning Discs and Drums"])
    );
    assert_eq!(section_with(&d, "1890s").0, path(&[top, "From Toys to Cinema"]));
    assert!(d.text.contains("Thaumatrope | 1825 | John Ayrton Paris\n"));
    assert!(d.text.contains("    o         o/        o\n   /|\\"), "pre kept verbatim");
    assert!(d.text.contains("sold as toys, but several"), "inline whitespace collapsed");
    for junk in [
        "Plan your visit",
        "Gift shop",
        "Toggle",
        "Menu",
        "analytics",
        "font-family",
        "Draft note",
        "★",
        "All rights reserved",
        "Subscribe",
        "Museum of Small Machines",
    ] {
        assert!(!d.text.contains(junk), "{junk:?} should not be in the text");
    }
}

#[test]
fn pdf_fixture() {
    let d = parse_one("sample.pdf");
    assert_eq!(d.format, Format::Pdf);
    assert_eq!(d.title, "Field Guide to the Night Sky");
    let pages: Vec<_> = d.sections.iter().map(|s| s.page).collect();
    assert_eq!(pages, vec![Some(1), Some(2), Some(3)]);
    assert!(d.sections.iter().all(|s| s.heading_path.is_empty()));
    assert_eq!(section_with(&d, "Plough").2, Some(1));
    assert_eq!(section_with(&d, "quasar").2, Some(2));
    assert_eq!(section_with(&d, "Keeping a Log").2, Some(3));
    assert!(!d.text.contains("  "), "runs of spaces collapsed");
    assert!(!d.text.contains("\n\n\n"), "blank lines collapsed");
}

#[test]
fn docx_fixture() {
    let d = parse_one("sample.docx");
    assert_eq!(d.format, Format::Docx);
    assert_eq!(d.title, "Airship Operations Manual");
    assert_eq!(d.metadata["creator"], "Harriet Lindqvist");
    assert_eq!(
        section_with(&d, "companion to practical training").0,
        path(&["Airship Operations Manual"]),
        "Title style"
    );
    assert_eq!(section_with(&d, "zeppelin").0, path(&["Ground Handling", "Walking the Ship"]));
    assert_eq!(section_with(&d, "Water ballast").0, path(&["Ground Handling", "Mooring at the Mast"]));
    let (p, body, _) = section_with(&d, "Surface wind");
    assert_eq!(p, path(&["Flight Preparation"]));
    assert!(body.contains("Check | Limit | Who\nSurface wind | 25 knots | Captain\n"));
    assert_eq!(section_with(&d, "ground crew walks").0, path(&["Landing"]));
}

#[test]
fn jsonl_fixture() {
    let parsed = parse_fixture("sample.jsonl").unwrap();
    assert!(parsed.failures.is_empty());
    assert_eq!(parsed.documents.len(), 2);
    let (a, b) = (&parsed.documents[0], &parsed.documents[1]);
    for d in [a, b] {
        assert_eq!(d.format, Format::Jsonl);
        check_invariants(d);
    }
    assert_eq!(a.external_id.as_deref(), Some("rocks-001"));
    assert_eq!(a.title, "Volcanic Glass");
    assert_eq!(a.metadata["topic"], "geology");
    assert!(a.text.contains("obsidian"));
    assert_eq!(b.external_id.as_deref(), Some("2"));
    assert_eq!(b.title, "Citrus Fruit in Winter");
    assert!(b.text.contains("tangerine"));
}

#[test]
fn each_search_word_is_in_exactly_one_fixture() {
    let files = ["sample.txt", "sample.md", "sample.html", "sample.pdf", "sample.docx", "sample.jsonl"];
    let texts: Vec<(String, String)> = files
        .iter()
        .flat_map(|f| {
            parse_fixture(f)
                .unwrap()
                .documents
                .into_iter()
                .map(move |d| (f.to_string(), d.text.to_lowercase()))
        })
        .collect();
    for (word, file) in [
        ("hummingbird", "sample.txt"),
        ("marzipan", "sample.md"),
        ("diffexecutor", "sample.md"),
        ("kaleidoscope", "sample.html"),
        ("quasar", "sample.pdf"),
        ("zeppelin", "sample.docx"),
        ("obsidian", "sample.jsonl"),
        ("tangerine", "sample.jsonl"),
    ] {
        let found: Vec<_> = texts.iter().filter(|(_, t)| t.contains(word)).map(|(f, _)| f.as_str()).collect();
        assert_eq!(found, vec![file], "{word}");
    }
}

#[test]
fn sniffing_the_fixtures() {
    for (name, format) in [
        ("sample.txt", Format::Text),
        ("sample.md", Format::Markdown),
        ("sample.html", Format::Html),
        ("sample.pdf", Format::Pdf),
        ("sample.docx", Format::Docx),
        ("sample.jsonl", Format::Jsonl),
        ("bad/latin1.txt", Format::Text),
        ("bad/truncated.pdf", Format::Pdf),
        ("bad/encrypted.pdf", Format::Pdf),
        ("bad/bomb.docx", Format::Docx),
    ] {
        let (bytes, p) = read(name);
        assert_eq!(sniff(&bytes, Some(&p)).unwrap(), format, "{name}");
        // Content decides, not the extension.
        assert_eq!(sniff(&bytes, None).unwrap(), format, "{name} without hint");
    }
}

#[test]
fn bad_fixtures_fail_with_the_right_error() {
    let err = |name: &str| parse_fixture(name).unwrap_err();

    assert!(matches!(err("bad/empty.txt"), ParseError::Empty));
    assert_eq!(err("bad/empty.txt").to_string(), "file is empty");

    let e = err("bad/garbage.bin");
    assert!(matches!(e, ParseError::Binary { .. }), "{e:?}");
    assert!(e.to_string().starts_with("binary content (not a document)"));

    let e = err("bad/encrypted.pdf");
    assert!(matches!(e, ParseError::Encrypted { format: Format::Pdf }), "{e:?}");
    assert_eq!(e.to_string(), "PDF is encrypted (password-protected); decrypt it first");

    let e = err("bad/truncated.pdf");
    assert!(matches!(e, ParseError::Corrupt { format: Format::Pdf, .. }), "{e:?}");
    assert!(e.to_string().starts_with("corrupt or truncated PDF: "));

    let e = err("bad/not-a-docx.docx");
    assert!(matches!(e, ParseError::Unsupported { .. }), "{e:?}");
    assert!(e.to_string().contains("word/document.xml"), "{e}");
}

#[test]
fn zip_bomb_is_refused() {
    let (bytes, p) = read("bad/bomb.docx");
    assert!(bytes.len() < 1024 * 1024, "the committed bomb stays small");
    let limit = 50 * 1024 * 1024;
    let e =
        parse(&bytes, Some(&p), &ParseOptions { max_decompressed_bytes: limit, ..ParseOptions::default() })
            .unwrap_err();
    assert!(matches!(e, ParseError::TooLarge { format: Format::Docx, limit: l } if l == limit), "{e:?}");
    assert_eq!(
        e.to_string(),
        "DOCX decompresses to more than 52428800 bytes (limit ingest.max_decompressed_bytes)"
    );
    // The default limit (256 MiB) is below the bomb's 300 MiB too.
    let e = parse(&bytes, Some(&p), &ParseOptions::default()).unwrap_err();
    assert!(matches!(e, ParseError::TooLarge { .. }), "{e:?}");
}

#[test]
fn latin1_is_decoded_lossily_with_a_warning() {
    let parsed = parse_fixture("bad/latin1.txt").unwrap();
    assert_eq!(parsed.warnings, vec!["invalid UTF-8 decoded lossily (4 replacement characters)"]);
    let d = &parsed.documents[0];
    check_invariants(d);
    assert_eq!(d.title, "Recipes from a Small Kitchen");
    assert!(d.text.contains("caf\u{FFFD} on the corner"));
}

#[test]
fn ole_documents_are_unsupported_with_advice() {
    let mut bytes = vec![0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1];
    bytes.resize(4096, 0);
    let e = parse(&bytes, Some(Path::new("old.doc")), &ParseOptions::default()).unwrap_err();
    assert!(matches!(e, ParseError::Unsupported { .. }));
    assert_eq!(
        e.to_string(),
        "legacy .doc / encrypted Office file (OLE compound document) is not supported; save as .docx"
    );
}

/// A chapter of the Rust book (mdBook output shipped with the toolchain
/// docs) comes out as the chapter text only, with its h2/h3 sections.
#[test]
fn rust_book_chapter() {
    let sysroot = std::process::Command::new(std::env::var("RUSTC").unwrap_or("rustc".into()))
        .args(["--print", "sysroot"])
        .output()
        .expect("running `rustc --print sysroot`");
    let sysroot = String::from_utf8(sysroot.stdout).unwrap();
    let page = Path::new(sysroot.trim()).join("share/doc/rust/html/book/ch04-01-what-is-ownership.html");
    let bytes = std::fs::read(&page).unwrap_or_else(|e| {
        panic!(
            "the Rust book is needed for this test but {} cannot be read ({e}); \
             install the rust-docs component: `rustup component add rust-docs`",
            page.display()
        )
    });
    let parsed = parse(&bytes, Some(&page), &ParseOptions::default()).unwrap();
    let d = &parsed.documents[0];
    check_invariants(d);
    assert_eq!(d.format, Format::Html);
    assert!(d.title.starts_with("What is Ownership?"), "{}", d.title);
    assert!(d.text.starts_with("What Is Ownership?\n\nOwnership is a set of rules"));
    // Menu bar (theme list), help popup and page navigation are gone (the
    // sidebar itself is filled in by JavaScript in current mdBook).
    for junk in [
        "Keyboard shortcuts",
        "Press Esc to hide",
        "Coal",
        "Navy",
        "Ayu",
        "The Rust Programming Language",
        "Previous chapter",
    ] {
        assert!(!d.text.contains(junk), "{junk:?} should not be in the text");
    }
    let paths: Vec<Vec<String>> = d.sections.iter().map(|s| s.heading_path.clone()).collect();
    for expected in [
        path(&["What Is Ownership?"]),
        path(&["What Is Ownership?", "Ownership Rules"]),
        path(&["What Is Ownership?", "The String Type"]),
        path(&["What Is Ownership?", "Memory and Allocation", "Variables and Data Interacting with Move"]),
        path(&["What Is Ownership?", "Return Values and Scope"]),
    ] {
        assert!(paths.contains(&expected), "missing section {expected:?} in {paths:?}");
    }
    assert!(d.text.contains("let s = String::from(\"hello\");"));
}
