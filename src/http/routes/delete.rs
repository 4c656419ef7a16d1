//! `DELETE /v1/media/{id}`: object first, then the row, so an object never outlives its row.

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use serde_json::json;

use super::state::{media_id, AppState};
use crate::auth::SCOPE_WRITE;
use crate::domain::ApiError;
use crate::http::error::meta;

pub async fn delete(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let caller = state.caller(&req, SCOPE_WRITE).await?;
    let id = media_id(&path)?;
    state
        .metadata
        .find_readable(id, &caller.account, Utc::now())
        .await?
        .ok_or_else(ApiError::media_not_found)?;
    state.storage.delete(id).await?;
    state.metadata.delete(id).await?;
    Ok(HttpResponse::Ok().json(json!({ "meta": meta() })))
}
