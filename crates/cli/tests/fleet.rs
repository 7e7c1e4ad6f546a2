//! Two `datafactory serve` nodes on one PostgreSQL store (issue 10 item 3):
//! ingest jobs posted to either are queued in PostgreSQL and run by
//! whichever node claims them; one node is killed with SIGKILL in the middle
//! of a job, the other takes the job over once its lease runs out and
//! completes every job. No document is lost or stored twice. Needs
//! `DATAFACTORY_TEST_POSTGRES` (scripts/start-test-postgres.sh): fails
//! without it under `CI=true`, is reported as not run otherwise.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const SCHEMA: &str = "cli_fleet";
const JOBS: usize = 4;
const DOCS_PER_JOB: usize = 3000;

/// A server process, killed when dropped (also when the test fails).
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start(data: &Path, url: &str, port: u16) -> Node {
    let child = datafactory(data)
        .env("DATAFACTORY_STORE__BACKEND", "postgres")
        .env("DATAFACTORY_STORE__URL", url)
        .env("DATAFACTORY_STORE__SCHEMA", SCHEMA)
        .env("DATAFACTORY_STORE__LEASE_SECONDS", "3")
        .args(["serve", "--address", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let node = Node(child);
    wait_for_health(&format!("http://127.0.0.1:{port}"), Duration::from_secs(30), "server");
    node
}

fn get(url: &str) -> Value {
    ureq::get(url).call().unwrap().into_json().unwrap()
}

#[test]
fn two_nodes_share_the_jobs_and_one_finishes_what_a_killed_one_began() {
    let Some(url) = test_postgres("fleet", SCHEMA) else { return };
    let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let (port_a, port_b) = (free_port(), free_port());
    let (a_url, b_url) = (format!("http://127.0.0.1:{port_a}"), format!("http://127.0.0.1:{port_b}"));
    let mut a = start(&tmp.path().join("a"), &url, port_a);
    let mut b = start(&tmp.path().join("b"), &url, port_b);

    // Jobs posted to both nodes, each in its own collection.
    let mut jobs = Vec::new();
    for j in 0..JOBS {
        let docs: Vec<Value> = (0..DOCS_PER_JOB)
            .map(|d| json!({"id": format!("d{d}"), "text": format!("Entry {d} of job {j} about pangolins j{j}d{d}x.")}))
            .collect();
        let node = if j % 2 == 0 { &a_url } else { &b_url };
        let accepted: Value = ureq::post(&format!("{node}/ingest"))
            .send_json(json!({"collection": format!("job{j}"), "documents": docs}))
            .unwrap()
            .into_json()
            .unwrap();
        assert_eq!(accepted["state"], "queued", "{accepted:#}");
        jobs.push(accepted["job_id"].as_str().unwrap().to_string());
    }

    // Kill A (SIGKILL) while it runs a job with part of its documents stored.
    let node_a = format!("127.0.0.1:{port_a}/{}", a.0.id());
    let deadline = Instant::now() + Duration::from_secs(120);
    let a_job = loop {
        let row = db
            .query_opt(
                &format!(
                    "SELECT j.id, j.collection, (SELECT COUNT(*) FROM {SCHEMA}.documents d WHERE d.collection = j.collection)
                     FROM {SCHEMA}.jobs j WHERE j.node = $1 AND j.state = 'running'"
                ),
                &[&node_a],
            )
            .unwrap();
        if let Some(r) = row {
            let stored: i64 = r.get(2);
            if stored > 200 && stored < DOCS_PER_JOB as i64 - 500 {
                a.0.kill().unwrap(); // SIGKILL
                a.0.wait().unwrap();
                break r.get::<_, String>(0);
            }
        }
        assert!(Instant::now() < deadline, "node A never got into a job");
        assert!(a.0.try_wait().unwrap().is_none(), "node A ended early");
        std::thread::sleep(Duration::from_millis(20));
    };

    // B completes every job, A's included.
    let deadline = Instant::now() + Duration::from_secs(300);
    let records: Vec<Value> = loop {
        let records: Vec<Value> = jobs.iter().map(|j| get(&format!("{b_url}/jobs/{j}"))).collect();
        if records.iter().all(|r| r["state"] != "queued" && r["state"] != "running") {
            break records;
        }
        assert!(Instant::now() < deadline, "the jobs did not finish: {records:#?}");
        assert!(b.0.try_wait().unwrap().is_none(), "node B ended");
        std::thread::sleep(Duration::from_millis(200));
    };
    for r in &records {
        assert_eq!(r["state"], "succeeded", "{r:#}");
    }
    let taken_over = records[jobs.iter().position(|j| *j == a_job).unwrap()].clone();
    // What A had stored was recognised, not stored again.
    assert!(taken_over["summary"]["documents"]["unchanged"].as_u64().unwrap() > 200, "{taken_over:#}");
    let row =
        db.query_one(&format!("SELECT node, attempts FROM {SCHEMA}.jobs WHERE id = $1"), &[&a_job]).unwrap();
    assert_ne!(row.get::<_, String>(0), node_a);
    assert_eq!(row.get::<_, i32>(1), 2);

    // Every document once, at its first version; any node answers searches.
    let stats = get(&format!("{b_url}/ready"));
    assert_eq!(stats["store"]["documents"], (JOBS * DOCS_PER_JOB) as u64, "{stats:#}");
    let versions: i64 = db
        .query_one(&format!("SELECT COUNT(*) FROM {SCHEMA}.documents WHERE version <> 1"), &[])
        .unwrap()
        .get(0);
    assert_eq!(versions, 0);
    for j in 0..JOBS {
        let v = get(&format!("{b_url}/search?q=j{j}d{}x", DOCS_PER_JOB - 1));
        assert_eq!(v["results"].as_array().unwrap().len(), 1, "{v:#}");
    }
    // The fleet as /ready shows it: both nodes, A no longer alive.
    let fleet = &stats["fleet"];
    let nodes = fleet["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2, "{fleet:#}");
    let a_view = nodes.iter().find(|n| n["id"] == node_a.as_str()).unwrap();
    assert_eq!(a_view["alive"], false, "{fleet:#}");
    assert_eq!(fleet["queued"], 0);
    // So does `datafactory stats`.
    let stats = run_json(
        datafactory(&tmp.path().join("c"))
            .env("DATAFACTORY_STORE__BACKEND", "postgres")
            .env("DATAFACTORY_STORE__URL", &url)
            .env("DATAFACTORY_STORE__SCHEMA", SCHEMA)
            .args(["stats", "--json"]),
        0,
    );
    assert_eq!(stats["fleet"]["nodes"].as_array().unwrap().len(), 2, "{stats:#}");
    assert_eq!(stats["documents"], (JOBS * DOCS_PER_JOB) as u64);

    drop(b);
}
