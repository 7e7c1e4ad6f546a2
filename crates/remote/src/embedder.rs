//! [`RemoteEmbedder`]: embedding on workers: DataFactory nodes through their
//! `POST /embed_windows` (dense and sparse vectors, long passages whole, as
//! the model in-process gives them), TEI through `POST /embed` (dense, a long
//! passage's first window).

use crate::pool::{call_error, CallError, Pool, PoolSettings};
use datafactory_core::{
    EmbedError, Embedder, EmbedderStats, Embedding, HeuristicTokenCounter, InputKind, TokenCounter,
};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// An [`Embedder`] whose model runs on other machines: each call's texts are
/// cut into batches sent at once over the workers.
pub struct RemoteEmbedder {
    pool: Pool,
    agent: ureq::Agent,
    api_key: Option<String>,
    /// The workers' model id (`/info`), so vectors made here and on a node
    /// with the model in-process are known to be the same model's.
    model_id: String,
    dimension: usize,
    max_input_tokens: usize,
    /// What DataFactory workers add to TEI's `/info`; None for TEI.
    native: Option<Native>,
    /// TEI's `prompt_name` sent with queries (empty: none).
    query_prompt: String,
    requests: AtomicU64,
    texts: AtomicU64,
}

impl RemoteEmbedder {
    /// Asks every worker for its model (`GET /info`) and the vector size (a
    /// probe text). Workers that do not answer are left to the pool's
    /// failover; those that answer must serve the same model and embed
    /// alike (all DataFactory nodes with the same windows and sparse
    /// weights, or all TEI).
    pub fn connect(
        urls: &[String],
        api_key: &str,
        query_prompt: &str,
        remote: &datafactory_core::config::RemoteConfig,
    ) -> Result<RemoteEmbedder, EmbedError> {
        if urls.is_empty() {
            return Err(EmbedError::Unavailable("no embedding workers configured".into()));
        }
        let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(remote.timeout_seconds)).build();
        let api_key = Some(api_key.to_string()).filter(|k| !k.is_empty());
        let pool = Pool::new(urls, PoolSettings::from_config(remote));
        let mut infos: Vec<(String, Value)> = Vec::new();
        let mut unreachable = Vec::new();
        for url in pool.urls() {
            let mut r = agent.get(&format!("{url}/info"));
            if let Some(k) = &api_key {
                r = r.set("Authorization", &format!("Bearer {k}"));
            }
            match r.call().map_err(|e| call_error(url, "embedding worker", e)) {
                Ok(answer) => match answer.into_json::<Value>() {
                    Ok(v) => infos.push((url.clone(), v)),
                    Err(e) => unreachable.push(format!("{url}/info: bad answer: {e}")),
                },
                Err(CallError::Retry(e) | CallError::Fatal(e)) => unreachable.push(e),
            }
        }
        let Some((first_url, first)) = infos.first() else {
            return Err(EmbedError::Unavailable(format!(
                "no embedding worker answered: {}",
                unreachable.join("; ")
            )));
        };
        let model_id = first["model_id"].as_str().unwrap_or_default().to_string();
        if model_id.is_empty() {
            return Err(EmbedError::Unavailable(format!("{first_url}/info names no model_id")));
        }
        if let Some((url, other)) = infos.iter().find(|(_, v)| v["model_id"].as_str() != Some(&model_id)) {
            return Err(EmbedError::Unavailable(format!(
                "embedding workers serve different models: {first_url} {model_id:?}, {url} {:?}",
                other["model_id"].as_str().unwrap_or("")
            )));
        }
        let native = Native::of(first);
        if let Some((url, other)) = infos.iter().find(|(_, v)| Native::of(v) != native) {
            return Err(EmbedError::Unavailable(format!(
                "embedding workers embed differently: {first_url} {}, {url} {}",
                Native::describe(native),
                Native::describe(Native::of(other))
            )));
        }
        let max_input_tokens = first["max_input_length"].as_u64().unwrap_or(512) as usize;
        let mut embedder = RemoteEmbedder {
            pool,
            agent,
            api_key,
            model_id,
            dimension: 0,
            max_input_tokens,
            native,
            query_prompt: query_prompt.to_string(),
            requests: AtomicU64::new(0),
            texts: AtomicU64::new(0),
        };
        let probe = embedder.embed(&["dimension probe"], InputKind::Passage).map_err(|e| match e {
            EmbedError::Runtime(e) => EmbedError::Unavailable(e),
            e => e,
        })?;
        embedder.dimension = probe[0].dense.len();
        if embedder.dimension == 0 {
            return Err(EmbedError::Unavailable("the embedding workers answered empty vectors".into()));
        }
        tracing::info!(
            "embedding on {} worker(s) ({}): {} dimensions, {}",
            embedder.pool.urls().len(),
            embedder.model_id,
            embedder.dimension,
            Native::describe(embedder.native)
        );
        Ok(embedder)
    }

    /// The workers as the pool knows them.
    pub fn endpoints(&self) -> Vec<crate::EndpointState> {
        self.pool.states()
    }

    /// One request to a worker, with the key, counted; its JSON answer.
    fn post<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        path: &str,
        body: Value,
    ) -> Result<T, CallError> {
        let mut r = self.agent.post(&format!("{url}{path}"));
        if let Some(k) = &self.api_key {
            r = r.set("Authorization", &format!("Bearer {k}"));
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        let answer = r.send_json(body).map_err(|e| call_error(url, "embedding worker", e))?;
        answer
            .into_json()
            .map_err(|e| CallError::Retry(format!("embedding worker at {url}: bad answer: {e}")))
    }

    fn request(&self, texts: &[&str], kind: InputKind) -> Result<Vec<Embedding>, String> {
        let dimension = self.dimension;
        self.pool.map_batches(texts, |url, batch| {
            let mut body = json!({"inputs": batch, "truncate": true, "normalize": true});
            if kind == InputKind::Query && !self.query_prompt.is_empty() {
                body["prompt_name"] = json!(self.query_prompt);
            }
            let vectors: Vec<Vec<f32>> = self.post(url, "/embed", body)?;
            check_dimensions(url, dimension, vectors.iter())?;
            self.texts.fetch_add(batch.len() as u64, Ordering::Relaxed);
            Ok(vectors.into_iter().map(|dense| Embedding { dense, sparse: Vec::new() }).collect())
        })
    }

    /// Through a DataFactory worker's `POST /embed_windows`: per text, its
    /// windows' vectors, dense and sparse (one window for a query, or for a
    /// passage when `windows` is false; 1 to `max_windows` else).
    fn request_windows(
        &self,
        texts: &[&str],
        native: Native,
        query: bool,
        windows: bool,
    ) -> Result<Vec<Vec<Embedding>>, String> {
        let dimension = self.dimension;
        let most = if windows && !query { native.max_windows } else { 1 };
        self.pool.map_batches(texts, |url, batch| {
            let body = json!({"inputs": batch, "query": query, "windows": windows});
            let texts: Vec<Vec<Window>> = self.post(url, "/embed_windows", body)?;
            if let Some(w) = texts.iter().find(|w| w.is_empty() || w.len() > most) {
                return Err(CallError::Retry(format!(
                    "embedding worker at {url} answered {} window(s) for a text, not 1 to {most}",
                    w.len()
                )));
            }
            check_dimensions(url, dimension, texts.iter().flatten().map(|w| &w.dense))?;
            self.texts.fetch_add(batch.len() as u64, Ordering::Relaxed);
            Ok(texts
                .into_iter()
                .map(|w| w.into_iter().map(|w| Embedding { dense: w.dense, sparse: w.sparse }).collect())
                .collect())
        })
    }
}

/// What a DataFactory worker's `/info` adds to TEI's.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Native {
    /// Vectors it gives one long passage at most (its `embedding.max_windows`).
    max_windows: usize,
    /// Whether its model gives sparse weights (bge-m3).
    sparse: bool,
}

impl Native {
    /// None for TEI (no `max_windows`).
    fn of(info: &Value) -> Option<Native> {
        Some(Native {
            max_windows: info["max_windows"].as_u64()?.max(1) as usize,
            sparse: info["sparse"].as_bool().unwrap_or(false),
        })
    }

    fn describe(native: Option<Native>) -> String {
        match native {
            None => "as TEI does (dense only, a long passage's first window)".into(),
            Some(n) => format!(
                "as DataFactory does ({} window(s) per passage at most, embedding.max_windows; {})",
                n.max_windows,
                if n.sparse { "dense and sparse" } else { "dense only" }
            ),
        }
    }
}

/// One window's vectors in `/embed_windows`'s answer.
#[derive(serde::Deserialize)]
struct Window {
    dense: Vec<f32>,
    #[serde(default)]
    sparse: Vec<(u32, f32)>,
}

/// A worker's vectors must all have the size the probe found (0: not known yet).
fn check_dimensions<'a>(
    url: &str,
    dimension: usize,
    mut vectors: impl Iterator<Item = &'a Vec<f32>>,
) -> Result<(), CallError> {
    match vectors.find(|v| dimension > 0 && v.len() != dimension) {
        Some(v) => Err(CallError::Retry(format!(
            "embedding worker at {url} answered {} dimensions, not {dimension}",
            v.len()
        ))),
        None => Ok(()),
    }
}

impl Embedder for RemoteEmbedder {
    fn model_id(&self) -> &str {
        &self.model_id
    }

    fn dimension(&self) -> usize {
        self.dimension
    }

    fn max_input_tokens(&self) -> usize {
        self.max_input_tokens
    }

    fn produces_sparse(&self) -> bool {
        self.native.is_some_and(|n| n.sparse)
    }

    fn embed(&self, texts: &[&str], kind: InputKind) -> Result<Vec<Embedding>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        match self.native {
            Some(native) => self
                .request_windows(texts, native, kind == InputKind::Query, false)
                .map(|v| v.into_iter().flatten().collect()),
            None => self.request(texts, kind),
        }
        .map_err(EmbedError::Runtime)
    }

    fn max_windows(&self) -> usize {
        self.native.map_or(1, |n| n.max_windows)
    }

    /// On DataFactory workers, a long passage gets one vector per window,
    /// as on a node with the model; on TEI, its first window's.
    fn embed_passages(&self, texts: &[&str]) -> Result<Vec<Vec<Embedding>>, EmbedError> {
        match self.native {
            Some(native) if !texts.is_empty() => {
                self.request_windows(texts, native, false, true).map_err(EmbedError::Runtime)
            }
            _ => Ok(self.embed(texts, InputKind::Passage)?.into_iter().map(|e| vec![e]).collect()),
        }
    }

    /// The workers' tokenizer is not here: chunks are budgeted by the
    /// heuristic count (about four characters a token); what is longer than
    /// the model reads is cut into windows by DataFactory workers and
    /// truncated by TEI.
    fn token_counter(&self) -> Arc<dyn TokenCounter> {
        Arc::new(HeuristicTokenCounter)
    }

    fn workers(&self) -> Vec<datafactory_core::WorkerState> {
        self.pool.states()
    }

    fn stats(&self) -> EmbedderStats {
        EmbedderStats {
            batches: self.requests.load(Ordering::Relaxed),
            texts: self.texts.load(Ordering::Relaxed),
            ..Default::default()
        }
    }
}
