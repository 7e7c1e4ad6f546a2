//! Helpers shared by the service's integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// The real all-MiniLM-L6-v2 (`.ci/run` unpacks it; `DATAFACTORY_TEST_MINILM`).
pub fn minilm() -> PathBuf {
    let dir = std::env::var_os("DATAFACTORY_TEST_MINILM").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/datafactory-test-models/all-MiniLM-L6-v2")
    });
    assert!(dir.join("config.json").is_file(), "all-MiniLM-L6-v2 missing at {} (run .ci/run)", dir.display());
    dir
}
