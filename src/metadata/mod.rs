//! The `media` table: one row per object, written before the object and removed after it.
//! PostgreSQL in production, SQLite as the embedded default; the backend is chosen by the
//! URL alone. Both pass the same contract tests
//! (`tests/backends/metadata_contract.rs`).
//!
//! Time is passed in by the caller (`now`), so both backends agree on what "expired" means
//! and tests can move the clock.

mod postgres;
mod records;
mod sqlite;
mod statements;

use records::Due;
pub use records::*;

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

use crate::domain::{AccountId, MediaId};

/// The metadata repository. Cheap to clone (a pool handle).
#[derive(Debug, Clone)]
pub struct Metadata {
    pool: Pool,
    /// Durations of calls by operation, once metrics are attached.
    timings: Option<prometheus::HistogramVec>,
    /// No call takes longer than this, whatever the network does.
    call_timeout: Duration,
}

/// The connection pool of the backend in use.
#[derive(Debug, Clone)]
pub enum Pool {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// How the pool connects and how long any call may take.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    pub max_connections: u32,
    /// How long a call waits for a pooled connection before it fails (503).
    pub acquire_timeout: Duration,
    /// PostgreSQL's `statement_timeout` for every statement of this service: a statement
    /// blocked by a lock or a runaway plan is cancelled by the server. Each call is also
    /// bounded on the client side by `acquire_timeout + statement_timeout` plus a second,
    /// so a silently dead connection fails the call instead of hanging it.
    pub statement_timeout: Duration,
}

impl From<&crate::settings::DatabaseSettings> for PoolOptions {
    fn from(settings: &crate::settings::DatabaseSettings) -> Self {
        Self {
            max_connections: settings.max_connections,
            acquire_timeout: settings.acquire_timeout,
            statement_timeout: settings.statement_timeout,
        }
    }
}

impl PoolOptions {
    /// The defaults of `config/default.toml` with another pool size (tests, tools).
    pub fn with_max_connections(max_connections: u32) -> Self {
        Self {
            max_connections,
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(10),
        }
    }

    fn call_timeout(&self) -> Duration {
        self.acquire_timeout + self.statement_timeout + Duration::from_secs(1)
    }
}

/// Runs the same call on whichever pool is in use.
macro_rules! on_pool {
    // The function of the same name in `postgres` and in `sqlite`, with the pool first.
    ($self:ident, $operation:ident($($arg:expr),* $(,)?)) => {
        on_pool!(
            $self,
            stringify!($operation),
            |pool| postgres::$operation(pool, $($arg),*).await,
            sqlite::$operation(pool, $($arg),*).await
        )
    };
    ($self:ident, $operation:expr, |$pool:ident| $postgres:expr, $sqlite:expr) => {
        $self
            .timed($operation, async {
                match &$self.pool {
                    Pool::Postgres($pool) => $postgres,
                    Pool::Sqlite($pool) => $sqlite,
                }
            })
            .await
    };
}

impl Metadata {
    /// `connect_with` and the default timeouts.
    pub fn connect(url: &str, max_connections: u32) -> Result<Self> {
        Self::connect_with(url, &PoolOptions::with_max_connections(max_connections))
    }

    /// Connects lazily (the first query opens the first connection), so the service can
    /// start while the database is still coming up; readiness reports it.
    pub fn connect_with(url: &str, pool_options: &PoolOptions) -> Result<Self> {
        let max_connections = pool_options.max_connections;
        let acquire_timeout = pool_options.acquire_timeout;
        let pool = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let statement_ms = pool_options
                .statement_timeout
                .as_millis()
                .max(1)
                .to_string();
            let idle_in_transaction_ms = (pool_options.statement_timeout * 2)
                .as_millis()
                .max(1)
                .to_string();
            // Session settings sent with the start-up packet. The keepalives let the server
            // drop the sessions of a replica that vanished without closing them.
            let options = PgConnectOptions::from_str(url)?
                .application_name("media-node")
                .options([
                    ("statement_timeout", statement_ms.as_str()),
                    (
                        "idle_in_transaction_session_timeout",
                        idle_in_transaction_ms.as_str(),
                    ),
                    ("tcp_keepalives_idle", "30"),
                    ("tcp_keepalives_interval", "10"),
                    ("tcp_keepalives_count", "3"),
                ]);
            Pool::Postgres(
                PgPoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(acquire_timeout)
                    .connect_lazy_with(options),
            )
        } else if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(acquire_timeout)
                .foreign_keys(true);
            if let Some(dir) = options.get_filename().parent() {
                if !dir.as_os_str().is_empty() {
                    std::fs::create_dir_all(dir).map_err(sqlx::Error::Io)?;
                }
            }
            Pool::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(acquire_timeout)
                    .connect_lazy_with(options),
            )
        } else {
            return Err(MetadataError::UnsupportedUrl(crate::settings::redact_url(
                url,
            )));
        };
        Ok(Self {
            pool,
            timings: None,
            call_timeout: pool_options.call_timeout(),
        })
    }

    /// Records the duration of every call in `timings`, labelled by operation.
    pub fn with_timings(mut self, timings: prometheus::HistogramVec) -> Self {
        self.timings = Some(timings);
        self
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Connections open and idle, for the pool gauges.
    pub fn pool_state(&self) -> (u32, usize) {
        match &self.pool {
            Pool::Postgres(pool) => (pool.size(), pool.num_idle()),
            Pool::Sqlite(pool) => (pool.size(), pool.num_idle()),
        }
    }

    /// Times the call and bounds it by the call timeout.
    async fn timed<T>(
        &self,
        operation: &str,
        call: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let _timer = self
            .timings
            .as_ref()
            .map(|h| h.with_label_values(&[operation]).start_timer());
        tokio::time::timeout(self.call_timeout, call)
            .await
            .map_err(|_| MetadataError::Timeout(self.call_timeout))?
    }

    pub fn backend_name(&self) -> &'static str {
        match &self.pool {
            Pool::Postgres(_) => "postgres",
            Pool::Sqlite(_) => "sqlite",
        }
    }

    /// The migrations this release knows, for its backend.
    fn migrator(&self) -> sqlx::migrate::Migrator {
        let mut migrator = match &self.pool {
            Pool::Postgres(_) => sqlx::migrate!("./migrations/postgres"),
            Pool::Sqlite(_) => sqlx::migrate!("./migrations/sqlite"),
        };
        // Migrations are additive (expand, then contract in a later release once no running
        // release needs the old shape), so a database migrated by a newer release is one
        // this release runs on: what it does not know it leaves alone. That is what makes
        // a roll-back after a migration work.
        migrator.set_ignore_missing(true);
        migrator
    }

    /// Applies the migrations of this release that the database lacks.
    pub async fn migrate(&self) -> Result<()> {
        let migrator = self.migrator();
        match &self.pool {
            Pool::Postgres(pool) => migrator.run(pool).await?,
            Pool::Sqlite(pool) => migrator.run(pool).await?,
        }
        Ok(())
    }

    /// Checks, without changing anything, that every migration of this release has been
    /// applied (by `media-node migrate`, the migration Job). Newer migrations this release
    /// does not know are tolerated; their versions are returned.
    pub async fn check_schema(&self) -> Result<Vec<i64>> {
        const APPLIED: &str = "SELECT version FROM _sqlx_migrations WHERE success";
        let applied: Vec<i64> = match &self.pool {
            Pool::Postgres(pool) => sqlx::query_scalar(APPLIED).fetch_all(pool).await,
            Pool::Sqlite(pool) => sqlx::query_scalar(APPLIED).fetch_all(pool).await,
        }
        .or_else(|err| match &err {
            // No migration table yet: nothing applied.
            sqlx::Error::Database(db)
                if db.code().as_deref() == Some("42P01")
                    || db.message().contains("no such table") =>
            {
                Ok(Vec::new())
            }
            _ => Err(err),
        })?;
        let migrator = self.migrator();
        let missing: Vec<i64> = migrator
            .iter()
            .map(|m| m.version)
            .filter(|v| !applied.contains(v))
            .collect();
        if !missing.is_empty() {
            return Err(MetadataError::SchemaTooOld(missing));
        }
        Ok(applied
            .into_iter()
            .filter(|v| !migrator.version_exists(*v))
            .collect())
    }

    /// A round trip to the database, for readiness.
    pub async fn ping(&self) -> Result<()> {
        on_pool!(
            self,
            "ping",
            |pool| Ok(sqlx::query("SELECT 1").execute(pool).await.map(drop)?),
            Ok(sqlx::query("SELECT 1").execute(pool).await.map(drop)?)
        )?;
        Ok(())
    }

    /// Inserts the row of an upload that is about to start (`status = 'uploading'`).
    pub async fn insert_uploading(&self, media: &NewMedia) -> Result<()> {
        on_pool!(self, insert_uploading(media))
    }

    /// Inserts the row of an upload sent with an `Idempotency-Key` (see `KeyQuery`), holding
    /// the key, unless a live row holds it already: then nothing is inserted and that row is
    /// returned. A row that no longer holds its key (crashed upload, expired media) first
    /// loses it, by a statement that changes only such rows, so a live holder is never
    /// displaced and a row the reaper or a purge works on only loses its key. The unique
    /// index on `(owner, idempotency_key)` decides between uploads racing for the key, on
    /// any number of replicas: one inserts, the others see it.
    pub async fn insert_uploading_keyed(
        &self,
        media: &NewMedia,
        key: &str,
        stale_before: DateTime<Utc>,
    ) -> Result<KeyedInsert> {
        let query = KeyQuery {
            owner: &media.owner,
            key,
            now: media.created_at,
            stale_before,
        };
        // Each turn ends when a row holds the key; a holder that vanishes between the
        // insert and the look-up (a failed upload rolled back, a delete) costs another turn.
        for _ in 0..3 {
            self.release_dead_key(&query).await?;
            let inserted = on_pool!(
                self,
                "insert_uploading",
                |pool| postgres::insert_uploading_keyed(pool, media, key).await,
                sqlite::insert_uploading_keyed(pool, media, key).await
            )?;
            if inserted {
                return Ok(KeyedInsert::Inserted);
            }
            if let Some(holder) = self.key_holder(&query).await? {
                return Ok(KeyedInsert::Held(holder));
            }
        }
        Ok(KeyedInsert::Contended)
    }

    /// The live row holding an account's key, if any.
    pub async fn key_holder(&self, query: &KeyQuery<'_>) -> Result<Option<KeyHolder>> {
        on_pool!(self, key_holder(query))
    }

    /// Takes an account's key off the row holding it when that row no longer counts (an
    /// upload whose heartbeat is older than `stale_before`, media expired at `now`): only
    /// the key changes, the row stays for the reaper. How many rows lost it (0 or 1).
    pub async fn release_dead_key(&self, query: &KeyQuery<'_>) -> Result<u64> {
        on_pool!(self, release_dead_key(query))
    }

    /// Gives the ready media `id` of `query.owner` the key, if no live row holds it (a row
    /// that no longer counts loses it first). False, and nothing changes, otherwise.
    pub async fn attach_key(&self, id: MediaId, query: &KeyQuery<'_>) -> Result<bool> {
        self.release_dead_key(query).await?;
        on_pool!(self, attach_key(id, query))
    }

    /// Takes the key off the row `id`, whatever its state: an upload that failed frees its
    /// key before its clean-up runs. False when it held none.
    pub async fn clear_key(&self, id: MediaId) -> Result<bool> {
        on_pool!(self, clear_key(id))
    }

    /// Marks an upload complete. False, and nothing changes, when the upload may no longer
    /// commit: its row is gone, a reaper claimed it, or its heartbeat is older than
    /// `stale_before` (the reaper may take it at any moment). This is the fence between a
    /// live upload and the reaper: a row is either live (only the upload touches it) or
    /// stale (only the reaper does).
    pub async fn mark_ready(
        &self,
        id: MediaId,
        size_bytes: u64,
        sha256: &str,
        stale_before: DateTime<Utc>,
    ) -> Result<bool> {
        self.mark_ready_detected(id, size_bytes, sha256, stale_before, None)
            .await
    }

    /// `mark_ready`, recording the type the content was detected as. The row records now
    /// (to the millisecond both backends keep) as the upload's completion, `ready_at`.
    pub async fn mark_ready_detected(
        &self,
        id: MediaId,
        size_bytes: u64,
        sha256: &str,
        stale_before: DateTime<Utc>,
        detected: Option<&str>,
    ) -> Result<bool> {
        let now = Utc::now();
        let ready_at = DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now);
        on_pool!(
            self,
            "mark_ready",
            |pool| postgres::mark_ready(
                pool,
                id,
                size_bytes,
                sha256,
                stale_before,
                detected,
                ready_at
            )
            .await,
            sqlite::mark_ready(
                pool,
                id,
                size_bytes,
                sha256,
                stale_before,
                detected,
                ready_at
            )
            .await
        )
    }

    /// Records the multipart upload of a live upload: `""` before it is created, then its
    /// id. False, and nothing changes, when the upload may no longer commit (`mark_ready`).
    pub async fn set_multipart_upload(
        &self,
        id: MediaId,
        upload_id: &str,
        stale_before: DateTime<Utc>,
    ) -> Result<bool> {
        on_pool!(self, set_multipart_upload(id, upload_id, stale_before))
    }

    /// Refreshes the heartbeat of a live upload to `now`. False, and nothing changes, when
    /// the upload may no longer commit (see `mark_ready`): a stale row is never revived.
    pub async fn heartbeat(
        &self,
        id: MediaId,
        now: DateTime<Utc>,
        stale_before: DateTime<Utc>,
    ) -> Result<bool> {
        on_pool!(self, heartbeat(id, now, stale_before))
    }

    /// Inserts the row of a resumable upload (`status = 'incomplete'`), unless the account
    /// has `max_incomplete` incomplete uploads already, or a live row holds its idempotency
    /// key: that row is returned, and nothing is inserted.
    pub async fn insert_incomplete(&self, new: &NewResumable) -> Result<ResumableInsert> {
        let key = new.idempotency_key.as_deref();
        for _ in 0..3 {
            if let Some(key) = key {
                let query = self.key_query(new, key);
                self.release_dead_key(&query).await?;
            }
            if on_pool!(self, insert_incomplete(new))? {
                return Ok(ResumableInsert::Inserted);
            }
            let Some(key) = key else {
                return Ok(ResumableInsert::TooMany);
            };
            if let Some(holder) = self.key_holder(&self.key_query(new, key)).await? {
                return Ok(ResumableInsert::Held(holder));
            }
            // No holder: either the account is at its limit, or the holder went meanwhile.
            let count = on_pool!(
                self,
                count_incomplete(&new.media.owner, new.media.created_at)
            )?;
            if count >= u64::from(new.max_incomplete) {
                return Ok(ResumableInsert::TooMany);
            }
        }
        Ok(ResumableInsert::TooMany)
    }

    fn key_query<'a>(&self, new: &'a NewResumable, key: &'a str) -> KeyQuery<'a> {
        KeyQuery {
            owner: &new.media.owner,
            key,
            now: new.media.created_at,
            stale_before: new.stale_before,
        }
    }

    /// The row `id` if `owner` has it, whatever its state, with a resumable upload's
    /// progress.
    pub async fn find_upload(
        &self,
        id: MediaId,
        owner: &AccountId,
    ) -> Result<Option<ResumableRecord>> {
        on_pool!(self, find_upload(id, owner))
    }

    /// Takes the lease of an incomplete upload for the request `lease.token`, when no
    /// other request holds it at `lease.now` and it has neither expired nor been claimed;
    /// its generation goes up by one. The row as it is then, or `None`.
    pub async fn acquire_upload(&self, lease: &LeaseQuery<'_>) -> Result<Option<ResumableRecord>> {
        on_pool!(self, acquire_upload(lease))
    }

    /// Asks the request holding the upload to stop and release it (it sees this when it
    /// renews). False when no request holds it.
    pub async fn ask_takeover(&self, lease: &LeaseQuery<'_>) -> Result<bool> {
        on_pool!(self, ask_takeover(lease))
    }

    /// Extends the lease to `lease.until` and the upload's expiry to `expires_at`.
    pub async fn renew_lease(
        &self,
        lease: &LeaseQuery<'_>,
        expires_at: DateTime<Utc>,
    ) -> Result<Renewal> {
        on_pool!(self, renew_lease(lease, expires_at))
    }

    /// Records how far the upload got. False, and nothing changes, when the lease is lost.
    pub async fn save_progress(
        &self,
        lease: &LeaseQuery<'_>,
        progress: &Progress<'_>,
    ) -> Result<bool> {
        on_pool!(self, save_progress(lease, progress))
    }

    /// Gives the lease up, so the next request takes the upload at once.
    pub async fn release_lease(&self, lease: &LeaseQuery<'_>) -> Result<bool> {
        on_pool!(self, release_lease(lease))
    }

    /// Makes the upload ready media. False, and nothing changes, when the lease is lost.
    pub async fn complete_upload(
        &self,
        lease: &LeaseQuery<'_>,
        done: &Completion<'_>,
    ) -> Result<bool> {
        on_pool!(self, complete_upload(lease, done))
    }

    /// Ends an incomplete upload of `lease.owner` now: it expires at `lease.now` (no
    /// request takes it again; the reaper may remove it) and its holder, if any, is asked
    /// to stop. False when there was no such incomplete upload.
    pub async fn terminate_upload(&self, lease: &LeaseQuery<'_>) -> Result<bool> {
        on_pool!(self, terminate_upload(lease))
    }

    /// The media `owner` may read now: ready, not expired, theirs.
    pub async fn find_readable(
        &self,
        id: MediaId,
        owner: &AccountId,
        now: DateTime<Utc>,
    ) -> Result<Option<MediaRecord>> {
        on_pool!(self, find_readable(id, owner, now))
    }

    /// A page of `owner`'s readable media, newest first, starting after `after`.
    pub async fn list_readable(
        &self,
        owner: &AccountId,
        now: DateTime<Utc>,
        after: Option<ListCursor>,
        limit: u32,
    ) -> Result<Vec<MediaRecord>> {
        on_pool!(self, list_readable(owner, now, after, limit))
    }

    /// For a purge: fences `owner`'s live uploads (claimed, so none can commit any more;
    /// each rolls itself back at its commit), then claims up to `limit` of the account's
    /// other rows (ready, or uploads that crashed) that no other claim holds.
    pub async fn claim_owned(&self, purge: &PurgeQuery) -> Result<(u64, Vec<Claimed>)> {
        on_pool!(self, claim_owned(purge))
    }

    /// Deletes the rows of `ids` that `claim` holds for a purge of `owner`.
    pub async fn delete_claimed_owned(
        &self,
        ids: &[MediaId],
        claim: uuid::Uuid,
        owner: &AccountId,
    ) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        on_pool!(self, delete_claimed_owned(ids, claim, owner))
    }

    /// How many rows `owner` has, whatever their state.
    pub async fn count_owned(&self, owner: &AccountId) -> Result<u64> {
        on_pool!(self, count_owned(owner))
    }

    /// Any row with this id, whatever its state (tests and operations).
    pub async fn get(&self, id: MediaId) -> Result<Option<MediaRecord>> {
        on_pool!(self, get(id))
    }

    /// Removes a row. False when there was none.
    pub async fn delete(&self, id: MediaId) -> Result<bool> {
        on_pool!(self, delete(id))
    }

    /// How many rows there are (tests and operations).
    pub async fn count(&self) -> Result<u64> {
        on_pool!(
            self,
            "count",
            |pool| postgres::count(pool).await,
            sqlite::count(pool).await
        )
    }

    /// Claims up to `limit` rows for reaping: expired rows first (oldest expiry first),
    /// then `uploading` rows created before `stale_before`. Rows another claim holds until
    /// after `now` are skipped, never waited for. The claim lasts until `lease_until`.
    pub async fn claim_due(&self, due: &DueQuery) -> Result<Vec<Claimed>> {
        let expired = Due::Expired;
        let mut claimed = on_pool!(
            self,
            "claim_expired",
            |pool| postgres::claim(pool, due, expired, due.limit).await,
            sqlite::claim(pool, due, expired, due.limit).await
        )?;
        let room = due.limit.saturating_sub(claimed.len() as u32);
        if room > 0 {
            let stale = Due::StaleUpload;
            claimed.extend(on_pool!(
                self,
                "claim_stale",
                |pool| postgres::claim(pool, due, stale, room).await,
                sqlite::claim(pool, due, stale, room).await
            )?);
        }
        Ok(claimed)
    }

    /// `claim_due` for dead uploads only (`uploading` rows whose heartbeat is older than
    /// `due.stale_before`), at most `due.limit`: the reaper's quick pass between full ones.
    pub async fn claim_dead_uploads(&self, due: &DueQuery) -> Result<Vec<Claimed>> {
        let stale = Due::StaleUpload;
        on_pool!(
            self,
            "claim_stale",
            |pool| postgres::claim(pool, due, stale, due.limit).await,
            sqlite::claim(pool, due, stale, due.limit).await
        )
    }

    /// The PostgreSQL plans of the statements `claim_due` runs for `due`, with the same
    /// parameters and without running them: the expired claim's plan, then the stale-upload
    /// claim's (each its `EXPLAIN` lines joined by newlines). Tests and operations; SQLite
    /// answers an error.
    pub async fn explain_claim(&self, due: &DueQuery) -> Result<Vec<String>> {
        let mut plans = Vec::new();
        for kind in [Due::Expired, Due::StaleUpload] {
            plans.push(on_pool!(
                self,
                "explain_claim",
                |pool| postgres::explain_claim(pool, due, kind, due.limit).await,
                {
                    let _ = pool;
                    Err(MetadataError::Database(sqlx::Error::Configuration(
                        "explain_claim is implemented for PostgreSQL only".into(),
                    )))
                }
            )?);
        }
        Ok(plans)
    }

    /// Deletes the rows of `ids` that `claim` still holds and that are still due at `now`
    /// (expired, or an upload that never completed); returns how many went.
    pub async fn delete_claimed(
        &self,
        ids: &[MediaId],
        claim: uuid::Uuid,
        now: DateTime<Utc>,
    ) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        on_pool!(
            self,
            "delete_claimed",
            |pool| postgres::delete_claimed(pool, ids, claim, now).await,
            sqlite::delete_claimed(pool, ids, claim, now).await
        )
    }

    /// Gives up `claim` on `ids`, so the next pass (of any replica) retries them at once.
    pub async fn release(&self, ids: &[MediaId], claim: uuid::Uuid) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        on_pool!(self, release(ids, claim))
    }

    /// How many rows have expired at `now` and are still there.
    pub async fn expired_backlog(&self, now: DateTime<Utc>) -> Result<u64> {
        on_pool!(self, expired_backlog(now))
    }

    pub async fn close(&self) {
        match &self.pool {
            Pool::Postgres(pool) => pool.close().await,
            Pool::Sqlite(pool) => pool.close().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::records::passes;

    #[test]
    fn retryable_database_errors() {
        for code in [
            "40001", "40P01", "57014", "57P01", "08006", "53300", "55P03", "5",
        ] {
            assert!(passes(code), "{code}");
        }
        for code in ["23505", "42P01", "22001", "42703", "19"] {
            assert!(!passes(code), "{code}");
        }
    }
}
