//! The roll-back of an upload that did not commit, run as a task of its own so that a
//! dropped request cannot abandon it half-way: the multipart upload aborted, the object
//! deleted, then the row; retried, and left to the reaper if storage stays down.

use crate::domain::MediaId;
use crate::metadata::Metadata;
use crate::storage::{Storage, StreamedPut};
use crate::upload::part_writer::Multipart;

/// Clean-ups of cancelled uploads. They run on the main runtime, not on the HTTP worker
/// whose runtime may be shutting down (a request cut off at the shutdown deadline), and
/// shutdown waits for them, so nothing is left behind by a stop.
///
/// Clean-ups queue: at most `concurrency` run at once, so that thousands of uploads
/// cancelled together (a network blip, a load balancer restart) neither starve the requests
/// still running of database connections nor give up on a pool timeout. Each retries what
/// failed with a growing pause; one that still cannot finish leaves its `uploading` row to
/// the reaper.
#[derive(Debug, Clone)]
pub struct Cleanups {
    tracker: tokio_util::task::TaskTracker,
    runtime: tokio::runtime::Handle,
    permits: std::sync::Arc<tokio::sync::Semaphore>,
}

/// Attempts of one clean-up before it leaves the rest to the reaper: with pauses from
/// 100 ms doubling up to 5 s, about 30 s in all.
const CLEANUP_ATTEMPTS: u32 = 10;

impl Cleanups {
    /// Must be called on the runtime that outlives the HTTP workers.
    pub fn on_current_runtime(concurrency: usize) -> Self {
        Self {
            tracker: tokio_util::task::TaskTracker::new(),
            runtime: tokio::runtime::Handle::current(),
            permits: std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency.max(1))),
        }
    }

    /// Queues `cleanup` on the runtime that outlives the HTTP workers. It runs to its end
    /// even if whoever waits for it is dropped (a request cut off at the shutdown deadline
    /// in the middle of its own roll-back).
    pub(super) fn spawn(&self, cleanup: Cleanup) -> tokio::task::JoinHandle<()> {
        let queue = self.clone();
        self.tracker
            .spawn_on(async move { queue.run(cleanup).await }, &self.runtime)
    }

    /// Runs `cleanup` when its turn in the queue comes.
    async fn run(&self, cleanup: Cleanup) {
        // The semaphore is never closed.
        let _permit = self.permits.acquire().await;
        cleanup.run().await;
    }

    /// Waits for clean-ups under way until `deadline`; false if some did not finish.
    pub async fn wait_until(&self, deadline: tokio::time::Instant) -> bool {
        self.tracker.close();
        tokio::time::timeout_at(deadline, self.tracker.wait())
            .await
            .is_ok()
    }
}

/// One upload's roll-back: what it left, undone in the order that never leaves an object
/// without a row.
pub(super) struct Cleanup {
    pub(super) metadata: Metadata,
    pub(super) storage: Storage,
    pub(super) id: MediaId,
    pub(super) multipart: Option<Multipart>,
    /// A streamed PUT: cancelled mid-body, or, once its whole body was sent, waited for,
    /// so that the object is not written after it was deleted.
    pub(super) streamed: Option<StreamedPut>,
    pub(super) object_written: bool,
    /// A multipart upload was started; without its handle (the start failed half-way) it
    /// is looked for in storage.
    pub(super) multipart_begun: bool,
    /// The row holds an idempotency key: it is freed first, so that the client's retry
    /// is not refused (409) while storage is being cleaned, or, should that fail, until
    /// the row counts as crashed.
    pub(super) keyed: bool,
}

impl Cleanup {
    /// Removes what the upload left, storage first and the row last, retrying each step
    /// that fails until it succeeds or the attempts run out.
    async fn run(mut self) {
        let id = self.id;
        if self.keyed {
            // Once: if the database fails here, deleting the row frees the key later.
            if let Err(err) = self.metadata.clear_key(id).await {
                tracing::debug!(%id, error = ?err, "freeing the idempotency key of a failed upload failed");
            }
        }
        let mut pause = std::time::Duration::from_millis(100);
        for attempt in 1..=CLEANUP_ATTEMPTS {
            match self.step().await {
                Ok(()) => return,
                Err(failed) if attempt < CLEANUP_ATTEMPTS => {
                    tracing::debug!(%id, attempt, failed, "clean-up of a failed upload will retry");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_secs(5));
                }
                Err(failed) => tracing::warn!(
                    %id,
                    failed,
                    "clean-up of a failed upload gave up; the reaper will finish it"
                ),
            }
        }
    }

    /// One attempt at what is left to do; the step that failed.
    async fn step(&mut self) -> Result<(), &'static str> {
        let id = self.id;
        if let Some(multipart) = self.multipart.as_mut() {
            if let Err(err) = multipart.abort().await {
                tracing::debug!(%id, error = ?err, "aborting the multipart upload failed");
                return Err("abort_multipart");
            }
            self.multipart = None;
            self.multipart_begun = false;
        }
        if let Some(mut put) = self.streamed.take() {
            put.settle().await;
        }
        if self.multipart_begun {
            // Started, but its id never reached us: find it the slow way.
            let recorded = self.storage.uploads_by_id().then_some("");
            if let Err(err) = self.storage.abort_unfinished(id, recorded).await {
                tracing::debug!(%id, error = ?err, "finding an unfinished multipart upload failed");
                return Err("abort_multipart");
            }
            self.multipart_begun = false;
        }
        if self.object_written {
            if let Err(err) = self.storage.delete(id).await {
                tracing::debug!(%id, error = ?err, "deleting the object of a failed upload failed");
                return Err("delete_object");
            }
            self.object_written = false;
        }
        if let Err(err) = self.metadata.delete(id).await {
            tracing::debug!(%id, error = ?err, "deleting the row of a failed upload failed");
            return Err("delete_row");
        }
        Ok(())
    }
}
