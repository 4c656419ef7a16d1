//! A JWKS: fetched at start, refreshed on a timer and on an unknown `kid`, each JWK turned
//! into a key that verifies exactly one algorithm.

use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};

use serde::Deserialize;

use crate::settings::redact_url;

use super::verifying_key::{check_rsa_bits, ec_algorithm, unsigned_bits, Rules, VerifyingKey};

/// A token naming an unknown `kid` refreshes the JWKS at most this often.
pub const JWKS_MIN_REFRESH: Duration = Duration::from_secs(30);

/// A JWKS document larger than this is refused.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// The identity provider's JWKS and the keys last fetched from it.
pub(super) struct Jwks {
    pub(super) url: url::Url,
    pub(super) client: reqwest::Client,
    pub(super) refresh_every: Duration,
    pub(super) keys: RwLock<Arc<Vec<Arc<VerifyingKey>>>>,
    /// When the last refresh asked for by an unknown `kid` started.
    pub(super) on_demand: tokio::sync::Mutex<Option<Instant>>,
}

impl Jwks {
    /// Fetches the set and swaps it in; on any failure the keys stay as they were.
    pub(super) async fn refresh(&self, rules: &Rules) -> anyhow::Result<usize> {
        let body = self.fetch().await?;
        let keys = parse_jwks(&body, rules)?;
        let count = keys.len();
        *self.keys.write().expect("JWKS lock") = Arc::new(keys);
        tracing::debug!(keys = count, "JWKS refreshed");
        Ok(count)
    }

    pub(super) async fn refresh_logged(&self, rules: &Rules) {
        if let Err(err) = self.refresh(rules).await {
            tracing::warn!(
                url = %redact_url(self.url.as_str()),
                error = format!("{err:#}"),
                "JWKS refresh failed; keeping the last good keys"
            );
        }
    }

    /// A refresh for a token no key matched, unless one was done less than
    /// [`JWKS_MIN_REFRESH`] ago. Concurrent callers wait for the one in flight.
    pub(super) async fn refresh_on_demand(&self, rules: &Rules) {
        let mut last = self.on_demand.lock().await;
        if last.is_some_and(|at| at.elapsed() < JWKS_MIN_REFRESH) {
            return;
        }
        *last = Some(Instant::now());
        self.refresh_logged(rules).await;
    }

    pub(super) async fn fetch(&self) -> anyhow::Result<Vec<u8>> {
        let mut response = self
            .client
            .get(self.url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await?
            .error_for_status()?;
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            anyhow::ensure!(
                body.len() + chunk.len() <= MAX_JWKS_BYTES,
                "the JWKS is larger than {MAX_JWKS_BYTES} bytes"
            );
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// The usable signing keys of a JWKS document; other keys are skipped (and logged). A set
/// without any usable key is an error, so that it does not replace good keys.
pub(super) fn parse_jwks(body: &[u8], rules: &Rules) -> anyhow::Result<Vec<Arc<VerifyingKey>>> {
    #[derive(Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set =
        serde_json::from_slice(body).context("the JWKS is not a {\"keys\": [...]} document")?;
    let mut keys = Vec::new();
    for raw in set.keys {
        let kid = raw.get("kid").and_then(|k| k.as_str()).map(str::to_owned);
        if raw.get("use").and_then(|u| u.as_str()) == Some("enc") {
            continue; // an encryption key published alongside: not ours to use
        }
        let parsed = serde_json::from_value::<Jwk>(raw)
            .context("not a JWK")
            .and_then(|jwk| key_from_jwk(&jwk));
        match parsed {
            Ok((key, alg)) => keys.push(rules.key(kid, key, alg)),
            Err(err) => tracing::warn!(
                kid = kid.as_deref().unwrap_or(""),
                error = format!("{err:#}"),
                "JWKS key skipped"
            ),
        }
    }
    anyhow::ensure!(!keys.is_empty(), "the JWKS holds no usable signing key");
    Ok(keys)
}

/// A JWK's key and the one algorithm it verifies: the key type and curve decide, and a
/// JWK `alg` must agree with them. Symmetric keys are not taken from a JWKS.
pub(super) fn key_from_jwk(jwk: &Jwk) -> anyhow::Result<(DecodingKey, Algorithm)> {
    if let Some(use_) = &jwk.common.public_key_use {
        anyhow::ensure!(
            *use_ == PublicKeyUse::Signature,
            "not a signature key (use: {use_:?})"
        );
    }
    let declared = jwk
        .common
        .key_algorithm
        .map(|a| {
            Algorithm::from_str(&a.to_string())
                .map_err(|_| anyhow::anyhow!("alg {a} is not supported"))
        })
        .transpose()?;
    let key = DecodingKey::from_jwk(jwk).context("unusable key parameters")?;
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => {
            let bits = match key.kind() {
                DecodingKeyKind::RsaModulusExponent { n, .. } => unsigned_bits(n),
                DecodingKeyKind::SecretOrDer(_) => 0,
            };
            check_rsa_bits(bits)?;
            match declared {
                None => Algorithm::RS256,
                Some(
                    alg @ (Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512),
                ) => alg,
                Some(other) => anyhow::bail!("an RSA key cannot verify {other:?}"),
            }
        }
        AlgorithmParameters::EllipticCurve(params) => {
            let alg = match params.curve {
                EllipticCurve::P256 => Algorithm::ES256,
                EllipticCurve::P384 => Algorithm::ES384,
                ref other => anyhow::bail!("EC curve {other:?} is not supported (P-256, P-384)"),
            };
            let point_len = match key.kind() {
                DecodingKeyKind::SecretOrDer(point) => point.len(),
                DecodingKeyKind::RsaModulusExponent { .. } => 0,
            };
            anyhow::ensure!(
                Some(alg) == ec_algorithm(point_len),
                "the EC point does not fit curve {:?}",
                params.curve
            );
            alg
        }
        AlgorithmParameters::OctetKeyPair(params) => {
            anyhow::ensure!(
                params.curve == EllipticCurve::Ed25519,
                "OKP curve {:?} is not supported (Ed25519)",
                params.curve
            );
            Algorithm::EdDSA
        }
        AlgorithmParameters::OctetKey(_) => {
            anyhow::bail!("symmetric (oct) keys are not taken from a JWKS")
        }
        _ => anyhow::bail!("unsupported key type"),
    };
    if let Some(declared) = declared {
        anyhow::ensure!(
            declared == alg,
            "its alg {declared:?} does not fit the key, which verifies {alg:?}"
        );
    }
    Ok((key, alg))
}
