//! Finding real documents by meaning: XQuAD's 240 English Wikipedia
//! paragraphs, embedded with the real all-MiniLM-L6-v2, searched with
//! paraphrases that share no word with the paragraph they should find.

mod common;

use common::*;
use serde_json::Value;
use std::collections::HashSet;
use std::path::Path;

const STOPWORDS: &[&str] = &[
    "a", "an", "the", "of", "to", "in", "on", "for", "by", "and", "or", "is", "are", "was", "were", "that",
    "which", "who", "what", "how", "with", "it", "its", "from", "as", "at", "be", "do", "does", "did",
    "when", "why", "their", "they", "them", "into", "can", "about",
];

/// (query, title of the article, the start of the paragraph it should find)
const QUERIES: &[(&str, &str, &str)] = &[
    ("whole values divisible solely by unity plus themselves", "Prime_number", "A prime number"),
    ("medieval physicians accused foul vapours", "Black_Death", "Medical knowledge had stagnated"),
    (
        "extraterrestrial wanderer able to heal by altering looks",
        "Doctor_Who",
        "The Doctor rarely travels alone",
    ),
    ("trees cleared letting cows graze", "Amazon_rainforest", "Between 1991 and 2000"),
    ("swelling treated with steroid medicines", "Immune_system", "Anti-inflammatory drugs"),
];

fn words(text: &str) -> HashSet<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .filter(|w| !STOPWORDS.contains(&w.as_str()))
        .collect()
}

/// Writes the XQuAD paragraphs as JSONL (`id` = title/index) and returns
/// (path, id → paragraph).
fn xquad_jsonl(dir: &Path) -> (std::path::PathBuf, Vec<(String, String)>) {
    let raw: Value =
        serde_json::from_slice(&std::fs::read(eval_data().join("xquad/xquad.en.json")).unwrap()).unwrap();
    let mut lines = String::new();
    let mut paragraphs = Vec::new();
    for article in raw["data"].as_array().unwrap() {
        let title = article["title"].as_str().unwrap();
        for (i, p) in article["paragraphs"].as_array().unwrap().iter().enumerate() {
            let id = format!("{title}/{i}");
            let text = p["context"].as_str().unwrap();
            lines.push_str(
                &serde_json::json!({"id": id, "title": title.replace('_', " "), "text": text}).to_string(),
            );
            lines.push('\n');
            paragraphs.push((id, text.to_string()));
        }
    }
    let path = dir.join("xquad.jsonl");
    std::fs::write(&path, lines).unwrap();
    (path, paragraphs)
}

fn top_ids(data: &Path, mode: &str, query: &str, k: usize, model: &Path) -> (Vec<String>, Value) {
    let v = run_json(
        datafactory(data).env("DATAFACTORY_EMBEDDING__MODEL", model).args([
            "search",
            "--json",
            "--mode",
            mode,
            "-k",
            &k.to_string(),
            query,
        ]),
        0,
    );
    let ids =
        v["results"].as_array().unwrap().iter().map(|r| r["text"].as_str().unwrap().to_string()).collect();
    (ids, v)
}

#[test]
fn paraphrases_find_paragraphs_that_share_no_word_with_them() {
    let model = minilm_dir();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (jsonl, paragraphs) = xquad_jsonl(tmp.path());
    let summary = run_json(
        datafactory(&data).env("DATAFACTORY_EMBEDDING__MODEL", &model).args(["ingest", "--json"]).arg(&jsonl),
        0,
    );
    assert_eq!(summary["documents"]["added"], 240, "{summary:#}");
    assert_eq!(summary["embedding"]["chunks"], summary["chunks"], "{summary:#}");
    assert!(summary["embedding"]["model"].as_str().unwrap().contains("all-MiniLM-L6-v2"));

    for (query, title, start) in QUERIES {
        let (_, target) = paragraphs
            .iter()
            .find(|(id, text)| id.starts_with(title) && text.starts_with(start))
            .unwrap_or_else(|| panic!("no paragraph {title}: {start}"));
        // The premise: not one content word in common.
        let shared: Vec<String> = words(query).intersection(&words(target)).cloned().collect();
        assert!(shared.is_empty(), "{query:?} shares {shared:?} with its paragraph");

        // A hit is the paragraph or one of its chunks.
        let found = |texts: &[String]| texts.iter().any(|t| target.contains(t.as_str()));
        let (dense, v) = top_ids(&data, "dense", query, 3, &model);
        assert_eq!(v["retrievers"], serde_json::json!(["dense"]), "{v:#}");
        assert!(found(&dense), "dense search for {query:?} missed {title}: {v:#}");
        // Fusion lets chunks that both retrievers rank (if low) pass dense's
        // first pick, so hybrid is held to the top 10 here.
        let (hybrid, v) = top_ids(&data, "hybrid", query, 10, &model);
        assert!(found(&hybrid), "hybrid search for {query:?} missed {title}: {v:#}");
        let (lexical, _) = top_ids(&data, "lexical", query, 3, &model);
        assert!(!found(&lexical), "words alone should not find {title} for {query:?}");
    }

    let stats = run_json(datafactory(&data).args(["stats", "--json"]), 0);
    assert_eq!(stats["consistent"], true, "{stats:#}");
    assert_eq!(stats["embedded_chunks"], stats["chunks"]);
    // A chunk whose header and text run past the model's 256 tokens has a
    // vector per window (2 such chunks of 285 here).
    assert!(stats["vector_index"]["vectors"].as_u64() >= stats["chunks"].as_u64(), "{stats:#}");
    assert_eq!(stats["vector_index"]["dimensions"], 384);

    // Re-ingest with the same model: nothing to embed again.
    let again = run_json(
        datafactory(&data).env("DATAFACTORY_EMBEDDING__MODEL", &model).args(["ingest", "--json"]).arg(&jsonl),
        0,
    );
    assert_eq!(again["documents"]["unchanged"], 240);
    assert_eq!(again["embedding"]["chunks"], 0);

    // Without the model, search still answers by words, and says why.
    let v = run_json(
        datafactory(&data)
            .env("DATAFACTORY_EMBEDDING__MODEL", tmp.path().join("no-such-model"))
            .args(["search", "--json", "Tesla"]),
        0,
    );
    assert_eq!(v["retrievers"], serde_json::json!(["words"]));
    assert!(!v["results"].as_array().unwrap().is_empty());
    assert!(v["notes"].to_string().contains("no-such-model"), "{v:#}");
}

#[test]
fn ingest_without_a_model_says_so_and_keeps_words() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let out = run(datafactory(&data)
        .env("DATAFACTORY_EMBEDDING__MODEL", tmp.path().join("missing-model"))
        .args(["ingest", "--json"])
        .arg(fixtures().join("sample.md")));
    assert_eq!(out.status.code(), Some(0));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(summary["embedding"]["model"].is_null());
    let note = summary["embedding"]["note"].as_str().unwrap();
    assert!(note.contains("missing-model") && note.contains("words only"), "{note}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning"));
    assert_eq!(search_sources(&data, "marzipan").len(), 1);
}
