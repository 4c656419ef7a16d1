//! One contract for the metadata repository, run against SQLite and PostgreSQL alike.

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

use chrono::{Duration, DurationRound, Utc};
use helpers::{Backend, Services, TempDir};
use media_node::domain::{AccountId, FileExtension, MediaId};
use media_node::metadata::{MediaStatus, Metadata, NewMedia};

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
);

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
