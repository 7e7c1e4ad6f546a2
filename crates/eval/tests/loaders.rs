//! Each loader on the real sets committed in `tests/data`:
//! counts from their READMEs and a few hand-checked judgements.

use datafactory_eval::{load, DatasetFormat, RelevanceLevel};
use std::path::PathBuf;

fn eval_data() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data");
    assert!(dir.is_dir(), "the evaluation data is missing at {}", dir.display());
    dir
}

/// `text[start..end]` in characters.
fn slice(text: &str, start: usize, end: usize) -> String {
    text.chars().skip(start).take(end - start).collect()
}

#[test]
fn cranfield_documents_queries_and_graded_judgements() {
    let set = load(&eval_data().join("cranfield")).unwrap();
    assert_eq!(set.format, DatasetFormat::Cranfield);
    assert_eq!(set.level, RelevanceLevel::Document);
    assert_eq!(set.documents.len(), 1400);
    assert_eq!(set.queries.len(), 225);
    let d1 = &set.documents[0];
    assert_eq!(d1.id, "1");
    assert_eq!(d1.title, "experimental investigation of the aerodynamics of a wing in a slipstream");
    assert!(d1.text.starts_with("experimental investigation of the aerodynamics"), "{}", d1.text);
    assert!(d1.chunks.is_empty());
    // Query 1 (`.I 001`): "1 184 2" → document 184 with gain 5 - 2 = 3; "1 12 3" → gain 2.
    let q1 = &set.queries[0];
    assert!(q1.text.starts_with("what similarity laws must be obeyed"), "{}", q1.text);
    let doc = |id: &str| set.documents.iter().position(|d| d.id == id).unwrap();
    let grade_of = |id: &str| q1.relevant.iter().find(|j| j.document == doc(id)).map(|j| j.grade);
    assert_eq!(grade_of("184"), Some(3.0));
    assert_eq!(grade_of("12"), Some(2.0));
    // Grades 1-4 on 128 + 387 + 734 + 363 lines; the 225 grade -1 lines are not judgements.
    let judgements: usize = set.queries.iter().map(|q| q.relevant.len()).sum();
    assert_eq!(judgements, 1612);
    assert!(set.queries.iter().flat_map(|q| &q.relevant).all(|j| (1.0..=4.0).contains(&j.grade)));
}

#[test]
fn xquad_paragraphs_are_documents() {
    // The folder holds English and German: English is read, and said so.
    let set = load(&eval_data().join("xquad")).unwrap();
    assert_eq!(set.format, DatasetFormat::Squad);
    assert_eq!(set.name, "xquad.en");
    assert!(set.notes.iter().any(|n| n.contains("xquad.en.json")), "{:?}", set.notes);
    assert_eq!(set.documents.len(), 240);
    assert_eq!(set.queries.len(), 1190);
    // Every question's paragraph holds its answer; spot-check the first.
    let q = &set.queries[0];
    assert_eq!(q.relevant.len(), 1);
    let para = &set.documents[q.relevant[0].document];
    assert_eq!(para.title, "Super Bowl 50");
    // A file named directly: the German set.
    let de = load(&eval_data().join("xquad/xquad.de.json")).unwrap();
    assert_eq!(de.name, "xquad.de");
    assert_eq!(de.documents.len(), 240);
    assert_eq!(de.queries.len(), 1190);
}

#[test]
fn anthropic_docs_sections_are_given_chunks_of_their_pages() {
    let set = load(&eval_data().join("anthropic_docs_rag")).unwrap();
    assert_eq!(set.format, DatasetFormat::AnthropicDocs);
    assert_eq!(set.level, RelevanceLevel::Chunk);
    assert!(set.has_given_chunks());
    let chunks: usize = set.documents.iter().map(|d| d.chunks.len()).sum();
    assert_eq!(chunks, 232);
    assert_eq!(set.documents.len(), 45); // pages
    assert_eq!(set.queries.len(), 100);
    // Golden chunks per question: 1 (17), 2 (75), 3 (7), 4 (1) — README.txt.
    let count = |n: usize| set.queries.iter().filter(|q| q.relevant.len() == n).count();
    assert_eq!((count(1), count(2), count(3), count(4)), (17, 75, 7, 1));
    // The first question's golden chunk is the eval tool's "Creating test cases" section.
    let j = &set.queries[0].relevant[0];
    let d = &set.documents[j.document];
    assert_eq!(d.title, "Eval tool");
    let (start, end) = j.span.unwrap();
    let chunk = d.chunks.iter().find(|c| (c.start, c.end) == (start, end)).unwrap();
    assert_eq!(chunk.heading.as_deref(), Some("Creating Test Cases"));
    assert!(slice(&d.text, start, end).starts_with("Creating Test Cases"), "{}", slice(&d.text, start, end));
}

#[test]
fn the_loaders_are_chosen_by_file_names_too() {
    let data = eval_data();
    assert_eq!(load(&data.join("cranfield/cran.qry")).unwrap().format, DatasetFormat::Cranfield);
    let docs = load(&data.join("anthropic_docs_rag/docs_evaluation_dataset.json")).unwrap();
    assert_eq!(docs.format, DatasetFormat::AnthropicDocs);
    let err = load(&data.join("cranfield/README.txt")).unwrap_err().to_string();
    assert!(err.contains("Recognised"), "{err}");
    let err = load(&data.join("no-such-set")).unwrap_err().to_string();
    assert!(err.contains("cannot read"), "{err}");
}
