//! `datafactory analyze` and `ingest --plan` end to end, and the analyzer
//! service started as `datafactory analyze-server`.

mod common;

use common::*;
use std::io::Read;

#[test]
fn analyze_prints_a_table_and_json() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let md = fixtures().join("sample.md");
    let code = repo_root().join("crates/chunk/src/lib.rs");
    let out = run(datafactory(&data).arg("analyze").arg(&md).arg(&code));
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("manual (heuristic"), "{text}");
    assert!(text.contains("source_code (heuristic"), "{text}");
    assert!(text.contains("plan: lines:384/0"), "{text}");
    let v = run_json(
        datafactory(&data).args(["analyze", "--json"]).arg(&md).arg(fixtures().join("sample.jsonl")),
        0,
    );
    let all = v.as_array().unwrap();
    assert_eq!(all.len(), 3, "{v:#}"); // the JSONL file holds two records
    assert_eq!(all[0]["analysis"]["doc_type"], "manual");
    assert!(all[1]["source"].as_str().unwrap().ends_with("sample.jsonl#1"));
    // A file that is no document: reported, exit code 3.
    let out = run(datafactory(&data).arg("analyze").arg(fixtures().join("bad/empty.txt")));
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn ingest_follows_the_plan_or_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let md = fixtures().join("sample.md");
    let s = run_json(
        datafactory(&data).args(["ingest", "--json"]).arg(&md).arg(fixtures().join("sample.jsonl")),
        0,
    );
    // The summary counts what phase 1 found.
    let a = &s["analysis"];
    assert_eq!(a["documents"], 3, "{s:#}");
    assert_eq!(a["types"]["manual"], 1, "{s:#}");
    assert_eq!(a["languages"]["eng"], 3, "{s:#}");
    assert_eq!(a["routes"]["heuristic"], 3, "{s:#}");
    assert_eq!(a["fallbacks"].as_array().unwrap().len(), 0);
    let list = run_json(datafactory(&data).args(["documents", "list", "--json"]), 0);
    let id = list
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["source"].as_str().unwrap().ends_with("sample.md"))
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let doc = run_json(datafactory(&data).args(["documents", "show", "--json", &id]), 0);
    assert_eq!(doc["metadata"]["analysis"]["doc_type"], "manual");
    assert_eq!(doc["metadata"]["analysis"]["chunked_by"]["source"], "plan");
    let planned = doc["chunks"].as_array().unwrap().len();
    // A plan from the command line: re-chunked (the override is part of the fingerprint).
    let s = run_json(
        datafactory(&data).args(["ingest", "--json", "--plan", "max_tokens=24,strategy=lines"]).arg(&md),
        0,
    );
    assert_eq!(s["documents"]["replaced"], 1, "{s:#}");
    let doc = run_json(datafactory(&data).args(["documents", "show", "--json", &id]), 0);
    assert_eq!(doc["metadata"]["analysis"]["chunked_by"]["source"], "override");
    assert!(doc["chunks"].as_array().unwrap().len() > planned);
    // Without following plans: the configured chunker, recorded as such.
    let s = run_json(
        datafactory(&data)
            .env("DATAFACTORY_ANALYSIS__FOLLOW_PLAN", "false")
            .args(["ingest", "--json"])
            .arg(&md),
        0,
    );
    assert_eq!(s["documents"]["replaced"], 1, "{s:#}");
    let doc = run_json(datafactory(&data).args(["documents", "show", "--json", &id]), 0);
    assert_eq!(doc["metadata"]["analysis"]["chunked_by"]["source"], "config");
    // A bad plan is a command-line error.
    let out = run(datafactory(&data).args(["ingest", "--plan", "size=3"]).arg(&md));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown plan key"));
}

#[test]
fn analyze_server_answers_on_its_port() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = datafactory(&data)
        .args(["analyze-server", "--address", &format!("127.0.0.1:{port}")])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let mut up = false;
    for _ in 0..100 {
        if ureq::get(&format!("{base}/health")).call().is_ok() {
            up = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let answer = up.then(|| {
        ureq::post(&format!("{base}/analyze"))
            .send_json(
                serde_json::json!({"text": "fn main() {\n    let x = 1;\n    println!(\"{x}\");\n}\n"}),
            )
            .map_err(|e| e.to_string())
            .map(|r| r.into_json::<serde_json::Value>().unwrap())
    });
    child.kill().unwrap();
    let _ = child.wait();
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    assert!(up, "the analyzer did not start: {err}");
    let v = answer.unwrap().unwrap();
    assert_eq!(v["doc_type"], "source_code", "{v:#}");
}
