//! Three `media-node` processes over one PostgreSQL database and one S3 bucket reap the
//! same expired media at the same moment. Afterwards no row and no object remain, and the
//! replicas' `media_reaper_deleted_total` add up to exactly the number of media: no row was
//! processed twice.

use std::time::Duration;

use media_node::metadata::Metadata;
use media_node::storage::Storage;
use test_support::{create_database, ServiceProcess, Services, TempDir};

const MEDIA: usize = 1_200;
const REPLICAS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_reap_each_media_exactly_once() {
    let dir = TempDir::new();
    let services = Services::from_env();
    let database = create_database(&services).await;
    let mut settings = test_support::test_settings(test_support::Backend::Production, &dir).await;
    settings.database.url = media_node::settings::Secret::new(database.clone());

    // Everything expires a few seconds from now, when all replicas are up and polling.
    let metadata = Metadata::connect(&database, 8).unwrap();
    metadata.migrate().await.unwrap();
    let storage = Storage::from_settings(&settings.storage).unwrap();
    let expires_at = chrono::Utc::now() + chrono::Duration::seconds(6);
    let seeded = test_support::seed(&metadata, &storage, MEDIA, expires_at).await;
    assert_eq!(seeded.len(), MEDIA);
    assert_eq!(storage.object_keys().await.unwrap().len(), MEDIA);

    let mut env = test_support::process_env(&settings);
    env.extend([
        ("APP_ENV", "production".to_owned()),
        ("MEDIA_NODE__REAPER__INTERVAL", "100ms".to_owned()),
        ("MEDIA_NODE__REAPER__BATCH_SIZE", "40".to_owned()),
    ]);
    let mut replicas: Vec<ServiceProcess> = (0..REPLICAS)
        .map(|_| ServiceProcess::start(&dir.0, &env))
        .collect();
    for replica in &mut replicas {
        replica.wait_ready().await;
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let rows = metadata.count().await.unwrap();
        if rows == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{rows} rows left after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        storage.object_keys().await.unwrap().is_empty(),
        "objects left"
    );

    let mut total = 0.0;
    let mut shares = Vec::new();
    for replica in &replicas {
        let deleted = replica.metric("media_reaper_deleted_total").await;
        // Each replica reports the backlog it saw at the end of its last pass.
        let mut backlog = replica.metric("media_expired_backlog").await;
        for _ in 0..50 {
            if backlog == 0.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            backlog = replica.metric("media_expired_backlog").await;
        }
        assert_eq!(backlog, 0.0);
        shares.push(deleted);
        total += deleted;
    }
    eprintln!("deleted per replica: {shares:?}");
    assert_eq!(total, MEDIA as f64, "per replica: {shares:?}");
    for replica in replicas {
        let (status, logs) = replica.terminate();
        assert!(status.success(), "{logs}");
    }
}
