//! Contextual enrichment: for every chunk, a short text that situates it in
//! its document ("contextual retrieval"), embedded and word-indexed with the
//! chunk.
//!
//! An [`Enricher`] holds a pool of LLM endpoints (Ollama or OpenAI-compatible
//! servers, see [`client`]) and a scheduler ([`schedule`]) that keeps each
//! document's shared prompt prefix on as few server slots as finishes
//! soonest. Answers go to a [`ContextCache`] (the store) the moment they
//! arrive, keyed by (document hash, chunk hash, model, template version), and
//! are looked up there first: a call that once succeeded is never made again.
//! Without an LLM (none configured, or none answering within the retry
//! budget) a chunk gets a [`heuristic`] context, marked as such.
//!
//! Nothing is silently truncated: prompts are counted (the server's
//! tokenizer where it has one, else a cautious estimate), Ollama's `num_ctx`
//! is set to what prompt and answer need, and a document longer than the
//! model's context is shown to the LLM as a window around the chunk,
//! recorded on the context (`windowed`).

pub mod answer;
pub mod client;
pub mod heuristic;
pub mod prompt;
mod schedule;

use client::{Client, Completion};
use datafactory_core::config::EnrichmentConfig;
use datafactory_core::document::slice_chars;
use datafactory_core::{
    content_hash, Chunk, ChunkContext, ContextKind, Document, HeuristicTokenCounter, TokenCounter,
};
use prompt::Template;
use schedule::{Dispatcher, Endpoint, EndpointCounters, Group, Health, Job, Settings};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where answers are kept so that no call is made twice.
pub trait ContextCache: Sync {
    fn get(&self, key: &CacheKey) -> Option<String>;
    /// Called as soon as an answer arrives (from the pool's threads).
    fn put(&self, key: &CacheKey, context: &str, call: &CallRecord);
}

/// A cache that keeps nothing (tests, benchmarks).
pub struct NoCache;
impl ContextCache for NoCache {
    fn get(&self, _: &CacheKey) -> Option<String> {
        None
    }
    fn put(&self, _: &CacheKey, _: &str, _: &CallRecord) {}
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// BLAKE3 of the document's text.
    pub document_hash: String,
    /// BLAKE3 of the chunk's text.
    pub chunk_hash: String,
    pub model: String,
    pub template: String,
}

/// How one answer was obtained.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CallRecord {
    pub endpoint: String,
    pub windowed: bool,
    pub prompt_tokens: Option<u64>,
    pub cached_tokens: Option<u64>,
    pub evaluated_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub seconds: f64,
}

/// A document and its chunks, to be given contexts.
pub struct DocumentInput<'a> {
    pub source: &'a str,
    pub document: &'a Document,
    pub chunks: &'a [Chunk],
}

/// The contexts of one document, aligned with its chunks.
pub struct DocumentContexts {
    pub contexts: Vec<ChunkContext>,
    /// False when an LLM was configured but some chunk got a heuristic
    /// context instead (the caller may try again later).
    pub complete: bool,
}

/// What an enrichment run did; the `enrichment` part of an ingest summary.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EnrichmentSummary {
    /// `llm`, `heuristic` or `off`.
    pub mode: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub schedule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub template: Option<String>,
    pub chunks: ContextCounts,
    pub seconds: f64,
    #[serde(default)]
    pub endpoints: Vec<EndpointSummary>,
    #[serde(default)]
    pub documents: Vec<DocumentTiming>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ContextCounts {
    /// Written by an LLM in this run.
    pub llm: usize,
    /// Written by an LLM earlier, found in the store's cache.
    pub cached: usize,
    /// Heuristic contexts (no LLM configured).
    pub heuristic: usize,
    /// Heuristic contexts because the LLM could not answer (or answered no
    /// context: see `unusable`).
    pub fallback: usize,
    /// Of `fallback`: the LLM answered, but with no context (it echoed the
    /// prompt, copied it or looped: a base model, a wrong chat template).
    #[serde(default)]
    pub unusable: usize,
    /// LLM contexts written from a window of a document too long for the model.
    pub windowed: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EndpointSummary {
    pub url: String,
    pub model: String,
    pub requests: u64,
    pub failures: u64,
    pub prompt_tokens: u64,
    /// Prompt tokens served from the server's cache (where reported).
    pub cached_tokens: u64,
    /// Prompt tokens the server had to evaluate (where reported).
    pub evaluated_tokens: u64,
    pub completion_tokens: u64,
    pub seconds: f64,
    pub up: bool,
    /// Answers refused as no context.
    #[serde(default)]
    pub unusable: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DocumentTiming {
    pub source: String,
    pub chunks: usize,
    pub llm_calls: usize,
    /// From its first request to its last answer.
    pub seconds: f64,
    /// Per-chunk seconds of its LLM calls: mean and max.
    pub chunk_seconds_mean: f64,
    pub chunk_seconds_max: f64,
}

impl EnrichmentSummary {
    /// Adds another run's figures to these.
    pub fn merge(&mut self, other: EnrichmentSummary) {
        if self.mode.is_empty() {
            self.mode = other.mode.clone();
            self.schedule = other.schedule.clone();
            self.template = other.template.clone();
        }
        let (a, b) = (&mut self.chunks, &other.chunks);
        a.llm += b.llm;
        a.cached += b.cached;
        a.heuristic += b.heuristic;
        a.fallback += b.fallback;
        a.unusable += b.unusable;
        a.windowed += b.windowed;
        self.seconds += other.seconds;
        for e in other.endpoints {
            match self.endpoints.iter_mut().find(|x| x.url == e.url && x.model == e.model) {
                Some(x) => {
                    x.requests += e.requests;
                    x.failures += e.failures;
                    x.prompt_tokens += e.prompt_tokens;
                    x.cached_tokens += e.cached_tokens;
                    x.evaluated_tokens += e.evaluated_tokens;
                    x.completion_tokens += e.completion_tokens;
                    x.seconds += e.seconds;
                    x.unusable += e.unusable;
                    x.up = e.up;
                }
                None => self.endpoints.push(e),
            }
        }
        self.documents.extend(other.documents);
    }
}

/// The context an LLM's answer gives a chunk (the same whether it is
/// announced on arrival or put in the result).
fn llm_context(c: &Completion, model: &str, template: &str, windowed: bool) -> ChunkContext {
    ChunkContext {
        text: c.text.trim().to_string(),
        kind: ContextKind::Llm,
        model: Some(model.to_string()),
        template: template.to_string(),
        windowed,
    }
}

/// One LLM endpoint of the pool: what the pool knows of it, and what a
/// health probe found (`Enricher::endpoint_states`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EndpointState {
    pub url: String,
    /// `ollama` or `openai`.
    pub kind: &'static str,
    pub model: String,
    /// The pool sends it work: it was not taken out after failures, or the
    /// time it was out for is over.
    pub in_pool: bool,
    /// Failed calls in a row, as the pool counted them.
    pub consecutive_failures: u32,
    /// Seconds until the pool tries it again, while it is out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_in_seconds: Option<f64>,
    /// What the probe found (absent when not probed): the server answers and serves the model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub up: Option<bool>,
    /// Why the probe failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Off,
    Heuristic,
    Llm,
}

/// Tokens of chat-template framing around the user message (role markers).
const CHAT_OVERHEAD_TOKENS: usize = 48;

/// The enrichment stage.
pub struct Enricher {
    mode: Mode,
    config: EnrichmentConfig,
    template: Template,
    endpoints: Vec<Endpoint>,
    health: Mutex<Vec<Health>>,
    checked: AtomicBool,
}

impl Enricher {
    pub fn from_config(config: &EnrichmentConfig) -> Enricher {
        let mode = match config.mode.as_str() {
            "off" => Mode::Off,
            "heuristic" => Mode::Heuristic,
            _ if config.endpoints.is_empty() => Mode::Heuristic,
            _ => Mode::Llm,
        };
        let template = if config.template.is_empty() {
            Template::builtin()
        } else {
            Template::custom(&config.template, &config.template_version)
        };
        let connect = Duration::from_secs(config.connect_timeout_seconds.max(1));
        let timeout = Duration::from_secs(config.request_timeout_seconds);
        let endpoints: Vec<Endpoint> = config
            .endpoints
            .iter()
            .map(|e| Endpoint {
                client: Client::new(e, &config.keep_alive, connect, timeout),
                slots: e.slots,
                pin_slots: e.pin_slots && e.kind == "openai",
                shared_prefix_cache: e.shared_prefix_cache,
            })
            .collect();
        let health = endpoints
            .iter()
            .map(|_| Health {
                // Until measured: llama3.1:8b-class rates on one GPU.
                prefill_s: 1.0 / 8000.0,
                decode_s: 1.0 / 100.0,
                answer_tokens: config.max_answer_tokens as f64 * 0.8,
                ..Default::default()
            })
            .collect();
        Enricher {
            mode,
            config: config.clone(),
            template,
            endpoints,
            health: Mutex::new(health),
            checked: AtomicBool::new(false),
        }
    }

    /// Whether contexts are made at all.
    pub fn enabled(&self) -> bool {
        self.mode != Mode::Off
    }

    pub fn uses_llm(&self) -> bool {
        self.mode == Mode::Llm
    }

    /// What decides the contexts, for the pipeline fingerprint; None when off.
    pub fn fingerprint(&self) -> Option<String> {
        match self.mode {
            Mode::Off => None,
            Mode::Heuristic => Some(heuristic::HEURISTIC_VERSION.to_string()),
            Mode::Llm => {
                let mut models = self.models();
                models.sort();
                Some(format!("llm:{}:{}", models.join("+"), self.template.version()))
            }
        }
    }

    fn models(&self) -> Vec<String> {
        let mut models: Vec<String> = Vec::new();
        for e in &self.endpoints {
            if !models.contains(&e.client.model) {
                models.push(e.client.model.clone());
            }
        }
        models
    }

    /// `llm`, `heuristic` or `off`: what this enricher does.
    pub fn mode(&self) -> &'static str {
        match self.mode {
            Mode::Off => "off",
            Mode::Heuristic => "heuristic",
            Mode::Llm => "llm",
        }
    }

    /// Every endpoint as the pool knows it; with `probe`, each also asked
    /// now (at once, each within `probe`) whether it is up. A probe does not
    /// change the pool: only calls made for work take endpoints out of it.
    pub fn endpoint_states(&self, probe: Option<Duration>) -> Vec<EndpointState> {
        let probes: Vec<Option<Result<(), String>>> = match probe {
            None => vec![None; self.endpoints.len()],
            Some(limit) => std::thread::scope(|s| {
                let handles: Vec<_> = self
                    .config
                    .endpoints
                    .iter()
                    .map(|e| {
                        s.spawn(move || {
                            Client::new(e, &self.config.keep_alive, limit, limit)
                                .health()
                                .map_err(|x| x.to_string())
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| Some(h.join().unwrap_or_else(|_| Err("health probe panicked".into()))))
                    .collect()
            }),
        };
        let now = Instant::now();
        let health = lock(&self.health);
        self.endpoints
            .iter()
            .zip(health.iter())
            .zip(probes)
            .map(|((e, h), p)| {
                let out = h.down_until.filter(|t| *t > now);
                EndpointState {
                    url: e.client.base.clone(),
                    kind: match e.client.kind {
                        client::ApiKind::Ollama => "ollama",
                        client::ApiKind::OpenAi => "openai",
                    },
                    model: e.client.model.clone(),
                    in_pool: out.is_none(),
                    consecutive_failures: h.consecutive_failures,
                    retry_in_seconds: out.map(|t| (t - now).as_secs_f64()),
                    up: p.as_ref().map(|r| r.is_ok()),
                    error: p.and_then(|r| r.err()),
                }
            })
            .collect()
    }

    /// Checks every endpoint now; an endpoint that fails is out of the pool
    /// for `down_seconds`. Returns (url, error) of those that failed.
    pub fn check_endpoints(&self) -> Vec<(String, String)> {
        let now = Instant::now();
        let results: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = self
                .endpoints
                .iter()
                .map(|e| s.spawn(move || e.client.health().map_err(|x| x.to_string())))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err("health check panicked".into())))
                .collect()
        });
        let mut health = lock(&self.health);
        let mut failed = Vec::new();
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(()) => {
                    health[i].down_until = None;
                    health[i].consecutive_failures = 0;
                }
                Err(e) => {
                    tracing::warn!("LLM endpoint {} is not usable: {e}", self.endpoints[i].client.base);
                    health[i].down_until = Some(now + Duration::from_secs(self.config.down_seconds));
                    failed.push((self.endpoints[i].client.base.clone(), e));
                }
            }
        }
        failed
    }

    /// Gives every chunk of `documents` a context. `progress(chunks, seconds)`
    /// hears of each one as it is done (from several threads).
    pub fn enrich(
        &self,
        documents: &[DocumentInput<'_>],
        cache: &dyn ContextCache,
        progress: &(dyn Fn(usize, f64) + Sync),
    ) -> (Vec<DocumentContexts>, EnrichmentSummary) {
        self.enrich_streaming(documents, cache, progress, &|_, _, _| {})
    }

    /// [`Enricher::enrich`], and `arrived(document, chunk, context)` hears of
    /// each LLM context as soon as it is known (a cached one at the start, a
    /// fresh answer when it comes; from several threads): the context the
    /// chunk will have in the result, so work on it (embedding) can start
    /// before the rest of its document is enriched. Heuristic contexts,
    /// given where the LLM could not answer, are known only in the result.
    pub fn enrich_streaming(
        &self,
        documents: &[DocumentInput<'_>],
        cache: &dyn ContextCache,
        progress: &(dyn Fn(usize, f64) + Sync),
        arrived: &(dyn Fn(usize, usize, &ChunkContext) + Sync),
    ) -> (Vec<DocumentContexts>, EnrichmentSummary) {
        let started = Instant::now();
        let mut summary = EnrichmentSummary {
            mode: match self.mode {
                Mode::Off => "off",
                Mode::Heuristic => "heuristic",
                Mode::Llm => "llm",
            }
            .into(),
            ..Default::default()
        };
        if self.mode != Mode::Llm {
            let out = documents
                .iter()
                .map(|d| {
                    let contexts: Vec<ChunkContext> = if self.mode == Mode::Off {
                        Vec::new()
                    } else {
                        let heuristic = heuristic::HeuristicContexts::new(d.document);
                        d.chunks.iter().map(|c| heuristic_of(&heuristic, c)).collect()
                    };
                    summary.chunks.heuristic += contexts.len();
                    if !contexts.is_empty() {
                        progress(contexts.len(), 0.0);
                    }
                    DocumentContexts { contexts, complete: true }
                })
                .collect();
            summary.seconds = started.elapsed().as_secs_f64();
            return (out, summary);
        }
        summary.schedule = Some(self.config.schedule.clone());
        summary.template = Some(self.template.version().to_string());
        if !self.checked.swap(true, Ordering::Relaxed) {
            self.check_endpoints();
        }
        let models = self.models();
        let template = self.template.version().to_string();

        // Contexts found in the cache; the rest become jobs.
        let mut found: Vec<Vec<Option<ChunkContext>>> = Vec::with_capacity(documents.len());
        let mut keys: Vec<Vec<(String, String)>> = Vec::with_capacity(documents.len());
        for d in documents {
            let doc_hash = content_hash(d.document.text.as_bytes());
            let mut row = Vec::with_capacity(d.chunks.len());
            let mut key_row = Vec::with_capacity(d.chunks.len());
            for c in d.chunks {
                let chunk_hash = content_hash(c.text.as_bytes());
                let hit = models.iter().find_map(|m| {
                    let key = CacheKey {
                        document_hash: doc_hash.clone(),
                        chunk_hash: chunk_hash.clone(),
                        model: m.clone(),
                        template: template.clone(),
                    };
                    cache.get(&key).map(|text| ChunkContext {
                        text,
                        kind: ContextKind::Llm,
                        model: Some(m.clone()),
                        template: template.clone(),
                        windowed: false,
                    })
                });
                if hit.is_some() {
                    summary.chunks.cached += 1;
                }
                row.push(hit);
                key_row.push((doc_hash.clone(), chunk_hash));
            }
            let hits = row.iter().filter(|c| c.is_some()).count();
            if hits > 0 {
                progress(hits, 0.0);
                for (chunk, c) in row.iter().enumerate() {
                    if let Some(c) = c {
                        arrived(found.len(), chunk, c);
                    }
                }
            }
            found.push(row);
            keys.push(key_row);
        }

        let plan = self.plan(documents, &found);
        let counters = Mutex::new(vec![EndpointCounters::default(); self.endpoints.len()]);
        let settings = Settings {
            round_robin: self.config.schedule == "round_robin",
            attempts: self.config.attempts,
            backoff: Duration::from_millis(self.config.backoff_ms),
            failures_before_down: self.config.failures_before_down.max(1),
            down_for: Duration::from_secs(self.config.down_seconds),
            max_tokens: self.config.max_answer_tokens,
            temperature: self.config.temperature,
            num_ctx: plan.num_ctx,
            judge: answer::Judge::new(&self.template),
        };
        let done = |job: usize, c: &Completion, endpoint: usize| {
            let (doc, chunk) = plan.origin[job];
            let (document_hash, chunk_hash) = keys[doc][chunk].clone();
            let key = CacheKey {
                document_hash,
                chunk_hash,
                model: self.endpoints[endpoint].client.model.clone(),
                template: template.clone(),
            };
            let record = CallRecord {
                endpoint: self.endpoints[endpoint].client.base.clone(),
                windowed: plan.windowed[job],
                prompt_tokens: c.prompt_tokens,
                cached_tokens: c.cached_tokens,
                evaluated_tokens: c.evaluated_tokens,
                completion_tokens: c.completion_tokens,
                seconds: c.seconds,
            };
            cache.put(&key, c.text.trim(), &record);
            progress(1, c.seconds);
            arrived(
                doc,
                chunk,
                &llm_context(c, &self.endpoints[endpoint].client.model, &template, plan.windowed[job]),
            );
        };
        let results = if plan.jobs.is_empty() {
            Vec::new()
        } else {
            Dispatcher::new(&plan.jobs, &plan.groups, &self.endpoints, &self.health, &counters, &settings)
                .run(&done)
        };

        // Assemble: cache hits, fresh answers, and heuristic contexts where
        // the LLM could not answer.
        let mut timings: Vec<(Option<Instant>, Option<Instant>, Vec<f64>)> =
            documents.iter().map(|_| (None, None, Vec::new())).collect();
        for (job, r) in results.into_iter().enumerate() {
            let (doc, chunk) = plan.origin[job];
            let Some(r) = r else { continue };
            if let Ok((c, endpoint)) = r.outcome {
                let t = &mut timings[doc];
                t.0 = Some(t.0.map_or(r.started, |x| x.min(r.started)));
                t.1 = Some(t.1.map_or(r.finished, |x| x.max(r.finished)));
                t.2.push(c.seconds);
                summary.chunks.llm += 1;
                if plan.windowed[job] {
                    summary.chunks.windowed += 1;
                }
                found[doc][chunk] = Some(llm_context(
                    &c,
                    &self.endpoints[endpoint].client.model,
                    &template,
                    plan.windowed[job],
                ));
            }
        }
        let mut out = Vec::with_capacity(documents.len());
        for (i, d) in documents.iter().enumerate() {
            let mut complete = true;
            let heuristic = std::cell::OnceCell::new();
            let contexts: Vec<ChunkContext> = found[i]
                .iter_mut()
                .zip(d.chunks)
                .map(|(c, chunk)| {
                    c.take().unwrap_or_else(|| {
                        complete = false;
                        summary.chunks.fallback += 1;
                        heuristic_of(
                            heuristic.get_or_init(|| heuristic::HeuristicContexts::new(d.document)),
                            chunk,
                        )
                    })
                })
                .collect();
            let (first, last, secs) = &timings[i];
            let n = secs.len();
            summary.documents.push(DocumentTiming {
                source: d.source.to_string(),
                chunks: d.chunks.len(),
                llm_calls: n,
                seconds: match (first, last) {
                    (Some(a), Some(b)) => b.duration_since(*a).as_secs_f64(),
                    _ => 0.0,
                },
                chunk_seconds_mean: if n > 0 { secs.iter().sum::<f64>() / n as f64 } else { 0.0 },
                chunk_seconds_max: secs.iter().copied().fold(0.0, f64::max),
            });
            if !complete {
                tracing::warn!("{}: some chunks got a heuristic context (the LLM did not answer)", d.source);
            }
            out.push(DocumentContexts { contexts, complete });
        }
        let counters = lock(&counters).clone();
        for (e, c) in self.endpoints.iter().zip(&counters) {
            if let Some(why) = &c.first_unusable {
                tracing::warn!(
                    "{} of the answers of {} at {} were no context (first: {why}); those chunks got heuristic \
                     contexts. An instruction-tuned model and its chat template are needed",
                    c.unusable,
                    e.client.model,
                    e.client.base
                );
            }
        }
        summary.chunks.unusable = counters.iter().map(|c| c.unusable as usize).sum();
        let health = lock(&self.health).clone();
        let now = Instant::now();
        summary.endpoints = self
            .endpoints
            .iter()
            .zip(counters)
            .zip(health)
            .map(|((e, c), h)| EndpointSummary {
                url: e.client.base.clone(),
                model: e.client.model.clone(),
                requests: c.requests,
                failures: c.failures,
                prompt_tokens: c.prompt_tokens,
                cached_tokens: c.cached_tokens,
                evaluated_tokens: c.evaluated_tokens,
                completion_tokens: c.completion_tokens,
                seconds: c.seconds,
                up: h.down_until.is_none_or(|t| t <= now),
                unusable: c.unusable,
            })
            .collect();
        summary.seconds = started.elapsed().as_secs_f64();
        (out, summary)
    }

    /// Counts a text's tokens: with the first endpoint that tokenizes and is
    /// up, exactly; else a cautious estimate (a third more than the
    /// model-free count).
    fn count(&self, text: &str) -> usize {
        let now = Instant::now();
        let health = lock(&self.health).clone();
        for ((config, endpoint), h) in self.config.endpoints.iter().zip(&self.endpoints).zip(&health) {
            if config.tokenize && h.down_until.is_none_or(|t| t <= now) {
                if let Ok(n) = endpoint.client.tokenize(text) {
                    return n;
                }
            }
        }
        let estimate = HeuristicTokenCounter.count(text) * 4 / 3 + 8;
        // The most cautious of the endpoints' own ratios, if any is given.
        let by_ratio = self
            .config
            .endpoints
            .iter()
            .filter(|e| e.chars_per_token > 0.0)
            .map(|e| (text.chars().count() as f64 / e.chars_per_token).ceil() as usize + 8)
            .max();
        by_ratio.unwrap_or(estimate)
    }

    /// Splits the work into groups that share a prompt prefix.
    fn plan(&self, documents: &[DocumentInput<'_>], found: &[Vec<Option<ChunkContext>>]) -> Plan {
        let mut plan = Plan::default();
        let context = self.config.endpoints.iter().map(|e| e.context_tokens).min().unwrap_or(8192);
        let answer = self.config.max_answer_tokens as usize;
        let mut largest_need = 0usize;
        for (doc, d) in documents.iter().enumerate() {
            let todo: Vec<usize> = (0..d.chunks.len()).filter(|&i| found[doc][i].is_none()).collect();
            if todo.is_empty() {
                continue;
            }
            let text = &d.document.text;
            let prefix = self.template.prefix(text);
            let prefix_tokens = self.count(&prefix);
            let ratio = prefix_tokens as f64 / prefix.chars().count().max(1) as f64;
            let suffix_of = |chunk: &Chunk| self.template.suffix(&chunk.text);
            // The longest chunk's part of the prompt, counted; the others estimated from it.
            let longest = todo.iter().copied().max_by_key(|&i| d.chunks[i].text.len()).unwrap_or(0);
            let longest_suffix = suffix_of(&d.chunks[longest]);
            let max_suffix = self.count(&longest_suffix) + 8;
            let per_char = max_suffix as f64 / longest_suffix.chars().count().max(1) as f64;
            let suffix_tokens =
                |suffix: &str| ((suffix.chars().count() as f64 * per_char) as usize).min(max_suffix);
            let budget = context.saturating_sub(answer + max_suffix + CHAT_OVERHEAD_TOKENS);
            if budget < 64 {
                tracing::warn!(
                    "{}: the model's context ({context} tokens) has no room for the document around a chunk; \
                     heuristic contexts instead",
                    d.source
                );
                continue;
            }
            if prefix_tokens <= budget {
                let g = plan.groups.len();
                plan.groups.push(Group { jobs: Vec::new(), prefix_tokens });
                for &i in &todo {
                    let suffix = suffix_of(&d.chunks[i]);
                    let job = plan.jobs.len();
                    plan.jobs.push(Job {
                        group: g,
                        suffix_tokens: suffix_tokens(&suffix),
                        prompt: format!("{prefix}{suffix}"),
                    });
                    plan.origin.push((doc, i));
                    plan.windowed.push(false);
                    plan.groups[g].jobs.push(job);
                }
                largest_need = largest_need.max(prefix_tokens + max_suffix);
                continue;
            }
            // Too long for the model: windows of the text, half-overlapping,
            // each chunk shown the one it sits most centrally in.
            let chars = text.chars().count();
            let title = d.document.title.trim();
            let mut window_chars = (((budget as f64 * 0.9) / ratio.max(1e-6)) as usize)
                .saturating_sub(title.chars().count().min(200) + 16);
            let mut windows: Vec<(usize, usize, String, usize)>;
            let mut tries = 0;
            loop {
                window_chars = window_chars.max(64);
                let stride = (window_chars / 2).max(1);
                windows = Vec::new();
                let mut start = 0;
                loop {
                    let end = (start + window_chars).min(chars);
                    let body = slice_chars(text, start, end);
                    let shown = format!(
                        "{title}\n{}{body}{}",
                        if start > 0 { "[…]\n" } else { "" },
                        if end < chars { "\n[…]" } else { "" }
                    );
                    windows.push((start, end, shown, 0));
                    if end >= chars {
                        break;
                    }
                    start += stride;
                }
                // Count the windows that are used, and shrink if one is over.
                let mut over = false;
                let used: Vec<usize> = todo.iter().map(|&i| nearest_window(&windows, &d.chunks[i])).collect();
                for &w in &used {
                    if windows[w].3 == 0 {
                        windows[w].3 = self.count(&self.template.prefix(&windows[w].2));
                        over |= windows[w].3 > budget;
                    }
                }
                tries += 1;
                if !over || tries >= 6 || window_chars <= 64 {
                    break;
                }
                window_chars = window_chars * 4 / 5;
            }
            // Per window used: its group and its prefix, escaped once.
            let mut group_of: HashMap<usize, (usize, String)> = HashMap::new();
            for &i in &todo {
                let chunk = &d.chunks[i];
                let w = nearest_window(&windows, chunk);
                let (g, window_prefix) = &*group_of.entry(w).or_insert_with(|| {
                    plan.groups.push(Group { jobs: Vec::new(), prefix_tokens: windows[w].3 });
                    (plan.groups.len() - 1, self.template.prefix(&windows[w].2))
                });
                let (g, suffix) = (*g, suffix_of(chunk));
                let job = plan.jobs.len();
                plan.jobs.push(Job {
                    group: g,
                    suffix_tokens: suffix_tokens(&suffix),
                    prompt: format!("{window_prefix}{suffix}"),
                });
                plan.origin.push((doc, i));
                plan.windowed.push(true);
                plan.groups[g].jobs.push(job);
                largest_need = largest_need.max(windows[w].3 + max_suffix);
            }
        }
        // One num_ctx per run (a changed num_ctx makes Ollama reload the
        // model); an endpoint is sent no less than it was before (`Health`).
        let need = largest_need + answer + CHAT_OVERHEAD_TOKENS;
        plan.num_ctx =
            Some(need.div_ceil(1024).saturating_mul(1024).clamp(2048, context.max(2048)).min(context));
        plan
    }
}

#[derive(Default)]
struct Plan {
    jobs: Vec<Job>,
    groups: Vec<Group>,
    /// Per job: (document, chunk).
    origin: Vec<(usize, usize)>,
    windowed: Vec<bool>,
    num_ctx: Option<usize>,
}

/// The window whose middle is nearest the chunk's middle.
fn nearest_window(windows: &[(usize, usize, String, usize)], chunk: &Chunk) -> usize {
    let mid = (chunk.start + chunk.end) / 2;
    (0..windows.len()).min_by_key(|&w| ((windows[w].0 + windows[w].1) / 2).abs_diff(mid)).unwrap_or(0)
}

fn heuristic_of(heuristic: &heuristic::HeuristicContexts, chunk: &Chunk) -> ChunkContext {
    ChunkContext {
        text: heuristic.context(chunk),
        kind: ContextKind::Heuristic,
        model: None,
        template: heuristic::HEURISTIC_VERSION.into(),
        windowed: false,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
