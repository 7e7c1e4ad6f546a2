//! The PostgreSQL schema as numbered migrations, applied in order under an
//! advisory lock by `PgStore::migrate`; `PG_SCHEMA_VERSION` is their count.
//!
//! Add a migration at the end; never edit one that has shipped.

/// The advisory lock (one per database) under which migrations and the
/// creation of the vector table run, so that nodes starting together do not
/// apply a migration twice.
pub(crate) const MIGRATION_LOCK: i64 = 0x6461_7461_6661_6374; // "datafact"

/// Each entry migrates from version `index` to `index + 1`, in one
/// transaction. The embeddings table is made by `enable_vectors`, when the
/// model's dimensions are known.
pub(crate) const MIGRATIONS: &[&str] = &[
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
