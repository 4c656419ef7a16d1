//! `/v1/uploads`: resumable uploads in tus 1.0.0 (core, creation, creation-with-upload,
//! creation-defer-length, expiration, checksum, termination). The engine is
//! `upload::resumable`; this is the protocol's headers around it. Every answer carries
//! `Tus-Resumable`; errors keep the contract's JSON body.

use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use base64::Engine;

use super::state::{media_id, AppState};
use super::upload::{declared_length, idempotency_key, one_header};
use crate::auth::SCOPE_WRITE;
use crate::domain::digest::{expected_sha256, CONTENT_DIGEST};
use crate::domain::tus_metadata::UploadMetadata;
use crate::domain::{ApiError, IdempotencyKey};
use crate::upload::body_guard::BodyGuard;
use crate::upload::resumable::{
    Append, Appended, NewUpload, RequestChecksum, UploadProtocol, UploadStatus,
};

pub const TUS_RESUMABLE: HeaderName = HeaderName::from_static("tus-resumable");
const TUS_VERSION: HeaderName = HeaderName::from_static("tus-version");
const TUS_EXTENSION: HeaderName = HeaderName::from_static("tus-extension");
const TUS_MAX_SIZE: HeaderName = HeaderName::from_static("tus-max-size");
const TUS_CHECKSUM_ALGORITHM: HeaderName = HeaderName::from_static("tus-checksum-algorithm");
pub const UPLOAD_OFFSET: HeaderName = HeaderName::from_static("upload-offset");
pub const UPLOAD_LENGTH: HeaderName = HeaderName::from_static("upload-length");
const UPLOAD_DEFER_LENGTH: HeaderName = HeaderName::from_static("upload-defer-length");
const UPLOAD_METADATA: HeaderName = HeaderName::from_static("upload-metadata");
const UPLOAD_EXPIRES: HeaderName = HeaderName::from_static("upload-expires");
const UPLOAD_CHECKSUM: HeaderName = HeaderName::from_static("upload-checksum");

/// The one version of tus spoken.
pub const VERSION: &str = "1.0.0";
/// The extensions `OPTIONS` advertises.
pub const EXTENSIONS: &str =
    "creation,creation-with-upload,creation-defer-length,expiration,checksum,termination";
/// The body type of tus's `PATCH` (and of a creation with upload).
pub const OFFSET_STREAM: &str = "application/offset+octet-stream";

/// `OPTIONS /v1/uploads` (and of an upload): what the server speaks. No token needed.
pub async fn options(state: web::Data<AppState>) -> HttpResponse {
    let mut response = HttpResponse::NoContent();
    response
        .insert_header((TUS_RESUMABLE, VERSION))
        .insert_header((TUS_VERSION, VERSION))
        .insert_header((TUS_EXTENSION, EXTENSIONS))
        .insert_header((TUS_MAX_SIZE, state.ingest.max_upload_bytes.to_string()))
        .insert_header((TUS_CHECKSUM_ALGORITHM, "sha1,sha256"));
    response.finish()
}

/// `POST /v1/uploads`: creates an upload, with its first bytes when it has a body.
pub async fn create(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    answer(create_upload(&req, body, &state).await)
}

/// `HEAD /v1/uploads/{id}`: where the upload stands.
pub async fn head(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    answer(head_upload(&req, &path, &state).await)
}

/// `PATCH /v1/uploads/{id}`: the next bytes.
pub async fn patch(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    answer(patch_upload(&req, &path, body, &state).await)
}

/// `DELETE /v1/uploads/{id}`: termination.
pub async fn delete(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    answer(delete_upload(&req, &path, &state).await)
}

/// Every tus answer names the version; a 412 also says which one is spoken.
fn answer(result: Result<HttpResponse, ApiError>) -> HttpResponse {
    let mut response = match result {
        Ok(response) => response,
        Err(err) => err.error_response(),
    };
    let headers = response.headers_mut();
    headers.insert(TUS_RESUMABLE, HeaderValue::from_static(VERSION));
    if response.status() == StatusCode::PRECONDITION_FAILED {
        response
            .headers_mut()
            .insert(TUS_VERSION, HeaderValue::from_static(VERSION));
    }
    response
}

/// What a tus creation's headers say.
#[derive(Debug)]
pub struct Creation {
    pub upload: NewUploadHeaders,
    /// The creation carries the first bytes (creation-with-upload).
    pub with_body: bool,
    pub append: Append,
}

/// A creation's declarations, before the account is known.
#[derive(Debug)]
pub struct NewUploadHeaders {
    pub extension: crate::domain::FileExtension,
    pub length: Option<u64>,
    pub metadata: Option<String>,
    pub key: Option<IdempotencyKey>,
}

/// Every check of a tus creation's headers (the request and `Expect: 100-continue` run
/// the same): the version, the length (or its deferral) against the limit and the
/// profile, the metadata that names the extension, the key, and the body's type.
pub fn check_creation(
    headers: &HeaderMap,
    limit: u64,
    profile: crate::domain::profile::Profile,
) -> Result<Creation, ApiError> {
    check_version(headers)?;
    let length = number(headers, UPLOAD_LENGTH, "Upload-Length")?;
    let deferred = one_header(headers, UPLOAD_DEFER_LENGTH, "Upload-Defer-Length")?;
    let length = match (length, deferred) {
        (Some(_), Some(_)) => {
            return Err(ApiError::InvalidParameter(
                "send either Upload-Length or Upload-Defer-Length, not both".to_owned(),
            ))
        }
        (None, None) => {
            return Err(ApiError::MissingParameter(
                "Upload-Length is required (or Upload-Defer-Length: 1)".to_owned(),
            ))
        }
        (None, Some(value)) if value.as_bytes() != b"1" => {
            return Err(ApiError::InvalidParameter(
                "Upload-Defer-Length must be 1".to_owned(),
            ))
        }
        (length, _) => length,
    };
    if let Some(length) = length {
        if length > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
    }
    let raw = one_header(headers, UPLOAD_METADATA, "Upload-Metadata")?;
    let parsed = UploadMetadata::parse(raw.map(HeaderValue::as_bytes).unwrap_or_default())?;
    let extension = parsed.extension()?;
    profile.check_declared(&extension, length)?;
    let key = idempotency_key(headers)?;
    let with_body = declared_length(headers)?.is_some_and(|n| n > 0)
        || headers.contains_key(header::TRANSFER_ENCODING);
    let append = if with_body {
        check_body_type(headers)?;
        Append {
            offset: 0,
            checksum: checksum(headers)?,
            content_sha256: content_digest(headers)?,
            ..Append::default()
        }
    } else {
        Append::default()
    };
    Ok(Creation {
        upload: NewUploadHeaders {
            extension,
            length,
            // Visible ASCII once parsed, so it is kept as text.
            metadata: raw.and_then(|v| v.to_str().ok()).map(str::to_owned),
            key,
        },
        with_body,
        append,
    })
}

/// Every check of a tus `PATCH`'s headers: the version, the body's type, the offset, the
/// checksum, a deferred length.
pub fn check_patch(headers: &HeaderMap, limit: u64) -> Result<Append, ApiError> {
    check_version(headers)?;
    check_body_type(headers)?;
    let offset = number(headers, UPLOAD_OFFSET, "Upload-Offset")?
        .ok_or_else(|| ApiError::MissingParameter("Upload-Offset is required".to_owned()))?;
    let length = number(headers, UPLOAD_LENGTH, "Upload-Length")?;
    if length.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    if let Some(declared) = declared_length(headers)? {
        if offset.saturating_add(declared) > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
    }
    Ok(Append {
        offset,
        length,
        checksum: checksum(headers)?,
        content_sha256: content_digest(headers)?,
        ..Append::default()
    })
}

/// `Tus-Resumable` must name the version spoken (412 otherwise).
fn check_version(headers: &HeaderMap) -> Result<(), ApiError> {
    match one_header(headers, TUS_RESUMABLE, "Tus-Resumable")? {
        Some(value) if value.as_bytes() == VERSION.as_bytes() => Ok(()),
        Some(_) => Err(ApiError::PreconditionFailed(format!(
            "this server speaks tus {VERSION}: send Tus-Resumable: {VERSION}"
        ))),
        None => Err(ApiError::PreconditionFailed(format!(
            "Tus-Resumable is required: send Tus-Resumable: {VERSION}"
        ))),
    }
}

/// The bytes of a tus request are `application/offset+octet-stream` (415 otherwise).
fn check_body_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let value = one_header(headers, header::CONTENT_TYPE, "Content-Type")?;
    let is_offset_stream = value
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim())
        .is_some_and(|v| v.eq_ignore_ascii_case(OFFSET_STREAM));
    if is_offset_stream {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "the bytes of an upload are sent as Content-Type: {OFFSET_STREAM}"
        )))
    }
}

/// A header holding a non-negative decimal number, if sent.
fn number(headers: &HeaderMap, name: HeaderName, shown: &str) -> Result<Option<u64>, ApiError> {
    let Some(value) = one_header(headers, name, shown)? else {
        return Ok(None);
    };
    let digits = value.as_bytes();
    let valid = !digits.is_empty() && digits.len() <= 19 && digits.iter().all(u8::is_ascii_digit);
    valid
        .then(|| std::str::from_utf8(digits).ok()?.parse::<u64>().ok())
        .flatten()
        .map(Some)
        .ok_or_else(|| {
            ApiError::InvalidParameter(format!("{shown} must be a non-negative integer"))
        })
}

/// tus's `Upload-Checksum: <algorithm> <Base64 digest>`.
fn checksum(headers: &HeaderMap) -> Result<Option<RequestChecksum>, ApiError> {
    let Some(value) = one_header(headers, UPLOAD_CHECKSUM, "Upload-Checksum")? else {
        return Ok(None);
    };
    let invalid = || {
        ApiError::InvalidParameter(
            "Upload-Checksum must be \"sha1 <Base64>\" or \"sha256 <Base64>\"".to_owned(),
        )
    };
    let text = value.to_str().map_err(|_| invalid())?;
    let (algorithm, digest) = text.trim().split_once(' ').ok_or_else(invalid)?;
    let digest = base64::engine::general_purpose::STANDARD
        .decode(digest.trim())
        .map_err(|_| invalid())?;
    match algorithm.to_ascii_lowercase().as_str() {
        "sha1" => Ok(Some(RequestChecksum::Sha1(
            digest.try_into().map_err(|_| invalid())?,
        ))),
        "sha256" => Ok(Some(RequestChecksum::Sha256(
            digest.try_into().map_err(|_| invalid())?,
        ))),
        _ => Err(ApiError::InvalidParameter(
            "Upload-Checksum's algorithm is not supported: use sha1 or sha256".to_owned(),
        )),
    }
}

fn content_digest(headers: &HeaderMap) -> Result<Option<[u8; 32]>, ApiError> {
    match one_header(headers, CONTENT_DIGEST, "Content-Digest")? {
        Some(value) => expected_sha256(value.as_bytes()),
        None => Ok(None),
    }
}

fn http_date(at: chrono::DateTime<chrono::Utc>) -> String {
    httpdate::fmt_http_date(std::time::SystemTime::from(at))
}

fn location(id: crate::domain::MediaId) -> String {
    format!("/v1/uploads/{id}")
}

async fn create_upload(
    req: &HttpRequest,
    body: web::Payload,
    state: &AppState,
) -> Result<HttpResponse, ApiError> {
    let caller = state.caller(req, SCOPE_WRITE).await?;
    let creation = check_creation(req.headers(), state.ingest.max_upload_bytes, state.profile)?;
    // Counted among the account's uploads before anything is written.
    let slot = if creation.with_body {
        Some(state.limits.begin_upload(&caller.account)?)
    } else {
        None
    };
    let headers = creation.upload;
    let created = state
        .resumable
        .create(NewUpload {
            owner: caller.account.clone(),
            extension: headers.extension,
            length: headers.length,
            protocol: UploadProtocol::Tus,
            tus_metadata: headers.metadata,
            key: headers.key,
        })
        .await?;
    let mut response = HttpResponse::Created();
    response.insert_header((header::LOCATION, location(created.id)));
    let (Some(slot), false) = (slot, created.existing) else {
        let status = state.resumable.status(&caller.account, created.id).await?;
        status_headers(&mut response, &status);
        return Ok(response.finish());
    };
    let body = guarded(body, state);
    let appended = state
        .resumable
        .append(&caller.account, created.id, creation.append, &slot, body)
        .await?;
    appended_headers(&mut response, &appended);
    Ok(response.finish())
}

/// The body of an appending request, ended when it stalls or the replica stops.
fn guarded(
    body: web::Payload,
    state: &AppState,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, ApiError>> + Unpin {
    let body = BodyGuard::new(body, state.ingest.body_limits);
    crate::upload::shutdown::cut_off_at_stop(body, state.stop.clone())
}

/// The caller (token, scope: 401, 403), the version (412) and the upload addressed (an id
/// that is none is the same 404 as an unknown one), in that order.
async fn addressed(
    req: &HttpRequest,
    path: &str,
    state: &AppState,
) -> Result<(crate::auth::Caller, crate::domain::MediaId), ApiError> {
    let caller = state.caller(req, SCOPE_WRITE).await?;
    check_version(req.headers())?;
    let id = media_id(path).map_err(|_| crate::upload::resumable::upload_not_found())?;
    Ok((caller, id))
}

async fn head_upload(
    req: &HttpRequest,
    path: &str,
    state: &AppState,
) -> Result<HttpResponse, ApiError> {
    let (caller, id) = addressed(req, path, state).await?;
    let status = state.resumable.status(&caller.account, id).await?;
    let mut response = HttpResponse::Ok();
    status_headers(&mut response, &status);
    Ok(response.finish())
}

async fn patch_upload(
    req: &HttpRequest,
    path: &str,
    body: web::Payload,
    state: &AppState,
) -> Result<HttpResponse, ApiError> {
    let caller = state.caller(req, SCOPE_WRITE).await?;
    let append = check_patch(req.headers(), state.ingest.max_upload_bytes)?;
    let id = media_id(path).map_err(|_| crate::upload::resumable::upload_not_found())?;
    let slot = state.limits.begin_upload(&caller.account)?;
    let body = guarded(body, state);
    let appended = state
        .resumable
        .append(&caller.account, id, append, &slot, body)
        .await?;
    let mut response = HttpResponse::NoContent();
    appended_headers(&mut response, &appended);
    Ok(response.finish())
}

async fn delete_upload(
    req: &HttpRequest,
    path: &str,
    state: &AppState,
) -> Result<HttpResponse, ApiError> {
    let (caller, id) = addressed(req, path, state).await?;
    state.resumable.terminate(&caller.account, id).await?;
    Ok(HttpResponse::NoContent().finish())
}

fn status_headers(response: &mut actix_web::HttpResponseBuilder, status: &UploadStatus) {
    response
        .insert_header((UPLOAD_OFFSET, status.offset.to_string()))
        .insert_header((header::CACHE_CONTROL, "no-store"));
    match status.length {
        Some(length) => response.insert_header((UPLOAD_LENGTH, length.to_string())),
        None => response.insert_header((UPLOAD_DEFER_LENGTH, "1")),
    };
    if !status.complete {
        response.insert_header((UPLOAD_EXPIRES, http_date(status.expires_at)));
    }
    if let Some(metadata) = &status.tus_metadata {
        if let Ok(value) = HeaderValue::from_str(metadata) {
            response.insert_header((UPLOAD_METADATA, value));
        }
    }
}

fn appended_headers(response: &mut actix_web::HttpResponseBuilder, appended: &Appended) {
    match appended {
        Appended::Paused {
            offset, expires_at, ..
        } => {
            response
                .insert_header((UPLOAD_OFFSET, offset.to_string()))
                .insert_header((UPLOAD_EXPIRES, http_date(*expires_at)));
        }
        Appended::Completed(stored) => {
            response.insert_header((UPLOAD_OFFSET, stored.size_bytes.to_string()));
        }
    }
}
