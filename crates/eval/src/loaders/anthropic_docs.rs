//! The cookbook's docs set (`anthropic_docs_rag`): `anthropic_docs.json`, a
//! list of documentation sections `{chunk_link, chunk_heading, text}` (the
//! retrieval units), and `docs_evaluation_dataset.json`, questions with
//! `correct_chunks` (links). Sections of one page (the link before `#`) make
//! one document, each section one given chunk under its heading. Golden units
//! are chunks.

use crate::dataset::{
    read_json, Dataset, DatasetError, DatasetFormat, EvalDocument, EvalQuery, Judgement, RelevanceLevel,
};
use crate::loaders::join_chunks;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;

#[derive(Deserialize)]
struct RawSection {
    chunk_link: String,
    #[serde(default)]
    chunk_heading: String,
    text: String,
}

#[derive(Deserialize)]
struct RawQuery {
    #[serde(default)]
    id: String,
    question: String,
    correct_chunks: Vec<String>,
}

/// A readable title from a page address: its last path segment, words spaced.
fn page_title(page: &str) -> String {
    let last = page.trim_end_matches('/').rsplit('/').next().unwrap_or(page);
    let spaced = last.replace(['-', '_'], " ");
    let mut chars = spaced.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

pub fn load(dir: &Path) -> Result<Dataset, DatasetError> {
    let sections: Vec<RawSection> = read_json(&dir.join("anthropic_docs.json"))?;
    // Pages in order of first appearance, with their sections.
    let mut pages: Vec<(String, Vec<&RawSection>)> = Vec::new();
    let mut page_index: HashMap<&str, usize> = HashMap::new();
    for s in &sections {
        let page = s.chunk_link.split('#').next().unwrap_or(&s.chunk_link);
        let i = *page_index.entry(page).or_insert_with(|| {
            pages.push((page.to_string(), Vec::new()));
            pages.len() - 1
        });
        pages[i].1.push(s);
    }
    let mut documents = Vec::with_capacity(pages.len());
    let mut units: HashMap<&str, (usize, (usize, usize))> = HashMap::new();
    for (page, secs) in &pages {
        let pieces: Vec<(Option<String>, &str)> = secs
            .iter()
            .map(|s| {
                let heading = s.chunk_heading.trim();
                ((!heading.is_empty()).then(|| heading.to_string()), s.text.as_str())
            })
            .collect();
        let (text, chunks) = join_chunks(&pieces);
        for (s, c) in secs.iter().zip(&chunks) {
            units.entry(s.chunk_link.as_str()).or_insert((documents.len(), (c.start, c.end)));
        }
        documents.push(EvalDocument { id: page.clone(), title: page_title(page), text, chunks });
    }

    let raw: Vec<RawQuery> = read_json(&dir.join("docs_evaluation_dataset.json"))?;
    let mut queries = Vec::with_capacity(raw.len());
    let (mut unresolved, mut without_golden) = (0, 0);
    for (n, q) in raw.into_iter().enumerate() {
        let mut relevant: Vec<Judgement> = Vec::new();
        for link in &q.correct_chunks {
            match units.get(link.as_str()) {
                Some(&(document, span)) => {
                    if !relevant.iter().any(|j| j.document == document && j.span == Some(span)) {
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
        let id = if q.id.is_empty() { format!("q{}", n + 1) } else { q.id };
        queries.push(EvalQuery { id, text: q.question, relevant });
    }
    let mut notes = Vec::new();
    if unresolved > 0 {
        notes.push(format!("{unresolved} golden chunk link(s) name no section of the corpus: left out"));
    }
    if without_golden > 0 {
        notes.push(format!("{without_golden} question(s) without a resolvable golden chunk: left out"));
    }
    Ok(Dataset {
        name: dir.file_name().map_or("anthropic_docs".into(), |n| n.to_string_lossy().into_owned()),
        format: DatasetFormat::AnthropicDocs,
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
    fn titles_from_page_addresses() {
        assert_eq!(page_title("https://docs.claude.com/en/docs/test-and-evaluate/eval-tool"), "Eval tool");
        assert_eq!(page_title("https://docs.claude.com/en/api/"), "Api");
    }
}
