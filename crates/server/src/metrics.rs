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
