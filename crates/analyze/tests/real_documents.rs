//! The heuristics on real documents of different kinds: the repository's
//! fixtures and sources, the Rust book that ships with the toolchain, and the
//! evaluation data committed in `tests/data`. The type, language and plan must be sensible, and
//! the same on every run.

use datafactory_analyze::{analyze, Analysis, DocType};
use datafactory_core::ChunkStrategy;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Parses a file and analyses its first document (twice: the same answer).
fn analyse(path: &Path) -> Analysis {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let parsed = datafactory_parse::parse(&bytes, Some(path), &Default::default())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let doc = &parsed.documents[0];
    let a = analyze(doc);
    assert_eq!(a, analyze(doc), "not deterministic: {}", path.display());
    a
}

fn rust_book() -> PathBuf {
    let sysroot = std::process::Command::new("rustc").args(["--print", "sysroot"]).output().expect("rustc");
    PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim()).join("share/doc/rust/html/book")
}

fn expect(path: &Path, doc_type: DocType, language: Option<&str>) -> Analysis {
    let a = analyse(path);
    assert_eq!(a.doc_type, doc_type, "{}: {a:#?}", path.display());
    assert_eq!(a.language.as_ref().map(|l| l.code.as_str()), language, "{}", path.display());
    assert!(!a.signals.is_empty() && a.reason.starts_with(doc_type.as_str()), "{a:#?}");
    a
}

#[test]
fn fixtures() {
    let f = root().join("tests/fixtures");
    let a = expect(&f.join("sample.txt"), DocType::Prose, Some("eng"));
    assert_eq!(a.plan.strategy, ChunkStrategy::Sections);
    assert!(a.plan.overlap_tokens > 0);
    // "Release Engineering Handbook": headings three deep, a fenced Rust example.
    let a = expect(&f.join("sample.md"), DocType::Manual, Some("eng"));
    assert_eq!((a.structure.headings, a.structure.max_heading_depth, a.structure.code_blocks), (7, 3, 1));
    assert!(a.plan.keep_code_whole && a.plan.keep_tables_whole);
    let a = expect(&f.join("sample.html"), DocType::Manual, Some("eng"));
    assert_eq!(a.structure.tables, 1);
    let a = expect(&f.join("sample.docx"), DocType::Manual, Some("eng"));
    assert_eq!(a.structure.tables, 1);
    let a = analyse(&f.join("sample.pdf"));
    assert_eq!(a.structure.pages, 3);
    assert_eq!(a.format, datafactory_core::Format::Pdf);
    expect(&f.join("sample.jsonl"), DocType::Prose, Some("eng"));
}

#[test]
fn source_files() {
    for p in ["crates/chunk/src/lib.rs", "crates/store/src/schema.rs", "tests/fixtures/make_fixtures.py"] {
        let a = analyse(&root().join(p));
        assert_eq!(a.doc_type, DocType::SourceCode, "{p}: {a:#?}");
        assert_eq!(a.plan.strategy, ChunkStrategy::Lines, "{p}");
        assert!(a.structure.code_share > 0.5, "{p}");
    }
}

#[test]
fn licenses_and_evaluation_data() {
    let data = root().join("tests/data");
    let a = expect(&data.join("anthropic_docs_rag/LICENSE"), DocType::Legal, Some("eng"));
    assert!(a.plan.overlap_tokens >= 64 && a.plan.max_tokens >= 512, "{a:#?}");
    expect(&data.join("xquad/CC-BY-SA4.0.txt"), DocType::Legal, Some("eng"));
    // Relevance judgements: three numbers a line.
    expect(&data.join("cranfield/cranqrel"), DocType::Data, None);
    // A SQuAD file is one JSON value: data, in German.
    let a = expect(&data.join("xquad/xquad.de.json"), DocType::Data, Some("deu"));
    assert_eq!(a.plan.strategy, ChunkStrategy::Lines);
    // 1,400 abstracts, one after the other.
    expect(&data.join("cranfield/cran.all.1400"), DocType::Prose, Some("eng"));
}

#[test]
fn the_rust_book_is_documentation() {
    let book = rust_book();
    let mut counts = std::collections::BTreeMap::new();
    let mut total = 0;
    for entry in walkdir::WalkDir::new(&book).sort_by_file_name() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().to_string();
        if !(name.starts_with("ch") && name.ends_with(".html")) || entry.path().components().count() < 2 {
            continue;
        }
        if entry.path().parent() != Some(book.as_path()) {
            continue; // the 2018-edition stubs
        }
        let a = analyse(entry.path());
        if a.structure.words < 20 {
            // A redirect stub ("Redirecting to... ch18-03-….html."): too short to tell.
            assert!(a.language.is_none(), "{name}");
            continue;
        }
        assert_eq!(a.language.as_ref().map(|l| l.code.as_str()), Some("eng"), "{name}");
        assert_ne!(a.doc_type, DocType::Conversation, "{name}: {a:#?}");
        *counts.entry(a.doc_type).or_insert(0) += 1;
        total += 1;
    }
    assert!(total > 90, "{total} chapters");
    let manual = counts.get(&DocType::Manual).copied().unwrap_or(0);
    // Mostly documentation; the rest prose (narrative chapters) or data (reference tables).
    assert!(manual * 10 >= total * 7, "{counts:?}");
    assert!(
        counts.keys().all(|t| matches!(t, DocType::Manual | DocType::Prose | DocType::Data)),
        "{counts:?}"
    );
    let a = expect(&book.join("ch04-01-what-is-ownership.html"), DocType::Manual, Some("eng"));
    assert!(a.structure.code_blocks >= 5 && a.structure.headings >= 5, "{:#?}", a.structure);
    let a = expect(&book.join("appendix-02-operators.html"), DocType::Data, Some("eng"));
    assert!(a.plan.keep_tables_whole && a.structure.tables >= 5);
}
