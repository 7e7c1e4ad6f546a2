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
use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hasher};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
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
    /// Tokens of keys and values a `Shared` (vLLM-like) server keeps.
    kv_tokens: u64,
}

/// KV cache of a vLLM server for llama3.1:8b on an 80 GB H100, assumed:
/// vLLM takes 90% of the GPU's memory (`--gpu-memory-utilization` 0.9:
/// 72 GB), less 16 GB of bf16 weights and ~4 GB of activations and CUDA
/// graphs, leaves ~52 GB for keys and values, at 128 KiB a token (32 layers
/// x 8 KV heads x 128 x 2 x 2 bytes): ~400,000 tokens (25,000 blocks).
const H100_LLAMA31_8B: GpuModel =
    GpuModel { prefill_tps: 8000.0, decode_tps: 120.0, overhead_s: 0.02, kv_tokens: 400_000 };

impl GpuModel {
    /// `ENRICH_BENCH_PREFILL_TPS`, `ENRICH_BENCH_DECODE_TPS`,
    /// `ENRICH_BENCH_OVERHEAD_S` replace the model's rates (e.g. with a
    /// calibration by bench/llama_rates.py); true if any did.
    fn with_env(self) -> Result<(GpuModel, bool)> {
        let mut m = self;
        let mut changed = false;
        for (name, field) in [
            ("ENRICH_BENCH_PREFILL_TPS", &mut m.prefill_tps),
            ("ENRICH_BENCH_DECODE_TPS", &mut m.decode_tps),
            ("ENRICH_BENCH_OVERHEAD_S", &mut m.overhead_s),
        ] {
            if let Ok(v) = std::env::var(name) {
                let x: f64 = v.parse().with_context(|| format!("{name}={v:?} is not a number"))?;
                if !(x.is_finite() && x >= 0.0) || (x == 0.0 && name != "ENRICH_BENCH_OVERHEAD_S") {
                    bail!("{name}={v:?} must be a positive number");
                }
                *field = x;
                changed = true;
            }
        }
        Ok((m, changed))
    }
}

/// Characters per token in the simulated tokenizer (and in the endpoint
/// configuration, so DataFactory's estimate agrees): 4, or
/// `ENRICH_BENCH_CHARS_PER_TOKEN` (read once, in `sim`).
static CHARS_PER_TOKEN: std::sync::OnceLock<f64> = std::sync::OnceLock::new();

fn chars_per_token() -> f64 {
    *CHARS_PER_TOKEN.get_or_init(|| 4.0)
}

/// An environment variable's value, or `default` when it is not set.
fn env_or<T: std::str::FromStr>(name: &str, default: T) -> Result<T> {
    match std::env::var(name) {
        Ok(v) => v.parse().map_err(|_| anyhow::anyhow!("{name}={v:?} is not a valid number")),
        Err(_) => Ok(default),
    }
}

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
    /// One prefix cache shared by all slots: vLLM's automatic prefix caching
    /// (see `BlockCache` and `SimServer::complete_shared`).
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
    /// The KV blocks of a `Shared` server (locked inside `slots`).
    blocks: Mutex<BlockCache>,
    /// Requests that have arrived and not yet started their prefill.
    waiting: AtomicUsize,
    /// Requests that have started their prefill.
    admitted: AtomicUsize,
    /// While true, a `Shared` server's admitted request waits before its
    /// prefill: tests queue requests behind it this way, without timing.
    hold: (Mutex<bool>, Condvar),
}

fn sleep_model(seconds: f64) {
    std::thread::sleep(Duration::from_secs_f64(seconds / SCALE));
}

fn tokens(chars: usize) -> u64 {
    (chars as f64 / chars_per_token()).ceil() as u64
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
        if self.cache == CacheKind::Shared {
            return self.complete_shared(prompt, max_tokens, arrived, prefilled);
        }
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
                    break (s, common_prefix(&slots[s].cached, &prompt), 0);
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
        if self.cache == CacheKind::Forking {
            // The prompt's keys and values are in the slot once evaluated: a
            // request arriving now can fork them.
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
        self.trace(slot, arrived, evaluated);
        answer(total, cached, max_tokens, prefill_s, decode_s)
    }

    fn trace(&self, slot: usize, arrived: Instant, evaluated: u64) {
        if std::env::var_os("ENRICH_BENCH_TRACE").is_some() {
            let t0 = *TRACE_T0.get().unwrap_or(&arrived);
            eprintln!(
                "trace server {:p} slot {slot} arrived {:.1} done {:.1} evaluated {evaluated}",
                self,
                arrived.duration_since(t0).as_secs_f64() * SCALE,
                t0.elapsed().as_secs_f64() * SCALE
            );
        }
    }

    /// A request on a server with vLLM's automatic prefix caching, scheduled
    /// as vLLM's (v1) scheduler does:
    /// - first come, first served: requests take a ticket as they arrive, and
    ///   the head of the queue is admitted once a sequence (slot) and enough
    ///   free KV blocks are there; the requests behind it wait (the scheduler
    ///   stops at a head it cannot admit);
    /// - the prefix cache is looked up **at admission**
    ///   (`get_computed_blocks`), not on arrival: the prefills run one at a
    ///   time (a long prompt takes each step's whole token budget, and the
    ///   scheduler admits a waiting request only with budget left), so a
    ///   request queued behind a same-document request finds that request's
    ///   blocks. vLLM registers a block in the cache as soon as it is
    ///   scheduled to be computed (`allocate_slots` caches full blocks, so
    ///   requests of the same batch can share them); here no other request is
    ///   admitted while a prefill runs, so that is the same as registering it
    ///   when its prefill is done;
    /// - see `BlockCache` for blocks, hits and eviction.
    fn complete_shared(
        &self,
        prompt: Vec<char>,
        max_tokens: u64,
        arrived: Instant,
        prefilled: &mut dyn FnMut(),
    ) -> serde_json::Value {
        let m = self.model;
        let total = tokens(prompt.len());
        let hashes = block_hashes(&prompt);
        let max_hit = (total.saturating_sub(1) / BLOCK_TOKENS) as usize;
        let needed = (total + max_tokens).div_ceil(BLOCK_TOKENS) as usize;
        if needed > self.blocks.lock().unwrap().capacity {
            return serde_json::json!({"error": {"message": format!(
                "the prompt and answer need {needed} KV blocks, more than the server's {}",
                self.blocks.lock().unwrap().capacity)}});
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let mut q = self.gpu.lock().unwrap();
        let ticket = q.0;
        q.0 += 1;
        while q.1 != ticket {
            q = self.gpu_turn.wait(q).unwrap();
        }
        drop(q);
        // Admission: a free sequence and the blocks for the whole request.
        let (slot, hit, held) = {
            let mut slots = self.slots.lock().unwrap();
            loop {
                if let Some(s) = (0..slots.len()).find(|&s| !slots[s].busy) {
                    let mut blocks = self.blocks.lock().unwrap();
                    let hit = blocks.longest_hit(&hashes, max_hit);
                    if let Some(held) = blocks.admit(&hashes, hit, needed) {
                        slots[s].busy = true;
                        break (s, hit, held);
                    }
                }
                slots = self.slot_free.wait(slots).unwrap();
            }
        };
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        self.admitted.fetch_add(1, Ordering::SeqCst);
        {
            let mut held = self.hold.0.lock().unwrap();
            while *held {
                held = self.hold.1.wait(held).unwrap();
            }
        }
        let cached = hit as u64 * BLOCK_TOKENS;
        let evaluated = total - cached;
        let prefill_s = evaluated as f64 / m.prefill_tps;
        sleep_model(m.overhead_s + prefill_s);
        self.gpu.lock().unwrap().1 += 1;
        self.gpu_turn.notify_all();
        prefilled();
        let decode_s = max_tokens as f64 / m.decode_tps;
        sleep_model(decode_s);
        {
            let mut slots = self.slots.lock().unwrap();
            self.blocks.lock().unwrap().release(held);
            slots[slot].busy = false;
        }
        self.slot_free.notify_all();
        self.trace(slot, arrived, evaluated);
        answer(total, cached, max_tokens, prefill_s, decode_s)
    }
}

/// The OpenAI-style answer with llama-server's `timings` beside `usage`.
fn answer(total: u64, cached: u64, max_tokens: u64, prefill_s: f64, decode_s: f64) -> serde_json::Value {
    let evaluated = total - cached;
    serde_json::json!({
            "choices": [{"index": 0, "finish_reason": "length",
                         "message": {"role": "assistant", "content": "context ".repeat(max_tokens as usize)}}],
            "usage": {"prompt_tokens": total, "completion_tokens": max_tokens,
                      "prompt_tokens_details": {"cached_tokens": cached}},
            "timings": {"cache_n": cached, "prompt_n": evaluated, "prompt_ms": prefill_s * 1e3,
                        "predicted_n": max_tokens, "predicted_ms": decode_s * 1e3}
    })
}

static TRACE_T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// Tokens per KV block (vLLM's default `--block-size`): the prefix cache
/// hashes, shares and evicts whole blocks.
const BLOCK_TOKENS: u64 = 16;

/// The hashes of a prompt's whole blocks, each over its tokens and the hash
/// of the block before it (so a block's hash names the whole prefix up to
/// its end, as vLLM's do). A simulated token is `chars_per_token()` characters.
fn block_hashes(prompt: &[char]) -> Vec<u64> {
    let chars = ((BLOCK_TOKENS as f64 * chars_per_token()).round() as usize).max(1);
    let mut parent = 0u64;
    prompt
        .chunks_exact(chars)
        .map(|block| {
            let mut h = DefaultHasher::new();
            h.write_u64(parent);
            for c in block {
                h.write_u32(*c as u32);
            }
            parent = h.finish();
            parent
        })
        .collect()
}

/// A server's KV cache as vLLM's automatic prefix caching keeps it
/// (`vllm/v1/core/block_pool.py`, `kv_cache_manager.py`; design notes in
/// vLLM's docs/design/prefix_caching.md):
/// - a pool of `capacity` blocks of `BLOCK_TOKENS` tokens; a request holds
///   the blocks of its prompt and answer while it runs;
/// - only whole blocks are cached, by a hash of their tokens and their
///   prefix; a new request reuses the longest run of cached blocks from the
///   start of its prompt, at most up to the last whole block before its last
///   token (that token is always computed, for its logits);
/// - a finished request's blocks stay cached: they go to the tail of the
///   free queue, its last block first (a request's later blocks are less
///   likely to be shared, so they are evicted first); a block reused while
///   free leaves the queue;
/// - a new block is taken from the head of the free queue (never-used blocks
///   first, then the least recently freed); taking a cached block evicts it.
///
/// Not modelled: blocks are taken for the whole answer at admission (vLLM
/// takes them as the answer grows and preempts a request when none is left),
/// and an answer's blocks are not cached (no other prompt contains them).
struct BlockCache {
    capacity: usize,
    /// Blocks never used: the free queue's head at start.
    fresh: usize,
    /// Cached blocks by hash: the requests holding each, and its place in
    /// `free` when none does.
    cached: HashMap<u64, (u32, Option<u64>)>,
    /// The free queue after `fresh`, least recently freed first: the hash of
    /// a cached block, or None for one that holds nothing reusable.
    free: BTreeMap<u64, Option<u64>>,
    next: u64,
}

impl BlockCache {
    fn new(capacity: usize) -> Self {
        BlockCache { capacity, fresh: capacity, cached: HashMap::new(), free: BTreeMap::new(), next: 0 }
    }

    /// Cached blocks at the start of a prompt with these block hashes, at most `max`.
    fn longest_hit(&self, hashes: &[u64], max: usize) -> usize {
        hashes.iter().take(max).take_while(|h| self.cached.contains_key(h)).count()
    }

    /// Takes `needed` blocks for a request whose first `hit` blocks are
    /// cached (reused, not taken anew) and registers its prompt's other whole
    /// blocks; None (and nothing changed) when too few blocks are free.
    /// Returns the request's blocks in order, for `release`.
    fn admit(&mut self, hashes: &[u64], hit: usize, needed: usize) -> Option<Vec<Option<u64>>> {
        let reused_free = hashes[..hit].iter().filter(|h| self.cached[*h].0 == 0).count();
        if self.fresh + self.free.len() - reused_free < needed - hit {
            return None;
        }
        let mut held = Vec::with_capacity(needed);
        for h in &hashes[..hit] {
            let entry = self.cached.get_mut(h).expect("a hit is cached");
            if let Some(place) = entry.1.take() {
                self.free.remove(&place);
            }
            entry.0 += 1;
            held.push(Some(*h));
        }
        for i in hit..needed {
            if self.fresh > 0 {
                self.fresh -= 1;
            } else {
                let (_, evicted) = self.free.pop_first().expect("enough free blocks were counted");
                if let Some(h) = evicted {
                    self.cached.remove(&h);
                }
            }
            // A whole prompt block is cached as soon as it is scheduled; one
            // already cached (evicted in part, or equal to another request's)
            // stays this request's own.
            match hashes.get(i) {
                Some(h) if !self.cached.contains_key(h) => {
                    self.cached.insert(*h, (1, None));
                    held.push(Some(*h));
                }
                _ => held.push(None),
            }
        }
        Some(held)
    }

    /// A finished request's blocks back to the free queue, its last first.
    fn release(&mut self, held: Vec<Option<u64>>) {
        for block in held.into_iter().rev() {
            let place = self.next;
            self.next += 1;
            match block {
                Some(h) => {
                    let entry = self.cached.get_mut(&h).expect("a held block is cached");
                    entry.0 -= 1;
                    if entry.0 == 0 {
                        entry.1 = Some(place);
                        self.free.insert(place, Some(h));
                    }
                }
                None => {
                    self.free.insert(place, None);
                }
            }
        }
    }
}

fn common_prefix(a: &[char], b: &[char]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl SimServer {
    fn new(slots: usize, model: GpuModel, cache: CacheKind) -> Self {
        SimServer {
            cache,
            slots: Mutex::new(
                (0..slots).map(|_| SimSlot { busy: false, cached: Vec::new(), last_used: None }).collect(),
            ),
            slot_free: Condvar::new(),
            gpu: Mutex::new((0, 0)),
            gpu_turn: Condvar::new(),
            model,
            blocks: Mutex::new(BlockCache::new(model.kv_tokens.div_ceil(BLOCK_TOKENS) as usize)),
            waiting: AtomicUsize::new(0),
            admitted: AtomicUsize::new(0),
            hold: (Mutex::new(false), Condvar::new()),
        }
    }
}

/// Serves the simulated server on a loopback port; returns its URL.
fn start_sim(slots: usize, model: GpuModel, cache: CacheKind) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = Arc::new(SimServer::new(slots, model, cache));
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
    // A chunk without an LLM context (the server failed, or its answer was
    // refused as no context: a base model's echo) still cost the server its
    // prompt; the counts and the time stand, and the report says how many.
    let without = out.iter().filter(|o| !o.complete).count();
    if without > 0 {
        println!(
            "({schedule}: {without} of {} documents without an LLM context for every chunk: {} chunks fell \
             back to the heuristic, {} of them because the answer was no context)",
            out.len(),
            summary.chunks.fallback,
            summary.chunks.unusable
        );
    }
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

fn sim(cache: CacheKind) -> Result<()> {
    // Ollama's seed layout: 6 servers, OLLAMA_NUM_PARALLEL=4 slots each; a
    // vLLM-like server runs more sequences at once (16 here).
    let shared = cache == CacheKind::Shared;
    // ENRICH_BENCH_SLOTS: another OLLAMA_NUM_PARALLEL (slots per server).
    let slots = env_or("ENRICH_BENCH_SLOTS", if shared { 16 } else { 4 })?;
    // Chunks of ~1,200 characters (~300 tokens): a 150-chunk document is
    // ~45,000 tokens, inside llama3.1's 128k context.
    let chunk_chars = env_or("ENRICH_BENCH_CHUNK_CHARS", 1200)?;
    let chunks = env_or("ENRICH_BENCH_CHUNKS", 150)?;
    let answer = env_or("ENRICH_BENCH_ANSWER", 100)?;
    let servers = env_or("ENRICH_BENCH_SERVERS", 6)?;
    let cpt: f64 = env_or("ENRICH_BENCH_CHARS_PER_TOKEN", 4.0)?;
    if slots == 0 || chunks == 0 || chunk_chars == 0 || servers == 0 || cpt.is_nan() || cpt <= 0.0 {
        bail!("ENRICH_BENCH_SLOTS, _CHUNKS, _CHUNK_CHARS, _SERVERS and _CHARS_PER_TOKEN must be positive");
    }
    CHARS_PER_TOKEN.set(cpt).map_err(|_| anyhow::anyhow!("chars per token set twice"))?;
    let (model, calibrated) = H100_LLAMA31_8B.with_env()?;
    println!(
        "latency model: {}: prefill {} tok/s (shared by the server's slots), decode {} tok/s per sequence \
         (batched across slots), {} s per request{}; {servers} servers x {slots} slots, {}; chunks ~{} \
         tokens ({cpt} characters a token); answers {answer} tokens; time x{SCALE}",
        if calibrated {
            "rates from ENRICH_BENCH_PREFILL_TPS / _DECODE_TPS / _OVERHEAD_S"
        } else {
            "llama3.1:8b on one H100-class GPU per server"
        },
        model.prefill_tps,
        model.decode_tps,
        model.overhead_s,
        if shared { format!(", {} KV tokens", model.kv_tokens) } else { String::new() },
        match cache {
            CacheKind::Shared =>
                "vLLM's automatic prefix caching (one block cache per server, looked up at admission)",
            CacheKind::PerSlot => "a prefix cache per slot (llama.cpp/Ollama)",
            CacheKind::Forking =>
                "a prefix cache per slot, forked between slots (Ollama, OLLAMA_MULTIUSER_CACHE=1)",
        },
        (chunk_chars as f64 / cpt).round()
    );
    println!();
    println!("| case | schedule | requests | prompt tokens evaluated | prompt tokens from cache | wall s (model time) |");
    println!("|---|---|---|---|---|---|");
    // ENRICH_BENCH_CASE: only `seed` or only `busy`.
    let only = std::env::var("ENRICH_BENCH_CASE").ok();
    for (case, n_docs) in
        [(format!("seed: 1 x {chunks} chunks"), 1), (format!("busy: 6 x {chunks} chunks"), 6)]
    {
        if only.as_deref().is_some_and(|o| !case.starts_with(o)) {
            continue;
        }
        let docs: Vec<_> = (0..n_docs).map(|i| document(i, chunks, chunk_chars)).collect();
        let mut outcomes = Vec::new();
        for schedule in ["affine", "round_robin"] {
            let endpoints = (0..servers)
                .map(|_| EndpointConfig {
                    kind: "openai".into(),
                    url: start_sim(slots, model, cache),
                    model: "llama3.1:8b".into(),
                    slots,
                    context_tokens: 131072,
                    // llama-server can pin a slot; Ollama and vLLM cannot.
                    pin_slots: cache == CacheKind::PerSlot,
                    // A warmed document reaches the other slots at no prefill cost.
                    shared_prefix_cache: cache != CacheKind::PerSlot,
                    chars_per_token: cpt,
                    ..Default::default()
                })
                .collect();
            outcomes.push(run(endpoints, schedule, &docs, answer));
        }
        report(&case, &outcomes[0], &outcomes[1], SCALE);
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
    // ENRICH_BENCH_SERVERS / _SLOTS / _THREADS / _CHUNK_CHARS / _ANSWER:
    // another layout (6 servers x 2 slots, one thread each, chunks of ~200
    // characters, 16-token answers by default); ENRICH_BENCH_CASE as in `sim`.
    let servers = env_or("ENRICH_BENCH_SERVERS", 6)?;
    let slots = env_or("ENRICH_BENCH_SLOTS", 2)?;
    let threads = env_or("ENRICH_BENCH_THREADS", 1)?;
    let chunk_chars = env_or("ENRICH_BENCH_CHUNK_CHARS", 200)?;
    let answer = env_or("ENRICH_BENCH_ANSWER", 16)?;
    if servers == 0 || slots == 0 || threads == 0 || chunk_chars == 0 || chunks == 0 {
        bail!("servers, slots, threads, chunks and chunk characters must be positive");
    }
    // Extra llama-server flags, e.g. `--cache-ram 0` (no host-memory prompt cache).
    let extra = std::env::var("ENRICH_BENCH_SERVER_ARGS").unwrap_or_default();
    let only = std::env::var("ENRICH_BENCH_CASE").ok();
    println!(
        "real llama-servers ({}, CPU, {threads} thread(s) each{}): {servers} servers x {slots} \
         slots; {chunks} chunks of ~{chunk_chars} characters per document; answers {answer} tokens",
        Path::new(model).file_name().map_or(model.into(), |f| f.to_string_lossy()),
        if extra.is_empty() { String::new() } else { format!(", {extra}") }
    );
    println!();
    println!("| case | schedule | requests | prompt tokens evaluated | prompt tokens from cache | wall s |");
    println!("|---|---|---|---|---|---|");
    for (case, n_docs) in
        [(format!("seed: 1 x {chunks} chunks"), 1), (format!("busy: 6 x {chunks} chunks"), 6)]
    {
        if only.as_deref().is_some_and(|o| !case.starts_with(o)) {
            continue;
        }
        let docs: Vec<_> = (0..n_docs).map(|i| document(i, chunks, chunk_chars)).collect();
        let mut outcomes = Vec::new();
        for schedule in ["affine", "round_robin"] {
            let mut processes = Vec::new();
            let mut endpoints = Vec::new();
            for _ in 0..servers {
                let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
                let child = Command::new(binary)
                    .args(["-m", model, "--host", "127.0.0.1", "--port", &port.to_string()])
                    .args(["-np", &slots.to_string(), "-c", &(slots * 32768).to_string()])
                    .args(["-t", &threads.to_string(), "-tb", &threads.to_string(), "--no-webui"])
                    .args(extra.split_whitespace())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("starting llama-server")?;
                processes.push(Server(child));
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
                // Every answer runs to `answer` tokens: no end-of-text
                // (llama-server's `ignore_eos`), and the tiny model's
                // end-of-text and padding tokens (2, 4) banned as before.
                e.extra.insert("logit_bias".into(), serde_json::json!([[2, false], [4, false]]));
                e.extra.insert("ignore_eos".into(), serde_json::json!(true));
                endpoints.push(e);
            }
            outcomes.push(run(endpoints, schedule, &docs, answer));
            drop(processes);
        }
        report(&case, &outcomes[0], &outcomes[1], 1.0);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fast enough that a test's requests take milliseconds.
    const FAST: GpuModel =
        GpuModel { prefill_tps: 1e7, decode_tps: 1e5, overhead_s: 0.0, kv_tokens: 100_000 };

    fn ask(server: &SimServer, prompt: &str, max_tokens: u64) -> (u64, u64) {
        let body =
            serde_json::json!({"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens});
        let a = server.complete(&body, &mut || {});
        (a["timings"]["cache_n"].as_u64().unwrap(), a["timings"]["prompt_n"].as_u64().unwrap())
    }

    fn wait_until(what: &str, f: impl Fn() -> bool) {
        // Not a timing assertion: the condition comes true as soon as the
        // request's thread runs; the bound only turns a hang into a failure.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !f() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn doc(n: usize) -> String {
        let (d, _) = document(3, n, 200);
        d.text
    }

    /// Whole blocks of `a` that `b` shares from the start, at most up to
    /// the last whole block before `b`'s last token.
    fn whole_shared_blocks(a: &str, b: &str) -> u64 {
        let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
        let per_block = (BLOCK_TOKENS as f64 * chars_per_token()) as usize;
        let common = common_prefix(&a, &b) / per_block;
        (common as u64).min((tokens(b.len()) - 1) / BLOCK_TOKENS)
    }

    #[test]
    fn a_request_queued_behind_a_same_document_request_reuses_its_blocks() {
        // X (another document) is admitted and its prefill held; A and then
        // B, with the same document and other chunks, arrive meanwhile and
        // queue, both before any of their document is computed. vLLM looks a
        // request's prefix up when it admits it: A, admitted first, finds
        // nothing and evaluates its whole prompt; B, admitted after A's
        // prefill, evaluates only what follows the document. (The earlier
        // model looked the cache up on arrival: B found nothing either.)
        let server = Arc::new(SimServer::new(4, FAST, CacheKind::Shared));
        let d = doc(20);
        let px = format!("{}\n\nchunk: x", document(5, 20, 200).0.text);
        let (pa, pb) = (format!("{d}\n\nchunk: first part"), format!("{d}\n\nchunk: the second part"));
        *server.hold.0.lock().unwrap() = true;
        let spawn = |p: &String| {
            let (server, p) = (server.clone(), p.clone());
            std::thread::spawn(move || ask(&server, &p, 8))
        };
        let x = spawn(&px);
        wait_until("X is admitted", || server.admitted.load(Ordering::SeqCst) == 1);
        let a = spawn(&pa);
        wait_until("A is queued", || server.waiting.load(Ordering::SeqCst) == 1);
        let b = spawn(&pb);
        wait_until("B is queued", || server.waiting.load(Ordering::SeqCst) == 2);
        assert_eq!(server.admitted.load(Ordering::SeqCst), 1, "A and B wait while X's prefill runs");
        *server.hold.0.lock().unwrap() = false;
        server.hold.1.notify_all();
        assert_eq!(x.join().unwrap().0, 0);
        let (a_cached, a_evaluated) = a.join().unwrap();
        let (b_cached, b_evaluated) = b.join().unwrap();
        assert_eq!((a_cached, a_evaluated), (0, tokens(pa.chars().count())), "A found nothing cached");
        let shared = whole_shared_blocks(&pa, &pb);
        assert!(shared * BLOCK_TOKENS > tokens(d.chars().count()) - BLOCK_TOKENS, "the document is shared");
        assert_eq!(b_cached, shared * BLOCK_TOKENS, "B reuses A's whole blocks of the document");
        assert_eq!(b_evaluated, tokens(pb.chars().count()) - b_cached);
    }

    #[test]
    fn a_finished_requests_blocks_serve_later_requests_of_its_document_only() {
        let server = SimServer::new(2, FAST, CacheKind::Shared);
        let (d1, d2) = (doc(12), document(4, 12, 200).0.text);
        let p1 = format!("{d1}\n\nchunk: one");
        assert_eq!(ask(&server, &format!("{d2}\n\nchunk: one"), 4).0, 0);
        assert_eq!(ask(&server, &p1, 4), (0, tokens(p1.chars().count())), "another document shares nothing");
        // Its blocks outlive it: a later request of its document reuses them.
        let p2 = format!("{d1}\n\nchunk: two");
        let shared = whole_shared_blocks(&p1, &p2);
        assert!(shared > 0);
        assert_eq!(ask(&server, &p2, 4).0, shared * BLOCK_TOKENS);
    }

    #[test]
    fn hits_are_whole_blocks_and_stop_before_the_last_token() {
        let server = SimServer::new(1, FAST, CacheKind::Shared);
        // 64 characters a block (16 tokens of 4 characters).
        let p = "x".repeat(64 * 5);
        assert_eq!(ask(&server, &p, 1), (0, 80));
        // The same prompt again: its last token is computed again, and with
        // it the whole last block.
        assert_eq!(ask(&server, &p, 1), (64, 16));
        // A prompt that leaves the first one inside its third block reuses two.
        let q = format!("{}y{}", "x".repeat(64 * 2 + 10), "x".repeat(200));
        assert_eq!(ask(&server, &q, 1).0, 32);
    }

    fn hashes(seed: u32, blocks: usize) -> Vec<u64> {
        let text: Vec<char> =
            (0..blocks * 64).map(|i| char::from_u32(0x4e00 + seed * 97 + (i as u32 % 89)).unwrap()).collect();
        block_hashes(&text)
    }

    #[test]
    fn freed_blocks_stay_cached_until_evicted_last_block_first() {
        let mut cache = BlockCache::new(10);
        let a = hashes(1, 6);
        let held = cache.admit(&a, 0, 6).expect("6 of 10 blocks free");
        // While A runs, its blocks cannot be evicted: 4 are free, B needs 8.
        let b = hashes(2, 8);
        assert!(cache.admit(&b, 0, 8).is_none());
        cache.release(held);
        assert_eq!(cache.longest_hit(&a, 6), 6, "A's blocks outlive A");
        // B takes the 4 never-used blocks, then 4 of A's, the last first.
        let held_b = cache.admit(&b, 0, 8).expect("A's blocks are free now");
        assert_eq!(cache.longest_hit(&a, 6), 2, "A's first two blocks are left");
        cache.release(held_b);
        // A reused block leaves the free queue: admitting A again evicts B's
        // blocks (last first), not A's first two.
        let held_a = cache.admit(&a, 2, 6).expect("8 blocks free");
        assert_eq!(cache.longest_hit(&a, 6), 6);
        assert_eq!(cache.longest_hit(&b, 8), 4, "B lost its last four blocks");
        cache.release(held_a);
    }
}
