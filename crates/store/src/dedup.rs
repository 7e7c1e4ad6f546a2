//! Duplicate passages: the exact hash a passage's copies share
//! (`passage_hash`, stored with each chunk as `text_hash`, collapsed at
//! search), and near-duplicates found by MinHash over word 3-shingles
//! (`minhash`, stored as `chunks.minhash`), counted by `near_duplicates`
//! for `datafactory stats`.
//!
//! Pure functions: no storage here.

use serde::Serialize;
use std::collections::{HashMap, HashSet};

/// The hash a passage's duplicates share: BLAKE3 (128 bits, hex) of its
/// text with white space collapsed to single spaces, trimmed, and
/// lower-cased. Stored with each chunk (`text_hash`) on both backends.
pub fn passage_hash(text: &str) -> String {
    let mut hasher = blake3::Hasher::new();
    let mut first = true;
    for word in text.split_whitespace() {
        if !first {
            hasher.update(b" ");
        }
        first = false;
        for c in word.chars().flat_map(char::to_lowercase) {
            let mut buf = [0u8; 4];
            hasher.update(c.encode_utf8(&mut buf).as_bytes());
        }
    }
    hasher.finalize().to_hex()[..32].to_string()
}

/// Words per shingle.
pub const SHINGLE_WORDS: usize = 3;
/// Passages with fewer words get no MinHash signature (too short to call near).
pub const MIN_WORDS: usize = 8;
/// Values in a MinHash signature.
pub const MINHASH_VALUES: usize = 64;
/// LSH bands of the signature (of `MINHASH_VALUES / BANDS` values each):
/// a pair at Jaccard 0.8 shares a band with probability 1 − (1 − 0.8⁴)¹⁶ ≈ 0.9997.
const BANDS: usize = 16;
/// The default near-duplicate threshold: the estimated Jaccard similarity
/// of two passages' word 3-shingles (the share of equal signature values).
/// 0.8: a passage of 50 words with one or two words changed (a version, a
/// link) is near (about 0.9), two passages that merely share a topic are
/// not (below 0.2); `near_duplicates_are_close_and_others_far`.
pub const NEAR_THRESHOLD: f64 = 0.8;

/// The MinHash signature of a passage's word 3-shingles: words are its
/// alphanumeric runs, lower-cased; each shingle is hashed (BLAKE3, 64 bits)
/// and each of the [`MINHASH_VALUES`] values is the minimum over the
/// shingles of one fixed universal hash of it. Two passages' signatures
/// agree in about the share of shingles they have in common (Jaccard).
/// `None` below [`MIN_WORDS`] words.
pub fn minhash(text: &str) -> Option<Vec<u32>> {
    let words: Vec<String> =
        text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect();
    if words.len() < MIN_WORDS {
        return None;
    }
    let mut signature = vec![u32::MAX; MINHASH_VALUES];
    for shingle in words.windows(SHINGLE_WORDS) {
        let h = blake3::hash(shingle.join(" ").as_bytes());
        let h = u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"));
        for (i, value) in signature.iter_mut().enumerate() {
            let (a, b) = PERMUTATIONS[i];
            *value = (*value).min((a.wrapping_mul(h).wrapping_add(b) >> 32) as u32);
        }
    }
    Some(signature)
}

/// The signature as stored (little-endian u32s).
pub fn encode_minhash(signature: &[u32]) -> Vec<u8> {
    signature.iter().flat_map(|v| v.to_le_bytes()).collect()
}

pub fn decode_minhash(bytes: &[u8]) -> Vec<u32> {
    bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// The (odd multiplier, offset) of each universal hash, fixed: a splitmix64
/// sequence, so signatures stored by one version compare with the next.
static PERMUTATIONS: std::sync::LazyLock<[(u64, u64); MINHASH_VALUES]> = std::sync::LazyLock::new(|| {
    let mut state = 0x6461_7461_6661_6374u64;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    std::array::from_fn(|_| (next() | 1, next()))
});

/// The estimated Jaccard similarity of two signatures: the share of equal values.
pub fn similarity(a: &[u32], b: &[u32]) -> f64 {
    if a.is_empty() || a.len() != b.len() {
        return 0.0;
    }
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64
}

/// What `datafactory stats` reports about duplicate passages.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DuplicateReport {
    /// Chunks counted.
    pub chunks: u64,
    /// Distinct passages (chunks with the same normalised text count once).
    pub passages: u64,
    /// Passages held by more than one chunk (collapsed at search).
    pub exact_groups: u64,
    /// Chunks beyond the first of each such passage.
    pub exact_copies: u64,
    /// The near-duplicate threshold: estimated Jaccard similarity of word 3-shingles.
    pub near_threshold: f64,
    /// Pairs of distinct passages at or above `near_threshold`.
    pub near_pairs: u64,
    /// Groups of passages linked by such pairs (each of two or more).
    pub near_groups: u64,
    /// Passages in those groups.
    pub near_passages: u64,
}

/// Counts exact and near duplicates among chunks given as (text hash,
/// MinHash signature). Candidate pairs are those sharing one LSH band of
/// their signatures; each is then checked against `threshold`.
pub fn near_duplicates(chunks: &[(String, Option<Vec<u32>>)], threshold: f64) -> DuplicateReport {
    let mut copies: HashMap<&str, u64> = HashMap::new();
    let mut signatures: HashMap<&str, &[u32]> = HashMap::new();
    for (hash, sig) in chunks {
        *copies.entry(hash.as_str()).or_default() += 1;
        if let Some(s) = sig.as_deref().filter(|s| s.len() == MINHASH_VALUES) {
            signatures.entry(hash.as_str()).or_insert(s);
        }
    }
    let mut passages: Vec<(&str, &[u32])> = signatures.into_iter().collect();
    passages.sort_unstable();
    let rows = MINHASH_VALUES / BANDS;
    let mut pairs: HashSet<(usize, usize)> = HashSet::new();
    for band in 0..BANDS {
        let mut buckets: HashMap<&[u32], Vec<usize>> = HashMap::new();
        for (i, (_, sig)) in passages.iter().enumerate() {
            buckets.entry(&sig[band * rows..(band + 1) * rows]).or_default().push(i);
        }
        for members in buckets.values() {
            for (x, &i) in members.iter().enumerate() {
                for &j in &members[x + 1..] {
                    if !pairs.contains(&(i, j)) && similarity(passages[i].1, passages[j].1) >= threshold {
                        pairs.insert((i, j));
                    }
                }
            }
        }
    }
    // Groups: connected components of the pairs (union-find).
    let mut parent: Vec<usize> = (0..passages.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    for &(i, j) in &pairs {
        let (a, b) = (root(&mut parent, i), root(&mut parent, j));
        if a != b {
            parent[a] = b;
        }
    }
    let linked: HashSet<usize> = pairs.iter().flat_map(|&(i, j)| [i, j]).collect();
    let groups: HashSet<usize> = linked.iter().map(|&i| root(&mut parent, i)).collect();
    DuplicateReport {
        chunks: chunks.len() as u64,
        passages: copies.len() as u64,
        exact_groups: copies.values().filter(|n| **n > 1).count() as u64,
        exact_copies: copies.values().map(|n| n - 1).sum(),
        near_threshold: threshold,
        near_pairs: pairs.len() as u64,
        near_groups: groups.len() as u64,
        near_passages: linked.len() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "The borrow checker compares scopes to determine whether all borrows are valid. \
        Rust uses a generic lifetime parameter to ensure that the references are valid as long as they \
        need to be, and the compiler checks this at compile time without any cost at run time.";

    #[test]
    fn passage_hash_ignores_white_space_and_case_only() {
        let h = passage_hash("The borrow checker\n  enforces  rules.");
        assert_eq!(h.len(), 32);
        assert_eq!(h, passage_hash("  the BORROW checker enforces rules.  "));
        assert_eq!(h, passage_hash("the\tborrow checker enforces\r\nrules."));
        assert_ne!(h, passage_hash("the borrow checker enforces rules"));
        assert_ne!(h, passage_hash("theborrow checker enforces rules."));
        assert_eq!(passage_hash(""), passage_hash(" \n "));
        // Non-ASCII case folds too.
        assert_eq!(passage_hash("ÜBER Straße"), passage_hash("über straße"));
    }

    #[test]
    fn near_duplicates_are_close_and_others_far() {
        let a = minhash(TEXT).unwrap();
        assert_eq!(a.len(), MINHASH_VALUES);
        assert_eq!(
            Some(a.clone()),
            minhash(&TEXT.to_uppercase().replace('.', " ")),
            "case and punctuation do not count"
        );
        // One word changed (a version): near.
        let edited = minhash(&TEXT.replace("generic", "named")).unwrap();
        let s = similarity(&a, &edited);
        assert!(s >= NEAR_THRESHOLD, "one word of 47 changed: {s}");
        // Another passage on the same topic: far.
        let other = minhash(
            "Lifetimes are another kind of generic that we have already been using. Rather than \
             ensuring that a type has the behavior we want, lifetimes ensure that references are \
             valid as long as we need them to be, which the borrow checker verifies.",
        )
        .unwrap();
        assert!(similarity(&a, &other) < 0.3, "{}", similarity(&a, &other));
        assert_eq!(minhash("too short to say"), None);
        assert_eq!(decode_minhash(&encode_minhash(&a)), a);
    }

    fn item(hash: &str, sig: Option<Vec<u32>>) -> (String, Option<Vec<u32>>) {
        (hash.to_string(), sig)
    }

    /// A signature equal to `base` but in the first `changed` values.
    fn changed(base: &[u32], changed: usize) -> Vec<u32> {
        base.iter().enumerate().map(|(i, v)| if i < changed { v ^ 0xFFFF } else { *v }).collect()
    }

    #[test]
    fn counts_exact_copies_near_pairs_and_groups() {
        let base: Vec<u32> = (0..MINHASH_VALUES as u32).map(|i| i * 7919).collect();
        let chunks = vec![
            item("a", Some(base.clone())),
            item("a", Some(base.clone())), // an exact copy: not a near pair
            item("a", Some(base.clone())),
            item("b", Some(changed(&base, 8))),  // 56/64 = 0.875 like a
            item("c", Some(changed(&base, 16))), // 0.75 like a, 0.875 like b: linked through b
            item("d", Some(base.iter().map(|v| v + 1).collect())), // like none
            item("e", None),                     // too short
            item("e", None),
        ];
        let r = near_duplicates(&chunks, 0.8);
        assert_eq!(
            r,
            DuplicateReport {
                chunks: 8,
                passages: 5,
                exact_groups: 2,
                exact_copies: 3,
                near_threshold: 0.8,
                near_pairs: 2,
                near_groups: 1,
                near_passages: 3,
            }
        );
        // A stricter threshold: none.
        let r = near_duplicates(&chunks, 0.9);
        assert_eq!((r.near_pairs, r.near_groups, r.near_passages), (0, 0, 0));
        assert_eq!(near_duplicates(&[], 0.8), DuplicateReport { near_threshold: 0.8, ..Default::default() });
    }
}
