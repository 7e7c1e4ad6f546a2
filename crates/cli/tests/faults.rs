//! Faults of the data directory, on the real binary: a read-only directory
//! (made read-only with file modes, or, as root, who ignores them, with a
//! tmpfs remounted read-only) is refused with an error that names it; a full
//! disk (a size-limited tmpfs: root only, as CI runs) fails the ingest with
//! the reason and leaves what was stored before searchable, and the ingest
//! finishes once there is room. `scripts/faults.py` runs these and the other
//! faults (PostgreSQL restarted, LLM servers killed and hung, the reranker
//! killed) by hand and reports what the user sees.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

fn sh(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A tmpfs of `size` mounted on `dir`, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        sh(Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir));
        Tmpfs(dir.to_path_buf())
    }

    fn remount(&self, options: &str) {
        sh(Command::new("mount").args(["-o", &format!("remount,{options}")]).arg(&self.0));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Documents per group word: a search for it finds the group whole.
const GROUP: usize = 100;

/// A child process killed when dropped (a failed assertion included), so it
/// neither outlives the test nor keeps the tmpfs busy.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `n` JSONL documents; each ends with its group's word `{prefix}g{i / GROUP}`
/// and its own marker `{prefix}{i}` (one chunk holds both).
fn corpus(path: &Path, prefix: &str, n: usize, words: usize) -> Vec<String> {
    let lines: Vec<String> = (0..n)
        .map(|i| {
            let text: Vec<String> = (0..words).map(|w| format!("w{}", (i * 7919 + w * 104_729) % 5000)).collect();
            json!({"id": format!("{prefix}{i}"), "text": format!("{} {prefix}g{} {prefix}{i}", text.join(" "), i / GROUP)})
                .to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n")).unwrap();
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// The markers lexical searches for the group words find (exit code 0 asserted).
fn found(data: &Path, prefix: &str, n: usize) -> Vec<String> {
    let mut markers = Vec::new();
    for group in 0..n.div_ceil(GROUP) {
        let query = format!("{prefix}g{group}");
        let v =
            run_json(datafactory(data).args(["search", "--json", "-m", "lexical", "-k", "120", &query]), 0);
        markers.extend(
            v["results"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|h| h["text"].as_str()?.split_whitespace().last().map(str::to_string)),
        );
    }
    markers.sort();
    markers
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn stderr_of(cmd: &mut Command, code: i32) -> String {
    let out = run(cmd);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

#[test]
fn a_read_only_data_directory_is_refused_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mount_point = tmp.path().join("mnt");
    let tmpfs = is_root().then(|| Tmpfs::mount(&mount_point, "64m"));
    let data = mount_point.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let docs = tmp.path().join("docs.jsonl");
    let markers = corpus(&docs, "ro", 20, 30);
    run_json(datafactory(&data).args(["ingest", "--json"]).arg(&docs), 0);

    // Read-only: root ignores modes, so a read-only mount for root.
    match &tmpfs {
        Some(t) => t.remount("ro"),
        None => {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o555)).unwrap();
        }
    }
    let expect = format!("the data directory {} is not writable", data.display());
    for args in [&["ingest"][..], &["search", "ro3"], &["stats"]] {
        let mut cmd = datafactory(&data);
        cmd.args(args);
        if args[0] == "ingest" {
            cmd.arg(&docs);
        }
        let err = stderr_of(&mut cmd, 1);
        assert!(err.contains(&expect), "{args:?}: {err}");
    }
    let err = stderr_of(datafactory(&data).args(["serve", "--address", "127.0.0.1:0"]), 1);
    assert!(err.contains(&expect), "serve: {err}");

    // Writable again: nothing was lost.
    match &tmpfs {
        Some(t) => t.remount("rw"),
        None => {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    assert_eq!(found(&data, "ro", 20), sorted(markers));
    let stats = run_json(datafactory(&data).args(["stats", "--json"]), 0);
    assert_eq!(stats["consistent"], true, "{stats:#}");
}

#[test]
fn a_full_disk_fails_the_ingest_and_leaves_the_store_searchable() {
    assert!(
        is_root(),
        "this test mounts a size-limited tmpfs and needs root (CI runs as root); \
         run it as root, or leave it out with --skip a_full_disk"
    );
    let tmp = tempfile::tempdir().unwrap();
    let mount_point = tmp.path().join("mnt");
    let tmpfs = Tmpfs::mount(&mount_point, "2m");
    let data = mount_point.join("data");
    let before = tmp.path().join("before.jsonl");
    let big = tmp.path().join("big.jsonl");
    let kept = corpus(&before, "kept", 30, 30);
    let more = corpus(&big, "more", 1500, 300);
    run_json(datafactory(&data).args(["ingest", "--json"]).arg(&before), 0);

    let err = stderr_of(datafactory(&data).arg("ingest").arg(&big), 1);
    assert!(err.contains("No space left on device"), "{err}");

    // With the disk still full: what was stored before is searchable.
    assert_eq!(found(&data, "kept", 30), sorted(kept.clone()));
    let stats: Value =
        serde_json::from_slice(&run(datafactory(&data).args(["stats", "--json"])).stdout).unwrap();
    assert!(stats["documents"].as_u64().unwrap() >= 30, "{stats:#}");

    // Room again: the same ingest finishes, and everything is there.
    tmpfs.remount("size=64m");
    let summary = run_json(datafactory(&data).args(["ingest", "--json"]).arg(&big), 0);
    assert_eq!(summary["documents"]["failed"], 0, "{summary:#}");
    assert_eq!(found(&data, "kept", 30), sorted(kept.clone()));
    assert_eq!(found(&data, "more", 1500).len(), more.len());
    let stats = run_json(datafactory(&data).args(["stats", "--json"]), 0);
    assert_eq!(stats["consistent"], true, "{stats:#}");
    assert_eq!(stats["documents"], 1530, "{stats:#}");

    // The service, with 1 MiB left.
    let used_kib = df_kib(&mount_point, "used");
    tmpfs.remount(&format!("size={}k", used_kib + 1024));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut server = Killed(
        datafactory(&data)
            .args(["serve", "--address", &format!("127.0.0.1:{port}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("http://127.0.0.1:{port}");
    wait_for_health(&url, std::time::Duration::from_secs(30), "serve");
    let documents = |path: &Path| -> Value {
        let docs: Vec<Value> = std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        json!({ "documents": docs })
    };
    // An upload it cannot store is refused with 507, saying so.
    let refused = ureq::post(&format!("{url}/ingest")).send_json(documents(&big));
    let Err(ureq::Error::Status(507, answer)) = refused else {
        panic!("expected 507, got {refused:?}");
    };
    let body: Value = answer.into_json().unwrap();
    assert!(body["error"].as_str().unwrap().contains("no job was created"), "{body}");

    // An upload of half the room left is stored; its job fills the disk and fails saying so.
    let long = tmp.path().join("long.jsonl");
    let n = (df_kib(&mount_point, "avail") / 2 / 12).clamp(4, 90) as usize;
    let long_markers = corpus(&long, "long", n, 1500);
    let job: Value =
        ureq::post(&format!("{url}/ingest")).send_json(documents(&long)).unwrap().into_json().unwrap();
    let job_url = format!("{url}/jobs/{}", job["job_id"].as_str().unwrap());
    let ended = loop {
        let j: Value = ureq::get(&job_url).call().unwrap().into_json().unwrap();
        if !matches!(j["state"].as_str(), Some("queued" | "running")) {
            break j;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(ended["state"], "failed", "{ended:#}");
    assert!(ended.to_string().contains("No space left on device"), "{ended:#}");
    let search = |q: &str| -> Vec<String> {
        let hits: Value = ureq::get(&format!("{url}/search?q={q}&mode=lexical&top_k=120"))
            .call()
            .unwrap()
            .into_json()
            .unwrap();
        let mut m: Vec<String> = hits["results"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|h| h["text"].as_str()?.split_whitespace().last().map(str::to_string))
            .collect();
        m.sort();
        m
    };
    assert_eq!(search("keptg0"), sorted(kept.clone()));

    // Room again, the same process: the same upload is stored whole and
    // found (the word index's writer died with the failed commit; the
    // documents of later jobs were stored in SQLite but never indexed).
    tmpfs.remount("size=64m");
    let done: Value = ureq::post(&format!("{url}/ingest?wait=true"))
        .send_json(documents(&long))
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(done["state"], "succeeded", "{done:#}");
    assert_eq!(search("longg0"), sorted(long_markers));
    assert_eq!(search("keptg0"), sorted(kept));
    server.0.kill().unwrap();
    server.0.wait().unwrap();
    let stats = run_json(datafactory(&data).args(["stats", "--json"]), 0);
    assert_eq!(stats["consistent"], true, "{stats:#}");
    assert_eq!(stats["documents"].as_u64().unwrap(), 1530 + n as u64, "{stats:#}");
}

/// `df`'s `used` or `avail` column for `path`, in KiB.
fn df_kib(path: &Path, column: &str) -> u64 {
    let out = Command::new("df").args(["-k", &format!("--output={column}")]).arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().nth(1).unwrap().trim().parse().unwrap()
}
