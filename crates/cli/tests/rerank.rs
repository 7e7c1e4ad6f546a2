//! `datafactory search` reranking through a running `datafactory
//! rerank-server` process (the tiny random XLM-RoBERTa classifier committed in
//! `crates/models/tests/fixtures`), answering in fused order once it is
//! killed, and reranking in-process with `rerank.mode = "local"`.

mod common;

use common::*;
use serde_json::{json, Value};
use std::process::{Child, Stdio};
use std::time::Duration;

fn tiny_reranker() -> String {
    repo_root().join("crates/models/tests/fixtures/tiny-xlmr-reranker").to_str().unwrap().to_string()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start_rerank_server(data: &std::path::Path, port: u16) -> Child {
    let child = datafactory(data)
        .env("DATAFACTORY_RERANK__MODEL", tiny_reranker())
        .env("DATAFACTORY_RERANK__DEVICE", "cpu")
        .args(["rerank-server", "--address", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_health(&format!("http://127.0.0.1:{port}"), Duration::from_secs(30), "the reranker service");
    child
}

fn search(data: &std::path::Path, env: &[(&str, &str)]) -> Value {
    let mut cmd = datafactory(data);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_json(cmd.args(["search", "--json", "-k", "3", "cat"]), 0)
}

#[test]
fn search_reranks_through_the_reranker_service_and_without_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let docs = tmp.path().join("docs.jsonl");
    let lines: Vec<String> = [
        "the cat is on the mat",
        "a cat and a dog run fast",
        "the small cat is slow",
        "a big cat in the index",
        "the dog runs",
    ]
    .iter()
    .enumerate()
    .map(|(i, t)| json!({"id": format!("d{i}"), "title": format!("Note {i}"), "text": t}).to_string())
    .collect();
    std::fs::write(&docs, lines.join("\n")).unwrap();
    run_json(datafactory(&data).args(["ingest", "--json"]).arg(&docs), 0);

    let port = free_port();
    let mut server = start_rerank_server(&data, port);
    let url = format!("http://127.0.0.1:{port}");
    let remote = [("DATAFACTORY_RERANK__MODE", "remote"), ("DATAFACTORY_RERANK__URL", url.as_str())];
    let up = search(&data, &remote);
    assert_eq!(up["rerank"]["reranked"], true, "{up:#}");
    assert_eq!(up["rerank"]["candidates"], 4, "{up:#}");
    let hits = up["results"].as_array().unwrap();
    assert_eq!(hits.len(), 3);
    assert!(hits.iter().all(|h| h["scores"]["rerank"].is_number()), "{up:#}");
    for w in hits.windows(2) {
        assert!(w[0]["score"].as_f64() >= w[1]["score"].as_f64(), "{up:#}");
    }

    // The same scores in-process.
    let local = search(
        &data,
        &[("DATAFACTORY_RERANK__MODE", "local"), ("DATAFACTORY_RERANK__MODEL", &tiny_reranker())],
    );
    assert_eq!(local["rerank"]["model"], "tiny-xlmr-reranker;max=32;query_max=24", "{local:#}");
    for (a, b) in hits.iter().zip(local["results"].as_array().unwrap()) {
        assert_eq!(a["chunk_id"], b["chunk_id"]);
        assert!((a["score"].as_f64().unwrap() - b["score"].as_f64().unwrap()).abs() < 1e-5);
    }

    // Down: still answers, in fused order, and says why.
    server.kill().unwrap();
    server.wait().unwrap();
    let down = search(&data, &remote);
    assert_eq!(down["rerank"]["reranked"], false, "{down:#}");
    assert!(down["notes"].to_string().contains("reranking failed"), "{down:#}");
    assert_eq!(down["results"].as_array().unwrap().len(), 3);

    // Off (the default): no rerank step at all.
    let off = search(&data, &[]);
    assert!(off["rerank"].is_null(), "{off:#}");
}
