//! Bringing the derived indexes up to SQLite: the word index caught up from
//! `changes` (or rebuilt when they were pruned), the vector index checked
//! against the stored embeddings, and old changes pruned.
//!
//! Runs in the writing process only; SQLite itself is never changed here except
//! to prune `changes` the word index already holds.

use super::*;

impl EmbeddedStore {
    /// What an index that includes changes up to `applied` must do to catch up.
    pub(crate) fn catchup(&self, applied: i64, latest: i64) -> Result<Catchup> {
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
    pub(crate) fn repair(&self, state: &mut WriterState) -> Result<usize> {
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

    /// A store whose `vectors/` folder is gone (a restore that left it out, a
    /// deleted folder) while SQLite holds the vectors: the index is rebuilt
    /// from them, with the model SQLite names, the dimensions of the stored
    /// vectors and the default index settings (an ingest with other settings
    /// rebuilds it again). Without the writer (another process writes), it is
    /// left to that process.
    pub(crate) fn rebuild_lost_vectors(&self) -> Result<()> {
        let found = {
            let db = lock(&self.db);
            let model: Option<String> = db
                .query_row("SELECT value FROM meta WHERE key = 'embedding_model'", [], |r| r.get(0))
                .optional()?;
            let first: Option<Vec<u8>> =
                db.query_row("SELECT dense FROM embeddings LIMIT 1", [], |r| r.get(0)).optional()?;
            model.zip(first)
        };
        let Some((model, first)) = found else { return Ok(()) };
        let defaults = datafactory_core::config::VectorConfig::default();
        let options = VectorOptions {
            model,
            dimensions: vectors::decode_dense(&first).len(),
            quantization: defaults.quantization,
            connectivity: defaults.connectivity,
            expansion_add: defaults.expansion_add,
            expansion_search: defaults.expansion_search,
            exact_below: defaults.exact_below,
        };
        tracing::warn!(
            "the vector index ({}) is missing: rebuilding it from the vectors in SQLite",
            self.dir.join("vectors").display()
        );
        match self.enable_vectors(&options) {
            Err(StoreError::Busy) => {
                tracing::warn!("the vector index is missing and another process is writing: it rebuilds it");
                Ok(())
            }
            other => other,
        }
    }

    /// Brings the vector index up to SQLite's latest change and saves it.
    pub(crate) fn repair_vectors(&self, v: &VectorIndex) -> Result<()> {
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
    pub(crate) fn index_document_from_db(
        &self,
        db: &Connection,
        writer: &IndexWriter<TantivyDocument>,
        document_id: &str,
    ) -> Result<()> {
        let mut q = db.prepare_cached(
            "SELECT c.id, c.heading_path, c.text, d.collection, d.title, c.context,
                    json_extract(d.metadata, '$.analysis.language.code')
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
            let language: Option<String> = r.get::<_, Option<String>>(6).ok().flatten();
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
                    language: language.as_deref(),
                },
            )?;
        }
        Ok(())
    }

    /// Drops the changes every derived index has saved.
    pub(crate) fn prune_changes(&self) -> Result<()> {
        let mut upto = self.words.applied_change()?;
        if let Some(v) = self.vector_index() {
            upto = upto.min(v.saved_change());
        }
        lock(&self.db).execute("DELETE FROM changes WHERE seq <= ?1", [upto])?;
        Ok(())
    }
}
