//! Integrity fields of RFC 9530. An upload may send `Content-Digest: sha-256=:<base64>:`;
//! the upload compares it with the hash it computes anyway (`ingest::Declared`) before it
//! commits, so a mismatch (a corrupted transfer, a truncating proxy) is a 400 and nothing
//! stays. Downloads send `Repr-Digest`, the digest of the whole file, right for 200 and 206
//! alike.

use base64::Engine;

use crate::domain::ApiError;

pub const CONTENT_DIGEST: &str = "content-digest";
pub const REPR_DIGEST: &str = "repr-digest";

/// The `sha-256` member of a `Content-Digest` (a structured-field dictionary of byte
/// sequences). `Ok(None)` when absent or when only other algorithms are offered (they may
/// be ignored, RFC 9530 §2); 400 when it is malformed. `value` is the header's one value
/// (the HTTP edge refuses it repeated).
pub fn expected_sha256(value: &[u8]) -> Result<Option<[u8; 32]>, ApiError> {
    let invalid = || {
        ApiError::InvalidParameter(
            "Content-Digest must be sha-256=:<base64 of the SHA-256 of the body>:".to_owned(),
        )
    };
    // Visible ASCII and tabs only, as a header value read as text.
    if !value
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
    {
        return Err(invalid());
    }
    let text = std::str::from_utf8(value).map_err(|_| invalid())?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn parses_the_sha256_member() {
        let digest = Sha256::digest(b"hello");
        let encoded = base64::engine::general_purpose::STANDARD.encode(digest);
        let value = format!("sha-512=:AAAA:, sha-256=:{encoded}:");
        assert_eq!(
            expected_sha256(value.as_bytes()).unwrap(),
            Some(digest.into())
        );
        assert_eq!(expected_sha256(b"md5=:AAAA:").unwrap(), None);
        for bad in ["sha-256=abc", "sha-256=:!!:", "sha-256=:AAAA:", "sha-256"] {
            assert!(expected_sha256(bad.as_bytes()).is_err(), "{bad}");
        }
        let twice = format!("{value}, {value}");
        assert!(
            expected_sha256(twice.as_bytes()).is_err(),
            "two sha-256 members"
        );
        assert!(
            expected_sha256(b"md5=:\xc3\xa9:").is_err(),
            "not a visible ASCII value"
        );
        assert_eq!(
            repr_digest(&hex::encode(digest)).unwrap(),
            format!("sha-256=:{encoded}:")
        );
    }
}
