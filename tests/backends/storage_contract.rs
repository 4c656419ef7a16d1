//! The storage seam against local disk and the real S3 server: keys, deletes that tolerate
//! missing objects, and the multipart listing that the "nothing left behind" checks of the
//! other tests rely on (proved here to see what it should see).

use futures_util::TryStreamExt;
use media_node::domain::MediaId;
use media_node::storage::Storage;
use object_store::{ObjectStoreExt, PutPayload};
use test_support::{test_settings, Backend, TempDir};

async fn storage(backend: Backend, dir: &TempDir) -> Storage {
    let settings = test_settings(backend, dir).await;
    Storage::from_settings(&settings.storage).unwrap()
}

#[tokio::test]
async fn s3_multipart_uploads_are_listed_and_aborted() {
    let dir = TempDir::new();
    let storage = storage(Backend::Production, &dir).await;
    let id = MediaId::new_random();
    assert!(storage.pending_uploads(id).await.unwrap().is_empty());

    let mut upload = storage
        .store()
        .put_multipart(&storage.key(id))
        .await
        .unwrap();
    upload
        .put_part(PutPayload::from(vec![7u8; 5 * 1024 * 1024]))
        .await
        .unwrap();
    let pending = storage.pending_uploads(id).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].key, storage.key(id).to_string());
    assert_eq!(storage.all_pending_uploads().await.unwrap(), pending);

    storage.abort_pending(&pending[0]).await.unwrap();
    assert!(storage.pending_uploads(id).await.unwrap().is_empty());
    // Aborting twice is harmless.
    storage.abort_pending(&pending[0]).await.unwrap();
    assert!(!storage.exists(id).await.unwrap());
}

#[tokio::test]
async fn s3_multipart_uploads_by_id_complete_and_abort_without_listing() {
    let dir = TempDir::new();
    let storage = storage(Backend::Production, &dir).await;
    assert!(storage.uploads_by_id());
    // Completed from parts sent out of order.
    let id = MediaId::new_random();
    let upload = storage.create_multipart(id).await.unwrap();
    let second = storage
        .put_part(id, &upload, 1, PutPayload::from(vec![2u8; 10]))
        .await
        .unwrap();
    let first = storage
        .put_part(id, &upload, 0, PutPayload::from(vec![1u8; 5 * 1024 * 1024]))
        .await
        .unwrap();
    storage
        .complete_multipart(id, &upload, vec![first, second])
        .await
        .unwrap();
    let body = storage
        .store()
        .get(&storage.key(id))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(body.len(), 5 * 1024 * 1024 + 10);
    assert_eq!(&body[body.len() - 10..], &[2u8; 10]);

    // Aborted by the id saved in a row, twice without harm.
    let other = MediaId::new_random();
    let upload = storage.create_multipart(other).await.unwrap();
    assert_eq!(storage.pending_uploads(other).await.unwrap().len(), 1);
    storage
        .abort_unfinished(other, Some(&upload))
        .await
        .unwrap();
    assert!(storage.pending_uploads(other).await.unwrap().is_empty());
    storage
        .abort_unfinished(other, Some(&upload))
        .await
        .unwrap();
    // A row that says "being created" is looked for by listing.
    storage.create_multipart(other).await.unwrap();
    storage.abort_unfinished(other, Some("")).await.unwrap();
    assert!(storage.pending_uploads(other).await.unwrap().is_empty());
}

#[tokio::test]
async fn local_staging_files_are_found_and_removed() {
    let dir = TempDir::new();
    let storage = storage(Backend::Embedded, &dir).await;
    assert!(!storage.uploads_by_id());
    let id = MediaId::new_random();
    let mut upload = storage
        .store()
        .put_multipart(&storage.key(id))
        .await
        .unwrap();
    upload
        .put_part(PutPayload::from(vec![7u8; 1024]))
        .await
        .unwrap();
    // A crash: the writer is neither completed nor aborted.
    std::mem::forget(upload);
    let pending = storage.pending_uploads(id).await.unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert!(pending[0].key.ends_with(&format!("{id}#1")), "{pending:?}");
    assert_eq!(storage.all_pending_uploads().await.unwrap(), pending);
    storage.abort_unfinished(id, None).await.unwrap();
    assert!(storage.all_pending_uploads().await.unwrap().is_empty());
}

macro_rules! contract {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn local_disk() {
                    super::$name(super::Backend::Embedded).await
                }

                #[tokio::test]
                async fn s3() {
                    super::$name(super::Backend::Production).await
                }
            }
        )+
    };
}

contract!(
    objects_round_trip_and_delete_is_idempotent,
    readiness_probe_answers
);

async fn objects_round_trip_and_delete_is_idempotent(backend: Backend) {
    let dir = TempDir::new();
    let storage = storage(backend, &dir).await;
    let id = MediaId::new_random();
    assert!(storage.key(id).to_string().ends_with(&id.to_string()));
    storage
        .store()
        .put(&storage.key(id), PutPayload::from(b"hello".to_vec()))
        .await
        .unwrap();
    assert!(storage.exists(id).await.unwrap());
    assert_eq!(
        storage.object_keys().await.unwrap(),
        vec![storage.key(id).to_string()]
    );
    let part = storage
        .get(id, Some(1..3))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&part[..], b"el");
    // The service's own reader, over ranges that cross its chunk boundary.
    let big = test_support::content(700 * 1024 + 3, 9);
    storage
        .store()
        .put(&storage.key(id), PutPayload::from(big.clone()))
        .await
        .unwrap();
    for range in [
        None,
        Some(0..1),
        Some(100..300_000),
        Some(262_143..700 * 1024 + 3),
    ] {
        let result = storage.get(id, range.clone()).await.unwrap();
        let chunks: Vec<bytes::Bytes> = Storage::body(result).try_collect().await.unwrap();
        let got: Vec<u8> = chunks.concat();
        let want = match &range {
            Some(r) => &big[r.start as usize..r.end as usize],
            None => &big[..],
        };
        assert!(got == want, "range {range:?}");
    }
    storage.delete(id).await.unwrap();
    assert!(!storage.exists(id).await.unwrap());
    storage.delete(id).await.unwrap();
    let missing = storage.get(id, None).await.unwrap_err();
    assert!(missing.is_not_found());
}

async fn readiness_probe_answers(backend: Backend) {
    let dir = TempDir::new();
    storage(backend, &dir).await.ping().await.unwrap();
}
