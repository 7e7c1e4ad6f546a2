//! The web console in a real browser: `datafactory serve` with an API key,
//! the real all-MiniLM-L6-v2 and one dead LLM endpoint, driven through
//! Debian's chromium by Playwright for Python (`console_browser.py` beside
//! this file: enter the key, upload files and watch the phases, search and
//! compare, open a hit's document at its chunk, delete it, see the dead
//! endpoint marked down; any JavaScript or console error fails it).
//!
//! Needs `/usr/bin/chromium` (`apt-get install chromium`) and the
//! `playwright` Python package; `.ci/run` installs both. Without them this
//! test fails, saying what is missing: it never passes without a browser.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const KEY: &str = "console-test-key-0123456789abcdef";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn chromium() -> String {
    std::env::var("DATAFACTORY_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

/// Fails with what to install when the browser or Playwright is missing.
fn check_browser() {
    let chromium = chromium();
    assert!(
        Path::new(&chromium).is_file(),
        "no browser at {chromium}: the console test needs Debian's chromium \
         (apt-get install -y --no-install-recommends chromium; .ci/run installs it), \
         or DATAFACTORY_TEST_CHROMIUM naming one"
    );
    let out = Command::new("python3").args(["-c", "import playwright.sync_api"]).output().expect("python3");
    assert!(
        out.status.success(),
        "the playwright Python package is missing (.ci/run installs it: python_package playwright): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A plain-text document full of markup that must be shown, never run.
const HOSTILE: &str = "<b onmouseover=\"window.__pwned = 1\">Pwned title</b>\n\n\
Pwned test document. <script>window.__pwned = 1</script>\n\
<img src=x onerror=\"window.__pwned = 1\">\n\
<iframe srcdoc=\"<script>parent.__pwned = 1</script>\"></iframe>\n\
<a href=\"javascript:window.__pwned = 1\">click</a> &lt;b&gt;entity&lt;/b&gt;\n";

#[test]
fn the_console_ingests_searches_shows_and_deletes_in_a_browser() {
    check_browser();
    let model = minilm_dir();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let files = tmp.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    for name in ["sample.pdf", "sample.docx"] {
        std::fs::copy(fixtures().join(name), files.join(name)).unwrap();
    }
    std::fs::copy(fixtures().join("bad/truncated.pdf"), files.join("broken.pdf")).unwrap();
    std::fs::write(files.join("hostile.txt"), HOSTILE).unwrap();
    // An LLM endpoint nobody listens on: contexts fall back to the
    // heuristics at once, and the console must show it down.
    let dead_llm = format!("http://127.0.0.1:{}", free_port());
    let config = tmp.path().join("datafactory.toml");
    std::fs::write(
        &config,
        format!(
            "[enrichment]\nattempts = 1\nbackoff_ms = 1\nfailures_before_down = 1\n\
             [[enrichment.endpoints]]\nkind = \"openai\"\nurl = \"{dead_llm}\"\nmodel = \"nobody\"\n"
        ),
    )
    .unwrap();

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = datafactory(&data)
        .arg("--config")
        .arg(&config)
        .env("DATAFACTORY_EMBEDDING__MODEL", &model)
        .env("DATAFACTORY_SERVER__API_KEYS", format!("[\"{KEY}\"]"))
        .args(["serve", "--address", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_health(&base, Duration::from_secs(120), "the server");
    let shots = std::env::var("DATAFACTORY_CONSOLE_SCREENSHOTS").ok();
    let mut cmd = Command::new("python3");
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console_browser.py"))
        .args([&base, KEY])
        .arg(&files)
        .arg(&dead_llm)
        .args(shots.as_slice());
    let out = cmd.output().expect("python3");
    server.kill().unwrap();
    server.wait().unwrap();
    assert!(
        out.status.success(),
        "the console failed in the browser:\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
}
