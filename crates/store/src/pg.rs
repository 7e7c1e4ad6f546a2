//! The PostgreSQL backend: documents, chunks, contexts, jobs and vectors in
//! one PostgreSQL database with pgvector, shared by any number of nodes.
//!
//! Everything is transactional in PostgreSQL itself, so there is no derived
//! index to repair: the word index is a `tsvector` column with a GIN index,
//! dense vectors a `halfvec` column with an HNSW index, sparse weights a
//! `sparsevec` column (exact inner product). One document commits in one
//! transaction; searches read one snapshot (`REPEATABLE READ`, read only).
//!
//! Retrieval gives the same per-retriever candidate lists as the embedded
//! store's retrievers would, within the differences listed in
//! docs/POSTGRES.md (ts_rank_cd instead of BM25, language-aware stemming,
//! HNSW recall), and the lists are fused by the same code (`search::fuse`).

use crate::search::{fuse, plan, primary, Plan, Ranked, Retriever};
use crate::{
    indexed_context, now_ms, words, ClaimedJob, CollectionStats, CommitOutcome, DocumentDetail, DocumentInfo,
    DocumentKey, DocumentSummary, Fleet, FleetNode, IndexStats, JobRecord, Result, SearchHit, SearchRequest,
    SearchResults, StageScores, Stats, StoreError, StoredChunk, VectorOptions, VectorStats,
};
use datafactory_core::config::StoreConfig;
use datafactory_core::{chunk_id, Chunk, Document, Embedding, Format};
use pgvector::{HalfVector, SparseVector};
use postgres::{Client, IsolationLevel, NoTls, Row, Transaction};
use std::collections::HashMap;
use std::sync::{Mutex, RwLock};
use std::time::Duration;

/// Sparse vectors are token id → weight; pgvector needs a dimension, the
/// same for all: larger than any vocabulary.
const SPARSE_DIMENSIONS: i32 = 1_000_000_000;

/// The advisory lock (one per database) under which migrations and the
/// creation of the vector table run, so that nodes starting together do not
/// apply a migration twice.
const MIGRATION_LOCK: i64 = 0x6461_7461_6661_6374; // "datafact"

/// Each entry migrates from version `index` to `index + 1`, in one
/// transaction. The embeddings table is made by `enable_vectors`, when the
/// model's dimensions are known.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE collections (
    name        text PRIMARY KEY,
    created_at  bigint NOT NULL
);
CREATE TABLE documents (
    id            text PRIMARY KEY,
    collection    text NOT NULL REFERENCES collections(name),
    source        text NOT NULL,
    external_id   text,
    title         text NOT NULL,
    format        text NOT NULL,
    content_hash  text NOT NULL,
    pipeline      text NOT NULL,
    metadata      jsonb NOT NULL,
    text          text NOT NULL,
    sections      jsonb NOT NULL,
    byte_size     bigint NOT NULL,
    version       bigint NOT NULL,
    -- The text search configuration of its language (`dutch`, `english`, `simple`, ...).
    text_search   text NOT NULL,
    created_at    bigint NOT NULL,
    updated_at    bigint NOT NULL
);
CREATE INDEX documents_by_collection ON documents (collection, source);
CREATE INDEX documents_by_external_id ON documents (external_id);
CREATE TABLE chunks (
    id            text PRIMARY KEY,
    document_id   text NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    ordinal       integer NOT NULL,
    heading_path  jsonb NOT NULL,
    text          text NOT NULL,
    char_start    bigint NOT NULL,
    char_end      bigint NOT NULL,
    page          integer,
    token_count   integer NOT NULL,
    context       jsonb,
    text_search   text NOT NULL,
    -- Title (weight A), heading path (B), body and LLM context (D).
    words         tsvector NOT NULL,
    UNIQUE (document_id, ordinal)
);
CREATE INDEX chunks_words ON chunks USING gin (words);
-- The text search configurations in use: a word query is parsed once in each.
CREATE TABLE text_searches (
    name  text PRIMARY KEY
);
-- Settings of the store itself (the vector options, with the embedding model).
CREATE TABLE meta (
    key    text PRIMARY KEY,
    value  text NOT NULL
);
-- Counts every document change (add, replace, delete).
CREATE SEQUENCE changes;
CREATE TABLE jobs (
    id           text PRIMARY KEY,
    kind         text NOT NULL,
    state        text NOT NULL,
    collection   text,
    summary      jsonb NOT NULL,
    created_at   bigint NOT NULL,
    updated_at   bigint NOT NULL,
    finished_at  bigint
);
-- Every LLM answer, kept the moment it arrives (see the embedded schema).
CREATE TABLE llm_contexts (
    document_hash  text NOT NULL,
    chunk_hash     text NOT NULL,
    model          text NOT NULL,
    template       text NOT NULL,
    context        text NOT NULL,
    call           jsonb NOT NULL,
    created_at     bigint NOT NULL,
    PRIMARY KEY (document_hash, chunk_hash, model, template)
);
"#,
    r#"
-- The fleet's work queue: a queued job is claimed by one node at a time
-- (FOR UPDATE SKIP LOCKED) under a lease the node renews; a job whose lease
-- ran out (its node died) is claimed again by another node.
ALTER TABLE jobs ADD COLUMN node text;
ALTER TABLE jobs ADD COLUMN lease_until bigint;
ALTER TABLE jobs ADD COLUMN attempts integer NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN request jsonb;
CREATE INDEX jobs_open ON jobs (created_at) WHERE state IN ('queued', 'running');
-- A queued job's input files, so that any node can run it.
CREATE TABLE job_files (
    job_id  text NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    name    text NOT NULL,
    bytes   bytea NOT NULL,
    PRIMARY KEY (job_id, name)
);
-- The nodes of the fleet, each seen at its last heartbeat.
CREATE TABLE nodes (
    id           text PRIMARY KEY,
    address      text NOT NULL,
    started_at   bigint NOT NULL,
    seen_at      bigint NOT NULL,
    running_job  text
);
"#,
];

pub const PG_SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The text search configuration for a language (whatlang's ISO 639-3
/// code, as the analyzer records it); `simple` (no stemming, no stop words)
/// for the others and for unknown languages.
pub fn text_search_config(language: Option<&str>) -> &'static str {
    match language.unwrap_or("") {
        "nld" => "dutch",
        "eng" => "english",
        "deu" => "german",
        "fra" => "french",
        "spa" => "spanish",
        "ita" => "italian",
        "por" => "portuguese",
        "swe" => "swedish",
        "dan" => "danish",
        "nob" | "nno" => "norwegian",
        "fin" => "finnish",
        "rus" => "russian",
        "hun" => "hungarian",
        "ron" => "romanian",
        "tur" => "turkish",
        _ => "simple",
    }
}

/// The language the analyzer found for a document (`metadata.analysis.language.code`).
fn document_language(doc: &Document) -> Option<&str> {
    doc.metadata.get("analysis")?.get("language")?.get("code")?.as_str()
}

/// Text as the word index sees it: the embedded store's code-aware tokens
/// (`DiffExecutor` → `diffexecutor diff executor`, lower-cased, ASCII-folded),
/// then stemmed by PostgreSQL in the document's configuration.
fn word_text(text: &str) -> String {
    words::tokens(text).join(" ")
}

/// A tsquery source matching any of the query's tokens, each only in the
/// fields whose weight is positive (`A` title, `B` heading, `D` body).
fn word_query(text: &str, title_boost: f32, heading_boost: f32) -> Option<String> {
    let mut labels = String::new();
    if title_boost > 0.0 {
        labels.push('A');
    }
    if heading_boost > 0.0 {
        labels.push('B');
    }
    labels.push('D');
    let mut terms: Vec<String> = words::tokens(text)
        .into_iter()
        .map(|t| t.chars().filter(|c| c.is_alphanumeric()).collect::<String>())
        .filter(|t| !t.is_empty())
        .collect();
    terms.sort();
    terms.dedup();
    if terms.is_empty() {
        return None;
    }
    Some(terms.iter().map(|t| format!("{t}:{labels}")).collect::<Vec<_>>().join(" | "))
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) => StoreError::Postgres(format!("{}: {}", db.code().code(), db.message())),
            None => StoreError::Postgres(e.to_string()),
        }
    }
}

/// The connection settings and the pool of idle connections.
struct Pool {
    config: postgres::Config,
    schema: String,
    ca_file: Option<std::path::PathBuf>,
    statement_timeout: Duration,
    idle: Mutex<Vec<Client>>,
    keep: usize,
}

/// A pooled connection, back to the pool when dropped (unless it broke).
struct Conn<'a> {
    pool: &'a Pool,
    client: Option<Client>,
}

impl std::ops::Deref for Conn<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client.as_ref().expect("held until drop")
    }
}

impl std::ops::DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().expect("held until drop")
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            if !c.is_closed() {
                let mut idle = self.pool.idle.lock().unwrap_or_else(|p| p.into_inner());
                if idle.len() < self.pool.keep {
                    idle.push(c);
                }
            }
        }
    }
}

impl Pool {
    fn get(&self) -> Result<Conn<'_>> {
        loop {
            let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match idle {
                // A connection the server closed (restart, idle timeout) is dropped.
                Some(c) if c.is_closed() => continue,
                Some(c) => return Ok(Conn { pool: self, client: Some(c) }),
                None => break,
            }
        }
        let mut client = self.connect()?;
        client.batch_execute(&format!(
            "SET search_path TO \"{}\", public; SET statement_timeout = {}",
            self.schema,
            self.statement_timeout.as_millis()
        ))?;
        Ok(Conn { pool: self, client: Some(client) })
    }

    fn connect(&self) -> Result<Client> {
        use postgres::config::SslMode;
        if self.config.get_ssl_mode() == SslMode::Disable {
            return Ok(self.config.connect(NoTls)?);
        }
        let tls = crate::pg_tls::connector(self.ca_file.as_deref())?;
        match self.config.connect(tls) {
            Ok(c) => Ok(c),
            // `prefer` falls back to a plain connection, as libpq does.
            Err(e) if self.config.get_ssl_mode() == SslMode::Prefer => {
                tracing::debug!("TLS to PostgreSQL failed ({e}); sslmode=prefer: connecting without");
                Ok(self.config.connect(NoTls)?)
            }
            Err(e) => Err(e.into()),
        }
    }
}

pub struct PgStore {
    pool: Pool,
    /// The vector options (and so the embedding model), once vectors are enabled.
    vectors: RwLock<Option<VectorOptions>>,
    /// pgvector 0.8 or later: filtered HNSW scans continue until they have
    /// enough rows (`hnsw.iterative_scan`).
    iterative_scan: bool,
    /// This process's id in the fleet, once it runs queued jobs: it then
    /// ends only jobs it holds.
    node: RwLock<Option<String>>,
}

impl PgStore {
    /// Connects, creates the schema if missing and applies the migrations
    /// this database lacks.
    pub fn open(settings: &StoreConfig) -> Result<PgStore> {
        let mut config: postgres::Config = settings
            .url
            .parse()
            .map_err(|e| StoreError::Invalid(format!("store.url is not a PostgreSQL URL: {e}")))?;
        config.connect_timeout(Duration::from_secs(settings.connect_timeout_seconds.max(1)));
        config.application_name("datafactory");
        let store = PgStore {
            pool: Pool {
                config,
                schema: settings.schema.clone(),
                ca_file: (!settings.ca_file.is_empty()).then(|| settings.ca_file.clone().into()),
                statement_timeout: Duration::from_secs(settings.statement_timeout_seconds),
                idle: Mutex::new(Vec::new()),
                keep: settings.pool_size.max(1),
            },
            vectors: RwLock::new(None),
            iterative_scan: false,
            node: RwLock::new(None),
        };
        let mut store = store;
        store.migrate()?;
        let version: String = store
            .conn()?
            .query_one("SELECT extversion FROM pg_extension WHERE extname = 'vector'", &[])?
            .get(0);
        let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        if (major, minor) < (0, 7) {
            return Err(StoreError::Invalid(format!(
                "pgvector {version} is too old: DataFactory needs 0.7 or later (halfvec, sparsevec, HNSW); \
                 ALTER EXTENSION vector UPDATE"
            )));
        }
        store.iterative_scan = (major, minor) >= (0, 8);
        *store.vectors.write().unwrap_or_else(|p| p.into_inner()) = store.stored_vector_options()?;
        Ok(store)
    }

    fn conn(&self) -> Result<Conn<'_>> {
        self.pool.get()
    }

    fn migrate(&self) -> Result<()> {
        let mut conn = self.conn()?;
        loop {
            let mut tx = conn.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
            tx.batch_execute(&format!(
                "CREATE EXTENSION IF NOT EXISTS vector;
                 CREATE SCHEMA IF NOT EXISTS \"{0}\";
                 CREATE TABLE IF NOT EXISTS \"{0}\".schema_version (version bigint NOT NULL);",
                self.pool.schema
            ))?;
            let version: i64 =
                tx.query_opt("SELECT version FROM schema_version", &[])?.map(|r| r.get(0)).unwrap_or(0);
            if version > PG_SCHEMA_VERSION {
                return Err(StoreError::Invalid(format!(
                    "the PostgreSQL schema {} has version {version}, newer than this program's {PG_SCHEMA_VERSION}; upgrade DataFactory",
                    self.pool.schema
                )));
            }
            let Some(sql) = MIGRATIONS.get(version as usize) else {
                tx.commit()?;
                return Ok(());
            };
            tx.batch_execute(sql)?;
            tx.execute("DELETE FROM schema_version", &[])?;
            tx.execute("INSERT INTO schema_version (version) VALUES ($1)", &[&(version + 1)])?;
            tx.commit()?;
            tracing::info!("PostgreSQL schema {} migrated to version {}", self.pool.schema, version + 1);
        }
    }

    fn stored_vector_options(&self) -> Result<Option<VectorOptions>> {
        let mut conn = self.conn()?;
        let row = conn.query_opt("SELECT value FROM meta WHERE key = 'vectors'", &[])?;
        Ok(match row {
            Some(r) => Some(serde_json::from_str(r.get::<_, &str>(0))?),
            None => None,
        })
    }

    pub fn latest_change(&self) -> Result<i64> {
        let mut conn = self.conn()?;
        Ok(conn.query_one("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM changes", &[])?.get(0))
    }

    pub fn vector_options(&self) -> Option<VectorOptions> {
        self.vectors.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Creates the vector table and its HNSW index for a model, or checks
    /// that the stored vectors are of this model.
    pub fn enable_vectors(&self, options: &VectorOptions) -> Result<()> {
        if options.dimensions == 0 || options.dimensions > 4000 {
            return Err(StoreError::Invalid(format!(
                "{} dimensions: a halfvec HNSW index takes 1 to 4000",
                options.dimensions
            )));
        }
        let mut conn = self.conn()?;
        let mut tx = conn.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
        let stored = tx.query_opt("SELECT value FROM meta WHERE key = 'vectors'", &[])?;
        if let Some(r) = stored {
            let stored: VectorOptions = serde_json::from_str(r.get::<_, &str>(0))?;
            if stored.model != options.model || stored.dimensions != options.dimensions {
                return Err(StoreError::ModelMismatch {
                    stored: format!("{} ({} dimensions)", stored.model, stored.dimensions),
                    configured: format!("{} ({} dimensions)", options.model, options.dimensions),
                });
            }
            tx.commit()?;
            *self.vectors.write().unwrap_or_else(|p| p.into_inner()) = Some(stored);
            return Ok(());
        }
        tx.batch_execute(&format!(
            "CREATE TABLE embeddings (
                 key       bigserial PRIMARY KEY,
                 chunk_id  text NOT NULL UNIQUE REFERENCES chunks(id) ON DELETE CASCADE,
                 dense     halfvec({dims}) NOT NULL,
                 sparse    sparsevec
             );
             CREATE INDEX embeddings_dense ON embeddings USING hnsw (dense halfvec_cosine_ops)
                 WITH (m = {m}, ef_construction = {ef});",
            dims = options.dimensions,
            m = options.connectivity.clamp(2, 100),
            ef = options.expansion_add.clamp(4, 1000),
        ))?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('vectors', $1), ('embedding_model', $2)",
            &[&serde_json::to_string(options)?, &options.model],
        )?;
        tx.commit()?;
        *self.vectors.write().unwrap_or_else(|p| p.into_inner()) = Some(options.clone());
        Ok(())
    }

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
        for c in chunks {
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
                 token_count, context, text_search, words)
             SELECT t.id, $2, t.ordinal, t.heading, t.text, t.char_start, t.char_end, t.page, t.tokens,
                 t.context, $3::text,
                 setweight(to_tsvector($3::text::regconfig, $4), 'A')
                 || setweight(to_tsvector($3::text::regconfig, t.heading_words), 'B')
                 || setweight(to_tsvector($3::text::regconfig, t.body_words), 'D')
             FROM unnest($1::text[], $5::int4[], $6::jsonb[], $7::text[], $8::int8[], $9::int8[], $10::int4[],
                         $11::int4[], $12::jsonb[], $13::text[], $14::text[])
                  AS t(id, ordinal, heading, text, char_start, char_end, page, tokens, context, heading_words,
                       body_words)",
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
            ],
        )?;
        if let Some(embeddings) = embeddings {
            let dense: Vec<HalfVector> =
                embeddings.iter().map(|e| HalfVector::from_f32_slice(&e.dense)).collect();
            let sparse: Vec<Option<SparseVector>> =
                embeddings.iter().map(|e| (!e.sparse.is_empty()).then(|| sparse_vector(&e.sparse))).collect();
            tx.execute(
                "INSERT INTO embeddings (chunk_id, dense, sparse)
                 SELECT * FROM unnest($1::text[], $2::halfvec[], $3::sparsevec[])",
                &[&ids, &dense, &sparse],
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

    /// Searches with the retrievers the mode asks for, in one snapshot.
    pub fn search(&self, req: &SearchRequest<'_>) -> Result<SearchResults> {
        let vectors = self.vector_options();
        let Plan { wanted, notes, fuse: fusing, depth } = match plan(req, vectors.is_some()) {
            Ok(p) => p,
            Err(notes) => return Ok(SearchResults { retrievers: Vec::new(), hits: Vec::new(), notes }),
        };
        let mut conn = self.conn()?;
        let mut tx = read_snapshot(&mut conn)?;
        let allowed: Option<Vec<String>> = match req.filter.filter(|f| !f.is_empty()) {
            Some(f) => {
                let ids: Vec<String> = tx
                    .query(
                        "SELECT d.id FROM documents d
                         WHERE ($1::text IS NULL OR d.collection = $1)
                           AND (cardinality($2::text[]) = 0 OR d.id = ANY($2) OR d.external_id = ANY($2))
                           AND NOT EXISTS (SELECT 1 FROM jsonb_each($3::jsonb) f
                                           WHERE d.metadata -> f.key IS DISTINCT FROM f.value)",
                        &[&req.collection, &f.document_ids, &serde_json::Value::Object(f.metadata.clone())],
                    )?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                if ids.is_empty() {
                    return Ok(SearchResults { retrievers: Vec::new(), hits: Vec::new(), notes });
                }
                Some(ids)
            }
            None => None,
        };
        let mut lists: Vec<(Retriever, f32, Ranked)> = Vec::new();
        for &(r, w) in &wanted {
            let list = match r {
                Retriever::Words => self.words(&mut tx, req, allowed.as_deref(), depth)?,
                Retriever::Dense => {
                    let options = vectors.as_ref().expect("checked by plan");
                    let query = &req.embedding.expect("checked by plan").dense;
                    if query.len() != options.dimensions {
                        return Err(StoreError::Invalid(format!(
                            "query vector has {} dimensions, the index {}",
                            query.len(),
                            options.dimensions
                        )));
                    }
                    let filtered = req.collection.is_some() || allowed.is_some();
                    if filtered && self.iterative_scan {
                        tx.batch_execute("SET LOCAL hnsw.iterative_scan = strict_order")?;
                    }
                    dense(&mut tx, req, options, query, allowed.as_deref(), depth)?
                }
                Retriever::Sparse => {
                    let query = &req.embedding.expect("checked by plan").sparse;
                    sparse(&mut tx, req, query, allowed.as_deref(), depth)?
                }
            };
            lists.push((r, w, list));
        }
        let ranked = fuse(req, &lists, fusing);
        let hits = hydrate(&mut tx, ranked)?;
        tx.commit()?;
        Ok(SearchResults { retrievers: lists.iter().map(|l| l.0.name()).collect(), hits, notes })
    }

    /// ts_rank_cd over title (A), heading path (B) and body (D), the query
    /// parsed in each text search configuration in use.
    fn words(
        &self,
        tx: &mut Transaction<'_>,
        req: &SearchRequest<'_>,
        allowed: Option<&[String]>,
        depth: usize,
    ) -> Result<Ranked> {
        let Some(query) = word_query(req.text, req.title_boost, req.heading_boost) else {
            return Ok(Vec::new());
        };
        if depth == 0 {
            return Ok(Vec::new());
        }
        // ts_rank_cd's weights are {D, C, B, A}, each at most 1: the boosts
        // relative to the body's weight of 1.
        let top = 1f32.max(req.title_boost).max(req.heading_boost);
        let weights: Vec<f32> =
            vec![1.0 / top, 1.0 / top, req.heading_boost.max(0.0) / top, req.title_boost.max(0.0) / top];
        // One query per configuration in use (a handful): with the tsquery a
        // constant, the planner can use the GIN index.
        let configs: Vec<String> =
            tx.query("SELECT name FROM text_searches ORDER BY name", &[])?.iter().map(|r| r.get(0)).collect();
        let mut out: Ranked = Vec::new();
        for config in &configs {
            let rows = tx.query(
                "SELECT c.id, ts_rank_cd($2::float4[], c.words, to_tsquery($6::text::regconfig, $1)) AS score
                 FROM chunks c
                 WHERE c.text_search = $6::text AND c.words @@ to_tsquery($6::text::regconfig, $1)
                   AND ($3::text IS NULL
                        OR EXISTS (SELECT 1 FROM documents d WHERE d.id = c.document_id AND d.collection = $3))
                   AND ($4::text[] IS NULL OR c.document_id = ANY($4))
                 ORDER BY score DESC, c.id LIMIT $5",
                &[&query, &weights, &req.collection, &allowed, &(depth as i64), config],
            )?;
            out.extend(rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, f32>(1))));
        }
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        out.truncate(depth);
        Ok(out)
    }

    pub fn list_documents(&self, collection: Option<&str>) -> Result<Vec<DocumentSummary>> {
        let mut conn = self.conn()?;
        let rows = conn.query(
            &format!(
                "{SUMMARY_SELECT} WHERE ($1::text IS NULL OR d.collection = $1) ORDER BY d.collection, d.source"
            ),
            &[&collection],
        )?;
        rows.iter().map(summary_from_row).collect()
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
    pub fn stats(&self) -> Result<Stats> {
        let vectors = self.vector_options();
        let mut conn = self.conn()?;
        let mut tx = read_snapshot(&mut conn)?;
        let latest: i64 =
            tx.query_one("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM changes", &[])?.get(0);
        let documents: i64 = tx.query_one("SELECT COUNT(*) FROM documents", &[])?.get(0);
        let chunks: i64 = tx.query_one("SELECT COUNT(*) FROM chunks", &[])?.get(0);
        let collections = tx
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
            .collect();
        let embedded: i64 = match &vectors {
            Some(_) => tx.query_one("SELECT COUNT(*) FROM embeddings", &[])?.get(0),
            None => 0,
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
                vectors: embedded as u64,
                applied_change: latest,
                saved_change: latest,
            }),
            latest_change: latest,
            consistent: true,
            problems: Vec::new(),
        })
    }

    pub fn create_job(&self, kind: &str, collection: Option<&str>) -> Result<String> {
        let now = now_ms();
        let id = new_job_id(kind, now);
        let mut conn = self.conn()?;
        conn.execute(
            "INSERT INTO jobs (id, kind, state, collection, summary, created_at, updated_at)
             VALUES ($1, $2, 'running', $3, '{}', $4, $4)",
            &[&id, &kind, &collection, &now],
        )?;
        Ok(id)
    }

    /// Ends a job. In a fleet node, only a job this node holds (or one no
    /// node holds): a node that lost its lease leaves the job to the node
    /// that took it over.
    pub fn finish_job(&self, id: &str, state: &str, summary: &serde_json::Value) -> Result<()> {
        let node = self.node.read().unwrap_or_else(|p| p.into_inner()).clone();
        let mut conn = self.conn()?;
        conn.execute(
            // A fleet job interrupted (its node stopping) goes back to the queue.
            "UPDATE jobs SET summary = $3, updated_at = $4::bigint, lease_until = NULL,
                 state = CASE WHEN $2::text = 'interrupted' AND node IS NOT NULL THEN 'queued' ELSE $2::text END,
                 finished_at = CASE WHEN $2::text = 'interrupted' AND node IS NOT NULL THEN NULL ELSE $4::bigint END,
                 node = CASE WHEN $2::text = 'interrupted' AND node IS NOT NULL THEN NULL ELSE node END
             WHERE id = $1 AND (node IS NULL OR $5::text IS NULL OR node = $5)",
            &[&id, &state, summary, &now_ms(), &node],
        )?;
        Ok(())
    }

    /// Names this process in the fleet (see `finish_job`).
    pub fn set_node(&self, node: &str) {
        *self.node.write().unwrap_or_else(|p| p.into_inner()) = Some(node.to_string());
    }

    /// Puts a job `node` holds back in the queue (the node stops: another
    /// node, or this one later, runs it again).
    pub fn release_job(&self, id: &str, node: &str) -> Result<bool> {
        let mut conn = self.conn()?;
        let n = conn.execute(
            "UPDATE jobs SET state = 'queued', node = NULL, lease_until = NULL, finished_at = NULL,
                 updated_at = $3
             WHERE id = $1 AND node = $2",
            &[&id, &node, &now_ms()],
        )?;
        Ok(n == 1)
    }

    pub fn get_job(&self, id: &str) -> Result<Option<JobRecord>> {
        let mut conn = self.conn()?;
        Ok(conn
            .query_opt(
                "SELECT id, kind, state, collection, summary, created_at, updated_at, finished_at
                 FROM jobs WHERE id = $1",
                &[&id],
            )?
            .map(|r| JobRecord {
                id: r.get(0),
                kind: r.get(1),
                state: r.get(2),
                collection: r.get(3),
                summary: r.get(4),
                created_at: r.get(5),
                updated_at: r.get(6),
                finished_at: r.get(7),
            }))
    }

    // ---- the fleet's work queue ----

    /// Queues a job with its input files; any node may claim it.
    pub fn enqueue_job(
        &self,
        kind: &str,
        collection: Option<&str>,
        request: &serde_json::Value,
        files: &[(String, Vec<u8>)],
    ) -> Result<String> {
        let now = now_ms();
        let id = new_job_id(kind, now);
        let mut conn = self.conn()?;
        let mut tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO jobs (id, kind, state, collection, summary, request, created_at, updated_at)
             VALUES ($1, $2, 'queued', $3, '{}', $4, $5, $5)",
            &[&id, &kind, &collection, request, &now],
        )?;
        let insert = tx.prepare("INSERT INTO job_files (job_id, name, bytes) VALUES ($1, $2, $3)")?;
        for (name, bytes) in files {
            tx.execute(&insert, &[&id, name, bytes])?;
        }
        tx.commit()?;
        Ok(id)
    }

    /// Claims the oldest job that is queued, or running under a lease that
    /// ran out (its node died), for `node` until `lease` from now. Nodes
    /// claiming at once skip each other's rows: each gets another job.
    pub fn claim_job(&self, node: &str, lease: Duration) -> Result<Option<ClaimedJob>> {
        let now = now_ms();
        let mut conn = self.conn()?;
        let mut tx = conn.transaction()?;
        let Some(r) = tx.query_opt(
            "UPDATE jobs SET state = 'running', node = $1, lease_until = $3, attempts = attempts + 1,
                 updated_at = $2
             WHERE id = (SELECT id FROM jobs
                         WHERE state = 'queued' OR (state = 'running' AND lease_until < $2)
                         ORDER BY created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)
             RETURNING id, kind, collection, request, attempts",
            &[&node, &now, &(now + lease.as_millis() as i64)],
        )?
        else {
            return Ok(None);
        };
        let id: String = r.get(0);
        let files = tx
            .query("SELECT name, bytes FROM job_files WHERE job_id = $1 ORDER BY name", &[&id])?
            .iter()
            .map(|f| (f.get(0), f.get(1)))
            .collect();
        tx.commit()?;
        Ok(Some(ClaimedJob {
            id,
            kind: r.get(1),
            collection: r.get(2),
            request: r.get::<_, Option<serde_json::Value>>(3).unwrap_or_default(),
            attempt: r.get::<_, i32>(4) as u32,
            files,
        }))
    }

    /// Extends `node`'s lease on a job. False: the node lost it (the lease
    /// ran out and another node claimed the job, or the job ended).
    pub fn renew_lease(&self, id: &str, node: &str, lease: Duration) -> Result<bool> {
        let now = now_ms();
        let mut conn = self.conn()?;
        let n = conn.execute(
            "UPDATE jobs SET lease_until = $4, updated_at = $3
             WHERE id = $1 AND node = $2 AND state = 'running'",
            &[&id, &node, &now, &(now + lease.as_millis() as i64)],
        )?;
        Ok(n == 1)
    }

    /// Ends a claimed job if `node` still holds it; its input files go.
    /// False: another node holds it now (its result is the one kept).
    pub fn finish_claimed_job(
        &self,
        id: &str,
        node: &str,
        state: &str,
        summary: &serde_json::Value,
    ) -> Result<bool> {
        let now = now_ms();
        let mut conn = self.conn()?;
        let mut tx = conn.transaction()?;
        let n = tx.execute(
            "UPDATE jobs SET state = $3, summary = $4, updated_at = $5, finished_at = $5, lease_until = NULL
             WHERE id = $1 AND node = $2 AND state = 'running'",
            &[&id, &node, &state, summary, &now],
        )?;
        if n == 1 {
            tx.execute("DELETE FROM job_files WHERE job_id = $1", &[&id])?;
        }
        tx.commit()?;
        Ok(n == 1)
    }

    /// Records that `node` (reachable at `address`) is alive, and which job it runs.
    pub fn node_heartbeat(&self, node: &str, address: &str, running_job: Option<&str>) -> Result<()> {
        let now = now_ms();
        let mut conn = self.conn()?;
        conn.execute(
            "INSERT INTO nodes (id, address, started_at, seen_at, running_job) VALUES ($1, $2, $3, $3, $4)
             ON CONFLICT (id) DO UPDATE SET address = excluded.address, seen_at = excluded.seen_at,
                 running_job = excluded.running_job",
            &[&node, &address, &now, &running_job],
        )?;
        Ok(())
    }

    /// The nodes seen within `alive` (the others are listed as not alive),
    /// and the queue's counts.
    pub fn fleet(&self, alive: Duration) -> Result<Fleet> {
        let now = now_ms();
        let mut conn = self.conn()?;
        let mut tx = read_snapshot(&mut conn)?;
        let nodes = tx
            .query("SELECT id, address, started_at, seen_at, running_job FROM nodes ORDER BY id", &[])?
            .iter()
            .map(|r| {
                let seen_at: i64 = r.get(3);
                FleetNode {
                    id: r.get(0),
                    address: r.get(1),
                    started_at: r.get(2),
                    seen_at,
                    running_job: r.get(4),
                    alive: now - seen_at <= alive.as_millis() as i64,
                }
            })
            .collect();
        let r = tx.query_one(
            "SELECT COUNT(*) FILTER (WHERE state = 'queued'),
                    COUNT(*) FILTER (WHERE state = 'running' AND lease_until >= $1),
                    COUNT(*) FILTER (WHERE state = 'running' AND lease_until < $1)
             FROM jobs WHERE state IN ('queued', 'running')",
            &[&now],
        )?;
        tx.commit()?;
        Ok(Fleet {
            nodes,
            queued: r.get::<_, i64>(0) as u64,
            running: r.get::<_, i64>(1) as u64,
            lease_expired: r.get::<_, i64>(2) as u64,
        })
    }
}

/// A fresh job id (unique across processes and nodes).
fn new_job_id(kind: &str, now: i64) -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let seed = format!(
        "{kind}{now}{}{n}{:?}{:?}",
        std::process::id(),
        std::time::Instant::now(),
        std::thread::current().id()
    );
    format!("job-{}", &blake3::hash(seed.as_bytes()).to_hex()[..16])
}

/// Serialises writers of one document (across nodes) until the transaction ends.
fn lock_document(tx: &mut Transaction<'_>, id: &str) -> Result<()> {
    tx.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", &[&id])?;
    Ok(())
}

/// A read-only transaction that sees one snapshot for all its statements.
fn read_snapshot<'a>(conn: &'a mut Conn<'_>) -> Result<Transaction<'a>> {
    Ok(conn.build_transaction().isolation_level(IsolationLevel::RepeatableRead).read_only(true).start()?)
}

fn sparse_vector(weights: &[(u32, f32)]) -> SparseVector {
    let map: HashMap<i32, f32> = weights.iter().map(|&(k, v)| (k as i32, v)).collect();
    SparseVector::from_map(&map, SPARSE_DIMENSIONS)
}

/// Nearest chunks by cosine similarity over the HNSW index. A filter (a
/// collection, allowed documents) runs inside the index scan; with pgvector
/// 0.8's iterative scan (set by the caller) it still yields `depth` candidates.
fn dense(
    tx: &mut Transaction<'_>,
    req: &SearchRequest<'_>,
    options: &VectorOptions,
    query: &[f32],
    allowed: Option<&[String]>,
    depth: usize,
) -> Result<Ranked> {
    if depth == 0 {
        return Ok(Vec::new());
    }
    let ef = options.expansion_search.max(depth).min(1000);
    tx.batch_execute(&format!("SET LOCAL hnsw.ef_search = {ef}"))?;
    let q = HalfVector::from_f32_slice(query);
    let rows = if req.collection.is_none() && allowed.is_none() {
        tx.query(
            "SELECT chunk_id, 1 - (dense <=> $1) FROM embeddings ORDER BY dense <=> $1 LIMIT $2",
            &[&q, &(depth as i64)],
        )?
    } else {
        tx.query(
            "SELECT e.chunk_id, 1 - (e.dense <=> $1) FROM embeddings e
             JOIN chunks c ON c.id = e.chunk_id JOIN documents d ON d.id = c.document_id
             WHERE ($3::text IS NULL OR d.collection = $3) AND ($4::text[] IS NULL OR c.document_id = ANY($4))
             ORDER BY e.dense <=> $1 LIMIT $2",
            &[&q, &(depth as i64), &req.collection, &allowed],
        )?
    };
    Ok(rows.iter().map(|r| (r.get(0), r.get::<_, f64>(1) as f32)).collect())
}

/// The chunks with the largest inner product of sparse weights (exact).
fn sparse(
    tx: &mut Transaction<'_>,
    req: &SearchRequest<'_>,
    query: &[(u32, f32)],
    allowed: Option<&[String]>,
    depth: usize,
) -> Result<Ranked> {
    if depth == 0 {
        return Ok(Vec::new());
    }
    let q = sparse_vector(query);
    let rows = tx.query(
        "SELECT e.chunk_id, -(e.sparse <#> $1) AS score FROM embeddings e
         JOIN chunks c ON c.id = e.chunk_id JOIN documents d ON d.id = c.document_id
         WHERE e.sparse IS NOT NULL AND ($3::text IS NULL OR d.collection = $3)
           AND ($4::text[] IS NULL OR c.document_id = ANY($4))
         ORDER BY score DESC, e.chunk_id LIMIT $2",
        &[&q, &(depth as i64), &req.collection, &allowed],
    )?;
    // Chunks sharing no token with the query score 0: not a match.
    Ok(rows
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, f64>(1) as f32))
        .filter(|(_, s)| *s > 0.0)
        .collect())
}

/// Reads the ranked chunks in the same snapshot; chunks gone are dropped.
fn hydrate(tx: &mut Transaction<'_>, ranked: Vec<(String, StageScores)>) -> Result<Vec<SearchHit>> {
    let ids: Vec<&str> = ranked.iter().map(|(id, _)| id.as_str()).collect();
    let rows = tx.query(
        "SELECT c.id, c.document_id, c.ordinal, c.heading_path, c.text, c.char_start, c.char_end, c.page,
                d.title, d.source, d.collection, c.context
         FROM chunks c JOIN documents d ON d.id = c.document_id WHERE c.id = ANY($1)",
        &[&ids],
    )?;
    let mut by_id: HashMap<String, Row> = rows.into_iter().map(|r| (r.get::<_, String>(0), r)).collect();
    let mut out = Vec::with_capacity(ranked.len());
    for (chunk_id, scores) in ranked {
        let Some(r) = by_id.remove(&chunk_id) else { continue };
        let context: Option<datafactory_core::ChunkContext> =
            r.get::<_, Option<serde_json::Value>>(11).and_then(|v| serde_json::from_value(v).ok());
        out.push(SearchHit {
            chunk_id,
            score: primary(&scores),
            scores,
            document_id: r.get(1),
            ordinal: r.get::<_, i32>(2) as u32,
            heading_path: json_list(r.get(3)),
            text: r.get(4),
            start: r.get::<_, i64>(5) as usize,
            end: r.get::<_, i64>(6) as usize,
            page: r.get::<_, Option<i32>>(7).map(|p| p as u32),
            title: r.get(8),
            source: r.get(9),
            collection: r.get(10),
            context_kind: context.as_ref().map(|c| c.kind),
            context: context.map(|c| c.text),
        });
    }
    Ok(out)
}

const SUMMARY_SELECT: &str = "SELECT d.id, d.collection, d.source, d.external_id, d.title, d.format,
        d.content_hash, d.byte_size, d.version, d.created_at, d.updated_at,
        (SELECT COUNT(*) FROM chunks c WHERE c.document_id = d.id)
     FROM documents d";

fn summary_from_row(r: &Row) -> Result<DocumentSummary> {
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
    Ok(DocumentSummary { info, chunks: r.get::<_, i64>(11) as u64 })
}

fn json_list(v: serde_json::Value) -> Vec<String> {
    serde_json::from_value(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_queries_are_code_aware_and_safe() {
        let q = word_query("DiffExecutor & 'x' | !y:*", 0.5, 0.0).unwrap();
        assert_eq!(q, "diff:AD | diffexecutor:AD | executor:AD | x:AD | y:AD");
        assert_eq!(word_query("!&|", 1.0, 1.0), None);
        assert_eq!(word_query("kaas", 0.0, 1.0).unwrap(), "kaas:BD");
    }

    #[test]
    fn languages_map_to_text_search_configurations() {
        assert_eq!(text_search_config(Some("nld")), "dutch");
        assert_eq!(text_search_config(Some("eng")), "english");
        assert_eq!(text_search_config(Some("xyz")), "simple");
        assert_eq!(text_search_config(None), "simple");
    }
}
