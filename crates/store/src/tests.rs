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
    let chunker = Chunker::new(
        &ChunkingConfig {
            max_tokens: 32,
            overlap_tokens: 0,
        },
        Arc::new(HeuristicTokenCounter),
    );
    let chunks = chunker.chunk(&doc);
    let key = DocumentKey {
        id: document_id(collection, source),
        collection: collection.into(),
        source: source.into(),
        content_hash: datafactory_core::content_hash(body.as_bytes()),
        pipeline: chunker.fingerprint(),
        byte_size: body.len() as u64,
    };
    store.commit_document(&key, &doc, &chunks).unwrap()
}

fn search(store: &Store, q: &str, collection: Option<&str>) -> Vec<SearchHit> {
    store
        .search_words(&WordQuery {
            text: q,
            collection,
            top_k: 10,
            title_boost: 0.5,
            heading_boost: 0.8,
        })
        .unwrap()
}

#[test]
fn commit_search_replace_delete() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(
        put(&store, "c", "a.txt", "The DiffExecutor runs diffs."),
        CommitOutcome::Added
    );
    assert_eq!(
        put(&store, "c", "b.txt", "Apples and pears."),
        CommitOutcome::Added
    );
    // Not searchable before the flush, searchable after.
    assert!(search(&store, "executor", None).is_empty());
    store.flush().unwrap();
    let hits = search(&store, "executor", None);
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].source, "a.txt");
    assert_eq!(hits[0].heading_path, vec!["Intro"]);
    assert_eq!(search(&store, "diff_executor", Some("c")).len(), 1);
    assert!(search(&store, "executor", Some("other")).is_empty());

    assert_eq!(
        put(&store, "c", "a.txt", "The DiffExecutor runs diffs."),
        CommitOutcome::Unchanged
    );
    assert_eq!(
        put(&store, "c", "a.txt", "Now about bananas."),
        CommitOutcome::Replaced
    );
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
    let hits: Vec<_> = search(&store, "zebra", None)
        .into_iter()
        .map(|h| h.source)
        .collect();
    assert_eq!(hits, vec!["two.txt"]);
    assert_eq!(search(&store, "giraffe", None).len(), 1);
}

#[test]
fn lost_word_index_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        for i in 0..5 {
            put(
                &store,
                "c",
                &format!("{i}.txt"),
                &format!("document number {i} about otters"),
            );
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
    assert!(matches!(
        b.commit_document(&key, &doc, &[]),
        Err(StoreError::Busy)
    ));
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
    let e = store
        .commit_document(&key, &doc, &[])
        .unwrap_err()
        .to_string();
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
