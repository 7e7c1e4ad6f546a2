//! The write path on PostgreSQL: a document, its chunks and vectors in one
//! transaction under a per-document lock; deletion.
//!
//! Every change to stored documents goes through here.

use super::*;

impl PgStore {
    pub fn document_fingerprint(&self, id: &str) -> Result<Option<(String, String)>> {
        let mut conn = self.conn()?;
        Ok(conn
            .query_opt("SELECT content_hash, pipeline FROM documents WHERE id = $1", &[&id])?
            .map(|r| (r.get(0), r.get(1))))
    }

    /// Stores a document and its chunks (and embeddings) in one transaction,
    /// replacing an earlier version; nothing if unchanged. Two nodes
    /// committing the same document take turns (an advisory lock on its id).
    pub fn commit_document(
        &self,
        key: &DocumentKey,
        doc: &Document,
        chunks: &[Chunk],
        embeddings: Option<&[Embedding]>,
    ) -> Result<CommitOutcome> {
        self.commit_windows(key, doc, chunks, crate::single_windows(embeddings).as_deref())
    }

    /// [`PgStore::commit_document`] with any number of vectors per chunk
    /// (one per window of its text, first first; at least one each).
    pub fn commit_windows(
        &self,
        key: &DocumentKey,
        doc: &Document,
        chunks: &[Chunk],
        embeddings: Option<&[Vec<Embedding>]>,
    ) -> Result<CommitOutcome> {
        crate::check_commit(key, chunks, embeddings)?;
        if embeddings.is_some() && self.vector_options().is_none() {
            return Err(StoreError::Invalid(
                "embeddings given, but the store has no vector index (enable_vectors first)".into(),
            ));
        }
        let text_search = text_search_config(document_language(doc));
        let mut conn = self.conn()?;
        let mut tx = conn.transaction()?;
        lock_document(&mut tx, &key.id)?;
        let existing = tx.query_opt(
            "SELECT content_hash, pipeline, created_at FROM documents WHERE id = $1",
            &[&key.id],
        )?;
        if let Some(r) = &existing {
            if r.get::<_, &str>(0) == key.content_hash && r.get::<_, &str>(1) == key.pipeline {
                return Ok(CommitOutcome::Unchanged);
            }
        }
        let now = now_ms();
        let created_at: i64 = existing.as_ref().map_or(now, |r| r.get(2));
        tx.execute(
            "INSERT INTO collections (name, created_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&key.collection, &now],
        )?;
        tx.execute("INSERT INTO text_searches (name) VALUES ($1) ON CONFLICT DO NOTHING", &[&text_search])?;
        tx.execute("DELETE FROM chunks WHERE document_id = $1", &[&key.id])?;
        tx.execute(
            "INSERT INTO documents (id, collection, source, external_id, title, format, content_hash,
                 pipeline, metadata, text, sections, byte_size, version, text_search, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 1, $13, $14, $15)
             ON CONFLICT (id) DO UPDATE SET
                 collection = excluded.collection, source = excluded.source,
                 external_id = excluded.external_id, title = excluded.title,
                 format = excluded.format, content_hash = excluded.content_hash,
                 pipeline = excluded.pipeline, metadata = excluded.metadata, text = excluded.text,
                 sections = excluded.sections, byte_size = excluded.byte_size,
                 version = documents.version + 1, text_search = excluded.text_search,
                 updated_at = excluded.updated_at",
            &[
                &key.id,
                &key.collection,
                &key.source,
                &doc.external_id,
                &doc.title,
                &doc.format.as_str(),
                &key.content_hash,
                &key.pipeline,
                &serde_json::to_value(&doc.metadata)?,
                &doc.text,
                &serde_json::to_value(&doc.sections)?,
                &(key.byte_size as i64),
                &text_search,
                &created_at,
                &now,
            ],
        )?;
        // All chunks in one statement (and all vectors in another): arrays
        // unnested server-side, not a round trip per chunk.
        let n = chunks.len();
        let mut ids = Vec::with_capacity(n);
        let mut ordinals = Vec::with_capacity(n);
        let mut headings = Vec::with_capacity(n);
        let mut texts = Vec::with_capacity(n);
        let mut starts = Vec::with_capacity(n);
        let mut ends = Vec::with_capacity(n);
        let mut pages = Vec::with_capacity(n);
        let mut tokens = Vec::with_capacity(n);
        let mut contexts = Vec::with_capacity(n);
        let mut heading_words = Vec::with_capacity(n);
        let mut body_words = Vec::with_capacity(n);
        let mut hashes = Vec::with_capacity(n);
        let mut sims = Vec::with_capacity(n);
        for c in chunks {
            hashes.push(crate::passage_hash(&c.text));
            sims.push(crate::minhash(&c.text).map(|s| crate::encode_minhash(&s)));
            ids.push(chunk_id(&key.id, c.ordinal, &c.text));
            ordinals.push(c.ordinal as i32);
            headings.push(serde_json::to_value(&c.heading_path)?);
            texts.push(c.text.as_str());
            starts.push(c.start as i64);
            ends.push(c.end as i64);
            pages.push(c.page.map(|p| p as i32));
            tokens.push(c.token_count as i32);
            contexts.push(c.context.as_ref().map(serde_json::to_value).transpose()?);
            heading_words.push(word_text(&c.heading_path.join(" / ")));
            let mut body = word_text(&c.text);
            if let Some(context) = indexed_context(c.context.as_ref()) {
                body.push(' ');
                body.push_str(&word_text(context));
            }
            body_words.push(body);
        }
        tx.execute(
            "INSERT INTO chunks (id, document_id, ordinal, heading_path, text, char_start, char_end, page,
                 token_count, context, text_search, words, text_hash, minhash)
             SELECT t.id, $2, t.ordinal, t.heading, t.text, t.char_start, t.char_end, t.page, t.tokens,
                 t.context, $3::text,
                 setweight(to_tsvector($3::text::regconfig, $4), 'A')
                 || setweight(to_tsvector($3::text::regconfig, t.heading_words), 'B')
                 || setweight(to_tsvector($3::text::regconfig, t.body_words), 'D'),
                 t.text_hash, t.minhash
             FROM unnest($1::text[], $5::int4[], $6::jsonb[], $7::text[], $8::int8[], $9::int8[], $10::int4[],
                         $11::int4[], $12::jsonb[], $13::text[], $14::text[], $15::text[], $16::bytea[])
                  AS t(id, ordinal, heading, text, char_start, char_end, page, tokens, context, heading_words,
                       body_words, text_hash, minhash)",
            &[
                &ids,
                &key.id,
                &text_search,
                &word_text(&doc.title),
                &ordinals,
                &headings,
                &texts,
                &starts,
                &ends,
                &pages,
                &tokens,
                &contexts,
                &heading_words,
                &body_words,
                &hashes,
                &sims,
            ],
        )?;
        if let Some(embeddings) = embeddings {
            // One row per window: its chunk, its place, its vectors.
            let mut chunk_ids = Vec::new();
            let mut places = Vec::new();
            let mut dense = Vec::new();
            let mut sparse = Vec::new();
            for (id, windows) in ids.iter().zip(embeddings) {
                for (w, e) in windows.iter().enumerate() {
                    chunk_ids.push(id.as_str());
                    places.push(w as i32);
                    dense.push(HalfVector::from_f32_slice(&e.dense));
                    sparse.push((!e.sparse.is_empty()).then(|| sparse_vector(&e.sparse)));
                }
            }
            tx.execute(
                "INSERT INTO embeddings (chunk_id, window_ordinal, dense, sparse)
                 SELECT * FROM unnest($1::text[], $2::int4[], $3::halfvec[], $4::sparsevec[])",
                &[&chunk_ids, &places, &dense, &sparse],
            )?;
        }
        tx.execute("SELECT nextval('changes')", &[])?;
        tx.commit()?;
        Ok(if existing.is_some() { CommitOutcome::Replaced } else { CommitOutcome::Added })
    }

    /// Removes a document with its chunks and vectors. False if there was none.
    pub fn delete_document(&self, id: &str) -> Result<bool> {
        let mut conn = self.conn()?;
        let mut tx = conn.transaction()?;
        lock_document(&mut tx, id)?;
        let n = tx.execute("DELETE FROM documents WHERE id = $1", &[&id])?;
        if n == 0 {
            return Ok(false);
        }
        tx.execute("SELECT nextval('changes')", &[])?;
        tx.commit()?;
        Ok(true)
    }
}

/// Serialises writers of one document (across nodes) until the transaction ends.
pub(crate) fn lock_document(tx: &mut Transaction<'_>, id: &str) -> Result<()> {
    tx.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", &[&id])?;
    Ok(())
}
