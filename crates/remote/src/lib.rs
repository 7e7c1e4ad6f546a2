//! Remote model workers: the [`Embedder`](datafactory_core::Embedder) and
//! [`Reranker`](datafactory_core::Reranker) of a node that has no model of its
//! own, over HTTP to text-embeddings-inference-compatible endpoints
//! (`POST /embed`, `GET /info`, `POST /rerank`) — other DataFactory nodes
//! (`datafactory serve`, `datafactory rerank-server`) or TEI itself — so GPU
//! machines can be added for embedding and reranking.
//!
//! [`Pool`] is what both share, the same behaviour as the LLM pool of
//! enrichment: a request's texts are cut into batches sent at once (at most
//! `parallel` in flight per endpoint, to the least busy one), a failed
//! request is retried after a backoff on another endpoint, and an endpoint
//! that fails `failures_before_down` times in a row is left out for
//! `down_seconds`, then tried again.

mod embedder;
mod pool;
mod reranker;

pub use embedder::RemoteEmbedder;
pub use pool::{CallError, EndpointState, Pool, PoolSettings};
pub use reranker::RemoteReranker;
