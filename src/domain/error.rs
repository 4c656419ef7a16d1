//! The contract's catalogue of errors: what went wrong, with its code and title (DESIGN's
//! error table), and never an HTTP status: `http::error` maps each to its status and JSON
//! body. The backends turn their own errors into it (`metadata`, `storage`).

use std::fmt;

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
    /// 409, code 1009: a resumable upload's request starts at another offset than the
    /// bytes kept (`expected`).
    #[error("the upload holds {expected} bytes; this request starts at {provided}: continue from Upload-Offset {expected}")]
    OffsetMismatch { expected: u64, provided: u64 },
    /// 409, code 1009: another request is writing this resumable upload and did not let
    /// go in time; retry.
    #[error("another request is writing this upload; retry in a moment")]
    UploadBusy,
    /// 415, code 1009: the body's `Content-Type` is not the protocol's.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 460, code 1009: tus's `Upload-Checksum` does not match the request's bytes, which
    /// were discarded.
    #[error("the bytes of this request do not match Upload-Checksum; they were discarded")]
    ChecksumMismatch,
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
    /// The contract's error code and title.
    pub fn code_and_title(&self) -> (u16, &'static str) {
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
            | ApiError::IdempotencyKeyOtherExtension
            | ApiError::OffsetMismatch { .. }
            | ApiError::UploadBusy
            | ApiError::UnsupportedMediaType(_)
            | ApiError::ChecksumMismatch => (1009, "Parameter value is not valid"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_prints_the_cause_chain() {
        let err = ApiError::Unavailable(anyhow::anyhow!("connection refused").context("pool"));
        let printed = format!("{err:?}");
        assert!(printed.contains("pool"), "{printed}");
        assert!(printed.contains("connection refused"), "{printed}");
    }
}
