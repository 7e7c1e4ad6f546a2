//! Cranfield 1400 in SMART format: `cran.all.1400` (records `.I n`, then `.T`
//! title, `.A` authors, `.B` source, `.W` abstract), `cran.qry` (`.I`, `.W`;
//! the `.I` numbers are not sequential: relevance files number queries 1, 2, …
//! in file order) and `cranqrel` (`query document grade`). Cleverdon's grades
//! run from 1 (a complete answer) to 4 (minimal interest); they become gains
//! 4 to 1 for nDCG. Grade -1 (and anything outside 1–4) is not a judgement.

use crate::dataset::{
    read_to_string, Dataset, DatasetError, DatasetFormat, EvalDocument, EvalQuery, Judgement, RelevanceLevel,
};
use std::collections::HashMap;
use std::path::Path;

/// One SMART record: its `.I` value and its fields' lines.
#[derive(Default)]
struct Record {
    id: String,
    fields: HashMap<char, Vec<String>>,
}

impl Record {
    /// A field's lines joined by spaces, whitespace collapsed.
    fn field(&self, tag: char) -> String {
        self.fields
            .get(&tag)
            .map(|lines| lines.iter().flat_map(|l| l.split_whitespace()).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    }
}

/// Splits SMART text into records. A repeated field (the collection has a few
/// garbled records) continues the earlier one.
fn records(text: &str) -> Vec<Record> {
    let mut out: Vec<Record> = Vec::new();
    let mut field: Option<char> = None;
    for line in text.lines() {
        if let Some(id) = line.strip_prefix(".I ") {
            out.push(Record { id: id.trim().to_string(), ..Default::default() });
            field = None;
            continue;
        }
        let tag = match line.trim_end() {
            ".T" => Some('T'),
            ".A" => Some('A'),
            ".B" => Some('B'),
            ".W" => Some('W'),
            _ => None,
        };
        if tag.is_some() {
            field = tag;
            continue;
        }
        if let (Some(record), Some(f)) = (out.last_mut(), field) {
            record.fields.entry(f).or_default().push(line.to_string());
        }
    }
    out
}

pub fn load(dir: &Path) -> Result<Dataset, DatasetError> {
    let mut documents = Vec::new();
    let mut by_id = HashMap::new();
    for r in records(&read_to_string(&dir.join("cran.all.1400"))?) {
        by_id.insert(r.id.clone(), documents.len());
        let title = r.field('T');
        let title = title.strip_suffix(" .").unwrap_or(&title).to_string();
        documents.push(EvalDocument { id: r.id.clone(), title, text: r.field('W'), chunks: Vec::new() });
    }
    if documents.is_empty() {
        return Err(DatasetError::invalid(&dir.join("cran.all.1400"), "no `.I` records"));
    }
    let raw_queries = records(&read_to_string(&dir.join("cran.qry"))?);

    let qrels_path = dir.join("cranqrel");
    let mut judged: HashMap<usize, Vec<Judgement>> = HashMap::new();
    let (mut unknown_documents, mut ungraded) = (0, 0);
    for (n, line) in read_to_string(&qrels_path)?.lines().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        let parsed = match fields.as_slice() {
            [q, d, g] => q.parse::<usize>().ok().zip(g.parse::<i64>().ok()).map(|(q, g)| (q, *d, g)),
            _ => None,
        };
        let Some((q, d, grade)) = parsed else {
            return Err(DatasetError::invalid(
                &qrels_path,
                format!("line {}: expected `query document grade`", n + 1),
            ));
        };
        if !(1..=4).contains(&grade) {
            ungraded += 1;
            continue;
        }
        match by_id.get(d) {
            Some(&document) => judged.entry(q).or_default().push(Judgement {
                document,
                span: None,
                grade: (5 - grade) as f64,
            }),
            None => unknown_documents += 1,
        }
    }
    let mut queries = Vec::new();
    let mut without = 0;
    for (i, r) in raw_queries.iter().enumerate() {
        match judged.remove(&(i + 1)) {
            Some(relevant) => {
                queries.push(EvalQuery { id: (i + 1).to_string(), text: r.field('W'), relevant })
            }
            None => without += 1,
        }
    }
    let mut notes = Vec::new();
    if ungraded > 0 {
        notes.push(format!("{ungraded} relevance line(s) with grade -1 (no judgement): ignored"));
    }
    if unknown_documents > 0 {
        notes.push(format!("{unknown_documents} judgement(s) name no document: left out"));
    }
    if without > 0 {
        notes.push(format!("{without} quer(y/ies) without relevant documents: left out"));
    }
    Ok(Dataset {
        name: dir.file_name().map_or("cranfield".into(), |n| n.to_string_lossy().into_owned()),
        format: DatasetFormat::Cranfield,
        path: dir.to_path_buf(),
        level: RelevanceLevel::Document,
        documents,
        queries,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_records_with_repeated_fields() {
        let text = ".I 1\n.T\nwing in a\nslipstream .\n.A\nsomeone\n.W\nfirst part\n.I 2\n.T\nt\n.W\na\n.A\nx\n.W\nb\n";
        let r = records(text);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].id, "1");
        assert_eq!(r[0].field('T'), "wing in a slipstream .");
        assert_eq!(r[0].field('W'), "first part");
        assert_eq!(r[1].field('W'), "a b");
    }
}
