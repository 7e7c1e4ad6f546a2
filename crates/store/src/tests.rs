use super::EmbeddedStore as Store;
use super::*;
use datafactory_chunk::Chunker;
use datafactory_core::config::ChunkingConfig;
use datafactory_core::{document_id, HeuristicTokenCounter};
use std::sync::Arc;

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

fn put(store: &Store, collection: &str, source: &str, body: &str) -> CommitOutcome {
    let doc = document(source, body);
    let chunker =
        Chunker::new(&ChunkingConfig { max_tokens: 32, overlap_tokens: 0 }, Arc::new(HeuristicTokenCounter));
    let chunks = chunker.chunk(&doc);
    let key = DocumentKey {
        id: document_id(collection, source),
        collection: collection.into(),
        source: source.into(),
        content_hash: datafactory_core::content_hash(body.as_bytes()),
        pipeline: chunker.fingerprint(),
        byte_size: body.len() as u64,
    };
    store.commit_document(&key, &doc, &chunks, None).unwrap()
}

fn search(store: &Store, q: &str, collection: Option<&str>) -> Vec<SearchHit> {
    store
        .search_words(&WordQuery { text: q, collection, top_k: 10, title_boost: 0.5, heading_boost: 0.8 })
        .unwrap()
}

#[test]
fn commit_search_replace_delete() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(put(&store, "c", "a.txt", "The DiffExecutor runs diffs."), CommitOutcome::Added);
    assert_eq!(put(&store, "c", "b.txt", "Apples and pears."), CommitOutcome::Added);
    // Not searchable before the flush, searchable after.
    assert!(search(&store, "executor", None).is_empty());
    store.flush().unwrap();
    let hits = search(&store, "executor", None);
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].source, "a.txt");
    assert_eq!(hits[0].heading_path, vec!["Intro"]);
    assert_eq!(search(&store, "diff_executor", Some("c")).len(), 1);
    // A store without vectors: lexical search has nothing to explain, hybrid does.
    let q = Embedding { dense: vec![], sparse: vec![] };
    assert!(store.search(&request("executor", &q, SearchMode::Lexical, None)).unwrap().notes.is_empty());
    let h = store.search(&request("executor", &q, SearchMode::Hybrid, None)).unwrap();
    assert_eq!(h.retrievers, ["words"]);
    assert!(h.notes[0].contains("no vectors"), "{:?}", h.notes);
    assert!(search(&store, "executor", Some("other")).is_empty());

    assert_eq!(put(&store, "c", "a.txt", "The DiffExecutor runs diffs."), CommitOutcome::Unchanged);
    assert_eq!(put(&store, "c", "a.txt", "Now about bananas."), CommitOutcome::Replaced);
    store.flush().unwrap();
    assert!(search(&store, "executor", None).is_empty());
    assert_eq!(search(&store, "bananas", None).len(), 1);
    let listed = store.list_documents(Some("c")).unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].version, 2);

    let id = document_id("c", "a.txt");
    assert!(store.delete_document(&id).unwrap());
    assert!(!store.delete_document(&id).unwrap());
    assert!(search(&store, "bananas", None).is_empty());
    assert!(store.get_document(&id).unwrap().is_none());
    let stats = store.stats().unwrap();
    assert!(stats.consistent, "{stats:?}");
    assert_eq!(stats.documents, 1);
}

#[test]
fn unflushed_changes_are_replayed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    put(&store, "c", "one.txt", "first zebra document");
    store.flush().unwrap();
    put(&store, "c", "two.txt", "second zebra document");
    put(&store, "c", "one.txt", "first giraffe document");
    store.crash();

    let store = Store::open(dir.path()).unwrap();
    let stats = store.stats().unwrap();
    assert!(stats.consistent, "{stats:?}");
    assert_eq!(stats.word_index.chunks, 2);
    let hits: Vec<_> = search(&store, "zebra", None).into_iter().map(|h| h.source).collect();
    assert_eq!(hits, vec!["two.txt"]);
    assert_eq!(search(&store, "giraffe", None).len(), 1);
}

#[test]
fn lost_word_index_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        for i in 0..5 {
            put(&store, "c", &format!("{i}.txt"), &format!("document number {i} about otters"));
        }
    }
    std::fs::remove_dir_all(dir.path().join("words")).unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert!(store.stats().unwrap().consistent);
    assert_eq!(search(&store, "otters", None).len(), 5);
}

#[test]
fn second_writer_is_refused_readers_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let a = Store::open(dir.path()).unwrap();
    put(&a, "c", "a.txt", "walrus");
    a.flush().unwrap();
    let b = Store::open(dir.path()).unwrap();
    assert_eq!(search(&b, "walrus", None).len(), 1);
    let doc = document("x", "y");
    let key = DocumentKey {
        id: "x".into(),
        collection: "c".into(),
        source: "x".into(),
        content_hash: "h".into(),
        pipeline: "p".into(),
        byte_size: 1,
    };
    assert!(matches!(b.commit_document(&key, &doc, &[], None), Err(StoreError::Busy)));
}

#[test]
fn bad_collection_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let doc = document("x", "y");
    let key = DocumentKey {
        id: "x".into(),
        collection: "no spaces".into(),
        source: "x".into(),
        content_hash: "h".into(),
        pipeline: "p".into(),
        byte_size: 1,
    };
    let e = store.commit_document(&key, &doc, &[], None).unwrap_err().to_string();
    assert!(e.contains("collection name"), "{e}");
}

#[test]
fn jobs_left_running_are_marked_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let id = store.create_job("ingest", Some("c")).unwrap();
    put(&store, "c", "a.txt", "x");
    store.crash();
    let store = Store::open(dir.path()).unwrap();
    put(&store, "c", "b.txt", "y");
    assert_eq!(store.get_job(&id).unwrap().unwrap().state, "interrupted");
}

// ---- vectors ----

use datafactory_core::Embedding;

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

/// A unit vector along axis `axis`, a little off so ties do not happen.
fn axis(axis: usize) -> Vec<f32> {
    let mut v = [0.01f32; DIM];
    v[axis] = 1.0;
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}

/// Stores a one-chunk document whose vector points along `dir` and whose
/// sparse weights hold token `dir + 100`.
fn put_vec(store: &Store, collection: &str, source: &str, body: &str, dir: usize) {
    let doc = document(source, body);
    let chunks = vec![Chunk {
        ordinal: 0,
        heading_path: vec![],
        text: body.into(),
        start: 0,
        end: body.chars().count(),
        page: None,
        token_count: 3,
        context: None,
    }];
    let key = DocumentKey {
        id: document_id(collection, source),
        collection: collection.into(),
        source: source.into(),
        content_hash: datafactory_core::content_hash(format!("{body}{dir}").as_bytes()),
        pipeline: "p".into(),
        byte_size: body.len() as u64,
    };
    let e = Embedding { dense: axis(dir), sparse: vec![(dir as u32 + 100, 0.7)] };
    store.commit_document(&key, &doc, &chunks, Some(&[e])).unwrap();
}

fn request<'a>(
    text: &'a str,
    e: &'a Embedding,
    mode: SearchMode,
    collection: Option<&'a str>,
) -> SearchRequest<'a> {
    SearchRequest {
        text,
        embedding: Some(e),
        mode,
        collection,
        top_k: 5,
        candidates: 50,
        fusion: datafactory_core::config::FusionMethod::Rrf,
        rrf_k: 60.0,
        agreement: false,
        weight_words: 0.2,
        weight_dense: 0.8,
        weight_sparse: 0.0,
        title_boost: 0.5,
        heading_boost: 0.8,
        filter: None,
        collapse: false,
    }
}

fn sources(r: &SearchResults) -> Vec<&str> {
    r.hits.iter().map(|h| h.source.as_str()).collect()
}

#[test]
fn dense_sparse_and_hybrid_search() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.enable_vectors(&vector_options("m")).unwrap();
    put_vec(&store, "c", "north.txt", "pointing north", 0);
    put_vec(&store, "c", "east.txt", "pointing east", 1);
    put_vec(&store, "d", "up.txt", "pointing up", 2);
    store.flush().unwrap();

    let q = Embedding { dense: axis(1), sparse: vec![(101, 1.0)] };
    let dense = store.search(&request("", &q, SearchMode::Dense, None)).unwrap();
    assert_eq!(dense.retrievers, ["dense"]);
    assert_eq!(sources(&dense)[0], "east.txt");
    assert!(dense.hits[0].scores.dense.unwrap() > 0.99);
    let sparse = store.search(&request("", &q, SearchMode::Sparse, None)).unwrap();
    assert_eq!(sources(&sparse), ["east.txt"]);
    // Collection filters apply to every retriever.
    let d = store.search(&request("", &q, SearchMode::Dense, Some("d"))).unwrap();
    assert_eq!(sources(&d), ["up.txt"]);
    let d = store.search(&request("", &q, SearchMode::Sparse, Some("d"))).unwrap();
    assert!(d.hits.is_empty());

    // Hybrid: "north" is found by words (rank 1) and by dense (rank 2 or 3);
    // "east" by dense alone (rank 1): found by both wins.
    let h = store.search(&request("north", &q, SearchMode::Hybrid, None)).unwrap();
    assert_eq!(h.retrievers, ["words", "dense"]);
    assert_eq!(sources(&h)[..2], ["north.txt", "east.txt"]);
    let north = &h.hits[0];
    assert!(north.scores.words.is_some() && north.scores.dense.is_some());
    let fused = north.scores.fused.unwrap();
    let expected = [2.0, 3.0].map(|rank| 0.2 / 61.0 + 0.8 / (60.0 + rank));
    assert!(expected.iter().any(|e| (fused - e).abs() < 1e-6), "{:?}", north.scores);
    assert!((h.hits[1].scores.fused.unwrap() - 0.8 / 61.0).abs() < 1e-6);
    assert_eq!(h.hits[1].score, h.hits[1].scores.fused.unwrap());

    // Without a query embedding, hybrid falls back to words and says why.
    let mut words_only = request("north", &q, SearchMode::Hybrid, None);
    words_only.embedding = None;
    let w = store.search(&words_only).unwrap();
    assert_eq!(w.retrievers, ["words"]);
    assert!(!w.notes.is_empty());
    assert!(store.stats().unwrap().consistent);
}

#[test]
fn replaced_and_deleted_documents_leave_no_vectors() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.enable_vectors(&vector_options("m")).unwrap();
    put_vec(&store, "c", "a.txt", "alpha", 0);
    put_vec(&store, "c", "b.txt", "beta", 1);
    put_vec(&store, "c", "a.txt", "alpha moved", 3); // replace: new direction
    let q = Embedding { dense: axis(0), sparse: vec![(100, 1.0)] };
    let r = store.search(&request("", &q, SearchMode::Dense, None)).unwrap();
    assert!(r.hits.iter().all(|h| h.text != "alpha"));
    assert!(store.search(&request("", &q, SearchMode::Sparse, None)).unwrap().hits.is_empty());
    store.delete_document(&document_id("c", "b.txt")).unwrap();
    let stats = store.stats().unwrap();
    assert!(stats.consistent, "{stats:?}");
    assert_eq!(stats.vector_index.as_ref().unwrap().vectors, 1);
    assert_eq!(stats.embedded_chunks, 1);
}

#[test]
fn vectors_are_replayed_after_a_crash_and_rebuilt_when_lost() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.enable_vectors(&vector_options("m")).unwrap();
    put_vec(&store, "c", "a.txt", "alpha", 0);
    store.checkpoint().unwrap();
    put_vec(&store, "c", "b.txt", "beta", 1);
    put_vec(&store, "c", "a.txt", "alpha again", 2);
    store.crash(); // vector index saved at the first document only

    let store = Store::open(dir.path()).unwrap();
    let stats = store.stats().unwrap();
    assert!(stats.consistent, "{stats:?}");
    let q = Embedding { dense: axis(2), sparse: vec![] };
    let r = store.search(&request("", &q, SearchMode::Dense, None)).unwrap();
    assert_eq!(r.hits[0].text, "alpha again");
    assert_eq!(r.hits.len(), 2);
    drop(store);

    std::fs::remove_dir_all(dir.path().join("vectors")).unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.enable_vectors(&vector_options("m")).unwrap();
    let stats = store.stats().unwrap();
    assert!(stats.consistent, "{stats:?}");
    assert_eq!(stats.vector_index.unwrap().vectors, 2);
    let e = store.enable_vectors(&vector_options("another-model")).unwrap_err().to_string();
    assert!(e.contains("another-model") && e.contains("m ("), "{e}");
}

/// A restore that left out `vectors/` (or a deleted folder): opening the
/// store rebuilds the index from SQLite, so a search (which never calls
/// `enable_vectors`) finds by meaning instead of saying the store has no
/// vectors.
#[test]
fn a_store_without_its_vector_folder_rebuilds_it_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.enable_vectors(&vector_options("m")).unwrap();
    put_vec(&store, "c", "north.txt", "pointing north", 0);
    put_vec(&store, "c", "east.txt", "pointing east", 1);
    store.flush().unwrap();
    drop(store);
    std::fs::remove_dir_all(dir.path().join("vectors")).unwrap();

    let store = Store::open(dir.path()).unwrap();
    let options = store.vector_options().expect("the index is rebuilt on open");
    assert_eq!((options.model.as_str(), options.dimensions), ("m", DIM));
    let q = Embedding { dense: axis(1), sparse: vec![] };
    let r = store.search(&request("", &q, SearchMode::Dense, None)).unwrap();
    assert_eq!(sources(&r), vec!["east.txt", "north.txt"], "{:?}", r.notes);
    let stats = store.stats().unwrap();
    assert!(stats.consistent, "{stats:?}");
    assert_eq!(stats.vector_index.unwrap().vectors, 2);
    assert!(dir.path().join("vectors").exists());

    // A store that never had vectors gets no index.
    let plain = tempfile::tempdir().unwrap();
    let store = Store::open(plain.path()).unwrap();
    put(&store, "c", "a.txt", "alpha");
    drop(store);
    assert!(Store::open(plain.path()).unwrap().vector_options().is_none());
}

/// A process that enabled vectors and died before the index's first save
/// (at the end of an ingest, or after a minute) left embeddings in SQLite:
/// the next open must find the index with the options it was enabled with
/// (not the defaults a lost index is rebuilt with) and replay its vectors.
#[test]
fn vectors_committed_before_the_first_save_survive_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.enable_vectors(&vector_options("m")).unwrap();
    put_vec(&store, "c", "a.txt", "alpha", 0);
    put_vec(&store, "c", "b.txt", "beta", 1);
    store.crash(); // no checkpoint: the vectors were never saved

    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.vector_options(), Some(vector_options("m")));
    let stats = store.stats().unwrap();
    assert!(stats.consistent, "{stats:?}");
    assert_eq!(stats.vector_index.as_ref().unwrap().vectors, 2);
    let q = Embedding { dense: axis(1), sparse: vec![] };
    let r = store.search(&request("", &q, SearchMode::Dense, None)).unwrap();
    assert_eq!(r.hits[0].text, "beta");
}

#[test]
fn filters_restrict_every_retriever_to_matching_documents() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.enable_vectors(&vector_options("m")).unwrap();
    for (i, lang) in ["nl", "en", "nl"].iter().enumerate() {
        let body = format!("report {i} about tulips");
        let mut doc = document(&format!("r{i}"), &body);
        doc.metadata.insert("lang".into(), serde_json::json!(lang));
        doc.external_id = Some(format!("ext-{i}"));
        let chunks = vec![Chunk {
            ordinal: 0,
            heading_path: vec![],
            text: body.clone(),
            start: 0,
            end: body.chars().count(),
            page: None,
            token_count: 4,
            context: None,
        }];
        let key = DocumentKey {
            id: document_id("c", &format!("r{i}")),
            collection: "c".into(),
            source: format!("r{i}"),
            content_hash: format!("h{i}"),
            pipeline: "p".into(),
            byte_size: 1,
        };
        let e = Embedding { dense: axis(i), sparse: vec![(7, 1.0)] };
        store.commit_document(&key, &doc, &chunks, Some(&[e])).unwrap();
    }
    store.flush().unwrap();
    let q = Embedding { dense: axis(1), sparse: vec![(7, 1.0)] };
    let dutch = SearchFilter {
        metadata: [("lang".to_string(), serde_json::json!("nl"))].into_iter().collect(),
        ..Default::default()
    };
    for mode in [SearchMode::Lexical, SearchMode::Dense, SearchMode::Sparse, SearchMode::Hybrid] {
        let mut r = request("tulips", &q, mode, None);
        r.filter = Some(&dutch);
        let mut found = sources(&store.search(&r).unwrap()).into_iter().map(String::from).collect::<Vec<_>>();
        found.sort();
        assert_eq!(found, ["r0", "r2"], "{mode:?}");
    }
    let by_id =
        SearchFilter { document_ids: vec!["ext-1".into(), document_id("c", "r2")], ..Default::default() };
    let mut r = request("tulips", &q, SearchMode::Hybrid, None);
    r.filter = Some(&by_id);
    let mut found = sources(&store.search(&r).unwrap()).into_iter().map(String::from).collect::<Vec<_>>();
    found.sort();
    assert_eq!(found, ["r1", "r2"]);
    let none = SearchFilter { document_ids: vec!["missing".into()], ..Default::default() };
    r.filter = Some(&none);
    assert!(store.search(&r).unwrap().hits.is_empty());
}

#[test]
fn chunk_contexts_are_stored_and_word_indexed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let body = "Revenue grew by three percent over the previous quarter.";
    let doc = document("q3", body);
    let chunks = vec![Chunk {
        ordinal: 0,
        heading_path: vec![],
        text: body.into(),
        start: 0,
        end: body.chars().count(),
        page: None,
        token_count: 9,
        context: Some(datafactory_core::ChunkContext {
            text: "From ACME's quarterly filing, the section on zebrafinance results.".into(),
            kind: datafactory_core::ContextKind::Llm,
            model: Some("llama3.1:8b".into()),
            template: "contextual-retrieval-v1".into(),
            windowed: false,
        }),
    }];
    let key = DocumentKey {
        id: document_id("c", "q3"),
        collection: "c".into(),
        source: "q3".into(),
        content_hash: "h".into(),
        pipeline: "p".into(),
        byte_size: body.len() as u64,
    };
    store.commit_document(&key, &doc, &chunks, None).unwrap();
    store.flush().unwrap();
    // A word only the context holds finds the chunk; the hit carries the context.
    let hits = search(&store, "zebrafinance", None);
    assert_eq!(hits.len(), 1);
    assert!(hits[0].context.as_deref().unwrap().contains("ACME"));
    assert_eq!(hits[0].context_kind, Some(datafactory_core::ContextKind::Llm));
    let stored = store.get_document(&key.id).unwrap().unwrap();
    assert_eq!(stored.chunks[0].context, chunks[0].context);
    // The LLM answer cache: kept once, found by its full key only.
    store.save_llm_context("d", "c", "m", "t", "ctx", &serde_json::json!({"seconds": 1.0})).unwrap();
    store.save_llm_context("d", "c", "m", "t", "other", &serde_json::json!({})).unwrap();
    assert_eq!(store.llm_context("d", "c", "m", "t").unwrap().as_deref(), Some("ctx"));
    assert_eq!(store.llm_context("d", "c", "m", "t2").unwrap(), None);
    assert_eq!(store.llm_context_count().unwrap(), 1);
}

#[test]
fn a_version_2_store_migrates_to_version_3() {
    let dir = tempfile::tempdir().unwrap();
    {
        // A store as version 2 left it, with one chunk.
        let db = rusqlite::Connection::open(dir.path().join("datafactory.sqlite3")).unwrap();
        let mut db = db;
        crate::schema::migrate_to(&mut db, 2).unwrap();
        db.execute_batch(
            "INSERT INTO collections VALUES ('c', 0);
             INSERT INTO documents VALUES ('d', 'c', 's', NULL, 't', 'text', 'h', 'p', '{}', 'body', '[]', 4, 1, 0, 0);
             INSERT INTO chunks VALUES ('k', 'd', 0, '[]', 'body', 0, 4, NULL, 1);",
        )
        .unwrap();
        let v: i64 = db.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v, 2);
    }
    let store = Store::open(dir.path()).unwrap();
    let detail = store.get_document("d").unwrap().unwrap();
    assert_eq!(detail.chunks[0].text, "body");
    assert_eq!(detail.chunks[0].context, None);
    assert_eq!(store.llm_context_count().unwrap(), 0);
    let db = rusqlite::Connection::open(dir.path().join("datafactory.sqlite3")).unwrap();
    let v: i64 = db.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(v, crate::schema::SCHEMA_VERSION);
    assert_eq!(v, 4);
}

/// A store written before windows and text hashes (version 3: one vector
/// per chunk, `chunk_id` unique) opens: every vector and key kept, the
/// vector index rebuilt from them, text hashes filled, so its copies
/// collapse; keys go on above the highest ever given, and new chunks get
/// several windows.
#[test]
fn a_store_from_before_windows_opens_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut db = rusqlite::Connection::open(dir.path().join("datafactory.sqlite3")).unwrap();
        crate::schema::migrate_to(&mut db, 3).unwrap();
        db.execute_batch(
            "INSERT INTO collections VALUES ('c', 0);
             INSERT INTO meta VALUES ('embedding_model', 'm');
             INSERT INTO documents VALUES ('d1', 'c', 'one.txt', NULL, 'One', 'text', 'h1', 'p', '{}', 'x', '[]', 4, 1, 0, 0);
             INSERT INTO documents VALUES ('d2', 'c', 'two.txt', NULL, 'Two', 'text', 'h2', 'p', '{}', 'x', '[]', 4, 1, 0, 0);
             INSERT INTO chunks (id, document_id, ordinal, heading_path, text, char_start, char_end, page, token_count)
                 VALUES ('k1', 'd1', 0, '[]', 'Shared  passage about pears', 0, 27, NULL, 4),
                        ('k2', 'd2', 0, '[]', 'shared passage ABOUT pears', 0, 26, NULL, 4),
                        ('k3', 'd2', 1, '[]', 'Apples only', 27, 38, NULL, 2);
             INSERT INTO changes (document_id, op, at) VALUES ('d1', 'add', 0), ('d2', 'add', 0);",
        )
        .unwrap();
        let mut insert = db
            .prepare("INSERT INTO embeddings (key, chunk_id, dense, sparse) VALUES (?1, ?2, ?3, NULL)")
            .unwrap();
        for (key, chunk, dir) in [(1, "k1", 0), (2, "k2", 1), (5, "k3", 2), (7, "gone", 3)] {
            if chunk == "gone" {
                // A key given once and deleted since: never to be given again.
                db.execute(
                    "INSERT INTO chunks VALUES ('gone', 'd2', 2, '[]', 'gone', 0, 1, NULL, 1, NULL)",
                    [],
                )
                .unwrap();
            }
            insert.execute(rusqlite::params![key, chunk, vectors::encode_dense(&axis(dir))]).unwrap();
        }
        drop(insert);
        db.execute_batch("DELETE FROM embeddings WHERE key = 7; DELETE FROM chunks WHERE id = 'gone';")
            .unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let db = rusqlite::Connection::open(dir.path().join("datafactory.sqlite3")).unwrap();
    let rows: Vec<(i64, String, i64)> = db
        .prepare("SELECT key, chunk_id, window_ordinal FROM embeddings ORDER BY key")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert_eq!(rows, [(1, "k1".into(), 0), (2, "k2".into(), 0), (5, "k3".into(), 0)]);
    let hashes: Vec<Option<String>> = db
        .prepare("SELECT text_hash FROM chunks ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert_eq!(hashes[0].as_deref(), Some(passage_hash("Shared  passage about pears").as_str()));
    assert_eq!(hashes[0], hashes[1], "the same passage once normalised");
    assert_ne!(hashes[1], hashes[2]);

    // The vectors are searched (the index rebuilt from SQLite), and the copies collapse.
    let q = Embedding { dense: axis(1), sparse: vec![] };
    let settings = datafactory_core::config::SearchConfig::default();
    let req =
        SearchRequest { embedding: Some(&q), ..SearchRequest::new("", SearchMode::Dense, 2, &settings) };
    let results = store.search(&req).unwrap();
    let hits = results.hits;
    assert_eq!(
        hits.iter().map(|h| h.chunk_id.as_str()).collect::<Vec<_>>(),
        ["k2", "k3"],
        "{:?}",
        results.notes
    );
    assert_eq!(hits[0].duplicate_count, 1);
    assert_eq!(hits[0].duplicates[0].chunk_id, "k1");
    assert!(store.stats().unwrap().consistent, "{:?}", store.stats().unwrap().problems);

    // New vectors: keys above the highest ever given (7), several per chunk.
    let doc = document("three.txt", "long text");
    let chunks = vec![Chunk {
        ordinal: 0,
        heading_path: vec![],
        text: "long text".into(),
        start: 0,
        end: 9,
        page: None,
        token_count: 2,
        context: None,
    }];
    let key = DocumentKey {
        id: document_id("c", "three.txt"),
        collection: "c".into(),
        source: "three.txt".into(),
        content_hash: "h3".into(),
        pipeline: "p".into(),
        byte_size: 9,
    };
    let windows = vec![vec![
        Embedding { dense: axis(3), sparse: vec![] },
        Embedding { dense: axis(2), sparse: vec![] },
    ]];
    store.commit_windows(&key, &doc, &chunks, Some(&windows)).unwrap();
    let new_keys: Vec<i64> = db
        .prepare("SELECT key FROM embeddings WHERE chunk_id <> 'k1' AND chunk_id <> 'k2' AND chunk_id <> 'k3' ORDER BY key")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert_eq!(new_keys, [8, 9]);
    let q = Embedding { dense: axis(3), sparse: vec![] };
    let req =
        SearchRequest { embedding: Some(&q), ..SearchRequest::new("", SearchMode::Dense, 1, &settings) };
    assert_eq!(store.search(&req).unwrap().hits[0].source, "three.txt");
    let stats = store.stats().unwrap();
    assert_eq!((stats.embedded_chunks, stats.vector_index.unwrap().vectors), (4, 5));
}

/// Whether a write transaction is open on the database (seen from another
/// connection: `BEGIN IMMEDIATE` fails at once while one is).
fn write_locked(probe: &rusqlite::Connection) -> bool {
    match probe.execute_batch("BEGIN IMMEDIATE") {
        Ok(()) => {
            probe.execute_batch("ROLLBACK").unwrap();
            false
        }
        Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::DatabaseBusy => true,
        Err(e) => panic!("probe: {e}"),
    }
}

#[test]
fn reads_do_not_wait_for_the_commit_of_a_big_document() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.enable_vectors(&vector_options("m")).unwrap();
    put_vec(&store, "c", "needle.txt", "The needle is here.", 0);
    store.flush().unwrap();

    // A real big document: 60,000 chunks with embeddings, one transaction.
    const N: usize = 60_000;
    let mut text = String::new();
    let mut chunks = Vec::with_capacity(N);
    for i in 0..N {
        let body =
            format!("Paragraph {i} of the manual: the needle of component {} and its options. ", i % 97);
        let start = text.chars().count();
        text.push_str(&body);
        chunks.push(Chunk {
            ordinal: i as u32,
            heading_path: vec!["Manual".into()],
            start,
            end: start + body.chars().count(),
            text: body,
            page: None,
            token_count: 16,
            context: None,
        });
    }
    let embeddings: Vec<Embedding> =
        (0..N).map(|i| Embedding { dense: axis(i % DIM), sparse: vec![(100, 0.5)] }).collect();
    let doc = document("big.txt", &text);
    let key = DocumentKey {
        id: document_id("c", "big.txt"),
        collection: "c".into(),
        source: "big.txt".into(),
        content_hash: datafactory_core::content_hash(text.as_bytes()),
        pipeline: "p".into(),
        byte_size: text.len() as u64,
    };

    let probe = rusqlite::Connection::open(dir.path().join("datafactory.sqlite3")).unwrap();
    probe.busy_timeout(Duration::ZERO).unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    let q = Embedding { dense: axis(0), sparse: vec![(100, 1.0)] };
    std::thread::scope(|s| {
        let committer = s.spawn(|| {
            let outcome = store.commit_document(&key, &doc, &chunks, Some(&embeddings)).unwrap();
            let finished = Instant::now();
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            (outcome, finished)
        });
        // Wait until the commit's transaction is open.
        let deadline = Instant::now() + Duration::from_secs(120);
        while !write_locked(&probe) {
            assert!(!done.load(std::sync::atomic::Ordering::SeqCst), "the commit ended before it was seen");
            assert!(Instant::now() < deadline, "the commit's transaction never began");
            std::thread::sleep(Duration::from_millis(1));
        }
        let started = Instant::now();
        let mut hybrid = request("needle", &q, SearchMode::Hybrid, None);
        hybrid.weight_sparse = 0.5;
        let found = store.search(&hybrid).unwrap();
        let words = search(&store, "needle", Some("c"));
        let listed = store.list_documents(None).unwrap();
        let shown = store.get_document(&document_id("c", "needle.txt")).unwrap().unwrap();
        let big = store.get_document(&key.id).unwrap();
        let stats = store.stats().unwrap();
        let fingerprint = store.document_fingerprint(&key.id).unwrap();
        let ended = Instant::now();
        let still_writing = write_locked(&probe);
        let (outcome, commit_finished) = committer.join().unwrap();
        eprintln!(
            "reads took {:?}; the commit went on {:?} after them",
            ended - started,
            commit_finished - ended
        );
        assert!(still_writing, "the commit's transaction ended before the reads did");
        assert!(ended < commit_finished);
        assert_eq!(outcome, CommitOutcome::Added);
        // The reads saw the state committed before the big document.
        assert_eq!(found.retrievers, ["words", "dense", "sparse"]);
        assert_eq!(sources(&found), ["needle.txt"]);
        assert_eq!(words.len(), 1);
        assert_eq!(listed.len(), 1);
        assert_eq!(shown.chunks.len(), 1);
        assert!(big.is_none());
        assert!(fingerprint.is_none());
        assert_eq!((stats.documents, stats.chunks, stats.embedded_chunks), (1, 1, 1));
    });

    // Afterwards every read sees the big document, and the indexes agree.
    store.flush().unwrap();
    let stats = store.stats().unwrap();
    assert_eq!((stats.documents, stats.chunks), (2, N as u64 + 1));
    assert!(stats.consistent, "{:?}", stats.problems);
    let mut hybrid = request("needle", &q, SearchMode::Hybrid, None);
    hybrid.weight_sparse = 0.5;
    assert!(sources(&store.search(&hybrid).unwrap()).contains(&"big.txt"));
    assert_eq!(store.get_document(&key.id).unwrap().unwrap().chunks.len(), N);
}

/// Adding many vectors (a big document's) does not shut searches out: each
/// search waits for about the addition in progress, not for a run of them.
/// (With a plain lock the adding thread took it back right after each
/// addition, and a search could wait for thousands.)
#[test]
fn searches_interleave_with_a_long_run_of_vector_additions() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    const N: usize = 30_000;
    let dir = tempfile::tempdir().unwrap();
    let options = VectorOptions { dimensions: 384, exact_below: 0, ..vector_options("m") };
    let index = Arc::new(vectors::VectorIndex::open(dir.path(), &options).unwrap());
    let vector =
        |i: usize| -> Vec<f32> { (0..384).map(|d| ((i * 31 + d * 17) % 97) as f32 - 48.0).collect() };
    for i in 0..1000 {
        index.add(i as u64, &vector(i)).unwrap();
    }
    index.reserve_for(N).unwrap();
    let added = Arc::new(AtomicUsize::new(0));
    let adder = {
        let (index, added) = (index.clone(), added.clone());
        std::thread::spawn(move || {
            for i in 1000..1000 + N {
                index.add(i as u64, &vector(i)).unwrap();
                added.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    while added.load(Ordering::Relaxed) < 100 {
        std::thread::yield_now();
    }
    // Additions made while each search waited and ran (the searcher rests
    // between searches, as a service's searches arrive now and then).
    let mut during = Vec::new();
    for q in 0..40 {
        std::thread::sleep(std::time::Duration::from_millis(5));
        let before = added.load(Ordering::Relaxed);
        let hits = index.search(&vector(q * 7), 5, None).unwrap();
        assert_eq!(hits.len(), 5);
        during.push(added.load(Ordering::Relaxed) - before);
    }
    let unfinished = added.load(Ordering::Relaxed) < N;
    adder.join().unwrap();
    assert!(unfinished, "the additions ended before the searches: make N larger");
    assert_eq!(index.len(), 1000 + N);
    let mut gaps = during;
    gaps.sort_unstable();
    eprintln!("additions during each search: {gaps:?}");
    assert!(gaps[gaps.len() / 2] <= 20, "additions during each search: {gaps:?}");
}

// ---- durability ----

/// A job is finished only once what it stored is durable: the word index
/// committed and the vectors saved (both synced) before the job's row,
/// which is written with synchronous=FULL (syncing the WAL, and with it
/// every commit before); the commits of a batch keep synchronous=NORMAL.
#[test]
fn a_job_ends_only_after_what_it_stored_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let synchronous =
        |s: &Store| -> i64 { lock(&s.db).query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap() };
    assert_eq!(synchronous(&store), 1, "commits during a batch: NORMAL");
    store.enable_vectors(&vector_options("m")).unwrap();
    let id = store.create_job("ingest", Some("c")).unwrap();
    put_vec(&store, "c", "a.txt", "alpha", 0);
    put_vec(&store, "c", "b.txt", "beta", 1);
    let latest = store.latest_change().unwrap();
    lock(&store.durable_log).clear();
    store.finish_job(&id, "succeeded", &serde_json::json!({"documents": 2})).unwrap();
    assert_eq!(
        *lock(&store.durable_log),
        [
            format!("words committed up to change {latest}"),
            format!("vectors saved up to change {latest}"),
            format!("job {id} ended succeeded, written with synchronous=2"),
        ]
    );
    assert_eq!(synchronous(&store), 1, "back to NORMAL after the job's end");
    let job = store.get_job(&id).unwrap().unwrap();
    assert_eq!((job.state.as_str(), job.summary["documents"].as_i64()), ("succeeded", Some(2)));

    // A crash right after the job's end loses nothing the job stored: the
    // indexes were made durable, not replayed.
    store.crash();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.words.applied_change().unwrap(), latest);
    assert_eq!(store.vector_index().unwrap().saved_change(), latest);
    assert_eq!(store.get_job(&id).unwrap().unwrap().state, "succeeded");
}

/// Puts a document whose analysis found `language` (ISO 639-3), as ingest records it.
fn put_in_language(store: &Store, source: &str, body: &str, language: &str) {
    let mut doc = document(source, body);
    doc.metadata.insert("analysis".into(), serde_json::json!({ "language": { "code": language } }));
    let chunker =
        Chunker::new(&ChunkingConfig { max_tokens: 64, overlap_tokens: 0 }, Arc::new(HeuristicTokenCounter));
    let chunks = chunker.chunk(&doc);
    let key = DocumentKey {
        id: document_id("c", source),
        collection: "c".into(),
        source: source.into(),
        content_hash: datafactory_core::content_hash(body.as_bytes()),
        pipeline: chunker.fingerprint(),
        byte_size: body.len() as u64,
    };
    store.commit_document(&key, &doc, &chunks, None).unwrap();
}

fn found(store: &Store, q: &str) -> Vec<String> {
    let mut s: Vec<String> = search(store, q, None).into_iter().map(|h| h.source).collect();
    s.sort();
    s
}

#[test]
fn words_are_stemmed_by_their_documents_language() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    put_in_language(&store, "en.txt", "The committee reviewed several claims about running engines.", "eng");
    put_in_language(&store, "de.txt", "Die Häuser der Stadt wurden im Krieg zerstört.", "deu");
    put_in_language(&store, "nl.txt", "De fietsen staan bij de huizen van de boeren.", "nld");
    put_in_language(&store, "code.txt", "Call getUserNames() from the DiffExecutor.", "zzz");
    store.flush().unwrap();
    assert_eq!(store.words.languages().unwrap(), ["deu", "eng", "nld", "zzz"]);
    // English: "claim" finds "claims", "run" finds "running".
    assert_eq!(found(&store, "claim"), ["en.txt"]);
    assert_eq!(found(&store, "runs"), ["en.txt"]);
    // German: "Haus" finds "Häuser" (stemmed with the umlaut, then folded), "Krieges" finds "Krieg".
    assert_eq!(found(&store, "Haus"), ["de.txt"]);
    assert_eq!(found(&store, "Krieges"), ["de.txt"]);
    // Dutch: "fiets" finds "fietsen", "huis" finds "huizen".
    assert_eq!(found(&store, "fiets"), ["nl.txt"]);
    assert_eq!(found(&store, "huis"), ["nl.txt"]);
    // A language without a stemmer: words folded only; identifiers keep their parts.
    assert_eq!(found(&store, "executor"), ["code.txt"]);
    assert_eq!(found(&store, "user names"), ["code.txt"]);
    assert_eq!(found(&store, "getusernames"), ["code.txt"]);
    // Rebuilt from SQLite, the index stems the same (the language is read back).
    drop(store);
    std::fs::remove_dir_all(dir.path().join("words")).unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(found(&store, "claim"), ["en.txt"]);
    assert_eq!(found(&store, "huis"), ["nl.txt"]);
}

/// Writes, in `dir`, a word index as DataFactory wrote it before stemming:
/// the schema without `language`, every text analysed unstemmed.
fn write_unstemmed_index(dir: &std::path::Path, chunks: &[(String, String, String)], change: i64) {
    use tantivy::schema::{IndexRecordOption, Schema, TextFieldIndexing, TextOptions, STORED, STRING};
    let mut b = Schema::builder();
    let text = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer("df_code")
            .set_index_option(IndexRecordOption::WithFreqsAndPositions),
    );
    let chunk_id = b.add_text_field("chunk_id", STRING | STORED);
    let document_id = b.add_text_field("document_id", STRING);
    let collection = b.add_text_field("collection", STRING);
    let title = b.add_text_field("title", text.clone());
    let heading = b.add_text_field("heading", text.clone());
    let body = b.add_text_field("body", text);
    std::fs::create_dir_all(dir).unwrap();
    let index = tantivy::Index::create_in_dir(dir, b.build()).unwrap();
    index.tokenizers().register("df_code", words::analyzer());
    let mut writer = index.writer_with_num_threads::<tantivy::TantivyDocument>(1, 16 << 20).unwrap();
    for (chunk, document, text) in chunks {
        let mut doc = tantivy::TantivyDocument::default();
        doc.add_text(chunk_id, chunk);
        doc.add_text(document_id, document);
        doc.add_text(collection, "c");
        doc.add_text(title, "");
        doc.add_text(heading, "");
        doc.add_text(body, text);
        writer.add_document(doc).unwrap();
    }
    let mut prepared = writer.prepare_commit().unwrap();
    prepared.set_payload(&format!("change:{change}"));
    prepared.commit().unwrap();
}

#[test]
fn a_word_index_written_before_stemming_is_read_then_rebuilt_stemmed() {
    let dir = tempfile::tempdir().unwrap();
    let chunks: Vec<(String, String, String)>;
    let latest;
    {
        let store = Store::open(dir.path()).unwrap();
        put_in_language(&store, "en.txt", "Several claims about running engines.", "eng");
        put_in_language(&store, "de.txt", "Die Häuser der Stadt.", "deu");
        store.flush().unwrap();
        latest = store.latest_change().unwrap();
        let db = store.reader().unwrap();
        let mut q = db.prepare("SELECT id, document_id, text FROM chunks ORDER BY id").unwrap();
        chunks = q
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<std::result::Result<_, _>>()
            .unwrap();
    }
    // The store as an older DataFactory left it: the same chunks, unstemmed.
    let words_dir = dir.path().join("words");
    std::fs::remove_dir_all(&words_dir).unwrap();
    write_unstemmed_index(&words_dir, &chunks, latest);

    // While another process holds its writer, it is read as it is: exact
    // words match, nothing is lost, nothing is rewritten.
    {
        let old = tantivy::Index::open_in_dir(&words_dir).unwrap();
        old.tokenizers().register("df_code", words::analyzer());
        let held = old.writer_with_num_threads::<tantivy::TantivyDocument>(1, 16 << 20).unwrap();
        let index = words::WordIndex::open(&words_dir).unwrap();
        assert!(!index.stemmed());
        assert_eq!(index.query_terms("Claims").unwrap(), ["claims"]);
        let hits = index.search("claims", Some("c"), None, 10, 0.5, 0.8).unwrap();
        assert_eq!(hits.len(), 1);
        assert!(index.search("claim", Some("c"), None, 10, 0.5, 0.8).unwrap().is_empty());
        drop(held);
    }

    // Opened as the writer: replaced by a stemmed index rebuilt from SQLite.
    let store = Store::open(dir.path()).unwrap();
    assert!(store.words.stemmed());
    assert_eq!(store.words.num_docs(), chunks.len() as u64);
    assert_eq!(found(&store, "claim"), ["en.txt"]);
    assert_eq!(found(&store, "claims"), ["en.txt"]);
    assert_eq!(found(&store, "Haus"), ["de.txt"]);
    assert!(store.stats().unwrap().consistent);
}
