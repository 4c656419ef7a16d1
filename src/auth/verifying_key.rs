//! One key that verifies tokens, the one algorithm it verifies, and what every token must
//! satisfy besides its signature; how big an RSA key must be.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};

/// RSA keys shorter than this are refused.
pub const MIN_RSA_BITS: usize = 2048;

/// What every token must satisfy besides its signature.
#[derive(Debug, Clone)]
pub(super) struct Rules {
    pub(super) leeway: Duration,
    pub(super) issuer: Option<String>,
    pub(super) audience: Option<String>,
}

impl Rules {
    pub(super) fn validation(&self, alg: Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        validation.leeway = self.leeway.as_secs();
        // jsonwebtoken checks `iss` and `aud` only when the token has them: a configured one
        // must also be present.
        let mut required = vec!["exp", "sub"];
        validation.validate_nbf = true;
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        validation
    }

    pub(super) fn key(
        &self,
        id: Option<String>,
        key: DecodingKey,
        alg: Algorithm,
    ) -> Arc<VerifyingKey> {
        Arc::new(VerifyingKey {
            id,
            alg,
            key,
            validation: self.validation(alg),
        })
    }
}

/// A key and the one algorithm it verifies.
pub(super) struct VerifyingKey {
    /// The key file's name without extension or the JWKS `kid`; none for the HS256 secret.
    pub(super) id: Option<String>,
    pub(super) alg: Algorithm,
    pub(super) key: DecodingKey,
    pub(super) validation: Validation,
}

/// The algorithm of an EC public point (`04 || x || y`) by its length.
pub(super) fn ec_algorithm(point_len: usize) -> Option<Algorithm> {
    match point_len {
        65 => Some(Algorithm::ES256),
        97 => Some(Algorithm::ES384),
        _ => None,
    }
}

pub(super) fn check_rsa_bits(bits: usize) -> anyhow::Result<()> {
    anyhow::ensure!(
        bits >= MIN_RSA_BITS,
        "an RSA key of {bits} bits is too small: at least {MIN_RSA_BITS} bits are required"
    );
    Ok(())
}

/// The modulus size of a DER `RSAPublicKey` (`SEQUENCE { INTEGER n, INTEGER e }`, RFC 8017
/// A.1.1), read by the `pkcs1` crate.
pub(super) fn rsa_modulus_bits(der: &[u8]) -> Option<usize> {
    use pkcs1::der::Decode;
    let key = pkcs1::RsaPublicKey::from_der(der).ok()?;
    Some(unsigned_bits(key.modulus.as_bytes()))
}

/// The bit length of a big-endian unsigned integer.
pub(super) fn unsigned_bits(bytes: &[u8]) -> usize {
    let significant = match bytes.iter().position(|b| *b != 0) {
        Some(first) => &bytes[first..],
        None => return 0,
    };
    (significant.len() - 1) * 8 + (8 - significant[0].leading_zeros() as usize)
}

/// Why known keys did not accept a token.
pub(super) enum TokenRefusal {
    /// No key has the token's `kid` (or, without one, its algorithm): a JWKS refresh may help.
    NoKey,
    Invalid,
}
