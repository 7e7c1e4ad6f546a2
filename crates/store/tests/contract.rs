//! One contract for both `Store` backends: every test here runs against the
//! embedded store (a fresh data directory) and against PostgreSQL (a fresh
//! schema in the database `DATAFACTORY_TEST_POSTGRES` names; see
//! scripts/start-test-postgres.sh). Without that variable the PostgreSQL
//! runs fail under `CI=true` and are reported as not run otherwise.

use datafactory_chunk::Chunker;
use datafactory_core::config::{ChunkingConfig, FusionMethod, StoreConfig};
use datafactory_core::{
    chunk_id, document_id, Chunk, Document, Embedding, Format, HeuristicTokenCounter, Section,
};
use datafactory_store::{
    CommitOutcome, DocumentKey, DocumentQuery, SearchFilter, SearchMode, SearchRequest, Store, StoreError,
    VectorOptions, WordQuery,
};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where a test's store lives; opening it again gives the same store.
#[derive(Clone)]
enum Place {
    Embedded(PathBuf),
    Postgres { url: String, schema: String },
}

impl Place {
    fn open(&self) -> Store {
        match self {
            Place::Embedded(dir) => Store::open(dir).unwrap(),
            Place::Postgres { url, schema } => Store::open_postgres(&StoreConfig {
                backend: "postgres".into(),
                url: url.clone(),
                schema: schema.clone(),
                pool_size: 4,
                ..StoreConfig::default()
            })
            .unwrap(),
        }
    }

    /// As environment variables, for a child process.
    fn to_env(&self) -> Vec<(&'static str, String)> {
        match self {
            Place::Embedded(dir) => vec![("CONTRACT_CHILD_DIR", dir.display().to_string())],
            Place::Postgres { url, schema } => {
                vec![("CONTRACT_CHILD_URL", url.clone()), ("CONTRACT_CHILD_SCHEMA", schema.clone())]
            }
        }
    }

    fn from_env() -> Option<Place> {
        if let Ok(dir) = std::env::var("CONTRACT_CHILD_DIR") {
            return Some(Place::Embedded(dir.into()));
        }
        Some(Place::Postgres {
            url: std::env::var("CONTRACT_CHILD_URL").ok()?,
            schema: std::env::var("CONTRACT_CHILD_SCHEMA").ok()?,
        })
    }
}

/// A fresh place for test `name`: a temporary directory (kept alive by the
/// returned guard), or a new PostgreSQL schema. `None`: PostgreSQL is not
/// configured and this is not CI.
fn fresh(backend: &str, name: &str) -> Option<(Place, Option<tempfile::TempDir>)> {
    match backend {
        "embedded" => {
            let dir = tempfile::tempdir().unwrap();
            Some((Place::Embedded(dir.path().join("data")), Some(dir)))
        }
        _ => {
            let url = match std::env::var("DATAFACTORY_TEST_POSTGRES") {
                Ok(u) if !u.is_empty() => u,
                _ => {
                    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                        panic!(
                            "DATAFACTORY_TEST_POSTGRES is not set: under CI the PostgreSQL contract tests must run \
                             (eval \"$(scripts/start-test-postgres.sh)\")"
                        );
                    }
                    eprintln!("{name}: not run on PostgreSQL (set DATAFACTORY_TEST_POSTGRES; see scripts/start-test-postgres.sh)");
                    return None;
                }
            };
            let schema = format!("contract_{name}");
            let mut client = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
            client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).unwrap();
            Some((Place::Postgres { url, schema }, None))
        }
    }
}

/// Declares one test per backend for each contract function.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(#[test] fn $name() { if let Some((place, _guard)) = super::fresh("embedded", stringify!($name)) { super::$name(&place) } })*
        }
        mod postgres {
            $(#[test] fn $name() { if let Some((place, _guard)) = super::fresh("postgres", stringify!($name)) { super::$name(&place) } })*
        }
    };
}

contract!(
    commit_search_replace_delete,
    a_failed_commit_leaves_the_earlier_version,
    reingest_is_unchanged_or_replaced,
    search_modes_and_filters,
    vectors_never_mix_models,
    jobs_and_llm_answers,
    consistent_after_a_killed_writer,
    listings_for_the_console,
    words_are_stemmed_by_language,
    long_chunks_score_by_their_best_window,
    duplicates_collapse_across_documents,
);

// ---- fixtures ----

fn document(title: &str, body: &str) -> Document {
    Document {
        title: title.to_string(),
        format: Format::Text,
        text: body.to_string(),
        sections: vec![Section {
            heading_path: vec!["Intro".into()],
            start: 0,
            end: body.chars().count(),
            page: None,
        }],
        metadata: Default::default(),
        external_id: None,
    }
}

fn chunker() -> Chunker {
    Chunker::new(&ChunkingConfig { max_tokens: 32, overlap_tokens: 0 }, Arc::new(HeuristicTokenCounter))
}

fn key(collection: &str, source: &str, body: &str, pipeline: &str) -> DocumentKey {
    DocumentKey {
        id: document_id(collection, source),
        collection: collection.into(),
        source: source.into(),
        content_hash: datafactory_core::content_hash(body.as_bytes()),
        pipeline: pipeline.into(),
        byte_size: body.len() as u64,
    }
}

fn put(store: &Store, collection: &str, source: &str, body: &str) -> CommitOutcome {
    let doc = document(source, body);
    let c = chunker();
    let chunks = c.chunk(&doc);
    store.commit_document(&key(collection, source, body, &c.fingerprint()), &doc, &chunks, None).unwrap()
}

fn words(store: &Store, q: &str, collection: Option<&str>) -> Vec<String> {
    store
        .search_words(&WordQuery { text: q, collection, top_k: 10, title_boost: 0.5, heading_boost: 0.8 })
        .unwrap()
        .into_iter()
        .map(|h| h.source)
        .collect()
}

const DIM: usize = 8;

fn vector_options(model: &str) -> VectorOptions {
    VectorOptions {
        model: model.into(),
        dimensions: DIM,
        quantization: "f16".into(),
        connectivity: 16,
        expansion_add: 64,
        expansion_search: 32,
        exact_below: 1000,
    }
}

/// A unit vector mostly along `axis`, tilted by `tilt` towards the next axis
/// (so that no two fixtures tie).
fn vector(axis: usize, tilt: f32) -> Vec<f32> {
    let mut v = [0.01f32; DIM];
    v[axis % DIM] = 1.0;
    v[(axis + 1) % DIM] += tilt;
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}

/// A one-chunk document with a dense vector along `axis` and sparse weights
/// on tokens `axis + 100` (and `200 + i` to rank them).
fn put_vec(store: &Store, collection: &str, source: &str, body: &str, axis: usize, i: usize) {
    let mut doc = document(source, body);
    doc.metadata.insert("axis".into(), serde_json::json!(axis));
    let chunks = vec![Chunk {
        ordinal: 0,
        heading_path: vec!["Intro".into()],
        text: body.to_string(),
        start: 0,
        end: body.chars().count(),
        page: None,
        token_count: 4,
        context: None,
    }];
    let e = Embedding {
        dense: vector(axis, i as f32 * 0.05),
        sparse: vec![((axis + 100) as u32, 1.0 + i as f32 * 0.1), ((200 + i) as u32, 0.5)],
    };
    let outcome = store
        .commit_document(&key(collection, source, body, "p"), &doc, &chunks, Some(std::slice::from_ref(&e)))
        .unwrap();
    assert_ne!(outcome, CommitOutcome::Unchanged);
}

fn request<'a>(text: &'a str, e: &'a Embedding, mode: SearchMode) -> SearchRequest<'a> {
    SearchRequest {
        text,
        embedding: Some(e),
        mode,
        collection: None,
        top_k: 5,
        candidates: 50,
        fusion: FusionMethod::Rrf,
        rrf_k: 60.0,
        agreement: false,
        weight_words: 0.3,
        weight_dense: 0.5,
        weight_sparse: 0.2,
        title_boost: 0.5,
        heading_boost: 0.8,
        filter: None,
        collapse: false,
    }
}

// ---- the contract ----

fn commit_search_replace_delete(place: &Place) {
    let store = place.open();
    assert_eq!(put(&store, "c", "a.txt", "The DiffExecutor runs diffs."), CommitOutcome::Added);
    assert_eq!(put(&store, "c", "b.txt", "Apples and pears."), CommitOutcome::Added);
    store.flush().unwrap();
    // Code-aware words: identifier parts find the identifier.
    assert_eq!(words(&store, "executor", None), ["a.txt"]);
    assert_eq!(words(&store, "diff_executor", Some("c")), ["a.txt"]);
    assert!(words(&store, "executor", Some("other")).is_empty());
    let hit = &store
        .search_words(&WordQuery {
            text: "pears",
            collection: None,
            top_k: 10,
            title_boost: 0.5,
            heading_boost: 0.8,
        })
        .unwrap()[0];
    assert_eq!((hit.heading_path.as_slice(), hit.title.as_str()), (&["Intro".to_string()][..], "b.txt"));

    assert_eq!(put(&store, "c", "a.txt", "Now about bananas."), CommitOutcome::Replaced);
    store.flush().unwrap();
    assert!(words(&store, "executor", None).is_empty());
    assert_eq!(words(&store, "bananas", None), ["a.txt"]);
    let listed = store.list_documents(Some("c")).unwrap();
    assert_eq!(
        listed.iter().map(|d| (d.source.as_str(), d.version)).collect::<Vec<_>>(),
        [("a.txt", 2), ("b.txt", 1)]
    );

    let id = document_id("c", "a.txt");
    let detail = store.get_document(&id).unwrap().unwrap();
    assert_eq!(detail.text, "Now about bananas.");
    assert_eq!(detail.chunks.len(), 1);
    assert_eq!(detail.chunks[0].text, "Now about bananas.");
    assert!(store.delete_document(&id).unwrap());
    assert!(!store.delete_document(&id).unwrap());
    store.flush().unwrap();
    assert!(words(&store, "bananas", None).is_empty());
    assert!(store.get_document(&id).unwrap().is_none());
    drop(store);

    // Reopened: the same state.
    let store = place.open();
    let stats = store.stats().unwrap();
    assert!(stats.consistent, "{stats:?}");
    assert_eq!((stats.documents, stats.chunks), (1, 1));
    assert_eq!(stats.collections[0].name, "c");
    assert_eq!(words(&store, "pears", None), ["b.txt"]);
    assert!(store.latest_change().unwrap() >= 4);
}

fn a_failed_commit_leaves_the_earlier_version(place: &Place) {
    let store = place.open();
    put(&store, "c", "a.txt", "The first version speaks of walruses.");
    store.flush().unwrap();
    let id = document_id("c", "a.txt");
    // A second version whose chunks break a constraint midway (two chunks
    // with one ordinal): the whole commit fails, nothing of it is stored.
    let body = "The second version speaks of narwhals. And of belugas too.";
    let doc = document("a.txt", body);
    let mut chunks = chunker().chunk(&doc);
    chunks.push(Chunk { text: "a duplicate ordinal about narwhals".into(), ..chunks[0].clone() });
    let err = store.commit_document(&key("c", "a.txt", body, "p2"), &doc, &chunks, None);
    assert!(err.is_err(), "{err:?}");
    // Embeddings not matching the chunks are refused before any write.
    let e = Embedding { dense: vec![0.0; DIM], sparse: vec![] };
    let err =
        store.commit_document(&key("c", "a.txt", body, "p3"), &doc, &chunks[..1], Some(&[e.clone(), e]));
    assert!(matches!(err, Err(StoreError::Invalid(_))), "{err:?}");
    store.flush().unwrap();
    let detail = store.get_document(&id).unwrap().unwrap();
    assert_eq!(detail.summary.version, 1);
    assert_eq!(detail.text, "The first version speaks of walruses.");
    assert_eq!(detail.chunks.len(), 1);
    assert_eq!(words(&store, "walruses", None), ["a.txt"]);
    assert!(words(&store, "narwhals", None).is_empty());
    assert!(store.stats().unwrap().consistent);
    // The store still takes writes.
    assert_eq!(put(&store, "c", "b.txt", "After the failure: otters."), CommitOutcome::Added);
}

fn reingest_is_unchanged_or_replaced(place: &Place) {
    let store = place.open();
    let body = "Long text about hedgehogs. ".repeat(30);
    let doc = document("h.txt", &body);
    let c = chunker();
    let chunks = c.chunk(&doc);
    assert!(chunks.len() > 3);
    let k = key("c", "h.txt", &body, &c.fingerprint());
    assert_eq!(store.commit_document(&k, &doc, &chunks, None).unwrap(), CommitOutcome::Added);
    assert_eq!(store.commit_document(&k, &doc, &chunks, None).unwrap(), CommitOutcome::Unchanged);
    assert_eq!(
        store.document_fingerprint(&k.id).unwrap(),
        Some((k.content_hash.clone(), k.pipeline.clone()))
    );
    // Another pipeline: replaced, with fewer chunks; none of the old ones is left.
    let k2 = DocumentKey { pipeline: "other".into(), ..k.clone() };
    assert_eq!(store.commit_document(&k2, &doc, &chunks[..2], None).unwrap(), CommitOutcome::Replaced);
    store.flush().unwrap();
    let detail = store.get_document(&k.id).unwrap().unwrap();
    assert_eq!(detail.chunks.len(), 2);
    assert_eq!(detail.summary.version, 2);
    assert_eq!(
        detail.chunks.iter().map(|c| c.id.clone()).collect::<Vec<_>>(),
        chunks[..2].iter().map(|c| chunk_id(&k.id, c.ordinal, &c.text)).collect::<Vec<_>>()
    );
    let stats = store.stats().unwrap();
    assert_eq!(stats.chunks, 2);
    assert_eq!(stats.word_index.chunks, 2);
    assert!(stats.consistent, "{stats:?}");
}

/// Ten one-chunk documents in two collections, each with its own vector.
fn vector_corpus(store: &Store) {
    store.enable_vectors(&vector_options("model-a")).unwrap();
    let topics = ["apples", "pears", "plums", "cherries", "grapes"];
    for i in 0..10 {
        let collection = if i % 2 == 0 { "even" } else { "odd" };
        let body = format!("Notes on {} and orchard number {i}", topics[i % 5]);
        put_vec(store, collection, &format!("{i}.txt"), &body, i % 4, i);
    }
    store.flush().unwrap();
}

fn sources(hits: &[datafactory_store::SearchHit]) -> Vec<String> {
    hits.iter().map(|h| h.source.clone()).collect()
}

fn search_modes_and_filters(place: &Place) {
    let store = place.open();
    vector_corpus(&store);
    let q = Embedding { dense: vector(1, 0.0), sparse: vec![(101, 1.0)] };

    // Dense: the documents along axis 1 (1, 5, 9), nearest first.
    let dense = store.search(&request("", &q, SearchMode::Dense)).unwrap();
    assert_eq!(dense.retrievers, ["dense"]);
    assert_eq!(sources(&dense.hits)[..3], ["1.txt", "5.txt", "9.txt"]);
    assert!(dense.hits[0].scores.dense.unwrap() > 0.99);
    // Sparse: only documents sharing token 101, the highest weight first.
    let sparse = store.search(&request("", &q, SearchMode::Sparse)).unwrap();
    assert_eq!(sources(&sparse.hits), ["9.txt", "5.txt", "1.txt"]);
    assert!((sparse.hits[0].scores.sparse.unwrap() - 1.9).abs() < 1e-4);
    // Words.
    let lexical = store.search(&request("cherries", &q, SearchMode::Lexical)).unwrap();
    let found: BTreeSet<String> = sources(&lexical.hits).into_iter().collect();
    assert_eq!(found, ["3.txt", "8.txt"].map(String::from).into());
    // Hybrid: all three, fused.
    let hybrid = store.search(&request("cherries", &q, SearchMode::Hybrid)).unwrap();
    assert_eq!(hybrid.retrievers, ["words", "dense", "sparse"]);
    let top = &hybrid.hits[0];
    assert!(top.scores.fused.is_some() && top.score == top.scores.fused.unwrap());
    let mut fused: Vec<f32> = hybrid.hits.iter().map(|h| h.score).collect();
    assert!(fused.windows(2).all(|w| w[0] >= w[1]), "{fused:?}");
    fused.clear();

    // A collection, a document filter, a metadata filter.
    let in_odd = store
        .search(&SearchRequest { collection: Some("odd"), ..request("", &q, SearchMode::Dense) })
        .unwrap();
    assert_eq!(sources(&in_odd.hits)[..3], ["1.txt", "5.txt", "9.txt"]);
    assert!(in_odd.hits.iter().all(|h| h.collection == "odd"));
    let filter = SearchFilter { document_ids: vec![document_id("odd", "5.txt")], ..Default::default() };
    let only5 = store
        .search(&SearchRequest { filter: Some(&filter), ..request("orchard", &q, SearchMode::Hybrid) })
        .unwrap();
    assert_eq!(sources(&only5.hits), ["5.txt"]);
    let mut metadata = serde_json::Map::new();
    metadata.insert("axis".into(), serde_json::json!(3));
    let filter = SearchFilter { metadata, ..Default::default() };
    let axis3 = store
        .search(&SearchRequest { filter: Some(&filter), ..request("orchard", &q, SearchMode::Hybrid) })
        .unwrap();
    assert_eq!(
        sources(&axis3.hits).into_iter().collect::<BTreeSet<_>>(),
        ["3.txt", "7.txt"].map(String::from).into()
    );

    // After a delete, no retriever finds the document.
    assert!(store.delete_document(&document_id("odd", "1.txt")).unwrap());
    store.flush().unwrap();
    let hybrid = store.search(&request("orchard", &q, SearchMode::Hybrid)).unwrap();
    assert!(!sources(&hybrid.hits).contains(&"1.txt".to_string()));
    let stats = store.stats().unwrap();
    assert_eq!((stats.documents, stats.embedded_chunks), (9, 9));
    assert!(stats.consistent, "{stats:?}");
}

fn vectors_never_mix_models(place: &Place) {
    let store = place.open();
    store.enable_vectors(&vector_options("model-a")).unwrap();
    put_vec(&store, "c", "a.txt", "alpha", 0, 0);
    drop(store);
    let store = place.open();
    assert_eq!(store.vector_options().map(|o| o.model), Some("model-a".into()));
    let err = store.enable_vectors(&vector_options("model-b")).unwrap_err();
    assert!(matches!(err, StoreError::ModelMismatch { .. }), "{err}");
    store.enable_vectors(&vector_options("model-a")).unwrap();
    assert_eq!(store.stats().unwrap().vector_index.unwrap().vectors, 1);
}

fn jobs_and_llm_answers(place: &Place) {
    let store = place.open();
    let id = store.create_job("ingest", Some("c")).unwrap();
    let job = store.get_job(&id).unwrap().unwrap();
    assert_eq!((job.state.as_str(), job.collection.as_deref()), ("running", Some("c")));
    store.finish_job(&id, "succeeded", &serde_json::json!({"documents": 3})).unwrap();
    let job = store.get_job(&id).unwrap().unwrap();
    assert_eq!(job.state, "succeeded");
    assert_eq!(job.summary["documents"], 3);
    assert!(job.finished_at.is_some());
    assert!(store.get_job("job-none").unwrap().is_none());

    assert_eq!(store.llm_context("d", "c", "m", "t").unwrap(), None);
    let call = serde_json::json!({"endpoint": "http://x"});
    store.save_llm_context("d", "c", "m", "t", "first answer", &call).unwrap();
    store.save_llm_context("d", "c", "m", "t", "second answer", &call).unwrap();
    store.save_llm_context("d", "c", "m", "t2", "other template", &call).unwrap();
    assert_eq!(store.llm_context("d", "c", "m", "t").unwrap().as_deref(), Some("first answer"));
    assert_eq!(store.llm_context_count().unwrap(), 2);
    drop(store);
    assert_eq!(place.open().llm_context("d", "c", "m", "t2").unwrap().as_deref(), Some("other template"));
}

/// What the web console reads: documents a page at a time, filtered by the
/// analysis in their metadata; collections with their counts; the recent
/// jobs; where the query's words are in each hit and each retriever's rank.
fn listings_for_the_console(place: &Place) {
    let store = place.open();
    store.enable_vectors(&vector_options("model-a")).unwrap();
    for (i, (collection, kind, language)) in
        [("a", "manual", "eng"), ("a", "prose", "deu"), ("b", "manual", "eng"), ("b", "legal", "fra")]
            .into_iter()
            .enumerate()
    {
        let body = format!("Ünïcode notes on the Quasar number {i}; quasars shine.");
        let mut doc = document(&format!("{i}.txt"), &body);
        doc.metadata.insert(
            "analysis".into(),
            serde_json::json!({"doc_type": kind, "language": {"code": language, "name": "x"}}),
        );
        let c = chunker();
        let chunks = c.chunk(&doc);
        let e = vec![Embedding { dense: vector(i, 0.0), sparse: vec![] }; chunks.len()];
        store
            .commit_document(&key(collection, &format!("{i}.txt"), &body, "p"), &doc, &chunks, Some(&e))
            .unwrap();
    }
    put(&store, "b", "plain.txt", "No analysis in this one.");
    store.flush().unwrap();

    let page = |q: DocumentQuery<'_>| {
        let p = store.list_documents_page(&q).unwrap();
        (p.documents.iter().map(|d| d.source.clone()).collect::<Vec<_>>(), p.total)
    };
    let all = page(DocumentQuery::default());
    assert_eq!(all.0, ["0.txt", "1.txt", "2.txt", "3.txt", "plain.txt"]);
    assert_eq!(all.1, 5);
    assert_eq!(
        page(DocumentQuery { limit: Some(2), offset: 1, ..Default::default() }),
        (vec!["1.txt".into(), "2.txt".into()], 5)
    );
    assert_eq!(page(DocumentQuery { limit: Some(2), offset: 9, ..Default::default() }), (vec![], 5));
    assert_eq!(page(DocumentQuery { doc_type: Some("manual"), ..Default::default() }).1, 2);
    assert_eq!(
        page(DocumentQuery { doc_type: Some("manual"), collection: Some("b"), ..Default::default() }).0,
        ["2.txt"]
    );
    assert_eq!(page(DocumentQuery { language: Some("fra"), ..Default::default() }).0, ["3.txt"]);
    assert_eq!(page(DocumentQuery { format: Some("text"), ..Default::default() }).1, 5);
    assert_eq!(page(DocumentQuery { format: Some("pdf"), ..Default::default() }).1, 0);
    let listed = store.list_documents(Some("a")).unwrap();
    assert_eq!((listed[1].doc_type.as_deref(), listed[1].language.as_deref()), (Some("prose"), Some("deu")));
    let plain =
        store.list_documents(Some("b")).unwrap().into_iter().find(|d| d.source == "plain.txt").unwrap();
    assert_eq!((plain.doc_type, plain.language), (None, None));

    let collections = store.collections().unwrap();
    let counts: Vec<(String, u64)> = collections.iter().map(|c| (c.name.clone(), c.documents)).collect();
    assert_eq!(counts, [("a".to_string(), 2), ("b".to_string(), 3)]);

    let first = store.create_job("ingest", Some("a")).unwrap();
    std::thread::sleep(Duration::from_millis(5)); // distinct creation times
    let second = store.create_job("ingest", Some("b")).unwrap();
    store.finish_job(&first, "succeeded", &serde_json::json!({})).unwrap();
    let jobs: Vec<String> = store.list_jobs(10).unwrap().into_iter().map(|j| j.id).collect();
    assert_eq!(jobs, [second.clone(), first]);
    assert_eq!(store.list_jobs(1).unwrap()[0].id, second);

    // Highlights: character ranges of the words as analysed (stemmed for
    // each document's language: `quasars` is `quasar` in all three); ranks
    // per retriever. Hits carry their document's language.
    let q = Embedding { dense: vector(2, 0.0), sparse: vec![] };
    let hybrid = store.search(&request("quasar", &q, SearchMode::Hybrid)).unwrap();
    let nearest = hybrid.hits.iter().find(|h| h.source == "2.txt").unwrap();
    assert_eq!(nearest.scores.ranks.dense, Some(1), "{hybrid:?}");
    let mut word_ranks: Vec<u32> = hybrid.hits.iter().map(|h| h.scores.ranks.words.unwrap()).collect();
    word_ranks.sort();
    assert_eq!(word_ranks, [1, 2, 3, 4], "{hybrid:?}");
    for hit in &hybrid.hits {
        let chars: Vec<char> = hit.text.chars().collect();
        let shown: Vec<String> = hit.highlights.iter().map(|[a, b]| chars[*a..*b].iter().collect()).collect();
        if hit.source == "plain.txt" {
            assert!(shown.is_empty());
            assert_eq!(hit.language, None);
        } else {
            assert_eq!(shown, ["Quasar", "quasars"], "{hit:?}");
            assert!(["eng", "deu", "fra"].contains(&hit.language.as_deref().unwrap()), "{hit:?}");
        }
    }
}

/// Chunks per document in the killed-writer test: big enough that the kill
/// often lands inside a commit.
const KILLED_CHUNKS: usize = 150;

fn killed_body(i: usize) -> String {
    (0..KILLED_CHUNKS)
        .map(|k| format!("Paragraph {k} of report {i} mentions uniqmarker{i:04} and beavers.\n\n"))
        .collect()
}

/// The child of `consistent_after_a_killed_writer`: commits documents until
/// it is killed. Does nothing when run as an ordinary test.
#[test]
fn killed_writer_child() {
    let Some(place) = Place::from_env() else { return };
    let store = place.open();
    for i in 0.. {
        let body = killed_body(i);
        let mut doc = document(&format!("r{i}.txt"), &body);
        let chunks = chunker().chunk(&doc);
        doc.metadata.insert("chunks".into(), serde_json::json!(chunks.len()));
        store.commit_document(&key("c", &format!("r{i}.txt"), &body, "p"), &doc, &chunks, None).unwrap();
        if i % 5 == 4 {
            store.flush().unwrap();
        }
    }
}

/// A child process, killed when dropped (also when the test fails).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn consistent_after_a_killed_writer(place: &Place) {
    let mut child = KillOnDrop(
        std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "killed_writer_child", "--nocapture", "--test-threads=1"])
            .envs(place.to_env())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Kill it (SIGKILL) once a few documents are stored.
    let reader = {
        let start = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(20));
            // The child creates the store; open it once it exists.
            let opened = match place {
                Place::Embedded(dir) if !dir.join("datafactory.sqlite3").exists() => None,
                _ => std::panic::catch_unwind(|| place.open()).ok(),
            };
            if let Some(s) = opened {
                if s.list_documents(None).unwrap().len() >= 7 {
                    break s;
                }
            }
            assert!(start.elapsed() < Duration::from_secs(120), "the child stored too little");
            assert!(child.0.try_wait().unwrap().is_none(), "the child ended early");
        }
    };
    drop(reader);
    child.0.kill().unwrap(); // SIGKILL
    child.0.wait().unwrap();

    let store = place.open();
    let docs = store.list_documents(None).unwrap();
    assert!(docs.len() >= 7);
    for d in &docs {
        let detail = store.get_document(&d.id).unwrap().unwrap();
        let expected = detail.metadata["chunks"].as_u64().unwrap();
        assert_eq!(detail.chunks.len() as u64, expected, "{} is not whole", d.source);
        assert_eq!(d.chunks, expected);
        assert_eq!(detail.text, killed_body(d.source[1..d.source.len() - 4].parse().unwrap()));
    }
    let stats = store.stats().unwrap();
    assert!(stats.consistent, "{stats:?}");
    assert_eq!(stats.documents as usize, docs.len());
    assert_eq!(stats.chunks, docs.iter().map(|d| d.chunks).sum::<u64>());
    // Every stored document is found by its own word, and only it.
    for i in 0..docs.len() {
        let found: BTreeSet<String> = words(&store, &format!("uniqmarker{i:04}"), None).into_iter().collect();
        assert_eq!(found, [format!("r{i}.txt")].into(), "uniqmarker{i:04}");
    }
    // The store takes writes again.
    assert_eq!(put(&store, "c", "after.txt", "written after the kill"), CommitOutcome::Added);
}

/// Words are stemmed in their document's language (the analyzer's, in
/// `metadata.analysis.language.code`) and accent-folded; a query finds the
/// inflected forms in every language the store holds. Identifiers keep their
/// parts.
fn words_are_stemmed_by_language(place: &Place) {
    let store = place.open();
    for (source, body, language) in [
        ("en.txt", "The committee reviewed several claims about running engines.", "eng"),
        ("de.txt", "Die Häuser der Stadt wurden im Krieg zerstört.", "deu"),
        ("nl.txt", "De fietsen staan bij de boerderijen.", "nld"),
        ("code.txt", "Call getUserNames from the DiffExecutor.", "zzz"),
    ] {
        let mut doc = document(source, body);
        doc.metadata.insert("analysis".into(), serde_json::json!({ "language": { "code": language } }));
        let c = chunker();
        let chunks = c.chunk(&doc);
        store.commit_document(&key("c", source, body, &c.fingerprint()), &doc, &chunks, None).unwrap();
    }
    store.flush().unwrap();
    assert_eq!(words(&store, "claim", None), ["en.txt"]);
    assert_eq!(words(&store, "runs", None), ["en.txt"]);
    assert_eq!(words(&store, "Haus", None), ["de.txt"]);
    assert_eq!(words(&store, "Krieges", None), ["de.txt"]);
    assert_eq!(words(&store, "boerderij", None), ["nl.txt"]);
    assert_eq!(words(&store, "executor", None), ["code.txt"]);
    assert_eq!(words(&store, "names", None), ["code.txt"]);
}

/// On the same data, the embedded store and PostgreSQL give the same
/// candidates and, from the same ranks, the same fused scores. (Word scores
/// differ: BM25 there, ts_rank_cd here; so words are compared as sets.)
#[test]
fn both_backends_fuse_the_same_candidates() {
    let Some((pg, _)) = fresh("postgres", "same_candidates") else { return };
    let (embedded, _guard) = fresh("embedded", "same_candidates").unwrap();
    let (a, b) = (embedded.open(), pg.open());
    vector_corpus(&a);
    vector_corpus(&b);
    for (text, axis) in [("orchard", 1), ("cherries plums", 2), ("apples", 3), ("grapes orchard 7", 0)] {
        let q = Embedding { dense: vector(axis, 0.02), sparse: vec![((axis + 100) as u32, 1.0), (203, 0.5)] };
        // Dense and sparse fused: the same hits, the same fused scores.
        let req = SearchRequest { weight_words: 0.0, top_k: 10, ..request(text, &q, SearchMode::Hybrid) };
        let (x, y) = (a.search(&req).unwrap(), b.search(&req).unwrap());
        assert_eq!(x.retrievers, y.retrievers);
        assert_eq!(sources(&x.hits), sources(&y.hits), "{text}");
        for (h, k) in x.hits.iter().zip(&y.hits) {
            assert_eq!(h.scores.fused, k.scores.fused, "{text}");
            assert!((h.scores.dense.unwrap_or(0.0) - k.scores.dense.unwrap_or(0.0)).abs() < 2e-3);
            assert!((h.scores.sparse.unwrap_or(0.0) - k.scores.sparse.unwrap_or(0.0)).abs() < 1e-4);
        }
        // Every score fusion: the same hits, fused scores equal but for the
        // storage's rounding of vectors (f16 in both, computed apart).
        for fusion in [FusionMethod::MinMax, FusionMethod::ZScore, FusionMethod::Dbsf] {
            let req = SearchRequest {
                weight_words: 0.0,
                top_k: 10,
                fusion,
                ..request(text, &q, SearchMode::Hybrid)
            };
            let (x, y) = (a.search(&req).unwrap(), b.search(&req).unwrap());
            assert_eq!(sources(&x.hits), sources(&y.hits), "{text} {fusion:?}");
            for (h, k) in x.hits.iter().zip(&y.hits) {
                let (f, g) = (h.scores.fused.unwrap(), k.scores.fused.unwrap());
                assert!((f - g).abs() < 2e-2, "{text} {fusion:?}: {f} vs {g}");
            }
        }
        // Words: the same matches.
        let req = SearchRequest { top_k: 20, ..request(text, &q, SearchMode::Lexical) };
        let set = |s: &Store| sources(&s.search(&req).unwrap().hits).into_iter().collect::<BTreeSet<_>>();
        assert_eq!(set(&a), set(&b), "{text}");
    }
}

/// `sslmode=require` against a server without TLS: no connection (never a
/// silent fall back to plain text); `prefer` (the default) connects.
#[test]
fn postgres_tls_is_required_when_asked() {
    let Some((Place::Postgres { url, schema }, _)) = fresh("postgres", "tls") else { return };
    let settings = |url: String| StoreConfig {
        backend: "postgres".into(),
        url,
        schema: schema.clone(),
        ..StoreConfig::default()
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    let err = Store::open_postgres(&settings(format!("{url}{sep}sslmode=require"))).err().expect("refused");
    assert!(err.to_string().contains("TLS"), "{err}");
    Store::open_postgres(&settings(format!("{url}{sep}sslmode=prefer"))).unwrap();
    // A CA file that is not a certificate is refused by name.
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "not a certificate").unwrap();
    let err = Store::open_postgres(&StoreConfig {
        ca_file: ca.display().to_string(),
        ..settings(format!("{url}{sep}sslmode=require"))
    })
    .err()
    .expect("refused");
    assert!(err.to_string().contains("ca_file") || err.to_string().contains("TLS"), "{err}");
}

/// A one-chunk document whose chunk has one vector per window.
fn put_windows(store: &Store, source: &str, body: &str, windows: Vec<Embedding>) {
    let doc = document(source, body);
    let chunks = vec![Chunk {
        ordinal: 0,
        heading_path: vec![],
        text: body.to_string(),
        start: 0,
        end: body.chars().count(),
        page: None,
        token_count: 4,
        context: None,
    }];
    store.commit_windows(&key("c", source, body, "p"), &doc, &chunks, Some(&[windows])).unwrap();
}

fn long_chunks_score_by_their_best_window(place: &Place) {
    let store = place.open();
    store.enable_vectors(&vector_options("model-a")).unwrap();
    let window = |axis: usize, tilt: f32, token: u32, weight: f32| Embedding {
        dense: vector(axis, tilt),
        sparse: vec![(token, weight)],
    };
    // long.txt: its first window along axis 0, its second along axis 3.
    put_windows(&store, "long.txt", "a long chunk", vec![window(0, 0.0, 500, 1.0), window(3, 0.0, 501, 2.0)]);
    put_windows(&store, "near.txt", "near axis three", vec![window(3, 0.3, 501, 1.5)]);
    put_windows(&store, "other.txt", "something else", vec![window(1, 0.0, 502, 1.0)]);
    store.flush().unwrap();
    let stats = store.stats().unwrap();
    assert_eq!((stats.embedded_chunks, stats.vector_index.as_ref().unwrap().vectors), (3, 4));
    assert!(stats.consistent, "{stats:?}");

    // Found by its second window, once, with that window's score.
    let q = Embedding { dense: vector(3, 0.0), sparse: vec![(501, 1.0)] };
    let dense = store.search(&SearchRequest { top_k: 3, ..request("", &q, SearchMode::Dense) }).unwrap();
    assert_eq!(sources(&dense.hits), ["long.txt", "near.txt", "other.txt"]);
    assert!(dense.hits[0].scores.dense.unwrap() > 0.99);
    // By its first window too.
    let q0 = Embedding { dense: vector(0, 0.0), sparse: vec![(500, 1.0)] };
    let dense = store.search(&SearchRequest { top_k: 1, ..request("", &q0, SearchMode::Dense) }).unwrap();
    assert_eq!(sources(&dense.hits), ["long.txt"]);
    // Sparse: the best window's product.
    let sparse = store.search(&request("", &q, SearchMode::Sparse)).unwrap();
    assert_eq!(sources(&sparse.hits), ["long.txt", "near.txt"]);
    assert!((sparse.hits[0].scores.sparse.unwrap() - 2.0).abs() < 1e-3, "{:?}", sparse.hits[0].scores);

    // Windows do not take the places of other chunks: five chunks of six
    // windows each, all near the query; top 3 are three chunks.
    for i in 0..5 {
        let windows = (0..6).map(|w| window(3, 0.01 * (i * 6 + w) as f32 + 0.4, 600, 1.0)).collect();
        put_windows(&store, &format!("many{i}.txt"), &format!("many {i}"), windows);
    }
    store.flush().unwrap();
    let q_many = Embedding { dense: vector(3, 0.4), sparse: vec![(600, 1.0)] };
    for mode in [SearchMode::Dense, SearchMode::Sparse] {
        let hits = store.search(&SearchRequest { top_k: 3, ..request("", &q_many, mode) }).unwrap().hits;
        let distinct: BTreeSet<String> = sources(&hits).into_iter().collect();
        assert_eq!((hits.len(), distinct.len()), (3, 3), "{mode:?}: {:?}", sources(&hits));
    }

    // Deleted with all its windows; a reopened store still finds by windows.
    assert!(store.delete_document(&document_id("c", "long.txt")).unwrap());
    store.flush().unwrap();
    let stats = store.stats().unwrap();
    assert_eq!((stats.embedded_chunks, stats.vector_index.as_ref().unwrap().vectors), (7, 2 + 30));
    assert!(stats.consistent, "{stats:?}");
    drop(store);
    let store = place.open();
    let dense = store.search(&SearchRequest { top_k: 1, ..request("", &q, SearchMode::Dense) }).unwrap();
    assert_eq!(sources(&dense.hits), ["near.txt"]);
    let dense = store.search(&SearchRequest { top_k: 1, ..request("", &q_many, SearchMode::Dense) }).unwrap();
    assert!(sources(&dense.hits)[0].starts_with("many"));
    assert!(store.stats().unwrap().consistent);
}

fn duplicates_collapse_across_documents(place: &Place) {
    let store = place.open();
    let passage = "The borrow checker enforces the ownership rules at compile time.";
    put(&store, "book", "ch04.html", passage);
    // The same passage, other white space and case.
    put(&store, "book", "print.html", "the  BORROW checker enforces\nthe ownership rules at compile time.");
    put(&store, "book", "ch10.html", "Lifetimes make sure that every reference is valid: a borrow may not outlive its owner, whatever the scope.");
    put(&store, "other", "copy.txt", passage);
    store.flush().unwrap();
    let q = Embedding::default();
    let words = |collapse: bool, collection: Option<&'static str>, top_k: usize| {
        let req = SearchRequest {
            collapse,
            collection,
            top_k,
            ..request("borrow checker", &q, SearchMode::Lexical)
        };
        store.search(&req).unwrap().hits
    };

    // Without collapsing, copies take the first places.
    let plain = words(false, None, 3);
    assert_eq!(plain.len(), 3);
    assert!(plain.iter().all(|h| h.duplicates.is_empty() && h.duplicate_count == 0));
    assert!(!sources(&plain).contains(&"ch10.html".to_string()), "{:?}", sources(&plain));

    // Collapsed: the passage once, naming the others; the next passage fills the second place.
    let hits = words(true, None, 2);
    assert_eq!(hits.len(), 2, "{:?}", sources(&hits));
    assert_eq!(hits[1].source, "ch10.html");
    let top = &hits[0];
    assert_eq!(top.duplicate_count, 2);
    let mut holders: Vec<&str> = top.duplicates.iter().map(|d| d.source.as_str()).collect();
    holders.push(&top.source);
    holders.sort();
    assert_eq!(holders, ["ch04.html", "copy.txt", "print.html"]);
    for d in &top.duplicates {
        assert_ne!(d.chunk_id, top.chunk_id);
        assert_eq!((d.start, d.end > 0), (0, true));
        assert!(!d.title.is_empty() && !d.document_id.is_empty());
    }
    assert!(hits[1].duplicates.is_empty());

    // In one collection, only its copies are named.
    let in_book = words(true, Some("book"), 5);
    assert_eq!(in_book.len(), 2);
    assert_eq!(in_book[0].duplicate_count, 1);
    assert!(in_book[0].duplicates.iter().all(|d| d.source != "copy.txt"));

    // Hybrid and a document filter go through the same collapse.
    let filter = SearchFilter {
        document_ids: vec![document_id("book", "ch04.html"), document_id("other", "copy.txt")],
        ..Default::default()
    };
    let req = SearchRequest {
        collapse: true,
        filter: Some(&filter),
        ..request("borrow checker", &q, SearchMode::Hybrid)
    };
    let filtered = store.search(&req).unwrap().hits;
    assert_eq!(filtered.len(), 1, "{:?}", sources(&filtered));
    assert_eq!(filtered[0].duplicate_count, 1);

    // Deleting a copy: no longer named.
    assert!(store.delete_document(&document_id("book", "print.html")).unwrap());
    store.flush().unwrap();
    let hits = words(true, None, 2);
    assert_eq!(hits[0].duplicate_count, 1);
}
