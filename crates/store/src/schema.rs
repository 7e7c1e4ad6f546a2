//! The SQLite schema and its versioned migrations (`PRAGMA user_version`).

use rusqlite::Connection;

/// Each entry migrates from version `index` to `index + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE collections (
    name        TEXT PRIMARY KEY,
    created_at  INTEGER NOT NULL
);
CREATE TABLE documents (
    id            TEXT PRIMARY KEY,
    collection    TEXT NOT NULL REFERENCES collections(name),
    source        TEXT NOT NULL,
    external_id   TEXT,
    title         TEXT NOT NULL,
    format        TEXT NOT NULL,
    content_hash  TEXT NOT NULL,
    pipeline      TEXT NOT NULL,
    metadata      TEXT NOT NULL,
    text          TEXT NOT NULL,
    sections      TEXT NOT NULL,
    byte_size     INTEGER NOT NULL,
    version       INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);
CREATE INDEX documents_by_collection ON documents(collection, source);
CREATE INDEX documents_by_external_id ON documents(external_id);
CREATE TABLE chunks (
    id            TEXT PRIMARY KEY,
    document_id   TEXT NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    ordinal       INTEGER NOT NULL,
    heading_path  TEXT NOT NULL,
    text          TEXT NOT NULL,
    char_start    INTEGER NOT NULL,
    char_end      INTEGER NOT NULL,
    page          INTEGER,
    token_count   INTEGER NOT NULL,
    UNIQUE (document_id, ordinal)
);
-- Every committed change to a document, in order. Derived indexes record the
-- last change they include; rows they all include are pruned.
CREATE TABLE changes (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    document_id  TEXT NOT NULL,
    op           TEXT NOT NULL,
    at           INTEGER NOT NULL
);
CREATE TABLE jobs (
    id           TEXT PRIMARY KEY,
    kind         TEXT NOT NULL,
    state        TEXT NOT NULL,
    collection   TEXT,
    summary      TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    finished_at  INTEGER
);
"#,
    r#"
-- Settings of the store itself (e.g. the embedding model of its vectors).
CREATE TABLE meta (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
-- One row per embedded chunk. `key` identifies the vector in the vector
-- index; AUTOINCREMENT never reuses a key.
CREATE TABLE embeddings (
    key       INTEGER PRIMARY KEY AUTOINCREMENT,
    chunk_id  TEXT NOT NULL UNIQUE REFERENCES chunks(id) ON DELETE CASCADE,
    dense     BLOB NOT NULL,
    sparse    BLOB
);
-- Vector keys a change removed (JSON array), so an index can replay it.
ALTER TABLE changes ADD COLUMN removed_keys TEXT NOT NULL DEFAULT '[]';
"#,
    r#"
-- The context that situates a chunk in its document (JSON: text, kind,
-- model, template, windowed); NULL when enrichment was off.
ALTER TABLE chunks ADD COLUMN context TEXT;
-- Every LLM answer, kept the moment it arrives, so that no call that once
-- succeeded is made again (re-ingest, resume after a crash or restart).
-- Independent of documents: it outlives a replaced or deleted version.
CREATE TABLE llm_contexts (
    document_hash  TEXT NOT NULL,
    chunk_hash     TEXT NOT NULL,
    model          TEXT NOT NULL,
    template       TEXT NOT NULL,
    context        TEXT NOT NULL,
    call           TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    PRIMARY KEY (document_hash, chunk_hash, model, template)
) WITHOUT ROWID;
"#,
];

pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

pub fn migrate(db: &mut Connection) -> rusqlite::Result<()> {
    migrate_to(db, SCHEMA_VERSION)
}

/// Migrates up to `target` (tests build stores of older versions with it).
pub fn migrate_to(db: &mut Connection, target: i64) -> rusqlite::Result<()> {
    loop {
        // Read the version inside the write transaction: two processes opening
        // a new store at once must not both apply a migration.
        let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let Some(sql) = MIGRATIONS.get(version.max(0) as usize).filter(|_| version < target) else {
            return Ok(());
        };
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version + 1)?;
        tx.commit()?;
    }
}
