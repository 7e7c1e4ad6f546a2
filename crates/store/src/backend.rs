//! `Store`, the type every caller uses: the embedded store (SQLite, tantivy,
//! usearch in a data directory) or PostgreSQL with pgvector, chosen by
//! `[store] backend`. Both keep the same blocking API; search fusion is the
//! same code for both (`search::fuse`).

use crate::pg::PgStore;
use crate::{
    ClaimedJob, CollectionStats, CommitOutcome, DocumentDetail, DocumentKey, DocumentPage, DocumentQuery,
    DocumentSummary, EmbeddedStore, Fleet, JobRecord, Result, SearchHit, SearchRequest, SearchResults, Stats,
    StoreError, VectorOptions, WordQuery,
};
use datafactory_core::config::{Config, StoreConfig};
use datafactory_core::{Chunk, Document, Embedding};
use std::path::Path;
use std::time::Duration;

enum Backend {
    Embedded(Box<EmbeddedStore>),
    Postgres(Box<PgStore>),
}

pub struct Store {
    backend: Backend,
}

/// Runs the same call on whichever backend the store has.
macro_rules! dispatch {
    ($self:ident, $s:ident => $call:expr) => {
        match &$self.backend {
            Backend::Embedded($s) => $call,
            Backend::Postgres($s) => $call,
        }
    };
}

impl Store {
    /// Opens (or creates) the embedded store in `dir`.
    pub fn open(dir: &Path) -> Result<Store> {
        Ok(Store { backend: Backend::Embedded(Box::new(EmbeddedStore::open(dir)?)) })
    }

    /// Connects to PostgreSQL and applies the migrations it lacks.
    pub fn open_postgres(settings: &StoreConfig) -> Result<Store> {
        Ok(Store { backend: Backend::Postgres(Box::new(PgStore::open(settings)?)) })
    }

    /// The store the configuration names: `[store] backend`.
    pub fn open_config(config: &Config) -> Result<Store> {
        match config.store.backend.as_str() {
            "postgres" => Store::open_postgres(&config.store),
            _ => Store::open(&config.data_dir),
        }
    }

    /// `embedded` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self.backend {
            Backend::Embedded(_) => "embedded",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// The data directory of an embedded store.
    pub fn dir(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Embedded(s) => Some(s.dir()),
            Backend::Postgres(_) => None,
        }
    }

    /// The last document change committed (0: none ever).
    pub fn latest_change(&self) -> Result<i64> {
        dispatch!(self, s => s.latest_change())
    }

    /// The options of the vector index, if the store has one.
    pub fn vector_options(&self) -> Option<VectorOptions> {
        dispatch!(self, s => s.vector_options())
    }

    /// Prepares the store for an embedding model's vectors; fails if it
    /// holds another model's.
    pub fn enable_vectors(&self, options: &VectorOptions) -> Result<()> {
        dispatch!(self, s => s.enable_vectors(options))
    }

    /// The stored content hash and pipeline fingerprint of a document, if any.
    pub fn document_fingerprint(&self, id: &str) -> Result<Option<(String, String)>> {
        dispatch!(self, s => s.document_fingerprint(id))
    }

    /// Stores a document, its chunks and their embeddings in one transaction,
    /// replacing an earlier version; nothing if the same input was stored
    /// with the same pipeline.
    pub fn commit_document(
        &self,
        key: &DocumentKey,
        doc: &Document,
        chunks: &[Chunk],
        embeddings: Option<&[Embedding]>,
    ) -> Result<CommitOutcome> {
        dispatch!(self, s => s.commit_document(key, doc, chunks, embeddings))
    }

    /// [`Store::commit_document`] with any number of vectors per chunk: one
    /// per window of its text, first first (at least one each); the chunk is
    /// scored by its best window.
    pub fn commit_windows(
        &self,
        key: &DocumentKey,
        doc: &Document,
        chunks: &[Chunk],
        windows: Option<&[Vec<Embedding>]>,
    ) -> Result<CommitOutcome> {
        dispatch!(self, s => s.commit_windows(key, doc, chunks, windows))
    }

    /// Makes every committed document searchable by words (embedded: commits
    /// the word index; PostgreSQL: nothing to do).
    pub fn flush(&self) -> Result<()> {
        match &self.backend {
            Backend::Embedded(s) => s.flush(),
            Backend::Postgres(_) => Ok(()),
        }
    }

    /// Saves every derived index now (embedded); nothing to do on PostgreSQL.
    pub fn checkpoint(&self) -> Result<()> {
        match &self.backend {
            Backend::Embedded(s) => s.checkpoint(),
            Backend::Postgres(_) => Ok(()),
        }
    }

    /// Removes a document everywhere. Returns false if there was none.
    pub fn delete_document(&self, id: &str) -> Result<bool> {
        dispatch!(self, s => s.delete_document(id))
    }

    /// Searches with the retrievers the mode asks for and the store can run.
    /// Each hit carries where the query's words occur in its text
    /// (`highlights`, the same on both backends: [`crate::words::Highlighter`]).
    pub fn search(&self, req: &SearchRequest<'_>) -> Result<SearchResults> {
        let mut results = dispatch!(self, s => s.search(req))?;
        let mut highlighter = crate::words::Highlighter::new(req.text);
        for hit in &mut results.hits {
            hit.highlights = highlighter.ranges(&hit.text, hit.language.as_deref());
        }
        Ok(results)
    }

    /// Word search only.
    pub fn search_words(&self, query: &WordQuery<'_>) -> Result<Vec<SearchHit>> {
        Ok(self.search(&query.request())?.hits)
    }

    /// Every document (of one collection, or all), by collection and source.
    pub fn list_documents(&self, collection: Option<&str>) -> Result<Vec<DocumentSummary>> {
        Ok(self.list_documents_page(&DocumentQuery { collection, ..Default::default() })?.documents)
    }

    /// A page of the documents that pass the query's filters (collection,
    /// the analysis's type and language, format), by collection and source,
    /// and how many pass in all.
    pub fn list_documents_page(&self, query: &DocumentQuery<'_>) -> Result<DocumentPage> {
        dispatch!(self, s => s.list_documents_page(query))
    }

    /// Every collection with its document and chunk counts, by name.
    pub fn collections(&self) -> Result<Vec<CollectionStats>> {
        dispatch!(self, s => s.collections())
    }

    /// A document by id, or by the external id its input gave it.
    pub fn get_document(&self, id: &str) -> Result<Option<DocumentDetail>> {
        dispatch!(self, s => s.get_document(id))
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
        dispatch!(self, s => s.llm_context(document_hash, chunk_hash, model, template))
    }

    /// Keeps an LLM answer at once; a second answer for the same key is ignored.
    pub fn save_llm_context(
        &self,
        document_hash: &str,
        chunk_hash: &str,
        model: &str,
        template: &str,
        context: &str,
        call: &serde_json::Value,
    ) -> Result<()> {
        dispatch!(self, s => s.save_llm_context(document_hash, chunk_hash, model, template, context, call))
    }

    /// How many LLM answers the store keeps.
    pub fn llm_context_count(&self) -> Result<u64> {
        dispatch!(self, s => s.llm_context_count())
    }

    /// Exact duplicates (chunks with the same normalised text) and near
    /// duplicates (estimated Jaccard similarity of word 3-shingles at least
    /// `near_threshold`) among all chunks.
    pub fn duplicate_report(&self, near_threshold: f64) -> Result<crate::DuplicateReport> {
        dispatch!(self, s => s.duplicate_report(near_threshold))
    }

    /// Counts, and whether the indexes agree with the truth.
    pub fn stats(&self) -> Result<Stats> {
        dispatch!(self, s => s.stats())
    }

    /// Records a new running job; returns its id.
    pub fn create_job(&self, kind: &str, collection: Option<&str>) -> Result<String> {
        dispatch!(self, s => s.create_job(kind, collection))
    }

    /// Ends a job with its final state (`succeeded`, `failed`) and summary.
    pub fn finish_job(&self, id: &str, state: &str, summary: &serde_json::Value) -> Result<()> {
        dispatch!(self, s => s.finish_job(id, state, summary))
    }

    pub fn get_job(&self, id: &str) -> Result<Option<JobRecord>> {
        dispatch!(self, s => s.get_job(id))
    }

    /// The `limit` most recent jobs, newest first.
    pub fn list_jobs(&self, limit: u64) -> Result<Vec<JobRecord>> {
        dispatch!(self, s => s.list_jobs(limit))
    }

    /// The PostgreSQL store, for what only it does (the fleet's queue).
    fn postgres(&self) -> Result<&PgStore> {
        match &self.backend {
            Backend::Postgres(s) => Ok(s),
            Backend::Embedded(_) => Err(StoreError::Invalid(
                "a fleet's work queue needs the PostgreSQL store ([store] backend = \"postgres\")".into(),
            )),
        }
    }

    /// Queues a job with its input files for any node of the fleet (PostgreSQL).
    pub fn enqueue_job(
        &self,
        kind: &str,
        collection: Option<&str>,
        request: &serde_json::Value,
        files: &[(String, Vec<u8>)],
    ) -> Result<String> {
        self.postgres()?.enqueue_job(kind, collection, request, files)
    }

    /// Claims the oldest queued job, or one whose node's lease ran out, with
    /// `FOR UPDATE SKIP LOCKED`, for `node` until `lease` from now (PostgreSQL).
    pub fn claim_job(&self, node: &str, lease: Duration) -> Result<Option<ClaimedJob>> {
        self.postgres()?.claim_job(node, lease)
    }

    /// Extends `node`'s lease on a job; false when it lost the job.
    pub fn renew_lease(&self, id: &str, node: &str, lease: Duration) -> Result<bool> {
        self.postgres()?.renew_lease(id, node, lease)
    }

    /// Ends a claimed job if `node` still holds it; false otherwise.
    pub fn finish_claimed_job(
        &self,
        id: &str,
        node: &str,
        state: &str,
        summary: &serde_json::Value,
    ) -> Result<bool> {
        self.postgres()?.finish_claimed_job(id, node, state, summary)
    }

    /// Names this process in the fleet: it then ends only the jobs it holds.
    pub fn set_node(&self, node: &str) -> Result<()> {
        self.postgres()?.set_node(node);
        Ok(())
    }

    /// Puts a job `node` holds back in the queue; false if it holds none such.
    pub fn release_job(&self, id: &str, node: &str) -> Result<bool> {
        self.postgres()?.release_job(id, node)
    }

    /// Records that `node` is alive (and what it runs).
    pub fn node_heartbeat(&self, node: &str, address: &str, running_job: Option<&str>) -> Result<()> {
        self.postgres()?.node_heartbeat(node, address, running_job)
    }

    /// The fleet's nodes (alive: seen within `alive`) and queue counts.
    pub fn fleet(&self, alive: Duration) -> Result<Fleet> {
        self.postgres()?.fleet(alive)
    }
}
