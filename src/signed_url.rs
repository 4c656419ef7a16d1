//! Signed download links: what `GET /v1/media/{id}/info` hands out so that a backend can
//! give a device a link that works without a token, as the WhatsApp Cloud API does with its
//! media URL. A link names one media id and an expiry instant, signed with HMAC-SHA256 under
//! `auth.url_signing_secret`, shared by every replica. During a rotation the previous key
//! (`auth.url_signing_secret_previous`) is still accepted.

use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::domain::MediaId;
use crate::error::ApiError;
use crate::settings::{Secret, Settings};

type HmacSha256 = Hmac<Sha256>;

pub const EXPIRES: &str = "expires";
pub const SIGNATURE: &str = "signature";

#[derive(Clone)]
pub struct UrlSigner {
    /// The signing key first, then one still accepted.
    keys: Vec<Secret>,
    ttl: Duration,
    base: Option<String>,
}

impl std::fmt::Debug for UrlSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UrlSigner")
            .field("keys", &self.keys.len())
            .field("ttl", &self.ttl)
            .field("base", &self.base)
            .finish()
    }
}

impl UrlSigner {
    /// Outside production, with no key configured, a random key of this process (links
    /// then work on this one process only, which is all development has). In production
    /// without a key there are no links: `/info` answers `"url": null`.
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Self> {
        let mut keys: Vec<Secret> = settings.auth.url_signing_secret.iter().cloned().collect();
        if keys.is_empty() {
            if settings.is_production() {
                tracing::warn!(
                    "no URL signing key (MEDIA_NODE__AUTH__URL_SIGNING_SECRET): /info hands out \
                     no download links"
                );
                return Ok(Self {
                    keys: Vec::new(),
                    ttl: settings.auth.signed_url_ttl,
                    base: None,
                });
            }
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            keys.push(Secret::new(hex::encode(bytes)));
        }
        keys.extend(settings.auth.url_signing_secret_previous.iter().cloned());
        Ok(Self {
            keys,
            ttl: settings.auth.signed_url_ttl,
            base: settings
                .server
                .public_base_url
                .as_ref()
                .map(|b| b.trim_end_matches('/').to_owned()),
        })
    }

    fn mac(key: &Secret, id: MediaId, expires: i64) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(key.expose().as_bytes())
            .expect("HMAC takes keys of any length");
        mac.update(format!("GET /v1/media/{id} {expires}").as_bytes());
        mac
    }

    /// A link to download `id` until `now + ttl`; none without a key.
    pub fn sign(&self, id: MediaId, now: DateTime<Utc>) -> Option<String> {
        let key = self.keys.first()?;
        let expires = now.timestamp() + self.ttl.as_secs() as i64;
        let signature = hex::encode(Self::mac(key, id, expires).finalize().into_bytes());
        Some(format!(
            "{}/v1/media/{id}?{EXPIRES}={expires}&{SIGNATURE}={signature}",
            self.base.as_deref().unwrap_or("")
        ))
    }

    /// Whether the query of a request for `id` carries a link signature: `Ok(false)` when it
    /// has none, `Ok(true)` when it is valid, 401 when it is bad or expired.
    pub fn check(&self, id: MediaId, query: &str, now: DateTime<Utc>) -> Result<bool, ApiError> {
        let (mut expires, mut signature) = (None, None);
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            let slot = match key.as_ref() {
                EXPIRES => &mut expires,
                SIGNATURE => &mut signature,
                _ => continue,
            };
            if slot.replace(value.into_owned()).is_some() {
                return Err(bad_link());
            }
        }
        let Some(signature) = signature else {
            return match expires {
                None => Ok(false),
                Some(_) => Err(bad_link()),
            };
        };
        let expires: i64 = expires.and_then(|e| e.parse().ok()).ok_or_else(bad_link)?;
        let signature = hex::decode(signature).map_err(|_| bad_link())?;
        let valid = self
            .keys
            .iter()
            .any(|key| Self::mac(key, id, expires).verify_slice(&signature).is_ok());
        if !valid {
            return Err(bad_link());
        }
        if expires <= now.timestamp() {
            return Err(ApiError::Unauthenticated("the link has expired".to_owned()));
        }
        Ok(true)
    }
}

fn bad_link() -> ApiError {
    ApiError::Unauthenticated("the link's signature is not valid".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(keys: &[&str]) -> UrlSigner {
        UrlSigner {
            keys: keys.iter().map(|k| Secret::new(*k)).collect(),
            ttl: Duration::from_secs(300),
            base: None,
        }
    }

    fn query(link: &str) -> &str {
        link.split_once('?').unwrap().1
    }

    #[test]
    fn links_verify_until_they_expire_and_only_for_their_id() {
        let s = signer(&["k".repeat(32).as_str()]);
        let id = MediaId::new_random();
        let now = Utc::now();
        let link = s.sign(id, now).unwrap();
        assert!(link.starts_with(&format!("/v1/media/{id}?expires=")));
        assert!(s.check(id, query(&link), now).unwrap());
        assert!(s.check(MediaId::new_random(), query(&link), now).is_err());
        let later = now + chrono::Duration::seconds(301);
        assert!(s.check(id, query(&link), later).is_err());
        let tampered = query(&link).replace("expires=", "expires=9");
        assert!(s.check(id, &tampered, now).is_err());
        assert!(!s.check(id, "", now).unwrap());
        assert!(s.check(id, "expires=1", now).is_err());
    }

    #[test]
    fn the_previous_key_is_accepted_during_a_rotation() {
        let old = "o".repeat(32);
        let new = "n".repeat(32);
        let id = MediaId::new_random();
        let now = Utc::now();
        let link = signer(&[old.as_str()]).sign(id, now).unwrap();
        assert!(signer(&[new.as_str(), old.as_str()])
            .check(id, query(&link), now)
            .unwrap());
        assert!(signer(&[new.as_str()])
            .check(id, query(&link), now)
            .is_err());
    }
}
