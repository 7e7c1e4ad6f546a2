//! `GET`/`POST /search`: query parsing, the store's retrievers, fusion and the
//! optional rerank, on a blocking thread (or inline for a short words-only
//! search with no metadata filter on the embedded store). Queries have at
//! most `server.max_query_terms` terms.
//!
//! Read only.

use super::*;

/// A search (`POST /search`).
#[derive(Deserialize, ToSchema)]
pub(crate) struct SearchBody {
    #[serde(alias = "q")]
    pub(crate) query: String,
    /// Results (default `search.top_k`; 1 to 1000).
    pub(crate) top_k: Option<usize>,
    /// Only this collection.
    pub(crate) collection: Option<String>,
    /// `hybrid`, `lexical`, `dense` or `sparse` (default `search.mode`).
    #[schema(value_type = Option<SearchModeName>)]
    pub(crate) mode: Option<String>,
    /// Only these documents, only documents with this metadata.
    #[serde(default)]
    pub(crate) filter: Option<SearchFilter>,
    /// Rerank this search (default: whether `rerank.mode` is not `off`).
    pub(crate) rerank: Option<bool>,
}

/// A search (`GET /search?q=`).
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct SearchQuery {
    /// The query.
    pub(crate) q: String,
    /// Results (default `search.top_k`; 1 to 1000).
    pub(crate) top_k: Option<usize>,
    /// Only this collection.
    pub(crate) collection: Option<String>,
    /// `hybrid`, `lexical`, `dense` or `sparse` (default `search.mode`).
    #[param(value_type = Option<SearchModeName>)]
    pub(crate) mode: Option<String>,
    /// Comma-separated document ids: only these documents.
    pub(crate) document_ids: Option<String>,
    /// Rerank this search (default: whether `rerank.mode` is not `off`).
    pub(crate) rerank: Option<bool>,
}

/// The search modes, by name.
#[derive(ToSchema)]
#[allow(dead_code)] // names the strings `mode` accepts
#[schema(rename_all = "lowercase")]
pub(crate) enum SearchModeName {
    Hybrid,
    Lexical,
    Dense,
    Sparse,
}

/// Search results: the same shape as `datafactory search --json`.
#[derive(Serialize, ToSchema)]
pub(crate) struct SearchResponse {
    pub(crate) query: String,
    pub(crate) mode: String,
    /// The retrievers that ran, e.g. `["words", "dense"]`.
    pub(crate) retrievers: Vec<&'static str>,
    /// What reranking did, when this search was reranked.
    pub(crate) rerank: Option<datafactory_ingest::RerankReport>,
    /// Why a requested stage did not run, if one did not.
    pub(crate) notes: Vec<String>,
    pub(crate) took_ms: f64,
    pub(crate) results: Vec<datafactory_store::SearchHit>,
}

/// Search by words, meaning or both, fused, optionally reranked.
#[utoipa::path(get, path = "/search", tag = "search", params(SearchQuery),
    responses(
        (status = 200, description = "Results, best first", body = SearchResponse),
        (status = 400, description = "Bad request (e.g. more terms than `server.max_query_terms`)", body = ErrorBody)))]
pub(crate) async fn search_get(
    State(state): State<Shared>,
    Query(q): Query<SearchQuery>,
) -> Result<Json<SearchResponse>, ApiError> {
    let mut filter = SearchFilter::default();
    if let Some(ids) = &q.document_ids {
        filter.document_ids.extend(ids.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from));
    }
    let body = SearchBody {
        query: q.q,
        top_k: q.top_k,
        collection: q.collection,
        mode: q.mode,
        filter: Some(filter),
        rerank: q.rerank,
    };
    search(state, body).await
}

/// Search, with filters on document ids and metadata.
#[utoipa::path(post, path = "/search", tag = "search", request_body = SearchBody,
    responses(
        (status = 200, description = "Results, best first", body = SearchResponse),
        (status = 400, description = "Bad request (e.g. more terms than `server.max_query_terms`)", body = ErrorBody)))]
pub(crate) async fn search_post(
    State(state): State<Shared>,
    Json(q): Json<SearchBody>,
) -> Result<Json<SearchResponse>, ApiError> {
    search(state, q).await
}

/// `GET|POST /search`: the same result shape as `datafactory search --json`.
pub(crate) async fn search(state: Shared, q: SearchBody) -> Result<Json<SearchResponse>, ApiError> {
    if q.query.trim().is_empty() {
        return Err(bad_request("`query` is empty"));
    }
    let mode_name = q.mode.clone().unwrap_or_else(|| state.config.search.mode.clone());
    let mode = SearchMode::parse_name(&mode_name).ok_or_else(|| {
        bad_request(format!("unknown mode {mode_name:?}: use hybrid, lexical, dense or sparse"))
    })?;
    let top_k = q.top_k.unwrap_or(state.config.search.top_k).clamp(1, 1000);
    let filter = q.filter.clone().unwrap_or_default();
    let terms = query_terms(&q.query);
    let max_terms = state.config.server.max_query_terms;
    if terms > max_terms {
        return Err(bad_request(format!(
            "the query has {terms} terms, over the limit of {max_terms} (server.max_query_terms)"
        )));
    }
    // A short search by words alone on the embedded store, with no metadata
    // filter and few document ids, takes a fraction of a millisecond: it runs
    // on the request's own thread, without the hop to a blocking thread and
    // back (1.2-1.4x the requests/s, docs/BENCHMARKS.md). Anything that may
    // take longer (many terms, a filter that reads every document's metadata
    // or compares every document with a long list of ids, a model, the
    // reranker, PostgreSQL) runs on a blocking thread: it never holds an
    // async worker, and the request's time limit answers 408 on time. The
    // store has no cancel check: a search cut off by the time limit runs to
    // its end on its blocking thread, and its answer is dropped.
    let inline = mode == SearchMode::Lexical
        && terms <= INLINE_MAX_TERMS
        && filter.metadata.is_empty()
        && filter.document_ids.len() <= INLINE_MAX_TERMS
        && (q.rerank == Some(false) || state.reranker.is_none())
        && state.store.backend() == "embedded";
    let result = if inline {
        run_search(&state, q, mode, mode_name, top_k, filter)
    } else {
        let s = state.clone();
        tokio::task::spawn_blocking(move || run_search(&s, q, mode, mode_name, top_k, filter))
            .await
            .map_err(internal)?
    }
    .map_err(internal)?;
    Ok(Json(result))
}

/// Terms of a query (and document ids of its filter) at most for it to run
/// inline (see [`search`]).
const INLINE_MAX_TERMS: usize = 32;

/// The words of a query as the word index splits them: runs of letters and digits.
pub(crate) fn query_terms(query: &str) -> usize {
    query.split(|c: char| !c.is_alphanumeric()).filter(|t| !t.is_empty()).count()
}

/// One search through the store, the query embedding and the reranker.
pub(crate) fn run_search(
    s: &AppState,
    q: SearchBody,
    mode: SearchMode,
    mode_name: String,
    top_k: usize,
    filter: SearchFilter,
) -> Result<SearchResponse, String> {
    let started = Instant::now();
    let mut notes = Vec::new();
    let embedding: Option<Embedding> = match (mode, s.pipeline.embedder()) {
        (SearchMode::Lexical, _) => None,
        (_, None) => {
            if s.store.vector_options().is_some() {
                notes.push(s.embedding_note.clone().unwrap_or_else(|| "no embedding model loaded".into()));
            }
            None
        }
        (_, Some(e)) => datafactory_ingest::query_embedding(&s.store, Some(e.as_ref()), &q.query, &mut notes)
            .map_err(|e| e.to_string())?,
    };
    let candidates = s.config.rerank.candidates;
    let reranker = match q.rerank {
        Some(false) => None,
        Some(true) if s.reranker.is_none() => {
            notes.push("reranking asked for, but rerank.mode is off: results in fused order".into());
            None
        }
        _ => s.reranker.as_ref(),
    };
    let depth = datafactory_ingest::search_depth(top_k, reranker.is_some(), candidates);
    let mut results = s
        .store
        .search(&SearchRequest {
            embedding: embedding.as_ref(),
            collection: q.collection.as_deref(),
            filter: (!filter.is_empty()).then_some(&filter),
            ..SearchRequest::new(&q.query, mode, depth, &s.config.search)
        })
        .map_err(|e| e.to_string())?;
    notes.append(&mut results.notes);
    if mode != SearchMode::Lexical && !results.retrievers.contains(&"dense") {
        s.metrics.searches_words_only.inc();
    }
    let rerank = reranker.map(|r| {
        let report = datafactory_ingest::rerank_hits(
            r.as_ref(),
            &s.pipeline,
            &q.query,
            &mut results.hits,
            candidates,
            top_k,
        );
        if report.reranked {
            s.metrics.searches_reranked.inc();
        } else {
            s.metrics.rerank_failures.inc();
            notes.push(format!(
                "reranking failed, results in fused order: {}",
                report.error.as_deref().unwrap_or("unknown error")
            ));
        }
        report
    });
    Ok(SearchResponse {
        query: q.query,
        mode: mode_name,
        retrievers: results.retrievers,
        rerank,
        notes,
        took_ms: started.elapsed().as_secs_f64() * 1000.0,
        results: results.hits,
    })
}
