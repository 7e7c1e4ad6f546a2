//! Deterministic identifiers: the same input always gives the same ids, so a
//! re-ingest recognises its documents and later stages can cache per chunk.

/// 128 bits of BLAKE3 over the parts, each followed by a 0 byte, as hex.
fn hash_parts(parts: &[&[u8]]) -> String {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(p);
        h.update(&[0]);
    }
    h.finalize().to_hex()[..32].to_string()
}

/// A document's id: its collection and its key (the canonical source path, or
/// `jsonl:<id>` for a JSONL record that names its own id).
pub fn document_id(collection: &str, key: &str) -> String {
    hash_parts(&[b"doc", collection.as_bytes(), key.as_bytes()])
}

/// A chunk's id: its document, its ordinal and its text.
pub fn chunk_id(document_id: &str, ordinal: u32, text: &str) -> String {
    hash_parts(&[b"chunk", document_id.as_bytes(), &ordinal.to_le_bytes(), text.as_bytes()])
}

/// The content hash of raw input bytes (full 256-bit BLAKE3, hex).
pub fn content_hash(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_and_distinct() {
        assert_eq!(document_id("c", "a.txt"), document_id("c", "a.txt"));
        assert_ne!(document_id("c", "a.txt"), document_id("d", "a.txt"));
        // The separator keeps ("ab","c") apart from ("a","bc").
        assert_ne!(document_id("ab", "c"), document_id("a", "bc"));
        assert_eq!(document_id("c", "a").len(), 32);
        assert_ne!(chunk_id("d", 0, "x"), chunk_id("d", 1, "x"));
    }
}
