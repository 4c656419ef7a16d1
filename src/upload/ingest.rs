//! One upload from first byte to `ready`: row first, then the bytes streamed into storage
//! while they are hashed and counted, then `ready`. Any failure undoes what was done, in the
//! order that never leaves an object without a row: multipart aborted and object deleted
//! first, the row last. If storage cannot be cleaned (it is down), the `uploading` row stays
//! behind on purpose, so the reaper finds the key and finishes the job later.
//!
//! Memory per upload is bounded by the part size, in bytes whatever the client's chunking:
//! one part-sized buffer being filled plus at most `storage.parts_in_flight` parts being
//! sent.
//! Each of those buffers holds a reservation from the replica's memory budget (`limits`),
//! taken before the buffer is filled and given back when its part reached storage. The
//! first is taken before the row is written, so an upload refused for want of memory
//! leaves nothing at all.
//!
//! With an `Idempotency-Key`, the row of the first upload holds the key (unique per
//! account). A retry while that upload streams is refused (409) before its body is read; a
//! retry with another extension than the ready media's is refused (422) before its body is
//! read too; a retry once it is ready streams like any upload, into a row and object of its
//! own, and at the end its SHA-256 decides: the same bytes give the stored media's id again
//! (the retry's own row and object are removed), other bytes a 422 (removed too). A key whose
//! holder crashed or expired is taken off that row (which stays for the reaper) and the
//! upload goes on as a first one.
//!
//! On S3 (unless `storage.s3.streamed_put = false`, or payloads are signed), a body that
//! declares a length larger than a part goes as one PUT, forwarded in 128 KiB chunks as it
//! arrives, holding a reservation of five chunks instead of part buffers, and may pause
//! only `storage.s3.streamed_put_idle_timeout` (S3 ends a stopped request body itself). Its
//! last chunk is held back until the checks above have passed; a PUT stopped before it
//! never completes, and S3 keeps nothing. Bodies of unknown length go as multipart uploads.
//!
//! The same rule holds for multipart uploads: on S3 the row says a multipart upload is
//! being created before it is, and then names it, so every multipart upload is found
//! through its row; on local disk its staging file is named after the object.

use bytes::Bytes;
use chrono::Utc;
use futures_util::{Stream, StreamExt};
use object_store::{ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};

use crate::domain::ApiError;
use crate::domain::{AccountId, FileExtension, IdempotencyKey, MediaId};
use crate::metadata::{KeyHolder, KeyQuery, KeyedInsert, Metadata, NewMedia};
use crate::metrics::MediaMetrics;
use crate::storage::{Storage, StorageError, StreamedPut};
use crate::upload::buffer::{HeldChunks, PartBuffer};
use crate::upload::cleanup::Cleanup;
pub use crate::upload::cleanup::Cleanups;
use crate::upload::limits::{Reservation, UploadSlot};
use crate::upload::part_writer::{lost_to_the_reaper, Multipart};

/// Chunks of a streamed PUT: what is copied together before it is forwarded, so that a
/// client sending 1-byte chunks does not make 1-byte writes to S3. 128 KiB keeps the
/// throughput of 256 KiB with half the window: 128 uploads of 37 MiB peaked at 115 MiB
/// instead of 154 (BENCHMARKS.md, "The window of a streamed PUT").
const STREAM_CHUNK_BYTES: usize = 128 * 1024;

/// The memory a streamed PUT reserves: the chunk being filled, the one held back, those
/// queued for the connection and the one being written.
const STREAM_WINDOW_BYTES: u64 = 5 * STREAM_CHUNK_BYTES as u64;

/// The bytes of a body so far: counted against the upload limit and hashed as they
/// arrive, the same for every way to storage.
struct Tally {
    size: u64,
    limit: u64,
    hasher: Sha256,
}

impl Tally {
    fn new(limit: u64) -> Self {
        Self {
            size: 0,
            limit,
            hasher: Sha256::new(),
        }
    }

    /// Counts and hashes `chunk`; 413 once the body is over the limit.
    fn count(&mut self, chunk: &[u8]) -> Result<(), ApiError> {
        self.size += chunk.len() as u64;
        if self.size > self.limit {
            return Err(ApiError::PayloadTooLarge { limit: self.limit });
        }
        self.hasher.update(chunk);
        Ok(())
    }
}

/// What the end of a body decides.
enum Decision {
    /// Store it.
    Store(Keep),
    /// A retry with the bytes of ready media: that media answers.
    Replay(Stored),
}

/// A body to be kept: its size, its SHA-256, and the retry whose key it takes over, if any.
struct Keep {
    size: u64,
    sha256: String,
    adopt_key: Option<Retry>,
}

/// What an upload needs from the application.
#[derive(Debug, Clone)]
pub struct Ingest {
    pub metadata: Metadata,
    pub storage: Storage,
    pub max_upload_bytes: u64,
    pub part_size: usize,
    /// Parts of one upload sent to storage at once while the next one fills.
    pub parts_in_flight: usize,
    pub retention: chrono::Duration,
    /// How often a live upload refreshes its heartbeat (`ReaperSettings::upload_heartbeat`).
    pub heartbeat: std::time::Duration,
    /// An upload whose heartbeat is older is dead (`ReaperSettings::upload_dead_after`): it
    /// holds its key no more, may be reaped, and may no longer commit.
    pub dead_after: std::time::Duration,
    pub metrics: MediaMetrics,
    pub cleanups: Cleanups,
    /// How slow a body may be before the upload is answered 408 and rolled back.
    pub body_limits: crate::upload::body_guard::BodyLimits,
    /// The longest pause of a body forwarded into a streamed PUT
    /// (`storage.s3.streamed_put_idle_timeout`), when shorter than the body's own.
    pub streamed_put_idle_timeout: std::time::Duration,
    /// `media.verify_content`.
    pub verify_content: crate::domain::content_check::VerifyContent,
}

/// What the client declared of its body before sending it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Declared {
    /// `Content-Length`, when the body has one.
    pub length: Option<u64>,
    /// The SHA-256 of `Content-Digest` (RFC 9530): the bytes must match it before the
    /// upload commits.
    pub sha256: Option<[u8; 32]>,
}

/// A stored upload.
#[derive(Debug, Clone)]
pub struct Stored {
    pub id: MediaId,
    pub size_bytes: u64,
    pub sha256: String,
    /// An `Idempotency-Key` retry: `id` is the media its first upload stored, and nothing
    /// of this one was kept.
    pub replayed: bool,
}

/// What an upload's row is to its idempotency key.
enum KeyRole {
    /// Sent without a key.
    Unkeyed,
    /// The row holds the key: a first upload.
    Holder,
    /// The key's holder is ready media; the row has no key.
    Retry(Retry),
}

/// A retry of an upload whose key is held by ready media: what its bytes are compared with.
#[derive(Debug, Clone)]
struct Retry {
    owner: AccountId,
    key: IdempotencyKey,
    original: MediaId,
    sha256: String,
}

impl Ingest {
    /// Stores one upload. `body` yields the request body as it arrives; `declared` is what
    /// the client said of it beforehand; `slot` reserves the memory of its part buffers;
    /// `key` is its `Idempotency-Key`, if it was sent with one.
    #[allow(clippy::too_many_arguments)]
    pub async fn upload<S, E>(
        &self,
        owner: AccountId,
        extension: FileExtension,
        declared: Declared,
        slot: &UploadSlot,
        detected: crate::domain::content_check::Detected,
        key: Option<IdempotencyKey>,
        mut body: S,
    ) -> Result<Stored, ApiError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Into<ApiError>,
    {
        // The first part buffer's memory, before the row: an upload that finds no room
        // waits here with its body unread, and one refused leaves nothing behind.
        let streamed = self.streams(declared);
        let first = slot
            .reserve(if streamed {
                STREAM_WINDOW_BYTES
            } else {
                self.part_reservation(declared.length, 0)
            })
            .await?;
        let _in_flight = InFlight::enter(&self.metrics);
        let now = Utc::now();
        let id = MediaId::new_random();
        let row = NewMedia {
            id,
            owner,
            extension,
            created_at: now,
            expires_at: now + self.retention,
        };
        let role = match key {
            None => {
                self.metadata.insert_uploading(&row).await?;
                KeyRole::Unkeyed
            }
            Some(key) => self.insert_keyed(&row, key).await?,
        };
        let keyed = matches!(role, KeyRole::Holder);
        let retry = match role {
            KeyRole::Retry(retry) => Some(retry),
            KeyRole::Unkeyed | KeyRole::Holder => None,
        };

        let mut session = Session {
            ingest: self.clone(),
            id,
            multipart: None,
            streamed: None,
            object_written: false,
            multipart_begun: false,
            armed: true,
            detected,
            retry,
            keyed,
            _heartbeat: Heartbeat::start(self, id),
        };
        let outcome = if streamed {
            session.stream_put(&mut body, declared, first).await
        } else {
            session.stream(&mut body, declared, slot, first).await
        };
        match outcome {
            Ok(stored) if stored.replayed => {
                // The first upload's media answers; nothing of this one stays.
                session.discard().await;
                tracing::debug!(%id, original = %stored.id, "idempotent retry replayed");
                Ok(stored)
            }
            Ok(stored) => {
                session.armed = false;
                self.metrics.upload_bytes.inc_by(stored.size_bytes);
                self.metrics.upload_size.observe(stored.size_bytes as f64);
                Ok(stored)
            }
            Err(err) => Err(session.roll_back(upload_error(err)).await),
        }
    }

    /// Why an upload of `owner` with `key` and `extension` would be refused before its
    /// body, if it would: the key's upload is streaming now (409), or its media has another
    /// extension (422). A hint for `Expect: 100-continue`, which answers before the body is
    /// sent: when the database cannot tell, the upload itself decides.
    pub async fn key_refusal(
        &self,
        owner: &AccountId,
        key: &IdempotencyKey,
        extension: &FileExtension,
    ) -> Option<ApiError> {
        let query = KeyQuery {
            owner,
            key: key.as_str(),
            now: Utc::now(),
            stale_before: self.stale_before(),
        };
        match self.metadata.key_holder(&query).await {
            Ok(Some(KeyHolder::Streaming(_) | KeyHolder::Incomplete(_))) => {
                Some(ApiError::IdempotencyKeyInUse)
            }
            Ok(Some(KeyHolder::Ready {
                extension: held, ..
            })) if held != *extension => Some(ApiError::IdempotencyKeyOtherExtension),
            _ => None,
        }
    }

    /// Writes the row of an upload sent with `key`. The row holds the key when no live row
    /// does: a first upload, or one whose earlier holder crashed, expired or was deleted.
    /// While the holder still streams, nothing is written (409); nor when it is ready media
    /// of another extension (422: the extension is part of the request). When it is ready
    /// media of this extension, the row is written without the key and the upload is a
    /// retry, to be compared at its end.
    async fn insert_keyed(&self, row: &NewMedia, key: IdempotencyKey) -> Result<KeyRole, ApiError> {
        match self
            .metadata
            .insert_uploading_keyed(row, key.as_str(), self.stale_before())
            .await?
        {
            KeyedInsert::Inserted => Ok(KeyRole::Holder),
            KeyedInsert::Held(KeyHolder::Streaming(_) | KeyHolder::Incomplete(_))
            | KeyedInsert::Contended => Err(ApiError::IdempotencyKeyInUse),
            KeyedInsert::Held(KeyHolder::Ready { extension, .. }) if extension != row.extension => {
                Err(ApiError::IdempotencyKeyOtherExtension)
            }
            KeyedInsert::Held(KeyHolder::Ready { id, sha256, .. }) => {
                self.metadata.insert_uploading(row).await?;
                Ok(KeyRole::Retry(Retry {
                    owner: row.owner.clone(),
                    key,
                    original: id,
                    sha256,
                }))
            }
        }
    }
}

struct Session {
    ingest: Ingest,
    id: MediaId,
    multipart: Option<Multipart>,
    /// A streamed single PUT under way (`storage.s3.streamed_put`).
    streamed: Option<StreamedPut>,
    /// A single PUT or a completed multipart upload went through: an object may exist.
    object_written: bool,
    /// A multipart upload was started, maybe without its handle (a failed start).
    multipart_begun: bool,
    /// Until disarmed, dropping the session (the request future was cancelled) cleans up in
    /// the background.
    armed: bool,
    /// What the content check made of the first bytes, recorded at the commit.
    detected: crate::domain::content_check::Detected,
    /// Set for a retry of an upload whose key ready media holds.
    retry: Option<Retry>,
    /// The row holds an idempotency key.
    keyed: bool,
    /// Keeps the row live while the upload runs; stops with the session.
    _heartbeat: Heartbeat,
}

impl Session {
    async fn stream<S, E>(
        &mut self,
        body: &mut S,
        declared: Declared,
        slot: &UploadSlot,
        first: Reservation,
    ) -> Result<Stored, ApiError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Into<ApiError>,
    {
        let part_size = self.ingest.part_size;
        let key = self.ingest.storage.key(self.id);
        let mut tally = Tally::new(self.ingest.max_upload_bytes);
        // One part-sized buffer the body is copied into: memory is bounded by bytes, whatever
        // the client's chunking (a body of 1-byte chunks must not keep a million `Bytes`).
        let mut pending = PartBuffer::new(part_size);
        // The memory of the part being filled: reserved before its first byte is copied in,
        // handed over with the part when it is sent.
        pending.begin(first.bytes());
        let mut reservation = Some(first);

        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(Into::into)?;
            tally.count(&chunk)?;
            let mut rest = &chunk[..];
            while !rest.is_empty() {
                if reservation.is_none() {
                    // The next part's memory, whole, before it is filled; meanwhile the
                    // body is not read (backpressure).
                    let offset = tally.size - rest.len() as u64;
                    let bytes = self.ingest.part_reservation(declared.length, offset);
                    let next = slot.reserve(bytes).await?;
                    pending.begin(next.bytes());
                    reservation = Some(next);
                }
                let Some(part) = pending.fill(&mut rest) else {
                    break;
                };
                if self.multipart.is_none() {
                    // From here a multipart upload may exist, even if starting it fails.
                    self.multipart_begun = true;
                    self.multipart = Some(
                        Multipart::start(
                            &self.ingest.metadata,
                            &self.ingest.storage,
                            self.id,
                            || self.ingest.stale_before(),
                            self.ingest.parts_in_flight,
                        )
                        .await?,
                    );
                }
                if let Some(multipart) = self.multipart.as_mut() {
                    multipart
                        .send(PutPayload::from(part), reservation.take())
                        .await?;
                }
            }
        }

        let retry = self.retry.take();
        let keep = match self.ingest.decide(tally, declared, retry).await? {
            Decision::Store(keep) => keep,
            Decision::Replay(stored) => return Ok(stored),
        };
        // From here an object may exist even if the call fails (an answer lost on the way
        // back), so a roll-back deletes it too.
        self.object_written = true;
        match self.multipart.as_mut() {
            Some(multipart) => {
                let last = pending.take();
                if !last.is_empty() {
                    multipart
                        .send(PutPayload::from(last), reservation.take())
                        .await?;
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
        drop(reservation);
        self.commit(keep).await
    }

    /// Streams a body of declared length into one PUT, forwarded in 128 KiB chunks as it
    /// arrives. The last chunk is held back until the checks that decide whether
    /// the upload is kept have passed: without it the PUT never completes, and S3 keeps
    /// nothing. `window` is the memory reserved for the chunks in flight.
    async fn stream_put<S, E>(
        &mut self,
        body: &mut S,
        declared: Declared,
        window: Reservation,
    ) -> Result<Stored, ApiError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Into<ApiError>,
    {
        let length = declared.length.unwrap_or_default();
        // Kept in the session, so that a clean-up settles it (a cancelled request included).
        let put = self
            .ingest
            .storage
            .start_streamed_put(self.id, length)
            .await?;
        let put = self.streamed.insert(put);
        let mut tally = Tally::new(self.ingest.max_upload_bytes);
        // The last bytes are never sent before the end of the body is known.
        let mut chunks = HeldChunks::new(STREAM_CHUNK_BYTES);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(Into::into)?;
            tally.count(&chunk)?;
            let mut rest = &chunk[..];
            while let Some(ready) = chunks.push(&mut rest) {
                if let Err(err) = put.send(ready).await {
                    return Err(self.ingest.storage.explain_put_failure(err).await.into());
                }
            }
        }
        let retry = self.retry.take();
        let keep = match self.ingest.decide(tally, declared, retry).await? {
            Decision::Store(keep) => keep,
            // Left to the clean-up, which cancels it.
            Decision::Replay(stored) => return Ok(stored),
        };
        self.object_written = true;
        let mut rest = chunks.rest();
        let last = rest.pop().unwrap_or_default();
        let mut sent = Ok(());
        for chunk in rest {
            sent = put.send(chunk).await;
            if sent.is_err() {
                break;
            }
        }
        if sent.is_ok() {
            sent = put.finish(last).await;
        }
        if let Err(err) = sent {
            return Err(self.ingest.storage.explain_put_failure(err).await.into());
        }
        self.streamed = None;
        drop(window);
        self.commit(keep).await
    }

    /// Marks the stored upload ready, and gives it the key of a retry whose original went.
    async fn commit(&mut self, keep: Keep) -> Result<Stored, ApiError> {
        let Keep {
            size,
            sha256,
            adopt_key,
        } = keep;
        if !self
            .ingest
            .metadata
            .mark_ready_detected(
                self.id,
                size,
                &sha256,
                self.ingest.stale_before(),
                self.detected.mime_type(),
            )
            .await?
        {
            // Its heartbeat fell behind (the database was unreachable for a long time) and
            // the reaper may have taken it: nothing of it may be kept. The client retries.
            return Err(lost_to_the_reaper(self.id));
        }
        if let Some(retry) = adopt_key {
            self.adopt_key(&retry).await;
        }
        Ok(Stored {
            id: self.id,
            size_bytes: size,
            sha256,
            replayed: false,
        })
    }

    /// Gives the key of `retry` to this upload, now ready, if no other upload took it
    /// meanwhile. The upload is stored either way; without the key, a later retry is
    /// stored anew instead of replayed.
    async fn adopt_key(&self, retry: &Retry) {
        let query = KeyQuery {
            owner: &retry.owner,
            key: retry.key.as_str(),
            now: Utc::now(),
            stale_before: self.ingest.stale_before(),
        };
        match self.ingest.metadata.attach_key(self.id, &query).await {
            Ok(true) => {}
            Ok(false) => tracing::debug!(id = %self.id, "idempotency key taken by another upload"),
            Err(err) => {
                tracing::warn!(id = %self.id, error = ?err, "could not record the idempotency key")
            }
        }
    }

    /// Undoes the upload and hands back the error to answer with.
    async fn roll_back(self, err: ApiError) -> ApiError {
        self.discard().await;
        err
    }

    /// The clean-up of what this upload has stored so far.
    fn cleanup(&mut self) -> Cleanup {
        Cleanup {
            metadata: self.ingest.metadata.clone(),
            storage: self.ingest.storage.clone(),
            id: self.id,
            multipart: self.multipart.take(),
            streamed: self.streamed.take(),
            object_written: self.object_written,
            multipart_begun: self.multipart_begun,
            keyed: self.keyed,
        }
    }

    /// Removes everything of the upload: storage first, the row last.
    async fn discard(mut self) {
        self.armed = false;
        let cleanup = self.cleanup();
        // Awaited, so the answer comes after the roll-back; spawned, so dropping this
        // request does not abandon it half-way.
        let _ = self.ingest.cleanups.spawn(cleanup).await;
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // The request was cancelled mid-upload (client gone, shutdown deadline). Should the
        // clean-up not run (the process is killed), the row stays and the reaper cleans.
        let cleanup = self.cleanup();
        drop(self.ingest.cleanups.spawn(cleanup));
    }
}

/// An upload never answers 404: "not found" from storage in the middle of an upload means
/// its multipart upload vanished (aborted by a lifecycle rule or an operator); the client
/// may retry.
fn upload_error(err: ApiError) -> ApiError {
    match err {
        ApiError::NotFound(_) => ApiError::Unavailable(anyhow::anyhow!(
            "storage lost the upload in progress (its multipart upload is gone)"
        )),
        other => other,
    }
}

impl Ingest {
    /// The memory to reserve for the part buffer that starts at byte `offset` of a body.
    ///
    /// With a declared `Content-Length`, what is left of the body when that is less than a
    /// part: a 4 KiB voice note reserves 4 KiB, not 8 MiB (actix never delivers more than
    /// the declared length). Without one (a chunked body), a whole part: the size is not
    /// known, and growing a reservation bit by bit as bytes arrive is what lets uploads
    /// each hold half of what they need and wait for each other until all time out. A
    /// chunked body thus holds a part's worth while it lasts; phone clients send
    /// `Content-Length`.
    fn part_reservation(&self, declared: Option<u64>, offset: u64) -> u64 {
        let part = self.part_size as u64;
        match declared {
            Some(len) if len > offset => part.min(len - offset),
            _ => part,
        }
    }

    /// What the whole body decides, before its last bytes reach storage: an empty body is
    /// refused, so is one that does not match its `Content-Digest`; a retry of ready
    /// media with the same bytes replays it, with other bytes is refused.
    async fn decide(
        &self,
        tally: Tally,
        declared: Declared,
        retry: Option<Retry>,
    ) -> Result<Decision, ApiError> {
        let Tally { size, hasher, .. } = tally;
        if size == 0 {
            return Err(ApiError::MissingParameter(
                "the request body is empty: send the file's bytes".to_owned(),
            ));
        }
        // The hash computed on the way decides a declared digest, before the last bytes
        // reach storage.
        let digest = hasher.finalize();
        if declared
            .sha256
            .is_some_and(|expected| expected != digest.as_slice())
        {
            return Err(ApiError::InvalidParameter(
                "the body does not match its Content-Digest".to_owned(),
            ));
        }
        let sha256 = hex::encode(digest);
        // A retry is decided here too, before the last bytes reach storage: a small one
        // never writes an object at all.
        let mut adopt_key = None;
        if let Some(retry) = retry {
            let original = self
                .metadata
                .find_readable(retry.original, &retry.owner, Utc::now())
                .await?;
            match original {
                Some(original) if retry.sha256 == sha256 => {
                    return Ok(Decision::Replay(Stored {
                        id: original.id,
                        size_bytes: original.size_bytes.unwrap_or(size),
                        sha256,
                        replayed: true,
                    }));
                }
                Some(_) => return Err(ApiError::IdempotencyKeyReused),
                // Deleted or expired while this one streamed: this upload is stored and
                // takes the key, as a first upload would have.
                None => adopt_key = Some(retry),
            }
        }
        Ok(Decision::Store(Keep {
            size,
            sha256,
            adopt_key,
        }))
    }

    /// How slow the body of an upload that declared `declared` may be: a body forwarded
    /// into a streamed PUT may pause only as long as S3 waits for it.
    pub fn body_limits_for(&self, declared: Declared) -> crate::upload::body_guard::BodyLimits {
        let mut limits = self.body_limits;
        if self.streams(declared) {
            limits.idle_timeout = limits.idle_timeout.min(self.streamed_put_idle_timeout);
        }
        limits
    }

    /// Whether the body goes to storage as one streamed PUT: when they are on, for a body
    /// that declares a length larger than a part (smaller ones go in one PUT from memory,
    /// which object_store retries).
    fn streams(&self, declared: Declared) -> bool {
        self.storage.streams_puts()
            && declared
                .length
                .is_some_and(|length| length > self.part_size as u64)
    }

    /// Uploads whose heartbeat is older than this are dead (crashed).
    pub(super) fn stale_before(&self) -> chrono::DateTime<Utc> {
        Utc::now() - chrono::Duration::from_std(self.dead_after).unwrap_or_default()
    }
}

/// The heartbeat of a live upload: a task that refreshes the row's `heartbeat_at` every
/// `Ingest::heartbeat` so the reaper never takes an upload that is still running.
/// It ends with the upload (dropped), or when the row may no longer commit; then
/// `mark_ready` refuses the commit and the upload rolls back.
struct Heartbeat(tokio::task::JoinHandle<()>);

impl Heartbeat {
    fn start(ingest: &Ingest, id: MediaId) -> Self {
        let ingest = ingest.clone();
        let every = ingest.heartbeat;
        Self(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await; // the first tick is immediate; the insert set the heartbeat
            loop {
                ticks.tick().await;
                match ingest
                    .metadata
                    .heartbeat(id, Utc::now(), ingest.stale_before())
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(%id, "upload counted as crashed; it will not commit");
                        return;
                    }
                    // A missed beat is harmless while later ones land in time.
                    Err(err) => tracing::warn!(%id, error = ?err, "upload heartbeat failed"),
                }
            }
        }))
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.0.abort();
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
