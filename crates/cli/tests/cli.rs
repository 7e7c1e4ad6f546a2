//! The `datafactory` binary end to end: real fixtures of every format, bad
//! input, re-ingest, delete, collections, configuration.

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;

const GOOD: &[(&str, &str)] = &[
    ("sample.txt", "hummingbird"),
    ("sample.md", "marzipan"),
    ("sample.html", "kaleidoscope"),
    ("sample.pdf", "quasar"),
    ("sample.docx", "zeppelin"),
    ("sample.jsonl", "obsidian"),
    ("sample.jsonl", "tangerine"),
];

/// Copies the good fixtures into `dir` and returns it.
fn good_fixtures(dir: &Path) -> std::path::PathBuf {
    let corpus = dir.join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    for name in ["sample.txt", "sample.md", "sample.html", "sample.pdf", "sample.docx", "sample.jsonl"] {
        std::fs::copy(fixtures().join(name), corpus.join(name)).unwrap();
    }
    corpus
}

fn file_name(source: &str) -> &str {
    let path = source.split('#').next().unwrap();
    Path::new(path).file_name().unwrap().to_str().unwrap()
}

#[test]
fn mixed_formats_are_ingested_and_found_by_words() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = good_fixtures(tmp.path());
    let data = tmp.path().join("data");
    let summary = run_json(datafactory(&data).args(["ingest", "--json"]).arg(&corpus), 0);
    assert_eq!(summary["files"], 6, "{summary:#}");
    assert_eq!(summary["documents"]["added"], 7, "{summary:#}"); // JSONL holds two records
    assert_eq!(summary["documents"]["failed"], 0);
    assert!(summary["chunks"].as_u64().unwrap() >= 7);
    assert!(summary["job_id"].as_str().unwrap().starts_with("job-"));

    for (file, word) in GOOD {
        let sources = search_sources(&data, word);
        assert!(!sources.is_empty(), "no result for {word}");
        assert_eq!(file_name(&sources[0]), *file, "{word} should find {file} first: {sources:?}");
    }
    // Code-aware words: the identifier and each of its parts.
    for q in ["DiffExecutor", "diff_executor", "executor"] {
        let sources = search_sources(&data, q);
        assert_eq!(file_name(&sources[0]), "sample.md", "{q}: {sources:?}");
    }

    // Results carry what a reader needs; PDF results their page.
    let v = run_json(datafactory(&data).args(["search", "--json", "quasar"]), 0);
    let hit = &v["results"][0];
    for key in [
        "chunk_id",
        "score",
        "document_id",
        "collection",
        "title",
        "source",
        "heading_path",
        "ordinal",
        "start",
        "end",
        "text",
    ] {
        assert!(!hit[key].is_null(), "search result lacks {key}: {hit:#}");
    }
    assert!(hit["page"].as_u64().unwrap() >= 1);
    // Hybrid by default; with no vectors in the store it runs on words and says why.
    assert_eq!(v["mode"], "hybrid");
    assert_eq!(v["retrievers"], serde_json::json!(["words"]));
    assert!(v["notes"][0].as_str().unwrap().contains("no vectors"), "{v:#}");
    assert!(hit["scores"]["words"].as_f64().unwrap() > 0.0);

    // Every chunk's offsets map back into its document's text.
    let docs = run_json(datafactory(&data).args(["documents", "list", "--json"]), 0);
    assert_eq!(docs.as_array().unwrap().len(), 7);
    for d in docs.as_array().unwrap() {
        let id = d["id"].as_str().unwrap();
        let detail = run_json(datafactory(&data).args(["documents", "show", "--json", id]), 0);
        let text: Vec<char> = detail["text"].as_str().unwrap().chars().collect();
        let chunks = detail["chunks"].as_array().unwrap();
        assert_eq!(chunks.len() as u64, d["chunks"].as_u64().unwrap());
        for c in chunks {
            let (s, e) = (c["start"].as_u64().unwrap() as usize, c["end"].as_u64().unwrap() as usize);
            let slice: String = text[s..e].iter().collect();
            assert_eq!(slice, c["text"].as_str().unwrap());
        }
    }
    let stats = run_json(datafactory(&data).args(["stats", "--json"]), 0);
    assert_eq!(stats["consistent"], true);
    assert_eq!(stats["documents"], 7);
    assert_eq!(stats["chunks"], stats["word_index"]["chunks"]);
}

#[test]
fn headings_are_searchable_and_shown() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = good_fixtures(tmp.path());
    let data = tmp.path().join("data");
    run_json(datafactory(&data).args(["ingest", "--json"]).arg(corpus.join("sample.docx")), 0);
    let v = run_json(datafactory(&data).args(["search", "--json", "zeppelin"]), 0);
    let path = v["results"][0]["heading_path"].as_array().unwrap();
    assert!(!path.is_empty(), "DOCX headings should give a heading path: {v:#}");
}

#[test]
fn bad_inputs_fail_one_by_one_and_leave_the_store_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = good_fixtures(tmp.path());
    let data = tmp.path().join("data");
    run_json(datafactory(&data).args(["ingest", "--json"]).arg(&corpus), 0);
    let before = run_json(datafactory(&data).args(["documents", "list", "--json"]), 0);

    let bad = fixtures().join("bad");
    let big = tmp.path().join("big.txt");
    std::fs::write(&big, "word ".repeat(100_000)).unwrap();
    let mut cmd = datafactory(&data);
    cmd.env("DATAFACTORY_INGEST__MAX_FILE_BYTES", "400000")
        .env("DATAFACTORY_INGEST__MAX_DECOMPRESSED_BYTES", "50000000")
        .args(["ingest", "--json"]);
    for name in [
        "empty.txt",
        "garbage.bin",
        "encrypted.pdf",
        "truncated.pdf",
        "bomb.docx",
        "not-a-docx.docx",
        "latin1.txt",
    ] {
        cmd.arg(bad.join(name));
    }
    cmd.arg(&big).arg(tmp.path().join("does-not-exist.md"));
    let summary = run_json(&mut cmd, 3);
    let failed = summary["failed"].as_array().unwrap();
    let error_of = |name: &str| -> String {
        failed
            .iter()
            .find(|f| f["source"].as_str().unwrap().ends_with(name))
            .unwrap_or_else(|| panic!("no failure for {name}: {summary:#}"))["error"]
            .as_str()
            .unwrap()
            .to_lowercase()
    };
    assert!(error_of("empty.txt").contains("empty"));
    assert!(error_of("garbage.bin").contains("binary"));
    assert!(error_of("encrypted.pdf").contains("encrypted"));
    assert!(error_of("truncated.pdf").contains("pdf"));
    assert!(error_of("bomb.docx").contains("max_decompressed_bytes"));
    assert!(error_of("not-a-docx.docx").contains("docx") || error_of("not-a-docx.docx").contains("zip"));
    assert!(error_of("big.txt").contains("max_file_bytes"));
    assert!(error_of("does-not-exist.md").contains("cannot read"));
    assert_eq!(failed.len(), 8, "{summary:#}");
    // Invalid UTF-8 is read, with a warning.
    assert_eq!(summary["documents"]["added"], 1);
    assert!(summary["warnings"][0]["message"].as_str().unwrap().contains("UTF-8"));

    // What was stored before is all still there, unchanged.
    let after = run_json(datafactory(&data).args(["documents", "list", "--json"]), 0);
    for d in before.as_array().unwrap() {
        let same = after.as_array().unwrap().iter().find(|a| a["id"] == d["id"]).expect("document lost");
        assert_eq!(same, d);
    }
    assert_eq!(run_json(datafactory(&data).args(["stats", "--json"]), 0)["consistent"], true);
}

#[test]
fn folder_walks_skip_non_documents() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus");
    std::fs::create_dir_all(corpus.join(".hidden")).unwrap();
    std::fs::write(corpus.join("notes.md"), "# Notes\n\nAbout walruses.").unwrap();
    std::fs::write(corpus.join(".hidden/secret.md"), "# Secret\n\nAbout narwhals.").unwrap();
    std::fs::copy(fixtures().join("bad/garbage.bin"), corpus.join("image.png")).unwrap();
    std::fs::write(corpus.join("script.js"), "console.log('platypus')").unwrap();
    let data = tmp.path().join("data");
    let s = run_json(datafactory(&data).args(["ingest", "--json"]).arg(&corpus), 0);
    assert_eq!(s["files"], 1, "{s:#}");
    let s = run_json(datafactory(&data).args(["ingest", "--json", "--all-files"]).arg(&corpus), 0);
    assert_eq!(s["files"], 3, "{s:#}");
    assert_eq!(s["skipped"].as_array().unwrap().len(), 1, "{s:#}");
    assert_eq!(s["documents"]["added"], 1); // script.js, read as text
    assert!(search_sources(&data, "narwhals").is_empty());
}

#[test]
fn reingest_skips_unchanged_replaces_changed_and_delete_removes() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    std::fs::write(corpus.join("a.md"), "# A\n\nThe first file mentions aardvarks.").unwrap();
    std::fs::write(corpus.join("b.md"), "# B\n\nThe second file mentions badgers.").unwrap();
    let data = tmp.path().join("data");
    let ingest = |code| run_json(datafactory(&data).args(["ingest", "--json"]).arg(&corpus), code);
    assert_eq!(ingest(0)["documents"]["added"], 2);
    let again = ingest(0);
    assert_eq!(again["documents"]["unchanged"], 2);
    assert_eq!(again["chunks"], 0);

    std::fs::write(corpus.join("a.md"), "# A\n\nNow the first file mentions armadillos.").unwrap();
    assert_eq!(ingest(0)["documents"]["replaced"], 1);
    assert!(search_sources(&data, "aardvarks").is_empty());
    assert_eq!(search_sources(&data, "armadillos").len(), 1);

    // Another chunk budget is another pipeline: documents are chunked again.
    let s = run_json(
        datafactory(&data)
            .env("DATAFACTORY_CHUNKING__MAX_TOKENS", "64")
            .args(["ingest", "--json"])
            .arg(&corpus),
        0,
    );
    assert_eq!(s["documents"]["replaced"], 2, "{s:#}");

    let docs = run_json(datafactory(&data).args(["documents", "list", "--json"]), 0);
    let b =
        docs.as_array().unwrap().iter().find(|d| d["source"].as_str().unwrap().ends_with("b.md")).unwrap();
    let id = b["id"].as_str().unwrap();
    let v = run_json(datafactory(&data).args(["documents", "delete", "--json", id]), 0);
    assert_eq!(v["deleted"], true);
    assert!(search_sources(&data, "badgers").is_empty());
    let out = run(datafactory(&data).args(["documents", "show", id]));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no document"));
    let stats = run_json(datafactory(&data).args(["stats", "--json"]), 0);
    assert_eq!(stats["documents"], 1);
    assert_eq!(stats["consistent"], true);
}

#[test]
fn collections_keep_searches_apart() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = good_fixtures(tmp.path());
    let data = tmp.path().join("data");
    run_json(datafactory(&data).args(["ingest", "--json", "-c", "one"]).arg(corpus.join("sample.md")), 0);
    run_json(datafactory(&data).args(["ingest", "--json", "-c", "two"]).arg(corpus.join("sample.txt")), 0);
    let v = run_json(datafactory(&data).args(["search", "--json", "-c", "two", "marzipan hummingbird"]), 0);
    let results = v["results"].as_array().unwrap();
    assert!(!results.is_empty());
    assert!(results.iter().all(|r| r["collection"] == "two"));
    // Filters by document and by metadata (JSONL records carry metadata).
    run_json(datafactory(&data).args(["ingest", "--json", "-c", "one"]).arg(corpus.join("sample.jsonl")), 0);
    let all =
        run_json(datafactory(&data).args(["search", "--json", "-k", "50", "tangerine obsidian marzipan"]), 0);
    assert!(all["results"].as_array().unwrap().len() >= 3, "{all:#}");
    let md = all["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["source"].as_str().unwrap().ends_with("sample.md"))
        .unwrap();
    let id = md["document_id"].as_str().unwrap();
    let only = run_json(
        datafactory(&data).args(["search", "--json", "--document", id, "tangerine obsidian marzipan"]),
        0,
    );
    assert!(only["results"].as_array().unwrap().iter().all(|r| r["document_id"] == id), "{only:#}");
    let out = run(datafactory(&data).args(["search", "--meta", "nokey", "x"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("KEY=VALUE"));
    let stats = run_json(datafactory(&data).args(["stats", "--json"]), 0);
    let names: Vec<&str> =
        stats["collections"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["one", "two"]);
    let out = run(datafactory(&data).args(["ingest", "-c", "bad name"]).arg(&corpus));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("collection name"));
}

#[test]
fn configuration_layers_and_names_bad_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::write(tmp.path().join("datafactory.toml"), "[chunking]\nmax_tokens = 300\n").unwrap();
    let out = run(datafactory(&data).env("DATAFACTORY_SEARCH__TOP_K", "7").args(["config", "show"]));
    assert!(out.status.success());
    let shown: toml::Value = toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(shown["chunking"]["max_tokens"].as_integer(), Some(300)); // file
    assert_eq!(shown["search"]["top_k"].as_integer(), Some(7)); // environment
    assert_eq!(shown["data_dir"].as_str(), Some(data.to_str().unwrap())); // flag

    std::fs::write(tmp.path().join("datafactory.toml"), "[chunking]\nmax_tokns = 300\n").unwrap();
    let out = run(datafactory(&data).args(["config", "show"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_tokns"));

    std::fs::remove_file(tmp.path().join("datafactory.toml")).unwrap();
    let out =
        run(datafactory(&data).env("DATAFACTORY_CHUNKING__OVERLAP_TOKENS", "400").args(["config", "show"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("chunking.overlap_tokens"));

    let out = run(datafactory(&data).args(["--config", "missing.toml", "config", "show"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}

#[test]
fn the_rust_book_is_ingested_and_searchable() {
    let sysroot = std::process::Command::new("rustc").args(["--print", "sysroot"]).output().unwrap();
    let book = Path::new(String::from_utf8_lossy(&sysroot.stdout).trim()).join("share/doc/rust/html/book");
    assert!(book.is_dir(), "the Rust book is missing at {}", book.display());
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let s = run_json(datafactory(&data).args(["ingest", "--json"]).arg(&book), 0);
    assert!(s["documents"]["added"].as_u64().unwrap() > 100, "{s:#}");
    let v = run_json(datafactory(&data).args(["search", "--json", "-k", "5", "borrow checker lifetimes"]), 0);
    let titles: Vec<String> =
        v["results"].as_array().unwrap().iter().map(|r| r["title"].as_str().unwrap().to_string()).collect();
    assert!(titles.iter().any(|t| t.contains("Lifetimes") || t.contains("Borrowing")), "{titles:?}");
    // Navigation chrome is not indexed: the sidebar's chapter list would put
    // every page (over 100) in the results for a chapter title. (Stemmed,
    // "translations" also finds the prose's "translate" and "translated":
    // 20 chunks.)
    let v = run_json(datafactory(&data).args(["search", "--json", "-k", "50", "translations"]), 0);
    assert!(v["results"].as_array().unwrap().len() < 40, "sidebar text seems indexed");

    // Every chapter is also in print.html: a passage comes back once, naming
    // its other copies; with collapsing off the copies take places of their own.
    let distinct = |v: &Value| -> (usize, usize) {
        let hits = v["results"].as_array().unwrap();
        let texts: std::collections::HashSet<String> = hits
            .iter()
            .map(|h| {
                h["text"].as_str().unwrap().split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
            })
            .collect();
        (hits.len(), texts.len())
    };
    let v = run_json(datafactory(&data).args(["search", "--json", "-k", "10", "borrow checker"]), 0);
    assert_eq!(distinct(&v), (10, 10), "{v:#}");
    let named: Vec<&str> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|h| h["duplicates"].as_array().into_iter().flatten())
        .map(|d| d["source"].as_str().unwrap())
        .collect();
    assert!(named.iter().any(|s| s.ends_with("print.html")), "{named:?}");
    let v = run_json(
        datafactory(&data).env("DATAFACTORY_SEARCH__COLLAPSE_DUPLICATES", "false").args([
            "search",
            "--json",
            "-k",
            "10",
            "borrow checker",
        ]),
        0,
    );
    let (hits, passages) = distinct(&v);
    assert!(hits == 10 && passages < 10, "copies expected without collapsing: {passages} passages");
    assert!(v["results"].as_array().unwrap().iter().all(|h| h.get("duplicates").is_none()));
    let out = run(datafactory(&data).args(["search", "borrow checker"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("    also in: "));
    // stats counts them, and the near-duplicates at the default threshold.
    let stats = run_json(datafactory(&data).args(["stats", "--json"]), 0);
    let d = &stats["duplicates"];
    assert!(d["exact_groups"].as_u64().unwrap() > 100, "{d:#}");
    assert!(d["passages"].as_u64().unwrap() < d["chunks"].as_u64().unwrap(), "{d:#}");
    assert_eq!(d["near_threshold"], 0.8);
    assert!(d["near_pairs"].as_u64().unwrap() > 0, "{d:#}");
    let out = run(datafactory(&data).args(["stats", "--near-threshold", "0.3"]));
    assert!(!out.status.success(), "0.3 is below the allowed 0.5");
}

#[test]
fn human_output_is_readable() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = good_fixtures(tmp.path());
    let data = tmp.path().join("data");
    let out = run(datafactory(&data).arg("ingest").arg(&corpus));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("7 added") && text.contains("0 failed"), "{text}");
    let out = run(datafactory(&data).args(["search", "marzipan"]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("sample.md") && text.contains("result(s)"), "{text}");
    let out = run(datafactory(&data).arg("stats"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("consistent  yes"));
    let _: Value = Value::Null;
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    // `datafactory stats | head -1`: the reader is gone before we write.
    let tmp = tempfile::tempdir().unwrap();
    let corpus = good_fixtures(tmp.path());
    let data = tmp.path().join("data");
    run(datafactory(&data).arg("ingest").arg(&corpus));
    let mut child = datafactory(&data)
        .args(["search", "marzipan"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{stderr}");
}
