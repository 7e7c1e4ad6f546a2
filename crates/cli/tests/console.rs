//! The web console in a real browser, on a real deployment: `datafactory
//! up` starts the DataFactory (with an API key, the real all-MiniLM-L6-v2,
//! one dead LLM endpoint, reranking through the reranker service) and the
//! reranker service (the tiny random cross-encoder committed in
//! `crates/models/tests/fixtures`), and, where the test PostgreSQL is given
//! (`DATAFACTORY_TEST_POSTGRES`; under CI it must be), a second DataFactory
//! node on PostgreSQL for the fleet. GPU figures come from a stand-in
//! libnvidia-ml (`fake_nvml.c` beside this file, built here with `cc`,
//! loaded through `DATAFACTORY_NVML_LIBRARY`): the real NVML path runs, the
//! numbers are made up.
//!
//! Playwright for Python drives Debian's chromium (`console_browser.py`
//! beside this file: enter the key, upload files and a folder and watch the
//! phases, search and compare, rerank and see its bars, open a hit's
//! document at its chunk, delete it, see the dead endpoint marked down, the
//! deployment's services and GPUs, and the fleet; and on a DataFactory
//! started by hand, that there is no deployment; any JavaScript or console
//! error fails it).
//!
//! Needs `/usr/bin/chromium` (`apt-get install chromium`), the `playwright`
//! Python package and a C compiler; `.ci/run` installs the first two. Without
//! them this test fails, saying what is missing: it never passes without a
//! browser.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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

/// Builds the stand-in libnvidia-ml into `dir`.
fn fake_nvml(dir: &Path) -> PathBuf {
    let out = dir.join("libnvidia-ml-fake.so");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake_nvml.c");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let built = Command::new(&cc)
        .args(["-shared", "-fPIC", "-O1", "-Wall", "-Werror", "-o"])
        .arg(&out)
        .arg(&source)
        .output()
        .unwrap_or_else(|e| panic!("the GPU stand-in needs a C compiler ({cc}): {e}"));
    assert!(
        built.status.success(),
        "cannot build {}: {}",
        source.display(),
        String::from_utf8_lossy(&built.stderr)
    );
    out
}

/// `datafactory ARGS --file deploy.toml` in the deployment's folder, with
/// none of the caller's `DATAFACTORY_*` variables.
fn launcher(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_datafactory"));
    for (k, _) in std::env::vars() {
        if k.starts_with("DATAFACTORY_") {
            cmd.env_remove(k);
        }
    }
    cmd.current_dir(dir).args(args).arg("--file").arg(dir.join("deploy.toml"));
    cmd
}

/// Takes the deployment down when the test ends, passed or not.
struct Down<'a>(&'a Path);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = launcher(self.0, &["down"]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

/// A process stopped when the test ends, passed or not.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A folder of several files for one upload (with a sub-folder).
fn notes_folder(files: &Path) {
    let notes = files.join("notes");
    std::fs::create_dir_all(notes.join("deep")).unwrap();
    std::fs::write(notes.join("tides.md"), "# Tides\n\nThe moon pulls the oceans into two bulges.\n")
        .unwrap();
    std::fs::write(notes.join("reefs.txt"), "Coral reefs grow in warm, shallow, clear water.\n").unwrap();
    std::fs::write(
        notes.join("deep/trenches.md"),
        "# Trenches\n\nThe Mariana Trench is the deepest part of the ocean.\n",
    )
    .unwrap();
}

#[test]
fn the_console_ingests_searches_shows_and_deletes_in_a_browser() {
    check_browser();
    let model = minilm_dir();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let nvml = fake_nvml(dir);
    let files = dir.join("files");
    std::fs::create_dir_all(&files).unwrap();
    for name in ["sample.pdf", "sample.docx"] {
        std::fs::copy(fixtures().join(name), files.join(name)).unwrap();
    }
    std::fs::copy(fixtures().join("bad/truncated.pdf"), files.join("broken.pdf")).unwrap();
    std::fs::write(files.join("hostile.txt"), HOSTILE).unwrap();
    notes_folder(&files);
    // One file for every service: the key (the DataFactory sends it to the
    // reranker service too, which wants it), and an LLM endpoint nobody
    // listens on: contexts fall back to the heuristics at once, and the
    // console must show it down.
    let dead_llm = format!("http://127.0.0.1:{}", free_port());
    std::fs::write(
        dir.join("datafactory.toml"),
        format!(
            "[server]\napi_keys = [\"{KEY}\"]\n\
             [rerank]\napi_key = \"{KEY}\"\n\
             [enrichment]\nattempts = 1\nbackoff_ms = 1\nfailures_before_down = 1\n\
             [[enrichment.endpoints]]\nkind = \"openai\"\nurl = \"{dead_llm}\"\nmodel = \"nobody\"\n"
        ),
    )
    .unwrap();

    let (port, rerank_port) = (free_port(), free_port());
    let tiny_reranker = repo_root().join("crates/models/tests/fixtures/tiny-xlmr-reranker");
    let mut services = format!(
        "[launcher]\nlogs = \"logs\"\nstate = \"state.json\"\nhealth_timeout_s = 180\ngrace_s = 10\n\n\
         [[service]]\nname = \"datafactory\"\nkind = \"serve\"\nhost = \"127.0.0.1\"\nport = {port}\ngpu = 0\n\
         config = \"datafactory.toml\"\n\
         settings = {{ \"data_dir\" = \"data\", \"embedding.model\" = {model:?}, \"rerank.mode\" = \"remote\", \
         \"rerank.url\" = \"http://127.0.0.1:{rerank_port}\" }}\n\n\
         [[service]]\nname = \"reranker\"\nkind = \"rerank\"\nhost = \"127.0.0.1\"\nport = {rerank_port}\ngpu = 1\n\
         config = \"datafactory.toml\"\n\
         settings = {{ \"rerank.model\" = {reranker:?}, \"rerank.device\" = \"cpu\" }}\n\n",
        model = model.display().to_string(),
        reranker = tiny_reranker.display().to_string(),
    );
    // The fleet: a second DataFactory node on the test PostgreSQL.
    let schema = "console_fleet";
    let postgres = test_postgres("the console's fleet view", schema);
    let fleet_base = postgres.as_ref().map(|url| {
        let fleet_port = free_port();
        services += &format!(
            "[[service]]\nname = \"fleet-node\"\nkind = \"serve\"\nhost = \"127.0.0.1\"\nport = {fleet_port}\n\
             config = \"datafactory.toml\"\n\
             settings = {{ \"data_dir\" = \"data-fleet\", \"embedding.model\" = \"\", \"store.backend\" = \"postgres\", \
             \"store.url\" = {url:?}, \"store.schema\" = \"{schema}\" }}\n"
        );
        format!("http://127.0.0.1:{fleet_port}")
    });
    std::fs::write(dir.join("deploy.toml"), services).unwrap();

    let _down = Down(dir);
    let up =
        launcher(dir, &["up", "--detach", "--json"]).env("DATAFACTORY_NVML_LIBRARY", &nvml).output().unwrap();
    assert!(
        up.status.success(),
        "datafactory up failed:\n{}\n{}",
        String::from_utf8_lossy(&up.stderr),
        String::from_utf8_lossy(&up.stdout)
    );
    let base = format!("http://127.0.0.1:{port}");

    // What the System view shows, as the service answers it: the
    // launcher's services, and the stand-in's GPUs through the real NVML path.
    let deployment: serde_json::Value = ureq::get(&format!("{base}/deployment"))
        .set("Authorization", &format!("Bearer {KEY}"))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    let d = &deployment["status"];
    assert_eq!(deployment["launched"], true, "{deployment:#}");
    assert_eq!(d["phase"], "up", "{deployment:#}");
    assert!(d["launcher_pid"].is_u64(), "{deployment:#}");
    assert_eq!(d["state_file"], dir.join("state.json").display().to_string(), "{deployment:#}");
    let names: Vec<&str> =
        d["services"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    let expected: &[&str] = if fleet_base.is_some() {
        &["datafactory", "reranker", "fleet-node"]
    } else {
        &["datafactory", "reranker"]
    };
    assert_eq!(names, expected, "{deployment:#}");
    for s in d["services"].as_array().unwrap() {
        assert_eq!(s["health"], "ok", "{deployment:#}");
        assert!(s["pid"].is_u64(), "{deployment:#}");
    }
    assert_eq!(d["services"][0]["gpu_memory_used_mib"], 12288, "{deployment:#}");
    assert_eq!(d["services"][1]["gpu_temperature_c"], 44, "{deployment:#}");
    assert_eq!(d["gpu"]["driver"], "0.0-test-shim", "{deployment:#}");
    let gpus = d["gpu"]["gpus"].as_array().unwrap();
    assert_eq!(gpus.len(), 2, "{deployment:#}");
    assert_eq!(gpus[0]["utilization_percent"], 37, "{deployment:#}");
    assert_eq!(gpus[0]["memory_total_mib"], 81920, "{deployment:#}");

    // A DataFactory started by hand, not by `up`: its System view says there
    // is no deployment to show.
    let plain_port = free_port();
    let plain_base = format!("http://127.0.0.1:{plain_port}");
    // (In a folder of its own: it must not read the deployment's datafactory.toml.)
    std::fs::create_dir_all(dir.join("plain")).unwrap();
    let plain = Killed(
        datafactory(&dir.join("plain/data"))
            .args(["serve", "--address", &format!("127.0.0.1:{plain_port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_health(&plain_base, std::time::Duration::from_secs(60), "the DataFactory started by hand");

    let shots = std::env::var("DATAFACTORY_CONSOLE_SCREENSHOTS").ok();
    let mut cmd = Command::new("python3");
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console_browser.py"))
        .args([&base, KEY])
        .arg(&files)
        .arg(&dead_llm)
        .arg(fleet_base.as_deref().unwrap_or("-"))
        .arg(&plain_base)
        .args(shots.as_slice());
    let out = cmd.output().expect("python3");
    drop(plain);
    let down = launcher(dir, &["down", "--json"]).output().unwrap();
    assert!(down.status.success(), "down: {}", String::from_utf8_lossy(&down.stderr));
    if let Some(url) = &postgres {
        let mut db = postgres::Client::connect(url, postgres::NoTls).unwrap();
        db.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).unwrap();
    }
    assert!(
        out.status.success(),
        "the console failed in the browser:\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
}
