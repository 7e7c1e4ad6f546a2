//! SIGKILL the process in the middle of a large ingest, start again, and check
//! that every document is whole or absent and that the store is consistent.

mod common;

use common::*;
use datafactory_chunk::Chunker;
use datafactory_core::config::Config;
use datafactory_core::HeuristicTokenCounter;
use datafactory_store::{Store, WordQuery};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const FILES: usize = 3000;

fn marker(i: usize) -> String {
    format!("uniqmarker{i:05}")
}

/// Deterministic Markdown files of a few sections each, every one with a word
/// found in no other file.
fn write_corpus(dir: &Path) {
    let words = [
        "river", "engine", "copper", "lantern", "harbor", "meadow", "signal", "quartz", "timber", "velvet",
        "orbit", "canyon",
    ];
    for i in 0..FILES {
        let mut text = format!("# Report {i}\n\nThis report carries the word {}.\n\n", marker(i));
        for s in 0..4 {
            text.push_str(&format!("## Part {s}\n\n"));
            for p in 0..3 {
                let sentence: Vec<&str> =
                    (0..40).map(|k| words[(i * 7 + s * 5 + p * 3 + k) % words.len()]).collect();
                text.push_str(&sentence.join(" "));
                text.push_str(".\n\n");
            }
        }
        let sub = dir.join(format!("batch{:02}", i / 500));
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join(format!("report{i:05}.md")), text).unwrap();
    }
}

fn stored_documents(db: &Path) -> usize {
    let Ok(conn) = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return 0;
    };
    conn.query_row("SELECT COUNT(*) FROM documents", [], |r| r.get::<_, i64>(0))
        .map(|n| n as usize)
        .unwrap_or(0)
}

/// Starts an ingest and kills it with SIGKILL once `at_least` documents are stored.
fn ingest_and_kill(data: &Path, corpus: &Path, at_least: usize) -> usize {
    let mut child = datafactory(data)
        .args(["ingest", "--json"])
        .arg(corpus)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let db = data.join("datafactory.sqlite3");
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("ingest finished ({status}) before it could be killed; make the corpus larger");
        }
        if stored_documents(&db) >= at_least {
            break;
        }
        assert!(Instant::now() < deadline, "ingest made no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    stored_documents(&db)
}

/// Whether the committed word index lags SQLite (read from the files, before
/// any DataFactory process opens the store again).
fn word_index_behind(data: &Path) -> bool {
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("words/meta.json")).unwrap()).unwrap();
    let applied: i64 =
        meta["payload"].as_str().and_then(|p| p.strip_prefix("change:")).map_or(0, |n| n.parse().unwrap());
    let conn = rusqlite::Connection::open(data.join("datafactory.sqlite3")).unwrap();
    let latest: i64 =
        conn.query_row("SELECT seq FROM sqlite_sequence WHERE name = 'changes'", [], |r| r.get(0)).unwrap();
    applied < latest
}

/// Every stored document has exactly the chunks the pipeline makes of its file,
/// is found by its marker word, and every file not stored is not found.
fn check_whole_or_absent(data: &Path, corpus: &Path) -> usize {
    let store = Store::open(data).unwrap();
    let stats = store.stats().unwrap();
    assert!(stats.consistent, "{stats:?}");
    let config = Config::default();
    let chunker = Chunker::new(&config.chunking, Arc::new(HeuristicTokenCounter));
    let docs = store.list_documents(None).unwrap();
    let stored: std::collections::HashMap<String, u64> =
        docs.iter().map(|d| (d.source.clone(), d.chunks)).collect();
    for i in 0..FILES {
        let path = corpus.join(format!("batch{:02}/report{i:05}.md", i / 500)).canonicalize().unwrap();
        let source = path.display().to_string();
        let hits = store
            .search_words(&WordQuery {
                text: &marker(i),
                collection: None,
                top_k: 5,
                title_boost: 0.5,
                heading_boost: 0.8,
            })
            .unwrap();
        match stored.get(&source) {
            Some(&chunks) => {
                let bytes = std::fs::read(&path).unwrap();
                let parsed = datafactory_parse::parse(&bytes, Some(&path), &Default::default()).unwrap();
                let expected = chunker.chunk(&parsed.documents[0]).len() as u64;
                assert_eq!(chunks, expected, "{source} is stored with {chunks} of {expected} chunks");
                assert_eq!(hits.len(), 1, "{source} is stored but not searchable");
                assert_eq!(hits[0].source, source);
            }
            None => assert!(hits.is_empty(), "{source} is searchable but not stored"),
        }
    }
    docs.len()
}

#[test]
fn sigkill_during_ingest_leaves_every_document_whole_or_absent() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus");
    let data = tmp.path().join("data");
    write_corpus(&corpus);

    let mut previous = 0;
    let mut repairs = 0;
    for target in [200, 900, 1800] {
        let stored = ingest_and_kill(&data, &corpus, target.max(previous + 1));
        if word_index_behind(&data) {
            repairs += 1;
        }
        // Starting again: `stats` repairs and must report a consistent store.
        let stats = run_json(datafactory(&data).args(["stats", "--json"]), 0);
        assert_eq!(stats["consistent"], true, "{stats:#}");
        let n = check_whole_or_absent(&data, &corpus);
        assert!(n >= stored, "documents were lost: {n} < {stored}");
        previous = n;
    }
    // The word index commits every 2 s: the first kill, well within that,
    // leaves it behind SQLite, so the repair path has run.
    assert!(repairs >= 1, "no kill left the word index behind");
    // A last run finishes the job: everything present, unchanged files skipped.
    let summary = run_json(datafactory(&data).args(["ingest", "--json"]).arg(&corpus), 0);
    assert_eq!(summary["documents"]["unchanged"].as_u64().unwrap() as usize, previous);
    assert_eq!(check_whole_or_absent(&data, &corpus), FILES);
    // The killed runs are recorded as interrupted jobs, the last as succeeded.
    let conn = rusqlite::Connection::open(data.join("datafactory.sqlite3")).unwrap();
    let states: Vec<String> = conn
        .prepare("SELECT state FROM jobs ORDER BY created_at")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(states, ["interrupted", "interrupted", "interrupted", "succeeded"]);
}
