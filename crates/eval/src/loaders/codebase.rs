//! The contextual-retrieval cookbook's codebase set: `codebase_chunks.json`
//! (`[{doc_id, original_uuid, content, chunks: [{chunk_id, original_index,
//! content}]}]`) and `evaluation_set.jsonl` (`{query, answer,
//! golden_doc_uuids, golden_chunk_uuids: [[doc_uuid, original_index], …]}`).
//! Golden units are chunks.

use crate::dataset::{
    read_json, read_to_string, Dataset, DatasetError, DatasetFormat, EvalDocument, EvalQuery, Judgement,
    RelevanceLevel,
};
use crate::loaders::place_chunks;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;

#[derive(Deserialize)]
struct RawDocument {
    doc_id: String,
    original_uuid: String,
    #[serde(default)]
    content: String,
    chunks: Vec<RawChunk>,
}

#[derive(Deserialize)]
struct RawChunk {
    original_index: serde_json::Value,
    content: String,
}

#[derive(Deserialize)]
struct RawQuery {
    query: String,
    #[serde(default)]
    golden_chunk_uuids: Vec<(String, serde_json::Value)>,
}

/// An index as the set writes it: a number or a string of digits.
fn index_key(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.trim().to_string(),
        other => other.to_string(),
    }
}

pub fn load(dir: &Path) -> Result<Dataset, DatasetError> {
    let raw: Vec<RawDocument> = read_json(&dir.join("codebase_chunks.json"))?;
    let mut documents = Vec::with_capacity(raw.len());
    // (document uuid, chunk index) → (document, span)
    let mut golden_units: HashMap<(String, String), (usize, (usize, usize))> = HashMap::new();
    let mut joined = 0;
    for doc in &raw {
        let pieces: Vec<(Option<String>, &str)> =
            doc.chunks.iter().map(|c| (None, c.content.as_str())).collect();
        let (text, chunks) = place_chunks(&doc.content, &pieces);
        if text != doc.content {
            joined += 1;
        }
        let index = documents.len();
        for (raw_chunk, placed) in doc.chunks.iter().zip(&chunks) {
            golden_units.insert(
                (doc.original_uuid.clone(), index_key(&raw_chunk.original_index)),
                (index, (placed.start, placed.end)),
            );
        }
        documents.push(EvalDocument { id: doc.doc_id.clone(), title: String::new(), text, chunks });
    }

    let path = dir.join("evaluation_set.jsonl");
    let mut queries = Vec::new();
    let mut unresolved = 0;
    let mut without_golden = 0;
    for (n, line) in read_to_string(&path)?.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let q: RawQuery = serde_json::from_str(line)
            .map_err(|e| DatasetError::invalid(&path, format!("line {}: {e}", n + 1)))?;
        let mut relevant = Vec::new();
        for (uuid, idx) in &q.golden_chunk_uuids {
            match golden_units.get(&(uuid.clone(), index_key(idx))) {
                Some(&(document, span)) => {
                    if !relevant.iter().any(|j: &Judgement| j.document == document && j.span == Some(span)) {
                        relevant.push(Judgement { document, span: Some(span), grade: 1.0 });
                    }
                }
                None => unresolved += 1,
            }
        }
        if relevant.is_empty() {
            without_golden += 1;
            continue;
        }
        queries.push(EvalQuery { id: format!("q{}", n + 1), text: q.query, relevant });
    }
    let mut notes = Vec::new();
    if joined > 0 {
        notes.push(format!(
            "{joined} document(s) whose chunks are not found in order in their content: their text is the chunks joined"
        ));
    }
    if unresolved > 0 {
        notes.push(format!("{unresolved} golden chunk reference(s) name no chunk of the corpus: left out"));
    }
    if without_golden > 0 {
        notes.push(format!("{without_golden} quer(y/ies) without a resolvable golden chunk: left out"));
    }
    Ok(Dataset {
        name: dir.file_name().map_or("codebase".into(), |n| n.to_string_lossy().into_owned()),
        format: DatasetFormat::Codebase,
        path: dir.to_path_buf(),
        level: RelevanceLevel::Chunk,
        documents,
        queries,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_chunks_become_character_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let corpus = serde_json::json!([
            {"doc_id": "doc_1", "original_uuid": "u1", "content": "fn a() {}\nfn b() {}\n",
             "chunks": [{"chunk_id": "doc_1_chunk_0", "original_index": 0, "content": "fn a() {}"},
                        {"chunk_id": "doc_1_chunk_1", "original_index": 1, "content": "fn b() {}"}]},
            {"doc_id": "doc_2", "original_uuid": "u2", "content": "other",
             "chunks": [{"chunk_id": "doc_2_chunk_0", "original_index": 0, "content": "not in content"}]}
        ]);
        std::fs::write(dir.path().join("codebase_chunks.json"), corpus.to_string()).unwrap();
        let queries = [
            serde_json::json!({"query": "where is b", "answer": "", "golden_doc_uuids": ["u1"],
                               "golden_chunk_uuids": [["u1", 1], ["u2", 0]]}),
            serde_json::json!({"query": "nothing", "answer": "", "golden_doc_uuids": ["u9"],
                               "golden_chunk_uuids": [["u9", 0]]}),
        ];
        let lines: Vec<String> = queries.iter().map(|q| q.to_string()).collect();
        std::fs::write(dir.path().join("evaluation_set.jsonl"), lines.join("\n")).unwrap();

        let set = crate::load(dir.path()).unwrap();
        assert_eq!(set.format, DatasetFormat::Codebase);
        assert_eq!(set.level, RelevanceLevel::Chunk);
        assert_eq!(set.documents.len(), 2);
        assert!(set.has_given_chunks());
        // Found in the content: offsets into it.
        assert_eq!(set.documents[0].text, "fn a() {}\nfn b() {}\n");
        assert_eq!((set.documents[0].chunks[1].start, set.documents[0].chunks[1].end), (10, 19));
        // Not found: the chunks joined.
        assert_eq!(set.documents[1].text, "not in content");
        assert_eq!(set.queries.len(), 1);
        let q = &set.queries[0];
        assert_eq!(q.text, "where is b");
        assert_eq!(q.relevant.len(), 2);
        assert_eq!(q.relevant[0], Judgement { document: 0, span: Some((10, 19)), grade: 1.0 });
        assert_eq!(q.relevant[1].document, 1);
        assert!(set.notes.iter().any(|n| n.contains("1 golden chunk reference")), "{:?}", set.notes);
    }
}
