//! One upload from first byte to `ready`: row first, then the bytes streamed into storage
//! while they are hashed and counted, then `ready`. Any failure undoes what was done, in the
//! order that never leaves an object without a row: multipart aborted and object deleted
//! first, the row last. If storage cannot be cleaned (it is down), the `uploading` row stays
//! behind on purpose, so the reaper finds the key and finishes the job later.
//!
//! Memory per upload is bounded by the part size, in bytes whatever the client's chunking:
//! one part-sized buffer being filled plus at most `MAX_PARTS_IN_FLIGHT` parts being sent.

use bytes::Bytes;
use chrono::Utc;
use futures_util::{Stream, StreamExt};
use object_store::{MultipartUpload, ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;

use crate::body::PartBuffer;
use crate::domain::{AccountId, FileExtension, MediaId};
use crate::error::ApiError;
use crate::metadata::{Metadata, NewMedia};
use crate::metrics::MediaMetrics;
use crate::storage::{Storage, StorageError};

/// Parts sent to storage concurrently while the next one fills.
const MAX_PARTS_IN_FLIGHT: usize = 2;

/// What an upload needs from the application.
#[derive(Debug, Clone)]
pub struct Ingest {
    pub metadata: Metadata,
    pub storage: Storage,
    pub max_upload_bytes: u64,
    pub part_size: usize,
    pub retention: chrono::Duration,
    pub metrics: MediaMetrics,
    pub cleanups: Cleanups,
    /// How slow a body may be before the upload is answered 408 and rolled back.
    pub body_limits: crate::body::BodyLimits,
}

/// Clean-ups of cancelled uploads. They run on the main runtime, not on the HTTP worker
/// whose runtime may be shutting down (a request cut off at the shutdown deadline), and
/// shutdown waits for them, so nothing is left behind by a stop.
#[derive(Debug, Clone)]
pub struct Cleanups {
    tracker: tokio_util::task::TaskTracker,
    runtime: tokio::runtime::Handle,
}

impl Cleanups {
    /// Must be called on the runtime that outlives the HTTP workers.
    pub fn on_current_runtime() -> Self {
        Self {
            tracker: tokio_util::task::TaskTracker::new(),
            runtime: tokio::runtime::Handle::current(),
        }
    }

    fn spawn(&self, cleanup: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tracker.spawn_on(cleanup, &self.runtime);
    }

    /// Waits (bounded) for clean-ups under way; false if some did not finish in time.
    pub async fn wait(&self, within: std::time::Duration) -> bool {
        self.tracker.close();
        tokio::time::timeout(within, self.tracker.wait())
            .await
            .is_ok()
    }
}

/// A stored upload.
#[derive(Debug, Clone)]
pub struct Stored {
    pub id: MediaId,
    pub size_bytes: u64,
    pub sha256: String,
}

impl Ingest {
    /// Stores one upload. `body` yields the request body as it arrives.
    pub async fn upload<S, E>(
        &self,
        owner: AccountId,
        extension: FileExtension,
        mut body: S,
    ) -> Result<Stored, ApiError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Into<ApiError>,
    {
        let _in_flight = InFlight::enter(&self.metrics);
        let now = Utc::now();
        let id = MediaId::new_random();
        self.metadata
            .insert_uploading(&NewMedia {
                id,
                owner,
                extension,
                created_at: now,
                expires_at: now + self.retention,
            })
            .await?;

        let mut session = Session {
            ingest: self.clone(),
            id,
            multipart: None,
            object_written: false,
            armed: true,
        };
        match session.stream(&mut body).await {
            Ok(stored) => {
                session.armed = false;
                self.metrics.upload_bytes.inc_by(stored.size_bytes);
                self.metrics.upload_size.observe(stored.size_bytes as f64);
                Ok(stored)
            }
            Err(err) => Err(session.roll_back(err).await),
        }
    }
}

/// A multipart upload in progress: the handle to complete or abort it and the parts that
/// are still being sent.
struct Multipart {
    upload: Box<dyn MultipartUpload>,
    parts: JoinSet<object_store::Result<()>>,
    storage: Storage,
}

impl Multipart {
    async fn send(&mut self, part: Bytes) -> Result<(), StorageError> {
        while self.parts.len() >= MAX_PARTS_IN_FLIGHT {
            self.join_one().await?;
        }
        let part = self.upload.put_part(PutPayload::from(part));
        let timer = self.storage.timer("put_part");
        self.parts.spawn(async move {
            let _timer = timer;
            part.await
        });
        Ok(())
    }

    async fn join_one(&mut self) -> Result<(), StorageError> {
        match self.parts.join_next().await {
            Some(Ok(result)) => Ok(result?),
            Some(Err(join)) => Err(object_store::Error::from(join).into()),
            None => Ok(()),
        }
    }

    async fn finish(&mut self) -> Result<(), StorageError> {
        while !self.parts.is_empty() {
            self.join_one().await?;
        }
        let _timer = self.storage.timer("complete_multipart");
        self.upload.complete().await?;
        Ok(())
    }
}

struct Session {
    ingest: Ingest,
    id: MediaId,
    multipart: Option<Multipart>,
    /// A single PUT or a completed multipart upload went through: an object may exist.
    object_written: bool,
    /// Until disarmed, dropping the session (the request future was cancelled) cleans up in
    /// the background.
    armed: bool,
}

impl Session {
    async fn stream<S, E>(&mut self, body: &mut S) -> Result<Stored, ApiError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Into<ApiError>,
    {
        let limit = self.ingest.max_upload_bytes;
        let part_size = self.ingest.part_size;
        let key = self.ingest.storage.key(self.id);
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        // One part-sized buffer the body is copied into: memory is bounded by bytes, whatever
        // the client's chunking (a body of 1-byte chunks must not keep a million `Bytes`).
        let mut pending = PartBuffer::new(part_size);

        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(Into::into)?;
            size += chunk.len() as u64;
            if size > limit {
                return Err(ApiError::PayloadTooLarge { limit });
            }
            hasher.update(&chunk);
            let mut rest = &chunk[..];
            while let Some(part) = pending.fill(&mut rest) {
                if self.multipart.is_none() {
                    let storage = &self.ingest.storage;
                    let timer = storage.timer("create_multipart");
                    let upload = storage
                        .store()
                        .put_multipart(&key)
                        .await
                        .map_err(StorageError::from)?;
                    drop(timer);
                    self.multipart = Some(Multipart {
                        upload,
                        parts: JoinSet::new(),
                        storage: storage.clone(),
                    });
                }
                if let Some(multipart) = self.multipart.as_mut() {
                    multipart.send(part).await?;
                }
            }
        }

        if size == 0 {
            return Err(ApiError::MissingParameter(
                "the request body is empty: send the file's bytes".to_owned(),
            ));
        }
        // From here an object may exist even if the call fails (an answer lost on the way
        // back), so a roll-back deletes it too.
        self.object_written = true;
        match self.multipart.as_mut() {
            Some(multipart) => {
                let last = pending.take();
                if !last.is_empty() {
                    multipart.send(last).await?;
                }
                multipart.finish().await?;
            }
            None => {
                let storage = &self.ingest.storage;
                let _timer = storage.timer("put");
                storage
                    .store()
                    .put(&key, PutPayload::from(pending.take()))
                    .await
                    .map_err(StorageError::from)?;
            }
        }
        self.multipart = None;

        let sha256 = hex::encode(hasher.finalize());
        if !self
            .ingest
            .metadata
            .mark_ready(self.id, size, &sha256)
            .await?
        {
            return Err(ApiError::Internal(anyhow::anyhow!(
                "the row of upload {} vanished before it was complete",
                self.id
            )));
        }
        Ok(Stored {
            id: self.id,
            size_bytes: size,
            sha256,
        })
    }

    /// Undoes the upload and hands back the error to answer with.
    async fn roll_back(mut self, err: ApiError) -> ApiError {
        self.armed = false;
        let cleanup = Cleanup {
            ingest: self.ingest.clone(),
            id: self.id,
            multipart: self.multipart.take(),
            object_written: self.object_written,
        };
        cleanup.run().await;
        err
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // The request was cancelled mid-upload (client gone, shutdown deadline). Should the
        // clean-up not run (the process is killed), the row stays and the reaper cleans.
        let cleanup = Cleanup {
            ingest: self.ingest.clone(),
            id: self.id,
            multipart: self.multipart.take(),
            object_written: self.object_written,
        };
        self.ingest.cleanups.spawn(cleanup.run());
    }
}

struct Cleanup {
    ingest: Ingest,
    id: MediaId,
    multipart: Option<Multipart>,
    object_written: bool,
}

impl Cleanup {
    async fn run(mut self) {
        let id = self.id;
        let storage_clean = self.clean_storage().await;
        if !storage_clean {
            tracing::warn!(%id, "storage not cleaned after a failed upload; the reaper will retry");
            return;
        }
        if let Err(err) = self.ingest.metadata.delete(id).await {
            tracing::warn!(%id, error = ?err, "row of a failed upload not deleted; the reaper will remove it");
        }
    }

    /// True when no object and no multipart upload remain under the key.
    async fn clean_storage(&mut self) -> bool {
        let id = self.id;
        let mut clean = true;
        if let Some(mut multipart) = self.multipart.take() {
            multipart.parts.abort_all();
            while multipart.parts.join_next().await.is_some() {}
            let timer = self.ingest.storage.timer("abort_multipart");
            let aborted = multipart.upload.abort().await;
            drop(timer);
            if let Err(err) = aborted {
                tracing::warn!(%id, error = %err, "aborting the multipart upload failed");
                clean = false;
            }
        }
        if self.object_written {
            if let Err(err) = self.ingest.storage.delete(id).await {
                tracing::warn!(%id, error = ?err, "deleting the object of a failed upload failed");
                clean = false;
            }
        }
        clean
    }
}

/// Counts an upload in `media_uploads_in_flight` for as long as it lives.
struct InFlight(prometheus::IntGauge);

impl InFlight {
    fn enter(metrics: &MediaMetrics) -> Self {
        metrics.uploads_in_flight.inc();
        Self(metrics.uploads_in_flight.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}
