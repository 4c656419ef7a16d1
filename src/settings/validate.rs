//! What the loaded settings must satisfy before anything starts: values in range, limits
//! that can work together, named backends in production.

use std::time::Duration;

use super::sections::*;

impl Settings {
    pub(super) fn validate(&self) -> anyhow::Result<()> {
        self.validate_durations()?;
        anyhow::ensure!(
            self.limits.max_upload_bytes > 0,
            "limits.max_upload_bytes must be positive"
        );
        anyhow::ensure!(
            !self.limits.body_idle_timeout.is_zero(),
            "limits.body_idle_timeout must be positive"
        );
        anyhow::ensure!(
            self.limits.min_body_rate_bytes_per_sec == 0
                || self.limits.min_body_rate_window >= Duration::from_secs(1),
            "limits.min_body_rate_window must be at least 1s"
        );
        anyhow::ensure!(
            !self.server.request_header_timeout.is_zero(),
            "server.request_header_timeout must be positive"
        );
        anyhow::ensure!(
            !self.storage.request_timeout.is_zero() && !self.storage.read_idle_timeout.is_zero(),
            "storage.request_timeout and storage.read_idle_timeout must be positive"
        );
        anyhow::ensure!(
            !self.server.send_timeout.is_zero(),
            "server.send_timeout must be positive"
        );
        anyhow::ensure!(
            self.server.max_connections != Some(0),
            "server.max_connections must be positive"
        );
        anyhow::ensure!(
            self.storage.part_size_bytes >= 5 * 1024 * 1024,
            "storage.part_size_bytes must be at least 5 MiB (the S3 minimum part size)"
        );
        anyhow::ensure!(
            !(self.storage.s3.streamed_put == Some(true) && self.storage.s3.sign_payload),
            "storage.s3.streamed_put needs storage.s3.sign_payload = false: a body forwarded \
             as it arrives cannot be signed by a hash known only at its end"
        );
        anyhow::ensure!(
            (1..=16).contains(&self.storage.parts_in_flight),
            "storage.parts_in_flight must be between 1 and 16"
        );
        anyhow::ensure!(
            !self.storage.s3.streamed_put_idle_timeout.is_zero(),
            "storage.s3.streamed_put_idle_timeout must be positive"
        );
        anyhow::ensure!(
            self.reaper.batch_size > 0,
            "reaper.batch_size must be positive"
        );
        anyhow::ensure!(
            self.uploads.incomplete_expiry >= Duration::from_secs(60),
            "uploads.incomplete_expiry must be at least 1m"
        );
        anyhow::ensure!(
            self.uploads.max_incomplete_per_account > 0,
            "uploads.max_incomplete_per_account must be positive"
        );
        for secret in [
            &self.auth.url_signing_secret,
            &self.auth.url_signing_secret_previous,
        ]
        .into_iter()
        .flatten()
        {
            anyhow::ensure!(
                secret.expose().len() >= 32,
                "auth.url_signing_secret must be at least 32 bytes long"
            );
        }
        if let Some(base) = &self.server.public_base_url {
            let parsed = url::Url::parse(base)
                .map_err(|e| anyhow::anyhow!("server.public_base_url {base:?}: {e}"))?;
            anyhow::ensure!(
                matches!(parsed.scheme(), "http" | "https"),
                "server.public_base_url must be an http(s) URL"
            );
        }
        self.validate_upload_limits()
    }

    /// The memory budget must hold a whole part for one upload of one account (else an
    /// upload could never start its next part), and fit the budget's KiB counter.
    fn validate_upload_limits(&self) -> anyhow::Result<()> {
        let limits = &self.limits;
        let part = self.storage.part_size_bytes as u64;
        anyhow::ensure!(
            limits.upload_memory_budget_bytes <= u64::from(u32::MAX) * 1024,
            "limits.upload_memory_budget_bytes must be at most 4 TiB"
        );
        anyhow::ensure!(
            limits.account_memory_share > 0.0 && limits.account_memory_share <= 1.0,
            "limits.account_memory_share must be above 0 and at most 1"
        );
        let share =
            (limits.upload_memory_budget_bytes as f64 * limits.account_memory_share).floor() as u64;
        anyhow::ensure!(
            share >= part,
            "limits.upload_memory_budget_bytes × limits.account_memory_share ({share} bytes) \
             must hold at least one part (storage.part_size_bytes, {part} bytes)"
        );
        anyhow::ensure!(
            (0.0..1.0).contains(&limits.newcomer_memory_share),
            "limits.newcomer_memory_share must be at least 0 and below 1"
        );
        let open = (limits.upload_memory_budget_bytes as f64 * (1.0 - limits.newcomer_memory_share))
            .floor() as u64;
        anyhow::ensure!(
            open >= part,
            "limits.upload_memory_budget_bytes × (1 − limits.newcomer_memory_share) ({open} \
             bytes) must hold at least one part (storage.part_size_bytes, {part} bytes)"
        );
        anyhow::ensure!(
            limits.upload_memory_wait <= Duration::from_secs(3600),
            "limits.upload_memory_wait must be at most 1h"
        );
        anyhow::ensure!(
            limits.max_uploads_per_account > 0,
            "limits.max_uploads_per_account must be positive"
        );
        anyhow::ensure!(
            limits.account_requests_per_second != Some(0)
                && limits.account_request_burst != Some(0),
            "limits.account_requests_per_second and limits.account_request_burst must be \
             positive (leave them unset to turn the rate limit off)"
        );
        anyhow::ensure!(
            limits.signed_link_rate_per_second == 0 || limits.signed_link_burst > 0,
            "limits.signed_link_burst must be positive (set limits.signed_link_rate_per_second \
             to 0 to turn the per-link rate limit off)"
        );
        Ok(())
    }

    /// Durations that date arithmetic and the upload heartbeat rely on: each within a range
    /// that makes sense, so a typo is a clear start-up error instead of a panic or of live
    /// uploads being reaped.
    fn validate_durations(&self) -> anyhow::Result<()> {
        const SECOND: Duration = Duration::from_secs(1);
        const DAY: Duration = Duration::from_secs(24 * 3600);
        let checks = [
            ("media.retention", self.media.retention, SECOND, 366 * DAY),
            (
                "reaper.interval",
                self.reaper.interval,
                Duration::from_millis(10),
                DAY,
            ),
            (
                "reaper.stale_upload_after",
                self.reaper.stale_upload_after,
                MIN_STALE_UPLOAD_AFTER,
                7 * DAY,
            ),
            (
                "reaper.heartbeat_interval",
                self.reaper.heartbeat_interval,
                MIN_HEARTBEAT_INTERVAL,
                MAX_HEARTBEAT_INTERVAL,
            ),
            ("reaper.lease", self.reaper.lease, SECOND, DAY),
            (
                "server.drain_delay",
                self.server.drain_delay,
                Duration::ZERO,
                DAY,
            ),
            (
                "server.shutdown_timeout",
                self.server.shutdown_timeout,
                Duration::ZERO,
                DAY,
            ),
            ("auth.leeway", self.auth.leeway, Duration::ZERO, DAY),
            (
                "database.acquire_timeout",
                self.database.acquire_timeout,
                Duration::from_millis(1),
                DAY,
            ),
            (
                "database.statement_timeout",
                self.database.statement_timeout,
                Duration::from_millis(1),
                DAY,
            ),
        ];
        for (name, value, min, max) in checks {
            anyhow::ensure!(
                value >= min && value <= max,
                "{name} is {}: it must be between {} and {}",
                humantime::format_duration(value),
                humantime::format_duration(min),
                humantime::format_duration(max),
            );
        }
        Ok(())
    }

    /// For the commands that use the backends (`serve`, `migrate`, `reap`): in production
    /// they must be named, since the embedded development defaults (SQLite and files under
    /// ./data) would silently keep media on one pod's disk.
    pub fn check_backends(&self) -> anyhow::Result<()> {
        if !self.is_production() {
            return Ok(());
        }
        let defaults = Self::embedded_defaults()?;
        anyhow::ensure!(
            self.database.url != defaults.database.url,
            "APP_ENV=production needs a database: set MEDIA_NODE__DATABASE__URL \
             (postgres://...) or MEDIA_NODE__DATABASE__URL_FILE"
        );
        anyhow::ensure!(
            self.storage.url != defaults.storage.url,
            "APP_ENV=production needs object storage: set MEDIA_NODE__STORAGE__URL \
             (s3://bucket/prefix)"
        );
        anyhow::ensure!(
            !self.auth.key_files_poll.is_zero(),
            "auth.key_files_poll must be positive"
        );
        anyhow::ensure!(
            !self.auth.jwks_refresh.is_zero(),
            "auth.jwks_refresh must be positive"
        );
        Ok(())
    }
}
