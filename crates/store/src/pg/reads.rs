//! Reads on PostgreSQL: document listings and details, the LLM-context cache
//! and the store's statistics.
//!
//! Writes only the LLM-context cache.

use super::*;

impl PgStore {
    /// A page of the documents that pass the query's filters, and how many pass.
    pub fn list_documents_page(&self, query: &DocumentQuery<'_>) -> Result<DocumentPage> {
        let mut conn = self.conn()?;
        let mut tx = read_snapshot(&mut conn)?;
        let filter = "WHERE ($1::text IS NULL OR d.collection = $1)
            AND ($2::text IS NULL OR d.metadata->'analysis'->>'doc_type' = $2)
            AND ($3::text IS NULL OR d.metadata->'analysis'->'language'->>'code' = $3)
            AND ($4::text IS NULL OR d.format = $4)";
        let (c, t, l, f) = (query.collection, query.doc_type, query.language, query.format);
        let total: i64 =
            tx.query_one(&format!("SELECT COUNT(*) FROM documents d {filter}"), &[&c, &t, &l, &f])?.get(0);
        let limit = query.limit.map(|n| n.min(i64::MAX as u64) as i64);
        let offset = query.offset.min(i64::MAX as u64) as i64;
        let rows = tx.query(
            &format!("{SUMMARY_SELECT} {filter} ORDER BY d.collection, d.source, d.id LIMIT $5 OFFSET $6"),
            &[&c, &t, &l, &f, &limit, &offset],
        )?;
        let documents = rows.iter().map(summary_from_row).collect::<Result<_>>()?;
        tx.commit()?;
        Ok(DocumentPage { documents, total: total as u64 })
    }

    /// Every collection with its document and chunk counts, by name.
    pub fn collections(&self) -> Result<Vec<CollectionStats>> {
        let mut conn = self.conn()?;
        let mut tx = read_snapshot(&mut conn)?;
        let collections = collection_counts(&mut tx)?;
        tx.commit()?;
        Ok(collections)
    }

    /// A document by id, or by the external id its input gave it.
    pub fn get_document(&self, id: &str) -> Result<Option<DocumentDetail>> {
        let mut conn = self.conn()?;
        let mut tx = read_snapshot(&mut conn)?;
        let Some(row) = tx.query_opt(
            &format!(
                "{SUMMARY_SELECT} WHERE d.id = $1 OR d.external_id = $1 ORDER BY d.id = $1 DESC LIMIT 1"
            ),
            &[&id],
        )?
        else {
            return Ok(None);
        };
        let summary = summary_from_row(&row)?;
        let r =
            tx.query_one("SELECT metadata, sections, text FROM documents WHERE id = $1", &[&summary.id])?;
        let metadata: serde_json::Value = r.get(0);
        let sections: serde_json::Value = r.get(1);
        let text: String = r.get(2);
        let chunks = tx
            .query(
                "SELECT id, ordinal, heading_path, text, char_start, char_end, page, token_count, context
                 FROM chunks WHERE document_id = $1 ORDER BY ordinal",
                &[&summary.id],
            )?
            .iter()
            .map(|r| StoredChunk {
                id: r.get(0),
                ordinal: r.get::<_, i32>(1) as u32,
                heading_path: json_list(r.get(2)),
                text: r.get(3),
                start: r.get::<_, i64>(4) as usize,
                end: r.get::<_, i64>(5) as usize,
                page: r.get::<_, Option<i32>>(6).map(|p| p as u32),
                token_count: r.get::<_, i32>(7) as u32,
                context: r
                    .get::<_, Option<serde_json::Value>>(8)
                    .and_then(|v| serde_json::from_value(v).ok()),
            })
            .collect();
        tx.commit()?;
        Ok(Some(DocumentDetail {
            summary: summary.info,
            metadata: serde_json::from_value(metadata)?,
            sections: serde_json::from_value(sections)?,
            text,
            chunks,
        }))
    }

    pub fn llm_context(
        &self,
        document_hash: &str,
        chunk_hash: &str,
        model: &str,
        template: &str,
    ) -> Result<Option<String>> {
        let mut conn = self.conn()?;
        Ok(conn
            .query_opt(
                "SELECT context FROM llm_contexts
                 WHERE document_hash = $1 AND chunk_hash = $2 AND model = $3 AND template = $4",
                &[&document_hash, &chunk_hash, &model, &template],
            )?
            .map(|r| r.get(0)))
    }

    pub fn save_llm_context(
        &self,
        document_hash: &str,
        chunk_hash: &str,
        model: &str,
        template: &str,
        context: &str,
        call: &serde_json::Value,
    ) -> Result<()> {
        let mut conn = self.conn()?;
        conn.execute(
            "INSERT INTO llm_contexts (document_hash, chunk_hash, model, template, context, call, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            &[&document_hash, &chunk_hash, &model, &template, &context, call, &now_ms()],
        )?;
        Ok(())
    }

    pub fn llm_context_count(&self) -> Result<u64> {
        let mut conn = self.conn()?;
        Ok(conn.query_one("SELECT COUNT(*) FROM llm_contexts", &[])?.get::<_, i64>(0) as u64)
    }

    /// Counts, read in one snapshot. The word "index" is a column of the
    /// chunks and the vectors a table: both always agree with the chunks.
    /// Exact and near-duplicate passages among all chunks.
    pub fn duplicate_report(&self, near_threshold: f64) -> Result<crate::DuplicateReport> {
        let mut conn = self.conn()?;
        let chunks: Vec<(String, Option<Vec<u32>>)> = conn
            .query("SELECT COALESCE(text_hash, id), minhash FROM chunks", &[])?
            .iter()
            .map(|r| (r.get(0), r.get::<_, Option<&[u8]>>(1).map(crate::decode_minhash)))
            .collect();
        Ok(crate::near_duplicates(&chunks, near_threshold))
    }

    pub fn stats(&self) -> Result<Stats> {
        let vectors = self.vector_options();
        let mut conn = self.conn()?;
        let mut tx = read_snapshot(&mut conn)?;
        let latest: i64 =
            tx.query_one("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM changes", &[])?.get(0);
        let documents: i64 = tx.query_one("SELECT COUNT(*) FROM documents", &[])?.get(0);
        let chunks: i64 = tx.query_one("SELECT COUNT(*) FROM chunks", &[])?.get(0);
        let collections = collection_counts(&mut tx)?;
        let (embedded, windows): (i64, i64) = match &vectors {
            Some(_) => {
                let r = tx.query_one("SELECT COUNT(DISTINCT chunk_id), COUNT(*) FROM embeddings", &[])?;
                (r.get(0), r.get(1))
            }
            None => (0, 0),
        };
        tx.commit()?;
        Ok(Stats {
            documents: documents as u64,
            chunks: chunks as u64,
            collections,
            word_index: IndexStats { chunks: chunks as u64, applied_change: latest },
            embedded_chunks: embedded as u64,
            vector_index: vectors.map(|v| VectorStats {
                model: v.model,
                dimensions: v.dimensions,
                vectors: windows as u64,
                applied_change: latest,
                saved_change: latest,
            }),
            latest_change: latest,
            consistent: true,
            problems: Vec::new(),
        })
    }
}

/// Each collection's name and counts, by name.
fn collection_counts(tx: &mut Transaction<'_>) -> Result<Vec<CollectionStats>> {
    Ok(tx
        .query(
            "SELECT c.name,
                (SELECT COUNT(*) FROM documents d WHERE d.collection = c.name),
                (SELECT COUNT(*) FROM chunks k JOIN documents d ON d.id = k.document_id WHERE d.collection = c.name)
             FROM collections c ORDER BY c.name",
            &[],
        )?
        .iter()
        .map(|r| CollectionStats {
            name: r.get(0),
            documents: r.get::<_, i64>(1) as u64,
            chunks: r.get::<_, i64>(2) as u64,
        })
        .collect())
}

pub(crate) const SUMMARY_SELECT: &str =
    "SELECT d.id, d.collection, d.source, d.external_id, d.title, d.format,
        d.content_hash, d.byte_size, d.version, d.created_at, d.updated_at,
        (SELECT COUNT(*) FROM chunks c WHERE c.document_id = d.id),
        d.metadata->'analysis'->>'doc_type', d.metadata->'analysis'->'language'->>'code'
     FROM documents d";

pub(crate) fn summary_from_row(r: &Row) -> Result<DocumentSummary> {
    let format: &str = r.get(5);
    let info = DocumentInfo {
        id: r.get(0),
        collection: r.get(1),
        source: r.get(2),
        external_id: r.get(3),
        title: r.get(4),
        format: Format::parse_name(format).unwrap_or(Format::Text),
        content_hash: r.get(6),
        byte_size: r.get::<_, i64>(7) as u64,
        version: r.get(8),
        created_at: r.get(9),
        updated_at: r.get(10),
    };
    Ok(DocumentSummary { info, chunks: r.get::<_, i64>(11) as u64, doc_type: r.get(12), language: r.get(13) })
}

pub(crate) fn json_list(v: serde_json::Value) -> Vec<String> {
    serde_json::from_value(v).unwrap_or_default()
}
