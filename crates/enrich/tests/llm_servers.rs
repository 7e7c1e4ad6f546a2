//! The enrichment stage against real LLM servers: llama-server processes
//! over a tiny random-weight model, an Ollama-compatible front over one, and
//! faulty HTTP servers. See `common/mod.rs` for what they are and how the
//! test finds them.

mod common;

use common::{faulty_server, llama_server, ollama_front, openai_endpoint, tools, Fault};
use datafactory_core::config::{EndpointConfig, EnrichmentConfig};
use datafactory_core::{Chunk, ContextKind, Document, Format, Section};
use datafactory_enrich::client::{Client, Request};
use datafactory_enrich::{CacheKey, CallRecord, ContextCache, DocumentInput, Enricher, NoCache};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A document cut into chunks of about `chunk_words` words.
fn document(seed: u64, sections: usize, words: usize, chunk_words: usize) -> (Document, Vec<Chunk>) {
    let text = common::document_text(seed, sections, words);
    let chars: Vec<char> = text.chars().collect();
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut count = 0;
    for (i, c) in chars.iter().enumerate() {
        if c.is_whitespace() {
            count += 1;
        }
        if count >= chunk_words || i + 1 == chars.len() {
            let end = i + 1;
            let piece: String = chars[start..end].iter().collect();
            if !piece.trim().is_empty() {
                chunks.push(Chunk {
                    ordinal: chunks.len() as u32,
                    heading_path: vec![format!("Report {seed}")],
                    text: piece,
                    start,
                    end,
                    page: None,
                    token_count: count as u32,
                    context: None,
                });
            }
            start = end;
            count = 0;
        }
    }
    let doc = Document {
        title: format!("Report {seed}"),
        format: Format::Markdown,
        sections: vec![Section { heading_path: vec![], start: 0, end: chars.len(), page: None }],
        text,
        metadata: Default::default(),
        external_id: None,
    };
    (doc, chunks)
}

fn config(endpoints: Vec<EndpointConfig>, schedule: &str) -> EnrichmentConfig {
    EnrichmentConfig {
        endpoints,
        schedule: schedule.into(),
        max_answer_tokens: 16,
        request_timeout_seconds: 30,
        backoff_ms: 50,
        down_seconds: 60,
        ..Default::default()
    }
}

/// A cache in memory that counts what it was given.
#[derive(Default)]
struct MemoryCache {
    map: Mutex<HashMap<CacheKey, String>>,
    puts: AtomicUsize,
}

impl ContextCache for MemoryCache {
    fn get(&self, key: &CacheKey) -> Option<String> {
        self.map.lock().unwrap().get(key).cloned()
    }
    fn put(&self, key: &CacheKey, context: &str, _: &CallRecord) {
        self.puts.fetch_add(1, Ordering::SeqCst);
        let old = self.map.lock().unwrap().insert(key.clone(), context.to_string());
        assert!(old.is_none(), "an answer came twice for {key:?}");
    }
}

#[test]
fn openai_client_reports_the_prefix_cache_of_a_pinned_slot() {
    let _turn = common::serial();
    let Some(t) = tools() else { return };
    let server = llama_server(&t, 2, 4096);
    let e = openai_endpoint(&server.url, 2, 4096);
    let client = Client::new(&e, "30m", Duration::from_secs(5), Duration::from_secs(30));
    client.health().unwrap();
    let prefix = common::document_text(1, 2, 400);
    let ask = |chunk: &str, slot| {
        client
            .complete(&Request {
                prompt: &format!("{prefix}\n<chunk>{chunk}</chunk>"),
                max_tokens: 12,
                temperature: 0.0,
                slot: Some(slot),
                num_ctx: None,
            })
            .unwrap()
    };
    let first = ask("one", 0);
    assert_eq!(first.cached_tokens, Some(0));
    assert_eq!(first.completion_tokens, Some(12), "logit_bias against the end tokens forces full answers");
    let n = first.prompt_tokens.unwrap();
    assert!(n > 1000, "{n}");
    // The same slot holds the prefix; another slot does not.
    let warm = ask("two", 0);
    assert_eq!(warm.cached_tokens.unwrap() + warm.evaluated_tokens.unwrap(), warm.prompt_tokens.unwrap());
    assert!(warm.cached_tokens.unwrap() > n - 40, "{warm:?}");
    assert!(warm.evaluated_tokens.unwrap() < 40, "{warm:?}");
    let cold = ask("three", 1);
    assert_eq!(cold.cached_tokens, Some(0), "{cold:?}");
    assert!(client.tokenize("the document").unwrap() > 0);

    // Streamed (server-sent events): the same answer at temperature 0, the
    // counts from the last chunk, and the first piece announced before the
    // answer is complete.
    let request = Request {
        prompt: &format!("{prefix}\n<chunk>two</chunk>"),
        max_tokens: 12,
        temperature: 0.0,
        slot: Some(0),
        num_ctx: None,
    };
    let mut first_token = Vec::new();
    let streamed = client.complete_streaming(&request, &mut || first_token.push(Instant::now())).unwrap();
    let done = Instant::now();
    assert_eq!(first_token.len(), 1);
    assert!(first_token[0] < done);
    assert_eq!(streamed.text, warm.text);
    assert_eq!(streamed.completion_tokens, Some(12));
    assert_eq!(streamed.prompt_tokens, warm.prompt_tokens);
    assert!(streamed.cached_tokens.unwrap() > n - 40, "the slot still holds the prefix: {streamed:?}");
    assert!(streamed.prompt_ms.is_some() && streamed.decode_ms.is_some(), "{streamed:?}");
}

/// Runs one enrichment of `docs` on fresh servers; returns (prompt tokens
/// evaluated, prompt tokens served from cache, summary).
fn run_on_fresh_servers(
    docs: &[(Document, Vec<Chunk>)],
    servers: usize,
    slots: usize,
    schedule: &str,
) -> (u64, u64, datafactory_enrich::EnrichmentSummary) {
    let t = tools().unwrap();
    let procs: Vec<_> = (0..servers).map(|_| llama_server(&t, slots, 16384)).collect();
    let endpoints = procs.iter().map(|p| openai_endpoint(&p.url, slots, 16384)).collect();
    let enricher = Enricher::from_config(&config(endpoints, schedule));
    let inputs: Vec<_> =
        docs.iter().map(|(d, c)| DocumentInput { source: &d.title, document: d, chunks: c }).collect();
    let cache = MemoryCache::default();
    let (out, summary) = enricher.enrich(&inputs, &cache, &|_, _| {});
    for (o, (_, chunks)) in out.iter().zip(docs) {
        assert!(o.complete);
        assert_eq!(o.contexts.len(), chunks.len());
        assert!(o.contexts.iter().all(|c| c.kind == ContextKind::Llm && !c.windowed));
    }
    let total: usize = docs.iter().map(|d| d.1.len()).sum();
    assert_eq!(summary.chunks.llm, total);
    assert_eq!(cache.puts.load(Ordering::SeqCst), total);
    let evaluated = summary.endpoints.iter().map(|e| e.evaluated_tokens).sum();
    let cached = summary.endpoints.iter().map(|e| e.cached_tokens).sum();
    (evaluated, cached, summary)
}

#[test]
fn affine_schedule_hits_the_prefix_cache_and_round_robin_does_not() {
    let _turn = common::serial();
    if tools().is_none() {
        return;
    }
    // Four documents of ~25 chunks at once over 2 servers with 2 slots each.
    let docs: Vec<_> = (0..4).map(|i| document(10 + i, 2, 700, 28)).collect();
    let (affine_eval, affine_cached, summary) = run_on_fresh_servers(&docs, 2, 2, "affine");
    let (rr_eval, rr_cached, _) = run_on_fresh_servers(&docs, 2, 2, "round_robin");
    eprintln!("affine: evaluated {affine_eval}, cached {affine_cached}; round robin: evaluated {rr_eval}, cached {rr_cached}");
    eprintln!("{}", serde_json::to_string_pretty(&summary).unwrap());
    // Every document kept on few slots: most of the prompt came from the
    // cache (llama-server's timings.cache_n against timings.prompt_n).
    assert!(affine_cached > 4 * affine_eval, "affine: cached {affine_cached}, evaluated {affine_eval}");
    // Round robin over documents at once thrashes the slots' caches.
    assert!(affine_eval < rr_eval, "affine evaluated {affine_eval}, round robin {rr_eval}");
    // Different documents went to different servers.
    assert!(summary.endpoints.iter().all(|e| e.requests > 0), "{summary:?}");
}

#[test]
fn a_document_longer_than_the_context_is_windowed_not_truncated() {
    let _turn = common::serial();
    let Some(t) = tools() else { return };
    // 2,048 tokens per slot; the document is several times that.
    let server = llama_server(&t, 1, 2048);
    let enricher = Enricher::from_config(&config(vec![openai_endpoint(&server.url, 1, 2048)], "affine"));
    let (doc, chunks) = document(3, 4, 1500, 40);
    let (out, summary) = enricher.enrich(
        &[DocumentInput { source: "long", document: &doc, chunks: &chunks }],
        &NoCache,
        &|_, _| {},
    );
    assert!(out[0].complete, "{summary:?}");
    assert!(out[0].contexts.iter().all(|c| c.kind == ContextKind::Llm && c.windowed));
    assert_eq!(summary.chunks.windowed, chunks.len());
    assert_eq!(summary.endpoints[0].failures, 0, "no request was refused as too long: {summary:?}");
}

#[test]
fn servers_killed_mid_run_do_not_fail_the_run() {
    let _turn = common::serial();
    let Some(t) = tools() else { return };
    let mut procs: Vec<_> = (0..3).map(|_| llama_server(&t, 2, 16384)).collect();
    let endpoints = procs.iter().map(|p| openai_endpoint(&p.url, 2, 16384)).collect();
    let mut cfg = config(endpoints, "affine");
    cfg.max_answer_tokens = 32;
    let enricher = Enricher::from_config(&cfg);
    let docs: Vec<_> = (0..3).map(|i| document(20 + i, 2, 700, 15)).collect();
    let inputs: Vec<_> =
        docs.iter().map(|(d, c)| DocumentInput { source: &d.title, document: d, chunks: c }).collect();
    let total: usize = docs.iter().map(|d| d.1.len()).sum();
    let cache = MemoryCache::default();
    let victims: Mutex<Vec<_>> = Mutex::new(procs.drain(1..).collect());
    let done = AtomicUsize::new(0);
    let (out, summary) = enricher.enrich(&inputs, &cache, &|n, _| {
        // A third of the way in, two of the three servers die.
        if done.fetch_add(n, Ordering::SeqCst) + n >= total / 3 {
            for mut p in victims.lock().unwrap().drain(..) {
                p.kill();
            }
        }
    });
    assert!(victims.lock().unwrap().is_empty(), "the servers were killed");
    assert!(out.iter().all(|o| o.complete), "{summary:#?}");
    assert_eq!(summary.chunks.llm, total);
    assert_eq!(summary.chunks.fallback, 0);
    // Never asked twice: one answer kept per chunk.
    assert_eq!(cache.puts.load(Ordering::SeqCst), total);
    assert!(summary.endpoints[1].failures + summary.endpoints[2].failures > 0, "{summary:#?}");
    assert!(!summary.endpoints[1].up && !summary.endpoints[2].up);
    drop(procs);
}

#[test]
fn http_500_and_silent_servers_are_taken_out() {
    let _turn = common::serial();
    let Some(t) = tools() else { return };
    let good = llama_server(&t, 2, 16384);
    let failing = openai_endpoint(&faulty_server(Fault::Status500), 2, 16384);
    let silent = openai_endpoint(&faulty_server(Fault::Silent), 2, 16384);
    let mut cfg = config(vec![failing, silent, openai_endpoint(&good.url, 2, 16384)], "affine");
    // Long enough for the real server on a loaded 2-core machine (at 2 s it
    // timed out there once, and its chunks fell back); the silent server is
    // left out by the health check, whatever the timeout.
    cfg.request_timeout_seconds = 10;
    cfg.failures_before_down = 2;
    let enricher = Enricher::from_config(&cfg);
    // The faulty servers pass no health check: they start out of the pool.
    let failed = enricher.check_endpoints();
    assert_eq!(failed.len(), 2, "{failed:?}");
    let (doc, chunks) = document(30, 2, 400, 20);
    let (out, summary) = enricher.enrich(
        &[DocumentInput { source: "d", document: &doc, chunks: &chunks }],
        &NoCache,
        &|_, _| {},
    );
    assert!(out[0].complete, "{summary:#?}");
    assert_eq!(summary.endpoints[2].requests as usize, chunks.len());
    assert_eq!(summary.endpoints[0].requests + summary.endpoints[1].requests, 0);
}

#[test]
fn failing_servers_found_mid_run_are_retried_elsewhere() {
    let _turn = common::serial();
    let Some(t) = tools() else { return };
    let good = llama_server(&t, 1, 16384);
    // These pass the health check but fail (500) or hang on completions.
    let failing = openai_endpoint(&faulty_server(Fault::FailCompletions), 1, 16384);
    let hanging = openai_endpoint(&faulty_server(Fault::HangCompletions), 1, 16384);
    for schedule in ["affine", "round_robin"] {
        retried_elsewhere(&good.url, &failing, &hanging, schedule);
    }
}

fn retried_elsewhere(good: &str, failing: &EndpointConfig, hanging: &EndpointConfig, schedule: &str) {
    let mut cfg = config(vec![failing.clone(), hanging.clone(), openai_endpoint(good, 1, 16384)], schedule);
    cfg.request_timeout_seconds = 2;
    cfg.failures_before_down = 2;
    cfg.attempts = 4;
    let enricher = Enricher::from_config(&cfg);
    let (doc, chunks) = document(31, 1, 200, 20);
    let (out, summary) = enricher.enrich(
        &[DocumentInput { source: "d", document: &doc, chunks: &chunks }],
        &NoCache,
        &|_, _| {},
    );
    assert!(out[0].complete, "{summary:#?}");
    assert_eq!(summary.chunks.llm, chunks.len());
    assert!(summary.endpoints[0].failures >= 1 && summary.endpoints[1].failures >= 1, "{summary:#?}");
}

#[test]
fn without_any_server_chunks_get_heuristic_contexts() {
    let _turn = common::serial();
    if tools().is_none() {
        return;
    }
    let mut cfg = config(vec![openai_endpoint(&faulty_server(Fault::Status500), 1, 4096)], "affine");
    cfg.attempts = 2;
    let enricher = Enricher::from_config(&cfg);
    let (doc, chunks) = document(40, 2, 200, 20);
    let (out, summary) = enricher.enrich(
        &[DocumentInput { source: "d", document: &doc, chunks: &chunks }],
        &NoCache,
        &|_, _| {},
    );
    assert!(!out[0].complete);
    assert!(out[0].contexts.iter().all(|c| c.kind == ContextKind::Heuristic && c.text.contains("Report 40")));
    assert_eq!(summary.chunks.fallback, chunks.len());
}

#[test]
fn ollama_api_through_a_compatible_front() {
    let _turn = common::serial();
    let Some(t) = tools() else { return };
    let backend = llama_server(&t, 2, 8192);
    let fronts: Vec<_> = (0..2).map(|_| ollama_front(&backend.url, "tiny-llama:latest")).collect();
    let endpoint = |url: &str| {
        let mut e = EndpointConfig {
            kind: "ollama".into(),
            url: url.into(),
            model: "tiny-llama".into(),
            slots: 1,
            context_tokens: 8192,
            // Ollama has no tokenizer route: the tiny model's byte tokens are
            // about 1.4 per character (0.7 characters per token), given here.
            chars_per_token: 0.6,
            ..Default::default()
        };
        e.extra.insert(
            "logit_bias".into(),
            serde_json::json!(common::EOG_IDS
                .iter()
                .map(|&i| serde_json::json!([i, false]))
                .collect::<Vec<_>>()),
        );
        e
    };
    let client =
        Client::new(&endpoint(&fronts[0].url), "30m", Duration::from_secs(5), Duration::from_secs(30));
    client.health().unwrap();
    assert_eq!(client.tags().unwrap(), ["tiny-llama:latest"]);
    assert!(client.loaded().unwrap().is_empty());
    let c = client
        .complete(&Request {
            prompt: "the document",
            max_tokens: 8,
            temperature: 0.0,
            slot: None,
            num_ctx: Some(2048),
        })
        .unwrap();
    assert_eq!(c.completion_tokens, Some(8));
    assert!(c.evaluated_tokens.unwrap() > 0 && c.prompt_ms.is_some());
    assert_eq!(client.loaded().unwrap(), ["tiny-llama:latest"], "keep_alive keeps it loaded");
    // Streamed: lines of JSON, the last with the counts.
    let mut pieces = 0;
    let streamed = client
        .complete_streaming(
            &Request {
                prompt: "the document",
                max_tokens: 8,
                temperature: 0.0,
                slot: None,
                num_ctx: Some(2048),
            },
            &mut || pieces += 1,
        )
        .unwrap();
    assert_eq!(pieces, 1, "the first piece is announced once");
    assert_eq!(streamed.text, c.text, "temperature 0: the same answer");
    assert_eq!(streamed.completion_tokens, Some(8));
    assert!(streamed.evaluated_tokens.is_some() && streamed.prompt_ms.is_some(), "{streamed:?}");
    client.unload().unwrap();
    assert!(client.loaded().unwrap().is_empty(), "keep_alive 0 unloads it");

    // The whole stage over two Ollama endpoints: num_ctx fits every prompt
    // (the front refuses one that does not fit).
    let cfg = config(fronts.iter().map(|f| endpoint(&f.url)).collect(), "affine");
    let enricher = Enricher::from_config(&cfg);
    let docs: Vec<_> = (0..2).map(|i| document(50 + i, 2, 600, 30)).collect();
    let inputs: Vec<_> =
        docs.iter().map(|(d, c)| DocumentInput { source: &d.title, document: d, chunks: c }).collect();
    let (out, summary) = enricher.enrich(&inputs, &NoCache, &|_, _| {});
    assert!(out.iter().all(|o| o.complete), "{summary:#?}");
    assert_eq!(summary.chunks.llm, docs.iter().map(|d| d.1.len()).sum::<usize>());
    assert!(summary.endpoints.iter().all(|e| e.failures == 0 && e.evaluated_tokens > 0), "{summary:#?}");

    // A changed num_ctx makes Ollama reload the model: a later run of a
    // short document asks each server for the num_ctx it already has, where
    // a fresh enricher would ask for less.
    let num_ctx = |f: &common::Process| -> Vec<u64> {
        ureq::get(&format!("{}/test/num_ctx", f.url)).call().unwrap().into_json().unwrap()
    };
    let seen = || -> Vec<Vec<u64>> { fronts.iter().map(num_ctx).collect() };
    // Requests since `then`, of every front.
    let since = |then: &[Vec<u64>], now: &[Vec<u64>]| -> Vec<u64> {
        then.iter().zip(now).flat_map(|(t, n)| n[t.len()..].to_vec()).collect()
    };
    let before = seen();
    // The stage's run (the two single calls above asked for 2,048).
    let run: Vec<u64> = before[0][2..].iter().chain(&before[1]).copied().collect();
    let long = run[0];
    assert!(long > 2048 && run.iter().all(|&n| n == long), "one num_ctx per run: {run:?}");
    let short = document(70, 1, 60, 30);
    let input = [DocumentInput { source: "s", document: &short.0, chunks: &short.1 }];
    let (out, _) = enricher.enrich(&input, &NoCache, &|_, _| {});
    assert!(out[0].complete);
    let middle = seen();
    let again = since(&before, &middle);
    assert!(!again.is_empty() && again.iter().all(|&n| n == long), "{again:?} after {long}");
    let (out, _) = Enricher::from_config(&cfg).enrich(&input, &NoCache, &|_, _| {});
    assert!(out[0].complete);
    let fresh = since(&middle, &seen());
    assert!(!fresh.is_empty() && fresh.iter().all(|&n| n < long), "a fresh enricher: {fresh:?}");
}

/// On servers that share one prefix cache across their sequences (vLLM,
/// Ollama with `OLLAMA_MULTIUSER_CACHE`), a document's first request on a
/// server warms it: it is streamed, and the server's other slots start on the
/// document as soon as its first token arrives (the prompt is evaluated by
/// then), not when its whole answer is done. Each server evaluates the
/// document once, and the chunks are spread evenly over the servers.
#[test]
fn the_warming_request_streams_and_the_other_slots_join_at_its_first_token() {
    let prefill = Duration::from_millis(400);
    let servers: Vec<_> =
        (0..2).map(|_| common::SharedCacheServer::start(prefill, Duration::from_millis(1500))).collect();
    let endpoints = servers
        .iter()
        .map(|s| EndpointConfig {
            kind: "openai".into(),
            url: s.url.clone(),
            model: "tiny".into(),
            slots: 4,
            context_tokens: 32768,
            shared_prefix_cache: true,
            chars_per_token: 4.0,
            ..Default::default()
        })
        .collect();
    let enricher = Enricher::from_config(&config(endpoints, "affine"));
    let (doc, chunks) = document(60, 4, 2400, 60);
    assert!(chunks.len() >= 30, "{}", chunks.len());
    let (out, summary) = enricher.enrich(
        &[DocumentInput { source: "d", document: &doc, chunks: &chunks }],
        &NoCache,
        &|_, _| {},
    );
    assert!(out[0].complete, "{summary:#?}");
    let mut total = 0;
    for server in &servers {
        let log = server.log();
        total += log.len();
        let warming: Vec<_> = log.iter().filter(|r| r.streamed).collect();
        assert_eq!(warming.len(), 1, "one warming request per server: {log:#?}");
        let w = warming[0];
        let (first_token, finished) = (w.first_token.unwrap(), w.finished);
        for r in log.iter().filter(|r| !r.streamed) {
            assert!(r.arrived >= first_token, "a request came before the prefix was evaluated: {log:#?}");
        }
        let joined = log.iter().filter(|r| !r.streamed && r.arrived < finished).count();
        assert!(joined >= 3, "the other slots joined while the warming answer was decoding: {log:#?}");
    }
    assert_eq!(total, chunks.len());
    let per: Vec<usize> = servers.iter().map(|s| s.log().len()).collect();
    assert!(per.iter().all(|&n| n.abs_diff(chunks.len() / 2) <= 2), "spread evenly: {per:?}");
}
