//! PostgreSQL queries for the `media` table.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::records::{
    db_size, is_unique_violation, renewal, size_from_db, Claimed, Completion, Due, DueQuery,
    KeyHolder, KeyQuery, LeaseQuery, ListCursor, MediaRecord, MediaStatus, MetadataError, NewMedia,
    NewResumable, Progress, PurgeQuery, Renewal, Result, ResumableRecord, UploadProtocol,
};
use super::statements::{self, COLUMNS};
use crate::domain::{AccountId, FileExtension, MediaId};

fn record(row: &sqlx::postgres::PgRow) -> Result<MediaRecord> {
    let owner: String = row.try_get("owner")?;
    let status: String = row.try_get("status")?;
    Ok(MediaRecord {
        id: MediaId::from(row.try_get::<Uuid, _>("id")?),
        owner: AccountId::parse(&owner)
            .ok_or_else(|| MetadataError::Corrupt(format!("owner {owner:?}")))?,
        extension: FileExtension::from_stored(row.try_get("extension")?),
        content_type: row.try_get("content_type")?,
        size_bytes: size_from_db(row.try_get("size_bytes")?)?,
        sha256: row.try_get("sha256")?,
        status: MediaStatus::parse(&status)?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        detected_mime_type: row.try_get("detected_mime_type")?,
        idempotency_key: row.try_get("idempotency_key")?,
        ready_at: row.try_get("ready_at")?,
    })
}

pub(super) async fn insert_uploading(pool: &PgPool, media: &NewMedia) -> Result<()> {
    sqlx::query(statements::INSERT_UPLOADING)
        .bind(media.id.as_uuid())
        .bind(media.owner.as_str())
        .bind(media.extension.as_str())
        .bind(media.extension.content_type())
        .bind(media.created_at)
        .bind(media.expires_at)
        .execute(pool)
        .await?;
    Ok(())
}

/// `insert_uploading` with an idempotency key; false, and nothing inserted, when another
/// row holds the key (the unique index on `(owner, idempotency_key)`).
pub(super) async fn insert_uploading_keyed(
    pool: &PgPool,
    media: &NewMedia,
    key: &str,
) -> Result<bool> {
    let done = sqlx::query(statements::INSERT_UPLOADING_KEYED)
        .bind(media.id.as_uuid())
        .bind(media.owner.as_str())
        .bind(media.extension.as_str())
        .bind(media.extension.content_type())
        .bind(media.created_at)
        .bind(media.expires_at)
        .bind(key)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn release_dead_key(pool: &PgPool, query: &KeyQuery<'_>) -> Result<u64> {
    let done = sqlx::query(&statements::RELEASE_DEAD_KEY)
        .bind(query.owner.as_str())
        .bind(query.key)
        .bind(query.now)
        .bind(query.stale_before)
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}

pub(super) async fn key_holder(pool: &PgPool, query: &KeyQuery<'_>) -> Result<Option<KeyHolder>> {
    let row = sqlx::query(&statements::KEY_HOLDER)
        .bind(query.owner.as_str())
        .bind(query.key)
        .bind(query.now)
        .bind(query.stale_before)
        .fetch_optional(pool)
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let id = MediaId::from(row.try_get::<Uuid, _>("id")?);
    let status: String = row.try_get("status")?;
    Ok(Some(match MediaStatus::parse(&status)? {
        MediaStatus::Uploading => KeyHolder::Streaming(id),
        MediaStatus::Incomplete => KeyHolder::Incomplete(id),
        MediaStatus::Ready => KeyHolder::Ready {
            id,
            sha256: row
                .try_get::<Option<String>, _>("sha256")?
                .ok_or_else(|| MetadataError::Corrupt(format!("{id} has no sha256")))?,
            extension: FileExtension::from_stored(row.try_get("extension")?),
        },
    }))
}

pub(super) async fn attach_key(pool: &PgPool, id: MediaId, query: &KeyQuery<'_>) -> Result<bool> {
    let done = sqlx::query(statements::ATTACH_KEY)
        .bind(id.as_uuid())
        .bind(query.owner.as_str())
        .bind(query.key)
        .execute(pool)
        .await;
    match done {
        Ok(done) => Ok(done.rows_affected() == 1),
        Err(err) if is_unique_violation(&err) => Ok(false),
        Err(err) => Err(err.into()),
    }
}

pub(super) async fn clear_key(pool: &PgPool, id: MediaId) -> Result<bool> {
    let done = sqlx::query(statements::CLEAR_KEY)
        .bind(id.as_uuid())
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn mark_ready(
    pool: &PgPool,
    id: MediaId,
    size_bytes: u64,
    sha256: &str,
    stale_before: DateTime<Utc>,
    detected: Option<&str>,
    ready_at: DateTime<Utc>,
) -> Result<bool> {
    let size = i64::try_from(size_bytes).unwrap_or(i64::MAX);
    let done = sqlx::query(&statements::MARK_READY)
        .bind(id.as_uuid())
        .bind(stale_before)
        .bind(size)
        .bind(sha256)
        .bind(detected)
        .bind(ready_at)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn set_multipart_upload(
    pool: &PgPool,
    id: MediaId,
    upload_id: &str,
    stale_before: DateTime<Utc>,
) -> Result<bool> {
    let done = sqlx::query(&statements::SET_MULTIPART_UPLOAD)
        .bind(id.as_uuid())
        .bind(stale_before)
        .bind(upload_id)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn heartbeat(
    pool: &PgPool,
    id: MediaId,
    now: DateTime<Utc>,
    stale_before: DateTime<Utc>,
) -> Result<bool> {
    let done = sqlx::query(&statements::HEARTBEAT)
        .bind(id.as_uuid())
        .bind(stale_before)
        .bind(now)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn find_readable(
    pool: &PgPool,
    id: MediaId,
    owner: &AccountId,
    now: DateTime<Utc>,
) -> Result<Option<MediaRecord>> {
    let row = sqlx::query(&statements::FIND_READABLE)
        .bind(id.as_uuid())
        .bind(owner.as_str())
        .bind(now)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(record).transpose()
}

pub(super) async fn get(pool: &PgPool, id: MediaId) -> Result<Option<MediaRecord>> {
    let row = sqlx::query(&statements::GET)
        .bind(id.as_uuid())
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(record).transpose()
}

pub(super) async fn delete(pool: &PgPool, id: MediaId) -> Result<bool> {
    let done = sqlx::query(statements::DELETE)
        .bind(id.as_uuid())
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn count(pool: &PgPool) -> Result<u64> {
    let n: i64 = sqlx::query_scalar(statements::COUNT)
        .fetch_one(pool)
        .await?;
    Ok(n as u64)
}

fn claimed(rows: Vec<sqlx::postgres::PgRow>) -> Result<Vec<Claimed>> {
    rows.iter()
        .map(|row| {
            let status: String = row.try_get("status")?;
            Ok(Claimed {
                id: MediaId::from(row.try_get::<Uuid, _>("id")?),
                status: MediaStatus::parse(&status)?,
                multipart_upload_id: row.try_get("multipart_upload_id")?,
            })
        })
        .collect()
}

// Each claim is one statement: the row locks of FOR UPDATE SKIP LOCKED last only while it
// runs, so no replica waits on another and none holds a lock across a call to storage.

/// The claim statement of `kind` and its binds: the one `claim` runs and `explain_claim`
/// explains, so a plan test sees the production statement.
fn claim_query<'q>(
    sql: &'q str,
    due: &DueQuery,
    kind: Due,
    limit: u32,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(sql)
        .bind(due.now)
        .bind(i64::from(limit))
        .bind(due.claim)
        .bind(due.lease_until)
        .bind(kind.since(due))
}

fn claim_sql(kind: Due) -> String {
    let (condition, order) = kind.condition_and_order();
    format!(
        "WITH due AS ( \
             SELECT id FROM media \
             WHERE {condition} \
               AND (reap_claimed_until IS NULL OR reap_claimed_until <= $1) \
             ORDER BY {order} \
             LIMIT $2 \
             FOR UPDATE SKIP LOCKED) \
         UPDATE media SET reap_claim = $3, reap_claimed_until = $4 \
         FROM due WHERE media.id = due.id \
         RETURNING media.id, media.status, media.multipart_upload_id",
        condition = condition.replace("{since}", "$5"),
    )
}

pub(super) async fn claim(
    pool: &PgPool,
    due: &DueQuery,
    kind: Due,
    limit: u32,
) -> Result<Vec<Claimed>> {
    let sql = claim_sql(kind);
    let rows = claim_query(&sql, due, kind, limit).fetch_all(pool).await?;
    claimed(rows)
}

/// The plan of `claim` (its `EXPLAIN`, one line a row), without running it.
pub(super) async fn explain_claim(
    pool: &PgPool,
    due: &DueQuery,
    kind: Due,
    limit: u32,
) -> Result<String> {
    let sql = format!("EXPLAIN {}", claim_sql(kind));
    let lines: Vec<String> = claim_query(&sql, due, kind, limit)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?;
    Ok(lines.join("\n"))
}

fn uuids(ids: &[MediaId]) -> Vec<Uuid> {
    ids.iter().map(MediaId::as_uuid).collect()
}

pub(super) async fn delete_claimed(
    pool: &PgPool,
    ids: &[MediaId],
    claim: Uuid,
    now: DateTime<Utc>,
) -> Result<u64> {
    let done = sqlx::query(
        "DELETE FROM media WHERE id = ANY($1) AND reap_claim = $2 \
           AND (status = 'uploading' OR expires_at <= $3)",
    )
    .bind(uuids(ids))
    .bind(claim)
    .bind(now)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

pub(super) async fn release(pool: &PgPool, ids: &[MediaId], claim: Uuid) -> Result<()> {
    sqlx::query(
        "UPDATE media SET reap_claim = NULL, reap_claimed_until = NULL \
         WHERE id = ANY($1) AND reap_claim = $2",
    )
    .bind(uuids(ids))
    .bind(claim)
    .execute(pool)
    .await?;
    Ok(())
}

pub(super) async fn expired_backlog(pool: &PgPool, now: DateTime<Utc>) -> Result<u64> {
    let n: i64 = sqlx::query_scalar(statements::EXPIRED_BACKLOG)
        .bind(now)
        .fetch_one(pool)
        .await?;
    Ok(n as u64)
}

pub(super) async fn list_readable(
    pool: &PgPool,
    owner: &AccountId,
    now: DateTime<Utc>,
    after: Option<ListCursor>,
    limit: u32,
) -> Result<Vec<MediaRecord>> {
    // Keyset pagination: (created_at, id) below the cursor, newest first.
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM media \
         WHERE owner = $1 AND status = 'ready' AND expires_at > $2 \
           AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4)) \
         ORDER BY created_at DESC, id DESC LIMIT $5"
    ))
    .bind(owner.as_str())
    .bind(now)
    .bind(after.map(|c| c.created_at))
    .bind(after.map(|c| c.id.as_uuid()))
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    rows.iter().map(record).collect()
}

pub(super) async fn claim_owned(pool: &PgPool, purge: &PurgeQuery) -> Result<(u64, Vec<Claimed>)> {
    // A fenced upload's lease is over at once: once it is stale (it rolled back or its
    // process died), the reaper takes it like any crashed upload.
    let fenced = sqlx::query(statements::CLAIM_OWNED)
        .bind(purge.owner.as_str())
        .bind(purge.claim)
        .bind(purge.now)
        .bind(purge.stale_before)
        .execute(pool)
        .await?
        .rows_affected();
    let rows = sqlx::query(
        "WITH due AS ( \
             SELECT id FROM media \
             WHERE owner = $1 \
               AND (status = 'ready' OR COALESCE(heartbeat_at, created_at) <= $2) \
               AND (reap_claimed_until IS NULL OR reap_claimed_until <= $3) \
             ORDER BY created_at DESC, id DESC \
             LIMIT $4 \
             FOR UPDATE SKIP LOCKED) \
         UPDATE media SET reap_claim = $5, reap_claimed_until = $6 \
         FROM due WHERE media.id = due.id \
         RETURNING media.id, media.status, media.multipart_upload_id",
    )
    .bind(purge.owner.as_str())
    .bind(purge.stale_before)
    .bind(purge.now)
    .bind(i64::from(purge.limit))
    .bind(purge.claim)
    .bind(purge.lease_until)
    .fetch_all(pool)
    .await?;
    Ok((fenced, claimed(rows)?))
}

pub(super) async fn delete_claimed_owned(
    pool: &PgPool,
    ids: &[MediaId],
    claim: Uuid,
    owner: &AccountId,
) -> Result<u64> {
    let done =
        sqlx::query("DELETE FROM media WHERE id = ANY($1) AND reap_claim = $2 AND owner = $3")
            .bind(uuids(ids))
            .bind(claim)
            .bind(owner.as_str())
            .execute(pool)
            .await?;
    Ok(done.rows_affected())
}

pub(super) async fn count_owned(pool: &PgPool, owner: &AccountId) -> Result<u64> {
    let n: i64 = sqlx::query_scalar(statements::COUNT_OWNED)
        .bind(owner.as_str())
        .fetch_one(pool)
        .await?;
    Ok(n as u64)
}

fn resumable(row: &sqlx::postgres::PgRow) -> Result<ResumableRecord> {
    let protocol: Option<String> = row.try_get("upload_protocol")?;
    Ok(ResumableRecord {
        media: record(row)?,
        length: size_from_db(row.try_get("upload_length")?)?,
        offset: size_from_db(row.try_get("upload_offset")?)?.unwrap_or_default(),
        state: row.try_get("upload_state")?,
        generation: size_from_db(row.try_get("upload_generation")?)?.unwrap_or_default(),
        protocol: protocol.as_deref().map(UploadProtocol::parse).transpose()?,
        tus_metadata: row.try_get("upload_metadata")?,
        multipart_upload_id: row.try_get("multipart_upload_id")?,
        lease_until: row.try_get("upload_lease_until")?,
    })
}

pub(super) async fn insert_incomplete(pool: &PgPool, new: &NewResumable) -> Result<bool> {
    let media = &new.media;
    let done = sqlx::query(statements::INSERT_INCOMPLETE)
        .bind(media.id.as_uuid())
        .bind(media.owner.as_str())
        .bind(media.extension.as_str())
        .bind(media.extension.content_type())
        .bind(media.created_at)
        .bind(media.expires_at)
        .bind(new.length.map(db_size))
        .bind(new.protocol.as_str())
        .bind(new.tus_metadata.as_deref())
        .bind(new.idempotency_key.as_deref())
        .bind(i64::from(new.max_incomplete))
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn count_incomplete(
    pool: &PgPool,
    owner: &AccountId,
    now: DateTime<Utc>,
) -> Result<u64> {
    let n: i64 = sqlx::query_scalar(statements::COUNT_INCOMPLETE)
        .bind(owner.as_str())
        .bind(now)
        .fetch_one(pool)
        .await?;
    Ok(n.max(0) as u64)
}

pub(super) async fn find_upload(
    pool: &PgPool,
    id: MediaId,
    owner: &AccountId,
) -> Result<Option<ResumableRecord>> {
    let row = sqlx::query(&statements::FIND_UPLOAD)
        .bind(id.as_uuid())
        .bind(owner.as_str())
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(resumable).transpose()
}

pub(super) async fn acquire_upload(
    pool: &PgPool,
    lease: &LeaseQuery<'_>,
) -> Result<Option<ResumableRecord>> {
    let row = sqlx::query(&statements::ACQUIRE_UPLOAD)
        .bind(lease.id.as_uuid())
        .bind(lease.owner.as_str())
        .bind(lease.token.to_string())
        .bind(lease.until)
        .bind(lease.now)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(resumable).transpose()
}

pub(super) async fn ask_takeover(pool: &PgPool, lease: &LeaseQuery<'_>) -> Result<bool> {
    let done = sqlx::query(statements::ASK_TAKEOVER)
        .bind(lease.id.as_uuid())
        .bind(lease.owner.as_str())
        .bind(lease.token.to_string())
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn renew_lease(
    pool: &PgPool,
    lease: &LeaseQuery<'_>,
    expires_at: DateTime<Utc>,
) -> Result<Renewal> {
    let row: Option<Option<String>> = sqlx::query_scalar(&statements::RENEW_LEASE)
        .bind(lease.id.as_uuid())
        .bind(lease.token.to_string())
        .bind(lease.until)
        .bind(expires_at)
        .bind(lease.now)
        .fetch_optional(pool)
        .await?;
    Ok(renewal(row))
}

pub(super) async fn save_progress(
    pool: &PgPool,
    lease: &LeaseQuery<'_>,
    progress: &Progress<'_>,
) -> Result<bool> {
    let done = sqlx::query(&statements::SAVE_PROGRESS)
        .bind(lease.id.as_uuid())
        .bind(lease.token.to_string())
        .bind(db_size(progress.offset))
        .bind(progress.state)
        .bind(progress.multipart_upload_id)
        .bind(progress.expires_at)
        .bind(progress.now)
        .bind(progress.length.map(db_size))
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn release_lease(pool: &PgPool, lease: &LeaseQuery<'_>) -> Result<bool> {
    let done = sqlx::query(statements::RELEASE_LEASE)
        .bind(lease.id.as_uuid())
        .bind(lease.token.to_string())
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn complete_upload(
    pool: &PgPool,
    lease: &LeaseQuery<'_>,
    done: &Completion<'_>,
) -> Result<bool> {
    let result = sqlx::query(&statements::COMPLETE_UPLOAD)
        .bind(lease.id.as_uuid())
        .bind(lease.token.to_string())
        .bind(db_size(done.size_bytes))
        .bind(done.sha256)
        .bind(done.detected)
        .bind(done.ready_at)
        .bind(done.expires_at)
        .execute(pool)
        .await?;
    Ok(result.rows_affected() == 1)
}

pub(super) async fn terminate_upload(pool: &PgPool, lease: &LeaseQuery<'_>) -> Result<bool> {
    let done = sqlx::query(statements::TERMINATE_UPLOAD)
        .bind(lease.id.as_uuid())
        .bind(lease.owner.as_str())
        .bind(lease.now)
        .bind(lease.token.to_string())
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}
