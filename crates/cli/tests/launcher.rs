//! The launcher (`datafactory up`, `status`, `ollama unload`, `down`, `gpu`)
//! with real processes on loopback ports: the real DataFactory, reranker (the
//! tiny committed cross-encoder) and analyzer, and a stand-in `ollama`
//! (`fake_ollama.py`) that records the environment it was given. No GPU and
//! no real Ollama are needed.

mod common;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The python3 program itself (not a version manager's shim).
fn python() -> String {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 is needed for the stand-in ollama");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `datafactory` run in `dir`, with none of the caller's `DATAFACTORY_*` variables.
fn datafactory(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_datafactory"));
    for (k, _) in std::env::vars() {
        if k.starts_with("DATAFACTORY_") {
            cmd.env_remove(k);
        }
    }
    cmd.current_dir(dir);
    cmd
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run datafactory")
}

fn json_of(out: &Output, code: i32) -> Value {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// A deployment in a temporary folder: the stand-in ollama, the file, and a
/// guard that takes down whatever is still up when the test ends.
struct Deployment {
    dir: tempfile::TempDir,
    file: PathBuf,
}

impl Deployment {
    fn new(services: &str) -> Deployment {
        let dir = tempfile::tempdir().unwrap();
        let ollama = dir.path().join("ollama");
        let script =
            std::fs::read_to_string(common::repo_root().join("crates/cli/tests/fake_ollama.py")).unwrap();
        std::fs::write(&ollama, format!("#!{}\n{script}", python())).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&ollama, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir(dir.path().join("records")).unwrap();
        let file = dir.path().join("deploy.toml");
        let text = format!(
            "[launcher]\nollama = {:?}\nlogs = \"logs\"\nstate = \"state.json\"\n\
             health_timeout_s = 120\ngrace_s = 5\nmax_backoff_s = 2\n\n{services}",
            ollama.display().to_string()
        );
        std::fs::write(&file, text).unwrap();
        Deployment { dir, file }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = datafactory(self.path());
        cmd.args(args).arg("--file").arg(&self.file);
        cmd
    }

    fn status(&self) -> Value {
        json_of(&run(&mut self.cmd(&["status", "--json"])), 0)
    }

    fn record(&self, port: u16) -> Value {
        let text = std::fs::read_to_string(self.path().join(format!("records/{port}.json"))).unwrap();
        serde_json::from_str(&text).unwrap()
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        let _ = self.cmd(&["down"]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

fn service<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["services"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap()
}

/// The variable in /proc/<pid>/environ.
fn environ(pid: u64, key: &str) -> Option<String> {
    let bytes = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    bytes.split(|b| *b == 0).find_map(|kv| {
        let kv = String::from_utf8_lossy(kv);
        kv.strip_prefix(&format!("{key}=")).map(str::to_string)
    })
}

/// Whether a process runs (a zombie does not).
fn alive(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(stat[stat.rfind(')').unwrap() + 2..].chars().next(), Some('Z') | Some('X')),
        Err(_) => false,
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A process whose command line says `ollama serve`, which `down` must leave alone.
fn decoy() -> Child {
    let child = Command::new(python())
        .args(["-c", "import time; time.sleep(600)", "ollama serve"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the decoy's command line", || {
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", child.id())).unwrap();
        String::from_utf8_lossy(&cmdline).contains("ollama serve")
    });
    child
}

#[test]
fn up_starts_every_service_on_its_gpu_supervises_and_down_stops_only_them() {
    let ports: Vec<u16> = (0..5).map(|_| free_port()).collect();
    let tiny_reranker = common::repo_root().join("crates/models/tests/fixtures/tiny-xlmr-reranker");
    let services = format!(
        r#"[[service]]
name = "datafactory"
kind = "serve"
host = "127.0.0.1"
port = {p0}
gpu = 0
settings = {{ "data_dir" = "data", "embedding.model" = "" }}
enrichment_model = "tiny:latest"

[[service]]
name = "reranker"
kind = "rerank"
host = "127.0.0.1"
port = {p1}
gpu = 1
settings = {{ "rerank.model" = {reranker:?}, "rerank.device" = "cpu" }}

[[service]]
name = "analyzer"
kind = "analyze"
host = "127.0.0.1"
port = {p2}

[[service]]
name = "ollama-a"
kind = "ollama"
host = "127.0.0.1"
port = {p3}
gpu = 2
keep_alive = "30m"
warm = "tiny:latest"
env = {{ FAKE_OLLAMA_RECORD = "records" }}

[[service]]
name = "ollama-b"
kind = "ollama"
host = "127.0.0.1"
port = {p4}
gpu = 3
keep_alive = "5m"
env = {{ FAKE_OLLAMA_RECORD = "records" }}
"#,
        p0 = ports[0],
        p1 = ports[1],
        p2 = ports[2],
        p3 = ports[3],
        p4 = ports[4],
        reranker = tiny_reranker.display().to_string(),
    );
    let d = Deployment::new(&services);

    // The plan starts nothing and shows each service's pinning.
    let plan = json_of(&run(&mut d.cmd(&["up", "--plan", "--json"])), 0);
    let env = &plan["services"][3]["launch"]["env"];
    assert!(env.as_array().unwrap().contains(&serde_json::json!(["CUDA_VISIBLE_DEVICES", "2"])), "{plan:#}");
    assert!(!d.path().join("state.json").exists());

    let up = json_of(&run(&mut d.cmd(&["up", "--detach", "--json"])), 0);
    for s in up["services"].as_array().unwrap() {
        assert_eq!(s["health"], "ok", "{up:#}");
        assert!(s["pid"].is_u64(), "{up:#}");
        assert!(d.path().join(format!("logs/{}.log", s["name"].as_str().unwrap())).is_file());
    }

    // Each Ollama instance got its own GPU, address and keep-alive.
    for (port, gpu, keep_alive) in [(ports[3], "2", "30m"), (ports[4], "3", "5m")] {
        let r = d.record(port);
        assert_eq!(r["CUDA_VISIBLE_DEVICES"], gpu, "{r}");
        assert_eq!(r["OLLAMA_HOST"], format!("127.0.0.1:{port}"), "{r}");
        assert_eq!(r["OLLAMA_KEEP_ALIVE"], keep_alive, "{r}");
        assert_eq!(r["CUDA_DEVICE_ORDER"], "PCI_BUS_ID", "{r}");
    }
    // And the DataFactory's services theirs (none for the analyzer).
    let pid = |status: &Value, name: &str| service(status, name)["pid"].as_u64().unwrap();
    assert_eq!(environ(pid(&up, "datafactory"), "CUDA_VISIBLE_DEVICES").as_deref(), Some("0"));
    assert_eq!(environ(pid(&up, "reranker"), "CUDA_VISIBLE_DEVICES").as_deref(), Some("1"));
    assert_eq!(environ(pid(&up, "analyzer"), "CUDA_VISIBLE_DEVICES").as_deref(), Some(""));
    assert!(
        d.path().join("data").is_dir(),
        "the DataFactory runs in the deployment's folder with its settings"
    );
    // It enriches with the file's Ollama instances.
    let ready: Value =
        ureq::get(&format!("http://127.0.0.1:{}/ready", ports[0])).call().unwrap().into_json().unwrap();
    let endpoints = ready["enrichment"]["endpoints"].as_array().unwrap();
    let urls: Vec<&str> = endpoints.iter().map(|e| e["url"].as_str().unwrap()).collect();
    assert_eq!(
        urls,
        [format!("http://127.0.0.1:{}", ports[3]), format!("http://127.0.0.1:{}", ports[4])],
        "{ready:#}"
    );
    assert!(endpoints.iter().all(|e| e["model"] == "tiny:latest" && e["up"] == true), "{ready:#}");

    // The warm-up loaded the model on its instance only; unload empties it.
    let status = d.status();
    assert_eq!(service(&status, "ollama-a")["models"], serde_json::json!(["tiny:latest"]), "{status:#}");
    assert_eq!(service(&status, "ollama-b")["models"], serde_json::json!([]), "{status:#}");
    let unloaded = json_of(&run(&mut d.cmd(&["ollama", "unload", "--json"])), 0);
    assert_eq!(unloaded[0]["models"], serde_json::json!(["tiny:latest"]), "{unloaded:#}");
    assert_eq!(service(&d.status(), "ollama-a")["models"], serde_json::json!([]));

    // A second `up` of the same deployment is refused.
    let again = run(&mut d.cmd(&["up", "--detach"]));
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already up"), "{again:?}");

    // A crashed service is restarted, and the restart shows in status and the log.
    let old = pid(&status, "analyzer");
    unsafe { libc::kill(old as i32, libc::SIGKILL) };
    wait_until("the analyzer's restart", || {
        let s = d.status();
        let a = service(&s, "analyzer");
        a["restarts"] == 1 && a["health"] == "ok" && a["pid"].as_u64().is_some_and(|p| p != old)
    });
    let log = std::fs::read_to_string(d.path().join("logs/analyzer.log")).unwrap();
    assert!(log.contains("restart 1 in 1 s"), "{log}");

    // `down` stops every service and the launcher, and nothing else.
    let mut decoy = decoy();
    let status = d.status();
    let pids: Vec<u64> =
        status["services"].as_array().unwrap().iter().map(|s| s["pid"].as_u64().unwrap()).collect();
    let launcher = status["launcher_pid"].as_u64().unwrap();
    let down = json_of(&run(&mut d.cmd(&["down", "--json"])), 0);
    assert_eq!(down["processes"][0]["name"], "launcher", "{down:#}");
    assert_eq!(down["processes"].as_array().unwrap().len(), 6, "{down:#}");
    for p in down["processes"].as_array().unwrap() {
        assert_eq!(p["outcome"], "stopped", "{down:#}");
    }
    for p in pids.iter().chain([&launcher]) {
        assert!(!alive(*p), "PID {p} still runs after down: {down:#}");
    }
    assert!(decoy.try_wait().unwrap().is_none(), "down killed the decoy `ollama serve`");
    assert!(!d.path().join("state.json").exists());
    let status = d.status();
    assert!(status["services"].as_array().unwrap().iter().all(|s| s["health"] != "ok"), "{status:#}");

    // A recorded PID that is another process now (another start time) is left alone.
    let decoy_pid = decoy.id();
    let stat = std::fs::read_to_string(format!("/proc/{decoy_pid}/stat")).unwrap();
    let start: u64 = stat[stat.rfind(')').unwrap() + 2..].split(' ').nth(19).unwrap().parse().unwrap();
    let cmdline: Vec<String> = std::fs::read_to_string(format!("/proc/{decoy_pid}/cmdline"))
        .unwrap()
        .split('\0')
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect();
    let forged = serde_json::json!({
        "deployment": "forged", "supervisor": null, "phase": "up", "error": null,
        "services": [
            {"name": "old-start-time", "kind": "ollama", "gpu": 2, "port": ports[3], "health_url": "http://127.0.0.1:1/",
             "log": null, "restarts": 0, "last_exit": null,
             "process": {"pid": decoy_pid, "start_time": start - 1, "cmdline": cmdline}},
            {"name": "other-command", "kind": "ollama", "gpu": 3, "port": ports[4], "health_url": "http://127.0.0.1:1/",
             "log": null, "restarts": 0, "last_exit": null,
             "process": {"pid": decoy_pid, "start_time": start, "cmdline": ["ollama", "serve"]}}
        ]
    });
    std::fs::write(d.path().join("state.json"), forged.to_string()).unwrap();
    let down = json_of(&run(&mut d.cmd(&["down", "--json"])), 0);
    assert_eq!(down["processes"][0]["outcome"], "not ours", "{down:#}");
    assert_eq!(down["processes"][1]["outcome"], "not ours", "{down:#}");
    assert!(decoy.try_wait().unwrap().is_none(), "down killed a process it did not start");
    decoy.kill().unwrap();
    decoy.wait().unwrap();
}

#[test]
fn a_taken_port_is_reported_with_its_holder_and_nothing_starts() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let free = free_port();
    let d = Deployment::new(&format!(
        "[[service]]\nname = \"analyzer\"\nkind = \"analyze\"\nhost = \"127.0.0.1\"\nport = {free}\n\n\
         [[service]]\nname = \"ollama-a\"\nkind = \"ollama\"\nhost = \"127.0.0.1\"\nport = {port}\ngpu = 2\n\
         env = {{ FAKE_OLLAMA_RECORD = \"records\" }}\n"
    ));
    let out = run(&mut d.cmd(&["up", "--detach"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("port {port} is taken by PID {}", std::process::id())), "{stderr}");
    assert!(stderr.contains("nothing was started"), "{stderr}");
    assert!(!d.path().join("state.json").exists());
    assert!(std::net::TcpListener::bind(("127.0.0.1", free)).is_ok(), "the analyzer was started");
}

#[test]
fn up_in_the_foreground_takes_down_what_it_started_on_sigterm() {
    let port = free_port();
    let d = Deployment::new(&format!(
        "[[service]]\nname = \"analyzer\"\nkind = \"analyze\"\nhost = \"127.0.0.1\"\nport = {port}\n"
    ));
    let up = d.cmd(&["up"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let state = d.path().join("state.json");
    let mut analyzer = 0;
    wait_until("the foreground up", || {
        let Ok(text) = std::fs::read_to_string(&state) else { return false };
        let Ok(v) = serde_json::from_str::<Value>(&text) else { return false };
        analyzer = v["services"][0]["process"]["pid"].as_u64().unwrap_or(0);
        v["phase"] == "up"
    });
    assert!(alive(analyzer));
    unsafe { libc::kill(up.id() as i32, libc::SIGTERM) };
    let out = up.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("analyzer: PID {analyzer} stopped")), "{stderr}");
    assert!(!alive(analyzer));
    assert!(!state.exists());
}

#[test]
fn down_stops_the_services_of_a_launcher_that_was_killed() {
    let port = free_port();
    let d = Deployment::new(&format!(
        "[[service]]\nname = \"analyzer\"\nkind = \"analyze\"\nhost = \"127.0.0.1\"\nport = {port}\n"
    ));
    let up = json_of(&run(&mut d.cmd(&["up", "--detach", "--json"])), 0);
    let launcher = up["launcher_pid"].as_u64().unwrap();
    let analyzer = service(&up, "analyzer")["pid"].as_u64().unwrap();
    unsafe { libc::kill(launcher as i32, libc::SIGKILL) };
    wait_until("the launcher's end", || !alive(launcher));
    assert!(alive(analyzer), "a service runs in its own process group and outlives its launcher");
    let down = json_of(&run(&mut d.cmd(&["down", "--json"])), 0);
    assert_eq!(down["processes"][0]["outcome"], "gone", "{down:#}");
    assert_eq!(down["processes"][1]["name"], "analyzer", "{down:#}");
    assert_eq!(down["processes"][1]["outcome"], "stopped", "{down:#}");
    assert!(!alive(analyzer));
}

#[test]
fn a_service_that_cannot_start_fails_up_and_what_was_started_is_stopped() {
    let (analyzer_port, reranker_port) = (free_port(), free_port());
    let missing = "/nonexistent/reranker-model";
    let d = Deployment::new(&format!(
        "[[service]]\nname = \"analyzer\"\nkind = \"analyze\"\nhost = \"127.0.0.1\"\nport = {analyzer_port}\n\n\
         [[service]]\nname = \"reranker\"\nkind = \"rerank\"\nhost = \"127.0.0.1\"\nport = {reranker_port}\n\
         settings = {{ \"rerank.model\" = \"{missing}\", \"rerank.device\" = \"cpu\", \"rerank.allow_download\" = false }}\n"
    ));
    let out = run(&mut d.cmd(&["up", "--detach"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("service \"reranker\" exited"), "{stderr}");
    assert!(stderr.contains("reranker.log"), "{stderr}");
    let log = std::fs::read_to_string(d.path().join("logs/analyzer.log")).unwrap();
    let pid: u64 = log
        .lines()
        .find_map(|l| l.split("started PID ").nth(1))
        .expect("the analyzer was started")
        .trim()
        .parse()
        .unwrap();
    wait_until("the analyzer's end", || !alive(pid));
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(d.path().join("state.json")).unwrap()).unwrap();
    assert_eq!(state["phase"], "failed", "{state:#}");
    assert!(state["error"].as_str().unwrap().contains("reranker"), "{state:#}");
    assert!(state["services"].as_array().unwrap().iter().all(|s| s["process"].is_null()), "{state:#}");
}

#[test]
fn gpu_without_a_driver_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let nowhere = dir.path().join("libnvidia-ml.so.1");
    let out = run(datafactory(dir.path()).env("DATAFACTORY_NVML_LIBRARY", &nowhere).arg("gpu"));
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no NVIDIA driver") && stderr.contains(&nowhere.display().to_string()),
        "{stderr}"
    );
    let v = json_of(
        &run(datafactory(dir.path()).env("DATAFACTORY_NVML_LIBRARY", &nowhere).args(["gpu", "--json"])),
        4,
    );
    assert_eq!(v["driver"], Value::Null);
    assert_eq!(v["gpus"], serde_json::json!([]));
    assert!(v["error"].as_str().unwrap().contains("no NVIDIA driver"));
}

/// Services that accept a connection and never answer: `status` checks them
/// all at once, so a hung service does not hold up the checks of the others
/// (each waits out its 5 s health timeout, then closes its connection).
#[test]
fn status_checks_hung_services_at_once() {
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut services = String::new();
    for i in 0..4 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        services.push_str(&format!(
            "[[service]]\nname = \"hung{i}\"\nkind = \"ollama\"\nurl = \"http://{}\"\n\n",
            listener.local_addr().unwrap()
        ));
        let events = events.clone();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                events.lock().unwrap().push("accepted");
                let events = events.clone();
                // Read (never answer) until the check gives up and closes.
                std::thread::spawn(move || {
                    let mut buf = [0u8; 1024];
                    while matches!(std::io::Read::read(&mut stream, &mut buf), Ok(n) if n > 0) {}
                    events.lock().unwrap().push("closed");
                });
            }
        });
    }
    let d = Deployment::new(&services);
    let out = run(&mut d.cmd(&["status", "--json"]));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    for i in 0..4 {
        assert_ne!(service(&v, &format!("hung{i}"))["health"], "ok");
    }
    // Every check had begun before the first one gave up: the order of
    // events, not their times.
    let events = events.lock().unwrap();
    assert_eq!(
        events.iter().filter(|e| **e == "accepted").count(),
        4,
        "one health check per service: {events:?}"
    );
    assert_eq!(events[..4], ["accepted"; 4], "checked one after another: {events:?}");
}

#[test]
fn a_bad_deployment_file_names_the_key() {
    let d = Deployment::new("[[service]]\nname = \"x\"\nkind = \"analyze\"\nport = 9100\ngpus = 1\n");
    let out = run(&mut d.cmd(&["up", "--plan"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("gpus") && stderr.contains("deploy.toml"), "{stderr}");
}

/// Two DataFactory services of one deployment on one PostgreSQL: `status`
/// shows their fleet (both nodes, the job queue) from `/ready`.
#[test]
fn status_shows_the_fleet_of_datafactory_nodes_on_postgres() {
    let schema = "launcher_fleet";
    let Some(url) = common::test_postgres("launcher fleet", schema) else { return };
    let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let node = |name: &str, port: u16| {
        format!(
            "[[service]]\nname = \"{name}\"\nkind = \"serve\"\nhost = \"127.0.0.1\"\nport = {port}\n\
             settings = {{ \"embedding.model\" = \"\", \"store.backend\" = \"postgres\", \
             \"store.url\" = {url:?}, \"store.schema\" = \"{schema}\", \"data_dir\" = \"data-{name}\" }}\n\n"
        )
    };
    let d = Deployment::new(&(node("a", free_port()) + &node("b", free_port())));
    json_of(&run(&mut d.cmd(&["up", "--detach", "--json"])), 0);
    let mut status = Value::Null;
    wait_until("both nodes in the fleet", || {
        status = d.status();
        service(&status, "a")["fleet"]["nodes"].as_array().is_some_and(|n| n.len() == 2)
    });
    let fleet = &service(&status, "b")["fleet"];
    assert_eq!(fleet["nodes"].as_array().unwrap().len(), 2, "{status:#}");
    assert!(fleet["nodes"].as_array().unwrap().iter().all(|n| n["alive"] == true), "{status:#}");
    assert_eq!(fleet["queued"], 0, "{status:#}");
    let text = run(&mut d.cmd(&["status"]));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("fleet of a: 2 node(s), 2 alive"), "{text}");
    json_of(&run(&mut d.cmd(&["down", "--json"])), 0);
    db.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).unwrap();
}
