//! Enrichment benchmark: DataFactory's prefix-affine schedule against the
//! seed's round robin (a thread pool as wide as the servers' slots, chunk k of
//! each document to server k mod n), in one run, on two cases: the seed's (one
//! 150-chunk document, 6 servers) and a busy one (6 such documents at once).
//!
//! Two kinds of servers, both real HTTP servers on loopback:
//! - `sim`: servers that follow a latency model of llama3.1:8b served by
//!   llama.cpp/Ollama on one H100-class GPU each (see `GpuModel`), with
//!   per-slot prefix caches and the slot choice of llama-server/Ollama (the
//!   pinned slot, else the idle slot with the longest common prefix, else the
//!   first to free up). Time runs `SCALE` times faster than the model's; all
//!   figures are reported in model time.
//! - `real`: llama-server processes over the tiny random-weight model.
//!
//! Reported per case and schedule: prompt tokens the servers had to evaluate
//! (not from their cache), prompt tokens served from cache, and wall time.
//!
//! usage: enrich-bench sim | sim-shared | real LLAMA_SERVER MODEL.gguf [CHUNKS]

use anyhow::{bail, Context, Result};
use datafactory_core::config::{EndpointConfig, EnrichmentConfig};
use datafactory_core::{Chunk, Document, Format, Section};
use datafactory_enrich::{DocumentInput, Enricher, NoCache};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Model seconds per wall second in the simulation.
const SCALE: f64 = 10.0;

/// The latency model of one server: llama3.1:8b (Q4_K_M, Ollama's default)
/// under llama.cpp on one H100-class GPU. Assumed, not measured here (no GPU
/// and no model weights on these machines): llama.cpp's published CUDA
/// figures for 8B Q4 models on H100-class GPUs are about 10,000 prompt
/// tokens/s (pp512) and about 150 generated tokens/s for one sequence
/// (tg128); we take 8,000 tokens/s for prefill (long prompts are slower per
/// token) and 120 tokens/s per sequence.
#[derive(Clone, Copy)]
struct GpuModel {
    /// Prompt tokens per second; prefills of different slots share the GPU
    /// (one at a time, FIFO: compute-bound).
    prefill_tps: f64,
    /// Generated tokens per second per sequence; sequences on different slots
    /// decode together in one batch at that speed each (memory-bound).
    decode_tps: f64,
    /// Fixed cost per request (HTTP, scheduling, sampling set-up), seconds.
    overhead_s: f64,
}

const H100_LLAMA31_8B: GpuModel = GpuModel { prefill_tps: 8000.0, decode_tps: 120.0, overhead_s: 0.02 };

/// Characters per token in the simulated tokenizer (and in the endpoint
/// configuration, so DataFactory's estimate agrees).
const CHARS_PER_TOKEN: f64 = 4.0;

struct SimSlot {
    busy: bool,
    cached: Vec<char>,
    /// When it last took a request (Ollama's eviction picks the oldest).
    last_used: Option<Instant>,
}

/// How a simulated server's slots cache prompts.
#[derive(Clone, Copy, PartialEq)]
enum CacheKind {
    /// A prefix cache per slot (llama.cpp's llama-server, Ollama's default):
    /// a request goes to the idle slot with the longest common prefix.
    PerSlot,
    /// One prefix cache shared by all slots (vLLM's automatic prefix caching).
    Shared,
    /// Ollama with `OLLAMA_MULTIUSER_CACHE=1` (its runner's
    /// `findBestCacheSlot`): an idle slot holding exactly a prefix of the
    /// prompt is reused; otherwise the least recently used idle slot gets
    /// the longest common prefix found in any slot, busy or not, copied into
    /// it on the GPU (`KvCacheSeqCp`: a device copy, `KV_COPY_TPS`), and
    /// evaluates only the rest.
    Forking,
}

/// Tokens of KV cache copied per second on the GPU when Ollama forks a slot:
/// llama3.1:8b keeps 128 KiB of f16 keys and values per token (32 layers x
/// 8 KV heads x 128 x 2 x 2 bytes); an H100's ~3 TB/s copies (reads and
/// writes) about 10 million tokens a second; we take 2 million.
const KV_COPY_TPS: f64 = 2_000_000.0;

struct SimServer {
    cache: CacheKind,
    slots: Mutex<Vec<SimSlot>>,
    slot_free: Condvar,
    /// The GPU's prefill queue, first come first served (a ticket lock:
    /// `std::sync::Mutex` would let a late request overtake).
    gpu: Mutex<(u64, u64)>,
    gpu_turn: Condvar,
    model: GpuModel,
}

fn sleep_model(seconds: f64) {
    std::thread::sleep(Duration::from_secs_f64(seconds / SCALE));
}

fn tokens(chars: usize) -> u64 {
    (chars as f64 / CHARS_PER_TOKEN).ceil() as u64
}

impl SimServer {
    /// Serves one chat request; `prefilled` is called once the prompt is
    /// evaluated (where a streamed answer sends its first token).
    fn complete(&self, body: &serde_json::Value, prefilled: &mut dyn FnMut()) -> serde_json::Value {
        let prompt: Vec<char> = body["messages"][0]["content"].as_str().unwrap_or("").chars().collect();
        let max_tokens = body["max_tokens"].as_u64().unwrap_or(100);
        let pinned = body["id_slot"].as_u64().map(|s| s as usize);
        let arrived = Instant::now();
        TRACE_T0.get_or_init(|| arrived);
        // Take a slot: the pinned one, else the idle one sharing the longest prefix.
        let (slot, common, copied) = {
            let mut slots = self.slots.lock().unwrap();
            loop {
                if self.cache == CacheKind::Forking {
                    let longest = (0..slots.len())
                        .max_by_key(|&s| (common_prefix(&slots[s].cached, &prompt), std::cmp::Reverse(s)));
                    let Some(l) = longest else { break (0, 0, 0) };
                    let common = common_prefix(&slots[l].cached, &prompt);
                    if !slots[l].busy && common == slots[l].cached.len() && common > 0 {
                        slots[l].busy = true;
                        slots[l].last_used = Some(Instant::now());
                        break (l, common, 0);
                    }
                    let oldest =
                        (0..slots.len()).filter(|&s| !slots[s].busy).min_by_key(|&s| slots[s].last_used);
                    if let Some(o) = oldest {
                        slots[o].busy = true;
                        slots[o].last_used = Some(Instant::now());
                        let copied = if o == l { 0 } else { common };
                        break (o, common, copied);
                    }
                    slots = self.slot_free.wait(slots).unwrap();
                    continue;
                }
                let pick = match pinned {
                    Some(s) if s < slots.len() => (!slots[s].busy).then_some(s),
                    _ => (0..slots.len())
                        .filter(|&s| !slots[s].busy)
                        .max_by_key(|&s| (common_prefix(&slots[s].cached, &prompt), std::cmp::Reverse(s))),
                };
                if let Some(s) = pick {
                    slots[s].busy = true;
                    let common = if self.cache == CacheKind::Shared {
                        slots.iter().map(|x| common_prefix(&x.cached, &prompt)).max().unwrap_or(0)
                    } else {
                        common_prefix(&slots[s].cached, &prompt)
                    };
                    break (s, common, 0);
                }
                slots = self.slot_free.wait(slots).unwrap();
            }
        };
        let m = self.model;
        let total = tokens(prompt.len());
        let cached = tokens(common).min(total.saturating_sub(1));
        let evaluated = total - cached;
        let prefill_s = evaluated as f64 / m.prefill_tps;
        let copy_s = tokens(copied) as f64 / KV_COPY_TPS;
        {
            let mut q = self.gpu.lock().unwrap();
            let ticket = q.0;
            q.0 += 1;
            while q.1 != ticket {
                q = self.gpu_turn.wait(q).unwrap();
            }
            drop(q);
            sleep_model(m.overhead_s + copy_s + prefill_s);
            self.gpu.lock().unwrap().1 += 1;
            self.gpu_turn.notify_all();
        }
        if self.cache != CacheKind::PerSlot {
            // The prompt's keys and values are in the cache once evaluated:
            // a request arriving now can fork them (Ollama) or share their
            // blocks (vLLM registers each block as it is computed).
            self.slots.lock().unwrap()[slot].cached = prompt.clone();
        }
        prefilled();
        let decode_s = max_tokens as f64 / m.decode_tps;
        sleep_model(decode_s);
        {
            let mut slots = self.slots.lock().unwrap();
            slots[slot].cached = prompt;
            slots[slot].busy = false;
        }
        self.slot_free.notify_all();
        if std::env::var_os("ENRICH_BENCH_TRACE").is_some() {
            let t0 = *TRACE_T0.get().unwrap_or(&arrived);
            eprintln!(
                "trace server {:p} slot {slot} arrived {:.1} done {:.1} evaluated {evaluated}",
                self,
                arrived.duration_since(t0).as_secs_f64() * SCALE,
                t0.elapsed().as_secs_f64() * SCALE
            );
        }
        serde_json::json!({
            "choices": [{"index": 0, "finish_reason": "length",
                         "message": {"role": "assistant", "content": "context ".repeat(max_tokens as usize)}}],
            "usage": {"prompt_tokens": total, "completion_tokens": max_tokens,
                      "prompt_tokens_details": {"cached_tokens": cached}},
            "timings": {"cache_n": cached, "prompt_n": evaluated, "prompt_ms": prefill_s * 1e3,
                        "predicted_n": max_tokens, "predicted_ms": decode_s * 1e3}
        })
    }
}

static TRACE_T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

fn common_prefix(a: &[char], b: &[char]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Serves the simulated server on a loopback port; returns its URL.
fn start_sim(slots: usize, model: GpuModel, cache: CacheKind) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = Arc::new(SimServer {
        cache,
        slots: Mutex::new(
            (0..slots).map(|_| SimSlot { busy: false, cached: Vec::new(), last_used: None }).collect(),
        ),
        slot_free: Condvar::new(),
        gpu: Mutex::new((0, 0)),
        gpu_turn: Condvar::new(),
        model,
    });
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let server = server.clone();
            std::thread::spawn(move || {
                let _ = serve(stream, &server);
            });
        }
    });
    url
}

fn serve(stream: TcpStream, server: &SimServer) -> Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut stream = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body)?;
        let answer = if line.starts_with("POST /v1/chat/completions") {
            let request: serde_json::Value = serde_json::from_slice(&body)?;
            if request["stream"].as_bool() == Some(true) {
                stream_answer(&mut stream, server, &request)?;
                continue;
            }
            server.complete(&request, &mut || {})
        } else {
            serde_json::json!({"object": "list", "data": [{"id": "llama3.1:8b", "object": "model"}]})
        };
        let text = answer.to_string();
        // One write: answers in pieces would wait on the client's delayed
        // acknowledgement (40 ms of real time, 0.4 s of model time).
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        );
        stream.write_all(response.as_bytes())?;
    }
}

/// A streamed answer (OpenAI server-sent events, chunked): the first token
/// once the prompt is evaluated, the rest when the answer is done, then the
/// counts (`usage`, llama-server's `timings`) and `[DONE]`.
fn stream_answer(stream: &mut TcpStream, server: &SimServer, request: &serde_json::Value) -> Result<()> {
    fn chunk(stream: &mut TcpStream, event: &str) -> std::io::Result<()> {
        let data = format!("data: {event}\n\n");
        stream.write_all(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes())
    }
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )?;
    let mut sent: std::io::Result<()> = Ok(());
    let answer = server.complete(request, &mut || {
        let first = serde_json::json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": "context "}}]});
        sent = chunk(stream, &first.to_string());
    });
    sent?;
    let text = answer["choices"][0]["message"]["content"].as_str().unwrap_or("");
    let rest = text.strip_prefix("context ").unwrap_or(text);
    let delta =
        serde_json::json!({"choices": [{"index": 0, "delta": {"content": rest}, "finish_reason": "length"}]});
    chunk(stream, &delta.to_string())?;
    let counts = serde_json::json!({"choices": [], "usage": answer["usage"], "timings": answer["timings"]});
    chunk(stream, &counts.to_string())?;
    chunk(stream, "[DONE]")?;
    write!(stream, "0\r\n\r\n")?;
    Ok(())
}

/// A document of `chunks` chunks of about `chunk_chars` characters, in
/// sections of ten chunks.
fn document(seed: usize, chunks: usize, chunk_chars: usize) -> (Document, Vec<Chunk>) {
    const WORDS: [&str; 16] = [
        "revenue", "the", "quarter", "grew", "by", "percent", "report", "section", "table", "shows", "of",
        "and", "costs", "market", "region", "sales",
    ];
    let mut text = String::new();
    let mut out = Vec::new();
    let mut x = seed as u64 * 7919 + 1;
    let mut sections = Vec::new();
    for c in 0..chunks {
        if c % 10 == 0 {
            text.push_str(&format!("## Part {}\n\n", c / 10));
        }
        let start = text.chars().count();
        let mut piece = String::new();
        while piece.len() < chunk_chars {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            piece.push_str(WORDS[(x >> 33) as usize % WORDS.len()]);
            piece.push(' ');
        }
        let piece = format!("{}.", piece.trim_end());
        text.push_str(&piece);
        let end = text.chars().count();
        text.push_str("\n\n");
        sections.push(Section { heading_path: vec![format!("Part {}", c / 10)], start, end, page: None });
        out.push(Chunk {
            ordinal: c as u32,
            heading_path: vec![format!("Part {}", c / 10)],
            text: piece,
            start,
            end,
            page: None,
            token_count: 0,
            context: None,
        });
    }
    let doc = Document {
        title: format!("Annual report {seed}"),
        format: Format::Markdown,
        text,
        sections,
        metadata: Default::default(),
        external_id: None,
    };
    (doc, out)
}

struct Outcome {
    evaluated: u64,
    cached: u64,
    prompt: u64,
    seconds: f64,
    requests: u64,
}

fn run(
    endpoints: Vec<EndpointConfig>,
    schedule: &str,
    docs: &[(Document, Vec<Chunk>)],
    answer: u32,
) -> Outcome {
    let config = EnrichmentConfig {
        endpoints,
        schedule: schedule.into(),
        max_answer_tokens: answer,
        request_timeout_seconds: 600,
        ..Default::default()
    };
    let enricher = Enricher::from_config(&config);
    let inputs: Vec<_> =
        docs.iter().map(|(d, c)| DocumentInput { source: &d.title, document: d, chunks: c }).collect();
    let started = Instant::now();
    let (out, summary) = enricher.enrich(&inputs, &NoCache, &|_, _| {});
    let seconds = started.elapsed().as_secs_f64();
    if std::env::var_os("ENRICH_BENCH_DEBUG").is_some() {
        for e in &summary.endpoints {
            eprintln!(
                "{schedule} {} requests {} evaluated {} s {:.2}",
                e.url, e.requests, e.evaluated_tokens, e.seconds
            );
        }
    }
    assert!(out.iter().all(|o| o.complete), "every chunk got an LLM context");
    Outcome {
        evaluated: summary.endpoints.iter().map(|e| e.evaluated_tokens).sum(),
        cached: summary.endpoints.iter().map(|e| e.cached_tokens).sum(),
        prompt: summary.endpoints.iter().map(|e| e.prompt_tokens).sum(),
        requests: summary.endpoints.iter().map(|e| e.requests).sum(),
        seconds,
    }
}

fn report(case: &str, affine: &Outcome, rr: &Outcome, time_unit: f64) {
    for (name, o) in [("affine", affine), ("round_robin", rr)] {
        println!(
            "| {case} | {name} | {} | {} | {} | {:.1} |",
            o.requests,
            o.evaluated,
            o.cached,
            o.seconds * time_unit
        );
        let _ = o.prompt;
    }
    println!(
        "| {case} | affine / round robin | | {:.3} | | {:.3} |",
        affine.evaluated as f64 / rr.evaluated.max(1) as f64,
        affine.seconds / rr.seconds
    );
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("sim") => sim(CacheKind::PerSlot),
        Some("sim-shared") => sim(CacheKind::Shared),
        Some("sim-ollama-multiuser") => sim(CacheKind::Forking),
        Some("real") => {
            let server = args.get(1).context("real LLAMA_SERVER MODEL.gguf [CHUNKS]")?;
            let model = args.get(2).context("real LLAMA_SERVER MODEL.gguf [CHUNKS]")?;
            let chunks = args.get(3).map_or(Ok(60), |c| c.parse())?;
            real(server, model, chunks)
        }
        _ => bail!("usage: enrich-bench sim | sim-shared | sim-ollama-multiuser | real LLAMA_SERVER MODEL.gguf [CHUNKS]"),
    }
}

const SERVERS: usize = 6;

fn sim(cache: CacheKind) -> Result<()> {
    // Ollama's seed layout: 6 servers, OLLAMA_NUM_PARALLEL=4 slots each; a
    // vLLM-like server runs more sequences at once (16 here).
    let shared = cache == CacheKind::Shared;
    // ENRICH_BENCH_SLOTS: another OLLAMA_NUM_PARALLEL (slots per server).
    let slots = match std::env::var("ENRICH_BENCH_SLOTS") {
        Ok(n) => n.parse().context("ENRICH_BENCH_SLOTS")?,
        Err(_) if shared => 16,
        Err(_) => 4,
    };
    // Chunks of ~1,200 characters (~300 tokens): a 150-chunk document is
    // ~45,000 tokens, inside llama3.1's 128k context.
    let chunk_chars = 1200;
    let answer = 100;
    println!(
        "latency model: llama3.1:8b on one H100-class GPU per server: prefill {} tok/s (shared by the \
         server's slots), decode {} tok/s per sequence (batched across slots), {} s per request; \
         {SERVERS} servers x {slots} slots, {}; chunks ~{} tokens; answers {answer} tokens; time x{SCALE}",
        H100_LLAMA31_8B.prefill_tps,
        H100_LLAMA31_8B.decode_tps,
        H100_LLAMA31_8B.overhead_s,
        match cache {
            CacheKind::Shared => "one prefix cache shared by a server's slots (vLLM-like)",
            CacheKind::PerSlot => "a prefix cache per slot (llama.cpp/Ollama)",
            CacheKind::Forking =>
                "a prefix cache per slot, forked between slots (Ollama, OLLAMA_MULTIUSER_CACHE=1)",
        },
        chunk_chars / 4
    );
    println!();
    println!("| case | schedule | requests | prompt tokens evaluated | prompt tokens from cache | wall s (model time) |");
    println!("|---|---|---|---|---|---|");
    // ENRICH_BENCH_CASE: only `seed` or only `busy`.
    let only = std::env::var("ENRICH_BENCH_CASE").ok();
    for (case, n_docs) in [("seed: 1 x 150 chunks", 1), ("busy: 6 x 150 chunks", 6)] {
        if only.as_deref().is_some_and(|o| !case.starts_with(o)) {
            continue;
        }
        let docs: Vec<_> = (0..n_docs).map(|i| document(i, 150, chunk_chars)).collect();
        let mut outcomes = Vec::new();
        for schedule in ["affine", "round_robin"] {
            let endpoints = (0..SERVERS)
                .map(|_| EndpointConfig {
                    kind: "openai".into(),
                    url: start_sim(slots, H100_LLAMA31_8B, cache),
                    model: "llama3.1:8b".into(),
                    slots,
                    context_tokens: 131072,
                    // llama-server can pin a slot; Ollama and vLLM cannot.
                    pin_slots: cache == CacheKind::PerSlot,
                    // A warmed document reaches the other slots at no prefill cost.
                    shared_prefix_cache: cache != CacheKind::PerSlot,
                    chars_per_token: CHARS_PER_TOKEN,
                    ..Default::default()
                })
                .collect();
            outcomes.push(run(endpoints, schedule, &docs, answer));
        }
        report(case, &outcomes[0], &outcomes[1], SCALE);
    }
    Ok(())
}

struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn real(binary: &str, model: &str, chunks: usize) -> Result<()> {
    let slots = 2;
    let chunk_chars = 200;
    let answer = 16;
    // Extra llama-server flags, e.g. `--cache-ram 0` (no host-memory prompt cache).
    let extra = std::env::var("ENRICH_BENCH_SERVER_ARGS").unwrap_or_default();
    println!(
        "real llama-servers (tiny random-weight llama, CPU, 1 thread each{}): {SERVERS} servers x {slots} \
         slots; {chunks} chunks of ~{chunk_chars} characters per document; answers {answer} tokens",
        if extra.is_empty() { String::new() } else { format!(", {extra}") }
    );
    println!();
    println!("| case | schedule | requests | prompt tokens evaluated | prompt tokens from cache | wall s |");
    println!("|---|---|---|---|---|---|");
    for (case, n_docs) in
        [(format!("seed: 1 x {chunks} chunks"), 1), (format!("busy: 6 x {chunks} chunks"), 6)]
    {
        let docs: Vec<_> = (0..n_docs).map(|i| document(i, chunks, chunk_chars)).collect();
        let mut outcomes = Vec::new();
        for schedule in ["affine", "round_robin"] {
            let mut servers = Vec::new();
            let mut endpoints = Vec::new();
            for _ in 0..SERVERS {
                let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
                let child = Command::new(binary)
                    .args(["-m", model, "--host", "127.0.0.1", "--port", &port.to_string()])
                    .args(["-np", &slots.to_string(), "-c", &(slots * 32768).to_string()])
                    .args(["-t", "1", "-tb", "1", "--no-webui"])
                    .args(extra.split_whitespace())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("starting llama-server")?;
                servers.push(Server(child));
                let url = format!("http://127.0.0.1:{port}");
                let deadline = Instant::now() + Duration::from_secs(60);
                while ureq::get(&format!("{url}/health")).call().is_err() {
                    if Instant::now() > deadline {
                        bail!("{url} did not start");
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                let mut e = EndpointConfig {
                    kind: "openai".into(),
                    url,
                    model: "tiny".into(),
                    slots,
                    context_tokens: 32768,
                    pin_slots: true,
                    tokenize: true,
                    ..Default::default()
                };
                e.extra.insert("logit_bias".into(), serde_json::json!([[2, false], [4, false]]));
                endpoints.push(e);
            }
            outcomes.push(run(endpoints, schedule, &docs, answer));
            drop(servers);
        }
        report(&case, &outcomes[0], &outcomes[1], 1.0);
    }
    Ok(())
}
