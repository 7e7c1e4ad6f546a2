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

mod records;
mod schema;
pub mod words;

pub use records::*;

use datafactory_core::{chunk_id, Chunk, Document, Format, Section};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use tantivy::{IndexWriter, TantivyDocument};
use words::{WordDoc, WordIndex};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("word index: {0}")]
    Index(String),
    #[error("another DataFactory process is writing to this data directory; wait for it to finish or stop it")]
    Busy,
    #[error("{0}")]
    Invalid(String),
    #[error("the store in {path} has schema version {found}, newer than this program's {supported}; upgrade DataFactory")]
    TooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
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
    /// The last change added to the writer but not yet committed.
    pending: Option<i64>,
}

pub struct Store {
    dir: PathBuf,
    db: Mutex<Connection>,
    words: WordIndex,
    // Lock order: `writer` before `db`.
    writer: Mutex<Option<WriterState>>,
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

impl Store {
    /// Opens (or creates) the store in `dir`. If the word index is behind
    /// SQLite and no other process is writing, it is repaired now.
    pub fn open(dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(dir)?;
        let db_path = dir.join("datafactory.sqlite3");
        let mut db = Connection::open(&db_path)?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "NORMAL")?;
        db.pragma_update(None, "foreign_keys", "ON")?;
        db.busy_timeout(std::time::Duration::from_secs(10))?;
        let found: i64 = db.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if found > schema::SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: db_path,
                found,
                supported: schema::SCHEMA_VERSION,
            });
        }
        schema::migrate(&mut db)?;
        let words = WordIndex::open(&dir.join("words"))?;
        let store = Store {
            dir: dir.to_path_buf(),
            db: Mutex::new(db),
            words,
            writer: Mutex::new(None),
        };
        if store.words.applied_change()? != store.latest_change()? {
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

    /// Takes the writer if this process does not hold it yet. Taking it means
    /// no other process writes: jobs left `running` died with their process,
    /// and an index behind SQLite is repaired.
    fn writer(&self) -> Result<MutexGuard<'_, Option<WriterState>>> {
        let mut guard = lock(&self.writer);
        if guard.is_none() {
            let mut state = WriterState {
                writer: self.words.writer()?,
                pending: None,
            };
            self.words.reload()?;
            self.repair(&mut state)?;
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
        let db = lock(&self.db);
        Ok(db
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'changes'",
                [],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0))
    }

    /// Brings the word index up to SQLite's latest change. Returns the number
    /// of documents re-indexed.
    fn repair(&self, state: &mut WriterState) -> Result<usize> {
        let applied = self.words.applied_change()?;
        let latest = self.latest_change()?;
        if applied == latest {
            return Ok(0);
        }
        let db = lock(&self.db);
        let unapplied: i64 = db.query_row(
            "SELECT COUNT(*) FROM changes WHERE seq > ?1",
            [applied],
            |r| r.get(0),
        )?;
        let replay = applied < latest && unapplied == latest - applied;
        let ids: Vec<String> = if replay {
            let mut q = db.prepare("SELECT DISTINCT document_id FROM changes WHERE seq > ?1")?;
            let ids = q
                .query_map([applied], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            ids
        } else {
            tracing::warn!(
                "word index (change {applied}) cannot be replayed to change {latest}; rebuilding it from SQLite"
            );
            state.writer.delete_all_documents()?;
            let mut q = db.prepare("SELECT id FROM documents ORDER BY id")?;
            let ids = q.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
            ids
        };
        for id in &ids {
            self.words.delete_document(&state.writer, id);
            self.index_document_from_db(&db, &state.writer, id)?;
        }
        drop(db);
        self.words.commit(&mut state.writer, latest)?;
        state.pending = None;
        self.prune_changes(latest)?;
        tracing::info!(
            "word index repaired: {} document(s) re-indexed, now at change {latest}",
            ids.len()
        );
        Ok(ids.len())
    }

    /// Adds a stored document's chunks to the word index writer.
    fn index_document_from_db(
        &self,
        db: &Connection,
        writer: &IndexWriter<TantivyDocument>,
        document_id: &str,
    ) -> Result<()> {
        let mut q = db.prepare_cached(
            "SELECT c.id, c.heading_path, c.text, d.collection, d.title
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
            self.words.add(
                writer,
                &WordDoc {
                    chunk_id: &chunk_id,
                    document_id,
                    collection: &collection,
                    title: &title,
                    heading: &heading.join(" / "),
                    body: &body,
                },
            )?;
        }
        Ok(())
    }

    fn prune_changes(&self, upto: i64) -> Result<()> {
        lock(&self.db).execute("DELETE FROM changes WHERE seq <= ?1", [upto])?;
        Ok(())
    }

    /// The stored content hash and pipeline fingerprint of a document, if any:
    /// lets a caller skip parsing input that has not changed.
    pub fn document_fingerprint(&self, id: &str) -> Result<Option<(String, String)>> {
        let db = lock(&self.db);
        Ok(db
            .query_row(
                "SELECT content_hash, pipeline FROM documents WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// Stores a document and its chunks in one transaction, replacing an
    /// earlier version; does nothing if the same input was stored with the
    /// same pipeline. The word index sees it at the next `flush`.
    pub fn commit_document(
        &self,
        key: &DocumentKey,
        doc: &Document,
        chunks: &[Chunk],
    ) -> Result<CommitOutcome> {
        datafactory_core::config::validate_collection(&key.collection)
            .map_err(StoreError::Invalid)?;
        let mut guard = self.writer()?;
        let state = guard.as_mut().expect("writer taken above");
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
        tx.execute("DELETE FROM chunks WHERE document_id = ?1", [&key.id])?;
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
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO chunks (id, document_id, ordinal, heading_path, text, char_start, char_end, page, token_count)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for c in chunks {
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
                ])?;
                ids.push(id);
            }
        }
        let op = if existing.is_some() { "replace" } else { "add" };
        tx.execute(
            "INSERT INTO changes (document_id, op, at) VALUES (?1, ?2, ?3)",
            params![key.id, op, now],
        )?;
        let seq = tx.last_insert_rowid();
        tx.commit()?;
        drop(db);

        // SQLite has it; now the word index (committed later, in a batch).
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
        Ok(if existing.is_some() {
            CommitOutcome::Replaced
        } else {
            CommitOutcome::Added
        })
    }

    /// Commits the word index up to the last stored change, making every
    /// document stored so far searchable.
    pub fn flush(&self) -> Result<()> {
        let mut guard = lock(&self.writer);
        if let Some(state) = guard.as_mut() {
            if let Some(seq) = state.pending.take() {
                self.words.commit(&mut state.writer, seq)?;
                self.prune_changes(seq)?;
            }
        }
        Ok(())
    }

    /// Removes a document everywhere. Returns false if there was none.
    pub fn delete_document(&self, id: &str) -> Result<bool> {
        let mut guard = self.writer()?;
        let state = guard.as_mut().expect("writer taken above");
        let mut db = lock(&self.db);
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx.execute("DELETE FROM chunks WHERE document_id = ?1", [id])?;
        let d = tx.execute("DELETE FROM documents WHERE id = ?1", [id])?;
        if d == 0 && n == 0 {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO changes (document_id, op, at) VALUES (?1, 'delete', ?2)",
            params![id, now_ms()],
        )?;
        let seq = tx.last_insert_rowid();
        tx.commit()?;
        drop(db);
        self.words.delete_document(&state.writer, id);
        state.pending = Some(seq);
        drop(guard);
        self.flush()?;
        Ok(true)
    }

    /// Word search (BM25): the best chunks for `query`, read back from SQLite.
    pub fn search_words(&self, query: &WordQuery<'_>) -> Result<Vec<SearchHit>> {
        let hits = self.words.search(
            query.text,
            query.collection,
            query.top_k,
            query.title_boost,
            query.heading_boost,
        )?;
        let db = lock(&self.db);
        let mut q = db.prepare_cached(
            "SELECT c.document_id, c.ordinal, c.heading_path, c.text, c.char_start, c.char_end, c.page,
                    d.title, d.source, d.collection
             FROM chunks c JOIN documents d ON d.id = c.document_id WHERE c.id = ?1",
        )?;
        let mut out = Vec::with_capacity(hits.len());
        for (chunk_id, score) in hits {
            let hit = q
                .query_row([&chunk_id], |r| {
                    Ok(SearchHit {
                        chunk_id: chunk_id.clone(),
                        score,
                        document_id: r.get(0)?,
                        ordinal: r.get(1)?,
                        heading_path: parse_json_list(&r.get::<_, String>(2)?),
                        text: r.get(3)?,
                        start: r.get::<_, i64>(4)? as usize,
                        end: r.get::<_, i64>(5)? as usize,
                        page: r.get(6)?,
                        title: r.get(7)?,
                        source: r.get(8)?,
                        collection: r.get(9)?,
                    })
                })
                .optional()?;
            // A chunk the index has but SQLite no longer does is never shown.
            out.extend(hit);
        }
        Ok(out)
    }

    pub fn list_documents(&self, collection: Option<&str>) -> Result<Vec<DocumentSummary>> {
        let db = lock(&self.db);
        let mut q = db.prepare(&format!(
            "{SUMMARY_SELECT} WHERE (?1 IS NULL OR d.collection = ?1) ORDER BY d.collection, d.source"
        ))?;
        let rows = q.query_map([collection], summary_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A document by id, or by the external id its input gave it.
    pub fn get_document(&self, id: &str) -> Result<Option<DocumentDetail>> {
        let db = lock(&self.db);
        let summary = db
            .query_row(
                &format!("{SUMMARY_SELECT} WHERE d.id = ?1 OR d.external_id = ?1 ORDER BY d.id = ?1 DESC LIMIT 1"),
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
            "SELECT id, ordinal, heading_path, text, char_start, char_end, page, token_count
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
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(Some(DocumentDetail {
            summary,
            metadata: serde_json::from_str(&metadata)?,
            sections: serde_json::from_str::<Vec<Section>>(&sections)?,
            text,
            chunks,
        }))
    }

    /// Counts in SQLite and in the word index, and whether they agree.
    pub fn stats(&self) -> Result<Stats> {
        self.words.reload()?;
        let latest = self.latest_change()?;
        let applied = self.words.applied_change()?;
        let indexed = self.words.num_docs();
        let db = lock(&self.db);
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
        let mut problems = Vec::new();
        if applied != latest {
            problems.push(format!(
                "word index is at change {applied}, SQLite at {latest} (a writer is running, or the next start repairs it)"
            ));
        }
        if indexed != chunks as u64 {
            problems.push(format!(
                "word index holds {indexed} chunks, SQLite {chunks}"
            ));
        }
        if orphans > 0 {
            problems.push(format!("{orphans} chunks belong to no document"));
        }
        Ok(Stats {
            documents: documents as u64,
            chunks: chunks as u64,
            collections,
            word_index: IndexStats {
                chunks: indexed,
                applied_change: applied,
            },
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
                format!(
                    "{kind}{now}{}{:?}",
                    std::process::id(),
                    std::time::Instant::now()
                )
                .as_bytes()
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
        let db = lock(&self.db);
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

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::warn!(
                "could not commit the word index on close: {e}; the next start repairs it"
            );
        }
    }
}

const SUMMARY_SELECT: &str =
    "SELECT d.id, d.collection, d.source, d.external_id, d.title, d.format,
        d.content_hash, d.byte_size, d.version, d.created_at, d.updated_at,
        (SELECT COUNT(*) FROM chunks c WHERE c.document_id = d.id)
     FROM documents d";

fn summary_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DocumentSummary> {
    let format: String = r.get(5)?;
    Ok(DocumentSummary {
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
        chunks: r.get::<_, i64>(11)? as u64,
    })
}

fn parse_json_list(s: &str) -> Vec<String> {
    serde_json::from_str(s).unwrap_or_default()
}

#[cfg(test)]
mod tests;

#[cfg(test)]
impl Store {
    /// Closes like a process that dies: word-index work not yet committed is lost.
    fn crash(self) {
        if let Some(mut state) = lock(&self.writer).take() {
            state.writer.rollback().expect("rollback");
        }
    }
}
