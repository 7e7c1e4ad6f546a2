//! What the web console needs from the service: its files served without a
//! key, with an ETag and a strict Content-Security-Policy; and the routes
//! its views read (`GET /jobs`, `GET /collections`, paged and filtered
//! `/documents`, highlight ranges and retriever ranks on search hits).
//! `/deployment` (the System view's deployment part) as a service
//! not started by `datafactory up` answers it, and from a launcher's state
//! file. The console itself is tested in a browser by
//! `crates/cli/tests/console.rs`, with a real `datafactory up`.

mod common;

use common::{check_answer, Running};
use datafactory_core::Config;
use datafactory_server::{serve_on, AppState};
use datafactory_store::Store;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const KEY: &str = "console-key-0123456789abcdef";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

async fn start(keys: bool) -> (Running, tempfile::TempDir) {
    start_launched(keys, None).await
}

/// A service as if `datafactory up` had started it with this state file.
async fn start_launched(keys: bool, launcher_state: Option<PathBuf>) -> (Running, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut config = Config { data_dir: data.clone(), ..Default::default() };
    config.embedding.model = String::new();
    if keys {
        config.server.api_keys = vec![KEY.to_string()];
    }
    let store = Arc::new(Store::open(&data).unwrap());
    let state = Arc::new(
        AppState::new(config, store, None, Some("words only (test)".into()))
            .with_launcher_state(launcher_state),
    );
    (Running::start(|l, s| serve_on(state, l, s)).await, tmp)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap()
}

/// The files a page or module names: `src="/console/x"`, `href="/console/x"`, `from "./x.js"`.
fn referenced(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (prefix, end) in [("\"/console/", '"'), ("from \"./", '"')] {
        for (i, _) in text.match_indices(prefix) {
            let rest = &text[i + prefix.len()..];
            out.push(rest[..rest.find(end).unwrap()].to_string());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_without_a_key_with_an_etag_and_a_strict_policy() {
    let (s, _tmp) = start(true).await;
    let c = client();
    // The API still wants the key; the page does not (it must load to ask for one).
    assert_eq!(c.get(s.url("/ready")).send().await.unwrap().status(), 401);
    let r = c.get(s.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
    let csp = h["content-security-policy"].to_str().unwrap();
    for part in ["default-src 'self'", "script-src 'self'", "object-src 'none'", "frame-ancestors 'none'"] {
        assert!(csp.contains(part), "{part} missing from {csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["cache-control"], "no-cache");
    let etag = h["etag"].to_str().unwrap().to_string();
    assert!(etag.starts_with('"') && etag.len() > 10, "{etag}");
    let page = r.text().await.unwrap();
    assert!(page.contains("<script type=\"module\" src=\"/console/app.js\">"), "{page}");

    // Revalidation: the same ETag gets 304 and no body; another gets the file.
    let r = c.get(s.url("/")).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(r.headers()["etag"].to_str().unwrap(), etag);
    assert!(r.text().await.unwrap().is_empty());
    let r = c.get(s.url("/")).header("if-none-match", "\"other\"").send().await.unwrap();
    assert_eq!(r.status(), 200);

    // Every file the page and its modules name is served, with its type and the policy.
    let mut pending = referenced(&page);
    let mut seen = Vec::new();
    while let Some(name) = pending.pop() {
        if seen.contains(&name) {
            continue;
        }
        let r = c.get(s.url(&format!("/console/{name}"))).send().await.unwrap();
        assert_eq!(r.status(), 200, "/console/{name}");
        let kind = r.headers()["content-type"].to_str().unwrap().to_string();
        assert!(r.headers()["content-security-policy"].to_str().unwrap().contains("default-src 'self'"));
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
        let body = r.text().await.unwrap();
        if name.ends_with(".js") {
            assert!(kind.starts_with("text/javascript"), "{name}: {kind}");
            pending.extend(referenced(&body));
        }
        seen.push(name);
    }
    for module in
        ["app.js", "api.js", "dom.js", "search.js", "documents.js", "ingest.js", "system.js", "console.css"]
    {
        assert!(seen.iter().any(|n| n == module), "{module} is never loaded: {seen:?}");
    }
    for missing in ["/console/nope.js", "/console/..%2Findex.html"] {
        let r = c.get(s.url(missing)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{missing}");
    }
    s.stop().await;
}

async fn upload_and_wait(c: &reqwest::Client, s: &Running, collection: &str, names: &[&str]) -> Value {
    let mut form = reqwest::multipart::Form::new().text("collection", collection.to_string());
    for name in names {
        let bytes = std::fs::read(fixtures().join(name)).unwrap();
        form = form.part("file", reqwest::multipart::Part::bytes(bytes).file_name(name.to_string()));
    }
    let v: Value =
        c.post(s.url("/ingest?wait=true")).multipart(form).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["state"], "succeeded", "{v:#}");
    v
}

async fn page(c: &reqwest::Client, s: &Running, query: &str) -> (Vec<String>, u64) {
    let r = c.get(s.url(&format!("/documents?{query}"))).send().await.unwrap();
    assert_eq!(r.status(), 200, "{query}");
    let total = r.headers()["x-total-count"].to_str().unwrap().parse().unwrap();
    let docs: Value = r.json().await.unwrap();
    (docs.as_array().unwrap().iter().map(|d| d["source"].as_str().unwrap().to_string()).collect(), total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_are_paged_and_filtered_and_jobs_and_collections_listed() {
    let (s, _tmp) = start(false).await;
    let c = client();
    let first = upload_and_wait(&c, &s, "sky", &["sample.pdf", "sample.md"]).await;
    upload_and_wait(&c, &s, "notes", &["sample.txt"]).await;

    // All of them, in order (collection, then source), then a page at a time.
    let (all, total) = page(&c, &s, "").await;
    assert_eq!((all.len(), total), (3, 3), "{all:?}");
    assert_eq!(all, ["upload:sample.txt", "upload:sample.md", "upload:sample.pdf"]);
    assert_eq!(page(&c, &s, "limit=2").await, (all[..2].to_vec(), 3));
    assert_eq!(page(&c, &s, "limit=2&offset=2").await, (all[2..].to_vec(), 3));
    assert_eq!(page(&c, &s, "limit=2&offset=9").await, (vec![], 3));
    assert_eq!(page(&c, &s, "collection=sky").await.1, 2);
    assert_eq!(page(&c, &s, "format=pdf").await, (vec!["upload:sample.pdf".to_string()], 1));
    // The analysis's type and language, which each listed document names.
    let docs: Value = c.get(s.url("/documents")).send().await.unwrap().json().await.unwrap();
    let pdf = docs.as_array().unwrap().iter().find(|d| d["format"] == "pdf").unwrap();
    let kind = pdf["doc_type"].as_str().unwrap();
    assert_eq!(pdf["language"], "eng", "{pdf:#}");
    let (of_kind, n) = page(&c, &s, &format!("type={kind}&collection=sky")).await;
    assert!(of_kind.contains(&"upload:sample.pdf".to_string()) && n as usize == of_kind.len());
    assert_eq!(page(&c, &s, "language=eng").await.1, 3);
    assert_eq!(page(&c, &s, "language=deu").await, (vec![], 0));
    for (bad, named) in [("limit=0", "`limit`"), ("limit=5000", "`limit`"), ("format=exe", "`format`")] {
        let r = c.get(s.url(&format!("/documents?{bad}"))).send().await.unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        assert!(r.text().await.unwrap().contains(named), "{bad}");
    }

    let collections: Value = c.get(s.url("/collections")).send().await.unwrap().json().await.unwrap();
    let names: Vec<&str> =
        collections.as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["notes", "sky"], "{collections:#}");
    assert_eq!(collections[1]["documents"], 2);
    assert!(collections[1]["chunks"].as_u64().unwrap() >= 2);

    // Jobs: newest first, with their files.
    let jobs: Value = c.get(s.url("/jobs")).send().await.unwrap().json().await.unwrap();
    let jobs = jobs.as_array().unwrap();
    assert_eq!(jobs.len(), 2, "{jobs:#?}");
    assert_eq!(jobs[1]["id"], first["id"]);
    assert_eq!(jobs[1]["state"], "succeeded");
    assert_eq!(jobs[1]["collection"], "sky");
    assert_eq!(jobs[1]["files"]["total"], 2);
    assert_eq!(jobs[1]["live"], false);
    assert!(jobs[0]["created_at"].as_i64() >= jobs[1]["created_at"].as_i64());
    let one: Value = c.get(s.url("/jobs?limit=1")).send().await.unwrap().json().await.unwrap();
    assert_eq!(one.as_array().unwrap().len(), 1);
    assert_eq!(c.get(s.url("/jobs?limit=0")).send().await.unwrap().status(), 400);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_carry_highlight_ranges_and_each_retrievers_rank() {
    let (s, _tmp) = start(false).await;
    let c = client();
    let r = c
        .post(s.url("/ingest?wait=true"))
        .json(&json!({"documents": [
            {"id": "a", "text": "Ünïcode first: the QUASAR shines. A quasar is far away from the earth, \
                                 and the quasars that astronomers have found in the sky are many."},
            {"id": "b", "text": "Nothing about that here, only a quasar once."}
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = c.get(s.url("/search?q=quasar&mode=lexical")).send().await.unwrap().json().await.unwrap();
    let hits = v["results"].as_array().unwrap();
    assert_eq!(hits.len(), 2, "{v:#}");
    for (i, hit) in hits.iter().enumerate() {
        assert_eq!(hit["scores"]["ranks"]["words"], i + 1, "{hit:#}");
        let chars: Vec<char> = hit["text"].as_str().unwrap().chars().collect();
        let shown: Vec<String> = hit["highlights"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| chars[r[0].as_u64().unwrap() as usize..r[1].as_u64().unwrap() as usize].iter().collect())
            .collect();
        // Character offsets (the text starts with non-ASCII letters); the
        // word as the index analyses it (`QUASAR`, and `quasars` stemmed
        // for English, the document's language).
        if hit["text"].as_str().unwrap().starts_with('Ü') {
            assert_eq!(hit["language"], "eng", "{hit:#}");
            assert_eq!(shown, ["QUASAR", "quasar", "quasars"], "{hit:#}");
        } else {
            assert_eq!(shown, ["quasar"], "{hit:#}");
        }
    }
    // A query word no text has changes nothing; one with no word at all highlights nothing.
    let v: Value =
        c.get(s.url("/search?q=quasar+zebra&mode=lexical")).send().await.unwrap().json().await.unwrap();
    assert!(v["results"].as_array().unwrap().iter().all(|h| !h["highlights"].as_array().unwrap().is_empty()));
    s.stop().await;
}

/// `/deployment` says plainly when the service was not started by
/// `datafactory up`, says when the launcher's state file is gone, and
/// otherwise reports the launcher's services as they are (this service
/// answers its health check; a dead one is down, with its restarts). The GPU
/// part is whatever NVML says on this machine (none here: the no-driver
/// answer); the browser test sees GPU figures through a stand-in library.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_says_when_not_launched_and_reports_the_launchers_state_file() {
    let c = client();
    let spec = {
        let (s, _tmp) = start(true).await;
        assert_eq!(c.get(s.url("/deployment")).send().await.unwrap().status(), 401, "behind the key");
        let spec: Value =
            c.get(s.url("/openapi.json")).bearer_auth(KEY).send().await.unwrap().json().await.unwrap();
        let r = c.get(s.url("/deployment")).bearer_auth(KEY).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        check_answer(&spec, "/deployment", "get", 200, &v);
        assert_eq!(v["launched"], false, "{v:#}");
        assert!(v["status"].is_null(), "{v:#}");
        assert!(v["note"].as_str().unwrap().contains("not started by `datafactory up`"), "{v:#}");
        s.stop().await;
        spec
    };

    // The launcher's types keep names of their own beside the ingest's `Phase`.
    for name in
        ["DeploymentView", "StatusReport", "ServiceStatus", "LauncherPhase", "ServiceKind", "GpuReport"]
    {
        assert!(spec["components"]["schemas"][name].is_object(), "schema {name} missing");
    }
    assert!(spec["components"]["schemas"]["Phase"]["enum"].to_string().contains("enrichment"));

    let dir = tempfile::tempdir().unwrap();
    let state_file = dir.path().join("state.json");
    let (s, _tmp) = start_launched(false, Some(state_file.clone())).await;
    let v: Value = c.get(s.url("/deployment")).send().await.unwrap().json().await.unwrap();
    check_answer(&spec, "/deployment", "get", 200, &v);
    assert_eq!(v["launched"], true, "{v:#}");
    assert!(v["status"].is_null(), "{v:#}");
    assert!(v["note"].as_str().unwrap().contains("is gone"), "{v:#}");

    use datafactory_launcher::procfs::Identity;
    use datafactory_launcher::state::{Phase, ServiceState, State};
    let service = |name: &str, kind, health_url: String, restarts| ServiceState {
        name: name.into(),
        kind,
        gpu: None,
        port: None,
        health_url,
        log: None,
        process: None,
        restarts,
        last_exit: (restarts > 0).then(|| "signal: 9 (SIGKILL)".to_string()),
    };
    State {
        deployment: "deploy.toml".into(),
        supervisor: Identity::of(std::process::id()),
        phase: Phase::Up,
        error: None,
        services: vec![
            service("datafactory", datafactory_launcher::Kind::Serve, s.url("/health"), 0),
            service("analyzer", datafactory_launcher::Kind::Analyze, "http://127.0.0.1:1/health".into(), 2),
        ],
    }
    .write(&state_file)
    .unwrap();
    let v: Value = c.get(s.url("/deployment")).send().await.unwrap().json().await.unwrap();
    check_answer(&spec, "/deployment", "get", 200, &v);
    assert!(v["note"].is_null(), "{v:#}");
    let d = &v["status"];
    assert_eq!(d["deployment"], "deploy.toml", "{v:#}");
    assert_eq!(d["phase"], "up", "{v:#}");
    assert_eq!(d["launcher_pid"], std::process::id(), "{v:#}");
    assert_eq!(d["state_file"], state_file.display().to_string(), "{v:#}");
    let services = d["services"].as_array().unwrap();
    assert_eq!(services[0]["name"], "datafactory");
    assert_eq!(services[0]["health"], "ok", "{v:#}");
    assert_eq!(services[0]["url"], s.base, "{v:#}");
    assert_eq!(services[1]["health"], "down (connection refused)", "{v:#}");
    assert_eq!(services[1]["restarts"], 2, "{v:#}");
    assert_eq!(services[1]["last_exit"], "signal: 9 (SIGKILL)", "{v:#}");
    // No driver here (or real GPUs on a machine with one): either way, said.
    let gpu = &d["gpu"];
    assert!(gpu["error"].is_string() || !gpu["gpus"].as_array().unwrap().is_empty(), "{v:#}");
    s.stop().await;
}
