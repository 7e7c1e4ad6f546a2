//! The LLM route against a real LLM server: llama.cpp's `llama-server` over
//! the tiny random-weight GGUF of the enrichment tests (see `.ci/run` and
//! `crates/enrich/tests/common`). The analyzer's request asks for
//! `response_format: json_schema`; llama-server turns the schema into a
//! grammar, so even a random model writes JSON of the schema's shape. What
//! that JSON says is still the random model's, and each outcome is asserted
//! as it really happens:
//!
//! - the default server (Jinja chat templates) puts the generation prompt
//!   into the grammar, which the tiny model's tokenizer cannot match: an
//!   HTTP 400, so the heuristics answer;
//! - with `--no-jinja` the grammar holds; with too little context left the
//!   answer stops at the context size, cut JSON, so the heuristics answer;
//! - with enough context it is complete and schema-valid (the random model
//!   never closes `reason` itself: the schema's `maxLength` makes the grammar
//!   close it), but its overlap equals its chunk size, which the schema
//!   cannot forbid and our check does: heuristics again;
//! - with the quote and `0` favoured it is a valid verdict: route `llm`;
//! - a server whose one slot stays busy past the timeout, and a killed one,
//!   fall back too;
//! - the real Gemma 3 270M (base) completes a verdict through the grammar,
//!   which our check judges.
//!
//! The structure figures are measured in every case, never asked.
//!
//! Where llama-server or the tiny model cannot be had, a test says why and
//! stops; under CI (`CI=true`) it fails instead.

#[path = "../../enrich/tests/common/mod.rs"]
mod common;

use common::{serial, tools, Process, Tools};
use datafactory_analyze::{analyze, Analysis, Analyzer, DocType, Route};
use datafactory_core::config::AnalysisConfig;
use datafactory_core::{ChunkStrategy, Document};
use std::path::Path;

/// Token ids of the tiny model's vocabulary (see
/// `scripts/make_tiny_llama_gguf.py`: 5 special tokens, then the 256 bytes).
const QUOTE: u32 = 5 + b'"' as u32;
const ZERO: u32 = 5 + b'0' as u32;

/// Starts llama-server with one slot of `ctx` tokens and `extra` arguments.
fn llama_server(tools: &Tools, ctx: usize, extra: &[&str]) -> Process {
    let ctx = ctx.to_string();
    let args = ["-np", "1", "-c", &ctx, "-t", "1", "-tb", "1", "--no-webui", "-b", "512", "-ub", "512"];
    common::spawn_llama_server(tools, &args, extra)
}

fn analyzer(server_url: &str, timeout_seconds: u64) -> Analyzer {
    Analyzer::from_config(&AnalysisConfig {
        route: "llm".into(),
        llm_url: format!("{server_url}/v1"),
        llm_model: "tiny".into(),
        timeout_seconds,
        ..Default::default()
    })
}

fn handbook() -> Document {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/sample.md");
    let bytes = std::fs::read(&path).unwrap();
    datafactory_parse::parse(&bytes, Some(&path), &Default::default()).unwrap().documents.remove(0)
}

/// The figures the analyzer measures itself, whichever route answered.
fn assert_measured(a: &Analysis, doc: &Document) {
    let h = analyze(doc);
    assert_eq!(a.structure, h.structure);
    assert_eq!(a.estimated_tokens, h.estimated_tokens);
    assert_eq!(a.language, h.language);
    assert_eq!(a.format, h.format);
}

/// The heuristics' analysis, with a fallback reason containing each of `why`.
fn assert_fell_back(a: &Analysis, doc: &Document, why: &[&str]) {
    let h = analyze(doc);
    assert_eq!(a.route, Route::Heuristic, "{a:#?}");
    assert_eq!((a.doc_type, &a.plan, &a.analyzer), (h.doc_type, &h.plan, &h.analyzer));
    let fallback = a.fallback.as_deref().unwrap_or_default();
    for w in why {
        assert!(fallback.contains(w), "{fallback:?} should say {w:?}");
    }
    assert_measured(a, doc);
}

#[test]
fn the_tiny_models_answers_through_the_json_schema_grammar() {
    let Some(tools) = tools() else { return };
    let _turn = serial();
    let doc = handbook();

    // Default server: the Jinja path adds the generation prompt
    // ("<|im_start|>assistant\n") to the grammar, and the tiny SentencePiece
    // vocabulary tokenizes it with a space prefix (" as", "s", ...), so the
    // grammar sampler cannot start.
    let server = llama_server(&tools, 4096, &[]);
    let a = analyzer(&server.url, 30).analyze(&doc);
    assert_fell_back(&a, &doc, &["HTTP 400", "Failed to initialize samplers"]);
    drop(server);

    // --no-jinja: the grammar holds (the answer begins as a verdict), but
    // the prompt (~3,700 tokens) leaves ~140 tokens of a 3,840 context: the
    // answer stops there (finish_reason "length"), cut inside the verdict.
    let server = llama_server(&tools, 3840, &["--no-jinja"]);
    let a = analyzer(&server.url, 30).analyze(&doc);
    assert_fell_back(&a, &doc, &["the answer was cut short", "end of the model's context"]);
    drop(server);

    // With ~400 tokens left (a 4,096 context) the answer completes: the
    // greedy random model never picks the closing quote of `reason` itself
    // (it ran to the end of the context before `reason` had a bound), but the
    // schema's maxLength makes the grammar close it. The verdict — {"doc_type":
    // "prose", "plan": {"strategy": "sections", "max_tokens": 626,
    // "overlap_tokens": 626, ...}, ...} — has an overlap the schema allows
    // but our check does not.
    let server = llama_server(&tools, 4096, &["--no-jinja"]);
    let a = analyzer(&server.url, 30).analyze(&doc);
    assert_fell_back(&a, &doc, &["plan.overlap_tokens 626 is over half of max_tokens"]);
    drop(server);
}

#[test]
fn a_valid_verdict_from_the_real_server_is_taken_and_a_killed_server_falls_back() {
    let Some(tools) = tools() else { return };
    let _turn = serial();
    let doc = handbook();

    // The quote and `0` favoured: max_tokens 600, overlap 0, a reason of
    // zeros closed at the schema's bound (finish_reason "stop"; an 8,192
    // context leaves room) — a valid verdict.
    let (quote, zero) = (format!("{QUOTE}+10"), format!("{ZERO}+10"));
    let mut server = llama_server(&tools, 8192, &["--no-jinja", "-l", &quote, "-l", &zero]);
    let llm = analyzer(&server.url, 30);
    let a = llm.analyze(&doc);
    assert_eq!(a.route, Route::Llm, "{a:#?}");
    assert_eq!(a.fallback, None);
    assert_eq!(a.analyzer, "llm:tiny");
    assert_eq!(a.doc_type, DocType::Prose);
    assert_eq!(a.plan.strategy, ChunkStrategy::Sections);
    assert_eq!((a.plan.max_tokens, a.plan.overlap_tokens), (600, 0));
    assert_eq!((a.plan.keep_tables_whole, a.plan.keep_code_whole), (false, false));
    assert!(!a.reason.is_empty() && a.reason.chars().all(|c| c == '0'), "{:?}", a.reason);
    assert!(a.signals.is_empty());
    assert_measured(&a, &doc);

    // The server killed: the same analyzer falls back, naming the address.
    let address = server.url.trim_start_matches("http://").to_string();
    server.kill();
    let a = llm.analyze(&doc);
    assert_fell_back(&a, &doc, &[&address, "Connection refused"]);
}

/// Sends a completion that runs to the end of the server's context (end of
/// text ignored) and returns once the server's only slot is working on it,
/// so every later request waits. The connection is kept open by the caller.
fn occupy_the_slot(server_url: &str) -> std::net::TcpStream {
    use std::io::{Read, Write};
    let address = server_url.trim_start_matches("http://");
    let body = r#"{"prompt":"a","n_predict":-1,"ignore_eos":true}"#;
    let mut busy = std::net::TcpStream::connect(address).unwrap();
    write!(
        busy,
        "POST /completion HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    for _ in 0..200 {
        let mut probe = std::net::TcpStream::connect(address).unwrap();
        write!(probe, "GET /slots HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").unwrap();
        let mut answer = String::new();
        let _ = probe.read_to_string(&mut answer);
        if answer.contains("\"is_processing\":true") {
            return busy;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("llama-server at {server_url} never reported its slot busy on /slots");
}

#[test]
fn a_real_server_slower_than_the_timeout_falls_back() {
    let Some(tools) = tools() else { return };
    let _turn = serial();
    let doc = handbook();
    // The server's one slot is busy with a completion that runs to the end
    // of a 64k context, so the analyzer's request waits past its one-second
    // timeout. (Before, the analyzer's own answer was relied on to be slow;
    // since the schema bounds `reason`, the grammar can close it in under a
    // second, and it sometimes did.)
    // The outcome, not a duration: no verdict taken, the fallback names the timeout.
    let server = llama_server(&tools, 65536, &["--no-jinja"]);
    let busy = occupy_the_slot(&server.url);
    let a = analyzer(&server.url, 1).analyze(&doc);
    assert_fell_back(&a, &doc, &["timed out"]);
    drop(busy);
    drop(server);
}

/// Gemma 3 270M, a real (base) model with its real tokenizer and chat
/// template, through the schema's grammar: the answer is a complete verdict
/// of the schema's shape, its `reason` closed within the schema's bound.
#[test]
fn gemma_answers_through_the_grammar_within_the_bounded_reason() {
    let Some(gemma) = common::gemma() else { return };
    let _turn = serial();
    let doc = handbook();
    let server = common::gemma_server(&gemma, 4096);
    let llm = Analyzer::from_config(&AnalysisConfig {
        route: "llm".into(),
        llm_url: format!("{}/v1", server.url),
        llm_model: "gemma-3-270m".into(),
        timeout_seconds: 600,
        ..Default::default()
    });
    let a = llm.analyze(&doc);
    // Before `reason` had a bound, the model never closed it: the answer ran
    // to max_tokens (1,024 tokens, 70 s here) and was cut. Now it completes,
    // and what it says is checked: Gemma's verdict (as seen on this build:
    // an overlap of 100 tokens, over half of its max_tokens) is refused by
    // our check, which the schema cannot express; a valid one would be taken.
    match a.route {
        Route::Llm => {
            assert_eq!(a.analyzer, "llm:gemma-3-270m");
            assert!(a.reason.chars().count() <= datafactory_analyze::REASON_MAX_CHARS);
            assert_measured(&a, &doc);
        }
        Route::Heuristic => {
            let fallback = a.fallback.as_deref().unwrap_or_default();
            assert!(
                fallback.contains("is over half of max_tokens") || fallback.contains("is outside 64..=4096"),
                "a complete verdict refused by our check, not {fallback:?}"
            );
            assert_fell_back(&a, &doc, &[]);
        }
    }
}
