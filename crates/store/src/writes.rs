//! The write path: a document and its chunks and vectors in one SQLite
//! transaction, the word index flushed in batches, the vector index saved,
//! documents deleted.
//!
//! Every change to stored documents goes through here.

use super::*;

impl EmbeddedStore {
    pub(crate) fn vector_index(&self) -> Option<Arc<VectorIndex>> {
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
        let dir = self.dir.join("vectors");
        let index = Arc::new(VectorIndex::open(&dir, options)?);
        self.repair_vectors(&index)?;
        if VectorIndex::saved_options(&dir)?.is_none() {
            // Saved at once, empty: a process that dies before the first
            // save (the end of the ingest, or a minute) leaves the index's
            // options on disk, so the next open replays its vectors from
            // SQLite instead of finding no vector index.
            index.save(index.applied_change())?;
        }
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
        self.commit_windows(key, doc, chunks, single_windows(embeddings).as_deref())
    }

    /// [`EmbeddedStore::commit_document`] with any number of vectors per
    /// chunk (one per window of its text, first first; at least one each).
    pub fn commit_windows(
        &self,
        key: &DocumentKey,
        doc: &Document,
        chunks: &[Chunk],
        windows: Option<&[Vec<Embedding>]>,
    ) -> Result<CommitOutcome> {
        check_commit(key, chunks, windows)?;
        let embeddings = windows;
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
                "INSERT INTO chunks (id, document_id, ordinal, heading_path, text, char_start, char_end, page, token_count, context, text_hash, minhash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?;
            let mut insert_embedding = tx.prepare_cached(
                "INSERT INTO embeddings (chunk_id, window_ordinal, dense, sparse) VALUES (?1, ?2, ?3, ?4)",
            )?;
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
                    crate::passage_hash(&c.text),
                    crate::minhash(&c.text).map(|s| crate::encode_minhash(&s)),
                ])?;
                for (w, e) in embeddings.map_or(&[][..], |e| &e[i]).iter().enumerate() {
                    let sparse = (!e.sparse.is_empty()).then(|| vectors::encode_sparse(&e.sparse));
                    insert_embedding.execute(params![
                        id,
                        w as i64,
                        vectors::encode_dense(&e.dense),
                        sparse
                    ])?;
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
        let flat: Option<Vec<&Embedding>> = embeddings.map(|e| e.iter().flatten().collect());
        if let (Some(v), Some(e)) = (&vectors, &flat) {
            let added = (|| -> Result<()> {
                for k in &removed_keys {
                    v.remove(*k)?;
                }
                v.reserve_for(vector_keys.len())?;
                for (k, e) in vector_keys.iter().zip(e.iter()) {
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
                        language: crate::words::document_language(doc),
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
                let replayed = state.writer.rollback().map_err(StoreError::from).and_then(|_| {
                    state.pending = None;
                    self.repair(state)
                });
                if let Err(e) = replayed {
                    // A writer that failed this way is dead: the next write
                    // takes a new one, which catches up from SQLite.
                    *guard = None;
                    return Err(e);
                }
            }
        }
        Ok(if existing.is_some() { CommitOutcome::Replaced } else { CommitOutcome::Added })
    }

    /// Keeps the in-memory sparse index and key map (if built) current.
    pub(crate) fn remember_keys(&self, keys: &[u64], embeddings: &[&Embedding], collection: &Arc<str>) {
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

    pub(crate) fn forget_keys(&self, keys: &[u64]) {
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

    pub(crate) fn flush_inner(&self, save_vectors: bool) -> Result<()> {
        let mut guard = lock(&self.writer);
        if let Some(state) = guard.as_mut() {
            if let Some(seq) = state.pending.take() {
                if let Err(e) = self.words.commit(&mut state.writer, seq) {
                    // A failed commit (a full disk) kills tantivy's writer: it
                    // would go on taking documents and committing without
                    // them, under a later change number, so they would never
                    // be replayed. Drop it: the next write takes a new writer,
                    // which catches up from the last commit that succeeded.
                    *guard = None;
                    return Err(e);
                }
                self.note_durable(|| format!("words committed up to change {seq}"));
            }
            if let Some(seq) = state.vectors_pending {
                if save_vectors || state.vectors_saved_at.elapsed() >= VECTOR_SAVE_INTERVAL {
                    if let Some(v) = self.vector_index() {
                        v.save(seq)?;
                        self.note_durable(|| format!("vectors saved up to change {seq}"));
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
}
