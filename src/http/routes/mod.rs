//! The public API, one module per resource. Handlers are thin: authenticate, validate,
//! call the logic, shape the answer.

mod delete;
mod download;
mod list;
mod state;
pub mod upload;
pub mod uploads;

pub use state::AppState;

use actix_web::{web, HttpResponse};

use crate::domain::ApiError;

/// Registers the public routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/media")
            .name("media_collection")
            .route(web::post().to(upload::upload))
            .route(web::get().to(list::list))
            .route(web::head().to(list::list))
            .default_service(web::to(|| method_not_allowed("GET, HEAD, POST"))),
    )
    .service(
        web::resource("/v1/media/{id}")
            .name("media_item")
            .route(web::get().to(download::download))
            .route(web::head().to(download::download))
            .route(web::delete().to(delete::delete))
            .default_service(web::to(|| method_not_allowed("GET, HEAD, DELETE"))),
    )
    .service(
        web::resource("/v1/uploads")
            .name("upload_collection")
            .route(web::post().to(uploads::create))
            .route(web::method(actix_web::http::Method::OPTIONS).to(uploads::options))
            .default_service(web::to(|| method_not_allowed("POST, OPTIONS"))),
    )
    .service(
        web::resource("/v1/uploads/{id}")
            .name("upload_item")
            .route(web::head().to(uploads::head))
            .route(web::patch().to(uploads::patch))
            .route(web::delete().to(uploads::delete))
            .route(web::method(actix_web::http::Method::OPTIONS).to(uploads::options))
            .default_service(web::to(|| {
                method_not_allowed("HEAD, PATCH, DELETE, OPTIONS")
            })),
    )
    .service(
        web::resource("/v1/media/{id}/info")
            .name("media_info")
            .route(web::get().to(download::info))
            .route(web::head().to(download::info))
            .default_service(web::to(|| method_not_allowed("GET, HEAD"))),
    )
    .service(
        web::resource("/v1/{account}/media/{id}")
            .name("account_media_item")
            .route(web::get().to(download::download_for_account))
            .route(web::head().to(download::download_for_account))
            .default_service(web::to(|| method_not_allowed("GET, HEAD"))),
    )
    .service(
        web::resource("/openapi.json")
            .name("openapi")
            .route(web::get().to(crate::http::openapi::serve))
            .route(web::head().to(crate::http::openapi::serve))
            .default_service(web::to(|| method_not_allowed("GET, HEAD"))),
    );
}

async fn method_not_allowed(allow: &'static str) -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed { allow })
}

/// The answer to any path the API does not have.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound("no such resource".to_owned()))
}
