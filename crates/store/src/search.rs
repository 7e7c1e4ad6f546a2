//! Retrieval: words (BM25), dense (HNSW) and sparse (lexical weights), each
//! giving ranked candidates, fused by weighted reciprocal rank
//! (score = Σ weight / (rrf_k + rank)), then read back from SQLite.

use crate::sparse::SparseIndex;
use crate::vectors::decode_sparse;
use crate::{
    parse_json_list, EmbeddedStore, Result, SearchFilter, SearchHit, SearchMode, SearchRequest,
    SearchResults, StageScores,
};
use rusqlite::OptionalExtension;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Chunk ids with a retriever's scores, best first.
pub(crate) type Ranked = Vec<(String, f32)>;

/// Which retriever a candidate list came from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retriever {
    Words,
    Dense,
    Sparse,
}

impl Retriever {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Retriever::Words => "words",
            Retriever::Dense => "dense",
            Retriever::Sparse => "sparse",
        }
    }
}

/// The retrievers a search runs, with their weights, and how deep each goes.
/// Shared by both backends, so that on the same data they ask the same
/// retrievers for the same number of candidates.
pub(crate) struct Plan {
    pub wanted: Vec<(Retriever, f32)>,
    pub notes: Vec<String>,
    /// Several retrievers: their lists are fused.
    pub fuse: bool,
    /// Candidates taken from each retriever.
    pub depth: usize,
}

/// Decides which retrievers run for `req` on a store that has (or has not)
/// vectors. `None`: nothing can run; the notes say why.
pub(crate) fn plan(req: &SearchRequest<'_>, has_vectors: bool) -> std::result::Result<Plan, Vec<String>> {
    let mut notes = Vec::new();
    // Only a mode that asks for dense retrieval explains its absence.
    let wants_dense = matches!(req.mode, SearchMode::Dense)
        || (matches!(req.mode, SearchMode::Hybrid) && req.weight_dense > 0.0);
    let dense_possible = match (has_vectors, req.embedding.is_some_and(|e| !e.dense.is_empty())) {
        (true, true) => true,
        _ if !wants_dense => false,
        (false, _) => {
            notes.push(
                "dense retrieval unavailable: the store has no vectors (no embedding model was used at ingest)"
                    .to_string(),
            );
            false
        }
        (true, false) => {
            notes.push(
                "dense retrieval unavailable: no query embedding (no embedding model loaded)".to_string(),
            );
            false
        }
    };
    let sparse_possible = req.embedding.is_some_and(|e| !e.sparse.is_empty());
    let mut wanted: Vec<(Retriever, f32)> = match req.mode {
        SearchMode::Lexical => vec![(Retriever::Words, 1.0)],
        SearchMode::Dense => vec![(Retriever::Dense, 1.0)],
        SearchMode::Sparse => vec![(Retriever::Sparse, 1.0)],
        SearchMode::Hybrid => vec![
            (Retriever::Words, req.weight_words),
            (Retriever::Dense, req.weight_dense),
            (Retriever::Sparse, req.weight_sparse),
        ],
    };
    wanted.retain(|(r, w)| {
        *w > 0.0
            && match r {
                Retriever::Words => true,
                Retriever::Dense => dense_possible,
                Retriever::Sparse => {
                    if !sparse_possible {
                        notes.push(
                            "sparse retrieval unavailable: the model gives no sparse weights".to_string(),
                        );
                    }
                    sparse_possible
                }
            }
    });
    if wanted.is_empty() && req.mode != SearchMode::Hybrid {
        return Err(notes);
    }
    if wanted.is_empty() {
        wanted.push((Retriever::Words, 1.0));
    }
    let fuse = wanted.len() > 1;
    let depth = if fuse { req.candidates.max(req.top_k) } else { req.top_k };
    Ok(Plan { wanted, notes, fuse, depth })
}

/// Weighted reciprocal-rank fusion of the retrievers' lists (each best
/// first): every chunk's stage scores and, when fusing, Σ weight / (rrf_k +
/// rank); the best `top_k` by the primary score, ties by chunk id.
pub(crate) fn fuse(
    req: &SearchRequest<'_>,
    lists: &[(Retriever, f32, Ranked)],
    fuse: bool,
) -> Vec<(String, StageScores)> {
    let mut scored: HashMap<String, StageScores> = HashMap::new();
    for (r, w, list) in lists {
        for (rank, (chunk, score)) in list.iter().enumerate() {
            let s = scored.entry(chunk.clone()).or_default();
            let place = Some(rank as u32 + 1);
            match r {
                Retriever::Words => (s.words, s.ranks.words) = (Some(*score), place),
                Retriever::Dense => (s.dense, s.ranks.dense) = (Some(*score), place),
                Retriever::Sparse => (s.sparse, s.ranks.sparse) = (Some(*score), place),
            }
            if fuse {
                *s.fused.get_or_insert(0.0) += w / (req.rrf_k + rank as f32 + 1.0);
            }
        }
    }
    let mut ranked: Vec<(String, StageScores)> = scored.into_iter().collect();
    ranked.sort_by(|a, b| primary(&b.1).total_cmp(&primary(&a.1)).then_with(|| a.0.cmp(&b.0)));
    ranked.truncate(req.top_k);
    ranked
}

/// The score a hit is ranked by: fused, else the one retriever's.
pub(crate) fn primary(s: &StageScores) -> f32 {
    s.fused.or(s.words).or(s.dense).or(s.sparse).unwrap_or(0.0)
}

impl EmbeddedStore {
    /// Searches with the retrievers the mode asks for and the store can run.
    pub fn search(&self, req: &SearchRequest<'_>) -> Result<SearchResults> {
        let vectors = self.vector_index();
        let Plan { wanted, notes, fuse: fusing, depth } = match plan(req, vectors.is_some()) {
            Ok(p) => p,
            Err(notes) => return Ok(SearchResults { retrievers: Vec::new(), hits: Vec::new(), notes }),
        };

        // A filter becomes the set of documents (and vector keys) allowed.
        let allowed = match req.filter.filter(|f| !f.is_empty()) {
            Some(f) => {
                let docs = self.filtered_documents(f, req.collection)?;
                if docs.is_empty() {
                    return Ok(SearchResults { retrievers: Vec::new(), hits: Vec::new(), notes });
                }
                let keys = if wanted.iter().any(|(r, _)| *r != Retriever::Words) {
                    self.keys_of(&docs)?
                } else {
                    HashSet::new()
                };
                Some((docs, keys))
            }
            None => None,
        };
        let allowed_docs: Option<Vec<String>> = allowed.as_ref().map(|(d, _)| d.iter().cloned().collect());

        let mut lists: Vec<(Retriever, f32, Ranked)> = Vec::new();
        for &(r, w) in &wanted {
            let list = match r {
                Retriever::Words => self.words.search(
                    req.text,
                    req.collection,
                    allowed_docs.as_deref(),
                    depth,
                    req.title_boost,
                    req.heading_boost,
                )?,
                Retriever::Dense => {
                    let v = vectors.as_ref().expect("checked above");
                    let query = &req.embedding.expect("checked above").dense;
                    let hits = match (&allowed, req.collection) {
                        (Some((_, keys)), _) => v.search(query, depth, Some(&|k: u64| keys.contains(&k)))?,
                        (None, Some(c)) => self.with_key_collections(|map| {
                            let keep = |k: u64| map.get(&k).is_some_and(|x| &**x == c);
                            v.search(query, depth, Some(&keep))
                        })??,
                        (None, None) => v.search(query, depth, None)?,
                    };
                    self.chunk_ids_of(hits)?
                }
                Retriever::Sparse => {
                    let query = &req.embedding.expect("checked above").sparse;
                    self.ensure_sparse()?;
                    let hits = {
                        let sparse = self.sparse.read().unwrap_or_else(|p| p.into_inner());
                        let index = sparse.as_ref().expect("built above");
                        match (&allowed, req.collection) {
                            (Some((_, keys)), _) => {
                                index.search(query, depth, Some(&|k: u64| keys.contains(&k)))
                            }
                            (None, Some(c)) => self.with_key_collections(|map| {
                                let keep = |k: u64| map.get(&k).is_some_and(|x| &**x == c);
                                index.search(query, depth, Some(&keep))
                            })?,
                            (None, None) => index.search(query, depth, None),
                        }
                    };
                    self.chunk_ids_of(hits)?
                }
            };
            lists.push((r, w, list));
        }

        let ranked = fuse(req, &lists, fusing);
        let hits = self.hydrate(ranked, primary)?;
        Ok(SearchResults { retrievers: lists.iter().map(|l| l.0.name()).collect(), hits, notes })
    }

    /// The ids of the documents (in `collection`, if given) that pass `filter`.
    /// Reads every candidate document's metadata: fine for the document
    /// counts one node holds; an index on metadata is a later step.
    fn filtered_documents(&self, filter: &SearchFilter, collection: Option<&str>) -> Result<HashSet<String>> {
        let db = self.reader()?;
        let mut q = db.prepare_cached(
            "SELECT id, external_id, metadata FROM documents WHERE ?1 IS NULL OR collection = ?1",
        )?;
        let mut out = HashSet::new();
        let mut rows = q.query([collection])?;
        while let Some(r) = rows.next()? {
            let id: String = r.get(0)?;
            let external: Option<String> = r.get(1)?;
            if !filter.document_ids.is_empty()
                && !filter.document_ids.iter().any(|d| *d == id || Some(d) == external.as_ref())
            {
                continue;
            }
            if !filter.metadata.is_empty() {
                let metadata: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(&r.get::<_, String>(2)?).unwrap_or_default();
                if !filter.metadata.iter().all(|(k, v)| metadata.get(k) == Some(v)) {
                    continue;
                }
            }
            out.insert(id);
        }
        Ok(out)
    }

    /// The vector keys of these documents' chunks.
    fn keys_of(&self, documents: &HashSet<String>) -> Result<HashSet<u64>> {
        let db = self.reader()?;
        let mut q = db.prepare_cached(
            "SELECT e.key FROM embeddings e JOIN chunks c ON c.id = e.chunk_id WHERE c.document_id = ?1",
        )?;
        let mut keys = HashSet::new();
        for d in documents {
            for k in q.query_map([d], |r| r.get::<_, i64>(0))? {
                keys.insert(k? as u64);
            }
        }
        Ok(keys)
    }

    /// Vector keys → chunk ids, keeping rank order and scores.
    fn chunk_ids_of(&self, hits: Vec<(u64, f32)>) -> Result<Vec<(String, f32)>> {
        let db = self.reader()?;
        let mut q = db.prepare_cached("SELECT chunk_id FROM embeddings WHERE key = ?1")?;
        let mut out = Vec::with_capacity(hits.len());
        for (key, score) in hits {
            if let Some(id) = q.query_row([key as i64], |r| r.get::<_, String>(0)).optional()? {
                out.push((id, score));
            }
        }
        Ok(out)
    }

    /// Reads ranked chunks back from SQLite; chunks SQLite no longer holds are dropped.
    fn hydrate(
        &self,
        ranked: Vec<(String, StageScores)>,
        primary: impl Fn(&StageScores) -> f32,
    ) -> Result<Vec<SearchHit>> {
        let mut reader = self.reader()?;
        // One snapshot: every hit from the same committed state.
        let db = reader.transaction()?;
        let mut q = db.prepare_cached(
            "SELECT c.document_id, c.ordinal, c.heading_path, c.text, c.char_start, c.char_end, c.page,
                    d.title, d.source, d.collection, c.context
             FROM chunks c JOIN documents d ON d.id = c.document_id WHERE c.id = ?1",
        )?;
        let mut out = Vec::with_capacity(ranked.len());
        for (chunk_id, scores) in ranked {
            let hit = q
                .query_row([&chunk_id], |r| {
                    let context = crate::parse_context(r.get(10)?);
                    Ok(SearchHit {
                        chunk_id: chunk_id.clone(),
                        score: primary(&scores),
                        scores: scores.clone(),
                        document_id: r.get(0)?,
                        ordinal: r.get(1)?,
                        heading_path: parse_json_list(&r.get::<_, String>(2)?),
                        text: r.get(3)?,
                        start: r.get::<_, i64>(4)? as usize,
                        end: r.get::<_, i64>(5)? as usize,
                        page: r.get(6)?,
                        title: r.get(7)?,
                        source: r.get(8)?,
                        collection: r.get(9)?,
                        context_kind: context.as_ref().map(|c| c.kind),
                        context: context.map(|c| c.text),
                        highlights: Vec::new(),
                    })
                })
                .optional()?;
            out.extend(hit);
        }
        Ok(out)
    }

    /// Runs `f` with the vector key → collection map, built from SQLite on first use.
    fn with_key_collections<R>(&self, f: impl FnOnce(&HashMap<u64, Arc<str>>) -> R) -> Result<R> {
        {
            let guard = self.key_collections.read().unwrap_or_else(|p| p.into_inner());
            if let Some(map) = guard.as_ref() {
                return Ok(f(map));
            }
        }
        // Built under the write lock: a commit that lands after the read
        // snapshot below waits here, then adds its keys to the map.
        let mut guard = self.key_collections.write().unwrap_or_else(|p| p.into_inner());
        if let Some(map) = guard.as_ref() {
            return Ok(f(map));
        }
        let db = self.reader()?;
        let mut q = db.prepare(
            "SELECT e.key, d.collection FROM embeddings e
             JOIN chunks c ON c.id = e.chunk_id JOIN documents d ON d.id = c.document_id",
        )?;
        let mut names: HashMap<String, Arc<str>> = HashMap::new();
        let mut map = HashMap::new();
        let mut rows = q.query([])?;
        while let Some(r) = rows.next()? {
            let name: String = r.get(1)?;
            let shared = names.entry(name.clone()).or_insert_with(|| Arc::from(name.as_str())).clone();
            map.insert(r.get::<_, i64>(0)? as u64, shared);
        }
        drop(rows);
        drop(q);
        drop(db);
        Ok(f(guard.insert(map)))
    }

    /// Builds the sparse index from SQLite if this process has not yet.
    fn ensure_sparse(&self) -> Result<()> {
        if self.sparse.read().unwrap_or_else(|p| p.into_inner()).is_some() {
            return Ok(());
        }
        // Built under the write lock: a commit that lands after the read
        // snapshot below waits here, then adds its keys to the index.
        let mut guard = self.sparse.write().unwrap_or_else(|p| p.into_inner());
        if guard.is_some() {
            return Ok(());
        }
        let mut index = SparseIndex::default();
        let db = self.reader()?;
        let mut q = db.prepare("SELECT key, sparse FROM embeddings WHERE sparse IS NOT NULL")?;
        let mut rows = q.query([])?;
        while let Some(r) = rows.next()? {
            index.add(r.get::<_, i64>(0)? as u64, &decode_sparse(&r.get::<_, Vec<u8>>(1)?));
        }
        *guard = Some(index);
        Ok(())
    }
}
