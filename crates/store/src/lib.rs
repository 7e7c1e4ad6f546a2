//! The embedded store: SQLite is the truth, tantivy's word index is derived.
//!
//! Write path, per document: one SQLite transaction replaces the document and
//! its chunks and appends a row to `changes`; the word index is then updated
//! and committed in batches (`flush`), each commit recording the last change
//! it includes. Searches go word index → chunk ids → SQLite, so a chunk is
//! only ever shown from SQLite's current state: a document is either wholly
//! searchable or absent, whatever moment a process dies at.
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
mod pg;
mod pg_tls;
mod records;
mod schema;
mod search;
mod sparse;
pub mod vectors;
pub mod words;

pub use backend::Store;
pub use pg::{text_search_config, PG_SCHEMA_VERSION};
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
        std::fs::create_dir_all(dir)?;
        let db_path = dir.join("datafactory.sqlite3");
        let mut db = Connection::open(&db_path)?;
        db.pragma_update(None, "journal_mode", "WAL")?;
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
        };
        let vectors_behind =
            store.vector_index().is_some_and(|v| v.applied_change() != store.latest_change().unwrap_or(0));
        if vectors_behind || store.words.applied_change()? != store.latest_change()? {
            match store.writer() {
                Ok(_) => {}
                Err(StoreError::Busy) => {
                    tracing::debug!("word index is behind; another process is writing")
                }
                Err(e) => return Err(e),
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

    /// The last change committed to SQLite (0: none ever).
    pub fn latest_change(&self) -> Result<i64> {
        let db = self.reader()?;
        Ok(db
            .query_row("SELECT seq FROM sqlite_sequence WHERE name = 'changes'", [], |r| r.get(0))
            .optional()?
            .unwrap_or(0))
    }

    /// What an index that includes changes up to `applied` must do to catch up.
    fn catchup(&self, applied: i64, latest: i64) -> Result<Catchup> {
        if applied == latest {
            return Ok(Catchup::UpToDate);
        }
        let db = lock(&self.db);
        let unapplied: i64 =
            db.query_row("SELECT COUNT(*) FROM changes WHERE seq > ?1", [applied], |r| r.get(0))?;
        if applied > latest || unapplied != latest - applied {
            return Ok(Catchup::Rebuild);
        }
        let mut q =
            db.prepare("SELECT document_id, removed_keys FROM changes WHERE seq > ?1 ORDER BY seq")?;
        let mut documents = Vec::new();
        let mut removed_keys = Vec::new();
        let mut rows = q.query([applied])?;
        while let Some(r) = rows.next()? {
            let id: String = r.get(0)?;
            if !documents.contains(&id) {
                documents.push(id);
            }
            removed_keys.extend(serde_json::from_str::<Vec<u64>>(&r.get::<_, String>(1)?)?);
        }
        Ok(Catchup::Replay { documents, removed_keys })
    }

    /// Brings the word index up to SQLite's latest change. Returns the number
    /// of documents re-indexed.
    fn repair(&self, state: &mut WriterState) -> Result<usize> {
        let applied = self.words.applied_change()?;
        let latest = self.latest_change()?;
        let ids: Vec<String> = match self.catchup(applied, latest)? {
            Catchup::UpToDate => return Ok(0),
            Catchup::Replay { documents, .. } => documents,
            Catchup::Rebuild => {
                tracing::warn!(
                    "word index (change {applied}) cannot be replayed to change {latest}; rebuilding it from SQLite"
                );
                state.writer.delete_all_documents()?;
                let db = lock(&self.db);
                let mut q = db.prepare("SELECT id FROM documents ORDER BY id")?;
                let ids = q.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
                ids
            }
        };
        let db = lock(&self.db);
        for id in &ids {
            self.words.delete_document(&state.writer, id);
            self.index_document_from_db(&db, &state.writer, id)?;
        }
        drop(db);
        self.words.commit(&mut state.writer, latest)?;
        state.pending = None;
        self.prune_changes()?;
        tracing::info!("word index repaired: {} document(s) re-indexed, now at change {latest}", ids.len());
        Ok(ids.len())
    }

    /// Brings the vector index up to SQLite's latest change and saves it.
    fn repair_vectors(&self, v: &VectorIndex) -> Result<()> {
        let applied = v.applied_change();
        let latest = self.latest_change()?;
        let (sql, param): (&str, Option<Vec<String>>) = match self.catchup(applied, latest)? {
            Catchup::UpToDate => return Ok(()),
            Catchup::Replay { documents, removed_keys } => {
                for k in removed_keys {
                    v.remove(k)?;
                }
                (
                    "SELECT e.key, e.dense FROM embeddings e JOIN chunks c ON c.id = e.chunk_id WHERE c.document_id = ?1",
                    Some(documents),
                )
            }
            Catchup::Rebuild => {
                tracing::warn!("vector index (change {applied}) is rebuilt from SQLite (change {latest})");
                v.clear()?;
                ("SELECT key, dense FROM embeddings", None)
            }
        };
        let db = lock(&self.db);
        let mut q = db.prepare(sql)?;
        let add_rows = |rows: &mut rusqlite::Rows<'_>| -> Result<()> {
            while let Some(r) = rows.next()? {
                let key: i64 = r.get(0)?;
                v.add(key as u64, &vectors::decode_dense(&r.get::<_, Vec<u8>>(1)?))?;
            }
            Ok(())
        };
        match param {
            Some(documents) => {
                for d in documents {
                    add_rows(&mut q.query([d])?)?;
                }
            }
            None => add_rows(&mut q.query([])?)?,
        }
        drop(q);
        drop(db);
        v.save(latest)?;
        self.prune_changes()?;
        tracing::info!("vector index repaired, now at change {latest}");
        Ok(())
    }

    /// Adds a stored document's chunks to the word index writer.
    fn index_document_from_db(
        &self,
        db: &Connection,
        writer: &IndexWriter<TantivyDocument>,
        document_id: &str,
    ) -> Result<()> {
        let mut q = db.prepare_cached(
            "SELECT c.id, c.heading_path, c.text, d.collection, d.title, c.context
             FROM chunks c JOIN documents d ON d.id = c.document_id
             WHERE c.document_id = ?1 ORDER BY c.ordinal",
        )?;
        let mut rows = q.query([document_id])?;
        while let Some(r) = rows.next()? {
            let chunk_id: String = r.get(0)?;
            let heading: Vec<String> = serde_json::from_str(&r.get::<_, String>(1)?)?;
            let body: String = r.get(2)?;
            let collection: String = r.get(3)?;
            let title: String = r.get(4)?;
            let context = parse_context(r.get(5)?);
            self.words.add(
                writer,
                &WordDoc {
                    chunk_id: &chunk_id,
                    document_id,
                    collection: &collection,
                    title: &title,
                    heading: &heading.join(" / "),
                    body: &body,
                    context: indexed_context(context.as_ref()),
                },
            )?;
        }
        Ok(())
    }

    /// Drops the changes every derived index has saved.
    fn prune_changes(&self) -> Result<()> {
        let mut upto = self.words.applied_change()?;
        if let Some(v) = self.vector_index() {
            upto = upto.min(v.saved_change());
        }
        lock(&self.db).execute("DELETE FROM changes WHERE seq <= ?1", [upto])?;
        Ok(())
    }

    fn vector_index(&self) -> Option<Arc<VectorIndex>> {
        self.vectors.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The options of the vector index, if the store has one.
    pub fn vector_options(&self) -> Option<VectorOptions> {
        self.vector_index().map(|v| v.options().clone())
    }

    /// Opens or creates the vector index for an embedding model (writer side),
    /// bringing it up to date. Fails if the store holds another model's vectors.
    pub fn enable_vectors(&self, options: &VectorOptions) -> Result<()> {
        let guard = self.writer()?;
        if self.vector_options().as_ref() == Some(options) {
            return Ok(());
        }
        let index = Arc::new(VectorIndex::open(&self.dir.join("vectors"), options)?);
        self.repair_vectors(&index)?;
        *self.vectors.write().unwrap_or_else(|p| p.into_inner()) = Some(index);
        lock(&self.db).execute(
            "INSERT INTO meta (key, value) VALUES ('embedding_model', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [&options.model],
        )?;
        drop(guard);
        Ok(())
    }

    /// The stored content hash and pipeline fingerprint of a document, if any:
    /// lets a caller skip parsing input that has not changed.
    pub fn document_fingerprint(&self, id: &str) -> Result<Option<(String, String)>> {
        let db = self.reader()?;
        Ok(db
            .query_row("SELECT content_hash, pipeline FROM documents WHERE id = ?1", [id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?)
    }

    /// Stores a document and its chunks (and their embeddings, aligned with
    /// `chunks`) in one transaction, replacing an earlier version; does
    /// nothing if the same input was stored with the same pipeline. The word
    /// index sees it at the next `flush`; the vector index at once.
    pub fn commit_document(
        &self,
        key: &DocumentKey,
        doc: &Document,
        chunks: &[Chunk],
        embeddings: Option<&[Embedding]>,
    ) -> Result<CommitOutcome> {
        check_commit(key, chunks, embeddings)?;
        let mut guard = self.writer()?;
        let state = guard.as_mut().expect("writer taken above");
        let vectors = self.vector_index();
        if embeddings.is_some() && vectors.is_none() {
            return Err(StoreError::Invalid(
                "embeddings given, but the store has no vector index (enable_vectors first)".into(),
            ));
        }
        let mut db = lock(&self.db);
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let existing: Option<(String, String, i64)> = tx
            .query_row(
                "SELECT content_hash, pipeline, created_at FROM documents WHERE id = ?1",
                [&key.id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        if let Some((hash, pipeline, _)) = &existing {
            if *hash == key.content_hash && *pipeline == key.pipeline {
                return Ok(CommitOutcome::Unchanged);
            }
        }
        let now = now_ms();
        tx.execute(
            "INSERT OR IGNORE INTO collections (name, created_at) VALUES (?1, ?2)",
            params![key.collection, now],
        )?;
        let removed_keys = remove_chunks(&tx, &key.id)?;
        let created_at = existing.as_ref().map_or(now, |e| e.2);
        tx.execute(
            "INSERT INTO documents (id, collection, source, external_id, title, format, content_hash,
                 pipeline, metadata, text, sections, byte_size, version, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, 1, ?13, ?14)
             ON CONFLICT (id) DO UPDATE SET
                 collection = excluded.collection, source = excluded.source,
                 external_id = excluded.external_id, title = excluded.title,
                 format = excluded.format, content_hash = excluded.content_hash,
                 pipeline = excluded.pipeline, metadata = excluded.metadata, text = excluded.text,
                 sections = excluded.sections, byte_size = excluded.byte_size,
                 version = documents.version + 1, updated_at = excluded.updated_at",
            params![
                key.id,
                key.collection,
                key.source,
                doc.external_id,
                doc.title,
                doc.format.as_str(),
                key.content_hash,
                key.pipeline,
                serde_json::to_string(&doc.metadata)?,
                doc.text,
                serde_json::to_string(&doc.sections)?,
                key.byte_size as i64,
                created_at,
                now,
            ],
        )?;
        let mut ids = Vec::with_capacity(chunks.len());
        let mut vector_keys = Vec::new();
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO chunks (id, document_id, ordinal, heading_path, text, char_start, char_end, page, token_count, context)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?;
            let mut insert_embedding =
                tx.prepare_cached("INSERT INTO embeddings (chunk_id, dense, sparse) VALUES (?1, ?2, ?3)")?;
            for (i, c) in chunks.iter().enumerate() {
                let id = chunk_id(&key.id, c.ordinal, &c.text);
                insert.execute(params![
                    id,
                    key.id,
                    c.ordinal,
                    serde_json::to_string(&c.heading_path)?,
                    c.text,
                    c.start as i64,
                    c.end as i64,
                    c.page,
                    c.token_count,
                    c.context.as_ref().map(serde_json::to_string).transpose()?,
                ])?;
                if let Some(e) = embeddings.map(|e| &e[i]) {
                    let sparse = (!e.sparse.is_empty()).then(|| vectors::encode_sparse(&e.sparse));
                    insert_embedding.execute(params![id, vectors::encode_dense(&e.dense), sparse])?;
                    vector_keys.push(tx.last_insert_rowid() as u64);
                }
                ids.push(id);
            }
        }
        let op = if existing.is_some() { "replace" } else { "add" };
        tx.execute(
            "INSERT INTO changes (document_id, op, at, removed_keys) VALUES (?1, ?2, ?3, ?4)",
            params![key.id, op, now, serde_json::to_string(&removed_keys)?],
        )?;
        let seq = tx.last_insert_rowid();
        tx.commit()?;
        drop(db);

        // SQLite has it; now the derived indexes.
        let collection: Arc<str> = Arc::from(key.collection.as_str());
        self.forget_keys(&removed_keys);
        if let (Some(v), Some(e)) = (&vectors, embeddings) {
            let added = (|| -> Result<()> {
                for k in &removed_keys {
                    v.remove(*k)?;
                }
                v.reserve_for(vector_keys.len())?;
                for (k, e) in vector_keys.iter().zip(e) {
                    v.add(*k, &e.dense)?;
                }
                Ok(())
            })();
            if let Err(err) = added {
                tracing::warn!("vector index update failed ({err}); replaying from SQLite");
                self.repair_vectors(v)?;
            }
            self.remember_keys(&vector_keys, e, &collection);
        } else if let Some(v) = &vectors {
            for k in &removed_keys {
                v.remove(*k)?;
            }
        }
        if let Some(v) = &vectors {
            v.mark_applied(seq);
            state.vectors_pending = Some(seq);
        }
        let added = (|| -> Result<()> {
            self.words.delete_document(&state.writer, &key.id);
            for (c, id) in chunks.iter().zip(&ids) {
                self.words.add(
                    &state.writer,
                    &WordDoc {
                        chunk_id: id,
                        document_id: &key.id,
                        collection: &key.collection,
                        title: &doc.title,
                        heading: &c.heading_path.join(" / "),
                        body: &c.text,
                        context: indexed_context(c.context.as_ref()),
                    },
                )?;
            }
            Ok(())
        })();
        match added {
            Ok(()) => state.pending = Some(seq),
            Err(e) => {
                // Drop what the writer holds and rebuild it from SQLite.
                tracing::warn!("word index update failed ({e}); replaying from SQLite");
                state.writer.rollback()?;
                state.pending = None;
                self.repair(state)?;
            }
        }
        Ok(if existing.is_some() { CommitOutcome::Replaced } else { CommitOutcome::Added })
    }

    /// Keeps the in-memory sparse index and key map (if built) current.
    fn remember_keys(&self, keys: &[u64], embeddings: &[Embedding], collection: &Arc<str>) {
        if let Some(map) = self.key_collections.write().unwrap_or_else(|p| p.into_inner()).as_mut() {
            for k in keys {
                map.insert(*k, collection.clone());
            }
        }
        if let Some(sparse) = self.sparse.write().unwrap_or_else(|p| p.into_inner()).as_mut() {
            for (k, e) in keys.iter().zip(embeddings) {
                if !e.sparse.is_empty() {
                    sparse.add(*k, &e.sparse);
                }
            }
        }
    }

    fn forget_keys(&self, keys: &[u64]) {
        if keys.is_empty() {
            return;
        }
        if let Some(map) = self.key_collections.write().unwrap_or_else(|p| p.into_inner()).as_mut() {
            for k in keys {
                map.remove(k);
            }
        }
        if let Some(sparse) = self.sparse.write().unwrap_or_else(|p| p.into_inner()).as_mut() {
            for k in keys {
                sparse.remove(*k);
            }
        }
    }

    /// Commits the word index up to the last stored change, making every
    /// document stored so far searchable by words; saves the vector index if
    /// it was last saved a while ago.
    pub fn flush(&self) -> Result<()> {
        self.flush_inner(false)
    }

    /// Commits the word index and saves the vector index now.
    pub fn checkpoint(&self) -> Result<()> {
        self.flush_inner(true)
    }

    fn flush_inner(&self, save_vectors: bool) -> Result<()> {
        let mut guard = lock(&self.writer);
        if let Some(state) = guard.as_mut() {
            if let Some(seq) = state.pending.take() {
                self.words.commit(&mut state.writer, seq)?;
            }
            if let Some(seq) = state.vectors_pending {
                if save_vectors || state.vectors_saved_at.elapsed() >= VECTOR_SAVE_INTERVAL {
                    if let Some(v) = self.vector_index() {
                        v.save(seq)?;
                    }
                    state.vectors_pending = None;
                    state.vectors_saved_at = Instant::now();
                }
            }
            self.prune_changes()?;
        }
        Ok(())
    }

    /// Removes a document everywhere. Returns false if there was none.
    pub fn delete_document(&self, id: &str) -> Result<bool> {
        let mut guard = self.writer()?;
        let state = guard.as_mut().expect("writer taken above");
        let mut db = lock(&self.db);
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let exists: bool =
            tx.query_row("SELECT 1 FROM documents WHERE id = ?1", [id], |_| Ok(())).optional()?.is_some();
        if !exists {
            return Ok(false);
        }
        let removed_keys = remove_chunks(&tx, id)?;
        tx.execute("DELETE FROM documents WHERE id = ?1", [id])?;
        tx.execute(
            "INSERT INTO changes (document_id, op, at, removed_keys) VALUES (?1, 'delete', ?2, ?3)",
            params![id, now_ms(), serde_json::to_string(&removed_keys)?],
        )?;
        let seq = tx.last_insert_rowid();
        tx.commit()?;
        drop(db);
        self.words.delete_document(&state.writer, id);
        state.pending = Some(seq);
        self.forget_keys(&removed_keys);
        if let Some(v) = self.vector_index() {
            for k in &removed_keys {
                v.remove(*k)?;
            }
            v.mark_applied(seq);
            state.vectors_pending = Some(seq);
        }
        drop(guard);
        self.checkpoint()?;
        Ok(true)
    }

    /// Word search (BM25): the best chunks for `query`, read back from SQLite.
    pub fn search_words(&self, query: &WordQuery<'_>) -> Result<Vec<SearchHit>> {
        Ok(self.search(&query.request())?.hits)
    }

    pub fn list_documents(&self, collection: Option<&str>) -> Result<Vec<DocumentSummary>> {
        let db = self.reader()?;
        let mut q = db.prepare(&format!(
            "{SUMMARY_SELECT} WHERE (?1 IS NULL OR d.collection = ?1) ORDER BY d.collection, d.source"
        ))?;
        let rows = q.query_map([collection], summary_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A document by id, or by the external id its input gave it.
    pub fn get_document(&self, id: &str) -> Result<Option<DocumentDetail>> {
        let mut reader = self.reader()?;
        // One snapshot: the summary, text and chunks of the same version.
        let db = reader.transaction()?;
        let summary = db
            .query_row(
                &format!(
                    "{SUMMARY_SELECT} WHERE d.id = ?1 OR d.external_id = ?1 ORDER BY d.id = ?1 DESC LIMIT 1"
                ),
                [id],
                summary_from_row,
            )
            .optional()?;
        let Some(summary) = summary else {
            return Ok(None);
        };
        let (metadata, sections, text): (String, String, String) = db.query_row(
            "SELECT metadata, sections, text FROM documents WHERE id = ?1",
            [&summary.id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        let mut q = db.prepare(
            "SELECT id, ordinal, heading_path, text, char_start, char_end, page, token_count, context
             FROM chunks WHERE document_id = ?1 ORDER BY ordinal",
        )?;
        let chunks = q
            .query_map([&summary.id], |r| {
                Ok(StoredChunk {
                    id: r.get(0)?,
                    ordinal: r.get(1)?,
                    heading_path: parse_json_list(&r.get::<_, String>(2)?),
                    text: r.get(3)?,
                    start: r.get::<_, i64>(4)? as usize,
                    end: r.get::<_, i64>(5)? as usize,
                    page: r.get(6)?,
                    token_count: r.get(7)?,
                    context: parse_context(r.get(8)?),
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(Some(DocumentDetail {
            summary: summary.info,
            metadata: serde_json::from_str(&metadata)?,
            sections: serde_json::from_str::<Vec<Section>>(&sections)?,
            text,
            chunks,
        }))
    }

    /// An LLM answer kept earlier for this (document hash, chunk hash, model,
    /// template version), if any.
    pub fn llm_context(
        &self,
        document_hash: &str,
        chunk_hash: &str,
        model: &str,
        template: &str,
    ) -> Result<Option<String>> {
        let db = self.reader()?;
        let mut q = db.prepare_cached(
            "SELECT context FROM llm_contexts
             WHERE document_hash = ?1 AND chunk_hash = ?2 AND model = ?3 AND template = ?4",
        )?;
        let found =
            q.query_row(params![document_hash, chunk_hash, model, template], |r| r.get(0)).optional()?;
        Ok(found)
    }

    /// Keeps an LLM answer (at once, in its own transaction) with how it was
    /// obtained (`call`: endpoint, tokens, timings). A second answer for the
    /// same key is ignored.
    pub fn save_llm_context(
        &self,
        document_hash: &str,
        chunk_hash: &str,
        model: &str,
        template: &str,
        context: &str,
        call: &serde_json::Value,
    ) -> Result<()> {
        let db = lock(&self.db);
        db.prepare_cached(
            "INSERT OR IGNORE INTO llm_contexts
                 (document_hash, chunk_hash, model, template, context, call, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            document_hash,
            chunk_hash,
            model,
            template,
            context,
            call.to_string(),
            now_ms()
        ])?;
        Ok(())
    }

    /// How many LLM answers the store keeps.
    pub fn llm_context_count(&self) -> Result<u64> {
        let db = self.reader()?;
        Ok(db.query_row("SELECT COUNT(*) FROM llm_contexts", [], |r| r.get::<_, i64>(0))? as u64)
    }

    /// Counts in SQLite and in the word index, and whether they agree.
    pub fn stats(&self) -> Result<Stats> {
        self.words.reload()?;
        let latest = self.latest_change()?;
        let applied = self.words.applied_change()?;
        let indexed = self.words.num_docs();
        let mut reader = self.reader()?;
        // One snapshot for all the counts.
        let db = reader.transaction()?;
        let documents: i64 = db.query_row("SELECT COUNT(*) FROM documents", [], |r| r.get(0))?;
        let chunks: i64 = db.query_row("SELECT COUNT(*) FROM chunks", [], |r| r.get(0))?;
        let mut q = db.prepare(
            "SELECT c.name,
                    (SELECT COUNT(*) FROM documents d WHERE d.collection = c.name),
                    (SELECT COUNT(*) FROM chunks k JOIN documents d ON d.id = k.document_id WHERE d.collection = c.name)
             FROM collections c ORDER BY c.name",
        )?;
        let collections = q
            .query_map([], |r| {
                Ok(CollectionStats {
                    name: r.get(0)?,
                    documents: r.get::<_, i64>(1)? as u64,
                    chunks: r.get::<_, i64>(2)? as u64,
                })
            })?
            .collect::<Result<_, _>>()?;
        let orphans: i64 = db.query_row(
            "SELECT COUNT(*) FROM chunks c LEFT JOIN documents d ON d.id = c.document_id WHERE d.id IS NULL",
            [],
            |r| r.get(0),
        )?;
        let embedded: i64 = db.query_row("SELECT COUNT(*) FROM embeddings", [], |r| r.get(0))?;
        drop(q);
        drop(db);
        let mut problems = Vec::new();
        let vector_index = self.vector_index().map(|v| VectorStats {
            model: v.options().model.clone(),
            dimensions: v.options().dimensions,
            vectors: v.len() as u64,
            applied_change: v.applied_change(),
            saved_change: v.saved_change(),
        });
        if let Some(v) = &vector_index {
            if v.applied_change != latest {
                problems.push(format!(
                    "vector index is at change {}, SQLite at {latest} (a writer is running, or the next start repairs it)",
                    v.applied_change
                ));
            } else if v.vectors != embedded as u64 {
                problems.push(format!("vector index holds {} vectors, SQLite {embedded}", v.vectors));
            }
        } else if embedded > 0 {
            problems.push(format!("SQLite holds {embedded} embeddings but there is no vector index"));
        }
        if applied != latest {
            problems.push(format!(
                "word index is at change {applied}, SQLite at {latest} (a writer is running, or the next start repairs it)"
            ));
        }
        if indexed != chunks as u64 {
            problems.push(format!("word index holds {indexed} chunks, SQLite {chunks}"));
        }
        if orphans > 0 {
            problems.push(format!("{orphans} chunks belong to no document"));
        }
        Ok(Stats {
            documents: documents as u64,
            chunks: chunks as u64,
            collections,
            word_index: IndexStats { chunks: indexed, applied_change: applied },
            embedded_chunks: embedded as u64,
            vector_index,
            latest_change: latest,
            consistent: problems.is_empty(),
            problems,
        })
    }

    /// Records a new running job; returns its id.
    /// Jobs are written by the writing process: this takes the writer first
    /// (so that taking it later cannot mistake this job for a dead one).
    pub fn create_job(&self, kind: &str, collection: Option<&str>) -> Result<String> {
        drop(self.writer()?);
        let now = now_ms();
        let id = format!(
            "job-{}",
            &blake3::hash(
                format!("{kind}{now}{}{:?}", std::process::id(), std::time::Instant::now()).as_bytes()
            )
            .to_hex()[..16]
        );
        lock(&self.db).execute(
            "INSERT INTO jobs (id, kind, state, collection, summary, created_at, updated_at)
             VALUES (?1, ?2, 'running', ?3, '{}', ?4, ?4)",
            params![id, kind, collection, now],
        )?;
        Ok(id)
    }

    /// Ends a job with its final state (`succeeded`, `failed`) and summary.
    pub fn finish_job(&self, id: &str, state: &str, summary: &serde_json::Value) -> Result<()> {
        let now = now_ms();
        lock(&self.db).execute(
            "UPDATE jobs SET state = ?2, summary = ?3, updated_at = ?4, finished_at = ?4 WHERE id = ?1",
            params![id, state, summary.to_string(), now],
        )?;
        Ok(())
    }

    pub fn get_job(&self, id: &str) -> Result<Option<JobRecord>> {
        let db = self.reader()?;
        Ok(db
            .query_row(
                "SELECT id, kind, state, collection, summary, created_at, updated_at, finished_at FROM jobs WHERE id = ?1",
                [id],
                |r| {
                    Ok(JobRecord {
                        id: r.get(0)?,
                        kind: r.get(1)?,
                        state: r.get(2)?,
                        collection: r.get(3)?,
                        summary: serde_json::from_str(&r.get::<_, String>(4)?).unwrap_or_default(),
                        created_at: r.get(5)?,
                        updated_at: r.get(6)?,
                        finished_at: r.get(7)?,
                    })
                },
            )
            .optional()?)
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        if let Err(e) = self.checkpoint() {
            tracing::warn!("could not commit the word index on close: {e}; the next start repairs it");
        }
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
        (SELECT COUNT(*) FROM chunks c WHERE c.document_id = d.id)
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
    Ok(DocumentSummary { info, chunks: r.get::<_, i64>(11)? as u64 })
}

/// What either backend refuses before it writes anything: a bad collection
/// name, embeddings that do not match the chunks one for one.
pub(crate) fn check_commit(
    key: &DocumentKey,
    chunks: &[Chunk],
    embeddings: Option<&[Embedding]>,
) -> Result<()> {
    datafactory_core::config::validate_collection(&key.collection).map_err(StoreError::Invalid)?;
    match embeddings {
        Some(e) if e.len() != chunks.len() => {
            Err(StoreError::Invalid(format!("{} embeddings for {} chunks", e.len(), chunks.len())))
        }
        _ => Ok(()),
    }
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
