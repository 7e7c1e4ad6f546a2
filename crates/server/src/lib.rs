//! The DataFactory service (`datafactory serve`, port 9000 by default): ingest
//! as jobs, search, documents, health, readiness and metrics over HTTP.
//!
//! It is an adapter: the work is done by `datafactory-ingest` and
//! `datafactory-store`, on blocking threads, while the async side only moves
//! requests and bytes. Uploaded files are written under
//! `<data_dir>/uploads/<job>/` with names the server makes (the client's file
//! name is kept only as the document's source name, never as a path).

pub mod analyzer;
mod guard;
mod jobs;
mod metrics;
pub mod openapi;
mod routes;

use datafactory_core::{Config, Embedder};
use datafactory_ingest::Pipeline;
use datafactory_store::Store;
use std::net::SocketAddr;
use std::sync::Arc;

pub use routes::router;

/// Everything a request handler needs.
pub struct AppState {
    pub config: Config,
    pub store: Arc<Store>,
    pub pipeline: Arc<Pipeline>,
    /// Why there is no embedder, when there is none.
    pub embedding_note: Option<String>,
    jobs: jobs::Jobs,
    /// Keys, limits and request metrics.
    guard: Arc<guard::Guard>,
    /// Ingest jobs running at once; the others wait their turn.
    ingest_slots: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    pub fn new(
        config: Config,
        store: Arc<Store>,
        embedder: Option<Arc<dyn Embedder>>,
        note: Option<String>,
    ) -> AppState {
        let pipeline = Arc::new(Pipeline::with_embedder(&config, embedder));
        let guard = Arc::new(guard::Guard::new(&config.server));
        AppState {
            config,
            store,
            pipeline,
            embedding_note: note,
            jobs: jobs::Jobs::default(),
            guard,
            ingest_slots: Arc::new(tokio::sync::Semaphore::new(2)),
        }
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
    tracing::info!("listening on {}", listener.local_addr()?);
    let resumed = routes::resume_jobs(&state);
    if resumed > 0 {
        tracing::warn!("resumed {resumed} unfinished ingest job(s)");
    }
    let app = router(state.clone());
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
    state.cancel_jobs();
    state.jobs.wait_idle().await;
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || store.checkpoint())
        .await
        .map_err(std::io::Error::other)?
        .map_err(std::io::Error::other)?;
    Ok(())
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
