//! SQLite queries for the `media` table. Ids are stored as lower-case hyphenated text and
//! instants as Unix epoch milliseconds.

use chrono::{DateTime, Utc};
use sqlx::{Row, SqlitePool};

use super::records::{
    db_size, is_unique_violation, renewal, size_from_db, Claimed, Completion, Due, DueQuery,
    KeyHolder, KeyQuery, LeaseQuery, ListCursor, MediaRecord, MediaStatus, MetadataError, NewMedia,
    NewResumable, Progress, PurgeQuery, Renewal, Result, ResumableRecord, UploadProtocol,
};
use super::statements::{self, COLUMNS};
use crate::domain::{AccountId, FileExtension, MediaId};

fn millis(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

fn instant(ms: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms).ok_or_else(|| MetadataError::Corrupt(format!("time {ms}")))
}

fn record(row: &sqlx::sqlite::SqliteRow) -> Result<MediaRecord> {
    let id: String = row.try_get("id")?;
    let owner: String = row.try_get("owner")?;
    let status: String = row.try_get("status")?;
    Ok(MediaRecord {
        id: MediaId::parse(&id).ok_or_else(|| MetadataError::Corrupt(format!("id {id:?}")))?,
        owner: AccountId::parse(&owner)
            .ok_or_else(|| MetadataError::Corrupt(format!("owner {owner:?}")))?,
        extension: FileExtension::from_stored(row.try_get("extension")?),
        content_type: row.try_get("content_type")?,
        size_bytes: size_from_db(row.try_get("size_bytes")?)?,
        sha256: row.try_get("sha256")?,
        status: MediaStatus::parse(&status)?,
        created_at: instant(row.try_get("created_at")?)?,
        expires_at: instant(row.try_get("expires_at")?)?,
        detected_mime_type: row.try_get("detected_mime_type")?,
        idempotency_key: row.try_get("idempotency_key")?,
        ready_at: row
            .try_get::<Option<i64>, _>("ready_at")?
            .map(instant)
            .transpose()?,
    })
}

pub(super) async fn insert_uploading(pool: &SqlitePool, media: &NewMedia) -> Result<()> {
    sqlx::query(statements::INSERT_UPLOADING)
        .bind(media.id.to_string())
        .bind(media.owner.as_str())
        .bind(media.extension.as_str())
        .bind(media.extension.content_type())
        .bind(millis(media.created_at))
        .bind(millis(media.expires_at))
        .execute(pool)
        .await?;
    Ok(())
}

/// `insert_uploading` with an idempotency key; false, and nothing inserted, when another
/// row holds the key (the unique index on `(owner, idempotency_key)`).
pub(super) async fn insert_uploading_keyed(
    pool: &SqlitePool,
    media: &NewMedia,
    key: &str,
) -> Result<bool> {
    let done = sqlx::query(statements::INSERT_UPLOADING_KEYED)
        .bind(media.id.to_string())
        .bind(media.owner.as_str())
        .bind(media.extension.as_str())
        .bind(media.extension.content_type())
        .bind(millis(media.created_at))
        .bind(millis(media.expires_at))
        .bind(key)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn release_dead_key(pool: &SqlitePool, query: &KeyQuery<'_>) -> Result<u64> {
    let done = sqlx::query(&statements::RELEASE_DEAD_KEY)
        .bind(query.owner.as_str())
        .bind(query.key)
        .bind(millis(query.now))
        .bind(millis(query.stale_before))
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}

pub(super) async fn key_holder(
    pool: &SqlitePool,
    query: &KeyQuery<'_>,
) -> Result<Option<KeyHolder>> {
    let row = sqlx::query(&statements::KEY_HOLDER)
        .bind(query.owner.as_str())
        .bind(query.key)
        .bind(millis(query.now))
        .bind(millis(query.stale_before))
        .fetch_optional(pool)
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let raw: String = row.try_get("id")?;
    let id = MediaId::parse(&raw).ok_or_else(|| MetadataError::Corrupt(format!("id {raw:?}")))?;
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

pub(super) async fn attach_key(
    pool: &SqlitePool,
    id: MediaId,
    query: &KeyQuery<'_>,
) -> Result<bool> {
    let done = sqlx::query(statements::ATTACH_KEY)
        .bind(id.to_string())
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

pub(super) async fn clear_key(pool: &SqlitePool, id: MediaId) -> Result<bool> {
    let done = sqlx::query(statements::CLEAR_KEY)
        .bind(id.to_string())
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn mark_ready(
    pool: &SqlitePool,
    id: MediaId,
    size_bytes: u64,
    sha256: &str,
    stale_before: DateTime<Utc>,
    detected: Option<&str>,
    ready_at: DateTime<Utc>,
) -> Result<bool> {
    let size = i64::try_from(size_bytes).unwrap_or(i64::MAX);
    let done = sqlx::query(&statements::MARK_READY)
        .bind(id.to_string())
        .bind(millis(stale_before))
        .bind(size)
        .bind(sha256)
        .bind(detected)
        .bind(millis(ready_at))
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn set_multipart_upload(
    pool: &SqlitePool,
    id: MediaId,
    upload_id: &str,
    stale_before: DateTime<Utc>,
) -> Result<bool> {
    let done = sqlx::query(&statements::SET_MULTIPART_UPLOAD)
        .bind(id.to_string())
        .bind(millis(stale_before))
        .bind(upload_id)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn heartbeat(
    pool: &SqlitePool,
    id: MediaId,
    now: DateTime<Utc>,
    stale_before: DateTime<Utc>,
) -> Result<bool> {
    let done = sqlx::query(&statements::HEARTBEAT)
        .bind(id.to_string())
        .bind(millis(stale_before))
        .bind(millis(now))
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn find_readable(
    pool: &SqlitePool,
    id: MediaId,
    owner: &AccountId,
    now: DateTime<Utc>,
) -> Result<Option<MediaRecord>> {
    let row = sqlx::query(&statements::FIND_READABLE)
        .bind(id.to_string())
        .bind(owner.as_str())
        .bind(millis(now))
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(record).transpose()
}

pub(super) async fn get(pool: &SqlitePool, id: MediaId) -> Result<Option<MediaRecord>> {
    let row = sqlx::query(&statements::GET)
        .bind(id.to_string())
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(record).transpose()
}

pub(super) async fn delete(pool: &SqlitePool, id: MediaId) -> Result<bool> {
    let done = sqlx::query(statements::DELETE)
        .bind(id.to_string())
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn count(pool: &SqlitePool) -> Result<u64> {
    let n: i64 = sqlx::query_scalar(statements::COUNT)
        .fetch_one(pool)
        .await?;
    Ok(n as u64)
}

// SQLite serialises writers, and one process is assumed: each claim is a single UPDATE.

fn claimed(rows: Vec<sqlx::sqlite::SqliteRow>) -> Result<Vec<Claimed>> {
    rows.iter()
        .map(|row| {
            let id: String = row.try_get("id")?;
            let status: String = row.try_get("status")?;
            Ok(Claimed {
                id: MediaId::parse(&id)
                    .ok_or_else(|| MetadataError::Corrupt(format!("id {id:?}")))?,
                status: MediaStatus::parse(&status)?,
                multipart_upload_id: row.try_get("multipart_upload_id")?,
            })
        })
        .collect()
}

pub(super) async fn claim(
    pool: &SqlitePool,
    due: &DueQuery,
    kind: Due,
    limit: u32,
) -> Result<Vec<Claimed>> {
    let (condition, order) = kind.condition_and_order();
    let sql = format!(
        "UPDATE media SET reap_claim = ?1, reap_claimed_until = ?2 \
         WHERE id IN ( \
             SELECT id FROM media \
             WHERE {condition} \
               AND (reap_claimed_until IS NULL OR reap_claimed_until <= ?3) \
             ORDER BY {order} \
             LIMIT ?4) \
         RETURNING id, status, multipart_upload_id",
        condition = condition.replace("{since}", "?5"),
    );
    let rows = sqlx::query(&sql)
        .bind(due.claim.to_string())
        .bind(millis(due.lease_until))
        .bind(millis(due.now))
        .bind(i64::from(limit))
        .bind(millis(kind.since(due)))
        .fetch_all(pool)
        .await?;
    claimed(rows)
}

/// The ids as a JSON array, for `IN (SELECT value FROM json_each(?))`.
fn id_list(ids: &[MediaId]) -> String {
    serde_json::to_string(&ids.iter().map(ToString::to_string).collect::<Vec<_>>())
        .unwrap_or_else(|_| "[]".to_owned())
}

pub(super) async fn delete_claimed(
    pool: &SqlitePool,
    ids: &[MediaId],
    claim: uuid::Uuid,
    now: DateTime<Utc>,
) -> Result<u64> {
    let done = sqlx::query(
        "DELETE FROM media WHERE id IN (SELECT value FROM json_each(?1)) AND reap_claim = ?2 \
           AND (status = 'uploading' OR expires_at <= ?3)",
    )
    .bind(id_list(ids))
    .bind(claim.to_string())
    .bind(millis(now))
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

pub(super) async fn release(pool: &SqlitePool, ids: &[MediaId], claim: uuid::Uuid) -> Result<()> {
    sqlx::query(
        "UPDATE media SET reap_claim = NULL, reap_claimed_until = NULL \
         WHERE id IN (SELECT value FROM json_each(?1)) AND reap_claim = ?2",
    )
    .bind(id_list(ids))
    .bind(claim.to_string())
    .execute(pool)
    .await?;
    Ok(())
}

pub(super) async fn expired_backlog(pool: &SqlitePool, now: DateTime<Utc>) -> Result<u64> {
    let n: i64 = sqlx::query_scalar(statements::EXPIRED_BACKLOG)
        .bind(millis(now))
        .fetch_one(pool)
        .await?;
    Ok(n as u64)
}

pub(super) async fn list_readable(
    pool: &SqlitePool,
    owner: &AccountId,
    now: DateTime<Utc>,
    after: Option<ListCursor>,
    limit: u32,
) -> Result<Vec<MediaRecord>> {
    // Keyset pagination: (created_at, id) below the cursor, newest first. Ids are
    // lower-case hyphenated text, which orders like the UUIDs.
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM media \
         WHERE owner = ?1 AND status = 'ready' AND expires_at > ?2 \
           AND (?3 IS NULL OR created_at < ?3 OR (created_at = ?3 AND id < ?4)) \
         ORDER BY created_at DESC, id DESC LIMIT ?5"
    ))
    .bind(owner.as_str())
    .bind(millis(now))
    .bind(after.map(|c| millis(c.created_at)))
    .bind(after.map(|c| c.id.to_string()))
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    rows.iter().map(record).collect()
}

pub(super) async fn claim_owned(
    pool: &SqlitePool,
    purge: &PurgeQuery,
) -> Result<(u64, Vec<Claimed>)> {
    let fenced = sqlx::query(statements::CLAIM_OWNED)
        .bind(purge.owner.as_str())
        .bind(purge.claim.to_string())
        .bind(millis(purge.now))
        .bind(millis(purge.stale_before))
        .execute(pool)
        .await?
        .rows_affected();
    let rows = sqlx::query(
        "UPDATE media SET reap_claim = ?5, reap_claimed_until = ?6 \
         WHERE id IN ( \
             SELECT id FROM media \
             WHERE owner = ?1 \
               AND (status = 'ready' OR COALESCE(heartbeat_at, created_at) <= ?2) \
               AND (reap_claimed_until IS NULL OR reap_claimed_until <= ?3) \
             ORDER BY created_at DESC, id DESC \
             LIMIT ?4) \
         RETURNING id, status, multipart_upload_id",
    )
    .bind(purge.owner.as_str())
    .bind(millis(purge.stale_before))
    .bind(millis(purge.now))
    .bind(i64::from(purge.limit))
    .bind(purge.claim.to_string())
    .bind(millis(purge.lease_until))
    .fetch_all(pool)
    .await?;
    Ok((fenced, claimed(rows)?))
}

pub(super) async fn delete_claimed_owned(
    pool: &SqlitePool,
    ids: &[MediaId],
    claim: uuid::Uuid,
    owner: &AccountId,
) -> Result<u64> {
    let done = sqlx::query(
        "DELETE FROM media WHERE id IN (SELECT value FROM json_each(?1)) \
           AND reap_claim = ?2 AND owner = ?3",
    )
    .bind(id_list(ids))
    .bind(claim.to_string())
    .bind(owner.as_str())
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

pub(super) async fn count_owned(pool: &SqlitePool, owner: &AccountId) -> Result<u64> {
    let n: i64 = sqlx::query_scalar(statements::COUNT_OWNED)
        .bind(owner.as_str())
        .fetch_one(pool)
        .await?;
    Ok(n as u64)
}
fn resumable(row: &sqlx::sqlite::SqliteRow) -> Result<ResumableRecord> {
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
        lease_until: row
            .try_get::<Option<i64>, _>("upload_lease_until")?
            .map(instant)
            .transpose()?,
    })
}

pub(super) async fn insert_incomplete(pool: &SqlitePool, new: &NewResumable) -> Result<bool> {
    let media = &new.media;
    let done = sqlx::query(statements::INSERT_INCOMPLETE)
        .bind(media.id.to_string())
        .bind(media.owner.as_str())
        .bind(media.extension.as_str())
        .bind(media.extension.content_type())
        .bind(millis(media.created_at))
        .bind(millis(media.expires_at))
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
    pool: &SqlitePool,
    owner: &AccountId,
    now: DateTime<Utc>,
) -> Result<u64> {
    let n: i64 = sqlx::query_scalar(statements::COUNT_INCOMPLETE)
        .bind(owner.as_str())
        .bind(millis(now))
        .fetch_one(pool)
        .await?;
    Ok(n.max(0) as u64)
}

pub(super) async fn find_upload(
    pool: &SqlitePool,
    id: MediaId,
    owner: &AccountId,
) -> Result<Option<ResumableRecord>> {
    let row = sqlx::query(&statements::FIND_UPLOAD)
        .bind(id.to_string())
        .bind(owner.as_str())
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(resumable).transpose()
}

pub(super) async fn acquire_upload(
    pool: &SqlitePool,
    lease: &LeaseQuery<'_>,
) -> Result<Option<ResumableRecord>> {
    let row = sqlx::query(&statements::ACQUIRE_UPLOAD)
        .bind(lease.id.to_string())
        .bind(lease.owner.as_str())
        .bind(lease.token.to_string())
        .bind(millis(lease.until))
        .bind(millis(lease.now))
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(resumable).transpose()
}

pub(super) async fn ask_takeover(pool: &SqlitePool, lease: &LeaseQuery<'_>) -> Result<bool> {
    let done = sqlx::query(statements::ASK_TAKEOVER)
        .bind(lease.id.to_string())
        .bind(lease.owner.as_str())
        .bind(lease.token.to_string())
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn renew_lease(
    pool: &SqlitePool,
    lease: &LeaseQuery<'_>,
    expires_at: DateTime<Utc>,
) -> Result<Renewal> {
    let row: Option<Option<String>> = sqlx::query_scalar(&statements::RENEW_LEASE)
        .bind(lease.id.to_string())
        .bind(lease.token.to_string())
        .bind(millis(lease.until))
        .bind(millis(expires_at))
        .bind(millis(lease.now))
        .fetch_optional(pool)
        .await?;
    Ok(renewal(row))
}

pub(super) async fn save_progress(
    pool: &SqlitePool,
    lease: &LeaseQuery<'_>,
    progress: &Progress<'_>,
) -> Result<bool> {
    let done = sqlx::query(&statements::SAVE_PROGRESS)
        .bind(lease.id.to_string())
        .bind(lease.token.to_string())
        .bind(db_size(progress.offset))
        .bind(progress.state)
        .bind(progress.multipart_upload_id)
        .bind(millis(progress.expires_at))
        .bind(millis(progress.now))
        .bind(progress.length.map(db_size))
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn release_lease(pool: &SqlitePool, lease: &LeaseQuery<'_>) -> Result<bool> {
    let done = sqlx::query(statements::RELEASE_LEASE)
        .bind(lease.id.to_string())
        .bind(lease.token.to_string())
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn complete_upload(
    pool: &SqlitePool,
    lease: &LeaseQuery<'_>,
    done: &Completion<'_>,
) -> Result<bool> {
    let result = sqlx::query(&statements::COMPLETE_UPLOAD)
        .bind(lease.id.to_string())
        .bind(lease.token.to_string())
        .bind(db_size(done.size_bytes))
        .bind(done.sha256)
        .bind(done.detected)
        .bind(millis(done.ready_at))
        .bind(millis(done.expires_at))
        .execute(pool)
        .await?;
    Ok(result.rows_affected() == 1)
}

pub(super) async fn terminate_upload(pool: &SqlitePool, lease: &LeaseQuery<'_>) -> Result<bool> {
    let done = sqlx::query(statements::TERMINATE_UPLOAD)
        .bind(lease.id.to_string())
        .bind(lease.owner.as_str())
        .bind(millis(lease.now))
        .bind(lease.token.to_string())
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}
