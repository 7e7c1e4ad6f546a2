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
    r#"
-- Several vectors per chunk: one per window of a chunk longer than the
-- model's input (window_ordinal 0 is the first, the only one before). The
-- table is rebuilt (SQLite cannot drop the UNIQUE on chunk_id): every row
-- and key kept, and the AUTOINCREMENT high-water mark with them, so no key
-- is ever reused.
CREATE TABLE embeddings_v4 (
    key             INTEGER PRIMARY KEY AUTOINCREMENT,
    chunk_id        TEXT NOT NULL REFERENCES chunks(id) ON DELETE CASCADE,
    window_ordinal  INTEGER NOT NULL DEFAULT 0,
    dense           BLOB NOT NULL,
    sparse          BLOB,
    UNIQUE (chunk_id, window_ordinal)
);
INSERT INTO embeddings_v4 (key, chunk_id, window_ordinal, dense, sparse)
    SELECT key, chunk_id, 0, dense, sparse FROM embeddings;
DELETE FROM sqlite_sequence WHERE name = 'embeddings_v4';
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'embeddings_v4', seq FROM sqlite_sequence WHERE name = 'embeddings';
DROP TABLE embeddings;
ALTER TABLE embeddings_v4 RENAME TO embeddings;
-- The hash of the chunk's normalised text (`passage_hash`): the same
-- passage in several chunks is found by it (filled for older rows by
-- `migrate_to` right after this step).
ALTER TABLE chunks ADD COLUMN text_hash TEXT;
CREATE INDEX chunks_by_text_hash ON chunks(text_hash);
-- Its MinHash signature over word 3-shingles (`minhash`; NULL for a short passage):
-- near-duplicates, counted by `datafactory stats`.
ALTER TABLE chunks ADD COLUMN minhash BLOB;
"#,
];

/// The migration after which chunks' text hashes are filled in code.
const TEXT_HASH_VERSION: i64 = 4;

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
        if version + 1 == TEXT_HASH_VERSION {
            fill_text_hashes(&tx)?;
        }
        tx.pragma_update(None, "user_version", version + 1)?;
        tx.commit()?;
    }
}

/// Fills `chunks.text_hash` and `minhash` where the hash is missing (chunks stored before them).
fn fill_text_hashes(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    let missing: Vec<(String, String)> = tx
        .prepare("SELECT id, text FROM chunks WHERE text_hash IS NULL")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut update = tx.prepare("UPDATE chunks SET text_hash = ?2, minhash = ?3 WHERE id = ?1")?;
    for (id, text) in missing {
        update.execute(rusqlite::params![
            id,
            crate::passage_hash(&text),
            crate::minhash(&text).map(|s| crate::encode_minhash(&s))
        ])?;
    }
    Ok(())
}
