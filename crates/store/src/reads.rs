//! Reads on the query-only connections: word search, document listings and
//! details, the LLM-context cache and the store's statistics.
//!
//! Nothing here writes documents or chunks (the LLM-context cache is the one
//! small table it writes).

use super::*;

impl EmbeddedStore {
    /// Word search (BM25): the best chunks for `query`, read back from SQLite.
    pub fn search_words(&self, query: &WordQuery<'_>) -> Result<Vec<SearchHit>> {
        Ok(self.search(&query.request())?.hits)
    }

    /// A page of the documents that pass the query's filters, and how many
    /// pass (one snapshot for both).
    pub fn list_documents_page(&self, query: &DocumentQuery<'_>) -> Result<DocumentPage> {
        let mut reader = self.reader()?;
        let db = reader.transaction()?;
        let filter = "WHERE (?1 IS NULL OR d.collection = ?1)
            AND (?2 IS NULL OR json_extract(d.metadata, '$.analysis.doc_type') = ?2)
            AND (?3 IS NULL OR json_extract(d.metadata, '$.analysis.language.code') = ?3)
            AND (?4 IS NULL OR d.format = ?4)";
        let (c, t, l, f) = (query.collection, query.doc_type, query.language, query.format);
        let total: i64 =
            db.query_row(&format!("SELECT COUNT(*) FROM documents d {filter}"), params![c, t, l, f], |r| {
                r.get(0)
            })?;
        // SQLite reads a negative LIMIT as none.
        let limit = query.limit.map(|n| n.min(i64::MAX as u64) as i64).unwrap_or(-1);
        let offset = query.offset.min(i64::MAX as u64) as i64;
        let mut q = db.prepare(&format!(
            "{SUMMARY_SELECT} {filter} ORDER BY d.collection, d.source, d.id LIMIT ?5 OFFSET ?6"
        ))?;
        let documents =
            q.query_map(params![c, t, l, f, limit, offset], summary_from_row)?.collect::<Result<_, _>>()?;
        Ok(DocumentPage { documents, total: total as u64 })
    }

    /// Every document (of one collection, or all), by collection and source.
    pub fn list_documents(&self, collection: Option<&str>) -> Result<Vec<DocumentSummary>> {
        Ok(self.list_documents_page(&DocumentQuery { collection, ..Default::default() })?.documents)
    }

    /// Every collection with its document and chunk counts, by name.
    pub fn collections(&self) -> Result<Vec<CollectionStats>> {
        let mut reader = self.reader()?;
        let db = reader.transaction()?;
        collection_counts(&db)
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
    /// Exact and near-duplicate passages among all chunks (reads every
    /// chunk's hashes: for `datafactory stats`, not for a health check).
    pub fn duplicate_report(&self, near_threshold: f64) -> Result<crate::DuplicateReport> {
        let db = self.reader()?;
        let mut q = db.prepare("SELECT COALESCE(text_hash, id), minhash FROM chunks")?;
        let chunks: Vec<(String, Option<Vec<u32>>)> = q
            .query_map([], |r| {
                Ok((r.get(0)?, r.get::<_, Option<Vec<u8>>>(1)?.map(|b| crate::decode_minhash(&b))))
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(crate::near_duplicates(&chunks, near_threshold))
    }

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
        let collections = collection_counts(&db)?;
        let orphans: i64 = db.query_row(
            "SELECT COUNT(*) FROM chunks c LEFT JOIN documents d ON d.id = c.document_id WHERE d.id IS NULL",
            [],
            |r| r.get(0),
        )?;
        let (embedded, windows): (i64, i64) =
            db.query_row("SELECT COUNT(DISTINCT chunk_id), COUNT(*) FROM embeddings", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
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
            } else if v.vectors != windows as u64 {
                problems.push(format!("vector index holds {} vectors, SQLite {windows}", v.vectors));
            }
        } else if windows > 0 {
            problems.push(format!("SQLite holds {windows} embeddings but there is no vector index"));
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
}

/// Each collection's name and counts, by name.
fn collection_counts(db: &rusqlite::Connection) -> Result<Vec<CollectionStats>> {
    let mut q = db.prepare(
        "SELECT c.name,
                (SELECT COUNT(*) FROM documents d WHERE d.collection = c.name),
                (SELECT COUNT(*) FROM chunks k JOIN documents d ON d.id = k.document_id WHERE d.collection = c.name)
         FROM collections c ORDER BY c.name",
    )?;
    let rows = q.query_map([], |r| {
        Ok(CollectionStats {
            name: r.get(0)?,
            documents: r.get::<_, i64>(1)? as u64,
            chunks: r.get::<_, i64>(2)? as u64,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
