//! The word index: BM25 over chunk text, heading path and document title, in
//! tantivy. Derived from SQLite and repairable from it: every commit records,
//! as its payload, the last SQLite change it includes.
//!
//! Words are stemmed by their document's language (the analyzer's, ISO 639-3:
//! Snowball stemmers for English, Dutch, German, French and 14 more), then
//! accent-folded; a query is stemmed for every language the index holds (its
//! `language` field). An index written before stemming (no `language` field)
//! is still read as it was, unstemmed, and is replaced by a stemmed one,
//! rebuilt from SQLite, by the first process that opens it as the writer.

use crate::StoreError;
use std::path::{Path, PathBuf};
use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, BoostQuery, ConstScoreQuery, Occur, Query, TermQuery};
use tantivy::schema::{
    Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, Value, STORED, STRING,
};
use tantivy::tokenizer::{
    AsciiFoldingFilter, Language, LowerCaser, PreTokenizedString, RemoveLongFilter, Stemmer, TextAnalyzer,
    Token, TokenStream, Tokenizer,
};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

/// Name under which the code-aware analyzer is registered.
const ANALYZER: &str = "df_code";
/// Memory for the writer's indexing arena.
const WRITER_MEMORY: usize = 64 * 1024 * 1024;

#[derive(Clone, Copy)]
pub(crate) struct Fields {
    pub chunk_id: Field,
    pub document_id: Field,
    pub collection: Field,
    pub title: Field,
    pub heading: Field,
    pub body: Field,
    /// The document's language code (`eng`; [`NO_LANGUAGE`] when unknown).
    /// Absent from an index written before stemming.
    pub language: Option<Field>,
}

/// The `language` term of chunks whose document has no known language.
pub const NO_LANGUAGE: &str = "und";

/// One chunk as the word index sees it.
pub(crate) struct WordDoc<'a> {
    pub chunk_id: &'a str,
    pub document_id: &'a str,
    pub collection: &'a str,
    pub title: &'a str,
    pub heading: &'a str,
    pub body: &'a str,
    /// The chunk's context, indexed with its body.
    pub context: Option<&'a str>,
    /// The document's language (ISO 639-3, as the analyzer records it).
    pub language: Option<&'a str>,
}

pub(crate) struct WordIndex {
    /// The index's directory, synced after each commit.
    dir: PathBuf,
    index: Index,
    reader: IndexReader,
    fields: Fields,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let text = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(ANALYZER)
            .set_index_option(IndexRecordOption::WithFreqsAndPositions),
    );
    let fields = Fields {
        chunk_id: b.add_text_field("chunk_id", STRING | STORED),
        document_id: b.add_text_field("document_id", STRING),
        collection: b.add_text_field("collection", STRING),
        title: b.add_text_field("title", text.clone()),
        heading: b.add_text_field("heading", text.clone()),
        body: b.add_text_field("body", text),
        language: Some(b.add_text_field("language", STRING)),
    };
    (b.build(), fields)
}

/// The fields of an existing index's schema (`language` may be missing).
fn fields_of(schema: &Schema) -> Result<Fields, StoreError> {
    let field = |name: &str| {
        schema.get_field(name).map_err(|_| StoreError::Index(format!("the word index has no field {name:?}")))
    };
    Ok(Fields {
        chunk_id: field("chunk_id")?,
        document_id: field("document_id")?,
        collection: field("collection")?,
        title: field("title")?,
        heading: field("heading")?,
        body: field("body")?,
        language: schema.get_field("language").ok(),
    })
}

/// The language the analyzer found for a document (`metadata.analysis.language.code`).
pub(crate) fn document_language(doc: &datafactory_core::Document) -> Option<&str> {
    doc.metadata.get("analysis")?.get("language")?.get("code")?.as_str()
}

/// The Snowball stemmer for a language code (ISO 639-3, as the analyzer
/// records it); None for the others (words are then only folded).
pub fn stemmer_language(code: Option<&str>) -> Option<Language> {
    Some(match code? {
        "eng" => Language::English,
        "nld" => Language::Dutch,
        "deu" => Language::German,
        "fra" => Language::French,
        "spa" => Language::Spanish,
        "ita" => Language::Italian,
        "por" => Language::Portuguese,
        "swe" => Language::Swedish,
        "dan" => Language::Danish,
        "nob" | "nno" => Language::Norwegian,
        "fin" => Language::Finnish,
        "rus" => Language::Russian,
        "hun" => Language::Hungarian,
        "ron" => Language::Romanian,
        "tur" => Language::Turkish,
        "ell" => Language::Greek,
        "ara" => Language::Arabic,
        "tam" => Language::Tamil,
        _ => return None,
    })
}

/// The analyzer without stemming: code-aware words, lower-cased, accent-folded.
pub fn analyzer() -> TextAnalyzer {
    analyzer_for(None)
}

/// The analyzer for a language: code-aware words, lower-cased, stemmed
/// (when the language has a stemmer), then accent-folded (after stemming, so
/// that German's stemmer still sees its umlauts).
pub fn analyzer_for(language: Option<Language>) -> TextAnalyzer {
    let base = TextAnalyzer::builder(CodeTokenizer::default())
        .filter(RemoveLongFilter::limit(64))
        .filter(LowerCaser);
    match language {
        Some(l) => base.filter(Stemmer::new(l)).filter(AsciiFoldingFilter).build(),
        None => base.filter(AsciiFoldingFilter).build(),
    }
}

/// The tokens a text yields, unstemmed (PostgreSQL stems them itself; tests).
pub fn tokens(text: &str) -> Vec<String> {
    tokens_with(&mut analyzer(), text)
}

/// The tokens a text yields in a language's analyzer.
pub fn tokens_in(text: &str, language: Option<Language>) -> Vec<String> {
    tokens_with(&mut analyzer_for(language), text)
}

fn tokens_with(a: &mut TextAnalyzer, text: &str) -> Vec<String> {
    let mut stream = a.token_stream(text);
    let mut out = Vec::new();
    while stream.advance() {
        out.push(stream.token().text.clone());
    }
    out
}

/// A text as the index stores it, analysed for a language.
fn pre_tokenized(a: &mut TextAnalyzer, text: &str) -> PreTokenizedString {
    let mut stream = a.token_stream(text);
    let mut tokens = Vec::new();
    while stream.advance() {
        tokens.push(stream.token().clone());
    }
    PreTokenizedString { text: text.to_string(), tokens }
}

/// Finds a query's words in texts, as the word index analyses both (the
/// same tokens, lower-cased, stemmed for the text's language, accent-folded),
/// so the words a hit is shown with are the ones the word index matched:
/// `running` marks `runs` in an English text. Both backends' hits get their
/// `highlights` from it.
pub struct Highlighter {
    query: String,
    /// Per stemmer (None: words only folded), its analyzer and the query's terms in it.
    stemmers: std::collections::HashMap<Option<Language>, (TextAnalyzer, std::collections::HashSet<String>)>,
}

impl Highlighter {
    pub fn new(query: &str) -> Highlighter {
        Highlighter { query: query.to_string(), stemmers: Default::default() }
    }

    /// Where the query's words occur in `text`, a text in `language` (ISO
    /// 639-3, as the analyzer records it; None: unknown, words only folded):
    /// `[start, end)` character offsets (not bytes), in order, with
    /// overlapping or touching ranges merged (an identifier's parts, `Diff`
    /// and `Executor`, make one range).
    pub fn ranges(&mut self, text: &str, language: Option<&str>) -> Vec<[usize; 2]> {
        let query = &self.query;
        let stemmer = stemmer_language(language);
        let (analyzer, terms) = self.stemmers.entry(stemmer).or_insert_with(|| {
            let mut analyzer = analyzer_for(stemmer);
            let terms = tokens_with(&mut analyzer, query).into_iter().collect();
            (analyzer, terms)
        });
        if terms.is_empty() {
            return Vec::new();
        }
        let mut bytes: Vec<(usize, usize)> = Vec::new();
        let mut stream = analyzer.token_stream(text);
        while stream.advance() {
            let t = stream.token();
            if terms.contains(&t.text) {
                bytes.push((t.offset_from, t.offset_to));
            }
        }
        bytes.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(bytes.len());
        for (a, b) in bytes {
            match merged.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        // Byte offsets to character offsets, in one pass (the ranges are in order).
        let (mut byte, mut chars) = (0usize, 0usize);
        let mut to_chars = |b: usize| {
            chars += text[byte..b].chars().count();
            byte = b;
            chars
        };
        merged.into_iter().map(|(a, b)| [to_chars(a), to_chars(b)]).collect()
    }
}

impl WordIndex {
    /// Opens (or creates) the index in `dir`. No writer is taken.
    ///
    /// An index written before stemming (no `language` field) is replaced by
    /// an empty stemmed one when this process can take its writer (the
    /// store then rebuilds it from SQLite, as for any index behind SQLite);
    /// while another process writes, it is read and written as it is, unstemmed.
    pub fn open(dir: &Path) -> Result<WordIndex, StoreError> {
        std::fs::create_dir_all(dir)?;
        let directory =
            || tantivy::directory::MmapDirectory::open(dir).map_err(|e| StoreError::Index(e.to_string()));
        let mut index = if Index::exists(&directory()?).map_err(tantivy::TantivyError::from)? {
            Index::open(directory()?)?
        } else {
            Index::create(directory()?, schema().0, tantivy::IndexSettings::default())?
        };
        if index.schema().get_field("language").is_err() {
            index.tokenizers().register(ANALYZER, analyzer());
            match index.writer_with_num_threads::<TantivyDocument>(1, WRITER_MEMORY) {
                Ok(writer) => {
                    tracing::warn!(
                        "the word index in {} was written before words were stemmed by language: \
                         it is replaced by a stemmed one, rebuilt from SQLite",
                        dir.display()
                    );
                    drop(writer);
                    drop(index);
                    clear_dir(dir)?;
                    index = Index::create(directory()?, schema().0, tantivy::IndexSettings::default())?;
                }
                Err(tantivy::TantivyError::LockFailure(..)) => tracing::warn!(
                    "the word index in {} was written before words were stemmed by language and another \
                     process writes it: it is used unstemmed until a process that writes it is restarted",
                    dir.display()
                ),
                Err(e) => return Err(e.into()),
            }
        }
        index.tokenizers().register(ANALYZER, analyzer());
        let fields = fields_of(&index.schema())?;
        let reader = index.reader_builder().reload_policy(ReloadPolicy::OnCommitWithDelay).try_into()?;
        Ok(WordIndex { dir: dir.to_path_buf(), index, reader, fields })
    }

    /// Whether words are stemmed (false: an index written before stemming).
    pub fn stemmed(&self) -> bool {
        self.fields.language.is_some()
    }

    /// The language codes of the chunks in the index (including, until
    /// segments merge, those of deleted chunks): the languages a query is
    /// stemmed for.
    pub fn languages(&self) -> Result<Vec<String>, StoreError> {
        let Some(field) = self.fields.language else { return Ok(Vec::new()) };
        let searcher = self.reader.searcher();
        let mut out: Vec<String> = Vec::new();
        for segment in searcher.segment_readers() {
            let inverted = segment.inverted_index(field)?;
            let mut stream = inverted.terms().stream()?;
            while stream.advance() {
                let code = String::from_utf8_lossy(stream.key()).into_owned();
                if !out.contains(&code) {
                    out.push(code);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The distinct terms of a query: its words analysed for each language
    /// the index holds (unstemmed for an index written before stemming).
    pub fn query_terms(&self, query: &str) -> Result<Vec<String>, StoreError> {
        let mut terms = Vec::new();
        if !self.stemmed() {
            terms = tokens(query);
        } else {
            let mut languages: Vec<Option<Language>> =
                self.languages()?.iter().map(|c| stemmer_language(Some(c))).collect();
            languages.dedup();
            if languages.is_empty() {
                languages.push(None);
            }
            for l in languages {
                terms.extend(tokens_in(query, l));
            }
        }
        terms.sort();
        terms.dedup();
        Ok(terms)
    }

    /// Takes the single writer of this index: only one process may hold it.
    pub fn writer(&self) -> Result<IndexWriter<TantivyDocument>, StoreError> {
        self.index.writer_with_num_threads(1, WRITER_MEMORY).map_err(|e| match e {
            tantivy::TantivyError::LockFailure(..) => StoreError::Busy,
            other => other.into(),
        })
    }

    /// The last SQLite change included in the committed index (0: none).
    pub fn applied_change(&self) -> Result<i64, StoreError> {
        let metas = self.index.load_metas()?;
        Ok(metas
            .payload
            .as_deref()
            .and_then(|p| p.strip_prefix("change:"))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0))
    }

    /// Chunks in the committed index, as this process's reader sees them.
    pub fn num_docs(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    pub fn reload(&self) -> Result<(), StoreError> {
        self.reader.reload()?;
        Ok(())
    }

    pub fn add(&self, writer: &IndexWriter<TantivyDocument>, d: &WordDoc<'_>) -> Result<(), StoreError> {
        let f = self.fields;
        let mut doc = TantivyDocument::default();
        doc.add_text(f.chunk_id, d.chunk_id);
        doc.add_text(f.document_id, d.document_id);
        doc.add_text(f.collection, d.collection);
        let context = d.context.filter(|c| !c.is_empty());
        match f.language {
            Some(language) => {
                let code = d.language.filter(|c| !c.is_empty()).unwrap_or(NO_LANGUAGE);
                doc.add_text(language, code);
                let mut a = analyzer_for(stemmer_language(Some(code)));
                doc.add_pre_tokenized_text(f.title, pre_tokenized(&mut a, d.title));
                doc.add_pre_tokenized_text(f.heading, pre_tokenized(&mut a, d.heading));
                doc.add_pre_tokenized_text(f.body, pre_tokenized(&mut a, d.body));
                if let Some(context) = context {
                    doc.add_pre_tokenized_text(f.body, pre_tokenized(&mut a, context));
                }
            }
            // An index written before stemming: as it was written.
            None => {
                doc.add_text(f.title, d.title);
                doc.add_text(f.heading, d.heading);
                doc.add_text(f.body, d.body);
                if let Some(context) = context {
                    doc.add_text(f.body, context);
                }
            }
        }
        writer.add_document(doc)?;
        Ok(())
    }

    pub fn delete_document(&self, writer: &IndexWriter<TantivyDocument>, document_id: &str) {
        writer.delete_term(Term::from_field_text(self.fields.document_id, document_id));
    }

    /// Commits everything added since the last commit, recording `change`,
    /// durably: tantivy syncs the new segment files and meta.json's content
    /// but not the directory after renaming meta.json into place, so the
    /// directory is synced here.
    pub fn commit(&self, writer: &mut IndexWriter<TantivyDocument>, change: i64) -> Result<(), StoreError> {
        let mut prepared = writer.prepare_commit()?;
        prepared.set_payload(&format!("change:{change}"));
        prepared.commit()?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        self.reader.reload()?;
        Ok(())
    }

    /// BM25 over body, heading path and title; returns (chunk id, score).
    pub fn search(
        &self,
        query: &str,
        collection: Option<&str>,
        documents: Option<&[String]>,
        limit: usize,
        title_boost: f32,
        heading_boost: f32,
    ) -> Result<Vec<(String, f32)>, StoreError> {
        let f = self.fields;
        let terms = self.query_terms(query)?;
        if terms.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let mut should: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for t in &terms {
            for (field, boost) in [(f.body, 1.0), (f.heading, heading_boost), (f.title, title_boost)] {
                if boost <= 0.0 {
                    continue;
                }
                let q = TermQuery::new(Term::from_field_text(field, t), IndexRecordOption::WithFreqs);
                should.push((Occur::Should, Box::new(BoostQuery::new(Box::new(q), boost))));
            }
        }
        let words: Box<dyn Query> = Box::new(BooleanQuery::new(should));
        // Filters score nothing: constant-score clauses with weight 0.
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = vec![(Occur::Must, words)];
        if let Some(c) = collection {
            let filter = TermQuery::new(Term::from_field_text(f.collection, c), IndexRecordOption::Basic);
            clauses.push((Occur::Must, Box::new(ConstScoreQuery::new(Box::new(filter), 0.0))));
        }
        if let Some(ids) = documents {
            let any: Vec<(Occur, Box<dyn Query>)> = ids
                .iter()
                .map(|id| {
                    let q =
                        TermQuery::new(Term::from_field_text(f.document_id, id), IndexRecordOption::Basic);
                    (Occur::Should, Box::new(q) as Box<dyn Query>)
                })
                .collect();
            clauses
                .push((Occur::Must, Box::new(ConstScoreQuery::new(Box::new(BooleanQuery::new(any)), 0.0))));
        }
        let query: Box<dyn Query> = if clauses.len() == 1 {
            clauses.pop().expect("one clause").1
        } else {
            Box::new(BooleanQuery::new(clauses))
        };
        let searcher = self.reader.searcher();
        let top = searcher.search(&query, &TopDocs::with_limit(limit).order_by_score())?;
        let mut out = Vec::with_capacity(top.len());
        for (score, address) in top {
            let doc: TantivyDocument = searcher.doc(address)?;
            if let Some(id) = doc.get_first(f.chunk_id).and_then(|v| v.as_str()) {
                out.push((id.to_string(), score));
            }
        }
        Ok(out)
    }
}

/// Removes everything in an index folder (an index of an older format,
/// replaced; the writer lock was free a moment before).
fn clear_dir(dir: &Path) -> Result<(), StoreError> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// Splits text into words (runs of letters, digits and `_`) and splits each
/// identifier into its parts as well: `DiffExecutor` and `diff_executor` give
/// `diffexecutor`, `diff` and `executor`, so a search for any of them finds
/// both spellings. `HTTPServer` gives `httpserver`, `http`, `server`.
#[derive(Clone, Default)]
pub struct CodeTokenizer {
    tokens: Vec<Token>,
}

pub struct CodeTokenStream<'a> {
    tokens: &'a mut Vec<Token>,
    next: usize,
}

impl Tokenizer for CodeTokenizer {
    type TokenStream<'a> = CodeTokenStream<'a>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> CodeTokenStream<'a> {
        self.tokens.clear();
        let mut position = 0usize;
        let mut word_start: Option<usize> = None;
        for (i, c) in text.char_indices().chain(std::iter::once((text.len(), ' '))) {
            let in_word = i < text.len() && (c.is_alphanumeric() || c == '_');
            match (in_word, word_start) {
                (true, None) => word_start = Some(i),
                (false, Some(s)) => {
                    position = push_word(&mut self.tokens, text, s, i, position);
                    word_start = None;
                }
                _ => {}
            }
        }
        CodeTokenStream { tokens: &mut self.tokens, next: 0 }
    }
}

/// Emits a word and its identifier parts; returns the next free position.
fn push_word(tokens: &mut Vec<Token>, text: &str, start: usize, end: usize, position: usize) -> usize {
    let word = &text[start..end];
    let parts = identifier_parts(word);
    let token = |from: usize, to: usize, text: String, position: usize| Token {
        offset_from: from,
        offset_to: to,
        position,
        text,
        position_length: 1,
    };
    match parts.len() {
        0 => position,
        1 => {
            let (a, b) = parts[0];
            tokens.push(token(start + a, start + b, word[a..b].to_string(), position));
            position + 1
        }
        n => {
            let joined: String = word.chars().filter(|&c| c != '_').collect();
            tokens.push(token(start, end, joined, position));
            for (k, &(a, b)) in parts.iter().enumerate() {
                tokens.push(token(start + a, start + b, word[a..b].to_string(), position + k));
            }
            position + n
        }
    }
}

/// Byte ranges of an identifier's parts: split at `_`, at lower→upper case
/// changes, and before the last capital of an acronym followed by lower case.
fn identifier_parts(word: &str) -> Vec<(usize, usize)> {
    let chars: Vec<(usize, char)> = word.char_indices().collect();
    let mut parts = Vec::new();
    let mut start: Option<usize> = None;
    for (k, &(i, c)) in chars.iter().enumerate() {
        if c == '_' {
            if let Some(s) = start.take() {
                parts.push((s, i));
            }
            continue;
        }
        if let Some(s) = start {
            let prev = chars[k - 1].1;
            let next = chars.get(k + 1).map(|&(_, n)| n);
            let boundary = (prev.is_lowercase() && c.is_uppercase())
                || (prev.is_uppercase() && c.is_uppercase() && next.is_some_and(char::is_lowercase));
            if boundary {
                parts.push((s, i));
                start = Some(i);
            }
        } else {
            start = Some(i);
        }
    }
    if let Some(s) = start {
        parts.push((s, word.len()));
    }
    parts
}

impl TokenStream for CodeTokenStream<'_> {
    fn advance(&mut self) -> bool {
        self.next += 1;
        self.next <= self.tokens.len()
    }

    fn token(&self) -> &Token {
        &self.tokens[self.next - 1]
    }

    fn token_mut(&mut self) -> &mut Token {
        &mut self.tokens[self.next - 1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_split_into_parts() {
        assert_eq!(tokens("DiffExecutor"), ["diffexecutor", "diff", "executor"]);
        assert_eq!(tokens("diff_executor"), ["diffexecutor", "diff", "executor"]);
        assert_eq!(tokens("HTTPServer v2"), ["httpserver", "http", "server", "v2"]);
        assert_eq!(tokens("Ünïcode café, x"), ["unicode", "cafe", "x"]);
        assert_eq!(tokens("__init__"), ["init"]);
        assert!(tokens(" ,.; ").is_empty());
    }

    /// Highlights are character offsets of the words the index would match:
    /// case and accents folded, identifier parts found, nothing else.
    #[test]
    fn highlights_are_character_ranges_of_the_query_words() {
        let text = "Ünïcode CAFÉ: the DiffExecutor runs café-side; cafeteria is not café.";
        let mut h = Highlighter::new("cafe executor");
        let ranges = h.ranges(text, None);
        let chars: Vec<char> = text.chars().collect();
        let shown: Vec<String> = ranges.iter().map(|[a, b]| chars[*a..*b].iter().collect()).collect();
        assert_eq!(shown, ["CAFÉ", "Executor", "café", "café"]);
        // The whole identifier when the query names it, one range for touching parts.
        let mut h = Highlighter::new("diff executor");
        let ranges = h.ranges(text, None);
        let shown: Vec<String> = ranges.iter().map(|[a, b]| chars[*a..*b].iter().collect()).collect();
        assert_eq!(shown, ["DiffExecutor"]);
        assert!(Highlighter::new(" ,.; ").ranges(text, None).is_empty());
        assert!(Highlighter::new("zebra").ranges(text, None).is_empty());
    }

    /// In a text of a language with a stemmer, a query's word marks the
    /// forms of it the index matches (stemmed for that language), in
    /// English, German (stemmed with its umlauts, then folded) and Dutch;
    /// unknown languages are matched unstemmed. One highlighter serves hits
    /// of several languages.
    #[test]
    fn highlights_follow_the_stemming_of_the_texts_language() {
        let shown = |h: &mut Highlighter, text: &str, language: Option<&str>| -> Vec<String> {
            let chars: Vec<char> = text.chars().collect();
            h.ranges(text, language).iter().map(|[a, b]| chars[*a..*b].iter().collect()).collect()
        };
        let mut h = Highlighter::new("running connections");
        let english = "She runs; the connection was running, then connected. A runner ran.";
        assert_eq!(shown(&mut h, english, Some("eng")), ["runs", "connection", "running", "connected"]);
        assert_eq!(shown(&mut h, english, None), ["running"]);
        assert_eq!(shown(&mut h, english, Some("xyz")), ["running"]);
        let mut h = Highlighter::new("Haus Krieg");
        let german = "Die Häuser des Krieges; ein Haus.";
        assert_eq!(shown(&mut h, german, Some("deu")), ["Häuser", "Krieges", "Haus"]);
        assert_eq!(shown(&mut h, german, None), ["Haus"]);
        let mut h = Highlighter::new("werken vragen");
        let dutch = "Zij werkt; wij werken aan het werk en een vraag.";
        assert_eq!(shown(&mut h, dutch, Some("nld")), ["werkt", "werken", "werk", "vraag"]);
    }
}
