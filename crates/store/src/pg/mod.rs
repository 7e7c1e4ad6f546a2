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

mod jobs;
mod pool;
mod reads;
mod schema;
mod search;
mod text;
mod writes;
use pool::*;
use reads::*;
pub use schema::PG_SCHEMA_VERSION;
use schema::*;
use search::*;
pub use text::text_search_config;
use text::*;

use crate::search::{
    best_per_chunk, collapse, fuse, more_candidates, plan, primary, set_duplicates, Plan, Ranked, Retriever,
};
use crate::{
    indexed_context, now_ms, words, ClaimedJob, CollectionStats, CommitOutcome, DocumentDetail, DocumentInfo,
    DocumentKey, DocumentPage, DocumentQuery, DocumentSummary, Duplicate, Fleet, FleetNode, IndexStats,
    JobRecord, Result, SearchHit, SearchRequest, SearchResults, StageScores, Stats, StoreError, StoredChunk,
    VectorOptions, VectorStats,
};
use datafactory_core::config::StoreConfig;
use datafactory_core::{chunk_id, Chunk, Document, Embedding, Format};
use pgvector::{HalfVector, SparseVector};
use postgres::{Client, IsolationLevel, NoTls, Row, Transaction};
use std::collections::HashMap;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

/// Sparse vectors are token id → weight; pgvector needs a dimension, the
/// same for all: larger than any vocabulary.
const SPARSE_DIMENSIONS: i32 = 1_000_000_000;

/// A node that found no vectors in the shared database looks again at most
/// this often: another node may enable them at any time.
pub const VECTOR_RECHECK_INTERVAL: Duration = Duration::from_secs(1);

pub struct PgStore {
    pool: Pool,
    /// The vector options (and so the embedding model), once vectors are
    /// enabled, by this node or any other: kept once found (vectors are never
    /// disabled, and their model never changes); while None, re-read from the
    /// database (see `vector_options`).
    vectors: RwLock<Option<VectorOptions>>,
    /// When `vectors` was last read from the database while None.
    vectors_checked: Mutex<Instant>,
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
            vectors_checked: Mutex::new(Instant::now()),
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
            if version + 1 == TEXT_HASH_VERSION {
                fill_text_hashes(&mut tx)?;
            }
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

    /// The vector options, if the store has vectors. The database is shared
    /// by a fleet, so what this node found at open is not the last word: while
    /// it knows of none, it reads the meta row again, at most once per
    /// `VECTOR_RECHECK_INTERVAL` (a failed read counts as none for now).
    pub fn vector_options(&self) -> Option<VectorOptions> {
        if let Some(v) = self.vectors.read().unwrap_or_else(|p| p.into_inner()).clone() {
            return Some(v);
        }
        {
            let mut checked = self.vectors_checked.lock().unwrap_or_else(|p| p.into_inner());
            if checked.elapsed() < VECTOR_RECHECK_INTERVAL {
                return None;
            }
            *checked = Instant::now();
        }
        match self.stored_vector_options() {
            Ok(Some(found)) => {
                let mut cached = self.vectors.write().unwrap_or_else(|p| p.into_inner());
                Some(cached.get_or_insert(found).clone())
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!("could not read whether the store has vectors: {e}");
                None
            }
        }
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
                 key             bigserial PRIMARY KEY,
                 chunk_id        text NOT NULL REFERENCES chunks(id) ON DELETE CASCADE,
                 window_ordinal  integer NOT NULL DEFAULT 0,
                 dense           halfvec({dims}) NOT NULL,
                 sparse          sparsevec,
                 UNIQUE (chunk_id, window_ordinal)
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
    fn a_connection_error_says_why() {
        // A port where nothing listens: the message names the refusal, not
        // only "error connecting to server".
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config: postgres::Config = format!("postgres://nobody@127.0.0.1:{port}/none").parse().unwrap();
        let e = StoreError::from(config.connect(postgres::NoTls).err().expect("nothing listens there"))
            .to_string();
        assert!(e.starts_with("PostgreSQL: error connecting to server: "), "{e}");
        assert!(e.to_lowercase().contains("refused"), "{e}");
    }

    #[test]
    fn languages_map_to_text_search_configurations() {
        assert_eq!(text_search_config(Some("nld")), "dutch");
        assert_eq!(text_search_config(Some("eng")), "english");
        assert_eq!(text_search_config(Some("xyz")), "simple");
        assert_eq!(text_search_config(None), "simple");
    }

    /// A PostgreSQL store written before windows and text hashes (schema 2:
    /// one vector per chunk, `chunk_id` unique) opens: its vectors kept, the
    /// text hashes filled, so its copies collapse, and new chunks get
    /// several windows. Runs where `DATAFACTORY_TEST_POSTGRES` names a
    /// database (under CI it must).
    #[test]
    fn a_store_from_before_windows_opens_and_keeps_everything() {
        let url = match std::env::var("DATAFACTORY_TEST_POSTGRES") {
            Ok(u) if !u.is_empty() => u,
            _ => {
                assert!(
                    !std::env::var("CI").is_ok_and(|v| v == "true" || v == "1"),
                    "DATAFACTORY_TEST_POSTGRES is not set: under CI the PostgreSQL tests must run"
                );
                eprintln!("not run on PostgreSQL (set DATAFACTORY_TEST_POSTGRES)");
                return;
            }
        };
        let schema = "unit_pg_before_windows";
        let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        client
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE EXTENSION IF NOT EXISTS vector;
                 CREATE SCHEMA {schema}; SET search_path TO {schema}, public;
                 CREATE TABLE schema_version (version bigint NOT NULL);"
            ))
            .unwrap();
        for sql in &MIGRATIONS[..2] {
            client.batch_execute(sql).unwrap();
        }
        let options = VectorOptions {
            model: "m".into(),
            dimensions: 4,
            quantization: "f16".into(),
            connectivity: 16,
            expansion_add: 64,
            expansion_search: 32,
            exact_below: 1000,
        };
        client
            .batch_execute(
                "INSERT INTO schema_version VALUES (2);
                 CREATE TABLE embeddings (
                     key       bigserial PRIMARY KEY,
                     chunk_id  text NOT NULL UNIQUE REFERENCES chunks(id) ON DELETE CASCADE,
                     dense     halfvec(4) NOT NULL,
                     sparse    sparsevec
                 );
                 CREATE INDEX embeddings_dense ON embeddings USING hnsw (dense halfvec_cosine_ops);
                 INSERT INTO collections VALUES ('c', 0);
                 INSERT INTO text_searches VALUES ('simple');
                 INSERT INTO documents VALUES
                     ('d1', 'c', 'one.txt', NULL, 'One', 'text', 'h1', 'p', '{}', 'x', '[]', 4, 1, 'simple', 0, 0),
                     ('d2', 'c', 'two.txt', NULL, 'Two', 'text', 'h2', 'p', '{}', 'x', '[]', 4, 1, 'simple', 0, 0);
                 INSERT INTO chunks VALUES
                     ('k1', 'd1', 0, '[]', 'Shared  passage about pears', 0, 27, NULL, 4, NULL, 'simple',
                      to_tsvector('simple', 'shared passage about pears')),
                     ('k2', 'd2', 0, '[]', 'shared passage ABOUT pears', 0, 26, NULL, 4, NULL, 'simple',
                      to_tsvector('simple', 'shared passage about pears')),
                     ('k3', 'd2', 1, '[]', 'Apples only', 27, 38, NULL, 2, NULL, 'simple',
                      to_tsvector('simple', 'apples only'));
                 INSERT INTO embeddings (chunk_id, dense) VALUES
                     ('k1', '[1, 0.01, 0.01, 0.01]'), ('k2', '[0.01, 1, 0.01, 0.01]'), ('k3', '[0.01, 0.01, 1, 0.01]');",
            )
            .unwrap();
        client
            .execute(
                "INSERT INTO meta VALUES ('vectors', $1), ('embedding_model', 'm')",
                &[&serde_json::to_string(&options).unwrap()],
            )
            .unwrap();
        let store = PgStore::open(&StoreConfig {
            backend: "postgres".into(),
            url: url.clone(),
            schema: schema.into(),
            ..StoreConfig::default()
        })
        .unwrap();
        let version: i64 = client.query_one("SELECT version FROM schema_version", &[]).unwrap().get(0);
        assert_eq!(version, PG_SCHEMA_VERSION);
        let hashes: Vec<Option<String>> = client
            .query("SELECT text_hash FROM chunks ORDER BY id", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(hashes[0].as_deref(), Some(crate::passage_hash("shared passage about pears").as_str()));
        assert_eq!(hashes[0], hashes[1]);
        assert_ne!(hashes[1], hashes[2]);

        // The old vectors are searched, and the copies collapse.
        let q = Embedding { dense: vec![0.01, 1.0, 0.01, 0.01], sparse: vec![] };
        let settings = datafactory_core::config::SearchConfig::default();
        let req = SearchRequest {
            embedding: Some(&q),
            ..SearchRequest::new("", crate::SearchMode::Dense, 2, &settings)
        };
        let hits = store.search(&req).unwrap().hits;
        assert_eq!(hits.iter().map(|h| h.chunk_id.as_str()).collect::<Vec<_>>(), ["k2", "k3"]);
        assert_eq!(hits[0].duplicate_count, 1);
        assert_eq!(hits[0].duplicates[0].chunk_id, "k1");

        // New chunks get several windows.
        let text = "long text";
        let doc = Document {
            title: "three".into(),
            format: Format::Text,
            text: text.into(),
            sections: vec![],
            metadata: Default::default(),
            external_id: None,
        };
        let chunks = vec![Chunk {
            ordinal: 0,
            heading_path: vec![],
            text: text.into(),
            start: 0,
            end: 9,
            page: None,
            token_count: 2,
            context: None,
        }];
        let key = DocumentKey {
            id: "d3".into(),
            collection: "c".into(),
            source: "three.txt".into(),
            content_hash: "h3".into(),
            pipeline: "p".into(),
            byte_size: 9,
        };
        let windows = vec![vec![
            Embedding { dense: vec![0.01, 0.01, 0.01, 1.0], sparse: vec![] },
            Embedding { dense: vec![0.01, 0.01, 1.0, 0.01], sparse: vec![] },
        ]];
        store.commit_windows(&key, &doc, &chunks, Some(&windows)).unwrap();
        let q = Embedding { dense: vec![0.01, 0.01, 0.01, 1.0], sparse: vec![] };
        let req = SearchRequest {
            embedding: Some(&q),
            ..SearchRequest::new("", crate::SearchMode::Dense, 1, &settings)
        };
        assert_eq!(store.search(&req).unwrap().hits[0].source, "three.txt");
        let stats = store.stats().unwrap();
        assert_eq!((stats.embedded_chunks, stats.vector_index.unwrap().vectors), (4, 5));
        client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).unwrap();
    }
}
