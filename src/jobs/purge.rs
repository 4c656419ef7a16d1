//! Removing everything of one account (`media-node purge --account A`, or
//! `POST /admin/accounts/{A}/purge` on the admin listener): its media, rows and objects,
//! while the reaper and uploads run. It works like the reaper, in leased batches, objects
//! first and rows last, so no object ever outlives its row. An upload of the account that
//! is still streaming is not cut off: its row is fenced, so it can no longer commit and
//! rolls itself back at its commit (or, if its process dies, the reaper removes it).

use std::time::Duration;

use chrono::Utc;

use crate::domain::AccountId;
use crate::metadata::{Metadata, PurgeQuery};
use crate::storage::Storage;

/// What a purge did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PurgeReport {
    /// Media removed, object and row.
    pub deleted: u64,
    /// Uploads still streaming, fenced: each rolls back at its commit.
    pub fenced_uploads: u64,
    /// Rows left: held by another claim (the reaper's) or failed; a later purge or the
    /// reaper finishes them.
    pub remaining: u64,
}

#[derive(Debug)]
pub struct Purge {
    pub metadata: Metadata,
    pub storage: Storage,
    pub batch_size: u32,
    pub lease: Duration,
    /// `ReaperSettings::upload_dead_after`: uploads with an older heartbeat are dead.
    pub dead_after: Duration,
}

impl Purge {
    pub fn from_settings(
        metadata: Metadata,
        storage: Storage,
        settings: &crate::settings::Settings,
    ) -> Self {
        Self {
            metadata,
            storage,
            batch_size: settings.reaper.batch_size,
            lease: settings.reaper.lease,
            dead_after: settings.reaper.upload_dead_after(),
        }
    }

    pub async fn account(&self, owner: &AccountId) -> anyhow::Result<PurgeReport> {
        let mut report = PurgeReport::default();
        loop {
            let now = Utc::now();
            let query = PurgeQuery {
                owner: owner.clone(),
                now,
                stale_before: now - chrono::Duration::from_std(self.dead_after)?,
                limit: self.batch_size,
                claim: uuid::Uuid::new_v4(),
                lease_until: now + chrono::Duration::from_std(self.lease)?,
            };
            let (fenced, claimed) = self.metadata.claim_owned(&query).await?;
            report.fenced_uploads += fenced;
            if claimed.is_empty() {
                break;
            }
            let cleared = crate::jobs::reaper::clear_storage(&self.storage, &claimed).await;
            if !cleared.unfinished_failed.is_empty() || !cleared.objects_failed.is_empty() {
                tracing::warn!(
                    unfinished = cleared.unfinished_failed.len(),
                    objects = cleared.objects_failed.len(),
                    "purge could not remove some media from storage; their rows stay"
                );
            }
            let failed = [cleared.unfinished_failed, cleared.objects_failed].concat();
            let removed = cleared.removed;
            report.deleted += self
                .metadata
                .delete_claimed_owned(&removed, query.claim, owner)
                .await?;
            if !failed.is_empty() {
                // Storage is failing: stop here rather than spin; the rows keep their
                // lease and are retried by the next purge or, once expired, the reaper.
                self.metadata.release(&failed, query.claim).await?;
                break;
            }
        }
        report.remaining = self.metadata.count_owned(owner).await?;
        tracing::info!(
            account = %owner,
            deleted = report.deleted,
            fenced_uploads = report.fenced_uploads,
            remaining = report.remaining,
            "account purged"
        );
        Ok(report)
    }
}
