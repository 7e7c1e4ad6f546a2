//! A first run that explains itself, on the real binary: without the default
//! model (offline, nothing cached) ingest and search work by words and say in
//! one line how to get meaning search; `stats` names the store's model, or none.

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// `datafactory` with the default model, offline, and an empty Hugging Face cache.
fn offline(tmp: &Path) -> Command {
    let cache = tmp.join("hf-cache");
    std::fs::create_dir_all(&cache).unwrap();
    let mut cmd = datafactory(&tmp.join("data"));
    cmd.env_remove("DATAFACTORY_EMBEDDING__MODEL").env("HF_HUB_OFFLINE", "1").env("HF_HUB_CACHE", &cache);
    cmd
}

/// The lines of `text` that mention `word`.
fn lines_with<'a>(text: &'a str, word: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.contains(word)).collect()
}

#[test]
fn without_the_default_model_ingest_and_search_say_how_to_get_meaning_search() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run(offline(tmp.path()).arg("ingest").arg(fixtures().join("sample.md")));
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    // One line on standard error: why, and both ways to meaning search.
    let said = lines_with(&stderr, "words only");
    assert_eq!(said.len(), 1, "{stderr}");
    let line = said[0];
    assert!(line.starts_with("warning: no embedding model, so words only: "), "{line}");
    assert!(line.contains("\"BAAI/bge-m3\"") && line.contains("HF_HUB_OFFLINE is set"), "why: {line}");
    assert!(line.contains("let BAAI/bge-m3 download once"), "the download: {line}");
    assert!(line.contains("DATAFACTORY_EMBEDDING__MODEL") && line.contains("local model folder"), "{line}");
    // The loader's long explanation is for -v, not for every run.
    assert!(!stderr.contains("Looked in"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("not embedded: no embedding model, so words only"), "{stdout}");

    // With -v the log says where it looked.
    let out = run(offline(tmp.path()).arg("-v").arg("ingest").arg(fixtures().join("sample.md")));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Looked in"));

    // Search answers by words and says how to get meaning search.
    let out = run(offline(tmp.path()).args(["search", "marzipan"]));
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("sample.md"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let said = lines_with(&stderr, "for meaning search");
    assert_eq!(said.len(), 1, "{stderr}");
    assert!(said[0].contains("ingest again") && said[0].contains("DATAFACTORY_EMBEDDING__MODEL"), "{stderr}");
    // A words search asks for no meaning, so there is nothing to explain;
    // nor is there with embeddings turned off on purpose (embedding.model = "").
    let out = run(offline(tmp.path()).args(["search", "--mode", "lexical", "marzipan"]));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    let out = run(datafactory(&tmp.path().join("data")).args(["search", "marzipan"]));
    assert_eq!(out.status.code(), Some(0));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("for meaning search"));

    // stats: no model.
    let out = run(offline(tmp.path()).arg("stats"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("model       none (words only)"));
    let stats = run_json(offline(tmp.path()).args(["stats", "--json"]), 0);
    assert_eq!(stats["embedding_model"], Value::Null, "{stats:#}");
}

#[test]
fn stats_names_the_model_the_store_was_built_with() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let model = minilm_dir();
    let summary = run_json(
        datafactory(&data)
            .env("DATAFACTORY_EMBEDDING__MODEL", &model)
            .args(["ingest", "--json"])
            .arg(fixtures().join("sample.md")),
        0,
    );
    let name = summary["embedding"]["model"].as_str().unwrap().to_string();
    // Read back with no model configured: the store knows which one it was.
    let stats = run_json(datafactory(&data).args(["stats", "--json"]), 0);
    assert_eq!(stats["embedding_model"].as_str(), Some(name.as_str()), "{stats:#}");
    let out = run(datafactory(&data).arg("stats"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("model       {name} (384 dimensions)")), "{text}");
}

/// `cargo run` puts the variables build.rs gives rustc into the program's
/// environment as well, and the README's first command runs the binary that
/// way: none of them may be read as configuration (a `DATAFACTORY_` name
/// would be, and refused as an unknown field).
#[test]
fn the_build_script_variables_are_not_configuration() {
    let build = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("build.rs")).unwrap();
    let names: Vec<&str> =
        build.split("cargo:rustc-env=").skip(1).filter_map(|s| s.split('=').next()).collect();
    assert!(names.len() >= 2, "{names:?}");
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = datafactory(&tmp.path().join("data"));
    cmd.arg("config").arg("show");
    for name in &names {
        cmd.env(name, "x");
    }
    let out = run(&mut cmd);
    assert_eq!(out.status.code(), Some(0), "{names:?}: {}", String::from_utf8_lossy(&out.stderr));
}
