//! Resumable uploads: one engine under both protocols (tus 1.0 and the IETF draft), so an
//! upload created in either continues on any replica. The row (`status = 'incomplete'`)
//! holds the offset and the saved state that continues it: the SHA-256's state, the parts
//! written, the temporary tail, the first bytes for the content check. The bytes live in
//! storage (S3 parts plus a temporary object for what is below a part, or an append-only
//! file on local disk, see `storage::resumable`).
//!
//! One request at a time writes an upload: it holds the row's lease, renews it every
//! half second and saves its progress fenced on its token. A newer request asks for the
//! upload (in the row, and at once when the holder runs in this process); the holder
//! stops reading, keeps what it read, saves and lets go, and the newer one takes it. A
//! holder that died lets go when its lease runs out. So two requests never interleave
//! bytes, and an offset once answered never decreases: it is only ever the saved one.
//!
//! A request whose per-request digest (tus `Upload-Checksum`, `Content-Digest`) must be
//! checked is provisional: nothing of it is saved before its end has matched, so a cut or a
//! mismatch leaves the offset where it was.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::{Stream, StreamExt};
use object_store::PutPayload;
use serde::{Deserialize, Serialize};
use sha1::Digest as _;
use tokio::sync::watch;
use uuid::Uuid;

use crate::domain::content_check::{self, HEAD_BYTES};
use crate::domain::resumable_hash::{ResumableSha256, SavedSha256};
use crate::domain::{AccountId, ApiError, FileExtension, IdempotencyKey, MediaId};
use crate::metadata::{
    Completion, KeyHolder, LeaseQuery, MediaStatus, NewMedia, NewResumable, Progress, Renewal,
    ResumableInsert, ResumableRecord,
};
use crate::storage::{AppendFile, APPEND_BUFFER, MAX_PART_NUMBER};
use crate::upload::buffer::PartBuffer;
use crate::upload::ingest::{Ingest, Stored};
use crate::upload::limits::{Reservation, UploadSlot};

pub use crate::metadata::UploadProtocol;

/// How long a lease lasts unless renewed; a holder that died lets go after this.
const LEASE: Duration = Duration::from_secs(4);
/// How often the holder renews its lease (and sees whether a newer request waits).
const RENEW_EVERY: Duration = Duration::from_millis(500);
/// How long a newer request waits for the holder to let go before it is answered 409.
const TAKEOVER_WAIT: Duration = Duration::from_secs(6);
/// How often a waiting request looks again.
const POLL: Duration = Duration::from_millis(100);
/// The memory a request reserves on local disk: the file's write buffer.
const LOCAL_WINDOW: u64 = APPEND_BUFFER as u64;

/// Resumable uploads of the replica.
#[derive(Debug, Clone)]
pub struct Resumable {
    pub ingest: Ingest,
    /// How long a paused upload lives after its last byte (`uploads.incomplete_expiry`).
    pub incomplete_expiry: chrono::Duration,
    /// `uploads.max_incomplete_per_account`.
    pub max_incomplete: u32,
    /// The requests of this process that hold an upload, to stop them at once.
    holders: Holders,
}

/// The requests of this process that hold an upload: their token and their signal.
type Holders = Arc<Mutex<HashMap<MediaId, (Uuid, watch::Sender<Signal>)>>>;

/// What the lease's keeper tells the request that holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    Held,
    /// A newer request waits: stop, keep what was read, let go.
    TakeoverAsked,
    /// The lease is gone (terminated, expired, claimed): write nothing more.
    Lost,
}

/// What a creation declares.
#[derive(Debug, Clone)]
pub struct NewUpload {
    pub owner: AccountId,
    pub extension: FileExtension,
    pub length: Option<u64>,
    pub protocol: UploadProtocol,
    pub tus_metadata: Option<String>,
    pub key: Option<IdempotencyKey>,
}

/// A created upload resource.
#[derive(Debug, Clone)]
pub struct Created {
    pub id: MediaId,
    /// The upload existed already: an `Idempotency-Key` retry of its creation.
    pub existing: bool,
}

/// Where an upload stands.
#[derive(Debug, Clone)]
pub struct UploadStatus {
    pub id: MediaId,
    pub offset: u64,
    pub length: Option<u64>,
    /// Ready media: the upload completed.
    pub complete: bool,
    pub expires_at: DateTime<Utc>,
    pub protocol: Option<UploadProtocol>,
    pub tus_metadata: Option<String>,
}

/// What one request appending to an upload declares.
#[derive(Debug, Clone, Default)]
pub struct Append {
    /// `Upload-Offset`: where the client thinks the upload stands.
    pub offset: u64,
    /// `Upload-Length`, when this request declares it (the draft, tus's deferred length).
    pub length: Option<u64>,
    /// The draft's `Upload-Complete: ?1`: the upload ends with this request's body.
    pub completes: bool,
    /// tus's `Upload-Checksum` of this request's bytes.
    pub checksum: Option<RequestChecksum>,
    /// `Content-Digest`'s SHA-256 of this request's bytes.
    pub content_sha256: Option<[u8; 32]>,
    /// `Repr-Digest`'s SHA-256 of the whole file.
    pub repr_sha256: Option<[u8; 32]>,
}

/// tus's `Upload-Checksum`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestChecksum {
    Sha1([u8; 20]),
    Sha256([u8; 32]),
}

/// What an appending request achieved.
#[derive(Debug, Clone)]
pub enum Appended {
    /// The upload waits for more; `offset` bytes are kept.
    Paused {
        offset: u64,
        length: Option<u64>,
        expires_at: DateTime<Utc>,
    },
    /// The upload is ready media.
    Completed(Stored),
}

/// The engine's state saved in the row with the offset.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Saved {
    hash: Option<SavedSha256>,
    #[serde(default)]
    parts: Vec<SavedPart>,
    tail: Option<SavedTail>,
    /// The first bytes (Base64) while the content check has not seen `HEAD_BYTES`.
    #[serde(default)]
    head: String,
    #[serde(default)]
    decided: bool,
    detected: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SavedPart {
    n: u32,
    etag: String,
    size: u64,
}

/// The temporary object holding the bytes after the last part.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct SavedTail {
    generation: u64,
    size: u64,
}

impl Resumable {
    pub fn new(ingest: Ingest, incomplete_expiry: Duration, max_incomplete: u32) -> Self {
        Self {
            ingest,
            incomplete_expiry: chrono::Duration::from_std(incomplete_expiry)
                .unwrap_or(chrono::Duration::hours(1)),
            max_incomplete,
            holders: Arc::default(),
        }
    }

    /// Creates an upload resource (no bytes yet). With an `Idempotency-Key` that a live
    /// upload or media of the account holds, that one is returned instead.
    pub async fn create(&self, new: NewUpload) -> Result<Created, ApiError> {
        if let Some(length) = new.length {
            if length > self.ingest.max_upload_bytes {
                return Err(ApiError::PayloadTooLarge {
                    limit: self.ingest.max_upload_bytes,
                });
            }
        }
        let now = millis(Utc::now());
        let id = MediaId::new_random();
        let row = NewResumable {
            media: NewMedia {
                id,
                owner: new.owner.clone(),
                extension: new.extension.clone(),
                created_at: now,
                expires_at: now + self.incomplete_expiry,
            },
            length: new.length,
            protocol: new.protocol,
            tus_metadata: new.tus_metadata,
            idempotency_key: new.key.as_ref().map(|k| k.as_str().to_owned()),
            max_incomplete: self.max_incomplete,
            stale_before: self.ingest.stale_before(),
        };
        match self.ingest.metadata.insert_incomplete(&row).await? {
            ResumableInsert::Inserted => {
                self.ingest.metrics.resumable_created.inc();
                Ok(Created {
                    id,
                    existing: false,
                })
            }
            ResumableInsert::Held(KeyHolder::Incomplete(id) | KeyHolder::Ready { id, .. }) => {
                Ok(Created { id, existing: true })
            }
            ResumableInsert::Held(KeyHolder::Streaming(_)) => Err(ApiError::IdempotencyKeyInUse),
            ResumableInsert::TooMany => Err(ApiError::TooManyRequests {
                details: format!(
                    "the account has {} incomplete uploads, the most it may have: complete or \
                     delete one first",
                    self.max_incomplete
                ),
                retry_after: 60,
            }),
        }
    }

    /// Where the upload stands. A request writing it is asked to let go first, so the
    /// offset answered is all that was read (a client that reconnects asks this first).
    pub async fn status(&self, owner: &AccountId, id: MediaId) -> Result<UploadStatus, ApiError> {
        let deadline = tokio::time::Instant::now() + TAKEOVER_WAIT;
        let token = Uuid::new_v4();
        let mut asked = false;
        loop {
            let record = self.find_live(owner, id).await?;
            let now = Utc::now();
            if record.media.status == MediaStatus::Incomplete
                && record.leased_at(now)
                && tokio::time::Instant::now() < deadline
            {
                if !asked {
                    self.ask_takeover(owner, id, token).await?;
                    asked = true;
                }
                tokio::time::sleep(POLL).await;
                continue;
            }
            return Ok(status_of(&record));
        }
    }

    /// The row of an upload `owner` may see: incomplete and not expired, or ready media.
    async fn find_live(&self, owner: &AccountId, id: MediaId) -> Result<ResumableRecord, ApiError> {
        let record = self
            .ingest
            .metadata
            .find_upload(id, owner)
            .await?
            .ok_or_else(upload_not_found)?;
        let live = record.media.expires_at > Utc::now()
            && matches!(
                record.media.status,
                MediaStatus::Incomplete | MediaStatus::Ready
            );
        if live {
            Ok(record)
        } else {
            Err(upload_not_found())
        }
    }

    /// Asks the request of this process that holds `id`, if one does, to let go now.
    fn signal_holder(&self, id: MediaId) {
        if let Some((_, signal)) = self.holders.lock().expect("holders").get(&id) {
            let _ = signal.send(Signal::TakeoverAsked);
        }
    }

    async fn ask_takeover(
        &self,
        owner: &AccountId,
        id: MediaId,
        token: Uuid,
    ) -> Result<(), ApiError> {
        self.signal_holder(id);
        let now = Utc::now();
        self.ingest
            .metadata
            .ask_takeover(&LeaseQuery {
                id,
                owner,
                token,
                now,
                until: now,
            })
            .await?;
        Ok(())
    }

    /// Takes the upload for one request, asking the one that holds it to let go. `Err` with
    /// the record when it is ready media already.
    async fn acquire(
        &self,
        owner: &AccountId,
        id: MediaId,
    ) -> Result<Result<(Uuid, ResumableRecord), ResumableRecord>, ApiError> {
        let deadline = tokio::time::Instant::now() + TAKEOVER_WAIT;
        let token = Uuid::new_v4();
        let mut asked = false;
        loop {
            let now = Utc::now();
            let lease = LeaseQuery {
                id,
                owner,
                token,
                now,
                until: now + chrono_duration(LEASE),
            };
            if let Some(record) = self.ingest.metadata.acquire_upload(&lease).await? {
                return Ok(Ok((token, record)));
            }
            let record = self.find_live(owner, id).await?;
            if record.media.status == MediaStatus::Ready {
                return Ok(Err(record));
            }
            if !record.leased_at(Utc::now()) {
                // Let go between the two statements: take it now.
                continue;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::UploadBusy);
            }
            if !asked {
                self.ask_takeover(owner, id, token).await?;
                asked = true;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Appends one request's body to the upload `id` of `owner`, from `append.offset`,
    /// which must be the offset kept. Completes the upload when its length is reached or
    /// the request says it ends it.
    pub async fn append<S, E>(
        &self,
        owner: &AccountId,
        id: MediaId,
        append: Append,
        slot: &UploadSlot,
        mut body: S,
    ) -> Result<Appended, ApiError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Into<ApiError>,
    {
        let (token, record) = match self.acquire(owner, id).await? {
            Ok(held) => held,
            Err(ready) => return already_complete(&ready, &append),
        };
        let mut writer = Guard(Some(
            Writer::start(self, owner.clone(), token, record, &append, slot).await?,
        ));
        let outcome = match writer.0.as_mut() {
            Some(w) => w.run(&mut body).await,
            None => Ok(Ended::Lost),
        };
        let mut writer = writer.0.take().expect("writer");
        match outcome {
            Ok(Ended::Body) if writer.completes(&append) => match writer.complete(&append).await {
                Ok(stored) => Ok(Appended::Completed(stored)),
                Err(Failure::Keep(err)) => {
                    writer.pause().await;
                    Err(err)
                }
                Err(Failure::End(err)) => {
                    writer.end().await;
                    Err(err)
                }
            },
            Ok(Ended::Body) => {
                if let Err(err) = writer.check_request_digests(&append) {
                    // Provisional: nothing of it was saved.
                    writer.release().await;
                    return Err(err);
                }
                writer.provisional = false;
                writer.pause().await;
                writer.paused()
            }
            Ok(Ended::TakenOver) => {
                writer.pause().await;
                Err(ApiError::UploadBusy)
            }
            Ok(Ended::Lost) => {
                writer.release().await;
                Err(upload_not_found())
            }
            Err(Failure::Keep(err)) => {
                writer.pause().await;
                Err(err)
            }
            Err(Failure::End(err)) => {
                writer.end().await;
                Err(err)
            }
        }
    }

    /// Removes an ended upload (expired from now on, so no request takes it again) with
    /// everything it kept, storage first and the row last. Should storage fail, the row
    /// stays for the reaper.
    async fn remove_ended(&self, owner: &AccountId, id: MediaId) -> Result<(), ApiError> {
        let Some(row) = self.ingest.metadata.find_upload(id, owner).await? else {
            return Ok(());
        };
        let storage = &self.ingest.storage;
        let recorded = row.multipart_upload_id.as_deref();
        if let Err(err) = storage.discard_resumable(id, recorded).await {
            tracing::warn!(%id, error = ?err, "an ended upload is left to the reaper");
            return Ok(());
        }
        storage.delete(id).await?;
        self.ingest.metadata.delete(id).await?;
        Ok(())
    }

    /// Ends an upload: an incomplete one is removed with all it kept (its writer is asked
    /// to stop first); ready media is deleted as `DELETE /v1/media/{id}` deletes it.
    pub async fn terminate(&self, owner: &AccountId, id: MediaId) -> Result<(), ApiError> {
        let record = self.find_live(owner, id).await?;
        let storage = &self.ingest.storage;
        let metadata = &self.ingest.metadata;
        if record.media.status == MediaStatus::Ready {
            storage.delete(id).await?;
            metadata.delete(id).await?;
            return Ok(());
        }
        let now = Utc::now();
        let token = Uuid::new_v4();
        let lease = LeaseQuery {
            id,
            owner,
            token,
            now,
            until: now,
        };
        if !metadata.terminate_upload(&lease).await? {
            return Err(upload_not_found());
        }
        self.signal_holder(id);
        // The holder, if any, stops within a renewal; its lease ends within `LEASE` anyway.
        let deadline = tokio::time::Instant::now() + TAKEOVER_WAIT;
        loop {
            let Some(row) = metadata.find_upload(id, owner).await? else {
                return Ok(());
            };
            if !row.leased_at(Utc::now()) || tokio::time::Instant::now() >= deadline {
                self.remove_ended(owner, id).await?;
                self.ingest.metrics.resumable_terminated.inc();
                return Ok(());
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// The answer to an append to ready media: a retry of the request that completed it (at
/// its end, with nothing more) is answered as complete; anything else is a mismatch.
fn already_complete(ready: &ResumableRecord, append: &Append) -> Result<Appended, ApiError> {
    let size = ready.media.size_bytes.unwrap_or(ready.offset);
    if append.offset == size {
        return Ok(Appended::Completed(Stored {
            id: ready.media.id,
            size_bytes: size,
            sha256: ready.media.sha256.clone().unwrap_or_default(),
            replayed: true,
        }));
    }
    Err(ApiError::OffsetMismatch {
        expected: size,
        provided: append.offset,
    })
}

fn status_of(record: &ResumableRecord) -> UploadStatus {
    let complete = record.media.status == MediaStatus::Ready;
    let offset = if complete {
        record.media.size_bytes.unwrap_or(record.offset)
    } else {
        record.offset
    };
    UploadStatus {
        id: record.media.id,
        offset,
        length: if complete {
            Some(offset)
        } else {
            record.length
        },
        complete,
        expires_at: record.media.expires_at,
        protocol: record.protocol,
        tus_metadata: record.tus_metadata.clone(),
    }
}

pub fn upload_not_found() -> ApiError {
    ApiError::NotFound("no such upload".to_owned())
}

/// How a request's reading ended, short of an error.
enum Ended {
    /// The body ended.
    Body,
    /// A newer request asked for the upload.
    TakenOver,
    /// The lease is gone.
    Lost,
}

/// Why a request failed: whether what it read is kept (a broken body, storage down), or the
/// upload is over (past its length, content refused).
enum Failure {
    Keep(ApiError),
    End(ApiError),
}

impl From<ApiError> for Failure {
    fn from(err: ApiError) -> Self {
        Failure::Keep(err)
    }
}

/// Where a request's bytes go.
enum Sink {
    /// S3: the part being filled (the tail read back first), then numbered parts.
    Parts {
        buffer: PartBuffer,
        reservation: Reservation,
        /// The multipart upload, once created.
        upload: Option<String>,
        next_number: u32,
        last_number: u32,
    },
    /// Local disk: the append-only file.
    File {
        file: AppendFile,
        _reservation: Reservation,
        unsynced: u64,
    },
    /// Before `prepare`.
    None,
}

/// The digests of one request's bytes.
#[derive(Default)]
struct RequestDigests {
    sha1: Option<sha1::Sha1>,
    sha256: Option<sha2::Sha256>,
}

impl RequestDigests {
    fn for_append(append: &Append) -> Self {
        let mut digests = Self::default();
        match append.checksum {
            Some(RequestChecksum::Sha1(_)) => digests.sha1 = Some(sha1::Sha1::new()),
            Some(RequestChecksum::Sha256(_)) => digests.sha256 = Some(sha2::Sha256::new()),
            None => {}
        }
        if append.content_sha256.is_some() {
            digests.sha256 = Some(sha2::Sha256::new());
        }
        digests
    }

    fn update(&mut self, chunk: &[u8]) {
        if let Some(h) = self.sha1.as_mut() {
            h.update(chunk);
        }
        if let Some(h) = self.sha256.as_mut() {
            h.update(chunk);
        }
    }
}

/// The request that holds an upload, with everything it has read.
struct Writer {
    engine: Resumable,
    owner: AccountId,
    id: MediaId,
    extension: FileExtension,
    token: Uuid,
    generation: u64,
    /// Bytes read and kept so far (for S3, those in the part buffer too).
    offset: u64,
    /// The offset of the last save, and the state saved with it.
    saved_offset: u64,
    saved_json: String,
    length: Option<u64>,
    saved: Saved,
    /// Temporary objects the state no longer names, deleted after the next save.
    obsolete_tails: Vec<SavedTail>,
    head: Vec<u8>,
    hash: ResumableSha256,
    sink: Sink,
    /// Nothing is saved before the request's digests have matched at its end.
    provisional: bool,
    digests: RequestDigests,
    signals: watch::Receiver<Signal>,
    keeper: tokio::task::JoinHandle<()>,
    /// The lease was given back or lost: nothing more is written.
    done: bool,
}

impl Writer {
    async fn start(
        engine: &Resumable,
        owner: AccountId,
        token: Uuid,
        record: ResumableRecord,
        append: &Append,
        slot: &UploadSlot,
    ) -> Result<Self, ApiError> {
        let id = record.media.id;
        let (signal, signals) = watch::channel(Signal::Held);
        engine
            .holders
            .lock()
            .expect("holders")
            .insert(id, (token, signal.clone()));
        let keeper = tokio::spawn(keep_lease(engine.clone(), owner.clone(), id, token, signal));
        let mut writer = Self {
            engine: engine.clone(),
            owner,
            id,
            extension: record.media.extension.clone(),
            token,
            generation: record.generation,
            offset: record.offset,
            saved_offset: record.offset,
            saved_json: record.state.clone().unwrap_or_default(),
            length: record.length,
            saved: Saved::default(),
            obsolete_tails: Vec::new(),
            head: Vec::new(),
            hash: ResumableSha256::new(),
            sink: Sink::None,
            provisional: append.checksum.is_some() || append.content_sha256.is_some(),
            digests: RequestDigests::for_append(append),
            signals,
            keeper,
            done: false,
        };
        match writer.prepare(record, append, slot).await {
            Ok(()) => Ok(writer),
            Err(err) => {
                writer.release().await;
                Err(err)
            }
        }
    }

    /// Checks the request against the row, restores the saved state and opens the way to
    /// storage, the memory of its buffer reserved first.
    async fn prepare(
        &mut self,
        record: ResumableRecord,
        append: &Append,
        slot: &UploadSlot,
    ) -> Result<(), ApiError> {
        if append.offset != record.offset {
            return Err(ApiError::OffsetMismatch {
                expected: record.offset,
                provided: append.offset,
            });
        }
        let limit = self.engine.ingest.max_upload_bytes;
        if let Some(declared) = append.length {
            match self.length {
                Some(length) if length != declared => {
                    return Err(ApiError::InvalidParameter(format!(
                        "Upload-Length {declared} differs from the length declared before, \
                         {length}"
                    )))
                }
                _ if declared < record.offset => {
                    return Err(ApiError::InvalidParameter(format!(
                        "Upload-Length {declared} is below the {} bytes already uploaded",
                        record.offset
                    )))
                }
                _ if declared > limit => return Err(ApiError::PayloadTooLarge { limit }),
                _ => self.length = Some(declared),
            }
        }
        if let Some(state) = record.state.as_deref().filter(|s| !s.is_empty()) {
            self.saved = serde_json::from_str(state)
                .map_err(|err| ApiError::Internal(anyhow::anyhow!("saved upload state: {err}")))?;
        }
        if let Some(hash) = &self.saved.hash {
            self.hash = ResumableSha256::restore(hash).ok_or_else(|| {
                ApiError::Internal(anyhow::anyhow!("saved upload hash state is inconsistent"))
            })?;
        }
        if self.hash.length() != self.offset {
            return Err(ApiError::Internal(anyhow::anyhow!(
                "saved upload hash covers {} bytes, the offset is {}",
                self.hash.length(),
                self.offset
            )));
        }
        self.head = base64::engine::general_purpose::STANDARD
            .decode(&self.saved.head)
            .map_err(|err| ApiError::Internal(anyhow::anyhow!("saved upload head: {err}")))?;
        let ingest = self.engine.ingest.clone();
        let storage = &ingest.storage;
        if !storage.keeps_parts() {
            let reservation = slot.reserve(LOCAL_WINDOW).await?;
            let file = storage.open_append(self.id, self.offset).await?;
            self.sink = Sink::File {
                file,
                _reservation: reservation,
                unsynced: 0,
            };
            return Ok(());
        }
        let part_size = ingest.part_size as u64;
        // The parts of this request are numbered in a range of their own.
        let stride = limit / part_size + 2;
        let first = self
            .generation
            .saturating_sub(1)
            .saturating_mul(stride)
            .saturating_add(1);
        let last = first.saturating_add(stride - 1);
        if last > u64::from(MAX_PART_NUMBER) {
            return Err(ApiError::InvalidParameter(
                "this upload was resumed more often than storage allows; upload the file again"
                    .to_owned(),
            ));
        }
        let tail = self.saved.tail.map(|t| t.size).unwrap_or_default();
        let wanted = match self.length {
            Some(length) => part_size.min(length - self.offset + tail).max(tail),
            None => part_size,
        };
        let reservation = slot.reserve(wanted.max(1)).await?;
        let mut buffer = PartBuffer::new(ingest.part_size);
        buffer.begin(reservation.bytes());
        if let Some(tail) = self.saved.tail {
            let bytes = storage.read_tail(self.id, tail.generation).await?;
            if bytes.len() as u64 != tail.size {
                return Err(ApiError::Internal(anyhow::anyhow!(
                    "the upload's temporary object holds {} bytes, {} were recorded",
                    bytes.len(),
                    tail.size
                )));
            }
            let mut rest = &bytes[..];
            let _ = buffer.fill(&mut rest);
        }
        self.sink = Sink::Parts {
            buffer,
            reservation,
            upload: record.multipart_upload_id.filter(|u| !u.is_empty()),
            next_number: first as u32,
            last_number: last as u32,
        };
        Ok(())
    }

    /// Reads the body until it ends, a newer request takes over, or something fails.
    async fn run<S, E>(&mut self, body: &mut S) -> Result<Ended, Failure>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Into<ApiError>,
    {
        loop {
            let next = tokio::select! {
                biased;
                changed = self.signals.changed() => {
                    let signal = *self.signals.borrow();
                    match (changed, signal) {
                        (Err(_), _) | (_, Signal::Lost) => return Ok(Ended::Lost),
                        (_, Signal::TakeoverAsked) => return Ok(Ended::TakenOver),
                        (_, Signal::Held) => continue,
                    }
                }
                next = body.next() => next,
            };
            match next {
                None => return Ok(Ended::Body),
                Some(Err(err)) => return Err(Failure::Keep(err.into())),
                Some(Ok(chunk)) => self.accept(&chunk).await?,
            }
        }
    }

    /// Takes one chunk: counted against the length and the limit, checked, hashed, kept.
    async fn accept(&mut self, chunk: &[u8]) -> Result<(), Failure> {
        let end = self.offset + chunk.len() as u64;
        let limit = self.engine.ingest.max_upload_bytes;
        if end > limit {
            return Err(Failure::End(ApiError::PayloadTooLarge { limit }));
        }
        if let Some(length) = self.length {
            if end > length {
                return Err(Failure::End(ApiError::PayloadTooLarge { limit: length }));
            }
        }
        if !self.saved.decided {
            let take = (HEAD_BYTES - self.head.len()).min(chunk.len());
            self.head.extend_from_slice(&chunk[..take]);
            if self.head.len() >= HEAD_BYTES {
                self.decide_content(false).map_err(Failure::End)?;
            }
        }
        self.digests.update(chunk);
        if let Sink::File { file, unsynced, .. } = &mut self.sink {
            file.append(chunk).await.map_err(ApiError::from)?;
            self.hash.update(chunk);
            self.offset = end;
            *unsynced += chunk.len() as u64;
            if *unsynced >= self.engine.ingest.part_size as u64 {
                *unsynced = 0;
                file.sync().await.map_err(ApiError::from)?;
                self.save().await?;
            }
            return Ok(());
        }
        // Into the part buffer, hashed piece by piece, so that at each full part the hash
        // and the offset are exactly what storage holds when the progress is saved.
        let mut rest = chunk;
        while !rest.is_empty() {
            let Sink::Parts {
                buffer,
                reservation,
                ..
            } = &mut self.sink
            else {
                return Err(Failure::Keep(ApiError::Internal(anyhow::anyhow!(
                    "resumable upload without a sink"
                ))));
            };
            let before = rest;
            let full = buffer.fill(&mut rest);
            if full.is_some() {
                // The next part fills a buffer of the reserved size, never grown by copies.
                buffer.begin(reservation.bytes());
            }
            let taken = &before[..before.len() - rest.len()];
            self.hash.update(taken);
            self.offset += taken.len() as u64;
            if let Some(part) = full {
                self.send_part(part).await?;
                self.save().await?;
            }
        }
        Ok(())
    }

    /// The content check on the first bytes (`whole`: they are the whole file).
    fn decide_content(&mut self, whole: bool) -> Result<(), ApiError> {
        let detected = content_check::check_head(
            &self.head,
            whole,
            &self.extension,
            self.engine.ingest.verify_content,
        )?;
        self.saved.decided = true;
        self.saved.detected = detected.map(str::to_owned);
        self.head = Vec::new();
        Ok(())
    }

    /// The multipart upload, created the first time: the row says one is being created
    /// before it is, then names it, so the reaper always finds it.
    async fn multipart_upload(&mut self) -> Result<String, ApiError> {
        if let Sink::Parts {
            upload: Some(upload),
            ..
        } = &self.sink
        {
            return Ok(upload.clone());
        }
        self.save_marker(Some("")).await?;
        let upload = self.engine.ingest.storage.create_multipart(self.id).await?;
        if let Sink::Parts { upload: slot, .. } = &mut self.sink {
            *slot = Some(upload.clone());
        }
        self.save_marker(Some(&upload)).await?;
        Ok(upload)
    }

    /// Records the multipart upload with the state last saved (a provisional request's
    /// progress is not saved, its multipart upload is).
    async fn save_marker(&mut self, upload: Option<&str>) -> Result<(), ApiError> {
        let state = self.saved_json.clone();
        self.write_progress(self.saved_offset, &state, upload).await
    }

    /// Writes `offset`, `state` and the multipart upload into the row, fenced on the
    /// lease; a lost lease ends this request's writing.
    async fn write_progress(
        &mut self,
        offset: u64,
        state: &str,
        upload: Option<&str>,
    ) -> Result<(), ApiError> {
        let now = Utc::now();
        let progress = Progress {
            offset,
            length: self.length,
            state,
            multipart_upload_id: upload,
            expires_at: now + self.engine.incomplete_expiry,
            now,
        };
        let lease = self.lease(now);
        if !self
            .engine
            .ingest
            .metadata
            .save_progress(&lease, &progress)
            .await?
        {
            self.done = true;
            return Err(lost_upload());
        }
        Ok(())
    }

    fn lease(&self, now: DateTime<Utc>) -> LeaseQuery<'_> {
        LeaseQuery {
            id: self.id,
            owner: &self.owner,
            token: self.token,
            now,
            until: now + chrono_duration(LEASE),
        }
    }

    /// Uploads a part under this request's next number and records it in the state.
    async fn send_part(&mut self, part: Bytes) -> Result<(), ApiError> {
        let size = part.len() as u64;
        let upload = self.multipart_upload().await?;
        let Sink::Parts {
            next_number,
            last_number,
            ..
        } = &mut self.sink
        else {
            return Err(ApiError::Internal(anyhow::anyhow!("no part sink")));
        };
        if *next_number > *last_number {
            return Err(ApiError::Internal(anyhow::anyhow!(
                "a request wrote more parts than an upload can have"
            )));
        }
        let number = *next_number;
        *next_number += 1;
        let etag = self
            .engine
            .ingest
            .storage
            .put_numbered_part(self.id, &upload, number, PutPayload::from(part))
            .await?;
        self.saved.parts.push(SavedPart {
            n: number,
            etag,
            size,
        });
        // The bytes of the temporary object read back are in this part now.
        if let Some(tail) = self.saved.tail.take() {
            self.obsolete_tails.push(tail);
        }
        Ok(())
    }

    /// Saves the progress: the offset, the hash state, the parts and the tail. A
    /// provisional request saves nothing. After a save, the temporary objects the state no
    /// longer names go.
    async fn save(&mut self) -> Result<(), ApiError> {
        if self.provisional || self.done {
            return Ok(());
        }
        self.saved.hash = Some(self.hash.save());
        self.saved.head = base64::engine::general_purpose::STANDARD.encode(&self.head);
        let json = serde_json::to_string(&self.saved)
            .map_err(|err| ApiError::Internal(anyhow::anyhow!("upload state: {err}")))?;
        let upload = match &self.sink {
            Sink::Parts { upload, .. } => upload.clone(),
            _ => None,
        };
        self.write_progress(self.offset, &json, upload.as_deref())
            .await?;
        self.saved_offset = self.offset;
        self.saved_json = json;
        for tail in std::mem::take(&mut self.obsolete_tails) {
            if let Err(err) = self
                .engine
                .ingest
                .storage
                .delete_tail(self.id, tail.generation)
                .await
            {
                tracing::debug!(id = %self.id, error = ?err, "a temporary object stays until the upload ends");
            }
        }
        Ok(())
    }

    /// Whether this request ends the upload: its length is reached, or it said so.
    fn completes(&self, append: &Append) -> bool {
        append.completes || self.length.is_some_and(|length| self.offset == length)
    }

    /// Checks the request's own digests once its body has ended.
    fn check_request_digests(&mut self, append: &Append) -> Result<(), ApiError> {
        let digests = std::mem::take(&mut self.digests);
        match append.checksum {
            Some(RequestChecksum::Sha1(expected)) => {
                let got = digests.sha1.map(|h| h.finalize());
                if got.as_ref().map(|g| g.as_slice()) != Some(&expected[..]) {
                    return Err(ApiError::ChecksumMismatch);
                }
            }
            Some(RequestChecksum::Sha256(expected)) => {
                let got = digests.sha256.clone().map(|h| h.finalize());
                if got.as_ref().map(|g| g.as_slice()) != Some(&expected[..]) {
                    return Err(ApiError::ChecksumMismatch);
                }
            }
            None => {}
        }
        if let Some(expected) = append.content_sha256 {
            let got = digests.sha256.map(|h| h.finalize());
            if got.as_ref().map(|g| g.as_slice()) != Some(&expected[..]) {
                return Err(ApiError::InvalidParameter(
                    "the body does not match its Content-Digest; its bytes were discarded"
                        .to_owned(),
                ));
            }
        }
        Ok(())
    }

    /// Completes the upload: the last part, the object, the row made ready.
    async fn complete(&mut self, append: &Append) -> Result<Stored, Failure> {
        self.check_request_digests(append)?;
        self.provisional = false;
        if let Some(length) = self.length {
            if self.offset != length {
                return Err(Failure::Keep(ApiError::InvalidParameter(format!(
                    "Upload-Complete says the upload ends at {} bytes; its length is {length}",
                    self.offset
                ))));
            }
        }
        if self.offset == 0 {
            return Err(Failure::End(ApiError::MissingParameter(
                "the upload is empty: send the file's bytes".to_owned(),
            )));
        }
        if !self.saved.decided {
            self.decide_content(true).map_err(Failure::End)?;
        }
        let sha256 = self.hash.digest();
        if append
            .repr_sha256
            .is_some_and(|expected| expected != sha256)
        {
            return Err(Failure::End(ApiError::InvalidParameter(
                "the upload does not match its Repr-Digest; nothing of it was kept".to_owned(),
            )));
        }
        let storage = self.engine.ingest.storage.clone();
        match &mut self.sink {
            Sink::Parts { buffer, .. } => {
                let last = buffer.take();
                if !last.is_empty() || self.saved.parts.is_empty() {
                    self.send_part(last).await?;
                    self.save().await?;
                }
                let upload = self.multipart_upload().await?;
                let parts: Vec<(u32, String)> = self
                    .saved
                    .parts
                    .iter()
                    .map(|p| (p.n, p.etag.clone()))
                    .collect();
                storage
                    .complete_numbered(self.id, &upload, &parts)
                    .await
                    .map_err(ApiError::from)?;
            }
            Sink::File { file, .. } => {
                file.sync().await.map_err(ApiError::from)?;
                storage
                    .publish_append(self.id)
                    .await
                    .map_err(ApiError::from)?;
            }
            Sink::None => {
                return Err(Failure::Keep(ApiError::Internal(anyhow::anyhow!(
                    "resumable upload without a sink"
                ))))
            }
        }
        let sha256 = hex::encode(sha256);
        let ready_at = millis(Utc::now());
        let lease = self.lease(Utc::now());
        let completion = Completion {
            size_bytes: self.offset,
            sha256: &sha256,
            detected: self.saved.detected.as_deref(),
            ready_at,
            expires_at: ready_at + self.engine.ingest.retention,
        };
        let committed = self
            .engine
            .ingest
            .metadata
            .complete_upload(&lease, &completion)
            .await
            .map_err(ApiError::from)?;
        self.done = true;
        self.forget();
        if !committed {
            // Claimed or terminated meanwhile: the reaper removes the object with the row.
            return Err(Failure::Keep(lost_upload()));
        }
        // The temporary objects; what a failure leaves, the bucket's lifecycle rule ends.
        if let Err(err) = storage.discard_resumable(self.id, None).await {
            tracing::warn!(id = %self.id, error = ?err, "temporary objects of a completed upload stay");
        }
        let metrics = &self.engine.ingest.metrics;
        metrics.resumable_completed.inc();
        metrics.upload_bytes.inc_by(self.offset);
        metrics.upload_size.observe(self.offset as f64);
        Ok(Stored {
            id: self.id,
            size_bytes: self.offset,
            sha256,
            replayed: false,
        })
    }

    fn paused(&self) -> Result<Appended, ApiError> {
        Ok(Appended::Paused {
            offset: self.saved_offset,
            length: self.length,
            expires_at: Utc::now() + self.engine.incomplete_expiry,
        })
    }

    /// Keeps what was read (unless provisional) and lets the upload go.
    async fn pause(&mut self) {
        if !self.done && !self.provisional && self.offset != self.saved_offset {
            if let Err(err) = self.keep_read().await {
                tracing::warn!(id = %self.id, error = ?err, "the bytes since the last save are lost");
            }
        }
        self.release().await;
    }

    /// Makes what was read since the last save durable, then saves it.
    async fn keep_read(&mut self) -> Result<(), ApiError> {
        let storage = self.engine.ingest.storage.clone();
        match &mut self.sink {
            Sink::Parts { buffer, .. } => {
                let bytes = buffer.take();
                if !bytes.is_empty() {
                    let size = bytes.len() as u64;
                    storage.put_tail(self.id, self.generation, bytes).await?;
                    let tail = SavedTail {
                        generation: self.generation,
                        size,
                    };
                    if let Some(old) = self.saved.tail.replace(tail) {
                        self.obsolete_tails.push(old);
                    }
                }
            }
            Sink::File { file, .. } => file.sync().await?,
            Sink::None => return Ok(()),
        }
        self.save().await
    }

    /// Gives the lease back.
    async fn release(&mut self) {
        if !self.done {
            self.done = true;
            let lease = self.lease(Utc::now());
            if let Err(err) = self.engine.ingest.metadata.release_lease(&lease).await {
                tracing::debug!(id = %self.id, error = ?err, "the lease runs out by itself");
            }
        }
        self.forget();
    }

    /// Ends the upload for good (bytes past its length, content refused): everything it
    /// kept goes, then its row.
    async fn end(&mut self) {
        let engine = self.engine.clone();
        let terminated = engine
            .ingest
            .metadata
            .terminate_upload(&self.lease(Utc::now()))
            .await;
        self.done = true;
        self.forget();
        engine.ingest.metrics.resumable_ended.inc();
        if matches!(terminated, Ok(true)) {
            if let Err(err) = engine.remove_ended(&self.owner, self.id).await {
                tracing::warn!(id = %self.id, error = ?err, "an ended upload is left to the reaper");
            }
        }
    }

    /// Stops the lease's keeper and takes this request off the process's holders.
    fn forget(&mut self) {
        self.keeper.abort();
        let mut holders = self.engine.holders.lock().expect("holders");
        if holders.get(&self.id).is_some_and(|(t, _)| *t == self.token) {
            holders.remove(&self.id);
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.forget();
    }
}

/// The writer of a request in progress. Dropped before its end (the request was cancelled),
/// it keeps what was read and lets go in a task of its own.
struct Guard(Option<Writer>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut writer) = self.0.take() {
            if !writer.done {
                tokio::spawn(async move { writer.pause().await });
            }
        }
    }
}

/// Renews a request's lease every `RENEW_EVERY` and tells it when a newer request asks for
/// the upload, or when the lease is gone (or could not be renewed before it ran out).
async fn keep_lease(
    engine: Resumable,
    owner: AccountId,
    id: MediaId,
    token: Uuid,
    signal: watch::Sender<Signal>,
) {
    let mut ticks = tokio::time::interval(RENEW_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    let mut held_until = tokio::time::Instant::now() + LEASE;
    loop {
        ticks.tick().await;
        let now = Utc::now();
        let lease = LeaseQuery {
            id,
            owner: &owner,
            token,
            now,
            until: now + chrono_duration(LEASE),
        };
        let renewed = engine
            .ingest
            .metadata
            .renew_lease(&lease, now + engine.incomplete_expiry)
            .await;
        match renewed {
            Ok(Renewal::Held) => held_until = tokio::time::Instant::now() + LEASE,
            Ok(Renewal::TakeoverAsked) => {
                held_until = tokio::time::Instant::now() + LEASE;
                signal.send_if_modified(|s| {
                    let changed = *s == Signal::Held;
                    if changed {
                        *s = Signal::TakeoverAsked;
                    }
                    changed
                });
            }
            Ok(Renewal::Lost) => {
                let _ = signal.send(Signal::Lost);
                return;
            }
            Err(err) => {
                tracing::warn!(%id, error = ?err, "renewing an upload's lease failed");
                // Stopped a renewal before the lease runs out, so nothing is written
                // after another request may have taken it.
                if tokio::time::Instant::now() + RENEW_EVERY >= held_until {
                    let _ = signal.send(Signal::Lost);
                    return;
                }
            }
        }
    }
}

fn lost_upload() -> ApiError {
    ApiError::Unavailable(anyhow::anyhow!(
        "the upload was taken over, terminated or expired while this request wrote it"
    ))
}

/// To the millisecond both backends keep.
fn millis(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(at.timestamp_millis()).unwrap_or(at)
}

fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}
