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
    r#"
-- The hash of the chunk's normalised text (`passage_hash`): the same
-- passage in several chunks is found by it (filled for older rows by
-- `fill_text_hashes` right after this step).
ALTER TABLE chunks ADD COLUMN text_hash text;
CREATE INDEX chunks_by_text_hash ON chunks (text_hash);
-- Its MinHash signature over word 3-shingles (NULL for a short passage): near-duplicates.
ALTER TABLE chunks ADD COLUMN minhash bytea;
-- Several vectors per chunk: one per window of a chunk longer than the
-- model's input (window_ordinal 0 the first, the only one before). The
-- embeddings table exists once vectors were enabled.
DO $$
BEGIN
    IF to_regclass('embeddings') IS NOT NULL THEN
        ALTER TABLE embeddings ADD COLUMN window_ordinal integer NOT NULL DEFAULT 0;
        ALTER TABLE embeddings DROP CONSTRAINT embeddings_chunk_id_key;
        ALTER TABLE embeddings ADD CONSTRAINT embeddings_chunk_id_window_ordinal_key
            UNIQUE (chunk_id, window_ordinal);
    END IF;
END
$$;
"#,
];

/// The migration after which chunks' text hashes are filled in code.
pub(crate) const TEXT_HASH_VERSION: i64 = 3;

/// Fills `chunks.text_hash` where it is missing (chunks stored before it).
pub(crate) fn fill_text_hashes(tx: &mut postgres::Transaction<'_>) -> Result<(), postgres::Error> {
    let rows = tx.query("SELECT id, text FROM chunks WHERE text_hash IS NULL", &[])?;
    let ids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let hashes: Vec<String> = rows.iter().map(|r| crate::passage_hash(r.get::<_, &str>(1))).collect();
    let sims: Vec<Option<Vec<u8>>> =
        rows.iter().map(|r| crate::minhash(r.get::<_, &str>(1)).map(|s| crate::encode_minhash(&s))).collect();
    tx.execute(
        "UPDATE chunks SET text_hash = t.hash, minhash = t.sig
         FROM unnest($1::text[], $2::text[], $3::bytea[]) AS t(id, hash, sig)
         WHERE chunks.id = t.id",
        &[&ids, &hashes, &sims],
    )?;
    Ok(())
}

pub const PG_SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;
