//! The real `datafactory` binary on the PostgreSQL backend (`[store] backend
//! = "postgres"`): ingest, search, documents, stats, and the same dense
//! results as the embedded store on the same data with the real
//! all-MiniLM-L6-v2. Needs `DATAFACTORY_TEST_POSTGRES` (see
//! scripts/start-test-postgres.sh): without it these tests fail under
//! `CI=true` and are reported as not run otherwise.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The test database's URL and a fresh schema for this test.
fn postgres(schema: &str) -> Option<(String, String)> {
    Some((test_postgres(schema, schema)?, schema.to_string()))
}

/// `datafactory` on the PostgreSQL store (its data directory holds only uploads).
fn on_postgres(data: &Path, pg: &(String, String)) -> Command {
    let mut cmd = datafactory(data);
    cmd.env("DATAFACTORY_STORE__BACKEND", "postgres")
        .env("DATAFACTORY_STORE__URL", &pg.0)
        .env("DATAFACTORY_STORE__SCHEMA", &pg.1);
    cmd
}

fn fixtures_corpus(dir: &Path) -> PathBuf {
    let corpus = dir.join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    for name in ["sample.txt", "sample.md", "sample.html", "sample.pdf", "sample.docx", "sample.jsonl"] {
        std::fs::copy(fixtures().join(name), corpus.join(name)).unwrap();
    }
    // Dutch prose: stored with the `dutch` text search configuration.
    std::fs::write(
        corpus.join("fietsen.txt"),
        "In Nederland fietsen de meeste kinderen elke dag naar school. De fietspaden zijn breed en \
         veilig, en de gemeente onderhoudt ze goed. Ouders vinden het belangrijk dat hun kinderen \
         zelfstandig leren reizen. In de winter is het soms koud en nat, maar ook dan stappen veel \
         mensen op hun fiets, omdat het sneller is dan de bus of de auto in de drukke binnenstad.",
    )
    .unwrap();
    corpus
}

fn sources(v: &Value) -> Vec<String> {
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let s = r["source"].as_str().unwrap();
            Path::new(s.split('#').next().unwrap()).file_name().unwrap().to_str().unwrap().to_string()
        })
        .collect()
}

#[test]
fn ingest_search_and_delete_on_postgres() {
    let Some(pg) = postgres("cli_fixtures") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let corpus = fixtures_corpus(tmp.path());
    let data = tmp.path().join("data");
    let summary = run_json(on_postgres(&data, &pg).args(["ingest", "--json"]).arg(&corpus), 0);
    assert_eq!(summary["documents"]["added"], 8, "{summary:#}");
    assert_eq!(summary["documents"]["failed"], 0);
    // The store is in PostgreSQL: no SQLite file in the data directory.
    assert!(!data.join("datafactory.sqlite3").exists());

    for (word, file) in [
        ("quasar", "sample.pdf"),
        ("zeppelin", "sample.docx"),
        ("obsidian", "sample.jsonl"),
        ("DiffExecutor", "sample.md"),
        ("executor", "sample.md"),
    ] {
        let v = run_json(on_postgres(&data, &pg).args(["search", "--json", word]), 0);
        assert_eq!(sources(&v).first().map(String::as_str), Some(file), "{word}: {v:#}");
        assert_eq!(v["retrievers"], serde_json::json!(["words"]));
    }
    // Dutch words are stemmed as Dutch: `fietspad` finds `fietspaden`,
    // `gemeenten` `gemeente`, `ouder` `ouders` (not so in `simple` or `english`).
    for word in ["fietspad", "gemeenten", "ouder"] {
        let v = run_json(on_postgres(&data, &pg).args(["search", "--json", word]), 0);
        assert_eq!(sources(&v).first().map(String::as_str), Some("fietsen.txt"), "{word}: {v:#}");
    }
    // Nothing in the embedded store of the same data directory.
    let v = run_json(datafactory(&data).args(["search", "--json", "quasar"]), 0);
    assert!(sources(&v).is_empty());

    let again = run_json(on_postgres(&data, &pg).args(["ingest", "--json"]).arg(&corpus), 0);
    assert_eq!(again["documents"]["unchanged"], 8, "{again:#}");
    let docs = run_json(on_postgres(&data, &pg).args(["documents", "list", "--json"]), 0);
    assert_eq!(docs.as_array().unwrap().len(), 8);
    let id = docs[0]["id"].as_str().unwrap().to_string();
    run_json(on_postgres(&data, &pg).args(["documents", "delete", "--json", &id]), 0);
    let stats = run_json(on_postgres(&data, &pg).args(["stats", "--json"]), 0);
    assert_eq!(stats["documents"], 7, "{stats:#}");
    assert_eq!(stats["consistent"], true);
}

/// XQuAD's 240 English paragraphs, embedded with the real all-MiniLM-L6-v2,
/// in both stores: dense search gives the same paragraphs in the same order.
/// Prints the ingest and search times of both (docs/BENCHMARKS.md).
#[test]
fn both_backends_find_the_same_paragraphs() {
    let Some(pg) = postgres("cli_xquad") else { return };
    let model = minilm_dir();
    let tmp = tempfile::tempdir().unwrap();
    let (embedded, on_pg) = (tmp.path().join("embedded"), tmp.path().join("pg"));
    let raw: Value =
        serde_json::from_slice(&std::fs::read(eval_data().join("xquad/xquad.en.json")).unwrap()).unwrap();
    let mut lines = String::new();
    let mut titles = Vec::new();
    for article in raw["data"].as_array().unwrap() {
        let title = article["title"].as_str().unwrap();
        titles.push(title.replace('_', " "));
        for (i, p) in article["paragraphs"].as_array().unwrap().iter().enumerate() {
            let line =
                serde_json::json!({"id": format!("{title}/{i}"), "title": title, "text": p["context"]});
            lines.push_str(&format!("{line}\n"));
        }
    }
    let jsonl = tmp.path().join("xquad.jsonl");
    std::fs::write(&jsonl, lines).unwrap();

    let store = |kind: &str| -> Command {
        let mut cmd = match kind {
            "embedded" => datafactory(&embedded),
            _ => on_postgres(&on_pg, &pg),
        };
        cmd.env("DATAFACTORY_EMBEDDING__MODEL", &model);
        cmd
    };
    let mut ingest_seconds = Vec::new();
    for kind in ["embedded", "postgres"] {
        let start = Instant::now();
        let summary = run_json(store(kind).args(["ingest", "--json"]).arg(&jsonl), 0);
        ingest_seconds.push(start.elapsed().as_secs_f64());
        assert_eq!(summary["documents"]["added"], 240, "{kind}: {summary:#}");
        assert_eq!(summary["embedding"]["chunks"], summary["chunks"], "{kind}");
    }
    // Paraphrases sharing no word with the paragraph they should find (as in semantic.rs).
    let queries = [
        ("whole values divisible solely by unity plus themselves", "A prime number"),
        ("medieval physicians accused foul vapours", "Medical knowledge had stagnated"),
        ("trees cleared letting cows graze", "Between 1991 and 2000"),
        ("swelling treated with steroid medicines", "Anti-inflammatory drugs"),
    ];
    let mut search_seconds = [0.0; 2];
    let texts = |v: &Value| -> Vec<String> {
        v["results"].as_array().unwrap().iter().map(|r| r["text"].as_str().unwrap().to_string()).collect()
    };
    for (q, target) in queries {
        let search = |kind: &str, mode: &str| {
            let k = if mode == "dense" { "5" } else { "10" };
            run_json(store(kind).args(["search", "--json", "--mode", mode, "-k", k, q]), 0)
        };
        let (a, b) = (search("embedded", "dense"), search("postgres", "dense"));
        assert_eq!(b["retrievers"], serde_json::json!(["dense"]), "{b:#}");
        assert_eq!(texts(&a), texts(&b), "dense {q:?}");
        for (x, y) in a["results"].as_array().unwrap().iter().zip(b["results"].as_array().unwrap()) {
            let (x, y) = (x["score"].as_f64().unwrap(), y["score"].as_f64().unwrap());
            assert!((x - y).abs() < 2e-3, "dense {q:?}: {x} vs {y}");
        }
        // Hybrid: words rank differently (BM25 there; stemmed, ts_rank_cd
        // here: `medicines` matches `medicine`), so fused ranks may differ;
        // both find the paragraph in their top 10.
        let start = Instant::now();
        let a = search("embedded", "hybrid");
        search_seconds[0] += start.elapsed().as_secs_f64();
        let start = Instant::now();
        let b = search("postgres", "hybrid");
        search_seconds[1] += start.elapsed().as_secs_f64();
        assert_eq!(b["retrievers"], serde_json::json!(["words", "dense"]), "{b:#}");
        for (kind, v) in [("embedded", &a), ("postgres", &b)] {
            assert!(texts(v).iter().any(|t| t.starts_with(target)), "{kind} hybrid {q:?}: {v:#}");
        }
    }
    let stats = run_json(store("postgres").args(["stats", "--json"]), 0);
    // Every chunk embedded; a chunk longer than MiniLM's 256 tokens (2 of
    // XQuAD's, with their header) has a vector per window, so more vectors.
    assert_eq!(stats["embedded_chunks"], stats["chunks"], "{stats:#}");
    assert!(
        stats["vector_index"]["vectors"].as_u64().unwrap() >= stats["chunks"].as_u64().unwrap(),
        "{stats:#}"
    );
    assert_eq!(stats["vector_index"]["dimensions"], 384);
    for (i, kind) in ["embedded", "postgres"].iter().enumerate() {
        eprintln!(
            "{kind}: ingest of 240 XQuAD paragraphs {:.1} s; {} hybrid searches, a process each (model load included) {:.2} s",
            ingest_seconds[i],
            queries.len(),
            search_seconds[i]
        );
    }
}
