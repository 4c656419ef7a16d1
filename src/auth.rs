//! JWT bearer authentication: which keys verify tokens, what a valid token must carry, and
//! the development conveniences (a generated HS256 secret, minting tokens).
//!
//! Each configured key accepts exactly one algorithm, chosen by the key's type and never by
//! the token, so `alg: none` and algorithm confusion (an HS256 token signed with a public
//! key's bytes) are refused.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::http::header::{HeaderMap, AUTHORIZATION};
use anyhow::Context;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::domain::AccountId;
use crate::error::ApiError;
use crate::settings::{AuthSettings, Secret};

pub const SCOPE_READ: &str = "media:read";
pub const SCOPE_WRITE: &str = "media:write";

/// The claims media-node reads itself. `exp`, `nbf`, `iss` and `aud` are checked by the
/// validation (where NumericDates may have fractions and `aud` may be an array), so they
/// are not read here: a type of our own for them could only refuse what RFC 7519 allows.
#[derive(Debug, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default)]
    pub scope: Option<String>,
}

/// The claims of a token minted by `token`.
#[derive(Serialize)]
struct MintedClaims<'a> {
    sub: &'a str,
    exp: u64,
    iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
}

/// Scope names of a `scope` claim, split the one way the server and `token` both use.
fn split_scopes(scope: &str) -> Vec<String> {
    scope.split_whitespace().map(str::to_owned).collect()
}

/// Who is calling, once the token checked out.
#[derive(Debug, Clone)]
pub struct Caller {
    pub account: AccountId,
    /// `None` when the token has no `scope` claim: such a token may do everything.
    scopes: Option<Vec<String>>,
}

impl Caller {
    /// 403 unless the token allows `scope`.
    pub fn require(&self, scope: &str) -> Result<(), ApiError> {
        match &self.scopes {
            None => Ok(()),
            Some(granted) if granted.iter().any(|s| s == scope) => Ok(()),
            Some(_) => Err(ApiError::Forbidden(format!(
                "the token's scope does not include {scope}"
            ))),
        }
    }
}

struct VerifyingKey {
    key: DecodingKey,
    validation: Validation,
}

pub struct Authenticator {
    keys: Vec<VerifyingKey>,
    signing: Option<EncodingKey>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("keys", &self.keys.len())
            .field("can_sign", &self.signing.is_some())
            .finish()
    }
}

impl Authenticator {
    /// Builds the verifier from configuration. With no key configured: outside production
    /// a random HS256 secret is created (once) in `auth.generated_secret_file`; in
    /// production it is an error.
    pub fn from_settings(settings: &AuthSettings, production: bool) -> anyhow::Result<Self> {
        let mut hs256 = settings.hs256_secret.clone();
        if hs256.is_none() && settings.public_key_files.is_empty() {
            anyhow::ensure!(
                !production,
                "no JWT key configured: set MEDIA_NODE__AUTH__HS256_SECRET or \
                 MEDIA_NODE__AUTH__PUBLIC_KEY_FILES (required with APP_ENV=production)"
            );
            hs256 = Some(load_or_create_secret(&settings.generated_secret_file)?);
        }

        let mut keys = Vec::new();
        let mut signing = None;
        if let Some(secret) = &hs256 {
            anyhow::ensure!(
                secret.expose().len() >= 32,
                "the HS256 secret must be at least 32 bytes long"
            );
            keys.push(VerifyingKey {
                key: DecodingKey::from_secret(secret.expose().as_bytes()),
                validation: validation(Algorithm::HS256, settings),
            });
            signing = Some(EncodingKey::from_secret(secret.expose().as_bytes()));
        }
        for path in &settings.public_key_files {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading public key file {}", path.display()))?;
            let (key, alg) = parse_public_key(&pem)
                .with_context(|| format!("parsing public key file {}", path.display()))?;
            keys.push(VerifyingKey {
                key,
                validation: validation(alg, settings),
            });
        }
        Ok(Self { keys, signing })
    }

    /// Checks the `Authorization` header and returns the caller, or a 401.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let mut values = headers.get_all(AUTHORIZATION);
        let value = values
            .next()
            .ok_or_else(|| ApiError::Unauthenticated("missing bearer token".to_owned()))?;
        // Two tokens are ambiguous (a proxy may pick either): malformed, whatever they hold.
        if values.next().is_some() {
            return Err(ApiError::Unauthenticated(
                "send exactly one Authorization header".to_owned(),
            ));
        }
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::Unauthenticated("the Authorization header must be Bearer <JWT>".into())
            })?;
        self.verify(token)
    }

    fn verify(&self, token: &str) -> Result<Caller, ApiError> {
        let invalid = || ApiError::Unauthenticated("the token is invalid or expired".to_owned());
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid())?;
        let mut last_error = None;
        for candidate in self
            .keys
            .iter()
            .filter(|k| k.validation.algorithms.contains(&header.alg))
        {
            match jsonwebtoken::decode::<Claims>(token, &candidate.key, &candidate.validation) {
                Ok(data) => {
                    let account = AccountId::parse(&data.claims.sub).ok_or_else(|| {
                        ApiError::Unauthenticated("the token's sub is not a valid account".into())
                    })?;
                    let scopes = data.claims.scope.as_deref().map(split_scopes);
                    return Ok(Caller { account, scopes });
                }
                Err(err) => last_error = Some(err),
            }
        }
        if let Some(err) = last_error {
            tracing::debug!(error = %err, "token refused");
        }
        Err(invalid())
    }

    /// Mints a token with the HS256 secret (the `token` subcommand and tests). Refuses what
    /// the server would refuse or read differently: an account `AccountId::parse` does not
    /// take, and a blank scope (which the server reads as no scope granted, while leaving
    /// the claim out grants every scope).
    pub fn mint(&self, sub: &str, ttl: Duration, scope: Option<&str>) -> anyhow::Result<String> {
        anyhow::ensure!(
            AccountId::parse(sub).is_some(),
            "the account (--sub) must be 1-{} bytes without control characters, or the \
             server refuses the token",
            AccountId::MAX_LEN
        );
        let scope = match scope.map(split_scopes) {
            Some(scopes) if scopes.is_empty() => anyhow::bail!(
                "the scope (--scope) is blank, which the server reads as no access: name the \
                 scopes (e.g. \"media:read media:write\") or leave --scope out for all of them"
            ),
            scopes => scopes.map(|s| s.join(" ")),
        };
        let key = self
            .signing
            .as_ref()
            .context("minting needs an HS256 secret (MEDIA_NODE__AUTH__HS256_SECRET)")?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let claims = MintedClaims {
            sub,
            exp: now
                .checked_add(ttl.as_secs())
                .context("the lifetime (--ttl) is too long")?,
            iat: now,
            scope,
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            key,
        )?)
    }
}

fn validation(alg: Algorithm, settings: &AuthSettings) -> Validation {
    let mut validation = Validation::new(alg);
    validation.leeway = settings.leeway.as_secs();
    // jsonwebtoken checks `iss` and `aud` only when the token has them: a configured one
    // must also be present.
    let mut required = vec!["exp", "sub"];
    validation.validate_nbf = true;
    if let Some(issuer) = &settings.issuer {
        validation.set_issuer(&[issuer]);
        required.push("iss");
    }
    match &settings.audience {
        Some(audience) => {
            validation.set_audience(&[audience]);
            required.push("aud");
        }
        None => validation.validate_aud = false,
    }
    validation.set_required_spec_claims(&required);
    validation
}

/// A PEM public key and the one algorithm it verifies.
fn parse_public_key(pem: &[u8]) -> anyhow::Result<(DecodingKey, Algorithm)> {
    if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        return Ok((key, Algorithm::EdDSA));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        return Ok((key, Algorithm::ES256));
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Ok((key, Algorithm::RS256));
    }
    anyhow::bail!("not an RSA, EC (P-256) or Ed25519 public key in PEM form")
}

/// Reads the development secret, creating it with mode 0600 on first use.
fn load_or_create_secret(path: &Path) -> anyhow::Result<Secret> {
    match std::fs::read_to_string(path) {
        Ok(existing) if !existing.trim().is_empty() => return Ok(Secret::new(existing.trim())),
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => {
            return Err(err).with_context(|| format!("reading {}", path.display()));
        }
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let secret = hex::encode(bytes);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(mut file) => {
            file.write_all(secret.as_bytes())?;
            tracing::info!(path = %path.display(), "generated a development JWT secret");
            Ok(Secret::new(secret))
        }
        // Another process created it first: use theirs.
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok(Secret::new(std::fs::read_to_string(path)?.trim()))
        }
        Err(err) => Err(err).with_context(|| format!("creating {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;
    use std::path::PathBuf;

    fn settings(secret: &str) -> AuthSettings {
        AuthSettings {
            hs256_secret: Some(Secret::new(secret)),
            public_key_files: vec![],
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(5),
            generated_secret_file: PathBuf::from("/nonexistent/jwt-secret"),
        }
    }

    fn headers(token: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        map
    }

    #[test]
    fn round_trip_and_scopes() {
        let auth = Authenticator::from_settings(&settings(&"k".repeat(32)), true).unwrap();
        let token = auth
            .mint("acct-1", Duration::from_secs(60), Some("media:read"))
            .unwrap();
        let caller = auth.authenticate(&headers(&token)).unwrap();
        assert_eq!(caller.account.as_str(), "acct-1");
        assert!(caller.require(SCOPE_READ).is_ok());
        assert!(matches!(
            caller.require(SCOPE_WRITE),
            Err(ApiError::Forbidden(_))
        ));
    }

    #[test]
    fn refuses_other_keys_and_none() {
        let auth = Authenticator::from_settings(&settings(&"k".repeat(32)), true).unwrap();
        let other = Authenticator::from_settings(&settings(&"z".repeat(32)), true).unwrap();
        let token = other.mint("acct", Duration::from_secs(60), None).unwrap();
        assert!(auth.authenticate(&headers(&token)).is_err());

        // alg: none, with the claims of a valid token.
        let valid = auth.mint("acct", Duration::from_secs(60), None).unwrap();
        let payload = valid.split('.').nth(1).unwrap();
        let none_header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0"; // {"alg":"none","typ":"JWT"}
        let forged = format!("{none_header}.{payload}.");
        assert!(auth.authenticate(&headers(&forged)).is_err());
    }

    fn sign(secret: &str, claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn configured_issuer_and_audience_must_be_present_and_match() {
        let secret = "k".repeat(32);
        let mut s = settings(&secret);
        s.issuer = Some("https://idp.example".into());
        s.audience = Some("media-node".into());
        let auth = Authenticator::from_settings(&s, true).unwrap();
        let exp = now() + 600;
        let accepted = |claims: serde_json::Value| {
            auth.authenticate(&headers(&sign(&secret, claims)))
                .map(|c| c.account.as_str().to_owned())
        };
        let iss = "https://idp.example";
        for (name, claims) in [
            ("neither", serde_json::json!({"sub": "a", "exp": exp})),
            (
                "no iss",
                serde_json::json!({"sub": "a", "exp": exp, "aud": "media-node"}),
            ),
            (
                "no aud",
                serde_json::json!({"sub": "a", "exp": exp, "iss": iss}),
            ),
            (
                "other iss",
                serde_json::json!({"sub": "a", "exp": exp, "iss": "x", "aud": "media-node"}),
            ),
            (
                "other aud",
                serde_json::json!({"sub": "a", "exp": exp, "iss": iss, "aud": "other"}),
            ),
            (
                "aud array without ours",
                serde_json::json!({"sub": "a", "exp": exp, "iss": iss, "aud": ["x", "y"]}),
            ),
            (
                "empty aud array",
                serde_json::json!({"sub": "a", "exp": exp, "iss": iss, "aud": []}),
            ),
        ] {
            assert!(accepted(claims).is_err(), "{name} accepted");
        }
        for (name, claims) in [
            (
                "single aud",
                serde_json::json!({"sub": "a", "exp": exp, "iss": iss, "aud": "media-node"}),
            ),
            (
                "aud array",
                serde_json::json!({"sub": "a", "exp": exp, "iss": iss, "aud": ["other", "media-node"]}),
            ),
        ] {
            assert_eq!(accepted(claims).unwrap(), "a", "{name} refused");
        }
    }

    #[test]
    fn numeric_dates_may_have_fractions() {
        let secret = "k".repeat(32);
        let auth = Authenticator::from_settings(&settings(&secret), true).unwrap();
        let now = now() as f64;
        let token = sign(
            &secret,
            serde_json::json!({"sub": "a", "exp": now + 600.5, "nbf": now - 10.25, "iat": now - 10.75}),
        );
        assert!(auth.authenticate(&headers(&token)).is_ok());
        let expired = sign(&secret, serde_json::json!({"sub": "a", "exp": now - 600.5}));
        assert!(auth.authenticate(&headers(&expired)).is_err());
        let not_yet = sign(
            &secret,
            serde_json::json!({"sub": "a", "exp": now + 600.5, "nbf": now + 300.5}),
        );
        assert!(auth.authenticate(&headers(&not_yet)).is_err());
    }

    #[test]
    fn mint_applies_the_servers_rules() {
        let auth = Authenticator::from_settings(&settings(&"k".repeat(32)), true).unwrap();
        let ttl = Duration::from_secs(60);
        for sub in ["", "a\nb", &"x".repeat(AccountId::MAX_LEN + 1)] {
            assert!(auth.mint(sub, ttl, None).is_err(), "{sub:?}");
        }
        for scope in ["", "   ", "\t\n"] {
            assert!(auth.mint("acct", ttl, Some(scope)).is_err(), "{scope:?}");
        }
        let token = auth
            .mint("acct", ttl, Some("  media:read \t media:write "))
            .unwrap();
        let caller = auth.authenticate(&headers(&token)).unwrap();
        assert!(caller.require(SCOPE_READ).is_ok() && caller.require(SCOPE_WRITE).is_ok());
        assert!(auth.mint("acct", Duration::MAX, None).is_err());
    }

    #[test]
    fn production_without_key_is_an_error() {
        let mut s = settings("x");
        s.hs256_secret = None;
        assert!(Authenticator::from_settings(&s, true).is_err());
    }

    #[test]
    fn short_secret_is_refused() {
        assert!(Authenticator::from_settings(&settings("short"), false).is_err());
    }
}
