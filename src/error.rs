//! The API's one error type and its mapping to the contract's JSON error body and status.
//! Internal causes go to the log with the request id, never into a response.

use std::fmt;

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::request_id;

pub const API_STATUS: &str = "stable";
pub const API_VERSION: &str = "2.0.1";

/// The `meta` object every body of the API carries.
pub fn meta() -> serde_json::Value {
    json!({ "api_status": API_STATUS, "version": API_VERSION })
}

/// Seconds a client should wait before retrying after a 503.
const RETRY_AFTER_SECONDS: &str = "5";

#[derive(thiserror::Error)]
pub enum ApiError {
    /// 400, code 1008: a required parameter (header, body) is missing.
    #[error("{0}")]
    MissingParameter(String),
    /// 400, code 1009: a parameter has an invalid value.
    #[error("{0}")]
    InvalidParameter(String),
    /// 400, code 1009: the body ended early or broke (the client went away).
    #[error("the request body could not be read: {0}")]
    BodyIncomplete(String),
    /// 408, code 1009: the body stalled longer than the idle timeout or came in slower
    /// than the minimum rate.
    #[error("{0}")]
    BodyTimeout(String),
    /// 401: no usable token.
    #[error("{0}")]
    Unauthenticated(String),
    /// 403: a valid token without the needed scope.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such media for this account (also unknown routes).
    #[error("{0}")]
    NotFound(String),
    /// 405 for a known route with a method it does not serve.
    #[error("method not allowed")]
    MethodNotAllowed { allow: &'static str },
    /// 409, code 1004: an upload with this `Idempotency-Key` is still streaming; refused
    /// before the body is read.
    #[error(
        "an upload with this Idempotency-Key is still in progress; retry once it has finished"
    )]
    IdempotencyKeyInUse,
    /// 422, code 1009: the `Idempotency-Key` was used by this account for other bytes;
    /// nothing of this upload was kept.
    #[error(
        "Idempotency-Key conflict: the key was already used for an upload with other content; \
         use a new key for a new file"
    )]
    IdempotencyKeyReused,
    /// 422, code 1009: the `Idempotency-Key` was used by this account for an upload with
    /// another `X-Gr-File-Extension`; refused before the body is read, nothing kept.
    #[error(
        "Idempotency-Key conflict: the key was already used for an upload with another \
         X-Gr-File-Extension; use a new key for a new file"
    )]
    IdempotencyKeyOtherExtension,
    /// 413: the body is over the limit.
    #[error("the body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: u64 },
    /// 413: the body is over a size rule of the media profile (`media.profile`); the
    /// details name the rule.
    #[error("{0}")]
    OverProfileLimit(String),
    /// 412, code 1009: a precondition of the request (`If-Match`, `If-Unmodified-Since`) is
    /// not met by the media; the details name the header.
    #[error("{0}")]
    PreconditionFailed(String),
    /// 416: the `Range` cannot be satisfied for an object of this size.
    #[error("the requested range is not satisfiable for a {size}-byte object")]
    RangeNotSatisfiable { size: u64 },
    /// 503: the database or object storage cannot be reached. Nothing half-stored remains.
    #[error("service unavailable")]
    Unavailable(#[source] anyhow::Error),
    /// 503: this replica is stopping and cut the request off at its shutdown deadline;
    /// nothing of it was kept. Another replica takes the retry.
    #[error("the service is restarting; retry the request")]
    ShuttingDown,
    /// 503: the replica's upload memory budget stayed full for `limits.upload_memory_wait`;
    /// nothing of the upload was kept. Another replica, or a later try, has room.
    #[error("the replica's upload memory is in use; retry shortly")]
    MemoryBudget,
    /// 429: an account's limit (concurrent uploads, its share of the upload memory, its
    /// request rate). `Retry-After` is `retry_after` seconds.
    #[error("{details}")]
    TooManyRequests { details: String, retry_after: u64 },
    /// 500: a bug. The cause is logged, the body only carries the request id.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
    /// 500: a backend refuses this service's configuration (wrong keys, bucket, region):
    /// no retry helps, an operator must act. Logged as an error and counted in
    /// `media_backend_misconfigured_total`.
    #[error("backend refuses the configuration")]
    Misconfigured {
        backend: &'static str,
        #[source]
        source: anyhow::Error,
    },
}

impl fmt::Debug for ApiError {
    // The whole cause chain, so a log line says why and not only what.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")?;
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

impl ApiError {
    fn code_and_title(&self) -> (u16, &'static str) {
        match self {
            ApiError::MissingParameter(_) => (1008, "Required parameter is missing"),
            ApiError::InvalidParameter(_)
            | ApiError::BodyIncomplete(_)
            | ApiError::BodyTimeout(_)
            | ApiError::PayloadTooLarge { .. }
            | ApiError::OverProfileLimit(_)
            | ApiError::RangeNotSatisfiable { .. }
            | ApiError::PreconditionFailed(_)
            | ApiError::IdempotencyKeyReused
            | ApiError::IdempotencyKeyOtherExtension => (1009, "Parameter value is not valid"),
            ApiError::IdempotencyKeyInUse => (1004, "Resource already exists"),
            ApiError::Unauthenticated(_) | ApiError::Forbidden(_) => (1005, "Access denied"),
            ApiError::NotFound(_) => (1006, "Resource not found"),
            ApiError::MethodNotAllowed { .. } => (1025, "Invalid request"),
            ApiError::Unavailable(_) | ApiError::ShuttingDown | ApiError::MemoryBudget => {
                (1011, "Service not ready")
            }
            ApiError::TooManyRequests { .. } => (1015, "Too many requests"),
            ApiError::Internal(_) | ApiError::Misconfigured { .. } => (1014, "Internal error"),
        }
    }

    fn details(&self) -> String {
        match self {
            ApiError::Unavailable(_) => {
                "the database or object storage is unavailable; retry later".to_owned()
            }
            ApiError::Internal(_) | ApiError::Misconfigured { .. } => match request_id::current() {
                Some(id) => format!("internal error; request id {id}"),
                None => "internal error".to_owned(),
            },
            other => other.to_string(),
        }
    }

    /// The `outcome` label of `media_uploads_total` for an upload that ended this way.
    pub fn upload_outcome(&self) -> &'static str {
        match self {
            ApiError::MissingParameter(_) | ApiError::InvalidParameter(_) => "rejected",
            ApiError::PayloadTooLarge { .. } | ApiError::OverProfileLimit(_) => "too_large",
            ApiError::BodyIncomplete(_) | ApiError::BodyTimeout(_) => "aborted",
            ApiError::Unauthenticated(_) | ApiError::Forbidden(_) => "denied",
            ApiError::Unavailable(_) | ApiError::ShuttingDown | ApiError::MemoryBudget => {
                "unavailable"
            }
            ApiError::TooManyRequests { .. } => "limited",
            ApiError::IdempotencyKeyInUse
            | ApiError::IdempotencyKeyReused
            | ApiError::IdempotencyKeyOtherExtension => "conflict",
            _ => "failed",
        }
    }

    /// The error for "storage said not found" or "row gone": one answer for every case, so
    /// ids do not leak.
    pub fn media_not_found() -> Self {
        ApiError::NotFound("no such media".to_owned())
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::MissingParameter(_)
            | ApiError::InvalidParameter(_)
            | ApiError::BodyIncomplete(_) => StatusCode::BAD_REQUEST,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::IdempotencyKeyInUse => StatusCode::CONFLICT,
            ApiError::IdempotencyKeyReused | ApiError::IdempotencyKeyOtherExtension => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge { .. } | ApiError::OverProfileLimit(_) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            ApiError::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            ApiError::Unavailable(_) | ApiError::ShuttingDown | ApiError::MemoryBudget => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) | ApiError::Misconfigured { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            ApiError::Internal(_) => tracing::error!(error = ?self, "request failed"),
            ApiError::Misconfigured { backend, .. } => {
                crate::metrics::BACKEND_MISCONFIGURED
                    .with_label_values(&[backend])
                    .inc();
                tracing::error!(
                    error = ?self,
                    backend,
                    "the backend refuses this service's configuration; check its credentials, \
                     bucket and region"
                );
            }
            ApiError::Unavailable(_) => tracing::warn!(error = ?self, "backend unavailable"),
            _ => {}
        }
        let (code, title) = self.code_and_title();
        let body = json!({
            "errors": [{ "code": code, "title": title, "details": self.details() }],
            "meta": meta(),
        });
        let mut response = HttpResponse::build(self.status_code());
        match self {
            ApiError::Unauthenticated(_) => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            ApiError::RangeNotSatisfiable { size } => {
                response.insert_header((header::CONTENT_RANGE, format!("bytes */{size}")));
            }
            ApiError::Unavailable(_) | ApiError::MemoryBudget => {
                response.insert_header((header::RETRY_AFTER, RETRY_AFTER_SECONDS));
            }
            ApiError::TooManyRequests { retry_after, .. } => {
                response.insert_header((header::RETRY_AFTER, retry_after.to_string()));
            }
            ApiError::ShuttingDown => {
                response.insert_header((header::RETRY_AFTER, "1"));
                response.insert_header((header::CONNECTION, "close"));
            }
            ApiError::MethodNotAllowed { allow } => {
                response.insert_header((header::ALLOW, *allow));
            }
            ApiError::PayloadTooLarge { .. }
            | ApiError::OverProfileLimit(_)
            | ApiError::BodyTimeout(_) => {
                // The rest of the body is not read; the connection cannot be reused.
                response.insert_header((header::CONNECTION, "close"));
            }
            _ => {}
        }
        response.json(body)
    }
}

impl From<actix_web::error::PayloadError> for ApiError {
    fn from(err: actix_web::error::PayloadError) -> Self {
        use actix_web::error::PayloadError;
        // Plain words for the client; actix's own text names its internals.
        let details = match &err {
            PayloadError::Incomplete(None) => {
                "the body ended before it was complete (the connection closed mid-body)"
            }
            PayloadError::Incomplete(Some(_)) => {
                "the body's framing cannot be read (a malformed chunk of a chunked body)"
            }
            PayloadError::EncodingCorrupted => "the body's encoding is corrupt",
            PayloadError::Overflow => "the body is larger than allowed",
            PayloadError::UnknownLength => "the body's length cannot be known",
            _ => "the body could not be read",
        };
        tracing::debug!(error = %err, "request body not readable");
        ApiError::BodyIncomplete(details.to_owned())
    }
}

impl From<crate::metadata::MetadataError> for ApiError {
    fn from(err: crate::metadata::MetadataError) -> Self {
        if err.is_unavailable() {
            ApiError::Unavailable(err.into())
        } else {
            ApiError::Internal(err.into())
        }
    }
}

impl From<crate::storage::StorageError> for ApiError {
    fn from(err: crate::storage::StorageError) -> Self {
        use crate::storage::StorageFault;
        match err.fault() {
            StorageFault::NotFound => ApiError::media_not_found(),
            StorageFault::Unavailable => ApiError::Unavailable(err.into()),
            StorageFault::Misconfigured => ApiError::Misconfigured {
                backend: "storage",
                source: err.into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::MessageBody;

    #[tokio::test]
    async fn internal_errors_show_the_request_id_and_hide_the_cause() {
        let err = ApiError::Internal(anyhow::anyhow!("secret internals: table media is gone"));
        let id = request_id::RequestId::for_tests("req-123");
        let response = request_id::scope(id, async { err.error_response() }).await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = response.into_body().try_into_bytes().unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["errors"][0]["code"], 1014);
        let details = json["errors"][0]["details"].as_str().unwrap();
        assert!(details.contains("req-123"), "{details}");
        assert!(!String::from_utf8_lossy(&body).contains("secret internals"));
    }

    #[test]
    fn debug_prints_the_cause_chain() {
        let err = ApiError::Unavailable(anyhow::anyhow!("connection refused").context("pool"));
        let printed = format!("{err:?}");
        assert!(printed.contains("pool"), "{printed}");
        assert!(printed.contains("connection refused"), "{printed}");
    }
}
