//! Prometheus metrics, kept by hand: request counts and latencies per route
//! and status, and ingest totals. Rendered in the text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Upper bounds (seconds) of the request latency histogram.
const BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0];

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    pub documents_ingested: AtomicU64,
    pub chunks_ingested: AtomicU64,
    pub chunks_embedded: AtomicU64,
    pub ingest_failures: AtomicU64,
    pub searches_words_only: AtomicU64,
    pub searches_reranked: AtomicU64,
    pub rerank_failures: AtomicU64,
    /// Per LLM endpoint (url, model), summed over ingest jobs.
    llm: Mutex<BTreeMap<(String, String), LlmCounters>>,
    /// Chunk contexts by where they came from (`llm`, `cached`, `heuristic`, `fallback`).
    contexts: Mutex<BTreeMap<&'static str, u64>>,
    /// Per ingest phase: items done and seconds, summed over jobs.
    phases: Mutex<BTreeMap<String, (u64, f64)>>,
}

#[derive(Default, Clone, Copy)]
struct LlmCounters {
    requests: u64,
    failures: u64,
    prompt_tokens: u64,
    cached_tokens: u64,
    evaluated_tokens: u64,
    completion_tokens: u64,
    seconds: f64,
}

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Metrics {
    pub fn observe(&self, route: &str, status: u16, seconds: f64) {
        if let Ok(mut r) = self.requests.lock() {
            *r.entry((route.to_string(), status)).or_default() += 1;
        }
        if let Ok(mut l) = self.latency.lock() {
            let h = l.entry(route.to_string()).or_default();
            for (i, b) in BUCKETS.iter().enumerate() {
                if seconds <= *b {
                    h.counts[i] += 1;
                }
            }
            h.count += 1;
            h.sum += seconds;
        }
    }

    /// Adds one ingest job's enrichment figures (from its summary).
    pub fn record_enrichment(&self, e: &datafactory_ingest::IngestSummary) {
        let e = &e.enrichment;
        if let Ok(mut llm) = self.llm.lock() {
            for x in &e.endpoints {
                let c = llm.entry((x.url.clone(), x.model.clone())).or_default();
                c.requests += x.requests;
                c.failures += x.failures;
                c.prompt_tokens += x.prompt_tokens;
                c.cached_tokens += x.cached_tokens;
                c.evaluated_tokens += x.evaluated_tokens;
                c.completion_tokens += x.completion_tokens;
                c.seconds += x.seconds;
            }
        }
        if let Ok(mut contexts) = self.contexts.lock() {
            let k = &e.chunks;
            for (kind, n) in
                [("llm", k.llm), ("cached", k.cached), ("heuristic", k.heuristic), ("fallback", k.fallback)]
            {
                *contexts.entry(kind).or_default() += n as u64;
            }
        }
    }

    /// Adds one ingest job's items and seconds per phase.
    pub fn record_phases(&self, phases: &[crate::jobs::PhaseView]) {
        if let Ok(mut p) = self.phases.lock() {
            for v in phases {
                let name = serde_json::to_value(v.phase).ok().and_then(|n| n.as_str().map(String::from));
                let e = p.entry(name.unwrap_or_default()).or_default();
                e.0 += v.items as u64;
                e.1 += v.seconds;
            }
        }
    }

    /// The enrichment and phase figures summed over jobs, and `embedder`'s counters.
    pub fn render_ingest(&self, out: &mut String, embedder: datafactory_core::EmbedderStats) {
        if let Ok(llm) = self.llm.lock() {
            type Field = fn(&LlmCounters) -> String;
            let fields: [(&str, &str, &str, Field); 7] = [
                ("datafactory_llm_requests_total", "counter", "Calls to the LLM endpoint.", |c| {
                    c.requests.to_string()
                }),
                (
                    "datafactory_llm_failures_total",
                    "counter",
                    "Calls to the LLM endpoint that failed.",
                    |c| c.failures.to_string(),
                ),
                (
                    "datafactory_llm_prompt_tokens_total",
                    "counter",
                    "Prompt tokens sent to the LLM endpoint.",
                    |c| c.prompt_tokens.to_string(),
                ),
                (
                    "datafactory_llm_cached_tokens_total",
                    "counter",
                    "Prompt tokens the LLM endpoint served from its cache (where it reports them).",
                    |c| c.cached_tokens.to_string(),
                ),
                (
                    "datafactory_llm_evaluated_tokens_total",
                    "counter",
                    "Prompt tokens the LLM endpoint evaluated (where it reports them).",
                    |c| c.evaluated_tokens.to_string(),
                ),
                (
                    "datafactory_llm_completion_tokens_total",
                    "counter",
                    "Tokens the LLM endpoint wrote.",
                    |c| c.completion_tokens.to_string(),
                ),
                ("datafactory_llm_seconds_total", "counter", "Seconds of calls to the LLM endpoint.", |c| {
                    c.seconds.to_string()
                }),
            ];
            for (name, kind, help, get) in fields {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
                for ((url, model), c) in llm.iter() {
                    let _ = writeln!(
                        out,
                        "{name}{{url=\"{}\",model=\"{}\"}} {}",
                        escape(url),
                        escape(model),
                        get(c)
                    );
                }
            }
        }
        if let Ok(contexts) = self.contexts.lock() {
            let name = "datafactory_chunk_contexts_total";
            let _ = writeln!(
                out,
                "# HELP {name} Chunk contexts by origin: written by an LLM, found in the cache, heuristic, heuristic because the LLM failed.\n# TYPE {name} counter"
            );
            for (kind, n) in contexts.iter() {
                let _ = writeln!(out, "{name}{{kind=\"{kind}\"}} {n}");
            }
        }
        if let Ok(phases) = self.phases.lock() {
            for (name, help, seconds) in [
                (
                    "datafactory_ingest_phase_items_total",
                    "Items done per ingest phase, summed over jobs.",
                    false,
                ),
                (
                    "datafactory_ingest_phase_seconds_total",
                    "Seconds per ingest phase, summed over jobs.",
                    true,
                ),
            ] {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
                for (phase, (items, secs)) in phases.iter() {
                    let v = if seconds { secs.to_string() } else { items.to_string() };
                    let _ = writeln!(out, "{name}{{phase=\"{phase}\"}} {v}");
                }
            }
        }
        for (name, help, v) in [
            ("datafactory_embed_batches_total", "Forward passes of the embedding model.", embedder.batches),
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
        ] {
            counter(out, name, help, v);
        }
    }

    /// Request counts and latencies, then the DataFactory service's counters.
    pub fn render(&self) -> String {
        let mut out = self.render_requests();
        for (name, help, v) in [
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
            counter(&mut out, name, help, v.load(Ordering::Relaxed));
        }
        out
    }

    /// Request counts by route and status, and latency histograms by route.
    pub fn render_requests(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP datafactory_http_requests_total HTTP requests by route and status.\n");
        out.push_str("# TYPE datafactory_http_requests_total counter\n");
        if let Ok(r) = self.requests.lock() {
            for ((route, status), n) in r.iter() {
                let _ = writeln!(
                    out,
                    "datafactory_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
        out.push_str("# HELP datafactory_http_request_duration_seconds HTTP request latency by route.\n");
        out.push_str("# TYPE datafactory_http_request_duration_seconds histogram\n");
        if let Ok(l) = self.latency.lock() {
            for (route, h) in l.iter() {
                for (i, b) in BUCKETS.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "datafactory_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{b}\"}} {}",
                        h.counts[i]
                    );
                }
                let _ = writeln!(
                    out,
                    "datafactory_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                    h.count
                );
                let _ = writeln!(
                    out,
                    "datafactory_http_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                    h.sum
                );
                let _ = writeln!(
                    out,
                    "datafactory_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                    h.count
                );
            }
        }
        out
    }
}

/// Writes one counter in the text exposition format.
pub fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
}

/// A label value in the text exposition format.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
