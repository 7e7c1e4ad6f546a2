//! `datafactory eval` end to end: slices of the real sets in `tests/data`
//! (words only), tiny BEIR and codebase folders written here, and one run with
//! the real all-MiniLM-L6-v2 showing the dense and hybrid modes.

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;

/// Runs `eval --json` with extra arguments; returns the report.
fn eval_json(data: &Path, args: &[&str], dataset: &Path) -> Value {
    run_json(datafactory(data).args(["eval", "--json"]).args(args).arg(dataset), 0)
}

fn modes(report: &Value) -> Vec<&str> {
    report["modes"].as_array().unwrap().iter().map(|m| m["mode"].as_str().unwrap()).collect()
}

fn mode<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["modes"].as_array().unwrap().iter().find(|m| m["mode"] == name).unwrap()
}

/// Every figure is where it can be: rates in [0, 1], growing with k, latency ordered.
fn assert_sane(report: &Value) {
    assert_eq!(report["k"], serde_json::json!([5, 10, 20]), "{report:#}");
    for m in report["modes"].as_array().unwrap() {
        for field in ["pass", "recall"] {
            let at = |k: &str| m[field][k].as_f64().unwrap_or_else(|| panic!("{field}@{k}: {m:#}"));
            for k in ["5", "10", "20"] {
                assert!((0.0..=1.0).contains(&at(k)), "{field}@{k}: {m:#}");
            }
            assert!(at("5") <= at("10") && at("10") <= at("20"), "{field}: {m:#}");
        }
        for field in ["mrr_at_10", "ndcg_at_10"] {
            assert!((0.0..=1.0).contains(&m[field].as_f64().unwrap()), "{field}: {m:#}");
        }
        let (p50, p95) = (m["latency_ms"]["p50"].as_f64().unwrap(), m["latency_ms"]["p95"].as_f64().unwrap());
        assert!(p50 > 0.0 && p50 <= p95, "latency: {m:#}");
        assert_eq!(m["queries"], report["dataset"]["evaluated_queries"]);
    }
}

/// The temporary store is gone afterwards; only the parent of it was made.
fn assert_no_store_left(data: &Path) {
    let left: Vec<_> = std::fs::read_dir(data).unwrap().collect();
    assert!(left.is_empty(), "left behind in {}: {left:?}", data.display());
}

#[test]
fn xquad_words_only() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let r = eval_json(&data, &["--limit-queries", "20"], &eval_data().join("xquad"));
    assert_eq!(r["dataset"]["format"], "squad");
    assert_eq!(r["dataset"]["name"], "xquad.en");
    assert_eq!(r["dataset"]["relevance"], "document");
    assert_eq!(r["dataset"]["chunker"], "own");
    assert_eq!(r["dataset"]["documents"], 240);
    assert_eq!(r["dataset"]["queries"], 1190);
    assert_eq!(r["dataset"]["evaluated_queries"], 20);
    assert_eq!(r["store"]["documents"], 240);
    assert!(r["store"]["embedding_model"].is_null());
    assert_eq!(modes(&r), ["lexical"]);
    assert_eq!(mode(&r, "lexical")["retrievers"], serde_json::json!(["words"]));
    assert!(
        r["notes"].as_array().unwrap().iter().any(|n| n.as_str().unwrap().contains("words only")),
        "{r:#}"
    );
    assert_sane(&r);
    let lexical = mode(&r, "lexical");
    assert!(lexical["pass"]["20"].as_f64().unwrap() > 0.5, "{r:#}");
    assert!(lexical["mrr_at_10"].as_f64().unwrap() > 0.5, "{r:#}");
    // One relevant paragraph per question: Pass@k and Recall@k agree.
    assert_eq!(lexical["pass"], lexical["recall"]);
    assert_no_store_left(&data);
}

#[test]
fn cranfield_words_only_with_graded_relevance() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let r = eval_json(&data, &["--limit-queries", "20"], &eval_data().join("cranfield"));
    assert_eq!(r["dataset"]["format"], "cranfield");
    assert_eq!(r["dataset"]["documents"], 1400);
    assert_eq!(r["dataset"]["evaluated_queries"], 20);
    assert_sane(&r);
    let lexical = mode(&r, "lexical");
    // BM25 on Cranfield: nDCG@10 around 0.3-0.45, MRR around 0.5-0.7.
    let ndcg = lexical["ndcg_at_10"].as_f64().unwrap();
    assert!((0.15..0.8).contains(&ndcg), "{r:#}");
    assert!(lexical["pass"]["20"].as_f64().unwrap() > 0.25, "{r:#}");
    assert_no_store_left(&data);

    // The table for people.
    let out =
        run(datafactory(&data).args(["eval", "--limit-queries", "5"]).arg(eval_data().join("cranfield")));
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    for word in ["Pass@5", "Pass@20", "MRR@10", "nDCG@10", "p95 ms", "lexical", "5 of 225 queries"] {
        assert!(table.contains(word), "{word} missing from:\n{table}");
    }
}

#[test]
fn anthropic_docs_given_and_own_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let set = eval_data().join("anthropic_docs_rag");
    let given = eval_json(&data, &["--limit-queries", "20", "--k", "5,10,20"], &set);
    assert_eq!(given["dataset"]["format"], "anthropic_docs");
    assert_eq!(given["dataset"]["relevance"], "chunk");
    assert_eq!(given["dataset"]["chunker"], "given");
    assert_eq!(given["store"]["chunks"], 232); // each section stays one chunk
    assert_sane(&given);
    let lexical = mode(&given, "lexical");
    assert!(lexical["pass"]["20"].as_f64().unwrap() > 0.5, "{given:#}");
    // Finding the page is easier than finding the section.
    assert!(lexical["recall"]["5"].as_f64().unwrap() >= lexical["pass"]["5"].as_f64().unwrap() - 1e-9);

    let own = eval_json(&data, &["--limit-queries", "20", "--chunker", "own"], &set);
    assert_eq!(own["dataset"]["chunker"], "own");
    assert!(own["store"]["chunks"].as_u64().unwrap() > 232, "{own:#}"); // long sections are cut
    assert_sane(&own);
    assert!(mode(&own, "lexical")["pass"]["20"].as_f64().unwrap() > 0.5, "{own:#}");
    assert_no_store_left(&data);
}

#[test]
fn a_tiny_beir_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let set = tmp.path().join("tiny-beir");
    std::fs::create_dir_all(set.join("qrels")).unwrap();
    let corpus = [
        ("d1", "Hummingbirds", "Hummingbirds hover and beat their wings up to eighty times a second."),
        ("d2", "Zeppelins", "A zeppelin is a rigid airship filled with hydrogen or helium."),
        ("d3", "Marzipan", "Marzipan is a confection of sugar and ground almonds."),
        ("d4", "Airships", "Rigid airships carried passengers across the Atlantic in the 1930s."),
    ];
    let lines: Vec<String> = corpus
        .iter()
        .map(|(id, t, x)| serde_json::json!({"_id": id, "title": t, "text": x}).to_string())
        .collect();
    std::fs::write(set.join("corpus.jsonl"), lines.join("\n")).unwrap();
    std::fs::write(
        set.join("queries.jsonl"),
        [
            r#"{"_id": "q1", "text": "how fast do hummingbird wings beat"}"#,
            r#"{"_id": "q2", "text": "rigid airship zeppelin"}"#,
            r#"{"_id": "q3", "text": "a query nobody judged"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    // Graded: d2 is the answer (2), d4 related (1); d3 judged not relevant (0).
    std::fs::write(
        set.join("qrels/test.tsv"),
        "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t2\nq2\td4\t1\nq2\td3\t0\n",
    )
    .unwrap();

    let data = tmp.path().join("data");
    let r = eval_json(&data, &[], &set);
    assert_eq!(r["dataset"]["format"], "beir");
    assert_eq!(r["dataset"]["documents"], 4);
    assert_eq!(r["dataset"]["queries"], 2);
    assert_sane(&r);
    let lexical = mode(&r, "lexical");
    assert_eq!(lexical["pass"]["5"], 1.0, "{r:#}");
    assert_eq!(lexical["mrr_at_10"], 1.0, "{r:#}");
    // q2 ranks d2 (grade 2) above d4 (grade 1): the ideal order.
    assert!(lexical["ndcg_at_10"].as_f64().unwrap() > 0.99, "{r:#}");
    assert!(r["notes"].as_array().unwrap().iter().any(|n| n == "relevance from qrels/test.tsv"), "{r:#}");
}

#[test]
fn a_tiny_codebase_folder_with_given_and_own_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let set = tmp.path().join("codebase");
    std::fs::create_dir_all(&set).unwrap();
    let parse = "fn parse_header(bytes: &[u8]) -> Header {\n    Header::read(bytes)\n}\n";
    let write = "fn write_checksum(out: &mut Vec<u8>, crc: u32) {\n    out.extend(crc.to_le_bytes());\n}\n";
    let corpus = serde_json::json!([
        {"doc_id": "doc_1", "original_uuid": "u1", "content": format!("{parse}\n{write}"),
         "chunks": [{"chunk_id": "doc_1_chunk_0", "original_index": 0, "content": parse},
                    {"chunk_id": "doc_1_chunk_1", "original_index": 1, "content": write}]},
        {"doc_id": "doc_2", "original_uuid": "u2", "content": "fn unrelated_helper() -> u8 { 7 }\n",
         "chunks": [{"chunk_id": "doc_2_chunk_0", "original_index": 0, "content": "fn unrelated_helper() -> u8 { 7 }\n"}]}
    ]);
    std::fs::write(set.join("codebase_chunks.json"), corpus.to_string()).unwrap();
    let queries = [
        serde_json::json!({"query": "where is the checksum written", "answer": "write_checksum",
                           "golden_doc_uuids": ["u1"], "golden_chunk_uuids": [["u1", 1]]}),
        serde_json::json!({"query": "parse header bytes", "answer": "parse_header",
                           "golden_doc_uuids": ["u1"], "golden_chunk_uuids": [["u1", 0]]}),
    ];
    let lines: Vec<String> = queries.iter().map(Value::to_string).collect();
    std::fs::write(set.join("evaluation_set.jsonl"), lines.join("\n")).unwrap();

    let data = tmp.path().join("data");
    let given = eval_json(&data, &[], &set);
    assert_eq!(given["dataset"]["format"], "codebase");
    assert_eq!(given["dataset"]["chunker"], "given");
    assert_eq!(given["store"]["chunks"], 3);
    assert_sane(&given);
    assert_eq!(mode(&given, "lexical")["mrr_at_10"], 1.0, "{given:#}");
    // Own chunker: the small document is one chunk, which overlaps both golden chunks.
    let own = eval_json(&data, &["--chunker", "own"], &set);
    assert_eq!(own["store"]["chunks"], 2);
    assert_eq!(mode(&own, "lexical")["pass"]["5"], 1.0, "{own:#}");
}

#[test]
fn clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let fails = |args: &[&str], dataset: &Path, expect: &str| {
        let out = run(datafactory(&data).arg("eval").args(args).arg(dataset));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(expect), "{args:?}: expected {expect:?} in: {stderr}");
    };
    let xquad = eval_data().join("xquad/xquad.en.json");
    fails(&["--chunker", "given"], &xquad, "has no chunks of its own");
    fails(&["--mode", "dense"], &xquad, "needs an embedding model");
    fails(&["--mode", "fuzzy"], &xquad, "unknown search mode");
    fails(&["--fusion", "borda"], &xquad, "unknown fusion \"borda\"");
    fails(&["--fusion", "rrf:0.5"], &xquad, "METHOD:WORDS:DENSE");
    fails(&["--fusion", "zscore:x:1"], &xquad, "fusion weight \"x\"");
    fails(&[], &eval_data(), "Recognised");
}

#[test]
fn minilm_runs_dense_and_hybrid() {
    let model = minilm_dir();
    let tmp = tempfile::tempdir().unwrap();
    // A slice of XQuAD: its first three articles.
    let raw: Value =
        serde_json::from_slice(&std::fs::read(eval_data().join("xquad/xquad.en.json")).unwrap()).unwrap();
    let articles: Vec<Value> = raw["data"].as_array().unwrap()[..3].to_vec();
    let paragraphs: usize = articles.iter().map(|a| a["paragraphs"].as_array().unwrap().len()).sum();
    let slice = tmp.path().join("xquad.slice.json");
    std::fs::write(&slice, serde_json::json!({"version": "1.1", "data": articles}).to_string()).unwrap();

    let data = tmp.path().join("data");
    let r = run_json(
        datafactory(&data)
            .env("DATAFACTORY_EMBEDDING__MODEL", &model)
            .args(["eval", "--json", "--limit-queries", "15"])
            .arg(&slice),
        0,
    );
    assert_eq!(r["dataset"]["documents"], paragraphs);
    assert!(r["store"]["embedding_model"].as_str().unwrap().contains("all-MiniLM-L6-v2"), "{r:#}");
    assert_eq!(modes(&r), ["lexical", "dense", "hybrid"]); // no sparse head
    assert_eq!(mode(&r, "dense")["retrievers"], serde_json::json!(["dense"]));
    assert_eq!(mode(&r, "hybrid")["retrievers"], serde_json::json!(["words", "dense"]));
    assert_sane(&r);
    for m in ["dense", "hybrid"] {
        assert!(mode(&r, m)["pass"]["20"].as_f64().unwrap() > 0.5, "{m}: {r:#}");
    }
    // The default hybrid names its fusion.
    assert_eq!(mode(&r, "hybrid")["fusion"], "zscore 0.5/0.5", "{r:#}");
    assert_eq!(r["settings"]["fusion"], "zscore");

    // Several fusions over one store: one hybrid row each, the other modes once.
    let several = run_json(
        datafactory(&data)
            .env("DATAFACTORY_EMBEDDING__MODEL", &model)
            .args([
                "eval",
                "--json",
                "--limit-queries",
                "15",
                "--fusion",
                "rrf:0.2:0.8,minmax,zscore+agree:1:0",
            ])
            .arg(&slice),
        0,
    );
    assert_eq!(modes(&several), ["lexical", "dense", "hybrid", "hybrid", "hybrid"]);
    let fusions: Vec<&str> =
        several["modes"].as_array().unwrap()[2..].iter().map(|m| m["fusion"].as_str().unwrap()).collect();
    assert_eq!(fusions, ["rrf 0.2/0.8", "minmax 0.5/0.5", "zscore+agree 1/0"]);
    // The same store and query embeddings: the other modes score the same.
    for m in ["lexical", "dense"] {
        assert_eq!(mode(&several, m)["mrr_at_10"], mode(&r, m)["mrr_at_10"], "{m}");
    }
    // Dense weighted 0 (agreement or not): hybrid ranks as words alone.
    let words_only = &several["modes"][4];
    assert_eq!(words_only["mrr_at_10"], mode(&r, "lexical")["mrr_at_10"], "{several:#}");

    // Asking for the sparse mode with a model that has no sparse head.
    let out = run(datafactory(&data)
        .env("DATAFACTORY_EMBEDDING__MODEL", &model)
        .args(["eval", "--mode", "sparse"])
        .arg(&slice));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sparse"));
    assert_no_store_left(&data);
}
