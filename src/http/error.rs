//! The one mapping of the error catalogue (`domain::ApiError`) to an HTTP status, headers
//! and the contract's JSON error body. Internal causes go to the log with the request id,
//! never into a response.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::domain::ApiError;
use crate::http::request_id;

pub const API_STATUS: &str = "stable";
pub const API_VERSION: &str = "2.0.1";

/// The `meta` object every body of the API carries.
pub fn meta() -> serde_json::Value {
    json!({ "api_status": API_STATUS, "version": API_VERSION })
}

/// Seconds a client should wait before retrying after a 503.
const RETRY_AFTER_SECONDS: &str = "5";

/// The `details` of the error's body: plain words, never an internal cause.
fn details(err: &ApiError) -> String {
    match err {
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
            ApiError::IdempotencyKeyInUse
            | ApiError::OffsetMismatch { .. }
            | ApiError::UploadBusy => StatusCode::CONFLICT,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            // tus's own status for a checksum mismatch.
            ApiError::ChecksumMismatch => {
                StatusCode::from_u16(460).unwrap_or(StatusCode::BAD_REQUEST)
            }
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
            "errors": [{ "code": code, "title": title, "details": details(self) }],
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
            ApiError::OffsetMismatch { expected, .. } => {
                response.insert_header(("upload-offset", expected.to_string()));
            }
            ApiError::UploadBusy => {
                response.insert_header((header::RETRY_AFTER, "1"));
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
}
