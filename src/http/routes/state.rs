//! What the handlers share, and the checks every one of them begins with.

use actix_web::HttpRequest;

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
    /// Resumable uploads (`/v1/uploads`).
    pub resumable: crate::upload::resumable::Resumable,
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
    pub(super) async fn caller(&self, req: &HttpRequest, scope: &str) -> Result<Caller, ApiError> {
        let caller = self.auth.authenticate_refreshing(req.headers()).await?;
        caller.require(scope)?;
        self.limits.check_rate(&caller.account)?;
        Ok(caller)
    }
}

/// A media id from the path: anything that is not one is answered like an unknown id.
pub(super) fn media_id(raw: &str) -> Result<MediaId, ApiError> {
    MediaId::parse(raw).ok_or_else(ApiError::media_not_found)
}
