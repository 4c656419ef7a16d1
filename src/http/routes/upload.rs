//! `POST /v1/media`: raw bytes (or a form's one file part, see `crate::http::form`) in, an id out.

use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::future::Either;
use serde_json::json;

use super::state::AppState;
use crate::auth::SCOPE_WRITE;
use crate::domain::digest::{expected_sha256, CONTENT_DIGEST};
use crate::domain::ApiError;
use crate::domain::{FileExtension, IdempotencyKey};
use crate::http::error::meta;
use crate::upload::body_guard::BodyGuard;
use crate::upload::ingest::Declared;

pub const EXTENSION_HEADER: HeaderName = HeaderName::from_static("x-gr-file-extension");
/// The IETF httpapi draft's header: retries with the same key and bytes get the same id.
pub const IDEMPOTENCY_KEY_HEADER: HeaderName = HeaderName::from_static("idempotency-key");
/// Set (`true`) on the answer to a retry that returns the media stored before.
pub const IDEMPOTENT_REPLAYED_HEADER: HeaderName = HeaderName::from_static("idempotent-replayed");

pub async fn upload(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    // Counted on drop, so a request cancelled mid-body (client gone) counts as aborted.
    let mut outcome = Outcome {
        counter: state.metrics.media.uploads.clone(),
        label: "aborted",
    };
    let result = store(&req, body, &state).await;
    outcome.label = match &result {
        Ok((_, true)) => "replayed",
        Ok(_) => "stored",
        Err(err) => err.upload_outcome(),
    };
    result.map(|(response, _)| response)
}

/// The `media_uploads_total` sample of one upload request.
struct Outcome {
    counter: prometheus::IntCounterVec,
    label: &'static str,
}

impl Drop for Outcome {
    fn drop(&mut self) {
        self.counter.with_label_values(&[self.label]).inc();
    }
}

/// The answer, and whether it replays an earlier upload.
async fn store(
    req: &HttpRequest,
    body: web::Payload,
    state: &AppState,
) -> Result<(HttpResponse, bool), ApiError> {
    let req = req.clone();
    let caller = state.caller(&req, SCOPE_WRITE).await?;
    // Refuse by the headers (the declared length among them) before reading a byte.
    let checked = check_headers(req.headers(), state.ingest.max_upload_bytes, state.profile)?;
    let declared = checked.declared;
    // Counted among the account's uploads, or refused (429) before a byte of the body.
    let slot = state.limits.begin_upload(&caller.account)?;

    let body = BodyGuard::new(body, state.ingest.body_limits_for(declared));
    let body = crate::upload::shutdown::cut_off_at_stop(body, state.stop.clone());
    let (extension, body) = match (checked.boundary, checked.extension) {
        (None, Some(extension)) => (extension, Either::Left(body)),
        (None, None) => return Err(missing_extension()),
        (Some(boundary), header) => {
            // The form's file part is the upload; read up to its first byte.
            let (file_name, file) =
                crate::http::form::file_part(body, boundary, state.ingest.max_upload_bytes).await?;
            let extension = match header {
                Some(extension) => extension,
                None => extension_of(file_name.as_deref())?,
            };
            (extension, Either::Right(file))
        }
    };
    // The first bytes checked against the extension (`media.verify_content`).
    let (body, detected) = crate::domain::content_check::Checked::new(
        body,
        extension.clone(),
        state.ingest.verify_content,
    );
    // The rule of `media.profile` for the extension, if any.
    let body =
        crate::domain::profile::Profiled::new(body, state.profile, &extension, declared.length);
    let stored = state
        .ingest
        .upload(
            caller.account,
            extension,
            declared,
            &slot,
            detected,
            checked.key,
            body,
        )
        .await?;
    let id = stored.id.to_string();
    let mut response = HttpResponse::Created();
    response.insert_header((header::LOCATION, format!("/v1/media/{id}")));
    if stored.replayed {
        response.insert_header((IDEMPOTENT_REPLAYED_HEADER, "true"));
    }
    let response = response.json(json!({ "media": [{ "id": id }], "meta": meta() }));
    Ok((response, stored.replayed))
}

/// What an upload's headers say, once they passed their checks.
#[derive(Debug)]
pub struct UploadHeaders {
    /// `X-Gr-File-Extension`; only a form may leave it out (its file part's filename
    /// then gives it).
    pub extension: Option<FileExtension>,
    pub key: Option<IdempotencyKey>,
    /// The file's length and digest, when the headers tell them: a form's
    /// `Content-Length` is the envelope's too.
    pub declared: Declared,
    /// The boundary of a `multipart/form-data` body.
    pub boundary: Option<String>,
}

/// Every check of an upload's headers that comes after the token: the form's boundary, the
/// extension, the idempotency key, the declared length (also against the `profile`'s rule
/// for the extension) and the `Content-Digest`. The upload and `Expect: 100-continue` both
/// run this one list, so whatever the headers alone refuse is refused before the body is
/// sent.
pub fn check_headers(
    headers: &HeaderMap,
    limit: u64,
    profile: crate::domain::profile::Profile,
) -> Result<UploadHeaders, ApiError> {
    let boundary = crate::http::form::boundary(headers)?;
    let extension = extension(headers)?;
    if extension.is_none() && boundary.is_none() {
        return Err(missing_extension());
    }
    let key = idempotency_key(headers)?;
    if boundary.is_none() {
        let declared = Declared {
            length: declared_length_allowed(headers, limit)?,
            sha256: match one_header(headers, CONTENT_DIGEST, "Content-Digest")? {
                Some(value) => expected_sha256(value.as_bytes())?,
                None => None,
            },
        };
        if let Some(extension) = &extension {
            profile.check_declared(extension, declared.length)?;
        }
        return Ok(UploadHeaders {
            extension,
            key,
            declared,
            boundary,
        });
    }
    // A form: its Content-Length counts the envelope too, which may add up to
    // `ENVELOPE_ALLOWANCE` to the limit; the file part is held to the limit as it streams.
    declared_length_allowed(
        headers,
        limit.saturating_add(crate::http::form::ENVELOPE_ALLOWANCE),
    )
    .map_err(|err| match err {
        ApiError::PayloadTooLarge { .. } => ApiError::PayloadTooLarge { limit },
        other => other,
    })?;
    // A digest of the content is one of the whole form, not of the file: refused rather
    // than checked against bytes that are not the upload.
    if headers.contains_key(crate::domain::digest::CONTENT_DIGEST)
        || headers.contains_key(crate::domain::digest::REPR_DIGEST)
    {
        return Err(ApiError::InvalidParameter(
            "Content-Digest and Repr-Digest are not accepted with a multipart/form-data body: \
             send the file's raw bytes as the body to have its digest checked"
                .to_owned(),
        ));
    }
    Ok(UploadHeaders {
        extension,
        key,
        declared: Declared {
            length: None,
            sha256: None,
        },
        boundary,
    })
}

fn missing_extension() -> ApiError {
    ApiError::MissingParameter("the X-Gr-File-Extension header is required".to_owned())
}

/// The extension of a form's file part's filename, when no header gives one.
fn extension_of(file_name: Option<&str>) -> Result<FileExtension, ApiError> {
    let base = file_name
        .map(|name| name.rsplit(['/', '\\']).next().unwrap_or(name))
        .unwrap_or_default();
    let Some((_, extension)) = base.rsplit_once('.') else {
        return Err(ApiError::MissingParameter(
            "the X-Gr-File-Extension header is required when the file part's filename has \
             no extension"
                .to_owned(),
        ));
    };
    FileExtension::parse(extension).map_err(|_| {
        ApiError::InvalidParameter(
            "the file part's filename has no valid extension (1-16 letters or digits): send \
             X-Gr-File-Extension"
                .to_owned(),
        )
    })
}

/// The one value of the header `name` (`shown` in the message), if sent; sent twice it is
/// ambiguous and refused.
pub(super) fn one_header<'h>(
    headers: &'h HeaderMap,
    name: impl header::AsHeaderName,
    shown: &str,
) -> Result<Option<&'h HeaderValue>, ApiError> {
    let mut values = headers.get_all(name);
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::InvalidParameter(format!(
            "send exactly one {shown} header"
        )));
    }
    Ok(Some(value))
}

/// The `Idempotency-Key`, if sent.
pub(super) fn idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(raw) = one_header(headers, IDEMPOTENCY_KEY_HEADER, "Idempotency-Key")? else {
        return Ok(None);
    };
    IdempotencyKey::parse(raw.as_bytes())
        .map(Some)
        .map_err(|msg| ApiError::InvalidParameter(msg.to_owned()))
}

/// The declared `Content-Length`, if any, once it is known to be allowed.
fn declared_length_allowed(headers: &HeaderMap, limit: u64) -> Result<Option<u64>, ApiError> {
    match declared_length(headers)? {
        Some(len) if len > limit => Err(ApiError::PayloadTooLarge { limit }),
        Some(0) => Err(ApiError::MissingParameter(
            "the request body is empty: send the file's bytes".to_owned(),
        )),
        declared => Ok(declared),
    }
}

/// `X-Gr-File-Extension`, if sent.
fn extension(headers: &HeaderMap) -> Result<Option<FileExtension>, ApiError> {
    let Some(raw) = one_header(headers, EXTENSION_HEADER, "X-Gr-File-Extension")? else {
        return Ok(None);
    };
    let raw = raw.to_str().map_err(|_| {
        ApiError::InvalidParameter("X-Gr-File-Extension must be 1-16 letters or digits".into())
    })?;
    FileExtension::parse(raw)
        .map(Some)
        .map_err(|msg| ApiError::InvalidParameter(msg.to_owned()))
}

pub(super) fn declared_length(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    match headers.get(header::CONTENT_LENGTH) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Some)
            .ok_or_else(|| ApiError::InvalidParameter("Content-Length is not a number".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_sent_twice_is_refused_by_name() {
        let mut headers = HeaderMap::new();
        assert!(one_header(&headers, CONTENT_DIGEST, "Content-Digest")
            .unwrap()
            .is_none());
        let value = HeaderValue::from_static("sha-256=:AAAA:");
        let name = HeaderName::from_static(CONTENT_DIGEST);
        headers.append(name.clone(), value.clone());
        assert_eq!(
            one_header(&headers, CONTENT_DIGEST, "Content-Digest").unwrap(),
            Some(&value)
        );
        headers.append(name, value);
        let err = one_header(&headers, CONTENT_DIGEST, "Content-Digest").unwrap_err();
        assert!(
            matches!(&err, ApiError::InvalidParameter(msg) if msg == "send exactly one Content-Digest header"),
            "{err:?}"
        );
    }
}
