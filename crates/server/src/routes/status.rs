//! `/ready` and `/metrics`: what the service and the parts it depends on are
//! doing (store, embedder, reranker, LLM endpoints, fleet).
//!
//! Reads state; changes nothing.

use super::*;

/// How long `/ready` waits for each LLM endpoint's health probe.
pub(crate) const LLM_PROBE: Duration = Duration::from_secs(2);

/// `GET /ready`: what the service can do now.
#[derive(Serialize, ToSchema)]
pub(crate) struct Ready {
    /// The store answers.
    pub(crate) ready: bool,
    pub(crate) store: ReadyStore,
    pub(crate) embedding: ReadyEmbedding,
    pub(crate) rerank: ReadyRerank,
    pub(crate) enrichment: ReadyEnrichment,
    /// The nodes sharing a PostgreSQL store and its job queue (null on the
    /// embedded store).
    pub(crate) fleet: Option<datafactory_store::Fleet>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct ReadyStore {
    pub(crate) open: bool,
    /// The word and vector indexes include every committed change.
    pub(crate) consistent: Option<bool>,
    pub(crate) documents: Option<u64>,
    pub(crate) chunks: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct ReadyEmbedding {
    pub(crate) loaded: bool,
    pub(crate) model: Option<String>,
    /// `embedding.device` as configured (`auto`, `cpu`, `cuda:0`, ...).
    pub(crate) device: String,
    /// Why no model is loaded (searches then use words only).
    pub(crate) note: Option<String>,
    /// The embedding workers (`embedding.remote_urls`) as the pool knows
    /// them; empty when the model runs in this process.
    pub(crate) workers: Vec<datafactory_core::WorkerState>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct ReadyRerank {
    /// `off`, `remote` or `local`.
    pub(crate) mode: String,
    pub(crate) model: Option<String>,
    /// The reranker services (`mode = "remote"`) as the pool knows them.
    pub(crate) workers: Vec<datafactory_core::WorkerState>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct ReadyEnrichment {
    /// `off`, `heuristic` or `llm`.
    pub(crate) mode: &'static str,
    /// Each configured LLM endpoint: its address, model, health and counters.
    pub(crate) endpoints: Vec<datafactory_enrich::EndpointState>,
}

/// Store, model, reranker and LLM endpoint state.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses((status = 200, description = "State of each part", body = Ready)))]
pub(crate) async fn ready(State(state): State<Shared>) -> Json<Ready> {
    let embedder = state.pipeline.embedder();
    let store = state.store.clone();
    let stats = tokio::task::spawn_blocking(move || store.stats()).await.ok().and_then(|r| r.ok());
    let enricher = state.pipeline.enricher().clone();
    let llm_endpoints = tokio::task::spawn_blocking(move || enricher.endpoint_states(Some(LLM_PROBE)))
        .await
        .unwrap_or_default();
    Json(Ready {
        ready: stats.is_some(),
        store: ReadyStore {
            open: stats.is_some(),
            consistent: stats.as_ref().map(|s| s.consistent),
            documents: stats.as_ref().map(|s| s.documents),
            chunks: stats.as_ref().map(|s| s.chunks),
        },
        embedding: ReadyEmbedding {
            loaded: embedder.is_some(),
            model: embedder.map(|e| e.model_id().to_string()),
            device: state.config.embedding.device.clone(),
            note: state.embedding_note.clone(),
            workers: embedder.map(|e| e.workers()).unwrap_or_default(),
        },
        rerank: ReadyRerank {
            mode: state.config.rerank.mode.clone(),
            model: state.reranker.as_ref().map(|r| r.model_id().to_string()),
            workers: state.reranker.as_ref().map(|r| r.workers()).unwrap_or_default(),
        },
        enrichment: ReadyEnrichment { mode: state.pipeline.enricher().mode(), endpoints: llm_endpoints },
        fleet: crate::fleet::view(&state).await,
    })
}

/// Prometheus metrics (text format 0.0.4): requests, ingest, phases, LLM
/// tokens per endpoint, embedder batches and GPU fallbacks.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text", body = String, content_type = "text/plain")))]
pub(crate) async fn metrics(State(state): State<Shared>) -> impl IntoResponse {
    let mut out = state.metrics.render();
    let embedder = state.pipeline.embedder().map(|e| e.stats()).unwrap_or_default();
    state.metrics.render_ingest(&mut out, embedder);
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], out)
}
