//! The parts of a multipart upload: written by the upload id saved in the row (S3) or by
//! object_store's own writer (local disk), at most `storage.parts_in_flight` at once.

use object_store::multipart::PartId;
use object_store::{MultipartUpload, ObjectStoreExt, PutPayload};
use tokio::task::JoinSet;

use chrono::{DateTime, Utc};

use crate::domain::{ApiError, MediaId};
use crate::metadata::Metadata;
use crate::storage::{Storage, StorageError, UploadId};
use crate::upload::limits::Reservation;

/// A multipart upload in progress: how parts are written, the parts still being sent and
/// the ids of those that arrived.
pub(super) struct Multipart {
    writer: PartWriter,
    id: MediaId,
    storage: Storage,
    parts: JoinSet<Result<(usize, Option<PartId>), StorageError>>,
    sent: std::collections::BTreeMap<usize, PartId>,
    next_index: usize,
    /// Parts sent at once, at most.
    in_flight: usize,
}

enum PartWriter {
    /// S3: the upload is known by its id, saved in the row before the first part, so a
    /// clean-up or the reaper aborts it without listing.
    ById(UploadId),
    /// Local disk: object_store's own writer; its staging file is named after the key.
    Writer(Box<dyn MultipartUpload>),
}

impl Multipart {
    /// Starts the multipart upload of `id`. On S3 the row says "being created" first, then
    /// records the id, so no multipart upload ever exists that its row does not lead to.
    /// `stale_before` is the instant before which a heartbeat means a dead upload, and
    /// `in_flight` how many parts may be sent at once.
    pub(super) async fn start(
        metadata: &Metadata,
        storage: &Storage,
        id: MediaId,
        stale_before: impl Fn() -> DateTime<Utc>,
        in_flight: usize,
    ) -> Result<Self, ApiError> {
        let writer = if storage.uploads_by_id() {
            if !metadata
                .set_multipart_upload(id, "", stale_before())
                .await?
            {
                return Err(lost_to_the_reaper(id));
            }
            let upload = storage.create_multipart(id).await?;
            match metadata
                .set_multipart_upload(id, &upload, stale_before())
                .await
            {
                Ok(true) => PartWriter::ById(upload),
                saved => {
                    // The row does not name it: abort it now, while its id is known (the
                    // row still says "being created", so a listing finds it otherwise).
                    let _ = storage.abort_multipart(id, &upload).await;
                    return Err(match saved {
                        Err(err) => err.into(),
                        Ok(_) => lost_to_the_reaper(id),
                    });
                }
            }
        } else {
            let _timer = storage.timer("create_multipart");
            PartWriter::Writer(
                storage
                    .store()
                    .put_multipart(&storage.key(id))
                    .await
                    .map_err(StorageError::from)?,
            )
        };
        Ok(Self {
            writer,
            id,
            storage: storage.clone(),
            parts: JoinSet::new(),
            sent: Default::default(),
            next_index: 0,
            in_flight: in_flight.max(1),
        })
    }

    /// Sends one part; its memory `reservation` is given back when storage has the part.
    pub(super) async fn send(
        &mut self,
        payload: PutPayload,
        reservation: Option<Reservation>,
    ) -> Result<(), StorageError> {
        while self.parts.len() >= self.in_flight {
            self.join_one().await?;
        }
        let index = self.next_index;
        self.next_index += 1;
        match &mut self.writer {
            PartWriter::ById(upload) => {
                let (storage, upload, id) = (self.storage.clone(), upload.clone(), self.id);
                self.parts.spawn(async move {
                    let _reservation = reservation;
                    let part = storage.put_part(id, &upload, index, payload).await?;
                    Ok((index, Some(part)))
                });
            }
            PartWriter::Writer(upload) => {
                let part = upload.put_part(payload);
                let timer = self.storage.timer("put_part");
                self.parts.spawn(async move {
                    let _timer = timer;
                    let _reservation = reservation;
                    part.await?;
                    Ok((index, None))
                });
            }
        }
        Ok(())
    }

    pub(super) async fn join_one(&mut self) -> Result<(), StorageError> {
        match self.parts.join_next().await {
            Some(Ok(Ok((index, part)))) => {
                if let Some(part) = part {
                    self.sent.insert(index, part);
                }
                Ok(())
            }
            Some(Ok(Err(err))) => Err(err),
            Some(Err(join)) => Err(object_store::Error::from(join).into()),
            None => Ok(()),
        }
    }

    pub(super) async fn finish(&mut self) -> Result<(), StorageError> {
        while !self.parts.is_empty() {
            self.join_one().await?;
        }
        match &mut self.writer {
            PartWriter::ById(upload) => {
                let parts = std::mem::take(&mut self.sent).into_values().collect();
                self.storage
                    .complete_multipart(self.id, upload, parts)
                    .await
            }
            PartWriter::Writer(upload) => {
                let _timer = self.storage.timer("complete_multipart");
                upload.complete().await?;
                Ok(())
            }
        }
    }

    /// Stops the parts under way and aborts the upload; one already gone counts as aborted.
    pub(super) async fn abort(&mut self) -> Result<(), StorageError> {
        self.parts.abort_all();
        while self.parts.join_next().await.is_some() {}
        match &mut self.writer {
            PartWriter::ById(upload) => self.storage.abort_multipart(self.id, upload).await,
            PartWriter::Writer(upload) => {
                let _timer = self.storage.timer("abort_multipart");
                match upload.abort().await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(err) => Err(err.into()),
                }
            }
        }
    }
}

/// The answer when an upload's row was taken as crashed before it could commit.
pub(super) fn lost_to_the_reaper(id: MediaId) -> ApiError {
    tracing::warn!(%id, "upload lost its row to the reaper before commit");
    ApiError::Unavailable(anyhow::anyhow!(
        "upload {id} counted as crashed before it was complete"
    ))
}
