//! What can go wrong with object storage, sorted by what it means for the caller.

#[derive(Debug, thiserror::Error)]
#[error("object storage error")]
pub struct StorageError(#[source] pub(super) object_store::Error);

/// What a storage error means for the request and for the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageFault {
    /// The object (or multipart upload) does not exist.
    NotFound,
    /// The store refuses this service's configuration: wrong keys, bucket or region. A
    /// retry cannot help; an operator must act (500, logged as an error, counted).
    Misconfigured,
    /// Unreachable, overloaded, throttling, a clock or credential problem that passes
    /// (an expired web-identity token is renewed): 503, retry later.
    Unavailable,
}

/// S3 error codes that only a change of configuration cures.
const MISCONFIGURED_CODES: &[&str] = &[
    "AccessDenied",
    "AccountProblem",
    "AllAccessDisabled",
    "AuthorizationHeaderMalformed",
    "InvalidAccessKeyId",
    "InvalidBucketName",
    "InvalidRegion",
    "NoSuchBucket",
    "PermanentRedirect",
    "SignatureDoesNotMatch",
];

/// S3 error codes that pass on their own, whatever their HTTP status.
const TRANSIENT_CODES: &[&str] = &[
    "ExpiredToken",
    "InternalError",
    "RequestTimeTooSkewed",
    "RequestTimeout",
    "ServiceUnavailable",
    "SlowDown",
    "Throttling",
    "TokenRefreshRequired",
];

impl StorageError {
    pub fn fault(&self) -> StorageFault {
        match s3_error_code(&self.0).as_deref() {
            Some(code) if MISCONFIGURED_CODES.contains(&code) => StorageFault::Misconfigured,
            Some(code) if TRANSIENT_CODES.contains(&code) => StorageFault::Unavailable,
            _ => match self.0 {
                object_store::Error::NotFound { .. } => StorageFault::NotFound,
                object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. } => StorageFault::Misconfigured,
                _ => StorageFault::Unavailable,
            },
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.fault() == StorageFault::NotFound
    }
}

/// The `<Code>` of an S3 error answer, found in the error or any of its sources.
fn s3_error_code(err: &object_store::Error) -> Option<String> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(error) = current {
        let text = error.to_string();
        if let Some(start) = text.find("<Code>") {
            let rest = &text[start + "<Code>".len()..];
            if let Some(end) = rest.find("</Code>") {
                return Some(rest[..end].trim().to_owned());
            }
        }
        current = error.source();
    }
    None
}

impl From<object_store::Error> for StorageError {
    fn from(err: object_store::Error) -> Self {
        Self(err)
    }
}

/// What went wrong in the catalogue's words: a missing object is the media's absence, an
/// unreachable store is 503 material, a refused configuration an operator's to fix.
impl From<StorageError> for crate::domain::ApiError {
    fn from(err: StorageError) -> Self {
        use crate::domain::ApiError;
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
