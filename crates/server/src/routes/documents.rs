//! `/documents`: listing (filtered, paged), one document with its chunks, and
//! deletion; `/collections`.
//!
//! The only route that deletes stored documents.

use super::*;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListParams {
    /// Only this collection.
    pub(crate) collection: Option<String>,
    /// Only documents of this type (their analysis's `doc_type`: `prose`, `manual`, `source_code`, ...).
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub(crate) doc_type: Option<String>,
    /// Only documents in this language (their analysis's ISO 639-3 code: `eng`, `deu`, ...).
    pub(crate) language: Option<String>,
    /// Only documents of this format (`text`, `markdown`, `html`, `pdf`, `docx`, `jsonl`).
    pub(crate) format: Option<String>,
    /// At most this many (1 to 1000; default: all).
    pub(crate) limit: Option<u64>,
    /// Skip this many first (default 0).
    pub(crate) offset: Option<u64>,
}

/// The most documents one page may hold.
const MAX_PAGE: u64 = 1000;

/// The stored documents, by collection and source; a page of them with
/// `limit` and `offset`. `X-Total-Count` says how many pass the filters.
#[utoipa::path(get, path = "/documents", tag = "documents", params(ListParams),
    responses(
        (status = 200, description = "Documents", body = Vec<datafactory_store::DocumentSummary>,
         headers(("X-Total-Count" = u64, description = "How many documents pass the filters, over all pages"))),
        (status = 400, description = "A bad `limit` or `format`", body = ErrorBody)))]
pub(crate) async fn documents(
    State(state): State<Shared>,
    Query(p): Query<ListParams>,
) -> Result<Response, ApiError> {
    if let Some(limit) = p.limit {
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(bad_request(format!("`limit` is {limit}: it must be between 1 and {MAX_PAGE}")));
        }
    }
    if let Some(f) = &p.format {
        if datafactory_core::Format::parse_name(f).is_none() {
            return Err(bad_request(format!(
                "unknown `format` {f:?}: use text, markdown, html, pdf, docx or jsonl"
            )));
        }
    }
    let store = state.store.clone();
    let page = tokio::task::spawn_blocking(move || {
        store.list_documents_page(&datafactory_store::DocumentQuery {
            collection: p.collection.as_deref(),
            doc_type: p.doc_type.as_deref(),
            language: p.language.as_deref(),
            format: p.format.as_deref(),
            limit: p.limit,
            offset: p.offset.unwrap_or(0),
        })
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    Ok(([("x-total-count", page.total.to_string())], Json(page.documents)).into_response())
}

/// Every collection, with how many documents and chunks it holds.
#[utoipa::path(get, path = "/collections", tag = "documents",
    responses((status = 200, description = "Collections, by name", body = Vec<datafactory_store::CollectionStats>)))]
pub(crate) async fn collections(
    State(state): State<Shared>,
) -> Result<Json<Vec<datafactory_store::CollectionStats>>, ApiError> {
    let store = state.store.clone();
    let list = tokio::task::spawn_blocking(move || store.collections())
        .await
        .map_err(internal)?
        .map_err(internal)?;
    Ok(Json(list))
}

/// A document with its text, sections and chunks (by id, or the id its input gave it).
#[utoipa::path(get, path = "/documents/{id}", tag = "documents",
    params(("id" = String, Path, description = "document id")),
    responses(
        (status = 200, description = "The document", body = datafactory_store::DocumentDetail),
        (status = 404, description = "No such document", body = ErrorBody)))]
pub(crate) async fn document(
    State(state): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<datafactory_store::DocumentDetail>, ApiError> {
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || store.get_document(&id))
        .await
        .map_err(internal)?
        .map_err(internal)?
    {
        Some(d) => Ok(Json(d)),
        None => Err(ApiError(StatusCode::NOT_FOUND, "no such document".into())),
    }
}

/// A document was removed.
#[derive(Serialize, ToSchema)]
pub(crate) struct Deleted {
    pub(crate) id: String,
    pub(crate) deleted: bool,
}

/// Remove a document everywhere (text, chunks, word and vector indexes).
#[utoipa::path(delete, path = "/documents/{id}", tag = "documents",
    params(("id" = String, Path, description = "document id")),
    responses(
        (status = 200, description = "Removed", body = Deleted),
        (status = 404, description = "No such document", body = ErrorBody)))]
pub(crate) async fn delete_document(
    State(state): State<Shared>,
    Path(id): Path<String>,
) -> Result<Json<Deleted>, ApiError> {
    let store = state.store.clone();
    let deleted = tokio::task::spawn_blocking(move || -> Result<Option<String>, String> {
        let Some(d) = store.get_document(&id).map_err(|e| e.to_string())? else { return Ok(None) };
        store.delete_document(&d.summary.id).map_err(|e| e.to_string())?;
        Ok(Some(d.summary.id))
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    match deleted {
        Some(id) => Ok(Json(Deleted { id, deleted: true })),
        None => Err(ApiError(StatusCode::NOT_FOUND, "no such document".into())),
    }
}
