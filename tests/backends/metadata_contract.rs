//! One contract for the metadata repository, run against SQLite and PostgreSQL alike.

use chrono::{Duration, DurationRound, Utc};
use media_node::domain::{AccountId, FileExtension, MediaId};
use media_node::metadata::{
    DueQuery, KeyHolder, KeyQuery, KeyedInsert, MediaStatus, Metadata, NewMedia, Pool,
};
use test_support::{Backend, Services, TempDir};

async fn repo(backend: Backend, dir: &TempDir) -> Metadata {
    let url = match backend {
        Backend::Embedded => format!("sqlite://{}", dir.0.join("media.db").display()),
        Backend::Production => test_support::create_database(&Services::from_env()).await,
    };
    let metadata = Metadata::connect(&url, 4).unwrap();
    metadata.migrate().await.unwrap();
    // Migrations are idempotent: a second replica starting applies nothing twice.
    metadata.migrate().await.unwrap();
    metadata
}

/// A `stale_before` that no heartbeat is older than: for rows written in the past on purpose.
const LONG_AGO: chrono::DateTime<Utc> = chrono::DateTime::UNIX_EPOCH;

fn new_media(owner: &str, now: chrono::DateTime<Utc>) -> NewMedia {
    NewMedia {
        id: MediaId::new_random(),
        owner: AccountId::parse(owner).unwrap(),
        extension: FileExtension::parse("jpeg").unwrap(),
        // Millisecond precision is what both backends keep.
        created_at: now,
        expires_at: now + Duration::hours(24),
    }
}

macro_rules! contract {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn sqlite() {
                    super::$name(super::Backend::Embedded).await
                }

                #[tokio::test]
                async fn postgres() {
                    super::$name(super::Backend::Production).await
                }
            }
        )+
    };
}

contract!(
    lifecycle_of_a_row,
    uploading_rows_are_not_readable,
    readability_depends_on_owner_and_expiry,
    mark_ready_only_once_and_only_existing,
    duplicate_ids_are_refused,
    claims_take_due_rows_once,
    the_quick_pass_claims_dead_uploads_only,
    leases_end_and_releases_free_rows,
    concurrent_claims_never_overlap,
    claim_first_then_commit_is_fenced,
    commit_first_then_claim_finds_nothing,
    heartbeats_keep_an_old_upload_live,
    a_stale_upload_can_neither_commit_nor_revive,
    delete_rechecks_the_claimed_state,
    the_multipart_upload_of_a_row_reaches_the_reaper,
    an_idempotency_key_names_one_live_row_per_account,
    a_dead_holder_loses_its_key_and_stays_for_the_reaper,
    a_key_is_taken_off_a_claimed_row_without_hindering_the_reaper,
    racing_keyed_inserts_let_one_win,
    attach_key_only_when_no_live_row_holds_it,
);

fn due(now: chrono::DateTime<Utc>, limit: u32) -> DueQuery {
    DueQuery {
        now,
        stale_before: now - Duration::hours(1),
        limit,
        claim: uuid::Uuid::new_v4(),
        lease_until: now + Duration::minutes(5),
    }
}

/// `n` ready rows that expired an hour before `now`.
async fn expired_rows(repo: &Metadata, n: usize, now: chrono::DateTime<Utc>) -> Vec<MediaId> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let mut media = new_media("acct", now - Duration::hours(25));
        media.expires_at = now - Duration::hours(1);
        repo.insert_uploading(&media).await.unwrap();
        repo.mark_ready(media.id, 1, "00", LONG_AGO).await.unwrap();
        ids.push(media.id);
    }
    ids
}

/// `claim_dead_uploads`: `uploading` rows whose heartbeat is older than `stale_before`
/// (three missed beats), in batches, each once; never expired ready media (they wait for
/// the full pass), a live upload (a fresh heartbeat, however old the row), or a held row.
async fn the_quick_pass_claims_dead_uploads_only(backend: Backend) {
    let dir = TempDir::new();
    let repo = repo(backend, &dir).await;
    let now = now_ms();
    let quick = |limit| DueQuery {
        stale_before: now - Duration::seconds(30),
        ..due(now, limit)
    };
    let expired = expired_rows(&repo, 2, now).await;
    // Live: beat 5 s ago, though started two hours ago.
    let live = new_media("acct", now - Duration::hours(2));
    repo.insert_uploading(&live).await.unwrap();
    assert!(repo
        .heartbeat(live.id, now - Duration::seconds(5), LONG_AGO)
        .await
        .unwrap());
    // Dead: last beat 31 s ago, 40 s ago, and one that never beat after its insert.
    let mut dead = Vec::new();
    for ago in [31, 40, 45] {
        let media = new_media("acct", now - Duration::seconds(45));
        repo.insert_uploading(&media).await.unwrap();
        if ago < 45 {
            assert!(repo
                .heartbeat(media.id, now - Duration::seconds(ago), LONG_AGO)
                .await
                .unwrap());
        }
        dead.push(media.id);
    }

    let first = quick(2);
    let batch = repo.claim_dead_uploads(&first).await.unwrap();
    assert_eq!(batch.len(), 2, "{batch:?}");
    let rest = repo.claim_dead_uploads(&quick(10)).await.unwrap();
    assert_eq!(rest.len(), 1, "{rest:?}");
    let mut claimed: Vec<MediaId> = batch.iter().chain(&rest).map(|c| c.id).collect();
    claimed.sort_by_key(|id| id.to_string());
    dead.sort_by_key(|id| id.to_string());
    assert_eq!(claimed, dead);
    assert!(batch
        .iter()
        .chain(&rest)
        .all(|c| c.status == MediaStatus::Uploading));
    assert!(repo
        .claim_dead_uploads(&quick(10))
        .await
        .unwrap()
        .is_empty());

    // The dead are fenced: a late beat or commit of theirs is refused.
    let stale_before = now - Duration::seconds(30);
    assert!(!repo.heartbeat(dead[0], now, stale_before).await.unwrap());
    assert!(!repo
        .mark_ready(dead[0], 1, "00", stale_before)
        .await
        .unwrap());
    // The full pass still takes the expired media; the live upload stays and commits.
    let full = repo.claim_due(&quick(10)).await.unwrap();
    let mut full: Vec<MediaId> = full.iter().map(|c| c.id).collect();
    full.sort_by_key(|id| id.to_string());
    let mut expired = expired;
    expired.sort_by_key(|id| id.to_string());
    assert_eq!(full, expired);
    assert!(repo
        .mark_ready(live.id, 1, "00", stale_before)
        .await
        .unwrap());
}

async fn claims_take_due_rows_once(backend: Backend) {
    let dir = TempDir::new();
    let repo = repo(backend, &dir).await;
    let now = now_ms();
    let expired = expired_rows(&repo, 5, now).await;
    // Not due: fresh and ready; fresh and uploading (an upload in progress).
    let fresh = new_media("acct", now);
    repo.insert_uploading(&fresh).await.unwrap();
    repo.mark_ready(fresh.id, 1, "00", LONG_AGO).await.unwrap();
    let in_progress = new_media("acct", now - Duration::minutes(10));
    repo.insert_uploading(&in_progress).await.unwrap();
    // Due: an upload that crashed two hours ago.
    let crashed = new_media("acct", now - Duration::hours(2));
    repo.insert_uploading(&crashed).await.unwrap();

    let first = due(now, 4);
    let batch = repo.claim_due(&first).await.unwrap();
    assert_eq!(batch.len(), 4);
    assert!(
        batch.iter().all(|c| expired.contains(&c.id)),
        "expired rows come first"
    );
    let second = due(now, 10);
    let rest = repo.claim_due(&second).await.unwrap();
    assert_eq!(rest.len(), 2, "{rest:?}");
    assert!(rest
        .iter()
        .any(|c| c.id == crashed.id && c.status == MediaStatus::Uploading));
    assert!(repo.claim_due(&due(now, 10)).await.unwrap().is_empty());

    // Only the claim that holds a row may delete it.
    let ids: Vec<MediaId> = batch.iter().map(|c| c.id).collect();
    assert_eq!(
        repo.delete_claimed(&ids, second.claim, now).await.unwrap(),
        0
    );
    assert_eq!(
        repo.delete_claimed(&ids, first.claim, now).await.unwrap(),
        4
    );
    assert_eq!(
        repo.delete_claimed(&ids, first.claim, now).await.unwrap(),
        0
    );
    assert_eq!(repo.count().await.unwrap(), 4);
    assert_eq!(repo.expired_backlog(now).await.unwrap(), 1);
}

async fn leases_end_and_releases_free_rows(backend: Backend) {
    let dir = TempDir::new();
    let repo = repo(backend, &dir).await;
    let now = now_ms();
    expired_rows(&repo, 3, now).await;
    let first = due(now, 10);
    let held = repo.claim_due(&first).await.unwrap();
    assert_eq!(held.len(), 3);
    // Released rows are free at once.
    let released: Vec<MediaId> = held.iter().take(1).map(|c| c.id).collect();
    repo.release(&released, first.claim).await.unwrap();
    let again = repo.claim_due(&due(now, 10)).await.unwrap();
    assert_eq!(again.iter().map(|c| c.id).collect::<Vec<_>>(), released);
    // The others come back only once the lease has ended.
    let later = first.lease_until + Duration::milliseconds(1);
    let after_lease = repo.claim_due(&due(later, 10)).await.unwrap();
    assert_eq!(after_lease.len(), 3, "every lease has ended by then");
}

async fn concurrent_claims_never_overlap(backend: Backend) {
    let dir = TempDir::new();
    let repo = repo(backend, &dir).await;
    let now = now_ms();
    let ids = expired_rows(&repo, 300, now).await;
    let mut claimers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let repo = repo.clone();
        claimers.spawn(async move {
            let mut mine = Vec::new();
            loop {
                let batch = repo.claim_due(&due(now, 7)).await.unwrap();
                if batch.is_empty() {
                    return mine;
                }
                mine.extend(batch.into_iter().map(|c| c.id));
            }
        });
    }
    let all: Vec<MediaId> = claimers.join_all().await.into_iter().flatten().collect();
    let unique: std::collections::HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), unique.len(), "a row was claimed twice");
    assert_eq!(unique.len(), ids.len(), "every due row was claimed");
}

fn now_ms() -> chrono::DateTime<Utc> {
    Utc::now()
        .duration_trunc(Duration::milliseconds(1))
        .unwrap()
}

async fn lifecycle_of_a_row(backend: Backend) {
    let dir = TempDir::new();
    let repo = repo(backend, &dir).await;
    let now = now_ms();
    let media = new_media("acct", now);
    repo.insert_uploading(&media).await.unwrap();
    let row = repo.get(media.id).await.unwrap().unwrap();
    assert_eq!(row.status, MediaStatus::Uploading);
    assert_eq!(row.size_bytes, None);
    assert_eq!(row.sha256, None);
    assert_eq!(row.content_type, "image/jpeg");
    assert_eq!(row.extension.as_str(), "jpeg");
    assert_eq!(row.created_at, now);
    assert_eq!(row.expires_at, now + Duration::hours(24));
    assert_eq!(row.ready_at, None);
    assert_eq!(row.last_modified(), now);

    let before = now_ms();
    assert!(repo
        .mark_ready(media.id, 1234, "ab".repeat(32).as_str(), LONG_AGO)
        .await
        .unwrap());
    let row = repo.get(media.id).await.unwrap().unwrap();
    assert_eq!(row.status, MediaStatus::Ready);
    // The completion is recorded, to the millisecond, and is what the media last changed.
    let ready_at = row.ready_at.expect("ready_at recorded");
    assert!(ready_at >= before && ready_at <= Utc::now(), "{ready_at}");
    assert_eq!(ready_at.timestamp_subsec_micros() % 1000, 0);
    assert_eq!(row.last_modified(), ready_at);
    assert_eq!(row.size_bytes, Some(1234));
    assert_eq!(row.sha256.as_deref(), Some("ab".repeat(32).as_str()));
    assert_eq!(repo.count().await.unwrap(), 1);

    assert!(repo.delete(media.id).await.unwrap());
    assert!(!repo.delete(media.id).await.unwrap());
    assert!(repo.get(media.id).await.unwrap().is_none());
    assert_eq!(repo.count().await.unwrap(), 0);
}

async fn uploading_rows_are_not_readable(backend: Backend) {
    let dir = TempDir::new();
    let repo = repo(backend, &dir).await;
    let media = new_media("acct", now_ms());
    repo.insert_uploading(&media).await.unwrap();
    assert!(repo
        .find_readable(media.id, &media.owner, Utc::now())
        .await
        .unwrap()
        .is_none());
}

async fn readability_depends_on_owner_and_expiry(backend: Backend) {
    let dir = TempDir::new();
    let repo = repo(backend, &dir).await;
    let now = now_ms();
    let media = new_media("owner", now);
    repo.insert_uploading(&media).await.unwrap();
    repo.mark_ready(media.id, 1, "00", LONG_AGO).await.unwrap();

    let found = repo
        .find_readable(media.id, &media.owner, now)
        .await
        .unwrap();
    assert_eq!(found.map(|r| r.id), Some(media.id));
    let stranger = AccountId::parse("stranger").unwrap();
    assert!(repo
        .find_readable(media.id, &stranger, now)
        .await
        .unwrap()
        .is_none());
    let at_expiry = media.expires_at;
    assert!(repo
        .find_readable(media.id, &media.owner, at_expiry)
        .await
        .unwrap()
        .is_none());
    let just_before = at_expiry - Duration::milliseconds(1);
    assert!(repo
        .find_readable(media.id, &media.owner, just_before)
        .await
        .unwrap()
        .is_some());
    let unknown = MediaId::new_random();
    assert!(repo
        .find_readable(unknown, &media.owner, now)
        .await
        .unwrap()
        .is_none());
}

async fn mark_ready_only_once_and_only_existing(backend: Backend) {
    let dir = TempDir::new();
    let repo = repo(backend, &dir).await;
    let media = new_media("acct", now_ms());
    assert!(
        !repo.mark_ready(media.id, 1, "00", LONG_AGO).await.unwrap(),
        "no row yet"
    );
    repo.insert_uploading(&media).await.unwrap();
    assert!(repo.mark_ready(media.id, 1, "00", LONG_AGO).await.unwrap());
    assert!(
        !repo.mark_ready(media.id, 2, "11", LONG_AGO).await.unwrap(),
        "already ready"
    );
    assert_eq!(
        repo.get(media.id).await.unwrap().unwrap().size_bytes,
        Some(1)
    );
}

async fn duplicate_ids_are_refused(backend: Backend) {
    let dir = TempDir::new();
    let repo = repo(backend, &dir).await;
    let media = new_media("acct", now_ms());
    repo.insert_uploading(&media).await.unwrap();
    let again = repo.insert_uploading(&media).await.unwrap_err();
    assert!(
        !again.is_unavailable(),
        "a constraint violation is not an outage"
    );
}

// The fence between a live upload and the reaper, one interleaving at a time. A row is
// either live (the upload may heartbeat and commit it; no claim takes it) or stale (a claim
// may take it; the upload can do neither).

async fn claim_first_then_commit_is_fenced(backend: Backend) {
    let dir = TempDir::new();
    let repo = repo(backend, &dir).await;
    let now = now_ms();
    // The upload started two hours ago and its last heartbeat is as old: stale at `now`.
    let upload = new_media("acct", now - Duration::hours(2));
    repo.insert_uploading(&upload).await.unwrap();
    let claim = due(now, 10);
    let claimed = repo.claim_due(&claim).await.unwrap();
    assert_eq!(
        claimed.iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![upload.id]
    );
    // Even a commit that thinks the row is live (an earlier stale threshold) loses: the
    // row is claimed.
    assert!(!repo.mark_ready(upload.id, 1, "00", LONG_AGO).await.unwrap());
    assert!(!repo.heartbeat(upload.id, now, LONG_AGO).await.unwrap());
    let row = repo.get(upload.id).await.unwrap().unwrap();
    assert_eq!(row.status, MediaStatus::Uploading);
    // The reaper's delete goes through.
    assert_eq!(
        repo.delete_claimed(&[upload.id], claim.claim, now)
            .await
            .unwrap(),
        1
    );
}

async fn commit_first_then_claim_finds_nothing(backend: Backend) {
    let dir = TempDir::new();
    let repo = repo(backend, &dir).await;
    let now = now_ms();
    let upload = new_media("acct", now - Duration::minutes(30));
    repo.insert_uploading(&upload).await.unwrap();
    let stale_before = now - Duration::hours(1);
    assert!(repo
        .mark_ready(upload.id, 1, "00", stale_before)
        .await
        .unwrap());
    // Much later, with a threshold that would make its heartbeat stale: it is ready, so it
    // is not a crashed upload, and not expired either.
    let later = due(now + Duration::hours(2), 10);
    assert!(repo.claim_due(&later).await.unwrap().is_empty());
}

async fn heartbeats_keep_an_old_upload_live(backend: Backend) {
    let dir = TempDir::new();
    let repo = repo(backend, &dir).await;
    let now = now_ms();
    // Started two hours ago (a slow phone), heartbeat refreshed a minute ago.
    let upload = new_media("acct", now - Duration::hours(2));
    repo.insert_uploading(&upload).await.unwrap();
    let stale_before = now - Duration::hours(1);
    assert!(repo
        .heartbeat(
            upload.id,
            now - Duration::minutes(1),
            now - Duration::hours(3)
        )
        .await
        .unwrap());
    assert!(
        repo.claim_due(&due(now, 10)).await.unwrap().is_empty(),
        "a live upload is not claimed"
    );
    assert!(repo
        .mark_ready(upload.id, 1, "00", stale_before)
        .await
        .unwrap());
}

async fn a_stale_upload_can_neither_commit_nor_revive(backend: Backend) {
    let dir = TempDir::new();
    let repo = repo(backend, &dir).await;
    let now = now_ms();
    let upload = new_media("acct", now - Duration::hours(2));
    repo.insert_uploading(&upload).await.unwrap();
    let stale_before = now - Duration::hours(1);
    // No reaper has claimed it yet, but one may at any moment.
    assert!(!repo.heartbeat(upload.id, now, stale_before).await.unwrap());
    assert!(!repo
        .mark_ready(upload.id, 1, "00", stale_before)
        .await
        .unwrap());
    let claimed = repo.claim_due(&due(now, 10)).await.unwrap();
    assert_eq!(claimed.len(), 1, "still the reaper's to take");
}

async fn delete_rechecks_the_claimed_state(backend: Backend) {
    let dir = TempDir::new();
    let repo = repo(backend, &dir).await;
    let now = now_ms();
    let ids = expired_rows(&repo, 2, now).await;
    let claim = due(now, 10);
    assert_eq!(repo.claim_due(&claim).await.unwrap().len(), 2);
    // Judged at an instant before the expiry, the rows are not due: nothing goes.
    let before_expiry = now - Duration::hours(2);
    assert_eq!(
        repo.delete_claimed(&ids, claim.claim, before_expiry)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        repo.delete_claimed(&ids, claim.claim, now).await.unwrap(),
        2
    );
}

async fn the_multipart_upload_of_a_row_reaches_the_reaper(backend: Backend) {
    let dir = TempDir::new();
    let repo = repo(backend, &dir).await;
    let now = now_ms();
    let stale_before = now - Duration::hours(1);
    let recorded = new_media("acct", now - Duration::minutes(5));
    repo.insert_uploading(&recorded).await.unwrap();
    assert!(repo
        .set_multipart_upload(recorded.id, "", stale_before)
        .await
        .unwrap());
    assert!(repo
        .set_multipart_upload(recorded.id, "upload-1", stale_before)
        .await
        .unwrap());
    let being_created = new_media("acct", now - Duration::minutes(5));
    repo.insert_uploading(&being_created).await.unwrap();
    assert!(repo
        .set_multipart_upload(being_created.id, "", stale_before)
        .await
        .unwrap());
    // A stale row cannot record one any more (the reaper may be cleaning it).
    let stale = new_media("acct", now - Duration::hours(2));
    repo.insert_uploading(&stale).await.unwrap();
    assert!(!repo
        .set_multipart_upload(stale.id, "upload-2", stale_before)
        .await
        .unwrap());

    // Two hours later all three are crashed uploads, and the claim says what each left.
    let claimed = repo
        .claim_due(&due(now + Duration::hours(2), 10))
        .await
        .unwrap();
    let upload_of = |id| {
        claimed
            .iter()
            .find(|c| c.id == id)
            .map(|c| c.multipart_upload_id.clone())
    };
    assert_eq!(upload_of(recorded.id), Some(Some("upload-1".to_owned())));
    assert_eq!(upload_of(being_created.id), Some(Some(String::new())));
    assert_eq!(upload_of(stale.id), Some(None));
}

/// PostgreSQL over TLS (`scripts/postgres-tls`: a server that refuses unencrypted
/// connections, with a certificate for "localhost" signed by a CA of its own):
/// `sslmode=require` and `verify-full` with `sslrootcert` work; `verify-full` refuses a
/// server whose certificate does not match the host or was signed by another CA.
#[tokio::test]
async fn postgres_over_tls() {
    let base = std::env::var("MEDIA_NODE_TEST_TLS_DATABASE_URL")
        .expect("MEDIA_NODE_TEST_TLS_DATABASE_URL: run the tests with scripts/test");
    let ca = std::env::var("MEDIA_NODE_TEST_TLS_CA").unwrap();
    let other_ca = std::env::var("MEDIA_NODE_TEST_TLS_OTHER_CA").unwrap();
    let with = |host: &str, query: &str| {
        let mut url = url::Url::parse(&base).unwrap();
        url.set_host(Some(host)).unwrap();
        url.set_query(Some(query));
        url.to_string()
    };
    let encrypted = |metadata: Metadata| async move {
        let Pool::Postgres(pool) = metadata.pool() else {
            unreachable!()
        };
        sqlx::query_scalar::<_, bool>("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(pool)
            .await
    };

    // The server takes no unencrypted connection at all.
    let plain = Metadata::connect(&with("localhost", "sslmode=disable"), 1).unwrap();
    assert!(
        plain.ping().await.is_err(),
        "an unencrypted connection was accepted"
    );

    for query in [
        "sslmode=require".to_owned(),
        format!("sslmode=verify-full&sslrootcert={ca}"),
    ] {
        let metadata = Metadata::connect(&with("localhost", &query), 2).unwrap();
        metadata.migrate().await.unwrap();
        let media = new_media("acct", now_ms());
        metadata.insert_uploading(&media).await.unwrap();
        assert!(metadata
            .mark_ready(media.id, 1, "00", LONG_AGO)
            .await
            .unwrap());
        assert!(metadata
            .find_readable(media.id, &media.owner, now_ms())
            .await
            .unwrap()
            .is_some());
        assert!(encrypted(metadata.clone()).await.unwrap(), "{query}");
        assert!(metadata.delete(media.id).await.unwrap());
    }

    // verify-full: the certificate names "localhost", not 127.0.0.1 ...
    let wrong_name = Metadata::connect(
        &with(
            "127.0.0.1",
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        ),
        1,
    )
    .unwrap();
    let refused = wrong_name.ping().await.unwrap_err();
    assert!(refused.is_unavailable(), "{refused:?}");
    // ... and was not signed by this CA.
    let wrong_ca = Metadata::connect(
        &with(
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={other_ca}"),
        ),
        1,
    )
    .unwrap();
    assert!(wrong_ca.ping().await.is_err());
}

fn key_query<'a>(owner: &'a AccountId, key: &'a str, now: chrono::DateTime<Utc>) -> KeyQuery<'a> {
    KeyQuery {
        owner,
        key,
        now,
        stale_before: now - Duration::hours(1),
    }
}

async fn an_idempotency_key_names_one_live_row_per_account(backend: Backend) {
    let dir = TempDir::new();
    let repo = repo(backend, &dir).await;
    let now = now_ms();
    let stale_before = now - Duration::hours(1);
    let first = new_media("acct", now);
    assert_eq!(
        repo.insert_uploading_keyed(&first, "k", stale_before)
            .await
            .unwrap(),
        KeyedInsert::Inserted
    );
    assert_eq!(
        repo.get(first.id).await.unwrap().unwrap().idempotency_key,
        Some("k".to_owned())
    );
    // While it streams, another insert with the key writes nothing and names it.
    let second = new_media("acct", now);
    assert_eq!(
        repo.insert_uploading_keyed(&second, "k", stale_before)
            .await
            .unwrap(),
        KeyedInsert::Held(KeyHolder::Streaming(first.id))
    );
    assert!(repo.get(second.id).await.unwrap().is_none());
    // Another account, or another key: independent.
    let other_account = new_media("other", now);
    assert_eq!(
        repo.insert_uploading_keyed(&other_account, "k", stale_before)
            .await
            .unwrap(),
        KeyedInsert::Inserted
    );
    let other_key = new_media("acct", now);
    assert_eq!(
        repo.insert_uploading_keyed(&other_key, "K", stale_before)
            .await
            .unwrap(),
        KeyedInsert::Inserted
    );
    // Ready: named with its hash.
    assert!(repo
        .mark_ready(first.id, 3, "abc", stale_before)
        .await
        .unwrap());
    let holder = KeyHolder::Ready {
        id: first.id,
        sha256: "abc".to_owned(),
        extension: first.extension.clone(),
    };
    assert_eq!(
        repo.insert_uploading_keyed(&second, "k", stale_before)
            .await
            .unwrap(),
        KeyedInsert::Held(holder.clone())
    );
    let owner = AccountId::parse("acct").unwrap();
    assert_eq!(
        repo.key_holder(&key_query(&owner, "k", now)).await.unwrap(),
        Some(holder)
    );
    assert_eq!(repo.count().await.unwrap(), 3);
    // A failed upload gives its key up before its clean-up: the row stays, keyless.
    assert!(repo.clear_key(other_key.id).await.unwrap());
    assert!(!repo.clear_key(other_key.id).await.unwrap());
    let row = repo.get(other_key.id).await.unwrap().unwrap();
    assert_eq!(
        (row.status, row.idempotency_key),
        (MediaStatus::Uploading, None)
    );
    assert_eq!(
        repo.key_holder(&key_query(&owner, "K", now)).await.unwrap(),
        None
    );
    // Deleted: the key is free.
    assert!(repo.delete(first.id).await.unwrap());
    assert_eq!(
        repo.key_holder(&key_query(&owner, "k", now)).await.unwrap(),
        None
    );
    assert_eq!(
        repo.insert_uploading_keyed(&second, "k", stale_before)
            .await
            .unwrap(),
        KeyedInsert::Inserted
    );
}

async fn a_dead_holder_loses_its_key_and_stays_for_the_reaper(backend: Backend) {
    let dir = TempDir::new();
    let repo = repo(backend, &dir).await;
    let now = now_ms();
    let owner = AccountId::parse("acct").unwrap();
    // Crashed two hours ago, heartbeat as old.
    let crashed = new_media("acct", now - Duration::hours(2));
    assert_eq!(
        repo.insert_uploading_keyed(&crashed, "crashed", LONG_AGO)
            .await
            .unwrap(),
        KeyedInsert::Inserted
    );
    // Ready, expired an hour ago.
    let mut expired = new_media("acct", now - Duration::hours(25));
    expired.expires_at = now - Duration::hours(1);
    assert_eq!(
        repo.insert_uploading_keyed(&expired, "expired", LONG_AGO)
            .await
            .unwrap(),
        KeyedInsert::Inserted
    );
    assert!(repo
        .mark_ready(expired.id, 1, "00", LONG_AGO)
        .await
        .unwrap());
    // Started two hours ago, heartbeat a minute ago: live.
    let slow = new_media("acct", now - Duration::hours(2));
    assert_eq!(
        repo.insert_uploading_keyed(&slow, "slow", LONG_AGO)
            .await
            .unwrap(),
        KeyedInsert::Inserted
    );
    assert!(repo
        .heartbeat(slow.id, now - Duration::minutes(1), LONG_AGO)
        .await
        .unwrap());

    for key in ["crashed", "expired"] {
        assert_eq!(
            repo.key_holder(&key_query(&owner, key, now)).await.unwrap(),
            None,
            "{key}"
        );
    }
    assert_eq!(
        repo.key_holder(&key_query(&owner, "slow", now))
            .await
            .unwrap(),
        Some(KeyHolder::Streaming(slow.id))
    );
    assert_eq!(
        repo.release_dead_key(&key_query(&owner, "slow", now))
            .await
            .unwrap(),
        0,
        "a live upload keeps its key"
    );

    let mut successors = Vec::new();
    for key in ["crashed", "expired"] {
        let successor = new_media("acct", now);
        assert_eq!(
            repo.insert_uploading_keyed(&successor, key, now - Duration::hours(1))
                .await
                .unwrap(),
            KeyedInsert::Inserted,
            "{key}"
        );
        assert_eq!(
            repo.get(successor.id)
                .await
                .unwrap()
                .unwrap()
                .idempotency_key,
            Some(key.to_owned())
        );
        successors.push(successor.id);
    }
    for old in [crashed.id, expired.id] {
        let row = repo.get(old).await.unwrap().expect("the row stays");
        assert_eq!(row.idempotency_key, None);
    }
    // The reaper takes exactly the dead rows, and may delete them.
    let batch = due(now, 10);
    let claimed = repo.claim_due(&batch).await.unwrap();
    let mut ids: Vec<MediaId> = claimed.iter().map(|c| c.id).collect();
    ids.sort_by_key(|id| id.to_string());
    let mut dead = vec![crashed.id, expired.id];
    dead.sort_by_key(|id| id.to_string());
    assert_eq!(ids, dead);
    assert_eq!(
        repo.delete_claimed(&ids, batch.claim, now).await.unwrap(),
        2
    );
    assert_eq!(repo.count().await.unwrap(), 3);
    assert_eq!(
        repo.insert_uploading_keyed(&new_media("acct", now), "slow", now - Duration::hours(1))
            .await
            .unwrap(),
        KeyedInsert::Held(KeyHolder::Streaming(slow.id))
    );
}

async fn a_key_is_taken_off_a_claimed_row_without_hindering_the_reaper(backend: Backend) {
    let dir = TempDir::new();
    let repo = repo(backend, &dir).await;
    let now = now_ms();
    let owner = AccountId::parse("acct").unwrap();
    let crashed = new_media("acct", now - Duration::hours(2));
    repo.insert_uploading_keyed(&crashed, "k", LONG_AGO)
        .await
        .unwrap();
    // The reaper claims the crashed upload first, and is busy with its object.
    let batch = due(now, 10);
    let claimed = repo.claim_due(&batch).await.unwrap();
    assert_eq!(claimed.len(), 1);
    // A new upload takes the key meanwhile.
    let successor = new_media("acct", now);
    assert_eq!(
        repo.insert_uploading_keyed(&successor, "k", now - Duration::hours(1))
            .await
            .unwrap(),
        KeyedInsert::Inserted
    );
    // The reaper's claim still deletes the crashed row, and only it.
    assert_eq!(
        repo.delete_claimed(&[crashed.id, successor.id], batch.claim, now)
            .await
            .unwrap(),
        1
    );
    assert!(repo.get(crashed.id).await.unwrap().is_none());
    assert_eq!(
        repo.key_holder(&key_query(&owner, "k", now)).await.unwrap(),
        Some(KeyHolder::Streaming(successor.id))
    );
}

async fn racing_keyed_inserts_let_one_win(backend: Backend) {
    let dir = TempDir::new();
    let repo = repo(backend, &dir).await;
    let now = now_ms();
    // A crashed holder first, so every racer also clears its key.
    let crashed = new_media("acct", now - Duration::hours(2));
    repo.insert_uploading_keyed(&crashed, "race", LONG_AGO)
        .await
        .unwrap();
    let mut racers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let repo = repo.clone();
        racers.spawn(async move {
            let media = new_media("acct", now);
            let outcome = repo
                .insert_uploading_keyed(&media, "race", now - Duration::hours(1))
                .await
                .unwrap();
            (media.id, outcome)
        });
    }
    let outcomes = racers.join_all().await;
    let winners: Vec<MediaId> = outcomes
        .iter()
        .filter(|(_, o)| *o == KeyedInsert::Inserted)
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(winners.len(), 1, "{outcomes:?}");
    for (_, outcome) in &outcomes {
        assert!(
            matches!(outcome, KeyedInsert::Inserted | KeyedInsert::Contended)
                || *outcome == KeyedInsert::Held(KeyHolder::Streaming(winners[0])),
            "{outcome:?}"
        );
    }
    // The winner and the crashed row (keyless now, for the reaper).
    assert_eq!(repo.count().await.unwrap(), 2);
    assert_eq!(
        repo.get(crashed.id).await.unwrap().unwrap().idempotency_key,
        None
    );
}

async fn attach_key_only_when_no_live_row_holds_it(backend: Backend) {
    let dir = TempDir::new();
    let repo = repo(backend, &dir).await;
    let now = now_ms();
    let owner = AccountId::parse("acct").unwrap();
    let ready = |media: NewMedia| {
        let repo = repo.clone();
        async move {
            repo.insert_uploading(&media).await.unwrap();
            assert!(repo.mark_ready(media.id, 1, "00", LONG_AGO).await.unwrap());
            media.id
        }
    };
    // `a` expires in an hour, `b` in a day.
    let mut short = new_media("acct", now);
    short.expires_at = now + Duration::hours(1);
    let a = ready(short).await;
    let b = ready(new_media("acct", now)).await;
    let query = key_query(&owner, "k", now);
    assert!(repo.attach_key(a, &query).await.unwrap());
    // Held by `a`: `b` cannot have it (the unique index decides), and `a` keeps it.
    assert!(!repo.attach_key(b, &query).await.unwrap());
    assert_eq!(repo.get(b).await.unwrap().unwrap().idempotency_key, None);
    assert_eq!(
        repo.key_holder(&query).await.unwrap(),
        Some(KeyHolder::Ready {
            id: a,
            sha256: "00".to_owned(),
            extension: FileExtension::parse("jpeg").unwrap(),
        })
    );
    // Two hours later `a` has expired: the key moves to `b`.
    let later = key_query(&owner, "k", now + Duration::hours(2));
    assert!(repo.attach_key(b, &later).await.unwrap());
    assert_eq!(repo.get(a).await.unwrap().unwrap().idempotency_key, None);
    assert_eq!(
        repo.key_holder(&later).await.unwrap(),
        Some(KeyHolder::Ready {
            id: b,
            sha256: "00".to_owned(),
            extension: FileExtension::parse("jpeg").unwrap(),
        })
    );
    // An uploading row never gets a key this way.
    let uploading = new_media("other", now);
    repo.insert_uploading(&uploading).await.unwrap();
    let other = AccountId::parse("other").unwrap();
    assert!(!repo
        .attach_key(uploading.id, &key_query(&other, "k", now))
        .await
        .unwrap());
}
