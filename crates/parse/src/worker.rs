//! Parsing in a child process, so that a file that exhausts memory or time
//! costs that file only, never the process that asked.
//!
//! Some readers cannot be bounded in-process: lopdf (under pdf-extract)
//! inflates a PDF's streams to the end, and an allocation failure aborts the
//! whole process (`catch_unwind` cannot catch it). So [`crate::parse`] hands
//! the formats that [`crate::Isolation`] covers to a child process started
//! with an address-space limit (RLIMIT_AS = `ingest.parse_memory_mb`, core
//! dumps off) and waits for it at most `ingest.parse_timeout_seconds`, then
//! kills it.
//!
//! The child is any program whose `main` calls [`main`]: the `datafactory`
//! binary's hidden `parse-worker` subcommand (what production uses: the
//! binary registers itself with [`register`] at start), or this crate's own
//! `datafactory-parse-worker` binary (the crate's tests).
//!
//! Protocol. Standing input: one line of JSON ([`Request`]: the path hint
//! and the in-process limits), then the file's bytes to the end. The child
//! parses in-process and answers on standard output with JSON: exit status 0
//! and a [`crate::Parsed`], or exit status [`EXIT_PARSE_ERROR`] and a
//! [`crate::ParseError`] (whose message it also writes on standard error).
//! Any other end (a signal, another status) is the worker's failure; an abort
//! after "memory allocation of N bytes failed" is reported as the memory
//! limit.

use std::io::{Read, Seek, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use wait_timeout::ChildExt;

use crate::{ParseError, ParseOptions, Parsed};

/// The child's exit status for a parse error (a JSON `ParseError` on stdout).
pub const EXIT_PARSE_ERROR: i32 = 3;
/// The child's exit status for a request it could not read.
pub const EXIT_BAD_REQUEST: i32 = 4;

/// Most bytes of the child's standard error kept for a message.
const STDERR_KEPT: usize = 16 * 1024;

/// How to start the child process: `program args...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
}

static REGISTERED: OnceLock<WorkerCommand> = OnceLock::new();

/// Makes `command` the child process of every [`crate::parse`] whose options
/// name none. The `datafactory` binary calls this at start with itself
/// (`std::env::current_exe()`) and `["parse-worker"]`. The first call wins.
pub fn register(command: WorkerCommand) {
    let _ = REGISTERED.set(command);
}

/// Registers this running program with `args` (see [`register`]); does
/// nothing when the running program's path is unknown.
pub fn register_current_exe(args: &[&str]) {
    match std::env::current_exe() {
        Ok(program) => {
            register(WorkerCommand { program, args: args.iter().map(|a| a.to_string()).collect() })
        }
        Err(e) => tracing::warn!("parsing stays in-process: cannot find this program's path ({e})"),
    }
}

/// The registered worker, if any.
pub fn registered() -> Option<WorkerCommand> {
    REGISTERED.get().cloned()
}

/// What the parent sends before the file's bytes.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub path_hint: Option<PathBuf>,
    pub max_decompressed_bytes: u64,
    pub max_nesting: usize,
}

/// Parses `bytes` in a child process started from `command`, under the
/// memory limit and timeout of `opts`.
pub(crate) fn parse_in_child(
    command: &WorkerCommand,
    bytes: &[u8],
    path_hint: Option<&Path>,
    opts: &ParseOptions,
) -> Result<Parsed, ParseError> {
    let worker_error = |detail: String| ParseError::Worker { detail };
    // The input goes through an unlinked temporary file rather than a pipe:
    // no writer thread, and a child that dies early cannot SIGPIPE the parent
    // (the `datafactory` binary restores SIGPIPE's default action).
    let mut input =
        tempfile::tempfile().map_err(|e| worker_error(format!("cannot create its input file: {e}")))?;
    let request = Request {
        path_hint: path_hint.map(Path::to_path_buf),
        max_decompressed_bytes: opts.max_decompressed_bytes,
        max_nesting: opts.max_nesting,
    };
    let header = serde_json::to_vec(&request).map_err(|e| worker_error(e.to_string()))?;
    (|| -> std::io::Result<()> {
        input.write_all(&header)?;
        input.write_all(b"\n")?;
        input.write_all(bytes)?;
        input.rewind()
    })()
    .map_err(|e| worker_error(format!("cannot write its input file: {e}")))?;

    let memory_bytes = opts.memory_mb.saturating_mul(1024 * 1024);
    let mut cmd = Command::new(&command.program);
    cmd.args(&command.args)
        .stdin(Stdio::from(input))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own logging stays quiet unless asked for.
        .env("DATAFACTORY_LOG", std::env::var("DATAFACTORY_LOG").unwrap_or_else(|_| "error".into()));
    // Safety: only async-signal-safe calls (setrlimit) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit { rlim_cur: memory_bytes, rlim_max: memory_bytes };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let none = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            libc::setrlimit(libc::RLIMIT_CORE, &none);
            Ok(())
        });
    }
    let mut child =
        cmd.spawn().map_err(|e| worker_error(format!("cannot start {}: {e}", command.program.display())))?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        stdout.read_to_end(&mut buf).map(|_| buf)
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        if buf.len() > STDERR_KEPT {
            buf.drain(..buf.len() - STDERR_KEPT);
        }
        buf
    });
    let status = match child.wait_timeout(opts.timeout) {
        Ok(Some(status)) => status,
        Ok(None) => {
            let _ = child.kill();
            let _ = child.wait();
            let _ = out_reader.join();
            let _ = err_reader.join();
            return Err(ParseError::Timeout { seconds: opts.timeout.as_secs().max(1) });
        }
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(worker_error(format!("cannot wait for it: {e}")));
        }
    };
    let stdout = out_reader.join().ok().and_then(Result::ok).unwrap_or_default();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
    let last_line = || stderr.lines().rev().map(str::trim).find(|l| !l.is_empty()).unwrap_or("").to_string();
    match status.code() {
        Some(0) => serde_json::from_slice::<Parsed>(&stdout)
            .map_err(|e| worker_error(format!("unreadable answer ({e})"))),
        Some(EXIT_PARSE_ERROR) => Err(serde_json::from_slice::<ParseError>(&stdout)
            .unwrap_or_else(|e| worker_error(format!("unreadable error ({e}): {}", last_line())))),
        _ if out_of_memory(&stderr) => Err(ParseError::OutOfMemory { mb: opts.memory_mb }),
        Some(code) => Err(worker_error(format!("exit status {code}: {}", last_line()))),
        None => {
            let signal = status.signal().unwrap_or(0);
            // SIGKILL with no message: the kernel's OOM killer, most likely.
            if signal == libc::SIGKILL {
                return Err(worker_error(format!(
                    "killed by signal {signal} (out of memory? ingest.parse_memory_mb is {})",
                    opts.memory_mb
                )));
            }
            Err(worker_error(format!("killed by signal {signal}: {}", last_line())))
        }
    }
}

/// Whether the child's standard error says that an allocation failed.
fn out_of_memory(stderr: &str) -> bool {
    stderr.contains("memory allocation of")
        || stderr.contains("unable to allocate")
        || stderr.contains("out of memory")
}

/// The child process's `main`: reads a [`Request`] and the file's bytes on
/// standard input, parses in-process, answers on standard output (see the
/// module's documentation for the protocol).
pub fn main() -> ExitCode {
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().lock().read_to_end(&mut input) {
        eprintln!("parse worker: cannot read standard input: {e}");
        return ExitCode::from(EXIT_BAD_REQUEST as u8);
    }
    let Some(newline) = input.iter().position(|&b| b == b'\n') else {
        eprintln!("parse worker: standard input has no request line");
        return ExitCode::from(EXIT_BAD_REQUEST as u8);
    };
    let request: Request = match serde_json::from_slice(&input[..newline]) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("parse worker: bad request line: {e}");
            return ExitCode::from(EXIT_BAD_REQUEST as u8);
        }
    };
    let opts = ParseOptions {
        max_decompressed_bytes: request.max_decompressed_bytes,
        max_nesting: request.max_nesting,
        isolation: crate::Isolation::None,
        ..ParseOptions::default()
    };
    let bytes = &input[newline + 1..];
    let result = crate::parse_in_process(bytes, request.path_hint.as_deref(), &opts);
    let mut out = std::io::stdout().lock();
    let (answer, code) = match &result {
        Ok(parsed) => (serde_json::to_vec(parsed), 0),
        Err(e) => {
            eprintln!("{e}");
            (serde_json::to_vec(e), EXIT_PARSE_ERROR)
        }
    };
    match answer.map_err(std::io::Error::other).and_then(|a| out.write_all(&a).and_then(|_| out.flush())) {
        Ok(()) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("parse worker: cannot write the answer: {e}");
            ExitCode::from(EXIT_BAD_REQUEST as u8)
        }
    }
}
