//! `datafactory`: the command line. It turns flags into a configuration and a
//! request, hands them to the libraries, and renders what comes back for
//! people (tables, a progress bar) or for programs (`--json`).

mod client;
mod config_reference;
mod conventions;
mod first_run;
mod launch;
mod output;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use datafactory_core::{Config, Embedder, PlanOverride};
use datafactory_ingest::{IngestObserver, IngestRequest, Pipeline};
use datafactory_store::{SearchMode, SearchRequest, Store};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// mimalloc instead of glibc's allocator: the model's large per-layer tensors
/// made glibc map and unmap memory on every layer (a quarter of embedding time
/// went to page faults); mimalloc keeps and reuses it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code when an ingest finished but some inputs failed.
pub(crate) const EXIT_SOME_FAILED: u8 = 3;

/// `datafactory --version`: the version, the git commit it was built from
/// ("unknown" outside a git checkout) and the enabled cargo features (build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("DF_BUILD_GIT_COMMIT"),
    ", features: ",
    env!("DF_BUILD_FEATURES"),
    ")"
);

#[derive(Parser)]
#[command(name = "datafactory", version = VERSION, about = "Document ingestion and retrieval for RAG")]
struct Cli {
    /// Configuration file (default: ./datafactory.toml if present).
    #[arg(long, global = true, env = "DATAFACTORY_CONFIG")]
    config: Option<PathBuf>,
    /// Where the store lives (overrides `data_dir`; default ./datafactory-data).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// More log output (-v info, -vv debug); or set DATAFACTORY_LOG.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Send `ingest` and `search` to a running `datafactory serve` at this URL.
    #[arg(long, global = true, env = "DATAFACTORY_SERVER")]
    server: Option<String>,
    /// Bearer key for --server.
    #[arg(long, global = true, env = "DATAFACTORY_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Ingest files and folders (recursively).
    Ingest {
        /// Collection to ingest into (default: ingest.default_collection).
        #[arg(long, short)]
        collection: Option<String>,
        /// In folders, try every file, not only known document extensions.
        #[arg(long)]
        all_files: bool,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
        /// Change every document's chunking plan, e.g.
        /// `max_tokens=256,overlap_tokens=32,strategy=lines,keep_code_whole=true`
        /// (followed even when analysis.follow_plan is off).
        #[arg(long, value_name = "KEY=VALUE,...")]
        plan: Option<String>,
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Analyse documents: type, language, structure and the chunking plan.
    Analyze {
        /// Print the analyses as JSON (an array of {"source", "analysis"}).
        #[arg(long)]
        json: bool,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run the analyzer service (POST /analyze, GET /health).
    AnalyzeServer {
        /// Address to listen on (default: analysis.address, 127.0.0.1:9100). Another
        /// address than loopback needs server.api_keys, or --insecure.
        #[arg(long)]
        address: Option<String>,
        /// Listen on a non-loopback address without API keys (server.allow_insecure), with a warning.
        #[arg(long)]
        insecure: bool,
    },
    /// Search chunks: by words, by meaning, or both fused.
    Search {
        #[arg(long, short)]
        collection: Option<String>,
        /// hybrid, lexical, dense or sparse (default: search.mode).
        #[arg(long, short)]
        mode: Option<String>,
        /// Only this document (id, or the id its input gave it); repeatable.
        #[arg(long = "document")]
        documents: Vec<String>,
        /// Only documents whose metadata has KEY equal to VALUE (JSON, else a string); repeatable.
        #[arg(long = "meta", value_name = "KEY=VALUE")]
        meta: Vec<String>,
        /// Number of results (default: search.top_k).
        #[arg(long, short = 'k')]
        top_k: Option<usize>,
        #[arg(long)]
        json: bool,
        #[arg(required = true)]
        query: Vec<String>,
    },
    /// List, show or delete stored documents.
    Documents {
        #[command(subcommand)]
        action: DocumentsCommand,
    },
    /// Counts in the store and in each index, with a consistency verdict.
    Stats {
        #[arg(long)]
        json: bool,
        /// Near-duplicate threshold: passages whose word 3-shingles have at
        /// least this Jaccard similarity (estimated by MinHash; 0.5 to 1).
        #[arg(long, default_value_t = datafactory_store::NEAR_THRESHOLD, value_parser = parse_near_threshold)]
        near_threshold: f64,
    },
    /// Evaluate retrieval on a question set: ingest it into a fresh temporary
    /// store with the configured pipeline, run its queries, report Pass@k,
    /// Recall@k, MRR@10, nDCG@10 and latency per search mode.
    Eval {
        /// lexical, dense, sparse or hybrid; repeat for several (default: every
        /// mode the configuration allows).
        #[arg(long = "mode", short)]
        modes: Vec<String>,
        /// Cut-offs of Pass@k and Recall@k.
        #[arg(long, value_delimiter = ',', default_value = "5,10,20")]
        k: Vec<usize>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Evaluate only the first N queries.
        #[arg(long)]
        limit_queries: Option<usize>,
        /// own: DataFactory's chunker; given: the set's own chunks (default when it has them).
        #[arg(long, value_parser = ["own", "given"])]
        chunker: Option<String>,
        /// Run hybrid search once per fusion given, over the same ingested
        /// store and query embeddings: METHOD[:WORDS:DENSE[:SPARSE]], METHOD one
        /// of rrf, minmax, zscore, dbsf (e.g. `--fusion rrf:0.2:0.8,zscore`);
        /// without weights, the configured ones. Default: the configured fusion.
        #[arg(long, value_delimiter = ',')]
        fusion: Vec<String>,
        /// The set: a folder (cookbook codebase or docs set, BEIR, Cranfield, SQuAD files) or a SQuAD JSON file.
        dataset: PathBuf,
    },
    /// Run the DataFactory HTTP service (ingest jobs, search, documents, metrics).
    Serve {
        /// Address to listen on (default: server.address, 127.0.0.1:9000). Another
        /// address than loopback needs server.api_keys, or --insecure.
        #[arg(long)]
        address: Option<String>,
        /// Listen on a non-loopback address without API keys (server.allow_insecure), with a warning.
        #[arg(long)]
        insecure: bool,
    },
    /// Run the reranker service: POST /rerank (text-embeddings-inference's
    /// shape) with the cross-encoder of `rerank.model`; keys and limits of `[server]`.
    RerankServer {
        /// Address to listen on (default: rerank.address, 127.0.0.1:9200). Another
        /// address than loopback needs server.api_keys, or --insecure.
        #[arg(long)]
        address: Option<String>,
        /// Listen on a non-loopback address without API keys (server.allow_insecure), with a warning.
        #[arg(long)]
        insecure: bool,
    },
    /// Start every service of a deployment file (default: ./datafactory-deploy.toml,
    /// else the seed's layout), each pinned to its GPU; wait for their health
    /// checks, print a table, then supervise (restart crashed services) until
    /// Ctrl-C or `datafactory down`.
    Up {
        /// The deployment file.
        #[arg(long, short, env = "DATAFACTORY_DEPLOY")]
        file: Option<PathBuf>,
        /// Print what would be started (programs, environment, logs) and start nothing.
        #[arg(long)]
        plan: bool,
        /// Supervise in the background (output in logs/launcher.log) and return once up.
        #[arg(long)]
        detach: bool,
        #[arg(long)]
        json: bool,
        /// The background launcher itself (started by --detach).
        #[arg(long, hide = true)]
        supervise: bool,
    },
    /// Stop exactly what `up` started (PIDs checked against their recorded
    /// start time and command line): SIGTERM, then SIGKILL after the grace period.
    Down {
        #[arg(long, short, env = "DATAFACTORY_DEPLOY")]
        file: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Each service's health, PID and restarts, each GPU's state, each Ollama
    /// instance's loaded models.
    Status {
        #[arg(long, short, env = "DATAFACTORY_DEPLOY")]
        file: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// GPU name, memory, utilisation, temperature and processes (NVML); exit
    /// code 4 where there is no NVIDIA driver.
    Gpu {
        #[arg(long)]
        json: bool,
    },
    /// The deployment's Ollama instances.
    Ollama {
        #[command(subcommand)]
        action: OllamaCommand,
    },
    /// Show the effective configuration, or write a commented default one.
    Config {
        #[command(subcommand)]
        action: ConfigCommand,
    },
    /// The parse child process (datafactory_parse::worker): a request and a
    /// file on standard input, the documents as JSON on standard output.
    #[command(hide = true)]
    ParseWorker,
    /// Print a shell completion script, e.g. `datafactory completions bash >
    /// ~/.local/share/bash-completion/completions/datafactory`.
    Completions {
        /// The shell to complete in.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `datafactory man | man -l -`; or
    /// write one page per command into a folder.
    Man {
        /// Write datafactory.1 and datafactory-COMMAND.1 pages into this folder.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum DocumentsCommand {
    List {
        #[arg(long, short)]
        collection: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show one document (by id or by the id its input gave it) with its chunks.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove a document from the store and every index.
    Delete {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum OllamaCommand {
    /// Unload the models of every Ollama instance of the deployment (`keep_alive: 0`).
    Unload {
        #[arg(long, short, env = "DATAFACTORY_DEPLOY")]
        file: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the configuration after file, environment and flags, as TOML.
    Show,
    /// Write every key at its default, each under its meaning (from
    /// docs/CONFIGURATION.md), to PATH (default ./datafactory.toml; `-`:
    /// standard output). An existing file is kept unless --force.
    Init {
        path: Option<PathBuf>,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, so printing into a closed pipe (`datafactory
    // stats | head -2`) panics; like other command-line tools, end quietly.
    #[cfg(unix)]
    // Safety: setting a signal's action to the default before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    if matches!(cli.command, Command::ParseWorker) {
        return datafactory_parse::worker::main();
    }
    // Parsing of untrusted formats (ingest.parse_isolation) runs in a child
    // process of this same binary, under a memory limit and a timeout.
    datafactory_parse::worker::register_current_exe(&["parse-worker"]);
    init_logging(cli.verbose);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("DATAFACTORY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(conventions::colour_on_stderr())
        .with_target(false)
        .init();
}

/// Refuses an open non-loopback listen address (see `check_exposure`);
/// prints the warning when it is allowed anyway.
fn exposure(address: std::net::SocketAddr, config: &Config, insecure: bool) -> anyhow::Result<()> {
    match datafactory_server::check_exposure(address, &config.server, insecure) {
        Ok(warning) => {
            if let Some(w) = warning {
                eprintln!("{w}");
                tracing::warn!("{w}");
            }
            Ok(())
        }
        Err(e) => Err(anyhow::anyhow!(e)),
    }
}

fn load_config(cli: &Cli) -> Result<Config> {
    let mut overrides = serde_json::Map::new();
    if let Some(dir) = &cli.data_dir {
        overrides.insert("data_dir".into(), dir.display().to_string().into());
    }
    Ok(Config::load(cli.config.as_deref(), &overrides)?)
}

fn open_store(config: &Config) -> Result<Store> {
    Store::open_config(config).with_context(|| match config.store.backend.as_str() {
        "postgres" => format!("cannot open the PostgreSQL store (schema {})", config.store.schema),
        _ => format!("cannot open the store in {}", config.data_dir.display()),
    })
}

fn run(cli: Cli) -> Result<ExitCode> {
    // The launcher's commands read a deployment file, not the configuration.
    match &cli.command {
        Command::Up { file, plan, detach, json, supervise } => {
            return launch::up(file.as_deref(), *plan, *detach, *json, *supervise)
        }
        Command::Down { file, json } => return launch::down(file.as_deref(), *json),
        Command::Status { file, json } => return launch::status(file.as_deref(), *json),
        Command::Gpu { json } => return launch::gpu(*json),
        Command::Ollama { action: OllamaCommand::Unload { file, json } } => {
            return launch::ollama_unload(file.as_deref(), *json)
        }
        // Generated from the definitions above, or from the reference: no
        // configuration is read (a broken one must not stop `config init`).
        Command::Completions { shell } => {
            return conventions::completions(*shell, &mut Cli::command(), &mut std::io::stdout())
        }
        Command::Man { out_dir } => return conventions::man(Cli::command(), out_dir.as_deref()),
        Command::Config { action: ConfigCommand::Init { path, force } } => {
            return conventions::config_init(path.as_deref(), *force)
        }
        _ => {}
    }
    let config = load_config(&cli)?;
    let data_dir_flag = cli.data_dir.clone();
    match cli.command {
        Command::Serve { address, insecure } => {
            let address = address.unwrap_or_else(|| config.server.address.clone());
            let address: std::net::SocketAddr = address
                .parse()
                .with_context(|| format!("--address {address:?} is not an IP address and port"))?;
            exposure(address, &config, insecure)?;
            let store = Arc::new(open_store(&config)?);
            let (embedder, note) = load_embedder(&config);
            warn_without_model(&config, note.as_deref());
            let reranker = search_reranker(&config)?;
            let state = Arc::new(
                datafactory_server::AppState::new(config, store, embedder, note)
                    .with_reranker(reranker)
                    .with_launcher_state(
                        std::env::var_os(datafactory_launcher::state::STATE_VAR)
                            .filter(|p| !p.is_empty())
                            .map(std::path::PathBuf::from),
                    ),
            );
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(datafactory_server::serve(
                state,
                address,
                datafactory_server::shutdown_signal(),
            ))?;
        }
        Command::RerankServer { address, insecure } => {
            let address = address.unwrap_or_else(|| config.rerank.address.clone());
            let address: std::net::SocketAddr = address
                .parse()
                .with_context(|| format!("--address {address:?} is not an IP address and port"))?;
            exposure(address, &config, insecure)?;
            let reranker = datafactory_models::load_reranker(&config.rerank)
                .context("cannot load the reranker model (rerank.model)")?;
            let state = Arc::new(datafactory_server::RerankState::new(config, reranker));
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(datafactory_server::serve_rerank(
                state,
                address,
                datafactory_server::shutdown_signal(),
            ))?;
        }
        Command::AnalyzeServer { address, insecure } => {
            let address = address.unwrap_or_else(|| config.analysis.address.clone());
            let address: std::net::SocketAddr = address
                .parse()
                .with_context(|| format!("--address {address:?} is not an IP address and port"))?;
            exposure(address, &config, insecure)?;
            let state = Arc::new(datafactory_server::analyzer::AnalyzerState::new(&config));
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(datafactory_server::analyzer::serve(
                state,
                address,
                datafactory_server::shutdown_signal(),
            ))?;
        }
        Command::Analyze { json, files } => {
            let analyzer = datafactory_analyze::Analyzer::from_config(&config.analysis);
            let options = datafactory_parse::ParseOptions::from_config(&config.ingest);
            let mut results = Vec::new();
            let mut failed = false;
            for path in &files {
                let parsed = std::fs::read(path).map_err(|e| format!("cannot read: {e}")).and_then(|b| {
                    datafactory_parse::parse(&b, Some(path), &options).map_err(|e| e.to_string())
                });
                match parsed {
                    Ok(p) => {
                        let many = p.documents.len() > 1;
                        for (i, d) in p.documents.iter().enumerate() {
                            let source = if many {
                                format!("{}#{}", path.display(), i + 1)
                            } else {
                                path.display().to_string()
                            };
                            results.push((source, analyzer.analyze(d)));
                        }
                    }
                    Err(e) => {
                        failed = true;
                        eprintln!("failed: {}: {e}", path.display());
                    }
                }
            }
            if json {
                let v: Vec<_> =
                    results.iter().map(|(s, a)| serde_json::json!({"source": s, "analysis": a})).collect();
                output::print_json(&v)?;
            } else {
                output::print_analyses(&results);
            }
            if failed {
                return Ok(ExitCode::from(EXIT_SOME_FAILED));
            }
        }
        Command::Config { action: ConfigCommand::Show } => {
            print!("{}", config.to_toml());
        }
        Command::Ingest { collection, all_files, json, plan, paths } if cli.server.is_some() => {
            let plan = plan.as_deref().map(PlanOverride::parse).transpose().map_err(anyhow::Error::msg)?;
            let client = client::Client::new(cli.server.as_deref().unwrap_or_default(), cli.api_key.clone());
            let bar = indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
            let show = |v: &serde_json::Value| {
                bar.set_length(v["files"]["total"].as_u64().unwrap_or(0));
                bar.set_position(v["files"]["done"].as_u64().unwrap_or(0));
                let phases: Vec<String> = v["phases"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| p["state"] != "not_run")
                    .map(|p| format!("{} {}", p["phase"].as_str().unwrap_or(""), p["items"]))
                    .collect();
                bar.set_message(phases.join(", "));
            };
            let summaries =
                client.ingest(&config, &paths, collection.as_deref(), all_files, plan.as_ref(), &show)?;
            bar.finish_and_clear();
            let failed = summaries.iter().any(|s| s.has_failures());
            for s in &summaries {
                if json {
                    output::print_json(s)?;
                } else {
                    output::print_ingest(s);
                }
            }
            if failed {
                return Ok(ExitCode::from(EXIT_SOME_FAILED));
            }
        }
        Command::Search { collection, mode, top_k, json, query, documents, meta } if cli.server.is_some() => {
            let filter = search_filter(documents, &meta)?;
            let client = client::Client::new(cli.server.as_deref().unwrap_or_default(), cli.api_key.clone());
            let text = query.join(" ");
            let v = client.search(&text, top_k, collection.as_deref(), mode.as_deref(), &filter)?;
            if json {
                output::print_json(&v)?;
            } else {
                for n in v["notes"].as_array().into_iter().flatten() {
                    eprintln!("note: {}", n.as_str().unwrap_or(""));
                }
                let hits: Vec<datafactory_store::SearchHit> = serde_json::from_value(v["results"].clone())?;
                let took = std::time::Duration::from_secs_f64(v["took_ms"].as_f64().unwrap_or(0.0) / 1000.0);
                output::print_hits(&hits, took);
            }
        }
        Command::Ingest { collection, all_files, json, plan, paths } => {
            let plan = plan.as_deref().map(PlanOverride::parse).transpose().map_err(anyhow::Error::msg)?;
            let store = open_store(&config)?;
            let (embedder, note) = load_embedder(&config);
            warn_without_model(&config, note.as_deref());
            let pipeline = Pipeline::with_embedder(&config, embedder);
            let request = IngestRequest {
                paths,
                collection: collection.unwrap_or_else(|| config.ingest.default_collection.clone()),
                all_files,
                plan,
                ..Default::default()
            };
            let progress = Progress::new();
            let mut summary = datafactory_ingest::ingest(&store, &pipeline, &request, &progress)?;
            progress.finish();
            summary.embedding.note = note;
            if json {
                output::print_json(&summary)?;
            } else {
                output::print_ingest(&summary);
            }
            if summary.has_failures() {
                return Ok(ExitCode::from(EXIT_SOME_FAILED));
            }
        }
        Command::Search { collection, mode, top_k, json, query, documents, meta } => {
            let filter = search_filter(documents, &meta)?;
            let store = open_store(&config)?;
            let text = query.join(" ");
            let mode_name = mode.unwrap_or_else(|| config.search.mode.clone());
            let mode = SearchMode::parse_name(&mode_name).with_context(|| {
                format!("unknown search mode {mode_name:?}: use hybrid, lexical, dense or sparse")
            })?;
            let mut notes = Vec::new();
            let started = std::time::Instant::now();
            let embedding = if mode == SearchMode::Lexical {
                None
            } else {
                query_embedding(&config, &store, &text, &mut notes)?
            };
            let top_k = top_k.unwrap_or(config.search.top_k);
            let reranker = search_reranker(&config)?;
            let candidates = config.rerank.candidates;
            let mut results = store.search(&SearchRequest {
                embedding: embedding.as_ref(),
                collection: collection.as_deref(),
                filter: (!filter.is_empty()).then_some(&filter),
                ..SearchRequest::new(
                    &text,
                    mode,
                    datafactory_ingest::search_depth(top_k, reranker.is_some(), candidates),
                    &config.search,
                )
            })?;
            notes.append(&mut results.notes);
            let wants_dense =
                mode == SearchMode::Dense || (mode == SearchMode::Hybrid && config.search.weight_dense > 0.0);
            if wants_dense && store.vector_options().is_none() && model_configured(&config) {
                notes.push(first_run::words_only_store(&config.embedding));
            }
            let rerank = reranker.map(|r| {
                let pipeline = Pipeline::new(&config);
                let report = datafactory_ingest::rerank_hits(
                    r.as_ref(),
                    &pipeline,
                    &text,
                    &mut results.hits,
                    candidates,
                    top_k,
                );
                if let Some(e) = &report.error {
                    notes.push(format!("reranking failed, results in fused order: {e}"));
                }
                report
            });
            let took = started.elapsed();
            if json {
                output::print_json(&output::SearchOutput {
                    query: &text,
                    mode: &mode_name,
                    retrievers: &results.retrievers,
                    rerank: rerank.as_ref(),
                    notes: &notes,
                    took_ms: took.as_secs_f64() * 1000.0,
                    results: &results.hits,
                })?;
            } else {
                for n in &notes {
                    eprintln!("note: {n}");
                }
                output::print_hits(&results.hits, took);
            }
        }
        Command::Documents { action } => {
            let store = open_store(&config)?;
            match action {
                DocumentsCommand::List { collection, json } => {
                    let docs = store.list_documents(collection.as_deref())?;
                    if json {
                        output::print_json(&docs)?;
                    } else {
                        output::print_documents(&docs);
                    }
                }
                DocumentsCommand::Show { id, json } => {
                    let doc =
                        store.get_document(&id)?.with_context(|| format!("no document with id {id:?}"))?;
                    if json {
                        output::print_json(&doc)?;
                    } else {
                        output::print_document(&doc);
                    }
                }
                DocumentsCommand::Delete { id, json } => {
                    let target =
                        store.get_document(&id)?.with_context(|| format!("no document with id {id:?}"))?;
                    let deleted = store.delete_document(&target.summary.id)?;
                    if json {
                        output::print_json(
                            &serde_json::json!({"id": target.summary.id, "deleted": deleted}),
                        )?;
                    } else {
                        println!("deleted {} ({})", target.summary.id, target.summary.source);
                    }
                }
            }
        }
        Command::Eval { modes, k, json, limit_queries, chunker, fusion, dataset } => {
            let options = EvalOptions { modes, ks: k, json, limit_queries, chunker, fusions: fusion };
            run_eval(&config, data_dir_flag.as_deref(), options, &dataset)?;
        }
        Command::Up { .. }
        | Command::Down { .. }
        | Command::Status { .. }
        | Command::Gpu { .. }
        | Command::Ollama { .. }
        | Command::ParseWorker
        | Command::Completions { .. }
        | Command::Man { .. }
        | Command::Config { action: ConfigCommand::Init { .. } } => {
            unreachable!("handled before the configuration is read")
        }
        Command::Stats { json, near_threshold } => {
            let store = open_store(&config)?;
            let stats = store.stats()?;
            let duplicates = store.duplicate_report(near_threshold)?;
            // The embedding model the store's vectors were made with, if any.
            let vectors = store.vector_options();
            // On PostgreSQL, the fleet sharing the store: its nodes and queue.
            let fleet = match store.backend() {
                "postgres" => Some(store.fleet(std::time::Duration::from_secs(config.store.lease_seconds))?),
                _ => None,
            };
            if json {
                let mut v = serde_json::to_value(&stats)?;
                v["embedding_model"] = vectors.as_ref().map(|o| o.model.clone()).into();
                v["duplicates"] = serde_json::to_value(&duplicates)?;
                if let Some(f) = &fleet {
                    v["fleet"] = serde_json::to_value(f)?;
                }
                output::print_json(&v)?;
            } else {
                output::print_stats(&stats, vectors.as_ref());
                output::print_duplicates(&duplicates);
                if let Some(f) = &fleet {
                    output::print_fleet(f);
                }
            }
            if !stats.consistent {
                return Ok(ExitCode::from(EXIT_SOME_FAILED));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `datafactory eval`'s flags.
struct EvalOptions {
    modes: Vec<String>,
    ks: Vec<usize>,
    json: bool,
    limit_queries: Option<usize>,
    chunker: Option<String>,
    fusions: Vec<String>,
}

/// `datafactory eval`: loads the set, evaluates it in a temporary store
/// (under `--data-dir` when given, else the system's temporary folder; never
/// the configured store), prints the report.
fn run_eval(
    config: &Config,
    data_dir_flag: Option<&std::path::Path>,
    options: EvalOptions,
    dataset: &std::path::Path,
) -> Result<()> {
    let EvalOptions { modes, ks, json, limit_queries, chunker, fusions } = options;
    let fusions = fusions
        .iter()
        .map(|f| datafactory_eval::FusionVariant::parse(f).map_err(anyhow::Error::msg))
        .collect::<Result<Vec<_>>>()?;
    let modes = modes
        .iter()
        .map(|m| {
            SearchMode::parse_name(m)
                .with_context(|| format!("unknown search mode {m:?}: use hybrid, lexical, dense or sparse"))
        })
        .collect::<Result<Vec<_>>>()?;
    let set = datafactory_eval::load(dataset)?;
    let (embedder, note) = load_embedder(config);
    warn_without_model(config, note.as_deref());
    let temp = match data_dir_flag {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            tempfile::Builder::new().prefix(".eval-").tempdir_in(dir)
        }
        None => tempfile::Builder::new().prefix("datafactory-eval-").tempdir(),
    }
    .context("cannot create a temporary store")?;
    let settings = datafactory_eval::EvalSettings {
        modes: (!modes.is_empty()).then_some(modes),
        ks,
        limit_queries,
        chunker: chunker.as_deref().and_then(datafactory_eval::ChunkerChoice::parse_name),
        fusions,
    };
    let progress = EvalProgress::new();
    let result = datafactory_eval::evaluate(&set, config, embedder, temp.path(), &settings, &progress);
    progress.finish();
    let mut report = result?;
    if let Some(n) = note {
        report.notes.insert(0, n);
    }
    if json {
        output::print_json(&report)?;
    } else {
        output::print_eval(&report);
    }
    Ok(())
}

/// A progress bar per stage of an evaluation, on a terminal.
struct EvalProgress {
    bar: indicatif::ProgressBar,
}

impl EvalProgress {
    fn new() -> EvalProgress {
        let bar = indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg:<18} {bar:40} {pos}/{len} (eta {eta})")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        EvalProgress { bar }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl datafactory_eval::EvalObserver for EvalProgress {
    fn stage(&self, name: &str, total: usize) {
        self.bar.reset();
        self.bar.set_length(total as u64);
        self.bar.set_message(name.to_string());
    }

    fn advance(&self, steps: usize) {
        self.bar.inc(steps as u64);
    }
}

/// The configured embedding model, or None (words only) with the reason.
fn load_embedder(config: &Config) -> (Option<Arc<dyn Embedder>>, Option<String>) {
    let e = &config.embedding;
    if !e.remote_urls.is_empty() {
        return match datafactory_remote::RemoteEmbedder::connect(
            &e.remote_urls,
            &e.remote_api_key,
            &e.remote_query_prompt,
            &config.remote,
        ) {
            Ok(r) => (Some(Arc::new(r)), None),
            Err(err) => (None, Some(first_run::no_workers(&err.to_string()))),
        };
    }
    if config.embedding.model.trim().is_empty() {
        return (None, Some("embedding.model is empty: words only".to_string()));
    }
    match datafactory_models::load_embedder(&config.embedding) {
        Ok(e) => (Some(e), None),
        Err(e) => (None, Some(first_run::no_model(&config.embedding, &e.to_string()))),
    }
}

/// Whether embeddings are asked for: a model or workers are configured (an
/// empty `embedding.model` turns them off on purpose, and is not warned about).
fn model_configured(config: &Config) -> bool {
    !config.embedding.model.trim().is_empty() || !config.embedding.remote_urls.is_empty()
}

/// Prints why there is no model (one line, with how to get meaning search),
/// unless none was asked for.
fn warn_without_model(config: &Config, note: Option<&str>) {
    if let Some(n) = note.filter(|_| model_configured(config)) {
        eprintln!("warning: {n}");
    }
}

/// What search reranks with (`rerank.mode`): nothing, the reranker service's
/// client, or the model loaded here (an error when it cannot be loaded).
fn search_reranker(config: &Config) -> Result<Option<Arc<dyn datafactory_core::Reranker>>> {
    Ok(match config.rerank.mode.as_str() {
        "remote" => Some(Arc::new(datafactory_server::RemoteReranker::from_config(config))),
        "local" => Some(
            datafactory_models::load_reranker(&config.rerank)
                .context("rerank.mode is \"local\" but the reranker model cannot be loaded")?,
        ),
        _ => None,
    })
}

/// Embeds the query with the model the store's vectors were made with,
/// loading the model only when the store has vectors.
fn query_embedding(
    config: &Config,
    store: &Store,
    text: &str,
    notes: &mut Vec<String>,
) -> Result<Option<datafactory_core::Embedding>> {
    if store.vector_options().is_none() {
        return Ok(None); // the store explains it
    }
    let (embedder, note) = load_embedder(config);
    notes.extend(note);
    Ok(datafactory_ingest::query_embedding(store, embedder.as_deref(), text, notes)?)
}

/// `--document` and `--meta KEY=VALUE` as a search filter.
fn search_filter(documents: Vec<String>, meta: &[String]) -> Result<datafactory_store::SearchFilter> {
    let mut filter = datafactory_store::SearchFilter { document_ids: documents, ..Default::default() };
    for m in meta {
        let (k, v) = m.split_once('=').with_context(|| format!("--meta {m:?}: expected KEY=VALUE"))?;
        let value = serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.to_string()));
        filter.metadata.insert(k.to_string(), value);
    }
    Ok(filter)
}

/// A progress bar on a terminal; nothing otherwise.
struct Progress {
    bar: indicatif::ProgressBar,
    /// Chunks given a context so far (shown while the LLM works).
    contexts: std::sync::atomic::AtomicUsize,
}

impl Progress {
    fn new() -> Progress {
        let bar = indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} files (eta {eta}) {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Progress { bar, contexts: Default::default() }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl IngestObserver for Progress {
    fn started(&self, files: usize) {
        self.bar.set_length(files as u64);
    }

    fn file_done(&self, source: &str, _failed: bool) {
        self.bar.inc(1);
        let name = std::path::Path::new(source)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.bar.set_message(name);
    }

    fn phase_progress(&self, phase: datafactory_ingest::Phase, items: usize, _seconds: f64) {
        if phase == datafactory_ingest::Phase::Enrichment {
            let n = self.contexts.fetch_add(items, std::sync::atomic::Ordering::Relaxed) + items;
            self.bar.set_message(format!("enrichment: {n} chunks"));
        }
    }
}

/// `stats --near-threshold`: a similarity between 0.5 and 1.
fn parse_near_threshold(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if (0.5..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("must be between 0.5 and 1, is {v}"))
    }
}
