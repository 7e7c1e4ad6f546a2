//! Parsing in a child process (`datafactory_parse::worker`): the same
//! documents as in-process, and a file that exhausts memory or time costs
//! that file only, with an error naming the limit.

use std::path::{Path, PathBuf};
use std::time::Duration;

use datafactory_core::document::Format;
use datafactory_parse::worker::WorkerCommand;
use datafactory_parse::{parse, parse_in_process, Isolation, ParseError, ParseOptions};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(path)
}

fn worker() -> WorkerCommand {
    WorkerCommand { program: PathBuf::from(env!("CARGO_BIN_EXE_datafactory-parse-worker")), args: Vec::new() }
}

fn isolated(isolation: Isolation) -> ParseOptions {
    ParseOptions { isolation, worker: Some(worker()), ..ParseOptions::default() }
}

#[test]
fn the_child_gives_the_same_documents_as_in_process() {
    for name in [
        "sample.txt",
        "sample.md",
        "sample.html",
        "sample.pdf",
        "sample.docx",
        "sample.jsonl",
        "bad/latin1.txt",
    ] {
        let path = repo("tests/fixtures").join(name);
        let bytes = std::fs::read(&path).unwrap();
        let here = parse_in_process(&bytes, Some(&path), &ParseOptions::default()).unwrap();
        let there = parse(&bytes, Some(&path), &isolated(Isolation::All)).unwrap();
        assert_eq!(here, there, "{name}");
    }
    // Errors come back typed, with the same message.
    let path = repo("tests/fixtures/bad/encrypted.pdf");
    let err = parse(&std::fs::read(&path).unwrap(), Some(&path), &isolated(Isolation::Pdf)).unwrap_err();
    assert!(matches!(err, ParseError::Encrypted { format: Format::Pdf }), "{err:?}");
}

/// The Flate bomb with the in-process decompression check switched off: the
/// child's memory limit stops lopdf, the caller gets an error naming it.
#[test]
fn a_bomb_past_the_memory_limit_costs_only_the_child() {
    let path = repo("tests/bad-input/flate-bomb.pdf");
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() < 64 * 1024, "the committed bomb stays small");
    let opts = ParseOptions { max_decompressed_bytes: u64::MAX, memory_mb: 256, ..isolated(Isolation::Pdf) };
    let err = parse(&bytes, Some(&path), &opts).unwrap_err();
    assert!(matches!(err, ParseError::OutOfMemory { mb: 256 }), "{err:?}");
    assert_eq!(err.to_string(), "parsing exceeded the 256 MB memory limit (ingest.parse_memory_mb)");
    // With the check on (the default), it is refused before lopdf runs.
    let err = parse(&bytes, Some(&path), &isolated(Isolation::Pdf)).unwrap_err();
    assert!(matches!(err, ParseError::TooLarge { format: Format::Pdf, .. }), "{err:?}");
}

/// 300 000 nested `<div>`s with the nesting bound off take html5ever
/// minutes (quadratic); the child is killed at the timeout.
#[test]
fn a_parse_past_the_timeout_is_killed() {
    let html = format!("{}deep{}", "<div>".repeat(300_000), "</div>".repeat(300_000));
    let opts =
        ParseOptions { max_nesting: usize::MAX, timeout: Duration::from_secs(1), ..isolated(Isolation::All) };
    let err = parse(html.as_bytes(), Some(Path::new("deep.html")), &opts).unwrap_err();
    assert!(matches!(err, ParseError::Timeout { seconds: 1 }), "{err:?}");
    assert_eq!(err.to_string(), "parsing timed out after 1 s (limit ingest.parse_timeout_seconds)");
    // With the bound on, the same file is refused, naming the depth.
    let err = parse(html.as_bytes(), Some(Path::new("deep.html")), &isolated(Isolation::All)).unwrap_err();
    assert_eq!(err.to_string(), "HTML nests more than 512 levels deep (limit ingest.max_nesting)");
}

/// One 50 MB line (no line ends, no sentence ends) through the child: one
/// document, one section, the whole text.
#[test]
fn a_50_mb_single_line_is_one_document() {
    let mut line = "one very long line of words ".repeat(50 * 1024 * 1024 / 28);
    line.push('\n');
    let parsed = parse(line.as_bytes(), Some(Path::new("long-line.txt")), &isolated(Isolation::All)).unwrap();
    assert_eq!(parsed.documents.len(), 1);
    let d = &parsed.documents[0];
    assert_eq!(d.sections.len(), 1);
    assert_eq!(d.section_text(&d.sections[0]), line.trim());
}

#[test]
fn a_missing_worker_is_a_clear_error() {
    let opts = ParseOptions {
        worker: Some(WorkerCommand { program: PathBuf::from("/nonexistent/parse-worker"), args: Vec::new() }),
        ..isolated(Isolation::All)
    };
    let err = parse(b"plain text", None, &opts).unwrap_err();
    assert!(matches!(err, ParseError::Worker { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with("the parse worker failed: cannot start /nonexistent/parse-worker"),
        "{err}"
    );
}

/// Every committed bad input, through the child: an error, or documents
/// with warnings or record failures; never a hang. (Each file's expected
/// outcome is checked end to end in crates/cli/tests/bad_input.rs.)
#[test]
fn every_bad_input_gets_an_answer_from_the_child() {
    let dir = repo("tests/bad-input");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().is_some_and(|n| n == "README.md") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let opts = ParseOptions { timeout: Duration::from_secs(60), ..isolated(Isolation::All) };
        match parse(&bytes, Some(&path), &opts) {
            Ok(parsed) => assert!(
                !parsed.documents.is_empty() || !parsed.failures.is_empty(),
                "{}: no documents and no failures",
                path.display()
            ),
            Err(ParseError::Timeout { .. }) => panic!("{}: timed out", path.display()),
            Err(e) => assert!(!e.to_string().is_empty()),
        }
        seen += 1;
    }
    assert!(seen >= 50, "the corpus has {seen} files");
}
