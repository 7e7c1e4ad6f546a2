//! BEIR / TREC-style sets: `corpus.jsonl` (`{_id, title, text}`),
//! `queries.jsonl` (`{_id, text}`) and `qrels/<split>.tsv` (`query-id
//! corpus-id score`, with or without a header line). The split read is `test`,
//! else `dev`, else `train`, else the first by name. Scores above 0 are
//! relevance grades; golden units are documents.

use crate::dataset::{
    read_to_string, Dataset, DatasetError, DatasetFormat, EvalDocument, EvalQuery, Judgement, RelevanceLevel,
};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Deserialize)]
struct RawDocument {
    #[serde(rename = "_id")]
    id: serde_json::Value,
    #[serde(default)]
    title: String,
    #[serde(default)]
    text: String,
}

#[derive(Deserialize)]
struct RawQuery {
    #[serde(rename = "_id")]
    id: serde_json::Value,
    text: String,
}

fn id_string(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>, DatasetError> {
    let mut out = Vec::new();
    for (n, line) in read_to_string(path)?.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(line)
                .map_err(|e| DatasetError::invalid(path, format!("line {}: {e}", n + 1)))?,
        );
    }
    Ok(out)
}

fn pick_qrels(dir: &Path) -> Result<PathBuf, DatasetError> {
    for split in ["test", "dev", "train"] {
        let p = dir.join(format!("{split}.tsv"));
        if p.is_file() {
            return Ok(p);
        }
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| DatasetError::Io { path: dir.to_path_buf(), source })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "tsv"))
        .collect();
    files.sort();
    files.into_iter().next().ok_or_else(|| DatasetError::invalid(dir, "no .tsv relevance file"))
}

pub fn load(dir: &Path) -> Result<Dataset, DatasetError> {
    let corpus: Vec<RawDocument> = read_jsonl(&dir.join("corpus.jsonl"))?;
    let mut documents = Vec::with_capacity(corpus.len());
    let mut by_id = HashMap::with_capacity(corpus.len());
    for d in corpus {
        let id = id_string(&d.id);
        by_id.insert(id.clone(), documents.len());
        documents.push(EvalDocument { id, title: d.title, text: d.text, chunks: Vec::new() });
    }
    let raw_queries: Vec<RawQuery> = read_jsonl(&dir.join("queries.jsonl"))?;

    let qrels = pick_qrels(&dir.join("qrels"))?;
    let mut judged: HashMap<String, Vec<Judgement>> = HashMap::new();
    let mut unknown_documents = 0;
    for (n, line) in read_to_string(&qrels)?.lines().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        // `query-id corpus-id score`, or TREC's `query-id 0 corpus-id score`.
        let (q, d, score) = match fields.as_slice() {
            [q, d, s] => (*q, *d, *s),
            [q, _, d, s] => (*q, *d, *s),
            _ => {
                return Err(DatasetError::invalid(&qrels, format!("line {}: expected 3 or 4 fields", n + 1)))
            }
        };
        let Ok(grade) = score.parse::<f64>() else {
            if n == 0 {
                continue; // the header
            }
            return Err(DatasetError::invalid(
                &qrels,
                format!("line {}: score {score:?} is not a number", n + 1),
            ));
        };
        if grade <= 0.0 {
            continue;
        }
        match by_id.get(d) {
            Some(&document) => {
                judged.entry(q.to_string()).or_default().push(Judgement { document, span: None, grade })
            }
            None => unknown_documents += 1,
        }
    }
    let mut queries = Vec::new();
    for q in raw_queries {
        let id = id_string(&q.id);
        if let Some(relevant) = judged.remove(&id) {
            queries.push(EvalQuery { id, text: q.text, relevant });
        }
    }
    let mut notes = vec![format!(
        "relevance from qrels/{}",
        qrels.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    )];
    if unknown_documents > 0 {
        notes.push(format!("{unknown_documents} judgement(s) name no document of the corpus: left out"));
    }
    if !judged.is_empty() {
        notes.push(format!("{} judged quer(y/ies) missing from queries.jsonl: left out", judged.len()));
    }
    Ok(Dataset {
        name: dir.file_name().map_or("beir".into(), |n| n.to_string_lossy().into_owned()),
        format: DatasetFormat::Beir,
        path: dir.to_path_buf(),
        level: RelevanceLevel::Document,
        documents,
        queries,
        notes,
    })
}
