//! The last step of search: the best fused candidates, reranked by a
//! cross-encoder.
//!
//! Why here: the reranker must read each candidate as it was embedded (the
//! chunk with its contextual header), which the [`Pipeline`] defines; the
//! command line and the service both call [`rerank_hits`] after
//! `Store::search`. A reranker that fails (the service is down, the model
//! errs) never fails the search: the hits keep their fused order and the
//! [`RerankReport`] says why.

use crate::Pipeline;
use datafactory_core::{sigmoid, Reranker};
use datafactory_store::SearchHit;
use serde::Serialize;
use std::time::Instant;

/// What reranking did to one search (part of the search response).
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct RerankReport {
    /// The reranker's model id.
    pub model: String,
    /// Whether the candidates were reranked; false: they are in fused order.
    pub reranked: bool,
    /// Candidates sent to the reranker.
    pub candidates: usize,
    pub took_ms: f64,
    /// Why reranking failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Results to ask the store for: enough for `candidates` to rerank.
pub fn search_depth(top_k: usize, reranking: bool, candidates: usize) -> usize {
    if reranking {
        top_k.max(candidates)
    } else {
        top_k
    }
}

/// Reranks the first `candidates` hits for `query` (best first by the
/// reranker's relevance, `score` and `scores.rerank` set to it), keeps the
/// rest below them in fused order, and cuts the list to `top_k`. On failure
/// the hits keep their order (cut to `top_k`) and the report carries the error.
pub fn rerank_hits(
    reranker: &dyn Reranker,
    pipeline: &Pipeline,
    query: &str,
    hits: &mut Vec<SearchHit>,
    candidates: usize,
    top_k: usize,
) -> RerankReport {
    let started = Instant::now();
    let n = candidates.min(hits.len());
    // The text the embedder read: an LLM's context gets the title and heading
    // path before it, a heuristic one already holds them.
    let texts: Vec<String> = hits[..n]
        .iter()
        .map(|h| {
            pipeline.contextual_text(
                &h.title,
                &h.heading_path,
                h.context.as_deref().map(|c| (c, h.context_kind == Some(datafactory_core::ContextKind::Llm))),
                &h.text,
            )
        })
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let result = if n == 0 { Ok(Vec::new()) } else { reranker.score(query, &refs) };
    let error = match result {
        Ok(scores) if scores.len() == n => {
            let mut head: Vec<(f32, SearchHit)> =
                scores.into_iter().map(sigmoid).zip(hits.drain(..n)).collect();
            // Stable: equal relevance keeps the fused order.
            head.sort_by(|a, b| b.0.total_cmp(&a.0));
            let reranked = head.into_iter().map(|(relevance, mut hit)| {
                hit.score = relevance;
                hit.scores.rerank = Some(relevance);
                hit
            });
            let rest = std::mem::take(hits);
            hits.extend(reranked);
            hits.extend(rest);
            None
        }
        Ok(scores) => Some(format!("the reranker returned {} scores for {n} passages", scores.len())),
        Err(e) => Some(e.to_string()),
    };
    hits.truncate(top_k);
    if let Some(e) = &error {
        tracing::warn!(error = %e, "reranking failed; results in fused order");
    }
    RerankReport {
        model: reranker.model_id().to_string(),
        reranked: error.is_none(),
        candidates: n,
        took_ms: started.elapsed().as_secs_f64() * 1000.0,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafactory_core::{Config, RerankError};
    use datafactory_store::StageScores;

    /// Scores a passage by how often it contains the query's first word
    /// (a real, if simple, implementation of the trait).
    struct CountingReranker;

    impl Reranker for CountingReranker {
        fn model_id(&self) -> &str {
            "counting"
        }
        fn score(&self, query: &str, passages: &[&str]) -> Result<Vec<f32>, RerankError> {
            let word = query.split_whitespace().next().unwrap_or("");
            Ok(passages.iter().map(|p| p.matches(word).count() as f32).collect())
        }
    }

    struct DownReranker;

    impl Reranker for DownReranker {
        fn model_id(&self) -> &str {
            "down"
        }
        fn score(&self, _: &str, _: &[&str]) -> Result<Vec<f32>, RerankError> {
            Err(RerankError::Unavailable("connection refused".into()))
        }
    }

    fn hit(id: &str, title: &str, text: &str, fused: f32) -> SearchHit {
        SearchHit {
            chunk_id: id.into(),
            score: fused,
            scores: StageScores { fused: Some(fused), ..Default::default() },
            document_id: "d".into(),
            collection: "c".into(),
            title: title.into(),
            source: "s".into(),
            heading_path: vec![],
            ordinal: 0,
            start: 0,
            end: text.len(),
            page: None,
            text: text.into(),
            context: None,
            context_kind: None,
            language: None,
            highlights: Vec::new(),
            duplicates: Vec::new(),
            duplicate_count: 0,
        }
    }

    fn hits() -> Vec<SearchHit> {
        vec![
            hit("a", "", "nothing here", 0.9),
            hit("b", "", "cat", 0.8),
            hit("c", "cat cat", "the cat", 0.7), // the title counts: contextual text
            hit("d", "", "cat cat cat cat", 0.6), // beyond the candidates
        ]
    }

    #[test]
    fn candidates_are_reranked_and_the_rest_follow() {
        let pipeline = Pipeline::new(&Config::default());
        let mut h = hits();
        let report = rerank_hits(&CountingReranker, &pipeline, "cat", &mut h, 3, 10);
        assert!(report.reranked && report.error.is_none());
        assert_eq!(report.candidates, 3);
        let order: Vec<&str> = h.iter().map(|h| h.chunk_id.as_str()).collect();
        assert_eq!(order, ["c", "b", "a", "d"]);
        assert_eq!(h[0].scores.rerank, Some(sigmoid(3.0)));
        assert_eq!(h[0].score, sigmoid(3.0));
        assert_eq!(h[3].scores.rerank, None);
        assert_eq!(h[3].score, 0.6);
    }

    #[test]
    fn a_failing_reranker_keeps_the_fused_order() {
        let pipeline = Pipeline::new(&Config::default());
        let mut h = hits();
        let report = rerank_hits(&DownReranker, &pipeline, "cat", &mut h, 50, 2);
        assert!(!report.reranked);
        assert!(report.error.as_deref().unwrap().contains("connection refused"));
        let order: Vec<&str> = h.iter().map(|h| h.chunk_id.as_str()).collect();
        assert_eq!(order, ["a", "b"]);
        assert!(h.iter().all(|h| h.scores.rerank.is_none()));
    }

    #[test]
    fn depth() {
        assert_eq!(search_depth(10, true, 50), 50);
        assert_eq!(search_depth(80, true, 50), 80);
        assert_eq!(search_depth(10, false, 50), 10);
    }
}
