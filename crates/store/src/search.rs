//! Retrieval: words (BM25), dense (HNSW) and sparse (lexical weights), each
//! giving ranked candidates, fused (weighted reciprocal rank, or a weighted
//! sum of normalised scores: `search.fusion`), then read back from SQLite.

use crate::sparse::SparseIndex;
use crate::vectors::decode_sparse;
use crate::{
    parse_json_list, Duplicate, EmbeddedStore, Result, SearchFilter, SearchHit, SearchMode, SearchRequest,
    SearchResults, StageScores,
};
use datafactory_core::config::FusionMethod;
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

/// Fuses the retrievers' lists (each best first) as `req.fusion` says:
/// every chunk's stage scores and, when fusing, the fused score; the best
/// `top_k` by the primary score, ties by chunk id (all of them when the
/// search collapses duplicates: the caller cuts after collapsing). One
/// definition for both backends.
///
/// - `rrf`: Σ weight / (rrf_k + rank).
/// - `minmax`, `zscore`, `dbsf`: Σ weight × the retriever's score normalised
///   over its own candidate list (see [`FusionMethod`]); a chunk a retriever
///   did not return gets that list's floor (0, or its lowest standard score).
pub(crate) fn fuse(
    req: &SearchRequest<'_>,
    lists: &[(Retriever, f32, Ranked)],
    fuse: bool,
) -> Vec<(String, StageScores)> {
    let mut scored: HashMap<String, StageScores> = HashMap::new();
    for (r, _, list) in lists {
        for (rank, (chunk, score)) in list.iter().enumerate() {
            let s = scored.entry(chunk.clone()).or_default();
            let place = Some(rank as u32 + 1);
            match r {
                Retriever::Words => (s.words, s.ranks.words) = (Some(*score), place),
                Retriever::Dense => (s.dense, s.ranks.dense) = (Some(*score), place),
                Retriever::Sparse => (s.sparse, s.ranks.sparse) = (Some(*score), place),
            }
        }
    }
    if fuse {
        let words_top: HashSet<&str> = lists
            .iter()
            .find(|(r, _, _)| *r == Retriever::Words)
            .map(|(_, _, l)| l.iter().take(AGREEMENT_DEPTH).map(|(c, _)| c.as_str()).collect())
            .unwrap_or_default();
        for (r, w, list) in lists {
            let w =
                if req.agreement && *r != Retriever::Words { w * agreement(&words_top, list) } else { *w };
            let norm = Normaliser::new(req.fusion, req.rrf_k, list);
            let mut seen: HashSet<&str> = HashSet::with_capacity(list.len());
            for (rank, (chunk, score)) in list.iter().enumerate() {
                seen.insert(chunk.as_str());
                let s = scored.get_mut(chunk).expect("inserted above");
                *s.fused.get_or_insert(0.0) += w * norm.score(rank, *score);
            }
            // The chunks this retriever did not return get its floor.
            let floor = w * norm.floor();
            for (chunk, s) in scored.iter_mut() {
                if !seen.contains(chunk.as_str()) {
                    *s.fused.get_or_insert(0.0) += floor;
                }
            }
        }
    }
    let mut ranked: Vec<(String, StageScores)> = scored.into_iter().collect();
    ranked.sort_by(|a, b| primary(&b.1).total_cmp(&primary(&a.1)).then_with(|| a.0.cmp(&b.0)));
    if !req.collapse {
        ranked.truncate(req.top_k);
    }
    ranked
}

/// How many of each list's first results `search.agreement` compares.
const AGREEMENT_DEPTH: usize = 10;

/// The share of a list's first [`AGREEMENT_DEPTH`] results that are among
/// the words' first: 0 (none, or words found nothing) to 1.
fn agreement(words_top: &HashSet<&str>, list: &Ranked) -> f32 {
    let top: Vec<&str> = list.iter().take(AGREEMENT_DEPTH).map(|(c, _)| c.as_str()).collect();
    if top.is_empty() {
        return 0.0;
    }
    top.iter().filter(|c| words_top.contains(*c)).count() as f32 / top.len() as f32
}

/// One retriever's list turned into fusion scores.
struct Normaliser {
    method: FusionMethod,
    rrf_k: f32,
    /// minmax: (min, max); zscore: (mean, deviation); dbsf: (mean - 3σ, 6σ).
    a: f32,
    b: f32,
    /// zscore: the list's lowest standard score (the floor).
    low: f32,
}

impl Normaliser {
    fn new(method: FusionMethod, rrf_k: f32, list: &Ranked) -> Normaliser {
        let n = list.len().max(1) as f64;
        let mean = list.iter().map(|(_, s)| *s as f64).sum::<f64>() / n;
        let var = list.iter().map(|(_, s)| (*s as f64 - mean).powi(2)).sum::<f64>() / n;
        let sd = var.sqrt() as f32;
        let mean = mean as f32;
        let (a, b) = match method {
            FusionMethod::Rrf => (0.0, 0.0),
            FusionMethod::MinMax => {
                let min = list.iter().map(|(_, s)| *s).fold(f32::INFINITY, f32::min);
                let max = list.iter().map(|(_, s)| *s).fold(f32::NEG_INFINITY, f32::max);
                (min, max)
            }
            FusionMethod::ZScore => (mean, sd),
            FusionMethod::Dbsf => (mean - 3.0 * sd, 6.0 * sd),
        };
        let mut norm = Normaliser { method, rrf_k, a, b, low: 0.0 };
        if method == FusionMethod::ZScore {
            norm.low = list.iter().map(|(_, s)| norm.score(0, *s)).fold(0.0, f32::min);
        }
        norm
    }

    /// The fusion score of the candidate at `rank` (0-based) with `score`.
    fn score(&self, rank: usize, score: f32) -> f32 {
        match self.method {
            FusionMethod::Rrf => 1.0 / (self.rrf_k + rank as f32 + 1.0),
            // One candidate, or all equal: each counts fully.
            FusionMethod::MinMax if self.b - self.a <= f32::EPSILON => 1.0,
            FusionMethod::MinMax => (score - self.a) / (self.b - self.a),
            FusionMethod::ZScore if self.b <= f32::EPSILON => 0.0,
            FusionMethod::ZScore => (score - self.a) / self.b,
            FusionMethod::Dbsf if self.b <= f32::EPSILON => 1.0,
            FusionMethod::Dbsf => ((score - self.a) / self.b).clamp(0.0, 1.0),
        }
    }

    /// The fusion score of a chunk the retriever did not return.
    fn floor(&self) -> f32 {
        match self.method {
            FusionMethod::ZScore => self.low,
            _ => 0.0,
        }
    }
}

/// The most other chunks a hit lists in `duplicates`.
pub(crate) const MAX_DUPLICATES_LISTED: usize = 100;

/// How much deeper than the plan's depth a collapsing search goes, at most.
const MAX_DEPTH_FACTOR: usize = 16;

/// Keeps the best-ranked chunk of each passage (chunks with the same text
/// hash; a chunk without one is its own), in rank order.
pub(crate) fn collapse(
    ranked: Vec<(String, StageScores)>,
    hashes: &HashMap<String, String>,
) -> Vec<(String, StageScores)> {
    let mut seen: HashSet<&str> = HashSet::new();
    ranked.into_iter().filter(|(c, _)| hashes.get(c).is_none_or(|h| seen.insert(h.as_str()))).collect()
}

/// Whether a collapsed search must take more candidates: fewer than `top_k`
/// distinct passages, a retriever that may have more (it filled its depth),
/// and room to go deeper. Doubles `depth` when so.
pub(crate) fn more_candidates(
    req: &SearchRequest<'_>,
    lists: &[(Retriever, f32, Ranked)],
    passages: usize,
    depth: &mut usize,
) -> bool {
    let first = req.candidates.max(req.top_k).max(1);
    let more = passages < req.top_k
        && lists.iter().any(|(_, _, l)| l.len() >= *depth)
        && *depth < first.saturating_mul(MAX_DEPTH_FACTOR);
    if more {
        *depth = depth.saturating_mul(2);
    }
    more
}

/// Each chunk once, at its first (best) place: a chunk's windows are its
/// vectors, and it scores as its best window.
pub(crate) fn best_per_chunk(hits: Ranked) -> Ranked {
    let mut seen: HashSet<String> = HashSet::with_capacity(hits.len());
    hits.into_iter().filter(|(c, _)| seen.insert(c.clone())).collect()
}

/// Sets a hit's duplicates (all found, the first `MAX_DUPLICATES_LISTED` listed).
pub(crate) fn set_duplicates(hit: &mut SearchHit, mut found: Vec<Duplicate>) {
    hit.duplicate_count = found.len() as u32;
    found.truncate(MAX_DUPLICATES_LISTED);
    hit.duplicates = found;
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

        let mut depth = depth;
        let (lists, ranked, hashes) = loop {
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
                        self.best_windows(depth, v.len(), |count| match (&allowed, req.collection) {
                            (Some((_, keys)), _) => v.search(query, count, Some(&|k: u64| keys.contains(&k))),
                            (None, Some(c)) => self.with_key_collections(|map| {
                                let keep = |k: u64| map.get(&k).is_some_and(|x| &**x == c);
                                v.search(query, count, Some(&keep))
                            })?,
                            (None, None) => v.search(query, count, None),
                        })?
                    }
                    Retriever::Sparse => {
                        let query = &req.embedding.expect("checked above").sparse;
                        self.ensure_sparse()?;
                        self.best_windows(depth, usize::MAX, |count| {
                            let sparse = self.sparse.read().unwrap_or_else(|p| p.into_inner());
                            let index = sparse.as_ref().expect("built above");
                            Ok(match (&allowed, req.collection) {
                                (Some((_, keys)), _) => {
                                    index.search(query, count, Some(&|k: u64| keys.contains(&k)))
                                }
                                (None, Some(c)) => self.with_key_collections(|map| {
                                    let keep = |k: u64| map.get(&k).is_some_and(|x| &**x == c);
                                    index.search(query, count, Some(&keep))
                                })?,
                                (None, None) => index.search(query, count, None),
                            })
                        })?
                    }
                };
                lists.push((r, w, list));
            }
            let ranked = fuse(req, &lists, fusing);
            if !req.collapse {
                break (lists, ranked, HashMap::new());
            }
            let hashes = self.text_hashes(ranked.iter().map(|(c, _)| c.as_str()))?;
            let ranked = collapse(ranked, &hashes);
            if !more_candidates(req, &lists, ranked.len(), &mut depth) {
                break (lists, ranked, hashes);
            }
        };
        let mut ranked = ranked;
        ranked.truncate(req.top_k);
        let mut hits = self.hydrate(ranked, primary)?;
        if req.collapse {
            self.name_duplicates(&mut hits, &hashes, req.collection, allowed.as_ref().map(|a| &a.0))?;
        }
        Ok(SearchResults { retrievers: lists.iter().map(|l| l.0.name()).collect(), hits, notes })
    }

    /// A retriever's vector hits as chunks, each at its best window: asks
    /// `search` for `depth` vectors, then for more while windows of the same
    /// chunks leave fewer than `depth` chunks and there are more (`size`: the
    /// vectors there are, at most).
    fn best_windows(
        &self,
        depth: usize,
        size: usize,
        mut search: impl FnMut(usize) -> Result<Vec<(u64, f32)>>,
    ) -> Result<Ranked> {
        let mut count = depth;
        loop {
            let hits = search(count)?;
            let found = hits.len();
            let mut ranked = best_per_chunk(self.chunk_ids_of(hits)?);
            if ranked.len() >= depth || found < count || count >= size {
                ranked.truncate(depth);
                return Ok(ranked);
            }
            count = count.saturating_mul(2);
        }
    }

    /// The text hashes of these chunks (chunks stored without one are left out).
    fn text_hashes<'a>(&self, chunks: impl Iterator<Item = &'a str>) -> Result<HashMap<String, String>> {
        let db = self.reader()?;
        let mut q = db.prepare_cached("SELECT text_hash FROM chunks WHERE id = ?1")?;
        let mut out = HashMap::new();
        for c in chunks {
            if let Some(Some(h)) = q.query_row([c], |r| r.get::<_, Option<String>>(0)).optional()? {
                out.insert(c.to_string(), h);
            }
        }
        Ok(out)
    }

    /// Fills each hit's `duplicates`: the other chunks with its passage, in
    /// the search's scope.
    fn name_duplicates(
        &self,
        hits: &mut [SearchHit],
        hashes: &HashMap<String, String>,
        collection: Option<&str>,
        allowed: Option<&HashSet<String>>,
    ) -> Result<()> {
        let db = self.reader()?;
        let mut q = db.prepare_cached(
            "SELECT c.id, c.document_id, d.title, d.source, c.char_start, c.char_end
             FROM chunks c JOIN documents d ON d.id = c.document_id
             WHERE c.text_hash = ?1 AND (?2 IS NULL OR d.collection = ?2)
             ORDER BY d.source, c.document_id, c.ordinal",
        )?;
        for hit in hits {
            let Some(hash) = hashes.get(&hit.chunk_id) else { continue };
            let rows = q.query_map(rusqlite::params![hash, collection], |r| {
                Ok(Duplicate {
                    chunk_id: r.get(0)?,
                    document_id: r.get(1)?,
                    title: r.get(2)?,
                    source: r.get(3)?,
                    start: r.get::<_, i64>(4)? as usize,
                    end: r.get::<_, i64>(5)? as usize,
                })
            })?;
            let mut found = Vec::new();
            for d in rows {
                let d = d?;
                if d.chunk_id != hit.chunk_id && allowed.is_none_or(|a| a.contains(&d.document_id)) {
                    found.push(d);
                }
            }
            set_duplicates(hit, found);
        }
        Ok(())
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
                    d.title, d.source, d.collection, c.context,
                    json_extract(d.metadata, '$.analysis.language.code')
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
                        language: r.get(11)?,
                        highlights: Vec::new(),
                        duplicates: Vec::new(),
                        duplicate_count: 0,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn req(fusion: FusionMethod) -> SearchRequest<'static> {
        SearchRequest {
            fusion,
            top_k: 10,
            ..SearchRequest::new("q", SearchMode::Hybrid, 10, &Default::default())
        }
    }

    fn list(items: &[(&str, f32)]) -> Ranked {
        items.iter().map(|(c, s)| (c.to_string(), *s)).collect()
    }

    fn fused(fusion: FusionMethod, weights: (f32, f32)) -> Vec<(String, f32)> {
        let lists = [
            // Words: one clear winner (a), then a flat tail.
            (Retriever::Words, weights.0, list(&[("a", 12.0), ("b", 3.0), ("c", 2.9), ("d", 2.8)])),
            // Dense: flat scores, b barely first.
            (Retriever::Dense, weights.1, list(&[("b", 0.52), ("c", 0.51), ("e", 0.50), ("a", 0.49)])),
        ];
        fuse(&req(fusion), &lists, true).into_iter().map(|(c, s)| (c, s.fused.unwrap())).collect()
    }

    fn order(v: &[(String, f32)]) -> Vec<&str> {
        v.iter().map(|(c, _)| c.as_str()).collect()
    }

    #[test]
    fn rrf_ranks_by_weighted_reciprocal_rank() {
        let v = fused(FusionMethod::Rrf, (0.2, 0.8));
        // b: 0.2/62 + 0.8/61; a: 0.2/61 + 0.8/64.
        assert_eq!(order(&v)[..2], ["b", "c"]);
        let b = v.iter().find(|(c, _)| c == "b").unwrap().1;
        assert!((b - (0.2 / 62.0 + 0.8 / 61.0)).abs() < 1e-6, "{b}");
        // Ranks only: the words' clear winner counts no more than a close first.
        let a = v.iter().find(|(c, _)| c == "a").unwrap().1;
        assert!((a - (0.2 / 61.0 + 0.8 / 64.0)).abs() < 1e-6, "{a}");
    }

    #[test]
    fn minmax_scales_each_list_to_its_range() {
        let v = fused(FusionMethod::MinMax, (0.5, 0.5));
        let score = |id: &str| v.iter().find(|(c, _)| c == id).unwrap().1;
        // a: words 1, dense 0; b: words (3-2.8)/9.2, dense 1; e: dense 1/3, words missing (0).
        assert!((score("a") - 0.5).abs() < 1e-6);
        assert!((score("b") - 0.5 * (0.2 / 9.2 + 1.0)).abs() < 1e-5);
        assert!((score("e") - 0.5 * (0.01 / 0.03)).abs() < 1e-4);
        assert_eq!(order(&v)[0], "b");
    }

    #[test]
    fn zscore_sums_standard_scores_and_floors_the_missing() {
        let v = fused(FusionMethod::ZScore, (0.5, 0.5));
        let score = |id: &str| v.iter().find(|(c, _)| c == id).unwrap().1;
        let z = |xs: &[f32], x: f32| {
            let mean = xs.iter().sum::<f32>() / xs.len() as f32;
            let sd = (xs.iter().map(|s| (s - mean).powi(2)).sum::<f32>() / xs.len() as f32).sqrt();
            (x - mean) / sd
        };
        let words = [12.0, 3.0, 2.9, 2.8];
        let dense = [0.52, 0.51, 0.50, 0.49];
        // a: found by both.
        let a = 0.5 * z(&words, 12.0) + 0.5 * z(&dense, 0.49);
        assert!((score("a") - a).abs() < 1e-4, "{} vs {a}", score("a"));
        // e: missed by words, so it gets words' lowest standard score (d's).
        let e = 0.5 * z(&words, 2.8) + 0.5 * z(&dense, 0.50);
        assert!((score("e") - e).abs() < 1e-4, "{} vs {e}", score("e"));
        // d: missed by dense, so it gets dense's lowest (a's).
        let d = 0.5 * z(&words, 2.8) + 0.5 * z(&dense, 0.49);
        assert!((score("d") - d).abs() < 1e-4, "{} vs {d}", score("d"));
        // Standard scores ignore each list's scale: dense's spread of 0.03
        // weighs as much as words' spread of 9.2, so b (dense's first) wins.
        assert_eq!(order(&v)[0], "b");
    }

    #[test]
    fn dbsf_clamps_to_three_deviations() {
        let v = fused(FusionMethod::Dbsf, (1.0, 0.0));
        let score = |id: &str| v.iter().find(|(c, _)| c == id).unwrap().1;
        let words: Vec<f32> = vec![12.0, 3.0, 2.9, 2.8];
        let mean = words.iter().sum::<f32>() / 4.0;
        let sd = (words.iter().map(|s| (s - mean).powi(2)).sum::<f32>() / 4.0).sqrt();
        assert!((score("a") - (12.0 - (mean - 3.0 * sd)) / (6.0 * sd)).abs() < 1e-5);
        assert!(score("a") <= 1.0 && score("d") >= 0.0);
        assert_eq!(score("e"), 0.0);
    }

    #[test]
    fn a_single_or_constant_list_does_not_divide_by_zero() {
        for m in [FusionMethod::Rrf, FusionMethod::MinMax, FusionMethod::ZScore, FusionMethod::Dbsf] {
            let lists = [
                (Retriever::Words, 0.5, list(&[("a", 1.0)])),
                (Retriever::Dense, 0.5, list(&[("b", 0.3), ("c", 0.3)])),
            ];
            let out = fuse(&req(m), &lists, true);
            assert_eq!(out.len(), 3);
            assert!(out.iter().all(|(_, s)| s.fused.is_some_and(f32::is_finite)), "{m:?}: {out:?}");
        }
    }
}
