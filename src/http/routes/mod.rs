//! The public API, one module per resource. Handlers are thin: authenticate, validate,
//! call the logic, shape the answer.

mod delete;
mod download;
mod list;
pub mod upload;

use actix_web::{web, HttpRequest, HttpResponse};

use crate::auth::{Authenticator, Caller};
use crate::domain::ApiError;
use crate::domain::MediaId;
use crate::metadata::Metadata;
use crate::storage::Storage;
use crate::upload::ingest::Ingest;

/// Everything the handlers share.
#[derive(Debug)]
pub struct AppState {
    pub auth: Authenticator,
    pub metadata: Metadata,
    pub storage: Storage,
    pub ingest: Ingest,
    /// The upload memory budget and the per-account limits.
    pub limits: crate::upload::limits::Limits,
    pub metrics: crate::metrics::Metrics,
    /// Set when a stop begins: uploads still streaming at its cut-off end there.
    pub stop: crate::upload::shutdown::StopSignal,
    /// Signs and checks the download links of `/info`.
    pub links: crate::http::signed_url::UrlSigner,
    /// The request rate of each signed link.
    pub link_limits: crate::http::signed_url::LinkLimits,
    /// `media.profile`: per-type rules of uploads.
    pub profile: crate::domain::profile::Profile,
}

impl AppState {
    /// 401 unless the request carries a valid token, 403 unless it allows `scope`, 429 when
    /// the account is over its request rate (if one is configured); in that order, before
    /// anything about the addressed media is looked at. A token naming a key not known yet
    /// may first refresh the identity provider's keys.
    async fn caller(&self, req: &HttpRequest, scope: &str) -> Result<Caller, ApiError> {
        let caller = self.auth.authenticate_refreshing(req.headers()).await?;
        caller.require(scope)?;
        self.limits.check_rate(&caller.account)?;
        Ok(caller)
    }
}

/// A media id from the path: anything that is not one is answered like an unknown id.
fn media_id(raw: &str) -> Result<MediaId, ApiError> {
    MediaId::parse(raw).ok_or_else(ApiError::media_not_found)
}

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
