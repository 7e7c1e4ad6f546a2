//! The DataFactory service (`datafactory serve`, 127.0.0.1:9000 by default): ingest
//! as jobs, search (reranked through [`Reranker`] when configured), documents,
//! health, readiness and metrics over HTTP; and the reranker service
//! (`datafactory rerank-server`, port 9200, [`rerank`]) with its client. A
//! service listens beyond loopback only with API keys or when told
//! `--insecure` ([`check_exposure`]).
//!
//! It is an adapter: the work is done by `datafactory-ingest` and
//! `datafactory-store`, on blocking threads, while the async side only moves
//! requests and bytes. Uploaded files are written under
//! `<data_dir>/uploads/<job>/` with names the server makes (the client's file
//! name is kept only as the document's source name, never as a path).

pub mod analyzer;
mod console;
mod fleet;
mod jobs;
mod limits;
mod metrics;
pub mod openapi;
pub mod rerank;
mod routes;

use datafactory_core::{Config, Embedder, Reranker};
use datafactory_ingest::Pipeline;
use datafactory_store::Store;
use std::net::SocketAddr;
use std::sync::Arc;

pub use datafactory_remote::RemoteReranker;
pub use rerank::{rerank_router, serve_rerank, serve_rerank_on, RerankState};
pub use routes::router;

/// Everything a request handler needs.
pub struct AppState {
    pub config: Config,
    pub store: Arc<Store>,
    pub pipeline: Arc<Pipeline>,
    /// Why there is no embedder, when there is none.
    pub embedding_note: Option<String>,
    /// Reranks search results, when `rerank.mode` is not `off`.
    pub reranker: Option<Arc<dyn Reranker>>,
    /// The state file of the `datafactory up` that started this service
    /// (`DATAFACTORY_LAUNCHER_STATE`), for `/deployment`.
    pub launcher_state: Option<std::path::PathBuf>,
    jobs: jobs::Jobs,
    metrics: Arc<metrics::Metrics>,
    /// Ingest jobs running at once; the others wait their turn.
    ingest_slots: Arc<tokio::sync::Semaphore>,
    guard: limits::Guard,
}

impl AppState {
    pub fn new(
        config: Config,
        store: Arc<Store>,
        embedder: Option<Arc<dyn Embedder>>,
        note: Option<String>,
    ) -> AppState {
        let pipeline = Arc::new(Pipeline::with_embedder(&config, embedder));
        let metrics = Arc::new(metrics::Metrics::default());
        let guard = limits::Guard::new(&config.server, metrics.clone());
        AppState {
            config,
            store,
            pipeline,
            embedding_note: note,
            reranker: None,
            launcher_state: None,
            jobs: jobs::Jobs::default(),
            metrics,
            ingest_slots: Arc::new(tokio::sync::Semaphore::new(2)),
            guard,
        }
    }

    /// Reranks search results with `reranker` (the reranker service's
    /// client, or a model in this process).
    pub fn with_reranker(mut self, reranker: Option<Arc<dyn Reranker>>) -> AppState {
        self.reranker = reranker;
        self
    }

    /// Reports the deployment whose launcher's state file is `path` at
    /// `/deployment` (None: not started by `datafactory up`).
    pub fn with_launcher_state(mut self, path: Option<std::path::PathBuf>) -> AppState {
        self.launcher_state = path;
        self
    }

    /// Asks running ingest jobs to stop after the files they are on.
    pub fn cancel_jobs(&self) {
        self.jobs.cancel_all();
    }
}

/// Serves until `shutdown` completes, then stops running ingest jobs at a
/// file boundary and checkpoints the store.
pub async fn serve(
    state: Arc<AppState>,
    address: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    serve_on(state, listener, shutdown).await
}

/// Like [`serve`], on a listener the caller bound (tests bind port 0).
pub async fn serve_on(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let address = listener.local_addr()?;
    tracing::info!("listening on {address}");
    let resumed = routes::resume_jobs(&state);
    if resumed > 0 {
        tracing::warn!("resumed {resumed} unfinished ingest job(s)");
    }
    // On PostgreSQL, a node of a fleet: it runs queued jobs, whichever node took them in.
    let stop_fleet = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if fleet::enabled(&state) {
        let node = fleet::node_id(&address.to_string());
        tracing::info!("fleet node {node}");
        fleet::spawn_worker(state.clone(), node, address.to_string(), stop_fleet.clone());
    }
    let app = router(state.clone());
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
    stop_fleet.store(true, std::sync::atomic::Ordering::Relaxed);
    state.cancel_jobs();
    state.jobs.wait_idle().await;
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || store.checkpoint())
        .await
        .map_err(std::io::Error::other)?
        .map_err(std::io::Error::other)?;
    Ok(())
}

/// Whether a service may listen on `address` with the keys of `server`: a
/// loopback address, or any address with `server.api_keys`, is fine; another
/// address without keys would let anyone who reaches it ingest, read and
/// delete, so it is refused unless `insecure` (`--insecure`) or
/// `server.allow_insecure` says so, and then `Ok` carries a warning to print.
pub fn check_exposure(
    address: SocketAddr,
    server: &datafactory_core::config::ServerConfig,
    insecure: bool,
) -> Result<Option<String>, String> {
    if address.ip().is_loopback() || !server.api_keys.is_empty() {
        return Ok(None);
    }
    if insecure || server.allow_insecure {
        return Ok(Some(format!(
            "WARNING: listening on {address} with no API key (--insecure / server.allow_insecure): \
             anyone who can reach this address can ingest, read and delete documents"
        )));
    }
    Err(format!(
        "refusing to listen on {address} with no API key: anyone who can reach it could ingest, read \
         and delete documents. Set server.api_keys (e.g. DATAFACTORY_SERVER__API_KEYS='[\"<a key of 16+ \
         characters>\"]'), listen on loopback (--address 127.0.0.1:{port}), or pass --insecure \
         (server.allow_insecure = true) to run it open anyway",
        port = address.port()
    ))
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}
