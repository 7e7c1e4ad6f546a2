//! `datafactory serve` as a process: SIGKILL it in the middle of an ingest
//! job, start it again, and the job finishes.

mod common;

use common::*;
use serde_json::{json, Value};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start(data: &std::path::Path, port: u16) -> Child {
    let child = datafactory(data)
        .args(["serve", "--address", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_health(&format!("http://127.0.0.1:{port}"), Duration::from_secs(30), "server");
    child
}

#[test]
fn a_job_killed_with_the_server_resumes_when_it_starts_again() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = start(&data, port);
    let docs: Vec<Value> = (0..20000)
        .map(|j| json!({"id": format!("d{j}"), "text": format!("Entry {j} about pangolins p{j}x.")}))
        .collect();
    let accepted: Value = ureq::post(&format!("{base}/ingest"))
        .send_json(json!({"documents": docs}))
        .unwrap()
        .into_json()
        .unwrap();
    let id = accepted["job_id"].as_str().unwrap().to_string();
    // Wait until some documents are stored, then kill without warning.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let v: Value = ureq::get(&format!("{base}/jobs/{id}")).call().unwrap().into_json().unwrap();
        let stored = v["phases"].as_array().unwrap().iter().find(|p| p["phase"] == "storage").unwrap()
            ["items"]
            .as_u64()
            .unwrap();
        assert_eq!(v["state"], "running", "the job ended before it could be killed: {v:#}");
        if stored > 500 {
            break;
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    server.kill().unwrap(); // SIGKILL
    server.wait().unwrap();

    let mut server = start(&data, port);
    let deadline = Instant::now() + Duration::from_secs(300);
    let last = loop {
        let v: Value = ureq::get(&format!("{base}/jobs/{id}")).call().unwrap().into_json().unwrap();
        if v["state"] != "running" && v["state"] != "queued" {
            break v;
        }
        assert!(Instant::now() < deadline, "the resumed job did not finish: {v:#}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(last["state"], "succeeded", "{last:#}");
    // What the killed run had stored was not redone.
    assert!(last["summary"]["documents"]["unchanged"].as_u64().unwrap() > 500, "{last:#}");
    let v: Value = ureq::get(&format!("{base}/search?q=p19999x")).call().unwrap().into_json().unwrap();
    assert_eq!(v["results"].as_array().unwrap().len(), 1);
    server.kill().unwrap();
    server.wait().unwrap();
    let stats = run_json(datafactory(&data).args(["stats", "--json"]), 0);
    assert_eq!(stats["documents"], 20000);
    assert_eq!(stats["consistent"], true, "{stats:#}");
}

#[test]
fn the_cli_ingests_and_searches_through_a_server() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let corpus = tmp.path().join("corpus");
    std::fs::create_dir_all(corpus.join("sub")).unwrap();
    for name in ["sample.md", "sample.pdf", "sample.docx"] {
        std::fs::copy(fixtures().join(name), corpus.join(name)).unwrap();
    }
    std::fs::copy(fixtures().join("sample.txt"), corpus.join("sub/sample.txt")).unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut server = start(&data, port);
    // The client needs no data directory of its own.
    let client_dir = tmp.path().join("client");
    let summary =
        run_json(datafactory(&client_dir).args(["--server", &url, "ingest", "--json"]).arg(&corpus), 0);
    assert_eq!(summary["documents"]["added"], 4, "{summary:#}");
    assert!(!client_dir.exists(), "a client must not open a local store");
    let v = run_json(datafactory(&client_dir).args(["--server", &url, "search", "--json", "hummingbird"]), 0);
    assert_eq!(v["results"][0]["source"], "upload:corpus/sub/sample.txt", "{v:#}");
    let id = v["results"][0]["document_id"].as_str().unwrap().to_string();
    let only = run_json(
        datafactory(&client_dir).args([
            "--server",
            &url,
            "search",
            "--json",
            "--document",
            &id,
            "hummingbird zeppelin",
        ]),
        0,
    );
    assert!(only["results"].as_array().unwrap().iter().all(|r| r["document_id"] == id.as_str()), "{only:#}");
    let out = run(datafactory(&client_dir).args(["--server", &url, "search", "zeppelin"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("upload:corpus/sample.docx"));
    // Uploading again changes nothing.
    let again =
        run_json(datafactory(&client_dir).args(["--server", &url, "ingest", "--json"]).arg(&corpus), 0);
    assert_eq!(again["documents"]["unchanged"], 4, "{again:#}");
    server.kill().unwrap();
    server.wait().unwrap();
    let out = run(datafactory(&client_dir).args(["--server", &url, "search", "x"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the server"));
}

/// The real `openai` Python client (installed by `.ci/run`) against
/// `/v1/embeddings`, in its default base64 encoding and in floats.
#[test]
fn the_openai_python_client_gets_embeddings() {
    let model = minilm_dir();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let port = free_port();
    let mut cmd = datafactory(&data);
    cmd.env("DATAFACTORY_EMBEDDING__MODEL", &model)
        .args(["serve", "--address", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut server = cmd.spawn().unwrap();
    wait_for_health(&format!("http://127.0.0.1:{port}"), Duration::from_secs(60), "server");
    let script = r#"
import json, sys
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1], api_key="unused")
texts = ["a cat sat on the mat", "stock markets fell sharply"]
default = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts)
floats = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts, encoding_format="float")
print(json.dumps({
    "default": [d.embedding for d in default.data],
    "float": [d.embedding for d in floats.data],
    "tokens": default.usage.prompt_tokens,
}))
"#;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(format!("http://127.0.0.1:{port}/v1"))
        .output()
        .expect("python3");
    server.kill().unwrap();
    server.wait().unwrap();
    assert!(
        out.status.success(),
        "the openai client failed (is it installed? .ci/run installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["tokens"].as_u64().unwrap() > 0);
    for i in 0..2 {
        let a: Vec<f64> = v["default"][i].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        let b: Vec<f64> = v["float"][i].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        assert_eq!(a.len(), 384);
        let cos: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!(cos > 0.9999, "base64 and float answers differ: {cos}");
    }
}

/// Runs `datafactory <args>` until `/health` answers on `port` (then kills
/// it) or it exits; answers whether it came up, and its stderr.
fn run_until_healthy(
    data: &std::path::Path,
    port: u16,
    args: &[&str],
    env: &[(&str, &str)],
) -> (bool, String) {
    let mut cmd = datafactory(data);
    cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let up = loop {
        if ureq::get(&format!("http://127.0.0.1:{port}/health")).call().is_ok() {
            break true;
        }
        if child.try_wait().unwrap().is_some() {
            break false;
        }
        assert!(Instant::now() < deadline, "it neither started nor exited: {args:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    if up {
        child.kill().unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (up, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Every address but loopback needs API keys or --insecure: `serve` and
/// `analyze-server` refuse 0.0.0.0 without keys, naming the fixes; with
/// --insecure they start with a warning; with a key they start quietly and
/// ask for it.
#[test]
fn an_open_non_loopback_address_needs_keys_or_insecure() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    for command in ["serve", "analyze-server"] {
        let port = free_port();
        let address = format!("0.0.0.0:{port}");
        let (up, stderr) = run_until_healthy(&data, port, &[command, "--address", &address], &[]);
        assert!(!up, "{command} started open on {address}");
        assert!(
            stderr.contains("refusing to listen on 0.0.0.0")
                && stderr.contains("server.api_keys")
                && stderr.contains("--insecure")
                && stderr.contains("127.0.0.1"),
            "{command}: {stderr}"
        );
        let (up, stderr) =
            run_until_healthy(&data, port, &[command, "--address", &address, "--insecure"], &[]);
        assert!(up, "{command} --insecure did not start: {stderr}");
        assert!(stderr.contains("WARNING: listening on 0.0.0.0"), "{command}: {stderr}");
    }
    let port = free_port();
    let key = "key-0123456789abcdef";
    let keys = format!("[\"{key}\"]");
    let mut cmd = datafactory(&data);
    cmd.args(["serve", "--address", &format!("0.0.0.0:{port}")])
        .env("DATAFACTORY_SERVER__API_KEYS", &keys)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut server = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while ureq::get(&format!("http://127.0.0.1:{port}/health")).call().is_err() {
        assert!(server.try_wait().unwrap().is_none(), "serve with a key exited");
        assert!(Instant::now() < deadline, "serve with a key did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let url = format!("http://127.0.0.1:{port}/search?q=x");
    assert!(matches!(ureq::get(&url).call(), Err(ureq::Error::Status(401, _))));
    assert_eq!(ureq::get(&url).set("Authorization", &format!("Bearer {key}")).call().unwrap().status(), 200);
    server.kill().unwrap();
    let out = server.wait_with_output().unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("WARNING"));
}
