//! One contract for the metadata repository, run against SQLite and PostgreSQL alike.

#[path = "api/helpers.rs"]
mod helpers;

use chrono::{Duration, DurationRound, Utc};
use helpers::{Backend, Services, TempDir};
use media_node::domain::{AccountId, FileExtension, MediaId};
use media_node::metadata::{DueQuery, MediaStatus, Metadata, NewMedia};

async fn repo(backend: Backend, dir: &TempDir) -> Metadata {
    let url = match backend {
        Backend::Embedded => format!("sqlite://{}", dir.0.join("media.db").display()),
        Backend::Production => helpers::create_database(&Services::from_env()).await,
    };
    let metadata = Metadata::connect(&url, 4).unwrap();
    metadata.migrate().await.unwrap();
    // Migrations are idempotent: a second replica starting applies nothing twice.
    metadata.migrate().await.unwrap();
    metadata
}

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
    leases_end_and_releases_free_rows,
    concurrent_claims_never_overlap,
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
        repo.mark_ready(media.id, 1, "00").await.unwrap();
        ids.push(media.id);
    }
    ids
}

async fn claims_take_due_rows_once(backend: Backend) {
    let dir = TempDir::new();
    let repo = repo(backend, &dir).await;
    let now = now_ms();
    let expired = expired_rows(&repo, 5, now).await;
    // Not due: fresh and ready; fresh and uploading (an upload in progress).
    let fresh = new_media("acct", now);
    repo.insert_uploading(&fresh).await.unwrap();
    repo.mark_ready(fresh.id, 1, "00").await.unwrap();
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
    assert_eq!(repo.delete_claimed(&ids, second.claim).await.unwrap(), 0);
    assert_eq!(repo.delete_claimed(&ids, first.claim).await.unwrap(), 4);
    assert_eq!(repo.delete_claimed(&ids, first.claim).await.unwrap(), 0);
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

    assert!(repo
        .mark_ready(media.id, 1234, "ab".repeat(32).as_str())
        .await
        .unwrap());
    let row = repo.get(media.id).await.unwrap().unwrap();
    assert_eq!(row.status, MediaStatus::Ready);
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
    repo.mark_ready(media.id, 1, "00").await.unwrap();

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
        !repo.mark_ready(media.id, 1, "00").await.unwrap(),
        "no row yet"
    );
    repo.insert_uploading(&media).await.unwrap();
    assert!(repo.mark_ready(media.id, 1, "00").await.unwrap());
    assert!(
        !repo.mark_ready(media.id, 2, "11").await.unwrap(),
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
