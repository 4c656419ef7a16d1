//! The statements both dialects share, written once with numbered parameters (`$1`,
//! which sqlx binds by number on SQLite too). The binds stay with each dialect: PostgreSQL
//! takes `Uuid` and `DateTime`, SQLite text ids and epoch milliseconds.

use std::sync::LazyLock;

pub(super) const COLUMNS: &str =
    "id, owner, extension, content_type, size_bytes, sha256, status, created_at, expires_at, \
     detected_mime_type, idempotency_key, ready_at";

/// A row of `owner` ($1) holding `key` ($2) that no longer counts: expired at $3, or an
/// upload whose heartbeat is older than $4.
pub(super) const DEAD_KEY_HOLDER: &str = "owner = $1 AND idempotency_key = $2 \
     AND (expires_at <= $3 \
          OR (status = 'uploading' AND COALESCE(heartbeat_at, created_at) <= $4))";

/// The rows an upload may still write to: its own, not claimed, not stale ($2).
pub(super) const LIVE_UPLOAD: &str = "id = $1 AND status = 'uploading' AND reap_claim IS NULL \
     AND COALESCE(heartbeat_at, created_at) > $2";

/// The statement of `insert_uploading`, in both dialects.
pub(super) const INSERT_UPLOADING: &str = "INSERT INTO media \
             (id, owner, extension, content_type, status, created_at, expires_at, heartbeat_at) \
         VALUES ($1, $2, $3, $4, 'uploading', $5, $6, $5)";

/// The statement of `insert_uploading_keyed`, in both dialects.
pub(super) const INSERT_UPLOADING_KEYED: &str = "INSERT INTO media \
             (id, owner, extension, content_type, status, created_at, expires_at, heartbeat_at, \
              idempotency_key) \
         VALUES ($1, $2, $3, $4, 'uploading', $5, $6, $5, $7) \
         ON CONFLICT (owner, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING";

/// The statement of `release_dead_key`, in both dialects.
pub(super) static RELEASE_DEAD_KEY: LazyLock<String> =
    LazyLock::new(|| format!("UPDATE media SET idempotency_key = NULL WHERE {DEAD_KEY_HOLDER}"));

/// The statement of `key_holder`, in both dialects.
pub(super) static KEY_HOLDER: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT id, status, sha256, extension FROM media \
         WHERE owner = $1 AND idempotency_key = $2 AND NOT ({DEAD_KEY_HOLDER})"
    )
});

/// The statement of `attach_key`, in both dialects.
pub(super) const ATTACH_KEY: &str = "UPDATE media SET idempotency_key = $3 \
         WHERE id = $1 AND owner = $2 AND status = 'ready' AND idempotency_key IS NULL";

/// The statement of `clear_key`, in both dialects.
pub(super) const CLEAR_KEY: &str =
    "UPDATE media SET idempotency_key = NULL WHERE id = $1 AND idempotency_key IS NOT NULL";

/// The statement of `mark_ready`, in both dialects.
pub(super) static MARK_READY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE media SET status = 'ready', size_bytes = $3, sha256 = $4, \
         detected_mime_type = $5, multipart_upload_id = NULL, ready_at = $6 \
         WHERE {LIVE_UPLOAD}"
    )
});

/// The statement of `set_multipart_upload`, in both dialects.
pub(super) static SET_MULTIPART_UPLOAD: LazyLock<String> =
    LazyLock::new(|| format!("UPDATE media SET multipart_upload_id = $3 WHERE {LIVE_UPLOAD}"));

/// The statement of `heartbeat`, in both dialects.
pub(super) static HEARTBEAT: LazyLock<String> =
    LazyLock::new(|| format!("UPDATE media SET heartbeat_at = $3 WHERE {LIVE_UPLOAD}"));

/// The statement of `find_readable`, in both dialects.
pub(super) static FIND_READABLE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {COLUMNS} FROM media \
         WHERE id = $1 AND owner = $2 AND status = 'ready' AND expires_at > $3"
    )
});

/// The statement of `get`, in both dialects.
pub(super) static GET: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {COLUMNS} FROM media WHERE id = $1"));

/// The statement of `delete`, in both dialects.
pub(super) const DELETE: &str = "DELETE FROM media WHERE id = $1";

/// The statement of `count`, in both dialects.
pub(super) const COUNT: &str = "SELECT count(*) FROM media";

/// The statement of `expired_backlog`, in both dialects.
pub(super) const EXPIRED_BACKLOG: &str = "SELECT count(*) FROM media WHERE expires_at <= $1";

/// The statement of `claim_owned`, in both dialects.
pub(super) const CLAIM_OWNED: &str = "UPDATE media SET reap_claim = $2, reap_claimed_until = $3 \
         WHERE owner = $1 AND status IN ('uploading', 'incomplete') AND reap_claim IS NULL \
           AND COALESCE(heartbeat_at, created_at) > $4";

/// The statement of `count_owned`, in both dialects.
pub(super) const COUNT_OWNED: &str = "SELECT count(*) FROM media WHERE owner = $1";

/// The columns of a resumable upload's row: `COLUMNS` and its progress.
pub(super) static RESUMABLE_COLUMNS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{COLUMNS}, upload_length, upload_offset, upload_state, upload_generation, \
         upload_protocol, upload_metadata, multipart_upload_id, upload_lease_until"
    )
});

/// The statement of `insert_incomplete`, in both dialects: nothing is inserted when the
/// account ($2) has $11 incomplete uploads that have not expired at $5, nor when another
/// row holds the idempotency key ($10).
pub(super) const INSERT_INCOMPLETE: &str = "INSERT INTO media \
             (id, owner, extension, content_type, status, created_at, expires_at, heartbeat_at, \
              upload_length, upload_offset, upload_generation, upload_protocol, upload_metadata, \
              idempotency_key) \
         SELECT $1, $2, $3, $4, 'incomplete', $5, $6, $5, $7, 0, 0, $8, $9, $10 \
         WHERE (SELECT count(*) FROM media \
                WHERE owner = $2 AND status = 'incomplete' AND expires_at > $5) < $11 \
         ON CONFLICT (owner, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING";

/// The statement of `count_incomplete`, in both dialects.
pub(super) const COUNT_INCOMPLETE: &str =
    "SELECT count(*) FROM media WHERE owner = $1 AND status = 'incomplete' AND expires_at > $2";

/// The statement of `find_upload`, in both dialects: the row of `id` ($1) if `owner` ($2)
/// has it, whatever its state.
pub(super) static FIND_UPLOAD: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {} FROM media WHERE id = $1 AND owner = $2",
        *RESUMABLE_COLUMNS
    )
});

/// The rows a lease holder ($2) may still write to: its own, incomplete, not claimed.
const HELD_UPLOAD: &str =
    "id = $1 AND upload_lease = $2 AND status = 'incomplete' AND reap_claim IS NULL";

/// The statement of `acquire_upload`, in both dialects: the lease ($3 until $4) on an
/// incomplete upload of `owner` ($2) that no request holds at $5 and that has not expired.
pub(super) static ACQUIRE_UPLOAD: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE media SET upload_lease = $3, upload_lease_until = $4, \
             upload_generation = COALESCE(upload_generation, 0) + 1, upload_takeover = NULL, \
             heartbeat_at = $5 \
         WHERE id = $1 AND owner = $2 AND status = 'incomplete' AND reap_claim IS NULL \
           AND expires_at > $5 AND (upload_lease IS NULL OR upload_lease_until <= $5) \
         RETURNING {}",
        *RESUMABLE_COLUMNS
    )
});

/// The statement of `ask_takeover`, in both dialects.
pub(super) const ASK_TAKEOVER: &str = "UPDATE media SET upload_takeover = $3 \
         WHERE id = $1 AND owner = $2 AND status = 'incomplete' AND upload_lease IS NOT NULL";

/// The statement of `renew_lease`, in both dialects.
pub(super) static RENEW_LEASE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE media SET upload_lease_until = $3, expires_at = $4, heartbeat_at = $5 \
         WHERE {HELD_UPLOAD} RETURNING upload_takeover"
    )
});

/// The statement of `save_progress`, in both dialects.
pub(super) static SAVE_PROGRESS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE media SET upload_offset = $3, upload_state = $4, multipart_upload_id = $5, \
             expires_at = $6, heartbeat_at = $7, upload_length = COALESCE(upload_length, $8) \
         WHERE {HELD_UPLOAD}"
    )
});

/// The statement of `release_lease`, in both dialects.
pub(super) const RELEASE_LEASE: &str = "UPDATE media \
         SET upload_lease = NULL, upload_lease_until = NULL, upload_takeover = NULL \
         WHERE id = $1 AND upload_lease = $2";

/// The statement of `complete_upload`, in both dialects.
pub(super) static COMPLETE_UPLOAD: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE media SET status = 'ready', size_bytes = $3, sha256 = $4, \
             detected_mime_type = $5, ready_at = $6, expires_at = $7, heartbeat_at = $6, \
             upload_offset = $3, upload_state = NULL, multipart_upload_id = NULL, \
             upload_lease = NULL, upload_lease_until = NULL, upload_takeover = NULL \
         WHERE {HELD_UPLOAD}"
    )
});

/// The statement of `terminate_upload`, in both dialects: the incomplete upload expires
/// now ($3), so no request takes it again, and its holder is asked to stop ($4).
pub(super) const TERMINATE_UPLOAD: &str = "UPDATE media SET expires_at = $3, upload_takeover = $4 \
         WHERE id = $1 AND owner = $2 AND status = 'incomplete' AND expires_at > $3";
