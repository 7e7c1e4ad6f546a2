//! Real LLM servers for tests: llama.cpp's `llama-server` (built by
//! `scripts/build-llama-server.sh`) over a tiny random-weight GGUF (written by
//! `scripts/make_tiny_llama_gguf.py`), an Ollama-compatible front over it
//! (`ollama_front.py`), and faulty HTTP servers (500s, silence) on loopback.
//!
//! Where the server binary or the model cannot be had, a test says why and
//! stops; under CI (`CI=true`) it fails instead.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Real-server tests take turns: each starts several servers, and these
/// machines have two cores.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Token ids the tiny model ends a turn with; banned so answers run to `max_tokens`.
pub const EOG_IDS: [u32; 2] = [2, 4];

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn unavailable(why: String) -> Option<Tools> {
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{why} (CI must provide it: see .ci/run)");
    }
    eprintln!("SKIPPING a real-LLM test: {why}. Run scripts/build-llama-server.sh and set DATAFACTORY_TEST_LLAMA_SERVER.");
    None
}

#[derive(Clone)]
pub struct Tools {
    pub server: PathBuf,
    pub model: PathBuf,
}

/// The llama-server binary and the tiny model, or None (with the reason
/// printed) where they cannot be had outside CI.
pub fn tools() -> Option<Tools> {
    static TOOLS: OnceLock<Result<Tools, String>> = OnceLock::new();
    let found = TOOLS.get_or_init(|| {
        let server = match std::env::var_os("DATAFACTORY_TEST_LLAMA_SERVER") {
            Some(p) => PathBuf::from(p),
            None => {
                let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
                let dir = home.join(".cache/datafactory-llama-server");
                let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
                    .map(|r| r.filter_map(|e| e.ok()).map(|e| e.path().join("llama-server")).collect())
                    .unwrap_or_default();
                found.retain(|p| p.is_file());
                found.sort();
                match found.pop() {
                    Some(p) => p,
                    None => return Err(format!("no llama-server under {}", dir.display())),
                }
            }
        };
        if !server.is_file() {
            return Err(format!("llama-server not found at {}", server.display()));
        }
        let model = match std::env::var_os("DATAFACTORY_TEST_TINY_GGUF") {
            Some(p) => PathBuf::from(p),
            None => {
                let dir = std::env::temp_dir().join(format!("datafactory-tiny-gguf-{}", std::process::id()));
                std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
                let out = dir.join("tiny-llama.gguf");
                let status = Command::new("python3")
                    .arg(repo_root().join("scripts/make_tiny_llama_gguf.py"))
                    .arg(&out)
                    .status()
                    .map_err(|e| format!("python3: {e}"))?;
                if !status.success() {
                    return Err("scripts/make_tiny_llama_gguf.py failed (pip install gguf==0.19.0)".into());
                }
                out
            }
        };
        if !model.is_file() {
            return Err(format!("tiny model not found at {}", model.display()));
        }
        Ok(Tools { server, model })
    });
    match found {
        Ok(t) => Some(t.clone()),
        Err(e) => unavailable(e.clone()),
    }
}

/// The llama-server binary and the real Gemma 3 270M GGUF
/// (`DATAFACTORY_TEST_GEMMA`, fetched by scripts/fetch-gemma.sh), or None
/// (with the reason printed) where they cannot be had outside CI.
pub fn gemma() -> Option<Tools> {
    let server = tools()?.server;
    let model = match std::env::var_os("DATAFACTORY_TEST_GEMMA") {
        Some(p) => PathBuf::from(p),
        None => {
            let out =
                Command::new(repo_root().join("scripts/fetch-gemma.sh")).stderr(Stdio::inherit()).output();
            match out {
                Ok(o) if o.status.success() => PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()),
                _ => {
                    return unavailable(
                        "Gemma 3 270M not found: set DATAFACTORY_TEST_GEMMA (scripts/fetch-gemma.sh)".into(),
                    )
                }
            }
        }
    };
    if !model.is_file() {
        return unavailable(format!("Gemma 3 270M not found at {}", model.display()));
    }
    Some(Tools { server, model })
}

/// Starts llama-server over Gemma 3 270M on the CPU: one slot of `ctx`
/// tokens, both cores, its chat template named (the GGUF carries none, and
/// llama-server's fallback is ChatML, which Gemma does not know), and no
/// weight repacking (its repacked kernels die of SIGILL on some of these CPUs).
pub fn gemma_server(tools: &Tools, ctx: usize) -> Process {
    let ctx = ctx.to_string();
    spawn_llama_server(
        tools,
        &["-np", "1", "-c", &ctx, "-t", "2", "-tb", "2", "--no-webui", "--no-repack"],
        &["--no-jinja", "--chat-template", "gemma"],
    )
}

/// Starts llama-server over `tools.model` on a free loopback port with
/// `args` and `extra`, and waits until it is healthy.
pub fn spawn_llama_server(tools: &Tools, args: &[&str], extra: &[&str]) -> Process {
    let port = free_port();
    let child = Command::new(&tools.server)
        .args(["-m", tools.model.to_str().unwrap(), "--host", "127.0.0.1", "--port", &port.to_string()])
        .args(args)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting llama-server");
    let p = Process { child, url: format!("http://127.0.0.1:{port}") };
    wait_healthy(&format!("{}/health", p.url));
    p
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A process this test started; killed (by its own handle) when dropped.
pub struct Process {
    pub child: Child,
    pub url: String,
}

impl Process {
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts llama-server with `slots` slots of `ctx_per_slot` tokens each.
pub fn llama_server(tools: &Tools, slots: usize, ctx_per_slot: usize) -> Process {
    let (slots, ctx) = (slots.to_string(), (slots * ctx_per_slot).to_string());
    spawn_llama_server(
        tools,
        &["-np", &slots, "-c", &ctx, "-t", "1", "-tb", "1", "--no-webui", "-b", "512", "-ub", "512"],
        &[],
    )
}

/// Starts the Ollama-compatible front over a llama-server.
pub fn ollama_front(backend: &str, model: &str) -> Process {
    let port = free_port();
    let child = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ollama_front.py"))
        .args(["--port", &port.to_string(), "--backend", backend, "--model", model])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting python3 ollama_front.py");
    let p = Process { child, url: format!("http://127.0.0.1:{port}") };
    wait_healthy(&format!("{}/api/tags", p.url));
    p
}

pub fn wait_healthy(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if ureq::get(url).timeout(Duration::from_secs(2)).call().is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{url} did not become healthy in 60 s");
}

/// What a faulty server does with each request.
#[derive(Clone, Copy)]
pub enum Fault {
    /// Answers 500 to everything.
    Status500,
    /// Reads the request and never answers.
    Silent,
    /// Healthy (`GET` answers 200) but every completion fails with 500.
    FailCompletions,
    /// Healthy, but a completion is never answered (a hung or very slow server).
    HangCompletions,
}

/// A real HTTP server on a loopback port that misbehaves; runs until the test ends.
pub fn faulty_server(fault: Fault) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 65536];
            let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
            let n = s.read(&mut buf).unwrap_or(0);
            let is_get = buf[..n].starts_with(b"GET ");
            match fault {
                Fault::FailCompletions | Fault::HangCompletions if is_get => {
                    let body = r#"{"object":"list","data":[{"id":"tiny","object":"model"}]}"#;
                    let _ = write!(
                        s,
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                }
                Fault::HangCompletions => held.push(s),
                Fault::Status500 | Fault::FailCompletions => {
                    let body = r#"{"error":"internal error"}"#;
                    let _ = write!(
                        s,
                        "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                }
                Fault::Silent => held.push(s),
            }
        }
    });
    url
}

/// An endpoint configuration for a llama-server (slots pinned, exact token
/// counts, end tokens banned).
pub fn openai_endpoint(
    url: &str,
    slots: usize,
    ctx_per_slot: usize,
) -> datafactory_core::config::EndpointConfig {
    let mut e = datafactory_core::config::EndpointConfig {
        kind: "openai".into(),
        url: url.into(),
        model: "tiny".into(),
        slots,
        context_tokens: ctx_per_slot,
        pin_slots: true,
        tokenize: true,
        ..Default::default()
    };
    e.extra.insert(
        "logit_bias".into(),
        serde_json::json!(EOG_IDS.iter().map(|&i| serde_json::json!([i, false])).collect::<Vec<_>>()),
    );
    e
}

/// A text of roughly `words` words over `sections` Markdown sections,
/// different per `seed`.
pub fn document_text(seed: u64, sections: usize, words: usize) -> String {
    const VOCAB: [&str; 24] = [
        "the",
        "server",
        "document",
        "chunk",
        "search",
        "model",
        "data",
        "table",
        "figure",
        "answer",
        "question",
        "page",
        "retrieval",
        "context",
        "file",
        "section",
        "first",
        "second",
        "new",
        "used",
        "time",
        "between",
        "under",
        "through",
    ];
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut out = format!("# Report {seed}\n\n");
    let per = words / sections.max(1);
    for s in 0..sections {
        out.push_str(&format!("## Part {s}\n\n"));
        for w in 0..per {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            out.push_str(VOCAB[(x >> 33) as usize % VOCAB.len()]);
            out.push(if w % 12 == 11 { '.' } else { ' ' });
            if w % 60 == 59 {
                out.push_str("\n\n");
            }
        }
        out.push_str("\n\n");
    }
    out
}

/// One request a `SharedCacheServer` served.
#[derive(Debug, Clone)]
pub struct Served {
    pub streamed: bool,
    pub arrived: Instant,
    /// Just before a streamed answer's first piece was sent.
    pub first_token: Option<Instant>,
    pub finished: Instant,
}

/// A real HTTP server on a loopback port that speaks the OpenAI chat API and
/// times answers like a server sharing one prefix cache across its
/// sequences (vLLM): a prompt whose 200-character opening it has seen is
/// answered after 20 ms; a new one takes `prefill`, then (streamed: after its
/// first piece) `decode`. llama-server keeps a cache per slot, so this
/// behaviour cannot be had from it. Records what it served.
pub struct SharedCacheServer {
    pub url: String,
    log: std::sync::Arc<std::sync::Mutex<Vec<Served>>>,
}

impl SharedCacheServer {
    pub fn start(prefill: Duration, decode: Duration) -> SharedCacheServer {
        use std::io::{BufRead, BufReader};
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let log: Arc<Mutex<Vec<Served>>> = Arc::default();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let (log2, seen2) = (log.clone(), seen.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (log, seen) = (log2.clone(), seen2.clone());
                std::thread::spawn(move || -> std::io::Result<()> {
                    stream.set_nodelay(true)?;
                    let mut reader = BufReader::new(stream.try_clone()?);
                    let mut out = stream;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line)? == 0 {
                            return Ok(());
                        }
                        let mut length = 0;
                        loop {
                            let mut h = String::new();
                            reader.read_line(&mut h)?;
                            if h.trim().is_empty() {
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
                        if !line.starts_with("POST /v1/chat/completions") {
                            let b = r#"{"object":"list","data":[{"id":"tiny","object":"model"}]}"#;
                            out.write_all(
                                format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}", b.len())
                                    .as_bytes(),
                            )?;
                            continue;
                        }
                        let arrived = Instant::now();
                        let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                        let prompt = request["messages"][0]["content"].as_str().unwrap_or("").to_string();
                        let opening: String = prompt.chars().take(200).collect();
                        let streamed = request["stream"].as_bool() == Some(true);
                        let cached = {
                            let mut seen = seen.lock().unwrap();
                            let hit = seen.contains(&opening);
                            seen.push(opening);
                            hit
                        };
                        let usage = serde_json::json!({"prompt_tokens": prompt.len() / 4, "completion_tokens": 16,
                            "prompt_tokens_details": {"cached_tokens": if cached { prompt.len() / 4 - 50 } else { 0 }}});
                        std::thread::sleep(if cached { Duration::from_millis(20) } else { prefill });
                        let mut first_token = None;
                        if streamed {
                            out.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")?;
                            let mut event = |data: String| {
                                let data = format!("data: {data}\n\n");
                                out.write_all(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes())
                            };
                            first_token = Some(Instant::now());
                            event(serde_json::json!({"choices": [{"index": 0, "delta": {"content": "A context"}}]}).to_string())?;
                            std::thread::sleep(decode);
                            event(serde_json::json!({"choices": [{"index": 0, "delta": {"content": " for the chunk."}, "finish_reason": "length"}]}).to_string())?;
                            event(serde_json::json!({"choices": [], "usage": usage}).to_string())?;
                            // Logged before the client can see the end.
                            log.lock().unwrap().push(Served {
                                streamed,
                                arrived,
                                first_token,
                                finished: Instant::now(),
                            });
                            event("[DONE]".into())?;
                            out.write_all(b"0\r\n\r\n")?;
                        } else {
                            let b = serde_json::json!({"choices": [{"index": 0, "finish_reason": "length",
                                "message": {"role": "assistant", "content": "A context for the chunk."}}], "usage": usage})
                            .to_string();
                            log.lock().unwrap().push(Served {
                                streamed,
                                arrived,
                                first_token,
                                finished: Instant::now(),
                            });
                            out.write_all(
                                format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}", b.len())
                                    .as_bytes(),
                            )?;
                        }
                    }
                });
            }
        });
        SharedCacheServer { url, log }
    }

    pub fn log(&self) -> Vec<Served> {
        self.log.lock().unwrap().clone()
    }
}
