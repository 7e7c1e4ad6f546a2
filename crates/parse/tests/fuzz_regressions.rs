//! Replays the fuzzing inputs without the fuzzer, so that every `cargo test`
//! runs them: the seed corpora (`fuzz/corpus/<target>/seed-*`) and every
//! input a campaign found and that was kept (`fuzz/regressions/<target>/`),
//! each through the same code as its fuzz target (`fuzz/src/harness.rs`).
//! How the inputs are found and kept: docs/RELIABILITY.md, "Fuzzing".

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

#[path = "../../../fuzz/src/harness.rs"]
mod harness;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The files of `dir` (sorted; none when it does not exist) whose names
/// start with `prefix`.
fn files(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<PathBuf> = entries
        .map(|e| e.unwrap_or_else(|e| panic!("{}: {e}", dir.display())).path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(prefix)))
        .collect();
    out.sort();
    out
}

/// Runs each file through its target; fails naming every input that panics.
fn replay(inputs: &[(&str, PathBuf)]) {
    let mut failed = Vec::new();
    for (target, path) in inputs {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| harness::run(target, &bytes))) {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            failed.push(format!("{target}: {}: {message}", path.display()));
        }
    }
    assert!(failed.is_empty(), "{} input(s) fail:\n{}", failed.len(), failed.join("\n"));
}

#[test]
fn every_target_has_seeds_and_they_pass() {
    let mut inputs = Vec::new();
    for target in harness::TARGETS {
        let seeds = files(&fuzz_dir().join("corpus").join(target), "seed-");
        assert!(!seeds.is_empty(), "no seed-* files in fuzz/corpus/{target}/");
        inputs.extend(seeds.into_iter().map(|p| (*target, p)));
    }
    replay(&inputs);
}

#[test]
fn kept_fuzzing_findings_pass() {
    let mut inputs = Vec::new();
    for target in harness::TARGETS {
        let kept = files(&fuzz_dir().join("regressions").join(target), "");
        inputs.extend(kept.into_iter().map(|p| (*target, p)));
    }
    replay(&inputs);
}

#[test]
fn the_harness_catches_a_broken_document() {
    // The invariant checks the targets rely on do fire.
    let mut doc = datafactory_core::document::Document::plain("t", " padded ");
    let outcome = catch_unwind(AssertUnwindSafe(|| harness::check_document(&doc)));
    assert!(outcome.is_err(), "an untrimmed section was accepted");
    doc.text = "text".into();
    doc.sections[0].start = 0;
    doc.sections[0].end = 9;
    let outcome = catch_unwind(AssertUnwindSafe(|| harness::check_document(&doc)));
    assert!(outcome.is_err(), "a section past the end was accepted");
}
