//! `/documents`: listing, one document with its chunks, and deletion.
//!
//! The only route that deletes stored documents.

use super::*;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListParams {
    /// Only this collection.
    pub(crate) collection: Option<String>,
}

/// The stored documents.
#[utoipa::path(get, path = "/documents", tag = "documents", params(ListParams),
    responses((status = 200, description = "Documents", body = Vec<datafactory_store::DocumentSummary>)))]
pub(crate) async fn documents(
    State(state): State<Shared>,
    Query(p): Query<ListParams>,
) -> Result<Json<Vec<datafactory_store::DocumentSummary>>, ApiError> {
    let store = state.store.clone();
    let docs = tokio::task::spawn_blocking(move || store.list_documents(p.collection.as_deref()))
        .await
        .map_err(internal)?
        .map_err(internal)?;
    Ok(Json(docs))
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
