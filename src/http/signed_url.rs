//! Signed download links: what `GET /v1/media/{id}/info` hands out so that a backend can
//! give a device a link that works without a token, as the WhatsApp Cloud API does with its
//! media URL. A link names one media id and an expiry instant, signed with HMAC-SHA256 under
//! `auth.url_signing_secret`, shared by every replica. During a rotation the previous key
//! (`auth.url_signing_secret_previous`) is still accepted.
//!
//! Each link has a request rate of its own on a replica (`limits.signed_link_rate_per_second`,
//! `LinkLimits`), keyed by its signature, and its downloads count against its owner's account
//! rate as well (`routes::download`): a link handed to a device cannot be fetched without
//! limit for its lifetime.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, Quota};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::domain::ApiError;
use crate::domain::MediaId;
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

    /// Whether the query of a request for `id` carries a link signature: `Ok(None)` when it
    /// has none, the link when it is valid, 401 when it is bad or expired.
    pub fn check(
        &self,
        id: MediaId,
        query: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Link>, ApiError> {
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
                None => Ok(None),
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
        // A valid HMAC-SHA256 is 32 bytes.
        let signature = <[u8; 32]>::try_from(signature.as_slice()).map_err(|_| bad_link())?;
        Ok(Some(Link(signature)))
    }
}

/// A valid link, known by its signature (which names the id and the expiry together). It
/// keys the link's rate limiter only; it never goes into a log line or a metric label.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Link([u8; 32]);

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Link(..)")
    }
}

/// Links tracked at most by a replica. A link needs a signature only `/info` hands out, but
/// a client may collect many over their lifetime and replay them all: the map is trimmed
/// when full, so its memory stays bounded (about 2 MiB).
const MAX_TRACKED_LINKS: usize = 16_384;

/// The request rate of each signed link on this replica (`limits.signed_link_rate_per_second`
/// and `limits.signed_link_burst`).
pub struct LinkLimits {
    /// None when the limit is off.
    quota: Option<Quota>,
    /// How long an unused limiter takes to refill: an entry idle for longer loses nothing
    /// when dropped.
    refill: Duration,
    links: Mutex<HashMap<Link, Tracked>>,
    /// Requests refused by a link's rate.
    refusals: prometheus::IntCounter,
}

struct Tracked {
    limiter: DefaultDirectRateLimiter,
    last_seen: Instant,
}

impl std::fmt::Debug for LinkLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkLimits")
            .field("quota", &self.quota)
            .field("tracked", &self.tracked())
            .finish_non_exhaustive()
    }
}

impl LinkLimits {
    /// `rate_per_second` 0 turns the limit off; otherwise `burst` (validated positive with
    /// the settings) requests may come at once.
    pub fn new(rate_per_second: u32, burst: u32, refusals: prometheus::IntCounter) -> Self {
        let quota = NonZeroU32::new(rate_per_second).map(|rate| {
            Quota::per_second(rate).allow_burst(NonZeroU32::new(burst).unwrap_or(rate))
        });
        let refill = quota.map_or(Duration::ZERO, |quota| {
            quota.replenish_interval() * quota.burst_size().get()
        });
        Self {
            quota,
            refill,
            links: Mutex::new(HashMap::new()),
            refusals,
        }
    }

    /// 429 when `link` is over its rate on this replica.
    pub fn check(&self, link: &Link) -> Result<(), ApiError> {
        let Some(quota) = self.quota else {
            return Ok(());
        };
        let now = Instant::now();
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        if links.len() >= MAX_TRACKED_LINKS && !links.contains_key(link) {
            self.trim(&mut links, now);
        }
        let tracked = links.entry(*link).or_insert_with(|| Tracked {
            limiter: governor::RateLimiter::direct(quota),
            last_seen: now,
        });
        tracked.last_seen = now;
        match tracked.limiter.check() {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(tracked.limiter.clock().now());
                self.refusals.inc();
                Err(ApiError::TooManyRequests {
                    details: "too many requests for this download link; retry after the delay \
                              in Retry-After"
                        .to_owned(),
                    retry_after: wait.as_secs_f64().ceil().max(1.0) as u64,
                })
            }
        }
    }

    /// Links tracked now.
    pub fn tracked(&self) -> usize {
        self.links.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Makes room in a full map: links whose limiter has refilled go first (they lose
    /// nothing); if that is not enough, any, down to three quarters (those start again with
    /// a fresh burst, which only a client replaying thousands of links at once could see).
    fn trim(&self, links: &mut HashMap<Link, Tracked>, now: Instant) {
        links.retain(|_, tracked| now.duration_since(tracked.last_seen) < self.refill);
        let target = MAX_TRACKED_LINKS * 3 / 4;
        if links.len() > target {
            let mut excess = links.len() - target;
            links.retain(|_, _| {
                if excess > 0 {
                    excess -= 1;
                    false
                } else {
                    true
                }
            });
        }
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
        assert!(s.check(id, query(&link), now).unwrap().is_some());
        assert!(s.check(MediaId::new_random(), query(&link), now).is_err());
        let later = now + chrono::Duration::seconds(301);
        assert!(s.check(id, query(&link), later).is_err());
        let tampered = query(&link).replace("expires=", "expires=9");
        assert!(s.check(id, &tampered, now).is_err());
        assert!(s.check(id, "", now).unwrap().is_none());
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
            .unwrap()
            .is_some());
        assert!(signer(&[new.as_str()])
            .check(id, query(&link), now)
            .is_err());
    }

    fn link(n: u32) -> Link {
        let mut bytes = [0u8; 32];
        bytes[..4].copy_from_slice(&n.to_be_bytes());
        Link(bytes)
    }

    #[test]
    fn each_link_has_its_own_rate() {
        let refusals = prometheus::IntCounter::new("refusals", "refusals").unwrap();
        let limits = LinkLimits::new(1, 2, refusals.clone());
        limits.check(&link(1)).unwrap();
        limits.check(&link(1)).unwrap();
        match limits.check(&link(1)) {
            Err(ApiError::TooManyRequests { retry_after, .. }) => assert_eq!(retry_after, 1),
            other => panic!("{other:?}"),
        }
        assert_eq!(refusals.get(), 1);
        limits.check(&link(2)).unwrap();
        // Off: nothing is tracked.
        let off = LinkLimits::new(0, 10, refusals);
        for _ in 0..100 {
            off.check(&link(1)).unwrap();
        }
        assert_eq!(off.tracked(), 0);
    }

    #[test]
    fn the_link_map_stays_bounded() {
        let refusals = prometheus::IntCounter::new("refusals", "refusals").unwrap();
        let limits = LinkLimits::new(5, 10, refusals);
        for n in 0..(MAX_TRACKED_LINKS as u32 * 3) {
            limits.check(&link(n)).unwrap();
        }
        assert!(
            limits.tracked() <= MAX_TRACKED_LINKS,
            "{}",
            limits.tracked()
        );
        // The newest link is kept, with its allowance used.
        let newest = link(MAX_TRACKED_LINKS as u32 * 3 - 1);
        assert!(limits.links.lock().unwrap().contains_key(&newest));
    }
}
