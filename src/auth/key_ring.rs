//! The keys that verify tokens: the key ring (the HS256 secret, the public key files
//! re-read as they change, a JWKS) and the reading of a PEM public key.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};

use crate::domain::AccountId;
use crate::settings::Secret;

use super::claims::{split_scopes, Caller, Claims};
use super::jwks::Jwks;
use super::verifying_key::{
    check_rsa_bits, ec_algorithm, rsa_modulus_bits, unsigned_bits, Rules, TokenRefusal,
    VerifyingKey,
};

/// A public key file and the key last read from it.
pub(super) struct KeyFile {
    pub(super) path: PathBuf,
    /// The contents last looked at (good or not), to notice a change; `None` after a
    /// failed read, so that the failure is logged once.
    pub(super) seen: Option<Vec<u8>>,
    pub(super) key: Arc<VerifyingKey>,
}

/// Every key that verifies tokens, shared with the tasks that keep them current.
pub(super) struct KeyRing {
    pub(super) rules: Rules,
    pub(super) secret: Option<Arc<VerifyingKey>>,
    pub(super) files: RwLock<Vec<KeyFile>>,
    pub(super) files_poll: Duration,
    pub(super) jwks: Option<Jwks>,
}

impl KeyRing {
    pub(super) fn all_keys(&self) -> Vec<Arc<VerifyingKey>> {
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

    pub(super) fn verify(&self, token: &str) -> Result<Caller, TokenRefusal> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenRefusal::Invalid)?;
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
            return Err(TokenRefusal::NoKey);
        }
        let mut last_error = None;
        for candidate in named.into_iter().filter(|k| k.alg == header.alg) {
            match jsonwebtoken::decode::<Claims>(token, &candidate.key, &candidate.validation) {
                Ok(data) => {
                    let account =
                        AccountId::parse(&data.claims.sub).ok_or(TokenRefusal::Invalid)?;
                    let scopes = data.claims.scope.as_deref().map(split_scopes);
                    return Ok(Caller { account, scopes });
                }
                Err(err) => last_error = Some(err),
            }
        }
        if let Some(err) = last_error {
            tracing::debug!(error = %err, "token refused");
        }
        Err(TokenRefusal::Invalid)
    }

    /// Re-reads every key file; a changed one replaces its key, or is logged and ignored
    /// (keeping the last good key) when it holds no usable key.
    pub(super) fn reload_key_files(&self) {
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

/// A key file's id: its name without the extension.
pub(super) fn key_file_id(path: &Path) -> anyhow::Result<String> {
    path.file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .with_context(|| format!("public key file {} has no usable name", path.display()))
}

/// A PEM public key and the one algorithm it verifies: Ed25519 → EdDSA, EC P-256 → ES256,
/// EC P-384 → ES384, RSA (at least [`MIN_RSA_BITS`]) → RS256.
pub(super) fn parse_public_key(pem: &[u8]) -> anyhow::Result<(DecodingKey, Algorithm)> {
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

/// Reads the development secret, creating it with mode 0600 on first use.
pub(super) fn load_or_create_secret(path: &Path) -> anyhow::Result<Secret> {
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
