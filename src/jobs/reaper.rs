//! Expiry: a background task that removes media past `expires_at`, and `uploading` rows
//! left by crashed uploads (dead: they missed three heartbeats), in batches. Objects go first, rows last, so no object ever
//! outlives its row; a failure leaves the row for a later pass.
//!
//! Many replicas reap at once. Each batch is claimed with a lease (`reap_claim`,
//! `reap_claimed_until`) in one statement that skips rows locked by another replica, so no
//! two replicas work on one row, none waits, and no lock is held across storage calls.

use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::watch;

use crate::domain::MediaId;
use crate::metadata::{Claimed, DueQuery, MediaStatus, Metadata};
use crate::metrics::ReaperMetrics;
use crate::settings::ReaperSettings;
use crate::storage::Storage;

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PassReport {
    /// Media removed (object and row), each counted once.
    pub deleted: u64,
    /// Failures; their rows stay for a later pass.
    pub errors: u64,
    /// The pass stopped early because shutdown began.
    pub interrupted: bool,
}

impl PassReport {
    /// One line for a pass that did something; an idle one logs nothing.
    fn log(&self, started: Instant, message: &'static str) {
        if self.deleted > 0 || self.errors > 0 {
            tracing::info!(
                deleted = self.deleted,
                errors = self.errors,
                duration_ms = started.elapsed().as_millis() as u64,
                "{message}"
            );
        }
    }
}

#[derive(Clone)]
pub struct Reaper {
    metadata: Metadata,
    storage: Storage,
    settings: ReaperSettings,
    metrics: ReaperMetrics,
}

impl Reaper {
    pub fn new(
        metadata: Metadata,
        storage: Storage,
        settings: ReaperSettings,
        metrics: ReaperMetrics,
    ) -> Self {
        Self {
            metadata,
            storage,
            settings,
            metrics,
        }
    }

    /// Runs a pass every `reaper.interval` until `shutdown` turns true, and in between a
    /// quick pass for dead uploads every heartbeat (`ReaperSettings::upload_heartbeat`), so
    /// a crashed upload's row and staged parts go within a heartbeat of its death. A pass in
    /// progress stops between batches; a batch is always finished. Each pass runs as a task
    /// of its own: one that panics is counted (`media_reaper_errors_total{stage="panic"}`),
    /// logged, and followed by the next pass, so expiry never stops silently.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let quick = self.settings.upload_heartbeat().min(self.settings.interval);
        tracing::info!(interval = ?self.settings.interval, dead_uploads_every = ?quick, "reaper started");
        let mut next_full = Instant::now();
        loop {
            if *shutdown.borrow() {
                break;
            }
            let full = Instant::now() >= next_full;
            if full {
                next_full = Instant::now() + self.settings.interval;
            }
            let reaper = self.clone();
            let stop = shutdown.clone();
            let pass = tokio::spawn(async move {
                if full {
                    reaper.pass(&stop).await;
                } else {
                    reaper.dead_uploads_pass(&stop).await;
                }
            });
            if let Err(err) = pass.await {
                if err.is_panic() {
                    self.error("panic");
                    let message = panic_message(err.into_panic());
                    tracing::error!(panic = %message, "reaper pass panicked; the next pass runs as usual");
                }
            }
            let pause = quick.min(next_full.saturating_duration_since(Instant::now()));
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.changed() => {}
            }
        }
        tracing::info!("reaper stopped");
    }

    /// A quick pass: batches of dead uploads (their heartbeat older than
    /// `ReaperSettings::upload_dead_after`) until none is left (or shutdown begins).
    /// Expired media wait for the next full pass.
    pub async fn dead_uploads_pass(&self, shutdown: &watch::Receiver<bool>) -> PassReport {
        let started = Instant::now();
        let report = self.batches(Scope::DeadUploads, shutdown).await;
        report.log(started, "reaper pass for dead uploads finished");
        report
    }

    /// Batches of `scope` until one comes back short (nothing more is due), one fails
    /// (storage is failing: the rest waits for the next pass instead of spinning on the same
    /// rows) or shutdown begins.
    async fn batches(&self, scope: Scope, shutdown: &watch::Receiver<bool>) -> PassReport {
        let mut report = PassReport::default();
        loop {
            if *shutdown.borrow() {
                report.interrupted = true;
                break;
            }
            match self.batch(scope).await {
                Ok(batch) => {
                    report.deleted += batch.deleted;
                    report.errors += batch.errors;
                    if batch.claimed < self.settings.batch_size as usize || batch.errors > 0 {
                        break;
                    }
                }
                Err(()) => {
                    report.errors += 1;
                    break;
                }
            }
        }
        report
    }

    /// One pass: batches until nothing is due (or shutdown begins).
    pub async fn pass(&self, shutdown: &watch::Receiver<bool>) -> PassReport {
        let started = Instant::now();
        self.metrics.runs.inc();
        let report = self.batches(Scope::Everything, shutdown).await;
        match self.metadata.expired_backlog(Utc::now()).await {
            Ok(backlog) => self
                .metrics
                .expired_backlog
                .set(i64::try_from(backlog).unwrap_or(i64::MAX)),
            Err(err) => {
                self.error("backlog");
                tracing::warn!(error = ?err, "reaper could not count the expired backlog");
            }
        }
        if report.errors == 0 && !report.interrupted {
            self.metrics.last_success.set(Utc::now().timestamp() as f64);
        }
        self.metrics
            .pass_duration
            .observe(started.elapsed().as_secs_f64());
        report.log(started, "reaper pass finished");
        report
    }

    fn error(&self, stage: &str) {
        self.metrics.errors.with_label_values(&[stage]).inc();
    }

    async fn batch(&self, scope: Scope) -> Result<BatchReport, ()> {
        let now = Utc::now();
        let claim = uuid::Uuid::new_v4();
        let due = DueQuery {
            now,
            stale_before: now - chrono_duration(self.settings.upload_dead_after()),
            limit: self.settings.batch_size,
            claim,
            lease_until: now + chrono_duration(self.settings.lease),
        };
        let claimed = match scope {
            Scope::Everything => self.metadata.claim_due(&due).await,
            Scope::DeadUploads => self.metadata.claim_dead_uploads(&due).await,
        };
        let claimed = claimed.map_err(|err| {
            self.error("claim");
            tracing::warn!(error = ?err, "reaper could not claim a batch");
        })?;
        if claimed.is_empty() {
            return Ok(BatchReport::default());
        }

        let cleared = clear_storage(&self.storage, &claimed).await;
        let mut errors = 0;
        for id in &cleared.unfinished_failed {
            self.error("multipart");
            errors += 1;
            tracing::warn!(%id, "reaper could not abort an unfinished upload");
        }
        if !cleared.objects_failed.is_empty() {
            self.error("storage");
            errors += 1;
            tracing::warn!(
                count = cleared.objects_failed.len(),
                "reaper could not delete some objects; their rows stay for a later pass"
            );
        }
        let removed = cleared.removed;
        let failed = [cleared.unfinished_failed, cleared.objects_failed].concat();

        let deleted = match self.metadata.delete_claimed(&removed, claim, now).await {
            Ok(n) => n,
            Err(err) => {
                // The objects are gone; the rows keep their lease and are retried once it
                // ends. Deleting an object twice is harmless.
                self.error("delete_rows");
                errors += 1;
                tracing::warn!(error = ?err, "reaper could not delete rows");
                0
            }
        };
        self.metrics.deleted.inc_by(deleted);
        if let Err(err) = self.metadata.release(&failed, claim).await {
            self.error("release");
            errors += 1;
            tracing::warn!(error = ?err, "reaper could not release failed rows; their lease will end");
        }
        Ok(BatchReport {
            claimed: claimed.len(),
            deleted,
            errors,
        })
    }
}

/// What a batch claims.
#[derive(Debug, Clone, Copy)]
enum Scope {
    /// Expired media and dead uploads.
    Everything,
    /// Dead uploads only.
    DeadUploads,
}

#[derive(Debug, Default)]
struct BatchReport {
    claimed: usize,
    deleted: u64,
    errors: u64,
}

/// What `clear_storage` did to a batch of claimed rows.
#[derive(Debug, Default)]
pub(crate) struct Cleared {
    /// Nothing of theirs is left in storage: their rows may go.
    pub removed: Vec<MediaId>,
    /// Uploads that never finished whose multipart upload or staging files could not be
    /// removed.
    pub unfinished_failed: Vec<MediaId>,
    /// Objects that could not be deleted.
    pub objects_failed: Vec<MediaId>,
}

/// Removes what storage holds for claimed rows, objects before rows: for uploads that
/// never finished their multipart upload (S3) or staging files (local disk), and for
/// resumable uploads that never completed their temporary objects too, then every object,
/// in bulk. Shared by the reaper and an account's purge.
pub(crate) async fn clear_storage(storage: &Storage, claimed: &[Claimed]) -> Cleared {
    let mut cleared = Cleared::default();
    for row in claimed.iter() {
        let recorded = row.multipart_upload_id.as_deref();
        let unfinished = match row.status {
            MediaStatus::Uploading => storage.abort_unfinished(row.id, recorded).await,
            MediaStatus::Incomplete => storage.discard_resumable(row.id, recorded).await,
            MediaStatus::Ready => continue,
        };
        if let Err(err) = unfinished {
            tracing::debug!(id = %row.id, error = ?err, "aborting an unfinished upload failed");
            cleared.unfinished_failed.push(row.id);
        }
    }
    let candidates: Vec<MediaId> = claimed
        .iter()
        .map(|r| r.id)
        .filter(|id| !cleared.unfinished_failed.contains(id))
        .collect();
    cleared.objects_failed = storage.delete_many(&candidates).await;
    cleared.removed = candidates
        .into_iter()
        .filter(|id| !cleared.objects_failed.contains(id))
        .collect();
    cleared
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => payload
            .downcast::<&'static str>()
            .map(|m| (*m).to_owned())
            .unwrap_or_else(|_| "(no message)".to_owned()),
    }
}

fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}
