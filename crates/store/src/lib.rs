//! The embedded store: SQLite is the truth, tantivy's word index is derived.
//!
//! Write path, per document: one SQLite transaction replaces the document and
//! its chunks and appends a row to `changes`; the word index is then updated
//! and committed in batches (`flush`), each commit recording the last change
//! it includes. Searches go word index → chunk ids → SQLite, so a chunk is
//! only ever shown from SQLite's current state: a document is either wholly
//! searchable or absent, whatever moment a process dies at.
//!
//! Durability: commits run with `synchronous=NORMAL` (in WAL mode a power
//! cut may lose the last commits, never corrupt the file); a job's end is
//! the durable point: `finish_job` commits the word index (synced), saves
//! the vector index (synced) and writes the job's row with
//! `synchronous=FULL`, which syncs the WAL and so every commit before it. A
//! job that reads `succeeded` has all it stored on disk.
//!
//! On opening, a word index that is behind SQLite is brought up to date from
//! the `changes` it has not applied (or rebuilt, if those were pruned).
//!
//! Only the process holding the word index's writer (tantivy's lock file)
//! writes documents; it takes the writer lazily, on its first write. Readers
//! need no lock.
//!
//! Connections: one writer connection (`db`) for every write and for the
//! writer's own catch-up reads; reads (searches, listings, stats, jobs,
//! fingerprints, cached LLM answers) take a query-only connection from a
//! small pool (`readers`). In WAL mode a reader sees the last committed state
//! while the writer's transaction runs, so the commit of a big document does
//! not hold up searches.

mod backend;
mod dedup;
pub mod distance;
mod jobs;
mod pg;
mod pg_tls;
mod reads;
mod records;
mod repair;
mod schema;
mod search;
mod sparse;
pub mod vectors;
pub mod words;
mod writes;

pub use backend::Store;
pub use dedup::{
    decode_minhash, encode_minhash, minhash, near_duplicates, passage_hash, similarity, DuplicateReport,
    NEAR_THRESHOLD,
};
pub use pg::{text_search_config, PG_SCHEMA_VERSION, VECTOR_RECHECK_INTERVAL};
pub use records::*;
pub use vectors::VectorOptions;

use datafactory_core::{chunk_id, Chunk, Document, Embedding, Format, Section};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use sparse::SparseIndex;
use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};
use tantivy::{IndexWriter, TantivyDocument};
use vectors::VectorIndex;
use words::{WordDoc, WordIndex};

/// Save the vector index at most this often during a long ingest (it is
/// rewritten whole); `checkpoint` saves it at once.
const VECTOR_SAVE_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("PostgreSQL: {0}")]
    Postgres(String),
    #[error("word index: {0}")]
    Index(String),
    #[error(
        "another DataFactory process is writing to this data directory; wait for it to finish or stop it"
    )]
    Busy,
    #[error("{0}")]
    Invalid(String),
    #[error("the store in {path} has schema version {found}, newer than this program's {supported}; upgrade DataFactory")]
    TooNew { path: PathBuf, found: i64, supported: i64 },
    #[error("the store holds vectors of {stored}, but the configured embedding model is {configured}; use another data directory, or configure the stored model")]
    ModelMismatch { stored: String, configured: String },
    #[error(
        "the data directory {dir} is not writable ({reason}); DataFactory writes there even to search \
         (SQLite's shared-memory file, the word index's lock): make it writable, or copy it somewhere \
         writable and point --data-dir (data_dir) at the copy"
    )]
    NotWritable { dir: PathBuf, reason: String },
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("stored JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl From<tantivy::TantivyError> for StoreError {
    fn from(e: tantivy::TantivyError) -> Self {
        StoreError::Index(e.to_string())
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The writer of the word index and what it holds that is not yet committed.
struct WriterState {
    writer: IndexWriter<TantivyDocument>,
    /// The last change added to the word index writer but not yet committed.
    pending: Option<i64>,
    /// The last change added to the vector index but not yet saved.
    vectors_pending: Option<i64>,
    vectors_saved_at: Instant,
}

/// Idle read connections kept for reuse; more are opened when several reads
/// run at once, and closed when they end.
const IDLE_READERS: usize = 4;

/// A pool of query-only connections to the database.
struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

/// A read connection, back to its pool when dropped.
struct Reader<'a> {
    pool: &'a Readers,
    conn: Option<Connection>,
}

impl Readers {
    fn get(&self) -> Result<Reader<'_>> {
        let idle = lock(&self.idle).pop();
        let conn = match idle {
            Some(c) => c,
            None => {
                let c = Connection::open(&self.path)?;
                // The writer set WAL mode (it is kept in the file); this
                // connection never writes.
                c.pragma_update(None, "query_only", "ON")?;
                c.busy_timeout(Duration::from_secs(10))?;
                c
            }
        };
        Ok(Reader { pool: self, conn: Some(conn) })
    }
}

impl Deref for Reader<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn.as_ref().expect("held until drop")
    }
}

impl DerefMut for Reader<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        self.conn.as_mut().expect("held until drop")
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            // A read that failed midway may leave a transaction open.
            if c.is_autocommit() {
                let mut idle = lock(&self.pool.idle);
                if idle.len() < IDLE_READERS {
                    idle.push(c);
                }
            }
        }
    }
}

pub struct EmbeddedStore {
    dir: PathBuf,
    /// Query-only connections for reads, which see the last committed state
    /// without waiting for a write transaction. Declared before `db`, so they
    /// close first and the writer, closing last, checkpoints the WAL.
    readers: Readers,
    /// The writer connection: every write goes through it.
    db: Mutex<Connection>,
    words: WordIndex,
    // Lock order: `writer`, then `vectors`/`sparse`/`key_collections`, then
    // `db` or a reader (a reader never waits for `db`).
    writer: Mutex<Option<WriterState>>,
    vectors: RwLock<Option<Arc<VectorIndex>>>,
    /// Built on the first sparse search, then kept current by this process.
    sparse: RwLock<Option<SparseIndex>>,
    /// Vector key → collection, for filtered dense and sparse search; built
    /// on first use, then kept current by this process.
    key_collections: RwLock<Option<HashMap<u64, Arc<str>>>>,
    /// What was made durable, in order (the tests check that a job is
    /// finished only after what it stored is).
    #[cfg(test)]
    durable_log: Mutex<Vec<String>>,
}

/// Which derived index a catch-up is for.
enum Catchup {
    UpToDate,
    /// Re-index these documents and drop these vector keys.
    Replay {
        documents: Vec<String>,
        removed_keys: Vec<u64>,
    },
    /// The missed changes are gone: rebuild from SQLite.
    Rebuild,
}

/// Identifies a document and the input and pipeline it was made from.
#[derive(Debug, Clone)]
pub struct DocumentKey {
    pub id: String,
    pub collection: String,
    pub source: String,
    /// Hash of the input bytes.
    pub content_hash: String,
    /// Fingerprint of parser and chunker settings.
    pub pipeline: String,
    pub byte_size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CommitOutcome {
    Added,
    Replaced,
    Unchanged,
}

/// The part of a chunk's context the word index gets: an LLM's context. A
/// heuristic one (title, heading path, first sentence) is embedded only: the
/// title and heading path are indexed already, and the first sentence of a
/// document on each of its chunks would make every chunk match it.
fn indexed_context(context: Option<&datafactory_core::ChunkContext>) -> Option<&str> {
    context.filter(|c| c.kind == datafactory_core::ContextKind::Llm).map(|c| c.text.as_str())
}

/// A chunk's stored context (JSON), if any and readable.
pub(crate) fn parse_context(json: Option<String>) -> Option<datafactory_core::ChunkContext> {
    json.and_then(|j| serde_json::from_str(&j).ok())
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves SQLite and tantivy consistent
    // (transactions roll back), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`. If the word index is behind
    /// SQLite and no other process is writing, it is repaired now.
    pub fn open(dir: &Path) -> Result<EmbeddedStore> {
        check_writable(dir)?;
        let db_path = dir.join("datafactory.sqlite3");
        let mut db = Connection::open(&db_path)?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        // Commits during a job are not synced one by one; the job's end is
        // (`finish_job`), and syncing the WAL makes every earlier commit durable too.
        db.pragma_update(None, "synchronous", "NORMAL")?;
        db.pragma_update(None, "foreign_keys", "ON")?;
        db.busy_timeout(std::time::Duration::from_secs(10))?;
        let found: i64 = db.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if found > schema::SCHEMA_VERSION {
            return Err(StoreError::TooNew { path: db_path, found, supported: schema::SCHEMA_VERSION });
        }
        schema::migrate(&mut db)?;
        let words = WordIndex::open(&dir.join("words"))?;
        let vectors_dir = dir.join("vectors");
        let vectors = match VectorIndex::saved_options(&vectors_dir)? {
            Some(options) => Some(Arc::new(VectorIndex::open(&vectors_dir, &options)?)),
            None => None,
        };
        let store = EmbeddedStore {
            dir: dir.to_path_buf(),
            db: Mutex::new(db),
            readers: Readers { path: db_path, idle: Mutex::new(Vec::new()) },
            words,
            writer: Mutex::new(None),
            vectors: RwLock::new(vectors),
            sparse: RwLock::new(None),
            key_collections: RwLock::new(None),
            #[cfg(test)]
            durable_log: Mutex::new(Vec::new()),
        };
        if store.vector_index().is_none() {
            store.rebuild_lost_vectors()?;
        }
        let vectors_behind =
            store.vector_index().is_some_and(|v| v.applied_change() != store.latest_change().unwrap_or(0));
        if vectors_behind || store.words.applied_change()? != store.latest_change()? {
            match store.writer() {
                Ok(_) => {}
                Err(StoreError::Busy) => {
                    tracing::debug!("word index is behind; another process is writing")
                }
                // A full disk, say: what is committed can still be read, and
                // the next write takes the writer again (and fails with the
                // reason while the fault lasts).
                Err(e) => tracing::warn!(
                    "the indexes are behind the database and could not be brought up to date: {e}; \
                     searches miss the documents they lack (see `datafactory stats`) until a write succeeds"
                ),
            }
        }
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A query-only connection: sees the last committed state, even while
    /// the writer connection is inside a transaction.
    fn reader(&self) -> Result<Reader<'_>> {
        self.readers.get()
    }

    /// Takes the writer if this process does not hold it yet. Taking it means
    /// no other process writes: jobs left `running` died with their process,
    /// and an index behind SQLite is repaired.
    fn writer(&self) -> Result<MutexGuard<'_, Option<WriterState>>> {
        let mut guard = lock(&self.writer);
        if guard.is_none() {
            let mut state = WriterState {
                writer: self.words.writer()?,
                pending: None,
                vectors_pending: None,
                vectors_saved_at: Instant::now(),
            };
            self.words.reload()?;
            self.repair(&mut state)?;
            if let Some(v) = self.vector_index() {
                self.repair_vectors(&v)?;
            }
            let db = lock(&self.db);
            let n = db.execute(
                "UPDATE jobs SET state = 'interrupted', updated_at = ?1 WHERE state = 'running'",
                [now_ms()],
            )?;
            if n > 0 {
                tracing::warn!("{n} ingest job(s) were interrupted by a process that died");
            }
            *guard = Some(state);
        }
        Ok(guard)
    }

    /// Records a durable point for the tests; nothing otherwise.
    fn note_durable(&self, _what: impl FnOnce() -> String) {
        #[cfg(test)]
        lock(&self.durable_log).push(_what());
    }

    /// The last change committed to SQLite (0: none ever).
    pub fn latest_change(&self) -> Result<i64> {
        let db = self.reader()?;
        Ok(db
            .query_row("SELECT seq FROM sqlite_sequence WHERE name = 'changes'", [], |r| r.get(0))
            .optional()?
            .unwrap_or(0))
    }
}
impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        if let Err(e) = self.checkpoint() {
            tracing::warn!("could not commit the word index on close: {e}; the next start repairs it");
        }
    }
}

/// Creates `dir` if needed and checks that files can be made in it: SQLite
/// (its `-shm` and `-wal` files) and tantivy (its lock) write there even to
/// read, and their own errors do not say that the directory is the cause. A
/// full disk passes: reads still work there.
fn check_writable(dir: &Path) -> Result<()> {
    let not_writable =
        |e: std::io::Error| StoreError::NotWritable { dir: dir.to_path_buf(), reason: e.to_string() };
    std::fs::create_dir_all(dir).map_err(not_writable)?;
    let probe = dir.join(".datafactory-write-check");
    match std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::StorageFull => Ok(()),
        Err(e) => Err(not_writable(e)),
    }
}

/// Deletes a document's chunks and embeddings; returns the vector keys removed.
fn remove_chunks(tx: &rusqlite::Transaction<'_>, document_id: &str) -> Result<Vec<u64>> {
    let keys: Vec<u64> = tx
        .prepare_cached(
            "SELECT e.key FROM embeddings e JOIN chunks c ON c.id = e.chunk_id WHERE c.document_id = ?1",
        )?
        .query_map([document_id], |r| r.get::<_, i64>(0).map(|k| k as u64))?
        .collect::<Result<_, _>>()?;
    tx.execute(
        "DELETE FROM embeddings WHERE chunk_id IN (SELECT id FROM chunks WHERE document_id = ?1)",
        [document_id],
    )?;
    tx.execute("DELETE FROM chunks WHERE document_id = ?1", [document_id])?;
    Ok(keys)
}

const SUMMARY_SELECT: &str = "SELECT d.id, d.collection, d.source, d.external_id, d.title, d.format,
        d.content_hash, d.byte_size, d.version, d.created_at, d.updated_at,
        (SELECT COUNT(*) FROM chunks c WHERE c.document_id = d.id),
        json_extract(d.metadata, '$.analysis.doc_type'), json_extract(d.metadata, '$.analysis.language.code')
     FROM documents d";

fn summary_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DocumentSummary> {
    let format: String = r.get(5)?;
    let info = DocumentInfo {
        id: r.get(0)?,
        collection: r.get(1)?,
        source: r.get(2)?,
        external_id: r.get(3)?,
        title: r.get(4)?,
        format: Format::parse_name(&format).unwrap_or(Format::Text),
        content_hash: r.get(6)?,
        byte_size: r.get::<_, i64>(7)? as u64,
        version: r.get(8)?,
        created_at: r.get(9)?,
        updated_at: r.get(10)?,
    };
    Ok(DocumentSummary {
        info,
        chunks: r.get::<_, i64>(11)? as u64,
        doc_type: r.get::<_, Option<String>>(12).ok().flatten(),
        language: r.get::<_, Option<String>>(13).ok().flatten(),
    })
}

/// What either backend refuses before it writes anything: a bad collection
/// name, embeddings that do not match the chunks one for one.
pub(crate) fn check_commit(
    key: &DocumentKey,
    chunks: &[Chunk],
    windows: Option<&[Vec<Embedding>]>,
) -> Result<()> {
    datafactory_core::config::validate_collection(&key.collection).map_err(StoreError::Invalid)?;
    match windows {
        Some(e) if e.len() != chunks.len() => {
            Err(StoreError::Invalid(format!("{} embeddings for {} chunks", e.len(), chunks.len())))
        }
        Some(e) if e.iter().any(Vec::is_empty) => {
            Err(StoreError::Invalid("a chunk with no vector (every chunk needs one window at least)".into()))
        }
        _ => Ok(()),
    }
}

/// One vector per chunk as a window list (`commit_document`'s embeddings for
/// `commit_windows`).
pub(crate) fn single_windows(embeddings: Option<&[Embedding]>) -> Option<Vec<Vec<Embedding>>> {
    embeddings.map(|e| e.iter().map(|e| vec![e.clone()]).collect())
}

fn parse_json_list(s: &str) -> Vec<String> {
    serde_json::from_str(s).unwrap_or_default()
}

#[cfg(test)]
mod tests;

#[cfg(test)]
impl EmbeddedStore {
    /// Closes like a process that dies: word-index work not yet committed is lost.
    fn crash(self) {
        if let Some(mut state) = lock(&self.writer).take() {
            state.writer.rollback().expect("rollback");
        }
        // Vectors held in memory are lost too.
        *self.vectors.write().unwrap() = None;
    }
}
