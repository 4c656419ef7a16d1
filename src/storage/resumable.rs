//! What a resumable upload keeps between its requests. On S3: the parts of a multipart
//! upload, numbered by the caller, and what is below S3's smallest part size as a
//! temporary object `<prefix>/.uploads/<id>/<generation>` (each request that takes the
//! upload writes its own, so a request that lost the upload never overwrites a newer
//! one's). On local disk, which object_store offers no multipart uploads by id for: one
//! append-only file beside the object, `<object>#0`, renamed into place at completion.
//! The reaper finds all of it from the row: the multipart upload by its id, the temporary
//! objects by listing their folder, the local file by its name.

use bytes::Bytes;
use futures_util::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use super::{Kind, Result, Storage, StorageError, UploadId};
use crate::domain::MediaId;

/// The highest part number S3 accepts.
pub const MAX_PART_NUMBER: u32 = 10_000;

/// A resumable upload's file on local disk, open for appending at its end.
#[derive(Debug)]
pub struct AppendFile {
    /// Buffered, so that a client's small chunks (down to single bytes) become writes of
    /// `APPEND_BUFFER` bytes, not one blocking call each.
    file: tokio::io::BufWriter<tokio::fs::File>,
    len: u64,
}

/// What an append-only file gathers before it writes.
pub const APPEND_BUFFER: usize = 256 * 1024;

impl AppendFile {
    /// Appends `bytes`.
    pub async fn append(&mut self, bytes: &[u8]) -> Result<()> {
        self.file.write_all(bytes).await.map_err(io_error)?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Makes what was appended durable, so the offset saved next is true after a crash.
    pub async fn sync(&mut self) -> Result<()> {
        self.file.flush().await.map_err(io_error)?;
        self.file.get_ref().sync_data().await.map_err(io_error)
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

fn io_error(err: std::io::Error) -> StorageError {
    StorageError(object_store::Error::Generic {
        store: "LocalFileSystem",
        source: Box::new(err),
    })
}

impl Storage {
    /// Whether resumable uploads keep their bytes as S3 parts and temporary objects (else
    /// in an append-only file on local disk).
    pub fn keeps_parts(&self) -> bool {
        matches!(self.kind, Kind::S3 { .. })
    }

    /// Uploads part `number` (1 to `MAX_PART_NUMBER`) of a multipart upload; its ETag.
    pub async fn put_numbered_part(
        &self,
        id: MediaId,
        upload: &UploadId,
        number: u32,
        data: PutPayload,
    ) -> Result<String> {
        let index = number.checked_sub(1).ok_or_else(|| {
            StorageError(object_store::Error::Generic {
                store: "S3",
                source: "part numbers start at 1".into(),
            })
        })?;
        let part = self.put_part(id, upload, index as usize, data).await?;
        Ok(part.content_id)
    }

    /// Completes a multipart upload from `parts` (number, ETag) in order.
    pub async fn complete_numbered(
        &self,
        id: MediaId,
        upload: &UploadId,
        parts: &[(u32, String)],
    ) -> Result<()> {
        let Kind::S3 { lister, .. } = &self.kind else {
            return Err(StorageError(object_store::Error::NotSupported {
                source: "multipart uploads by id need S3".into(),
            }));
        };
        let _timer = self.timer("complete_multipart");
        lister
            .complete(self.key(id).as_ref(), upload, parts)
            .await
            .map_err(|err| {
                StorageError(object_store::Error::Generic {
                    store: "S3",
                    source: err.into(),
                })
            })
    }

    /// The folder of an upload's temporary objects.
    fn tails_folder(&self, id: MediaId) -> Path {
        let uploads = match &self.prefix {
            Some(prefix) => prefix.clone().join(".uploads"),
            None => Path::from(".uploads"),
        };
        uploads.join(id.to_string())
    }

    fn tail_key(&self, id: MediaId, generation: u64) -> Path {
        self.tails_folder(id).join(generation.to_string())
    }

    /// Stores the bytes a request kept below a part's size.
    pub async fn put_tail(&self, id: MediaId, generation: u64, bytes: Bytes) -> Result<()> {
        let _timer = self.timer("put_tail");
        self.store
            .put(&self.tail_key(id, generation), PutPayload::from(bytes))
            .await?;
        Ok(())
    }

    /// The bytes `put_tail` stored for `generation`.
    pub async fn read_tail(&self, id: MediaId, generation: u64) -> Result<Bytes> {
        let _timer = self.timer("get_tail");
        Ok(self
            .store
            .get(&self.tail_key(id, generation))
            .await?
            .bytes()
            .await?)
    }

    /// Deletes the temporary object of `generation`; one already gone counts as deleted.
    pub async fn delete_tail(&self, id: MediaId, generation: u64) -> Result<()> {
        let _timer = self.timer("delete");
        match self.store.delete(&self.tail_key(id, generation)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    /// Removes everything a resumable upload kept besides the object: its multipart upload
    /// (`recorded`, as for any unfinished upload), its temporary objects, its local file.
    pub async fn discard_resumable(
        &self,
        id: MediaId,
        recorded: Option<&str>,
    ) -> anyhow::Result<()> {
        self.abort_unfinished(id, recorded).await?;
        if self.keeps_parts() {
            let folder = self.tails_folder(id);
            let _timer = self.timer("list");
            let tails: Vec<object_store::ObjectMeta> =
                self.store.list(Some(&folder)).try_collect().await?;
            for tail in tails {
                match self.store.delete(&tail.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(err) => return Err(err.into()),
                }
            }
        }
        Ok(())
    }

    /// The path of `id`'s append-only file and of its object, on local disk.
    fn append_paths(&self, id: MediaId) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
        let Kind::Local { root } = &self.kind else {
            return Err(StorageError(object_store::Error::NotSupported {
                source: "append-only upload files need local disk".into(),
            }));
        };
        let object = root.join(self.key(id).as_ref());
        let mut staging = object.clone().into_os_string();
        staging.push("#0");
        Ok((std::path::PathBuf::from(staging), object))
    }

    /// Opens `id`'s append-only file at `offset`, the bytes kept so far: what lies beyond
    /// (written by a request that did not live to record it) is cut off. A file shorter
    /// than `offset` means kept bytes were lost: an error.
    pub async fn open_append(&self, id: MediaId, offset: u64) -> Result<AppendFile> {
        let (staging, _) = self.append_paths(id)?;
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&staging)
            .await
            .map_err(io_error)?;
        let len = file.metadata().await.map_err(io_error)?.len();
        if len < offset {
            return Err(io_error(std::io::Error::other(format!(
                "the upload file holds {len} bytes, {offset} were recorded"
            ))));
        }
        file.set_len(offset).await.map_err(io_error)?;
        file.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(io_error)?;
        Ok(AppendFile {
            file: tokio::io::BufWriter::with_capacity(APPEND_BUFFER, file),
            len: offset,
        })
    }

    /// Moves `id`'s append-only file into place as its object.
    pub async fn publish_append(&self, id: MediaId) -> Result<()> {
        let (staging, object) = self.append_paths(id)?;
        let _timer = self.timer("put");
        tokio::fs::rename(&staging, &object).await.map_err(io_error)
    }
}
