//! Reaping rate: 10 000 expired media on PostgreSQL + the S3 server, removed by one reaper
//! pass, against deleting the same number of objects directly (bulk DeleteObjects in
//! batches of the same size), in one run.
//!
//! Run: `scripts/bench reaper`.

use std::time::Instant;

use futures_util::StreamExt;
use media_node::jobs::reaper::Reaper;
use media_node::metadata::Metadata;
use media_node::metrics::Metrics;
use media_node::storage::Storage;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use test_support::{create_database, seed_expired, test_settings, Backend, Services, TempDir};
use tokio::sync::watch;

const MEDIA: usize = 10_000;
const BATCH: u32 = 500;

#[tokio::main]
async fn main() {
    let dir = TempDir::new();
    let services = Services::from_env();
    let mut settings = test_settings(Backend::Production, &dir).await;
    settings.reaper.batch_size = BATCH;
    let metadata = Metadata::connect(&create_database(&services).await, 8).unwrap();
    metadata.migrate().await.unwrap();
    let storage = Storage::from_settings(&settings.storage).unwrap();

    eprintln!("seeding {MEDIA} expired media ...");
    seed_expired(&metadata, &storage, MEDIA).await;
    let metrics = Metrics::new().unwrap();
    let reaper = Reaper::new(
        metadata.clone(),
        storage.clone(),
        settings.reaper.clone(),
        metrics.reaper.clone(),
    );
    let (_keep, shutdown) = watch::channel(false);
    let started = Instant::now();
    let report = reaper.pass(&shutdown).await;
    let reaped = started.elapsed();
    assert_eq!(report.deleted, MEDIA as u64);
    assert_eq!(report.errors, 0);
    assert_eq!(metadata.count().await.unwrap(), 0);

    eprintln!("writing {MEDIA} objects for the direct run ...");
    let store = storage.store().clone();
    let keys: Vec<Path> = (0..MEDIA)
        .map(|i| Path::from(format!("bench-direct-delete/{i}")))
        .collect();
    futures_util::stream::iter(keys.clone())
        .map(|key| {
            let store = store.clone();
            async move { store.put(&key, b"object".to_vec().into()).await.unwrap() }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let started = Instant::now();
    for chunk in keys.chunks(BATCH as usize) {
        let paths = futures_util::stream::iter(chunk.iter().cloned().map(Ok).collect::<Vec<_>>());
        let deleted: Vec<_> = store.delete_stream(paths.boxed()).collect().await;
        assert!(deleted.iter().all(Result::is_ok));
    }
    let direct = started.elapsed();

    let rate = |d: std::time::Duration| MEDIA as f64 / d.as_secs_f64();
    println!("| measurement | media/s | seconds for {MEDIA} |");
    println!("| --- | --- | --- |");
    println!(
        "| reaper pass (claim, bulk delete objects, delete rows; batches of {BATCH}) | {:.0} | {:.2} |",
        rate(reaped),
        reaped.as_secs_f64()
    );
    println!(
        "| direct bulk delete of the same number of objects (batches of {BATCH}) | {:.0} | {:.2} |",
        rate(direct),
        direct.as_secs_f64()
    );
    println!("\nreaper / direct: {:.2}", rate(reaped) / rate(direct));
}
