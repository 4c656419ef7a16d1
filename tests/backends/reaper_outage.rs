//! The S3 server stops in the middle of the reaper's work and comes back. While it is down
//! nothing is lost from the database (every media is either fully reaped or still has its
//! row), no object is left without a row, and once storage is back the next passes finish.
//!
//! This test runs its own Garage (other ports, its own state) through `scripts/s3-server`,
//! so killing it disturbs no other test.

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use media_node::jobs::reaper::Reaper;
use media_node::metadata::Metadata;
use media_node::metrics::Metrics;
use media_node::settings::{S3Settings, Secret, StorageSettings};
use media_node::storage::Storage;
use test_support::{create_database, seed_expired, Services, TempDir};
use tokio::sync::watch;

const MEDIA: usize = 3_000;
/// Small batches make a pass long enough for the server to go down in the middle of it.
const BATCH: u32 = 5;

/// `scripts/s3-server CMD` for this test's own Garage; the export lines it prints.
fn s3_server(state: &Path, command: &str) -> Vec<(String, String)> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/s3-server");
    let out = Command::new(script)
        .arg(command)
        .env("MEDIA_NODE_S3_DIR", state)
        .env("MEDIA_NODE_S3_PORT", "4900")
        .env("MEDIA_NODE_S3_RPC_PORT", "4901")
        .env("MEDIA_NODE_S3_ADMIN_PORT", "4903")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "s3-server {command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches(['"', '\'']).to_owned()))
        .collect()
}

struct OwnGarage<'a>(&'a Path);

impl Drop for OwnGarage<'_> {
    fn drop(&mut self) {
        s3_server(self.0, "reset");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_outage_during_a_pass_loses_nothing() {
    let dir = TempDir::new();
    let state = dir.0.join("garage");
    let exports = s3_server(&state, "start");
    let _garage = OwnGarage(&state);
    let var = |name: &str| {
        exports
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    let storage_settings = StorageSettings {
        url: format!("s3://{}/outage", var("MEDIA_NODE_TEST_S3_BUCKET")),
        part_size_bytes: 5 * 1024 * 1024,
        parts_in_flight: 2,
        request_timeout: Duration::from_secs(60),
        read_idle_timeout: Duration::from_secs(30),
        s3: S3Settings {
            endpoint: Some(var("MEDIA_NODE_TEST_S3_ENDPOINT")),
            region: Some(var("MEDIA_NODE_TEST_S3_REGION")),
            access_key_id: Some(var("MEDIA_NODE_TEST_S3_ACCESS_KEY_ID")),
            secret_access_key: Some(Secret::new(var("MEDIA_NODE_TEST_S3_SECRET_ACCESS_KEY"))),
            allow_http: true,
            sign_payload: false,
            streamed_put: Some(false),
            streamed_put_idle_timeout: Duration::from_secs(15),
        },
    };
    let storage = Storage::from_settings(&storage_settings).unwrap();
    let metadata = Metadata::connect(&create_database(&Services::from_env()).await, 4).unwrap();
    metadata.migrate().await.unwrap();
    seed_expired(&metadata, &storage, MEDIA).await;

    let mut reaper_settings = test_support::test_settings(test_support::Backend::Embedded, &dir)
        .await
        .reaper;
    reaper_settings.batch_size = BATCH;
    reaper_settings.interval = Duration::from_millis(100);
    let metrics = Metrics::new().unwrap();
    let reaper = Reaper::new(
        metadata.clone(),
        storage.clone(),
        reaper_settings,
        metrics.reaper.clone(),
    );
    let (stop, stopped) = watch::channel(false);
    let running = tokio::spawn(reaper.clone().run(stopped));

    // Storage goes away once the reaper is under way.
    while metrics.reaper.deleted.get() < u64::from(BATCH) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Abruptly: a graceful stop lets Garage serve its open connections to the end first.
    s3_server(&state, "kill");
    let deleted_at_stop = metrics.reaper.deleted.get();
    assert!(deleted_at_stop < MEDIA as u64, "the outage came too late");

    // Down for a while: passes fail, are counted, and the database keeps every row that
    // was not completely reaped.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(metrics.reaper.errors.with_label_values(&["storage"]).get() > 0);
    let rows = metadata.count().await.unwrap();
    let deleted = metrics.reaper.deleted.get();
    assert_eq!(rows + deleted, MEDIA as u64, "rows lost or counted twice");
    assert!(
        deleted - deleted_at_stop <= u64::from(BATCH),
        "no batch completes without storage"
    );

    // Pause the reaper, bring storage back, and check that no object lost its row.
    stop.send(true).unwrap();
    running.await.unwrap();
    s3_server(&state, "start");
    let objects: HashSet<String> = storage.object_keys().await.unwrap().into_iter().collect();
    assert!(objects.len() as u64 <= rows);
    let (_keep, go) = watch::channel(false);
    for key in &objects {
        let id = media_node::domain::MediaId::parse(key.rsplit('/').next().unwrap()).unwrap();
        assert!(
            metadata.get(id).await.unwrap().is_some(),
            "{key} has no row"
        );
    }

    // The next passes finish the work.
    for _ in 0..20 {
        if reaper.pass(&go).await.deleted == 0 && metadata.count().await.unwrap() == 0 {
            break;
        }
    }
    assert_eq!(metadata.count().await.unwrap(), 0);
    assert!(storage.object_keys().await.unwrap().is_empty());
    assert_eq!(metrics.reaper.deleted.get(), MEDIA as u64);
    assert!(metrics.reaper.last_success.get() > 0.0);
}
