//! SQuAD v1.1 JSON (XQuAD is its translated subset): `{data: [{title,
//! paragraphs: [{context, qas: [{id, question}]}]}]}`. Each paragraph is a
//! document (titled by its article); each question's relevant document is the
//! paragraph that holds its answer.

use crate::dataset::{
    read_json, Dataset, DatasetError, DatasetFormat, EvalDocument, EvalQuery, Judgement, RelevanceLevel,
};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Deserialize)]
struct Raw {
    data: Vec<RawArticle>,
}

#[derive(Deserialize)]
struct RawArticle {
    #[serde(default)]
    title: String,
    paragraphs: Vec<RawParagraph>,
}

#[derive(Deserialize)]
struct RawParagraph {
    context: String,
    #[serde(default)]
    qas: Vec<RawQuestion>,
}

#[derive(Deserialize)]
struct RawQuestion {
    #[serde(default)]
    id: String,
    question: String,
}

/// Whether a JSON file has SQuAD's shape (checked by parsing it).
pub fn looks_like_squad(path: &Path) -> bool {
    read_json::<Raw>(path).is_ok()
}

/// The SQuAD file to read in a folder: the English one when there are several
/// languages (`*.en.json`), else the first by name. None when there is none.
pub fn pick_file(dir: &Path) -> Result<Option<PathBuf>, DatasetError> {
    let entries =
        std::fs::read_dir(dir).map_err(|source| DatasetError::Io { path: dir.to_path_buf(), source })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let squad: Vec<PathBuf> = files.into_iter().filter(|p| looks_like_squad(p)).collect();
    let english = squad.iter().find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().contains(".en.")));
    Ok(english.or(squad.first()).cloned())
}

pub fn load(path: &Path) -> Result<Dataset, DatasetError> {
    let raw: Raw = read_json(path)?;
    let mut documents = Vec::new();
    let mut queries = Vec::new();
    for article in raw.data {
        let title = article.title.replace('_', " ");
        for (i, p) in article.paragraphs.into_iter().enumerate() {
            let document = documents.len();
            documents.push(EvalDocument {
                id: format!("{}/{i}", article.title),
                title: title.clone(),
                text: p.context,
                chunks: Vec::new(),
            });
            for q in p.qas {
                let id = if q.id.is_empty() { format!("q{}", queries.len() + 1) } else { q.id };
                queries.push(EvalQuery {
                    id,
                    text: q.question,
                    relevant: vec![Judgement { document, span: None, grade: 1.0 }],
                });
            }
        }
    }
    if documents.is_empty() {
        return Err(DatasetError::invalid(path, "no paragraphs"));
    }
    let name = path.file_stem().map_or("squad".into(), |n| n.to_string_lossy().into_owned());
    Ok(Dataset {
        name,
        format: DatasetFormat::Squad,
        path: path.to_path_buf(),
        level: RelevanceLevel::Document,
        documents,
        queries,
        notes: Vec::new(),
    })
}
