//! JWT bearer authentication: which keys verify tokens, what a valid token must carry, and
//! the development conveniences (a generated HS256 secret, minting tokens).
//!
//! Each key accepts exactly one algorithm, chosen by the key (its type and curve, or a JWK's
//! `alg`) and never by the token, so `alg: none` and algorithm confusion (an HS256 token
//! signed with a public key's bytes) are refused.
//!
//! Keys have ids: a public key file's name without its extension, or a JWKS `kid` (the
//! HS256 secret has none). A token whose header names a `kid` is checked against that key
//! only; a token without one against every key of its algorithm. Keys change without a
//! restart: key files are re-read every `auth.key_files_poll` (a Kubernetes Secret update
//! swaps a symlink, so the resolved file's contents are compared), and a JWKS is fetched at
//! start, every `auth.jwks_refresh`, and when a token names a `kid` no key has (at most once
//! per [`JWKS_MIN_REFRESH`]). A refresh or a changed file that fails keeps the last good keys.

use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::http::header::{HeaderMap, AUTHORIZATION};
use anyhow::Context;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde::Serialize;

use crate::domain::AccountId;
use crate::domain::ApiError;
use crate::settings::{redact_url, AuthSettings};

mod claims;
mod jwks;
mod key_ring;
#[cfg(test)]
mod tests;
mod verifying_key;

use claims::split_scopes;
pub use claims::{Caller, Claims, SCOPE_ADMIN, SCOPE_READ, SCOPE_WRITE};
use jwks::Jwks;
pub use jwks::JWKS_MIN_REFRESH;
use key_ring::{key_file_id, load_or_create_secret, parse_public_key, KeyFile, KeyRing};
pub use verifying_key::MIN_RSA_BITS;
use verifying_key::{Rules, TokenRefusal};

/// The claims of a token minted by `token`.
#[derive(Serialize)]
struct MintedClaims<'a> {
    sub: &'a str,
    exp: u64,
    iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
}

/// Clones share the keys (and the tasks that keep them current): the public API and the
/// admin listener verify tokens with one key ring.
#[derive(Clone)]
pub struct Authenticator {
    ring: Arc<KeyRing>,
    signing: Option<EncodingKey>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("keys", &self.ring.all_keys().len())
            .field(
                "jwks",
                &self.ring.jwks.as_ref().map(|j| redact_url(j.url.as_str())),
            )
            .field("can_sign", &self.signing.is_some())
            .finish()
    }
}

impl Authenticator {
    /// Builds the verifier from configuration: the HS256 secret and the key files are read
    /// now (an unusable one is an error); a JWKS is fetched by [`Authenticator::start`].
    /// With no key configured: outside production a random HS256 secret is created (once)
    /// in `auth.generated_secret_file`; in production it is an error.
    pub fn from_settings(settings: &AuthSettings, production: bool) -> anyhow::Result<Self> {
        let jwks_url = settings
            .jwks_url
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty());
        let mut hs256 = settings.hs256_secret.clone();
        if hs256.is_none() && settings.public_key_files.is_empty() && jwks_url.is_none() {
            anyhow::ensure!(
                !production,
                "no JWT key configured: set MEDIA_NODE__AUTH__HS256_SECRET, \
                 MEDIA_NODE__AUTH__PUBLIC_KEY_FILES or MEDIA_NODE__AUTH__JWKS_URL (required \
                 with APP_ENV=production)"
            );
            hs256 = Some(load_or_create_secret(&settings.generated_secret_file)?);
        }
        let rules = Rules {
            leeway: settings.leeway,
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
        };

        let mut secret = None;
        let mut signing = None;
        if let Some(hs256) = &hs256 {
            anyhow::ensure!(
                hs256.expose().len() >= 32,
                "the HS256 secret must be at least 32 bytes long"
            );
            let key = DecodingKey::from_secret(hs256.expose().as_bytes());
            secret = Some(rules.key(None, key, Algorithm::HS256));
            signing = Some(EncodingKey::from_secret(hs256.expose().as_bytes()));
        }

        let mut files: Vec<KeyFile> = Vec::new();
        for path in &settings.public_key_files {
            let id = key_file_id(path)?;
            if let Some(other) = files.iter().find(|f| f.key.id.as_deref() == Some(&id)) {
                anyhow::bail!(
                    "the public key files {} and {} both have the id {id:?} (a key's id is its \
                     file name without extension): rename one",
                    other.path.display(),
                    path.display()
                );
            }
            let pem = std::fs::read(path)
                .with_context(|| format!("reading public key file {}", path.display()))?;
            let (key, alg) = parse_public_key(&pem)
                .with_context(|| format!("parsing public key file {}", path.display()))?;
            files.push(KeyFile {
                path: path.clone(),
                seen: Some(pem),
                key: rules.key(Some(id), key, alg),
            });
        }

        let jwks = match jwks_url {
            None => None,
            Some(raw) => {
                let url = url::Url::parse(raw)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https"))
                    .with_context(|| {
                        format!("auth.jwks_url is not an http(s) URL: {}", redact_url(raw))
                    })?;
                let client = reqwest::Client::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .timeout(Duration::from_secs(10))
                    // Fetches come from several runtimes (the refresh task, the workers):
                    // no connection outlives its request.
                    .pool_max_idle_per_host(0)
                    .build()
                    .context("building the JWKS client")?;
                Some(Jwks {
                    url,
                    client,
                    refresh_every: settings.jwks_refresh,
                    keys: RwLock::new(Arc::new(Vec::new())),
                    on_demand: tokio::sync::Mutex::new(None),
                })
            }
        };

        Ok(Self {
            ring: Arc::new(KeyRing {
                rules,
                secret,
                files: RwLock::new(files),
                files_poll: settings.key_files_poll,
                jwks,
            }),
            signing,
        })
    }

    /// Fetches the JWKS (if one is configured; a failure is logged and later refreshes
    /// retry) and starts the tasks that keep the keys current: key files are re-read every
    /// `auth.key_files_poll`, the JWKS is fetched every `auth.jwks_refresh`. The tasks end
    /// when the authenticator and its clones are dropped.
    pub async fn start(&self) {
        if let Some(jwks) = &self.ring.jwks {
            if let Err(err) = jwks.refresh(&self.ring.rules).await {
                tracing::warn!(
                    url = %redact_url(jwks.url.as_str()),
                    error = format!("{err:#}"),
                    "could not fetch the JWKS; tokens of its keys are refused until a refresh \
                     succeeds"
                );
            }
        }
        let has_files = !self.ring.files.read().expect("key files lock").is_empty();
        if has_files {
            let ring = Arc::downgrade(&self.ring);
            let every = self.ring.files_poll;
            tokio::spawn(every_while_alive(ring, every, |ring| async move {
                ring.reload_key_files();
            }));
        }
        if let Some(jwks) = &self.ring.jwks {
            let ring = Arc::downgrade(&self.ring);
            tokio::spawn(every_while_alive(
                ring,
                jwks.refresh_every,
                |ring| async move {
                    if let Some(jwks) = &ring.jwks {
                        jwks.refresh_logged(&ring.rules).await;
                    }
                },
            ));
        }
    }

    /// Checks the `Authorization` header against the keys known now and returns the caller,
    /// or a 401. [`Authenticator::authenticate_refreshing`] also fetches the JWKS for an
    /// unknown `kid`.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let token = bearer_token(headers)?;
        self.ring.verify(token).map_err(|_| invalid_token())
    }

    /// Like [`Authenticator::authenticate`], but a token whose `kid` no key has (or, without
    /// a `kid`, whose algorithm no key has) first refreshes the JWKS, at most once per
    /// [`JWKS_MIN_REFRESH`].
    pub async fn authenticate_refreshing(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let token = bearer_token(headers)?;
        match self.ring.verify(token) {
            Ok(caller) => Ok(caller),
            Err(TokenRefusal::NoKey) => match &self.ring.jwks {
                Some(jwks) => {
                    jwks.refresh_on_demand(&self.ring.rules).await;
                    self.ring.verify(token).map_err(|_| invalid_token())
                }
                None => Err(invalid_token()),
            },
            Err(TokenRefusal::Invalid) => Err(invalid_token()),
        }
    }

    /// Mints a token with the HS256 secret (the `token` subcommand and tests). Refuses what
    /// the server would refuse or read differently: an account `AccountId::parse` does not
    /// take, and a blank scope (which the server reads as no scope at all granted, while
    /// leaving the claim out grants reading and writing, though not `media:admin`).
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
                 scopes (e.g. \"media:read media:write\", or \"media:admin\" for the admin \
                 purge) or leave --scope out for reading and writing"
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

fn invalid_token() -> ApiError {
    ApiError::Unauthenticated("the token is invalid or expired".to_owned())
}

/// The token of the one `Authorization: Bearer` header, or a 401.
fn bearer_token(headers: &HeaderMap) -> Result<&str, ApiError> {
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
    value
        .to_str()
        .ok()
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::Unauthenticated("the Authorization header must be Bearer <JWT>".into())
        })
}

/// Runs `work` every `every` for as long as the key ring lives.
async fn every_while_alive<F, Fut>(ring: Weak<KeyRing>, every: Duration, work: F)
where
    F: Fn(Arc<KeyRing>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the first tick is immediate; the keys were just loaded
    loop {
        ticker.tick().await;
        let Some(ring) = ring.upgrade() else { return };
        work(ring).await;
    }
}
