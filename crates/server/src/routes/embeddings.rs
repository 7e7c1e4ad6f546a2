//! The embedding routes for other programs: OpenAI's `/v1/embeddings`,
//! text-embeddings-inference's `/embed` and `/info`, and `/embed_windows`
//! (dense and sparse, long passages whole: for other DataFactory nodes),
//! over the in-process model.
//!
//! Touches no store.

use super::*;

/// The in-process embedder, or 503 saying why there is none.
pub(crate) fn embedder(state: &AppState) -> Result<Arc<dyn datafactory_core::Embedder>, ApiError> {
    state.pipeline.embedder().cloned().ok_or_else(|| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            state.embedding_note.clone().unwrap_or_else(|| "no embedding model loaded".into()),
        )
    })
}

/// One text or a list of texts.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub(crate) fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Deserialize, ToSchema)]
pub(crate) struct OpenAiRequest {
    pub(crate) input: OneOrMany,
    pub(crate) model: Option<String>,
    /// `float` (default) or `base64` (little-endian f32s, as OpenAI's clients ask for).
    pub(crate) encoding_format: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct OpenAiResponse {
    /// `list`.
    pub(crate) object: &'static str,
    pub(crate) data: Vec<OpenAiEmbedding>,
    pub(crate) model: String,
    pub(crate) usage: OpenAiUsage,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct OpenAiEmbedding {
    /// `embedding`.
    pub(crate) object: &'static str,
    pub(crate) index: usize,
    pub(crate) embedding: EmbeddingData,
}

/// Floats, or with `encoding_format: base64` a base64 string of little-endian f32s.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum EmbeddingData {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Serialize, ToSchema)]
pub(crate) struct OpenAiUsage {
    pub(crate) prompt_tokens: usize,
    pub(crate) total_tokens: usize,
}

/// `POST /v1/embeddings`, the OpenAI shape, over the in-process model.
#[utoipa::path(post, path = "/v1/embeddings", tag = "embeddings", request_body = OpenAiRequest,
    responses(
        (status = 200, description = "One embedding per input", body = OpenAiResponse),
        (status = 400, description = "Bad request", body = ErrorBody),
        (status = 503, description = "No embedding model loaded", body = ErrorBody)))]
pub(crate) async fn openai_embeddings(
    State(state): State<Shared>,
    Json(r): Json<OpenAiRequest>,
) -> Result<Json<OpenAiResponse>, ApiError> {
    let e = embedder(&state)?;
    let texts = r.input.into_vec();
    if texts.is_empty() {
        return Err(bad_request("`input` is empty"));
    }
    let model = r.model.unwrap_or_else(|| e.model_id().to_string());
    let counter = e.token_counter();
    let tokens: usize = texts.iter().map(|t| counter.count(t)).sum();
    let vectors = embed_blocking(e, texts, |e, refs| e.embed(refs, InputKind::Passage)).await?;
    let base64 = match r.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => return Err(bad_request(format!("encoding_format {other:?}: use float or base64"))),
    };
    let data = vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = if base64 {
                use base64::Engine as _;
                let bytes: Vec<u8> = v.dense.iter().flat_map(|x| x.to_le_bytes()).collect();
                EmbeddingData::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                EmbeddingData::Float(v.dense)
            };
            OpenAiEmbedding { object: "embedding", index, embedding }
        })
        .collect();
    Ok(Json(OpenAiResponse {
        object: "list",
        data,
        model,
        usage: OpenAiUsage { prompt_tokens: tokens, total_tokens: tokens },
    }))
}

#[derive(Deserialize, ToSchema)]
pub(crate) struct TeiRequest {
    pub(crate) inputs: OneOrMany,
    /// `query`: embed the inputs as search queries (the model's query
    /// instruction, if it has one); absent: as passages.
    pub(crate) prompt_name: Option<String>,
    /// Accepted for compatibility: vectors are always normalised.
    #[allow(dead_code)]
    pub(crate) normalize: Option<bool>,
    /// Accepted for compatibility: inputs are always truncated to the model's length.
    #[allow(dead_code)]
    pub(crate) truncate: Option<bool>,
}

/// `GET /info`, text-embeddings-inference's shape (what embedding clients
/// such as other DataFactory nodes ask first).
#[derive(Serialize, ToSchema)]
pub(crate) struct TeiInfo {
    /// The model and its settings, as stored with the vectors it makes.
    pub(crate) model_id: String,
    /// Tokens of one input the model reads.
    pub(crate) max_input_length: usize,
    /// Inputs per request at most (the service's body limit is the real one).
    pub(crate) max_client_batch_size: usize,
    /// Vector size (not in TEI's answer; clients may use it).
    pub(crate) dimensions: usize,
    /// Vectors `POST /embed_windows` gives one passage at most (not in
    /// TEI's answer: its presence says the worker serves `/embed_windows`).
    pub(crate) max_windows: usize,
    /// Whether the model gives sparse weights too (`/embed_windows`; not in
    /// TEI's answer).
    pub(crate) sparse: bool,
    /// This service's version.
    pub(crate) version: &'static str,
}

/// The embedding model this service serves.
#[utoipa::path(get, path = "/info", tag = "embeddings",
    responses(
        (status = 200, description = "The model", body = TeiInfo),
        (status = 503, description = "No embedding model loaded", body = ErrorBody)))]
pub(crate) async fn tei_info(State(state): State<Shared>) -> Result<Json<TeiInfo>, ApiError> {
    let e = embedder(&state)?;
    Ok(Json(TeiInfo {
        model_id: e.model_id().to_string(),
        max_input_length: e.max_input_tokens(),
        max_client_batch_size: 512,
        dimensions: e.dimension(),
        max_windows: e.max_windows(),
        sparse: e.produces_sparse(),
        version: env!("CARGO_PKG_VERSION"),
    }))
}

/// `POST /embed`, the text-embeddings-inference shape: a list of vectors.
#[utoipa::path(post, path = "/embed", tag = "embeddings", request_body = TeiRequest,
    responses(
        (status = 200, description = "One vector per input", body = Vec<Vec<f32>>),
        (status = 400, description = "Too many inputs", body = ErrorBody),
        (status = 422, description = "Unknown prompt_name", body = ErrorBody),
        (status = 503, description = "No embedding model loaded", body = ErrorBody)))]
pub(crate) async fn tei_embed(
    State(state): State<Shared>,
    Json(r): Json<TeiRequest>,
) -> Result<Json<Vec<Vec<f32>>>, ApiError> {
    let e = embedder(&state)?;
    let kind = match r.prompt_name.as_deref() {
        None | Some("passage" | "document") => InputKind::Passage,
        Some("query") => InputKind::Query,
        Some(other) => {
            return Err(ApiError(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("prompt_name {other:?}: use query, passage or document"),
            ))
        }
    };
    let texts = tei_inputs(r.inputs)?;
    let vectors = embed_blocking(e, texts, move |e, refs| e.embed(refs, kind)).await?;
    Ok(Json(vectors.into_iter().map(|v| v.dense).collect()))
}

/// Runs `f` over the texts on a blocking thread (the model's work must not
/// hold up the service's other requests).
async fn embed_blocking<T: Send + 'static>(
    e: Arc<dyn datafactory_core::Embedder>,
    texts: Vec<String>,
    f: impl FnOnce(&dyn datafactory_core::Embedder, &[&str]) -> Result<T, datafactory_core::EmbedError>
        + Send
        + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        f(e.as_ref(), &refs)
    })
    .await
    .map_err(internal)?
    .map_err(internal)
}

/// At most 512 inputs per request.
fn tei_inputs(inputs: OneOrMany) -> Result<Vec<String>, ApiError> {
    let texts = inputs.into_vec();
    if texts.len() > 512 {
        return Err(bad_request(format!("{} inputs: at most 512 per request", texts.len())));
    }
    Ok(texts)
}

#[derive(Deserialize, ToSchema)]
pub(crate) struct WindowsRequest {
    /// Texts.
    pub(crate) inputs: OneOrMany,
    /// Embed the inputs as search queries (one vector each); default false:
    /// as passages.
    #[serde(default)]
    pub(crate) query: bool,
    /// Passages whole, one vector per window (default true); false: each
    /// passage's first window only.
    #[serde(default = "yes")]
    pub(crate) windows: bool,
}

fn yes() -> bool {
    true
}

/// One window's vectors.
#[derive(Serialize, Deserialize, ToSchema)]
pub(crate) struct WindowVectors {
    /// The dense vector (L2-normalised).
    pub(crate) dense: Vec<f32>,
    /// The lexical weights, `[token id, weight]` sorted by token id (models
    /// with a sparse head, such as bge-m3; absent for the others).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) sparse: Vec<(u32, f32)>,
}

/// `POST /embed_windows` (DataFactory's, beside TEI's `/embed`): texts
/// embedded as a node with the model embeds them in-process, dense and
/// sparse: per input, a list of windows' vectors. A passage gets one per
/// window of the model's input over its tokens (`embedding.max_windows` at
/// most, `/info`'s `max_windows`), a query one. What a node embedding on
/// remote DataFactory workers asks them, so that it stores and searches what
/// a node with the model would.
#[utoipa::path(post, path = "/embed_windows", tag = "embeddings", request_body = WindowsRequest,
    responses(
        (status = 200, description = "Per input, its windows' vectors, in order", body = Vec<Vec<WindowVectors>>),
        (status = 400, description = "Too many inputs", body = ErrorBody),
        (status = 503, description = "No embedding model loaded", body = ErrorBody)))]
pub(crate) async fn embed_windows(
    State(state): State<Shared>,
    Json(r): Json<WindowsRequest>,
) -> Result<Json<Vec<Vec<WindowVectors>>>, ApiError> {
    let e = embedder(&state)?;
    let texts = tei_inputs(r.inputs)?;
    let vectors = embed_blocking(e, texts, move |e, refs| match (r.query, r.windows) {
        (true, _) => one_each(e.embed(refs, InputKind::Query)),
        (false, false) => one_each(e.embed(refs, InputKind::Passage)),
        (false, true) => e.embed_passages(refs),
    })
    .await?;
    Ok(Json(
        vectors
            .into_iter()
            .map(|windows| {
                windows.into_iter().map(|v| WindowVectors { dense: v.dense, sparse: v.sparse }).collect()
            })
            .collect(),
    ))
}

fn one_each(
    vectors: Result<Vec<Embedding>, datafactory_core::EmbedError>,
) -> Result<Vec<Vec<Embedding>>, datafactory_core::EmbedError> {
    Ok(vectors?.into_iter().map(|v| vec![v]).collect())
}
