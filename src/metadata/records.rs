//! The rows and the questions asked of them, the same for both backends, and what can go
//! wrong asking them.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::domain::{AccountId, FileExtension, MediaId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaStatus {
    Uploading,
    /// A resumable upload, paused or being written: its bytes are kept, the row waits for
    /// the rest (see `ResumableRecord`).
    Incomplete,
    Ready,
}

impl MediaStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MediaStatus::Uploading => "uploading",
            MediaStatus::Incomplete => "incomplete",
            MediaStatus::Ready => "ready",
        }
    }

    pub(super) fn parse(raw: &str) -> Result<Self, MetadataError> {
        match raw {
            "uploading" => Ok(MediaStatus::Uploading),
            "incomplete" => Ok(MediaStatus::Incomplete),
            "ready" => Ok(MediaStatus::Ready),
            other => Err(MetadataError::Corrupt(format!("unknown status {other:?}"))),
        }
    }
}

/// A row of `media`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRecord {
    pub id: MediaId,
    pub owner: AccountId,
    pub extension: FileExtension,
    pub content_type: String,
    pub size_bytes: Option<u64>,
    pub sha256: Option<String>,
    pub status: MediaStatus,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// What the first bytes showed, when the detector recognised them.
    pub detected_mime_type: Option<String>,
    /// The `Idempotency-Key` the row holds, if any (see `insert_uploading_keyed`).
    pub idempotency_key: Option<String>,
    /// When the upload completed (the row became ready); `None` while uploading, and for
    /// rows made ready by a release that did not record it.
    pub ready_at: Option<DateTime<Utc>>,
}

impl MediaRecord {
    /// When these bytes became the media: the upload's completion, else (a row made ready
    /// before completions were recorded) its start. The downloads' `Last-Modified`.
    pub fn last_modified(&self) -> DateTime<Utc> {
        self.ready_at.unwrap_or(self.created_at)
    }
}

/// What is known of an upload before its first byte.
#[derive(Debug, Clone)]
pub struct NewMedia {
    pub id: MediaId,
    pub owner: AccountId,
    pub extension: FileExtension,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// An account's `Idempotency-Key` and the instants that decide whether the row holding it
/// still does: media that expired at `now`, and uploads whose heartbeat is older than
/// `stale_before` (crashed), hold it no more.
#[derive(Debug, Clone, Copy)]
pub struct KeyQuery<'a> {
    pub owner: &'a AccountId,
    pub key: &'a str,
    pub now: DateTime<Utc>,
    pub stale_before: DateTime<Utc>,
}

/// The live row holding an account's `Idempotency-Key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyHolder {
    /// An upload still streaming: its heartbeat is fresh.
    Streaming(MediaId),
    /// A resumable upload that has not completed and not expired.
    Incomplete(MediaId),
    /// Ready media, not expired, with the SHA-256 of its content (lower-case hex) and the
    /// extension it was uploaded with.
    Ready {
        id: MediaId,
        sha256: String,
        extension: FileExtension,
    },
}

/// What `insert_uploading_keyed` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyedInsert {
    /// The row was inserted and holds the key.
    Inserted,
    /// Nothing was inserted: another live row holds the key.
    Held(KeyHolder),
    /// Nothing was inserted: the key changed hands several times while this tried (rows
    /// holding it came and went); the caller answers as for an upload still streaming.
    Contended,
}

/// How a resumable upload is spoken; the row records it, so every replica answers it in
/// the protocol it was created with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadProtocol {
    /// tus 1.0.0.
    Tus,
    /// The IETF draft "Resumable Uploads for HTTP".
    Draft,
}

impl UploadProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            UploadProtocol::Tus => "tus",
            UploadProtocol::Draft => "draft",
        }
    }

    pub(super) fn parse(raw: &str) -> Result<Self, MetadataError> {
        match raw {
            "tus" => Ok(UploadProtocol::Tus),
            "draft" => Ok(UploadProtocol::Draft),
            other => Err(MetadataError::Corrupt(format!(
                "unknown protocol {other:?}"
            ))),
        }
    }
}

/// What is known of a resumable upload at its creation. `media.expires_at` is when it
/// expires if no byte arrives (`uploads.incomplete_expiry` from now).
#[derive(Debug, Clone)]
pub struct NewResumable {
    pub media: NewMedia,
    /// `Upload-Length`, when declared at creation.
    pub length: Option<u64>,
    pub protocol: UploadProtocol,
    /// tus's `Upload-Metadata` as sent.
    pub tus_metadata: Option<String>,
    pub idempotency_key: Option<String>,
    /// The account's incomplete uploads, at most (`uploads.max_incomplete_per_account`).
    pub max_incomplete: u32,
    /// A one-shot upload holding the key whose heartbeat is older is dead (`KeyQuery`).
    pub stale_before: DateTime<Utc>,
}

/// What `insert_incomplete` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumableInsert {
    Inserted,
    /// The idempotency key is held by this live row (incomplete, ready or streaming).
    Held(KeyHolder),
    /// The account has `max_incomplete` incomplete uploads already.
    TooMany,
}

/// A resumable upload's row: the media it becomes and how far it got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumableRecord {
    pub media: MediaRecord,
    /// `Upload-Length`; `None` while deferred.
    pub length: Option<u64>,
    /// The bytes kept. For ready media, its size.
    pub offset: u64,
    /// The engine's saved state (JSON), `None` before the first byte and once ready.
    pub state: Option<String>,
    /// How many requests took the upload so far.
    pub generation: u64,
    /// `None` for media that was not uploaded resumably.
    pub protocol: Option<UploadProtocol>,
    pub tus_metadata: Option<String>,
    pub multipart_upload_id: Option<String>,
    /// Until when the request writing it holds it, if one does.
    pub lease_until: Option<DateTime<Utc>>,
}

impl ResumableRecord {
    /// Whether a request holds the upload at `now`.
    pub fn leased_at(&self, now: DateTime<Utc>) -> bool {
        self.lease_until.is_some_and(|until| until > now)
    }
}

/// A request's hold on an incomplete upload (see `Metadata::acquire_upload`).
#[derive(Debug, Clone, Copy)]
pub struct LeaseQuery<'a> {
    pub id: MediaId,
    pub owner: &'a AccountId,
    /// The request's own token: every write of the upload names it.
    pub token: uuid::Uuid,
    pub now: DateTime<Utc>,
    /// The lease lasts until then, unless renewed.
    pub until: DateTime<Utc>,
}

/// What a lease holder saves: the bytes kept so far and the state that continues them.
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    pub offset: u64,
    /// `Upload-Length`, once known (it is never changed once recorded).
    pub length: Option<u64>,
    pub state: &'a str,
    pub multipart_upload_id: Option<&'a str>,
    /// The last byte's instant plus `uploads.incomplete_expiry`.
    pub expires_at: DateTime<Utc>,
    pub now: DateTime<Utc>,
}

/// What renewing a lease found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Still held, and nobody asks for it.
    Held,
    /// Still held, but a newer request asks for the upload: stop, save, release.
    TakeoverAsked,
    /// Not held any more (taken, terminated, expired or claimed): write nothing.
    Lost,
}

/// A completed resumable upload's commit.
#[derive(Debug, Clone, Copy)]
pub struct Completion<'a> {
    pub size_bytes: u64,
    pub sha256: &'a str,
    pub detected: Option<&'a str>,
    pub ready_at: DateTime<Utc>,
    /// `ready_at` plus the retention: it is kept as long as a one-shot upload.
    pub expires_at: DateTime<Utc>,
}

/// Where a page of an account's listing starts: after this row (newest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListCursor {
    pub created_at: DateTime<Utc>,
    pub id: MediaId,
}

/// What a purge of one account asks for.
#[derive(Debug, Clone)]
pub struct PurgeQuery {
    pub owner: AccountId,
    pub now: DateTime<Utc>,
    /// Uploads whose heartbeat is newer are live: fenced, not removed.
    pub stale_before: DateTime<Utc>,
    pub limit: u32,
    pub claim: uuid::Uuid,
    pub lease_until: DateTime<Utc>,
}

/// What the reaper asks `claim_due` for.
#[derive(Debug, Clone)]
pub struct DueQuery {
    pub now: DateTime<Utc>,
    /// `uploading` rows whose heartbeat is older than this are dead (crashed) uploads.
    pub stale_before: DateTime<Utc>,
    pub limit: u32,
    pub claim: uuid::Uuid,
    pub lease_until: DateTime<Utc>,
}

/// Which rows a claim looks for.
#[derive(Debug, Clone, Copy)]
pub(super) enum Due {
    /// `expires_at` has passed.
    Expired,
    /// `uploading` with a heartbeat before `stale_before`: a crashed upload.
    StaleUpload,
}

impl Due {
    /// The condition on the row (its one parameter is `Due::since`) and the claim order.
    pub(super) fn condition_and_order(self) -> (&'static str, &'static str) {
        match self {
            Due::Expired => ("expires_at <= {since}", "expires_at"),
            Due::StaleUpload => (
                "status = 'uploading' AND COALESCE(heartbeat_at, created_at) <= {since}",
                "created_at",
            ),
        }
    }

    pub(super) fn since(self, due: &DueQuery) -> DateTime<Utc> {
        match self {
            Due::Expired => due.now,
            Due::StaleUpload => due.stale_before,
        }
    }
}

/// A row the reaper now holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub id: MediaId,
    pub status: MediaStatus,
    /// For an upload that never finished: its multipart upload (`Some("")` while it was
    /// being created), see `set_multipart_upload`.
    pub multipart_upload_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unexpected value in the media table: {0}")]
    Corrupt(String),
    #[error("unsupported database URL (expected postgres:// or sqlite://): {0}")]
    UnsupportedUrl(String),
    #[error("the database did not answer within {0:?}")]
    Timeout(Duration),
    #[error(
        "the database schema is older than this release (migrations {0:?} are not applied): \
         run `media-node migrate` (the migration Job) before rolling it out"
    )]
    SchemaTooOld(Vec<i64>),
}

impl MetadataError {
    /// True when the database cannot be reached or the failure passes on a retry (503),
    /// false for a bug (500).
    pub fn is_unavailable(&self) -> bool {
        match self {
            MetadataError::Timeout(_) => true,
            MetadataError::Database(err) => match err {
                sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::Protocol(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed => true,
                sqlx::Error::Database(db) => db.code().is_some_and(|code| passes(&code)),
                _ => false,
            },
            _ => false,
        }
    }
}

/// Whether a database error code names a failure that passes on a retry: PostgreSQL's
/// connection exceptions (08), insufficient resources (53), operator intervention (57:
/// statement timeout or cancellation 57014, shutdown 57P*), transaction rollbacks such as
/// serialization failures and deadlocks (40), lock not available (55P03) and a read-only
/// standby (25006); SQLite's SQLITE_BUSY (5) and SQLITE_LOCKED (6).
pub(super) fn passes(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("57")
        || code.starts_with("40")
        || code == "55P03"
        || code == "25006"
        || code == "5"
        || code == "6"
}

pub type Result<T, E = MetadataError> = std::result::Result<T, E>;

/// Whether a statement failed on a unique index (another row holds the key).
pub(super) fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// Size columns are `bigint`; a negative one can only come from outside this service.
pub(super) fn size_from_db(value: Option<i64>) -> Result<Option<u64>> {
    value
        .map(|v| u64::try_from(v).map_err(|_| MetadataError::Corrupt(format!("size {v}"))))
        .transpose()
}

/// A size as the `bigint` columns keep it.
pub(super) fn db_size(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// What `renew_lease`'s `RETURNING upload_takeover` says: no row, the lease is lost; a
/// takeover token, a newer request waits.
pub(super) fn renewal(row: Option<Option<String>>) -> Renewal {
    match row {
        None => Renewal::Lost,
        Some(None) => Renewal::Held,
        Some(Some(_)) => Renewal::TakeoverAsked,
    }
}

/// What went wrong in the catalogue's words: unreachable is 503 material, the rest a bug.
impl From<MetadataError> for crate::domain::ApiError {
    fn from(err: MetadataError) -> Self {
        use crate::domain::ApiError;
        if err.is_unavailable() {
            ApiError::Unavailable(err.into())
        } else {
            ApiError::Internal(err.into())
        }
    }
}
