//! Search on PostgreSQL: each retriever (words with `ts_rank_cd`, dense over
//! the HNSW index, sparse by inner product) in one read-only snapshot, fused
//! by the same code as the embedded store (`crate::search::fuse`).
//!
//! Read only.

use super::*;

impl PgStore {
    /// Searches with the retrievers the mode asks for, in one snapshot.
    pub fn search(&self, req: &SearchRequest<'_>) -> Result<SearchResults> {
        let vectors = self.vector_options();
        let Plan { wanted, notes, fuse: fusing, depth } = match plan(req, vectors.is_some()) {
            Ok(p) => p,
            Err(notes) => return Ok(SearchResults { retrievers: Vec::new(), hits: Vec::new(), notes }),
        };
        let mut conn = self.conn()?;
        let mut tx = read_snapshot(&mut conn)?;
        let allowed: Option<Vec<String>> = match req.filter.filter(|f| !f.is_empty()) {
            Some(f) => {
                let ids: Vec<String> = tx
                    .query(
                        "SELECT d.id FROM documents d
                         WHERE ($1::text IS NULL OR d.collection = $1)
                           AND (cardinality($2::text[]) = 0 OR d.id = ANY($2) OR d.external_id = ANY($2))
                           AND NOT EXISTS (SELECT 1 FROM jsonb_each($3::jsonb) f
                                           WHERE d.metadata -> f.key IS DISTINCT FROM f.value)",
                        &[&req.collection, &f.document_ids, &serde_json::Value::Object(f.metadata.clone())],
                    )?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                if ids.is_empty() {
                    return Ok(SearchResults { retrievers: Vec::new(), hits: Vec::new(), notes });
                }
                Some(ids)
            }
            None => None,
        };
        let mut depth = depth;
        let (lists, ranked, hashes) = loop {
            let mut lists: Vec<(Retriever, f32, Ranked)> = Vec::new();
            for &(r, w) in &wanted {
                let list = match r {
                    Retriever::Words => self.words(&mut tx, req, allowed.as_deref(), depth)?,
                    Retriever::Dense => {
                        let options = vectors.as_ref().expect("checked by plan");
                        let query = &req.embedding.expect("checked by plan").dense;
                        if query.len() != options.dimensions {
                            return Err(StoreError::Invalid(format!(
                                "query vector has {} dimensions, the index {}",
                                query.len(),
                                options.dimensions
                            )));
                        }
                        let filtered = req.collection.is_some() || allowed.is_some();
                        if filtered && self.iterative_scan {
                            tx.batch_execute("SET LOCAL hnsw.iterative_scan = strict_order")?;
                        }
                        dense(&mut tx, req, options, query, allowed.as_deref(), depth)?
                    }
                    Retriever::Sparse => {
                        let query = &req.embedding.expect("checked by plan").sparse;
                        sparse(&mut tx, req, query, allowed.as_deref(), depth)?
                    }
                };
                lists.push((r, w, list));
            }
            let ranked = fuse(req, &lists, fusing);
            if !req.collapse {
                break (lists, ranked, HashMap::new());
            }
            let ids: Vec<&str> = ranked.iter().map(|(c, _)| c.as_str()).collect();
            let hashes: HashMap<String, String> = tx
                .query(
                    "SELECT id, text_hash FROM chunks WHERE id = ANY($1) AND text_hash IS NOT NULL",
                    &[&ids],
                )?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            let ranked = collapse(ranked, &hashes);
            if !more_candidates(req, &lists, ranked.len(), &mut depth) {
                break (lists, ranked, hashes);
            }
        };
        let mut ranked = ranked;
        ranked.truncate(req.top_k);
        let mut hits = hydrate(&mut tx, ranked)?;
        if req.collapse {
            name_duplicates(&mut tx, &mut hits, &hashes, req.collection, allowed.as_deref())?;
        }
        tx.commit()?;
        Ok(SearchResults { retrievers: lists.iter().map(|l| l.0.name()).collect(), hits, notes })
    }

    /// ts_rank_cd over title (A), heading path (B) and body (D), the query
    /// parsed in each text search configuration in use.
    pub(crate) fn words(
        &self,
        tx: &mut Transaction<'_>,
        req: &SearchRequest<'_>,
        allowed: Option<&[String]>,
        depth: usize,
    ) -> Result<Ranked> {
        let Some(query) = word_query(req.text, req.title_boost, req.heading_boost) else {
            return Ok(Vec::new());
        };
        if depth == 0 {
            return Ok(Vec::new());
        }
        // ts_rank_cd's weights are {D, C, B, A}, each at most 1: the boosts
        // relative to the body's weight of 1.
        let top = 1f32.max(req.title_boost).max(req.heading_boost);
        let weights: Vec<f32> =
            vec![1.0 / top, 1.0 / top, req.heading_boost.max(0.0) / top, req.title_boost.max(0.0) / top];
        // One query per configuration in use (a handful): with the tsquery a
        // constant, the planner can use the GIN index.
        let configs: Vec<String> =
            tx.query("SELECT name FROM text_searches ORDER BY name", &[])?.iter().map(|r| r.get(0)).collect();
        let mut out: Ranked = Vec::new();
        for config in &configs {
            let rows = tx.query(
                "SELECT c.id, ts_rank_cd($2::float4[], c.words, to_tsquery($6::text::regconfig, $1)) AS score
                 FROM chunks c
                 WHERE c.text_search = $6::text AND c.words @@ to_tsquery($6::text::regconfig, $1)
                   AND ($3::text IS NULL
                        OR EXISTS (SELECT 1 FROM documents d WHERE d.id = c.document_id AND d.collection = $3))
                   AND ($4::text[] IS NULL OR c.document_id = ANY($4))
                 ORDER BY score DESC, c.id LIMIT $5",
                &[&query, &weights, &req.collection, &allowed, &(depth as i64), config],
            )?;
            out.extend(rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, f32>(1))));
        }
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        out.truncate(depth);
        Ok(out)
    }
}

/// A read-only transaction that sees one snapshot for all its statements.
pub(crate) fn read_snapshot<'a>(conn: &'a mut Conn<'_>) -> Result<Transaction<'a>> {
    Ok(conn.build_transaction().isolation_level(IsolationLevel::RepeatableRead).read_only(true).start()?)
}

pub(crate) fn sparse_vector(weights: &[(u32, f32)]) -> SparseVector {
    let map: HashMap<i32, f32> = weights.iter().map(|&(k, v)| (k as i32, v)).collect();
    SparseVector::from_map(&map, SPARSE_DIMENSIONS)
}

/// Nearest chunks by cosine similarity over the HNSW index. A filter (a
/// collection, allowed documents) runs inside the index scan; with pgvector
/// 0.8's iterative scan (set by the caller) it still yields `depth` candidates.
pub(crate) fn dense(
    tx: &mut Transaction<'_>,
    req: &SearchRequest<'_>,
    options: &VectorOptions,
    query: &[f32],
    allowed: Option<&[String]>,
    depth: usize,
) -> Result<Ranked> {
    if depth == 0 {
        return Ok(Vec::new());
    }
    let q = HalfVector::from_f32_slice(query);
    // Windows of one chunk are rows of their own: ask for more rows while
    // they leave fewer than `depth` chunks and there may be more.
    let mut count = depth;
    loop {
        let ef = options.expansion_search.max(count).min(1000);
        tx.batch_execute(&format!("SET LOCAL hnsw.ef_search = {ef}"))?;
        let rows = if req.collection.is_none() && allowed.is_none() {
            tx.query(
                "SELECT chunk_id, 1 - (dense <=> $1) FROM embeddings ORDER BY dense <=> $1 LIMIT $2",
                &[&q, &(count as i64)],
            )?
        } else {
            tx.query(
                "SELECT e.chunk_id, 1 - (e.dense <=> $1) FROM embeddings e
                 JOIN chunks c ON c.id = e.chunk_id JOIN documents d ON d.id = c.document_id
                 WHERE ($3::text IS NULL OR d.collection = $3) AND ($4::text[] IS NULL OR c.document_id = ANY($4))
                 ORDER BY e.dense <=> $1 LIMIT $2",
                &[&q, &(count as i64), &req.collection, &allowed],
            )?
        };
        let found = rows.len();
        let mut ranked = best_per_chunk(rows.iter().map(|r| (r.get(0), r.get::<_, f64>(1) as f32)).collect());
        if ranked.len() >= depth || found < count {
            ranked.truncate(depth);
            return Ok(ranked);
        }
        count = count.saturating_mul(2);
    }
}

/// The chunks with the largest inner product of sparse weights (exact).
pub(crate) fn sparse(
    tx: &mut Transaction<'_>,
    req: &SearchRequest<'_>,
    query: &[(u32, f32)],
    allowed: Option<&[String]>,
    depth: usize,
) -> Result<Ranked> {
    if depth == 0 {
        return Ok(Vec::new());
    }
    let q = sparse_vector(query);
    let rows = tx.query(
        "SELECT e.chunk_id, max(-(e.sparse <#> $1)) AS score FROM embeddings e
         JOIN chunks c ON c.id = e.chunk_id JOIN documents d ON d.id = c.document_id
         WHERE e.sparse IS NOT NULL AND ($3::text IS NULL OR d.collection = $3)
           AND ($4::text[] IS NULL OR c.document_id = ANY($4))
         GROUP BY e.chunk_id ORDER BY score DESC, e.chunk_id LIMIT $2",
        &[&q, &(depth as i64), &req.collection, &allowed],
    )?;
    // Chunks sharing no token with the query score 0: not a match.
    Ok(rows
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, f64>(1) as f32))
        .filter(|(_, s)| *s > 0.0)
        .collect())
}

/// Fills each hit's `duplicates`: the other chunks with its passage, in
/// the search's scope, in the same snapshot.
pub(crate) fn name_duplicates(
    tx: &mut Transaction<'_>,
    hits: &mut [SearchHit],
    hashes: &HashMap<String, String>,
    collection: Option<&str>,
    allowed: Option<&[String]>,
) -> Result<()> {
    for hit in hits {
        let Some(hash) = hashes.get(&hit.chunk_id) else { continue };
        let rows = tx.query(
            "SELECT c.id, c.document_id, d.title, d.source, c.char_start, c.char_end
             FROM chunks c JOIN documents d ON d.id = c.document_id
             WHERE c.text_hash = $1 AND c.id <> $2 AND ($3::text IS NULL OR d.collection = $3)
               AND ($4::text[] IS NULL OR c.document_id = ANY($4))
             ORDER BY d.source, c.document_id, c.ordinal",
            &[hash, &hit.chunk_id, &collection, &allowed],
        )?;
        let found = rows
            .iter()
            .map(|r| Duplicate {
                chunk_id: r.get(0),
                document_id: r.get(1),
                title: r.get(2),
                source: r.get(3),
                start: r.get::<_, i64>(4) as usize,
                end: r.get::<_, i64>(5) as usize,
            })
            .collect();
        set_duplicates(hit, found);
    }
    Ok(())
}

/// Reads the ranked chunks in the same snapshot; chunks gone are dropped.
pub(crate) fn hydrate(
    tx: &mut Transaction<'_>,
    ranked: Vec<(String, StageScores)>,
) -> Result<Vec<SearchHit>> {
    let ids: Vec<&str> = ranked.iter().map(|(id, _)| id.as_str()).collect();
    let rows = tx.query(
        "SELECT c.id, c.document_id, c.ordinal, c.heading_path, c.text, c.char_start, c.char_end, c.page,
                d.title, d.source, d.collection, c.context, d.metadata->'analysis'->'language'->>'code'
         FROM chunks c JOIN documents d ON d.id = c.document_id WHERE c.id = ANY($1)",
        &[&ids],
    )?;
    let mut by_id: HashMap<String, Row> = rows.into_iter().map(|r| (r.get::<_, String>(0), r)).collect();
    let mut out = Vec::with_capacity(ranked.len());
    for (chunk_id, scores) in ranked {
        let Some(r) = by_id.remove(&chunk_id) else { continue };
        let context: Option<datafactory_core::ChunkContext> =
            r.get::<_, Option<serde_json::Value>>(11).and_then(|v| serde_json::from_value(v).ok());
        out.push(SearchHit {
            chunk_id,
            score: primary(&scores),
            scores,
            document_id: r.get(1),
            ordinal: r.get::<_, i32>(2) as u32,
            heading_path: json_list(r.get(3)),
            text: r.get(4),
            start: r.get::<_, i64>(5) as usize,
            end: r.get::<_, i64>(6) as usize,
            page: r.get::<_, Option<i32>>(7).map(|p| p as u32),
            title: r.get(8),
            source: r.get(9),
            collection: r.get(10),
            context_kind: context.as_ref().map(|c| c.kind),
            context: context.map(|c| c.text),
            language: r.get(12),
            highlights: Vec::new(),
            duplicates: Vec::new(),
            duplicate_count: 0,
        });
    }
    Ok(out)
}
