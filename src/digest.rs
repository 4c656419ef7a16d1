//! Integrity fields of RFC 9530. An upload may send `Content-Digest: sha-256=:<base64>:`;
//! the bytes that arrive are hashed and compared before the upload is committed, so a
//! mismatch (a corrupted transfer, a truncating proxy) is a 400 and nothing stays. Downloads
//! send `Repr-Digest`, the digest of the whole file, which is right for 200 and 206 alike.

use std::pin::Pin;
use std::task::{Context, Poll};

use base64::Engine;
use bytes::Bytes;
use futures_util::Stream;
use sha2::{Digest, Sha256};

use crate::error::ApiError;

pub const CONTENT_DIGEST: &str = "content-digest";
pub const REPR_DIGEST: &str = "repr-digest";

/// The `sha-256` member of a `Content-Digest` (a structured-field dictionary of byte
/// sequences). `Ok(None)` when absent or when only other algorithms are offered (they may
/// be ignored, RFC 9530 §2); 400 when it is malformed or given twice.
pub fn expected_sha256(
    headers: &actix_web::http::header::HeaderMap,
) -> Result<Option<[u8; 32]>, ApiError> {
    let invalid = || {
        ApiError::InvalidParameter(
            "Content-Digest must be sha-256=:<base64 of the SHA-256 of the body>:".to_owned(),
        )
    };
    let mut values = headers.get_all(CONTENT_DIGEST);
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::InvalidParameter(
            "send exactly one Content-Digest header".to_owned(),
        ));
    }
    let text = first.to_str().map_err(|_| invalid())?;
    let mut found = None;
    for member in text.split(',') {
        let Some((algorithm, value)) = member.trim().split_once('=') else {
            return Err(invalid());
        };
        if !algorithm.trim().eq_ignore_ascii_case("sha-256") {
            continue;
        }
        let encoded = value
            .trim()
            .strip_prefix(':')
            .and_then(|v| v.strip_suffix(':'))
            .ok_or_else(invalid)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| invalid())?;
        let digest: [u8; 32] = bytes.try_into().map_err(|_| invalid())?;
        if found.replace(digest).is_some() {
            return Err(invalid());
        }
    }
    Ok(found)
}

/// `sha-256=:<base64>:` of a stored SHA-256 in hex, for `Repr-Digest`.
pub fn repr_digest(sha256_hex: &str) -> Option<String> {
    let bytes = hex::decode(sha256_hex).ok()?;
    Some(format!(
        "sha-256=:{}:",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    ))
}

pin_project_lite::pin_project! {
    /// A body that is hashed as it passes and, at its end, ends with a 400 instead when the
    /// bytes do not match the digest the client declared: the upload then rolls back before
    /// its commit.
    pub struct Verified<S> {
        #[pin]
        inner: S,
        expected: [u8; 32],
        hasher: Option<Sha256>,
    }
}

impl<S> Verified<S> {
    pub fn new(inner: S, expected: [u8; 32]) -> Self {
        Self {
            inner,
            expected,
            hasher: Some(Sha256::new()),
        }
    }
}

impl<S> Stream for Verified<S>
where
    S: Stream<Item = Result<Bytes, ApiError>>,
{
    type Item = Result<Bytes, ApiError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.project();
        match this.inner.poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                if let Some(hasher) = this.hasher.as_mut() {
                    hasher.update(&chunk);
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(None) => {
                let matches = this
                    .hasher
                    .take()
                    .is_none_or(|hasher| hasher.finalize().as_slice() == this.expected.as_slice());
                if matches {
                    Poll::Ready(None)
                } else {
                    Poll::Ready(Some(Err(ApiError::InvalidParameter(
                        "the body does not match its Content-Digest".to_owned(),
                    ))))
                }
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
    use futures_util::StreamExt;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(
                HeaderName::from_static(CONTENT_DIGEST),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn parses_the_sha256_member() {
        let digest = Sha256::digest(b"hello");
        let encoded = base64::engine::general_purpose::STANDARD.encode(digest);
        let value = format!("sha-512=:AAAA:, sha-256=:{encoded}:");
        assert_eq!(
            expected_sha256(&headers(&[&value])).unwrap(),
            Some(digest.into())
        );
        assert_eq!(expected_sha256(&headers(&[])).unwrap(), None);
        assert_eq!(expected_sha256(&headers(&["md5=:AAAA:"])).unwrap(), None);
        for bad in ["sha-256=abc", "sha-256=:!!:", "sha-256=:AAAA:", "sha-256"] {
            assert!(expected_sha256(&headers(&[bad])).is_err(), "{bad}");
        }
        assert!(expected_sha256(&headers(&[&value, &value])).is_err());
        assert_eq!(
            repr_digest(&hex::encode(digest)).unwrap(),
            format!("sha-256=:{encoded}:")
        );
    }

    #[tokio::test]
    async fn a_body_that_does_not_match_ends_in_an_error() {
        let expected: [u8; 32] = Sha256::digest(b"hello world").into();
        let chunks = || {
            futures_util::stream::iter(vec![
                Ok::<_, ApiError>(Bytes::from_static(b"hello ")),
                Ok(Bytes::from_static(b"world")),
            ])
        };
        let all: Vec<_> = Verified::new(chunks(), expected).collect().await;
        assert!(all.iter().all(Result::is_ok));
        let wrong: [u8; 32] = Sha256::digest(b"something else").into();
        let all: Vec<_> = Verified::new(chunks(), wrong).collect().await;
        assert!(matches!(
            all.last(),
            Some(Err(ApiError::InvalidParameter(_)))
        ));
    }
}
