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

use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_web::http::header::{HeaderMap, AUTHORIZATION};
use anyhow::Context;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::domain::AccountId;
use crate::error::ApiError;
use crate::settings::{redact_url, AuthSettings, Secret};

pub const SCOPE_READ: &str = "media:read";
pub const SCOPE_WRITE: &str = "media:write";
/// The admin listener's purge. Only a token whose `scope` names it has it: a token without
/// a `scope` claim may read and write, but is no admin.
pub const SCOPE_ADMIN: &str = "media:admin";

/// A token naming an unknown `kid` refreshes the JWKS at most this often.
pub const JWKS_MIN_REFRESH: Duration = Duration::from_secs(30);
/// RSA keys shorter than this are refused.
pub const MIN_RSA_BITS: usize = 2048;
/// A JWKS document larger than this is refused.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

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
    /// `None` when the token has no `scope` claim: such a token may read and write.
    scopes: Option<Vec<String>>,
}

impl Caller {
    /// 403 unless the token allows `scope`: a token without a `scope` claim allows
    /// `media:read` and `media:write`.
    pub fn require(&self, scope: &str) -> Result<(), ApiError> {
        match &self.scopes {
            None => Ok(()),
            Some(_) => self.require_named(scope),
        }
    }

    /// 403 unless the token's `scope` claim names `scope`; a token without the claim has
    /// none of these (`media:admin`).
    pub fn require_named(&self, scope: &str) -> Result<(), ApiError> {
        match &self.scopes {
            Some(granted) if granted.iter().any(|s| s == scope) => Ok(()),
            None => Err(ApiError::Forbidden(format!(
                "the token has no scope claim, and {scope} must be named in it"
            ))),
            Some(_) => Err(ApiError::Forbidden(format!(
                "the token's scope does not include {scope}"
            ))),
        }
    }
}

/// What every token must satisfy besides its signature.
#[derive(Debug, Clone)]
struct Rules {
    leeway: Duration,
    issuer: Option<String>,
    audience: Option<String>,
}

impl Rules {
    fn validation(&self, alg: Algorithm) -> Validation {
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

    fn key(&self, id: Option<String>, key: DecodingKey, alg: Algorithm) -> Arc<VerifyingKey> {
        Arc::new(VerifyingKey {
            id,
            alg,
            key,
            validation: self.validation(alg),
        })
    }
}

/// A key and the one algorithm it verifies.
struct VerifyingKey {
    /// The key file's name without extension or the JWKS `kid`; none for the HS256 secret.
    id: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
    validation: Validation,
}

/// A public key file and the key last read from it.
struct KeyFile {
    path: PathBuf,
    /// The contents last looked at (good or not), to notice a change; `None` after a
    /// failed read, so that the failure is logged once.
    seen: Option<Vec<u8>>,
    key: Arc<VerifyingKey>,
}

/// The identity provider's JWKS and the keys last fetched from it.
struct Jwks {
    url: url::Url,
    client: reqwest::Client,
    refresh_every: Duration,
    keys: RwLock<Arc<Vec<Arc<VerifyingKey>>>>,
    /// When the last refresh asked for by an unknown `kid` started.
    on_demand: tokio::sync::Mutex<Option<Instant>>,
}

/// Every key that verifies tokens, shared with the tasks that keep them current.
struct KeyRing {
    rules: Rules,
    secret: Option<Arc<VerifyingKey>>,
    files: RwLock<Vec<KeyFile>>,
    files_poll: Duration,
    jwks: Option<Jwks>,
}

/// Why known keys did not accept a token.
enum Refusal {
    /// No key has the token's `kid` (or, without one, its algorithm): a JWKS refresh may help.
    NoKey,
    Invalid,
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
            Err(Refusal::NoKey) => match &self.ring.jwks {
                Some(jwks) => {
                    jwks.refresh_on_demand(&self.ring.rules).await;
                    self.ring.verify(token).map_err(|_| invalid_token())
                }
                None => Err(invalid_token()),
            },
            Err(Refusal::Invalid) => Err(invalid_token()),
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

impl KeyRing {
    fn all_keys(&self) -> Vec<Arc<VerifyingKey>> {
        let mut keys: Vec<Arc<VerifyingKey>> = self.secret.iter().cloned().collect();
        keys.extend(
            self.files
                .read()
                .expect("key files lock")
                .iter()
                .map(|f| f.key.clone()),
        );
        if let Some(jwks) = &self.jwks {
            keys.extend(jwks.keys.read().expect("JWKS lock").iter().cloned());
        }
        keys
    }

    fn verify(&self, token: &str) -> Result<Caller, Refusal> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Refusal::Invalid)?;
        let keys = self.all_keys();
        // A `kid` names the key; without one, every key of the token's algorithm is tried.
        let named: Vec<&Arc<VerifyingKey>> = match header.kid.as_deref() {
            Some(kid) => keys
                .iter()
                .filter(|k| k.id.as_deref() == Some(kid))
                .collect(),
            None => keys.iter().filter(|k| k.alg == header.alg).collect(),
        };
        if named.is_empty() {
            return Err(Refusal::NoKey);
        }
        let mut last_error = None;
        for candidate in named.into_iter().filter(|k| k.alg == header.alg) {
            match jsonwebtoken::decode::<Claims>(token, &candidate.key, &candidate.validation) {
                Ok(data) => {
                    let account = AccountId::parse(&data.claims.sub).ok_or(Refusal::Invalid)?;
                    let scopes = data.claims.scope.as_deref().map(split_scopes);
                    return Ok(Caller { account, scopes });
                }
                Err(err) => last_error = Some(err),
            }
        }
        if let Some(err) = last_error {
            tracing::debug!(error = %err, "token refused");
        }
        Err(Refusal::Invalid)
    }

    /// Re-reads every key file; a changed one replaces its key, or is logged and ignored
    /// (keeping the last good key) when it holds no usable key.
    fn reload_key_files(&self) {
        let paths: Vec<PathBuf> = self
            .files
            .read()
            .expect("key files lock")
            .iter()
            .map(|f| f.path.clone())
            .collect();
        for (index, path) in paths.iter().enumerate() {
            let read = std::fs::read(path);
            let mut files = self.files.write().expect("key files lock");
            let file = &mut files[index];
            let contents = match read {
                Ok(contents) => contents,
                Err(err) => {
                    if file.seen.take().is_some() {
                        tracing::warn!(
                            path = %path.display(),
                            error = %err,
                            "cannot read the public key file; keeping its last key"
                        );
                    }
                    continue;
                }
            };
            if file.seen.as_ref() == Some(&contents) {
                continue;
            }
            match parse_public_key(&contents) {
                Ok((key, alg)) => {
                    file.key = self.rules.key(file.key.id.clone(), key, alg);
                    tracing::info!(path = %path.display(), ?alg, "public key file changed: its new key is in use");
                }
                Err(err) => tracing::warn!(
                    path = %path.display(),
                    error = format!("{err:#}"),
                    "public key file changed but holds no usable key; keeping its last key"
                ),
            }
            file.seen = Some(contents);
        }
    }
}

impl Jwks {
    /// Fetches the set and swaps it in; on any failure the keys stay as they were.
    async fn refresh(&self, rules: &Rules) -> anyhow::Result<usize> {
        let body = self.fetch().await?;
        let keys = parse_jwks(&body, rules)?;
        let count = keys.len();
        *self.keys.write().expect("JWKS lock") = Arc::new(keys);
        tracing::debug!(keys = count, "JWKS refreshed");
        Ok(count)
    }

    async fn refresh_logged(&self, rules: &Rules) {
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
    async fn refresh_on_demand(&self, rules: &Rules) {
        let mut last = self.on_demand.lock().await;
        if last.is_some_and(|at| at.elapsed() < JWKS_MIN_REFRESH) {
            return;
        }
        *last = Some(Instant::now());
        self.refresh_logged(rules).await;
    }

    async fn fetch(&self) -> anyhow::Result<Vec<u8>> {
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
fn parse_jwks(body: &[u8], rules: &Rules) -> anyhow::Result<Vec<Arc<VerifyingKey>>> {
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
fn key_from_jwk(jwk: &Jwk) -> anyhow::Result<(DecodingKey, Algorithm)> {
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

/// A key file's id: its name without the extension.
fn key_file_id(path: &Path) -> anyhow::Result<String> {
    path.file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .with_context(|| format!("public key file {} has no usable name", path.display()))
}

/// A PEM public key and the one algorithm it verifies: Ed25519 → EdDSA, EC P-256 → ES256,
/// EC P-384 → ES384, RSA (at least [`MIN_RSA_BITS`]) → RS256.
fn parse_public_key(pem: &[u8]) -> anyhow::Result<(DecodingKey, Algorithm)> {
    if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        return Ok((key, Algorithm::EdDSA));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        // The uncompressed point's length says the curve.
        let point_len = match key.kind() {
            DecodingKeyKind::SecretOrDer(point) => point.len(),
            DecodingKeyKind::RsaModulusExponent { .. } => 0,
        };
        let alg = ec_algorithm(point_len).context(
            "an EC key on an unsupported curve: only P-256 (ES256) and P-384 (ES384) are",
        )?;
        return Ok((key, alg));
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        let bits = match key.kind() {
            DecodingKeyKind::SecretOrDer(der) => rsa_modulus_bits(der).unwrap_or(0),
            DecodingKeyKind::RsaModulusExponent { n, .. } => unsigned_bits(n),
        };
        check_rsa_bits(bits)?;
        return Ok((key, Algorithm::RS256));
    }
    anyhow::bail!("not an RSA, EC (P-256, P-384) or Ed25519 public key in PEM form")
}

/// The algorithm of an EC public point (`04 || x || y`) by its length.
fn ec_algorithm(point_len: usize) -> Option<Algorithm> {
    match point_len {
        65 => Some(Algorithm::ES256),
        97 => Some(Algorithm::ES384),
        _ => None,
    }
}

fn check_rsa_bits(bits: usize) -> anyhow::Result<()> {
    anyhow::ensure!(
        bits >= MIN_RSA_BITS,
        "an RSA key of {bits} bits is too small: at least {MIN_RSA_BITS} bits are required"
    );
    Ok(())
}

/// The modulus size of a DER `RSAPublicKey` (`SEQUENCE { INTEGER n, INTEGER e }`).
fn rsa_modulus_bits(der: &[u8]) -> Option<usize> {
    let (0x30, sequence, _) = der_element(der)? else {
        return None;
    };
    let (0x02, modulus, _) = der_element(sequence)? else {
        return None;
    };
    Some(unsigned_bits(modulus))
}

/// One DER element: its tag, its contents and the bytes after it.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return None;
        }
        let (bytes, after) = rest.split_at_checked(count)?;
        rest = after;
        bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    let (contents, rest) = rest.split_at_checked(len)?;
    Some((tag, contents, rest))
}

/// The bit length of a big-endian unsigned integer.
fn unsigned_bits(bytes: &[u8]) -> usize {
    let significant = match bytes.iter().position(|b| *b != 0) {
        Some(first) => &bytes[first..],
        None => return 0,
    };
    (significant.len() - 1) * 8 + (8 - significant[0].leading_zeros() as usize)
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
            key_files_poll: Duration::from_secs(5),
            jwks_url: None,
            jwks_refresh: Duration::from_secs(300),
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(5),
            generated_secret_file: PathBuf::from("/nonexistent/jwt-secret"),
            url_signing_secret: None,
            url_signing_secret_previous: None,
            signed_url_ttl: Duration::from_secs(300),
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
    fn the_admin_scope_must_be_named() {
        let auth = Authenticator::from_settings(&settings(&"k".repeat(32)), true).unwrap();
        let caller = |scope: Option<&str>| {
            let token = auth.mint("ops", Duration::from_secs(60), scope).unwrap();
            auth.authenticate(&headers(&token)).unwrap()
        };
        // No scope claim: reading and writing, not the admin's purge.
        let unscoped = caller(None);
        assert!(unscoped.require(SCOPE_WRITE).is_ok());
        assert!(matches!(
            unscoped.require_named(SCOPE_ADMIN),
            Err(ApiError::Forbidden(_))
        ));
        for scope in ["media:read media:write", "media:adminx", "media:ADMIN"] {
            assert!(
                matches!(
                    caller(Some(scope)).require_named(SCOPE_ADMIN),
                    Err(ApiError::Forbidden(_))
                ),
                "{scope}"
            );
        }
        let admin = caller(Some("media:read media:admin"));
        assert!(admin.require_named(SCOPE_ADMIN).is_ok());
        assert!(admin.require(SCOPE_READ).is_ok());
        assert!(admin.require(SCOPE_WRITE).is_err());
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

    /// A directory of generated keys, removed at the end of the test.
    struct KeyDir(PathBuf);

    impl KeyDir {
        fn new() -> Self {
            let dir =
                std::env::temp_dir().join(format!("media-node-keys-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        /// Generates a key pair with `openssl genpkey ARGS`: the private key's PEM and the
        /// path of `<name>.pem`, the public key.
        fn key_pair(&self, name: &str, genpkey: &[&str]) -> (Vec<u8>, PathBuf) {
            let private = self.0.join(format!("{name}.key"));
            let public = self.0.join(format!("{name}.pem"));
            openssl(&[&["genpkey"], genpkey, &["-out", private.to_str().unwrap()]].concat());
            openssl(&[
                "pkey",
                "-in",
                private.to_str().unwrap(),
                "-pubout",
                "-out",
                public.to_str().unwrap(),
            ]);
            (std::fs::read(&private).unwrap(), public)
        }
    }

    impl Drop for KeyDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn openssl(args: &[&str]) {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("the openssl command line tool");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    const P256: &[&str] = &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];
    const P384: &[&str] = &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"];

    fn signed(alg: Algorithm, key: &EncodingKey, kid: Option<&str>) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        let claims = serde_json::json!({"sub": "acct", "exp": now() + 600});
        jsonwebtoken::encode(&header, &claims, key).unwrap()
    }

    fn with_key_files(files: Vec<PathBuf>) -> AuthSettings {
        let mut s = settings("unused");
        s.hs256_secret = None;
        s.public_key_files = files;
        s
    }

    #[test]
    fn an_ec_keys_curve_decides_its_algorithm() {
        let dir = KeyDir::new();
        let (p256, p256_pub) = dir.key_pair("p256", P256);
        let (p384, p384_pub) = dir.key_pair("p384", P384);
        let auth =
            Authenticator::from_settings(&with_key_files(vec![p256_pub, p384_pub]), true).unwrap();
        let p256 = EncodingKey::from_ec_pem(&p256).unwrap();
        let p384 = EncodingKey::from_ec_pem(&p384).unwrap();
        for kid in [None, Some("p256")] {
            let token = signed(Algorithm::ES256, &p256, kid);
            assert!(auth.authenticate(&headers(&token)).is_ok(), "ES256 {kid:?}");
        }
        for kid in [None, Some("p384")] {
            let token = signed(Algorithm::ES384, &p384, kid);
            assert!(auth.authenticate(&headers(&token)).is_ok(), "ES384 {kid:?}");
        }
    }

    #[test]
    fn small_rsa_keys_are_refused_at_start() {
        let dir = KeyDir::new();
        let (_, small) = dir.key_pair(
            "small",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"],
        );
        let err =
            Authenticator::from_settings(&with_key_files(vec![small.clone()]), true).unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains("1024 bits is too small"), "{message}");
        assert!(message.contains("2048"), "{message}");
        assert!(message.contains(&small.display().to_string()), "{message}");

        let (private, fine) = dir.key_pair(
            "fine",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        );
        let auth = Authenticator::from_settings(&with_key_files(vec![fine]), true).unwrap();
        let token = signed(
            Algorithm::RS256,
            &EncodingKey::from_rsa_pem(&private).unwrap(),
            Some("fine"),
        );
        assert!(auth.authenticate(&headers(&token)).is_ok());
    }

    #[test]
    fn a_tokens_kid_selects_the_key() {
        let dir = KeyDir::new();
        let (a, a_pub) = dir.key_pair("a", P256);
        let (b, b_pub) = dir.key_pair("b", P256);
        let auth = Authenticator::from_settings(&with_key_files(vec![a_pub, b_pub]), true).unwrap();
        let a = EncodingKey::from_ec_pem(&a).unwrap();
        let b = EncodingKey::from_ec_pem(&b).unwrap();
        let ok = |token: String| auth.authenticate(&headers(&token)).is_ok();
        assert!(ok(signed(Algorithm::ES256, &a, Some("a"))));
        assert!(ok(signed(Algorithm::ES256, &b, Some("b"))));
        // Without a kid, every key of the algorithm is tried.
        assert!(ok(signed(Algorithm::ES256, &a, None)));
        assert!(ok(signed(Algorithm::ES256, &b, None)));
        // A kid names one key: another key's signature does not do, nor an unknown kid.
        assert!(!ok(signed(Algorithm::ES256, &b, Some("a"))));
        assert!(!ok(signed(Algorithm::ES256, &a, Some("b"))));
        assert!(!ok(signed(Algorithm::ES256, &a, Some("c"))));
        assert!(!ok(signed(Algorithm::ES256, &a, Some(""))));
    }

    #[test]
    fn key_file_ids_are_unique() {
        let dir = KeyDir::new();
        let (_, first) = dir.key_pair("k", P256);
        std::fs::create_dir_all(dir.0.join("other")).unwrap();
        let second = dir.0.join("other/k.pub");
        std::fs::copy(&first, &second).unwrap();
        let err =
            Authenticator::from_settings(&with_key_files(vec![first, second]), true).unwrap_err();
        assert!(
            format!("{err:#}").contains("both have the id \"k\""),
            "{err:#}"
        );
    }

    #[test]
    fn jwks_keys_get_their_algorithm_from_the_key() {
        let dir = KeyDir::new();
        let (p384, _) = dir.key_pair("p384", P384);
        let p384 = EncodingKey::from_ec_pem(&p384).unwrap();
        let ec = |alg: Option<&str>, kid: &str| {
            let mut jwk =
                serde_json::to_value(Jwk::from_encoding_key(&p384, Algorithm::ES384).unwrap())
                    .unwrap();
            jwk["kid"] = kid.into();
            match alg {
                Some(alg) => jwk["alg"] = alg.into(),
                None => {
                    jwk.as_object_mut().unwrap().remove("alg");
                }
            }
            jwk
        };
        // A 1024-bit modulus (the top bit set) with exponent 65537.
        let small_rsa = serde_json::json!({
            "kty": "RSA", "kid": "small", "e": "AQAB",
            "n": "wA".to_owned() + &"A".repeat(169),
        });
        let set = serde_json::json!({"keys": [
            ec(Some("ES384"), "with-alg"),
            ec(None, "without-alg"),
            ec(Some("ES256"), "wrong-alg"),
            ec(Some("RS256"), "wrong-family"),
            small_rsa,
            {"kty": "oct", "kid": "secret", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"},
            {"kty": "EC", "kid": "enc", "use": "enc", "crv": "P-384", "x": "AA", "y": "AA"},
            {"kty": "whatever", "kid": "odd"},
        ]});
        let rules = Rules {
            leeway: Duration::from_secs(5),
            issuer: None,
            audience: None,
        };
        let keys = parse_jwks(set.to_string().as_bytes(), &rules).unwrap();
        let found: Vec<_> = keys
            .iter()
            .map(|k| (k.id.clone().unwrap(), k.alg))
            .collect();
        assert_eq!(
            found,
            vec![
                ("with-alg".to_owned(), Algorithm::ES384),
                ("without-alg".to_owned(), Algorithm::ES384),
            ]
        );
        // Nothing usable is an error (so it cannot replace good keys), as is garbage.
        let empty = serde_json::json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]});
        assert!(parse_jwks(empty.to_string().as_bytes(), &rules).is_err());
        assert!(parse_jwks(b"<html>", &rules).is_err());
        assert!(parse_jwks(b"{\"keys\": []}", &rules).is_err());
    }

    #[test]
    fn rsa_modulus_sizes() {
        // SEQUENCE { INTEGER (0x00 then 256 bytes, the top bit set), INTEGER 65537 }
        let mut der = vec![0x30, 0x82, 0x01, 0x0a, 0x02, 0x82, 0x01, 0x01, 0x00, 0x80];
        der.extend(std::iter::repeat_n(0x11, 255));
        der.extend([0x02, 0x03, 0x01, 0x00, 0x01]);
        assert_eq!(rsa_modulus_bits(&der), Some(2048));
        assert_eq!(rsa_modulus_bits(&der[..20]), None);
        assert_eq!(unsigned_bits(&[0x00, 0x01]), 1);
        assert_eq!(unsigned_bits(&[0x7f, 0xff]), 15);
        assert_eq!(unsigned_bits(&[]), 0);
    }
}
