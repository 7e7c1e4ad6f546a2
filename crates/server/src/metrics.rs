//! Prometheus metrics through `prometheus-client` (typed counters and
//! histograms, families keyed by label sets, label values escaped by the
//! crate), rendered in the Prometheus text format 0.0.4: request counts and
//! latencies per route template and status, and ingest totals.
//!
//! Requests are labelled by the route's template (`/documents/{id}`), never
//! by the raw path: every path that matches no route counts under
//! [`UNMATCHED`], so the number of series is bounded by the routes.
//!
//! Counter names are registered without `_total`; the encoder adds it, so the
//! exposed names are the ones listed in README (`datafactory_..._total`).

use prometheus_client::encoding::{prometheus_text, EncodeLabelSet};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// The route label of every request whose path matches no route.
pub const UNMATCHED: &str = "unmatched";

/// The `Content-Type` of every `/metrics` answer.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Upper bounds (seconds) of the request latency histogram.
const BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    url: String,
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: String,
}

type SecondsCounter = Counter<f64, AtomicU64>;
type LatencyFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// The per-endpoint LLM counters, summed over ingest jobs.
#[derive(Default)]
struct Llm {
    requests: Family<EndpointLabels, Counter>,
    failures: Family<EndpointLabels, Counter>,
    unusable: Family<EndpointLabels, Counter>,
    prompt_tokens: Family<EndpointLabels, Counter>,
    cached_tokens: Family<EndpointLabels, Counter>,
    evaluated_tokens: Family<EndpointLabels, Counter>,
    completion_tokens: Family<EndpointLabels, Counter>,
    seconds: Family<EndpointLabels, SecondsCounter>,
}

pub struct Metrics {
    /// Requests, and the DataFactory service's counters.
    registry: Registry,
    /// Requests only (the reranker service's exposition).
    requests_registry: Registry,
    /// The enrichment and phase figures (the DataFactory service's exposition).
    ingest_registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: LatencyFamily,
    pub documents_ingested: Counter,
    pub chunks_ingested: Counter,
    pub chunks_embedded: Counter,
    pub ingest_failures: Counter,
    pub searches_words_only: Counter,
    pub searches_reranked: Counter,
    pub rerank_failures: Counter,
    llm: Llm,
    /// Chunk contexts by where they came from (`llm`, `cached`, `heuristic`, `fallback`).
    contexts: Family<KindLabels, Counter>,
    phase_items: Family<PhaseLabels, Counter>,
    phase_seconds: Family<PhaseLabels, SecondsCounter>,
}

/// `prometheus-client` ends every help text with a period: give it none.
fn help(text: &str) -> &str {
    text.trim_end_matches('.')
}

/// A counter's registered name: the encoder adds `_total`.
fn base(name: &str) -> &str {
    name.strip_suffix("_total").unwrap_or(name)
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let requests = Family::<RequestLabels, Counter>::default();
        let latency: LatencyFamily = Family::new_with_constructor(latency_histogram);
        let mut requests_registry = Registry::default();
        let mut registry = Registry::default();
        for r in [&mut requests_registry, &mut registry] {
            r.register(
                base("datafactory_http_requests_total"),
                help("HTTP requests by route and status."),
                requests.clone(),
            );
            r.register(
                "datafactory_http_request_duration_seconds",
                help("HTTP request latency by route."),
                latency.clone(),
            );
        }
        let m = Metrics {
            registry,
            requests_registry,
            ingest_registry: Registry::default(),
            requests,
            latency,
            documents_ingested: Counter::default(),
            chunks_ingested: Counter::default(),
            chunks_embedded: Counter::default(),
            ingest_failures: Counter::default(),
            searches_words_only: Counter::default(),
            searches_reranked: Counter::default(),
            rerank_failures: Counter::default(),
            llm: Llm::default(),
            contexts: Family::default(),
            phase_items: Family::default(),
            phase_seconds: Family::default(),
        };
        m.register_rest()
    }

    fn register_rest(mut self) -> Metrics {
        for (name, text, c) in [
            (
                "datafactory_documents_ingested_total",
                "Documents added or replaced.",
                &self.documents_ingested,
            ),
            ("datafactory_chunks_ingested_total", "Chunks written.", &self.chunks_ingested),
            ("datafactory_chunks_embedded_total", "Chunks embedded.", &self.chunks_embedded),
            ("datafactory_ingest_failures_total", "Inputs that failed to ingest.", &self.ingest_failures),
            (
                "datafactory_searches_words_only_total",
                "Searches that asked for vectors but ran on words alone.",
                &self.searches_words_only,
            ),
            (
                "datafactory_searches_reranked_total",
                "Searches whose results were reranked.",
                &self.searches_reranked,
            ),
            (
                "datafactory_rerank_failures_total",
                "Searches answered in fused order because the reranker failed or was unreachable.",
                &self.rerank_failures,
            ),
        ] {
            self.registry.register(base(name), help(text), c.clone());
        }
        let r = &mut self.ingest_registry;
        let llm = &self.llm;
        for (name, text, family) in [
            ("datafactory_llm_requests_total", "Calls to the LLM endpoint.", &llm.requests),
            ("datafactory_llm_failures_total", "Calls to the LLM endpoint that failed.", &llm.failures),
            (
                "datafactory_llm_unusable_answers_total",
                "Answers of the LLM endpoint refused as no context (echo of the prompt, copy, loop).",
                &llm.unusable,
            ),
            (
                "datafactory_llm_prompt_tokens_total",
                "Prompt tokens sent to the LLM endpoint.",
                &llm.prompt_tokens,
            ),
            (
                "datafactory_llm_cached_tokens_total",
                "Prompt tokens the LLM endpoint served from its cache (where it reports them).",
                &llm.cached_tokens,
            ),
            (
                "datafactory_llm_evaluated_tokens_total",
                "Prompt tokens the LLM endpoint evaluated (where it reports them).",
                &llm.evaluated_tokens,
            ),
            (
                "datafactory_llm_completion_tokens_total",
                "Tokens the LLM endpoint wrote.",
                &llm.completion_tokens,
            ),
        ] {
            r.register(base(name), help(text), family.clone());
        }
        r.register(
            base("datafactory_llm_seconds_total"),
            help("Seconds of calls to the LLM endpoint."),
            llm.seconds.clone(),
        );
        r.register(
            base("datafactory_chunk_contexts_total"),
            "Chunk contexts by origin: written by an LLM, found in the cache, heuristic, heuristic because the LLM failed",
            self.contexts.clone(),
        );
        r.register(
            base("datafactory_ingest_phase_items_total"),
            help("Items done per ingest phase, summed over jobs."),
            self.phase_items.clone(),
        );
        r.register(
            base("datafactory_ingest_phase_seconds_total"),
            help("Seconds per ingest phase, summed over jobs."),
            self.phase_seconds.clone(),
        );
        self
    }

    /// Counts one request under `route`: a route template, or [`UNMATCHED`].
    pub fn observe(&self, route: &str, status: u16, seconds: f64) {
        self.requests.get_or_create(&RequestLabels { route: route.to_string(), status }).inc();
        self.latency.get_or_create(&RouteLabels { route: route.to_string() }).observe(seconds);
    }

    /// Adds one ingest job's enrichment figures (from its summary).
    pub fn record_enrichment(&self, e: &datafactory_ingest::IngestSummary) {
        let e = &e.enrichment;
        let llm = &self.llm;
        for x in &e.endpoints {
            let l = EndpointLabels { url: x.url.clone(), model: x.model.clone() };
            llm.requests.get_or_create(&l).inc_by(x.requests);
            llm.failures.get_or_create(&l).inc_by(x.failures);
            llm.unusable.get_or_create(&l).inc_by(x.unusable);
            llm.prompt_tokens.get_or_create(&l).inc_by(x.prompt_tokens);
            llm.cached_tokens.get_or_create(&l).inc_by(x.cached_tokens);
            llm.evaluated_tokens.get_or_create(&l).inc_by(x.evaluated_tokens);
            llm.completion_tokens.get_or_create(&l).inc_by(x.completion_tokens);
            llm.seconds.get_or_create(&l).inc_by(x.seconds);
        }
        let k = &e.chunks;
        for (kind, n) in
            [("llm", k.llm), ("cached", k.cached), ("heuristic", k.heuristic), ("fallback", k.fallback)]
        {
            self.contexts.get_or_create(&KindLabels { kind: kind.to_string() }).inc_by(n as u64);
        }
    }

    /// Adds one ingest job's items and seconds per phase.
    pub fn record_phases(&self, phases: &[crate::jobs::PhaseView]) {
        for v in phases {
            let name = serde_json::to_value(v.phase).ok().and_then(|n| n.as_str().map(String::from));
            let l = PhaseLabels { phase: name.unwrap_or_default() };
            self.phase_items.get_or_create(&l).inc_by(v.items as u64);
            self.phase_seconds.get_or_create(&l).inc_by(v.seconds);
        }
    }

    /// The enrichment and phase figures summed over jobs, and `embedder`'s counters.
    pub fn render_ingest(&self, out: &mut String, embedder: datafactory_core::EmbedderStats) {
        encode(out, &self.ingest_registry);
        counters(
            out,
            &[
                (
                    "datafactory_embed_batches_total",
                    "Forward passes of the embedding model.",
                    embedder.batches,
                ),
                ("datafactory_embed_texts_total", "Texts embedded.", embedder.texts),
                ("datafactory_embed_tokens_total", "Tokens embedded (no padding).", embedder.tokens),
                (
                    "datafactory_embed_padded_tokens_total",
                    "Tokens computed, padding included.",
                    embedder.padded_tokens,
                ),
                (
                    "datafactory_embed_gpu_fallbacks_total",
                    "Embedding batches that ran out of GPU memory and were redone on the CPU.",
                    embedder.gpu_fallbacks,
                ),
            ],
        );
    }

    /// Request counts and latencies, then the DataFactory service's counters.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry);
        out
    }

    /// Request counts by route and status, and latency histograms by route.
    pub fn render_requests(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.requests_registry);
        out
    }
}

fn encode(out: &mut String, registry: &Registry) {
    // Writing into a String cannot fail.
    let _ = prometheus_text::encode(out, registry);
}

/// Counters read from elsewhere (a model's statistics) at scrape time, as
/// `(name with _total, help, value)`.
pub fn counters(out: &mut String, values: &[(&str, &str, u64)]) {
    let mut registry = Registry::default();
    for (name, text, v) in values {
        registry.register(base(name), help(text), ConstCounter::new(*v));
    }
    encode(out, &registry);
}
