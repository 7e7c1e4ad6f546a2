//! [`RemoteReranker`]: reranking on workers that serve TEI's `POST /rerank`.

use crate::pool::{call_error, CallError, Pool, PoolSettings};
use datafactory_core::{RerankError, Reranker};
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;

#[derive(Deserialize)]
struct Rank {
    index: usize,
    score: f32,
}

/// The reranker services (`datafactory rerank-server`, or TEI) as a
/// [`Reranker`]: a search's passages cut into batches sent at once over the
/// services, raw scores (logits) back.
pub struct RemoteReranker {
    pool: Pool,
    agent: ureq::Agent,
    api_key: Option<String>,
    model_id: String,
}

impl RemoteReranker {
    pub fn new(
        urls: &[String],
        api_key: Option<&str>,
        timeout: Duration,
        settings: PoolSettings,
    ) -> RemoteReranker {
        let pool = Pool::new(urls, settings);
        RemoteReranker {
            model_id: format!("remote:{}", pool.urls().join(",")),
            api_key: api_key.filter(|k| !k.is_empty()).map(String::from),
            agent: ureq::AgentBuilder::new().timeout(timeout).build(),
            pool,
        }
    }

    /// From `rerank.url` and `rerank.urls` (one pool), `rerank.api_key`,
    /// `rerank.timeout_seconds`, and `[remote]`'s batching and failover.
    pub fn from_config(config: &datafactory_core::Config) -> RemoteReranker {
        let r = &config.rerank;
        let mut urls = vec![r.url.clone()];
        urls.extend(r.urls.iter().filter(|u| **u != r.url).cloned());
        RemoteReranker::new(
            &urls,
            Some(&r.api_key),
            Duration::from_secs(r.timeout_seconds),
            PoolSettings::from_config(&config.remote),
        )
    }

    /// The services as the pool knows them.
    pub fn endpoints(&self) -> Vec<crate::EndpointState> {
        self.pool.states()
    }
}

impl Reranker for RemoteReranker {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn workers(&self) -> Vec<datafactory_core::WorkerState> {
        self.pool.states()
    }

    fn score(&self, query: &str, passages: &[&str]) -> Result<Vec<f32>, RerankError> {
        if passages.is_empty() {
            return Ok(Vec::new());
        }
        let answer = self.pool.map_batches(passages, |url, batch| {
            let body = json!({"query": query, "texts": batch, "raw_scores": true, "truncate": true});
            let mut request = self.agent.post(&format!("{url}/rerank"));
            if let Some(key) = &self.api_key {
                request = request.set("Authorization", &format!("Bearer {key}"));
            }
            let ranks: Vec<Rank> = request
                .send_json(body)
                .map_err(|e| call_error(url, "reranker service", e))?
                .into_json()
                .map_err(|e| CallError::Retry(format!("reranker service at {url}: bad answer: {e}")))?;
            let mut scores = vec![f32::NAN; batch.len()];
            for r in ranks {
                if let Some(s) = scores.get_mut(r.index) {
                    *s = r.score;
                }
            }
            if scores.iter().any(|s| s.is_nan()) {
                return Err(CallError::Retry(format!(
                    "reranker service at {url} did not score every passage"
                )));
            }
            Ok(scores)
        });
        answer.map_err(RerankError::Unavailable)
    }
}
