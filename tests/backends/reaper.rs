//! The reaper inside one application, on both backend pairs: expiry end to end, crashed
//! uploads, batches, failures that keep rows, and the `reap --once` subcommand.

use std::time::Duration;

use media_node::domain::{AccountId, FileExtension, MediaId};
use media_node::metadata::NewMedia;
use object_store::{ObjectStoreExt, PutPayload};
use test_support::{content, on_both_backends, Backend, TestApp};
use tokio::sync::watch;

on_both_backends!(
    uploads_expire_and_are_reaped,
    crashed_uploads_are_cleaned_and_live_ones_kept,
    batches_cover_everything_due,
    reap_once_subcommand,
    a_live_upload_outlasting_the_stale_threshold_is_kept,
    a_panicking_pass_is_counted_and_the_reaper_goes_on,
    after_a_crash_mid_upload_the_key_is_free_and_nothing_is_left,
);

/// A body that trickles in: `chunks` pieces of `chunk_len` bytes, `pause` apart.
fn trickle(chunks: usize, chunk_len: usize, pause: Duration) -> (Vec<u8>, reqwest::Body) {
    let data = content(chunks * chunk_len, 7);
    let pieces: Vec<bytes::Bytes> = data
        .chunks(chunk_len)
        .map(bytes::Bytes::copy_from_slice)
        .collect();
    let stream = futures_util::stream::unfold(pieces.into_iter(), move |mut rest| async move {
        let piece = rest.next()?;
        tokio::time::sleep(pause).await;
        Some((Ok::<_, std::io::Error>(piece), rest))
    });
    (data, reqwest::Body::wrap_stream(stream))
}

/// An upload that takes longer than `reaper.stale_upload_after` while the reaper polls: its
/// heartbeat keeps it live, so it is stored and kept, and nothing is reaped.
async fn a_live_upload_outlasting_the_stale_threshold_is_kept(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| {
        s.reaper.stale_upload_after = Duration::from_secs(4);
        s.reaper.interval = Duration::from_millis(100);
    })
    .await;
    let token = app.token("acct");
    // About 7 s, with a pause of 700 ms between pieces: longer than the threshold.
    let (data, body) = trickle(10, 64 * 1024, Duration::from_millis(700));
    let response = app
        .request(reqwest::Method::POST, "/v1/media", Some(&token))
        .header("X-Gr-File-Extension", "bin")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(status, 201, "{text}");
    let id = serde_json::from_str::<serde_json::Value>(&text).unwrap()["media"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let download = app.get(&token, &id).await;
    assert_eq!(download.status(), 200);
    assert_eq!(download.bytes().await.unwrap().as_ref(), data.as_slice());
    assert_eq!(app.metrics.reaper.deleted.get(), 0);
    assert!(
        app.metrics.reaper.runs.get() > 10,
        "the reaper was polling all along"
    );
}

/// A pass that panics (here: a lease so long that date arithmetic overflows, which start-up
/// validation refuses, set behind its back) is counted, and the reaper keeps running.
async fn a_panicking_pass_is_counted_and_the_reaper_goes_on(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| {
        s.reaper.interval = Duration::from_millis(50);
        s.reaper.lease = Duration::from_secs(u64::MAX / 4);
    })
    .await;
    let panics = || {
        app.metrics
            .reaper
            .errors
            .with_label_values(&["panic"])
            .get()
    };
    for _ in 0..100 {
        if panics() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(panics() >= 3, "each failed pass is counted: {}", panics());
    assert!(app.metrics.reaper.runs.get() >= 3);
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains("media_reaper_errors_total{stage=\"panic\"}"),
        "exported with the other stages"
    );
}

async fn uploads_expire_and_are_reaped(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| {
        s.media.retention = Duration::from_secs(2);
        s.reaper.interval = Duration::from_millis(200);
        s.reaper.batch_size = 2;
    })
    .await;
    let token = app.token("acct");
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(app.upload_ok(&token, "jpg", content(1000, i)).await);
    }
    // Readable until expiry ...
    for id in &ids {
        assert_eq!(app.get(&token, id).await.status(), 200);
    }
    // ... then 404, and soon nothing is left.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    for id in &ids {
        assert_eq!(app.get(&token, id).await.status(), 404);
    }
    app.assert_eventually_empty().await;
    assert_eq!(app.metrics.reaper.deleted.get(), 5);
    assert!(app.metrics.reaper.runs.get() >= 1);
    assert!(app.metrics.reaper.last_success.get() > 0.0);
    assert_eq!(app.metrics.reaper.expired_backlog.get(), 0);
}

async fn crashed_uploads_are_cleaned_and_live_ones_kept(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| {
        s.reaper.enabled = false;
        s.reaper.stale_upload_after = Duration::from_secs(3600);
    })
    .await;
    let metadata = &app.state.metadata;
    let storage = &app.state.storage;
    let now = chrono::Utc::now();
    let row = |created_ago: chrono::Duration| NewMedia {
        id: MediaId::new_random(),
        owner: AccountId::parse("acct").unwrap(),
        extension: FileExtension::parse("mp4").unwrap(),
        created_at: now - created_ago,
        expires_at: now - created_ago + chrono::Duration::hours(24),
    };
    // A crash mid-multipart two hours ago: a row, an open multipart upload with a part,
    // its id saved in the row (S3) or a staging file beside the object (local disk).
    let crashed_multipart = row(chrono::Duration::hours(2));
    metadata.insert_uploading(&crashed_multipart).await.unwrap();
    let long_ago = chrono::DateTime::UNIX_EPOCH;
    if storage.uploads_by_id() {
        let upload = storage
            .create_multipart(crashed_multipart.id)
            .await
            .unwrap();
        storage
            .put_part(
                crashed_multipart.id,
                &upload,
                0,
                PutPayload::from(vec![1u8; 5 * 1024 * 1024]),
            )
            .await
            .unwrap();
        assert!(metadata
            .set_multipart_upload(crashed_multipart.id, &upload, long_ago)
            .await
            .unwrap());
    } else {
        let mut upload = storage
            .store()
            .put_multipart(&storage.key(crashed_multipart.id))
            .await
            .unwrap();
        upload
            .put_part(PutPayload::from(vec![1u8; 5 * 1024 * 1024]))
            .await
            .unwrap();
        // The process died here: the writer is never completed nor aborted.
        std::mem::forget(upload);
    }
    // A crash between starting a multipart upload and saving its id: the row only says
    // one was being created; the reaper must look for it.
    let crashed_unsaved = row(chrono::Duration::hours(2));
    metadata.insert_uploading(&crashed_unsaved).await.unwrap();
    assert!(metadata
        .set_multipart_upload(crashed_unsaved.id, "", long_ago)
        .await
        .unwrap());
    if storage.uploads_by_id() {
        storage.create_multipart(crashed_unsaved.id).await.unwrap();
    }
    // A crash after the object was written but before `ready`.
    let crashed_written = row(chrono::Duration::hours(3));
    metadata.insert_uploading(&crashed_written).await.unwrap();
    storage
        .store()
        .put(
            &storage.key(crashed_written.id),
            PutPayload::from(b"x".to_vec()),
        )
        .await
        .unwrap();
    // An upload in progress right now must be left alone.
    let live = row(chrono::Duration::seconds(5));
    metadata.insert_uploading(&live).await.unwrap();
    let expected_pending = if backend == Backend::Production { 2 } else { 1 };
    assert_eq!(app.pending_multipart_uploads().await, expected_pending);

    let (_keep, shutdown) = watch::channel(false);
    let report = app.reaper().pass(&shutdown).await;
    assert_eq!(report.errors, 0);
    assert_eq!(report.deleted, 3);
    assert_eq!(app.pending_multipart_uploads().await, 0);
    assert!(metadata.get(crashed_multipart.id).await.unwrap().is_none());
    assert!(metadata.get(crashed_unsaved.id).await.unwrap().is_none());
    assert!(metadata.get(crashed_written.id).await.unwrap().is_none());
    assert!(!storage.exists(crashed_written.id).await.unwrap());
    assert!(
        metadata.get(live.id).await.unwrap().is_some(),
        "live upload kept"
    );
    assert_eq!(app.object_keys().await, Vec::<String>::new());
}

async fn batches_cover_everything_due(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| {
        s.reaper.enabled = false;
        s.reaper.batch_size = 7;
    })
    .await;
    let token = app.token("acct");
    let keep = app.upload_ok(&token, "jpg", content(10, 1)).await;
    app.seed_expired(40).await;
    let (_keep, shutdown) = watch::channel(false);
    let report = app.reaper().pass(&shutdown).await;
    assert_eq!(report.deleted, 40);
    assert_eq!(app.row_count().await, 1);
    assert_eq!(app.object_keys().await.len(), 1);
    assert_eq!(app.get(&token, &keep).await.status(), 200);
    // A second pass finds nothing.
    assert_eq!(app.reaper().pass(&shutdown).await.deleted, 0);
    assert_eq!(app.metrics.reaper.deleted.get(), 40);

    // Shutdown between batches: a pass that is told to stop does no more batches.
    app.seed_expired(10).await;
    let (stop, stopped) = watch::channel(false);
    stop.send(true).unwrap();
    let report = app.reaper().pass(&stopped).await;
    assert!(report.interrupted);
    assert_eq!(report.deleted, 0);
    assert_eq!(app.row_count().await, 11);
}

async fn reap_once_subcommand(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| s.reaper.enabled = false).await;
    app.seed_expired(12).await;
    let settings = &app.settings;
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_media-node"));
    command
        .args(["reap", "--once"])
        .env("MEDIA_NODE__DATABASE__URL", settings.database.url.expose())
        .env("MEDIA_NODE__STORAGE__URL", &settings.storage.url)
        .env("MEDIA_NODE__REAPER__BATCH_SIZE", "5");
    if let Some(s3) = settings.storage.s3.endpoint.as_ref() {
        let s3_settings = &settings.storage.s3;
        command
            .env("MEDIA_NODE__STORAGE__S3__ENDPOINT", s3)
            .env(
                "MEDIA_NODE__STORAGE__S3__REGION",
                s3_settings.region.clone().unwrap(),
            )
            .env(
                "MEDIA_NODE__STORAGE__S3__ACCESS_KEY_ID",
                s3_settings.access_key_id.clone().unwrap(),
            )
            .env(
                "MEDIA_NODE__STORAGE__S3__SECRET_ACCESS_KEY",
                s3_settings.secret_access_key.clone().unwrap().expose(),
            )
            .env("MEDIA_NODE__STORAGE__S3__ALLOW_HTTP", "true");
    }
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["deleted"], 12);
    assert_eq!(report["errors"], 0);
    assert!(app.is_empty().await);
}

/// Storage that cannot be reached: every row stays, the failure is counted, nothing is
/// lost, and the claims are released so the next pass can retry at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_errors_leave_rows_for_the_next_pass() {
    let app = TestApp::spawn_with(Backend::Production, |s| s.reaper.enabled = false).await;
    app.seed_expired(6).await;
    let mut broken = app.settings.storage.clone();
    broken.s3.endpoint = Some("http://127.0.0.1:9".to_owned());
    let metrics = media_node::metrics::Metrics::new().unwrap();
    let reaper = media_node::jobs::reaper::Reaper::new(
        app.state.metadata.clone(),
        media_node::storage::Storage::from_settings(&broken).unwrap(),
        app.settings.reaper.clone(),
        metrics.reaper.clone(),
    );
    let (_keep, shutdown) = watch::channel(false);
    let report = reaper.pass(&shutdown).await;
    assert_eq!(report.deleted, 0);
    assert!(report.errors > 0);
    assert_eq!(app.row_count().await, 6);
    assert_eq!(app.object_keys().await.len(), 6);
    assert!(metrics.reaper.errors.with_label_values(&["storage"]).get() > 0);
    assert_eq!(metrics.reaper.last_success.get(), 0.0);
    assert_eq!(metrics.reaper.expired_backlog.get(), 6);
    // Released, not leased: a healthy reaper takes them right away.
    let report = app.reaper().pass(&shutdown).await;
    assert_eq!(report.deleted, 6);
    assert!(app.is_empty().await);
}

/// The database going away mid-life: the pass counts a claim error, returns, and the
/// reaper reports no success; nothing panics and nothing in storage is touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_errors_are_counted_and_survived() {
    let services = test_support::Services::from_env();
    let database = test_support::create_database(&services).await;
    let mut url = url::Url::parse(&database).unwrap();
    let target = tokio::net::lookup_host(("127.0.0.1", url.port().unwrap_or(5432)))
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = test_support::TcpProxy::start(target).await;
    url.set_port(Some(proxy.port)).unwrap();
    let app = TestApp::spawn_with(Backend::Production, |s| {
        s.database.url = media_node::settings::Secret::new(url.to_string());
        s.reaper.enabled = false;
    })
    .await;
    app.seed_expired(3).await;
    proxy.cut().await;
    let (_keep, shutdown) = watch::channel(false);
    let report = app.reaper().pass(&shutdown).await;
    assert_eq!(report.deleted, 0);
    assert!(report.errors > 0);
    assert_eq!(
        app.metrics
            .reaper
            .errors
            .with_label_values(&["claim"])
            .get(),
        1
    );
    assert_eq!(app.metrics.reaper.last_success.get(), 0.0);
    assert_eq!(app.object_keys().await.len(), 3, "storage untouched");
}

/// At a million rows, mostly not yet expired and a few uploads in progress or crashed, both
/// claims the reaper runs find their batch through an index instead of reading the table:
/// the plans are those of the production statements (`Metadata::explain_claim`), with the
/// same parameters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_claims_use_an_index_at_a_million_rows() {
    let services = test_support::Services::from_env();
    let database = test_support::create_database(&services).await;
    let metadata = media_node::metadata::Metadata::connect(&database, 2).unwrap();
    metadata.migrate().await.unwrap();
    let pool = sqlx::PgPool::connect(&database).await.unwrap();
    // 1 000 expired; 100 uploads that crashed two hours ago and 100 in progress, whose
    // heartbeat is recent; the rest ready and live.
    sqlx::query(
        "INSERT INTO media (id, owner, extension, content_type, size_bytes, sha256, status, \
                            created_at, expires_at, heartbeat_at) \
         SELECT gen_random_uuid(), 'acct', 'jpg', 'image/jpeg', 1, '00', \
                CASE WHEN g % 10000 IN (5, 7) THEN 'uploading' ELSE 'ready' END, \
                now() - CASE WHEN g % 10000 = 5 THEN interval '2 hours' ELSE interval '1 hour' END, \
                now() + interval '1 hour' + (g % 86400) * interval '1 second' - CASE WHEN g % 1000 = 0 \
                    THEN interval '3 days' ELSE interval '0' END, \
                CASE WHEN g % 10000 = 7 THEN now() - interval '1 minute' END \
         FROM generate_series(1, 1000000) AS g",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE media").execute(&pool).await.unwrap();
    let now = chrono::Utc::now();
    let due = |claim| media_node::metadata::DueQuery {
        now,
        stale_before: now - chrono::Duration::hours(1),
        limit: 500,
        claim,
        lease_until: now + chrono::Duration::minutes(5),
    };
    let plans = metadata
        .explain_claim(&due(uuid::Uuid::new_v4()))
        .await
        .unwrap();
    let [expired, stale] = plans.as_slice() else {
        panic!("one plan per claim: {plans:?}")
    };
    // The index bounds the scan, not merely orders it.
    assert!(
        expired.contains("Index Scan using media_expires_at_idx")
            && expired.contains("Index Cond: (expires_at <="),
        "{expired}"
    );
    assert!(!expired.contains("Seq Scan"), "{expired}");
    assert!(stale.contains("media_uploading_created_at_idx"), "{stale}");
    assert!(!stale.contains("Seq Scan"), "{stale}");
    // And the real claims take the 1 000 expired rows in two batches, then the crashed
    // uploads, and leave the live ones.
    let mut taken = Vec::new();
    for _ in 0..4 {
        taken.push(
            metadata
                .claim_due(&due(uuid::Uuid::new_v4()))
                .await
                .unwrap()
                .len(),
        );
    }
    assert_eq!(taken, [500, 500, 100, 0]);
}

/// Every file under `dir`, staging files of unfinished uploads included.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found
}

/// kill -9 in the middle of a multipart upload on local disk leaves a staging file beside
/// where the object would be; `reap --once` removes it with the row, so "nothing left
/// behind" holds on local disk as on S3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_upload_on_local_disk_leaves_nothing_after_a_reap() {
    use tokio::io::AsyncWriteExt;
    let dir = test_support::TempDir::new();
    let settings = test_support::test_settings(Backend::Embedded, &dir).await;
    let objects = std::path::PathBuf::from(settings.storage.url.strip_prefix("file://").unwrap());
    let env = test_support::process_env(&settings);
    let mut server = test_support::ServiceProcess::start(&dir.0, &env);
    server.wait_ready().await;
    let token = media_node::auth::Authenticator::from_settings(&settings.auth, false)
        .unwrap()
        .mint("acct", Duration::from_secs(600), None)
        .unwrap();

    // 12 MiB declared, 7 MiB sent: the first 5 MiB part is in a staging file.
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    let head = format!(
        "POST /v1/media HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
         X-Gr-File-Extension: mp4\r\nContent-Length: {}\r\n\r\n",
        12 * 1024 * 1024
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
        .write_all(&content(7 * 1024 * 1024, 8))
        .await
        .unwrap();
    let mut staged = Vec::new();
    for _ in 0..200 {
        staged = files_under(&objects);
        if !staged.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(staged.len(), 1, "{staged:?}");
    assert!(staged[0].to_string_lossy().contains('#'), "{staged:?}");
    server.signal("KILL");
    let _ = server.wait_exit(Duration::from_secs(10));
    drop(stream);

    // Once the crashed upload's heartbeat is older than the threshold, one pass cleans it.
    tokio::time::sleep(Duration::from_millis(4200)).await;
    let out = test_support::media_node_command(&dir.0)
        .args(["reap", "--once"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("MEDIA_NODE__REAPER__STALE_UPLOAD_AFTER", "4s")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["deleted"], 1);
    assert_eq!(files_under(&objects), Vec::<std::path::PathBuf>::new());
}

/// kill -9 in the middle of an upload with an `Idempotency-Key`, then a restart: once the
/// crashed upload missed three heartbeats (`reaper.heartbeat_interval`, 1 s here) its key is
/// free again (the retry is a new upload, 201, not 409), and the reaper removes its row and
/// its staging files or multipart upload within seconds, not `reaper.stale_upload_after`.
async fn after_a_crash_mid_upload_the_key_is_free_and_nothing_is_left(backend: Backend) {
    use tokio::io::AsyncWriteExt;
    let dir = test_support::TempDir::new();
    let mut settings = test_support::test_settings(backend, &dir).await;
    // On S3 a multipart upload, whose parts outlive the crash (a streamed PUT cut off by it
    // leaves no object at all).
    settings.storage.s3.streamed_put = Some(false);
    let local_root = settings
        .storage
        .url
        .strip_prefix("file://")
        .map(std::path::PathBuf::from);
    let metadata =
        media_node::metadata::Metadata::connect(settings.database.url.expose(), 2).unwrap();
    let storage = media_node::storage::Storage::from_settings(&settings.storage).unwrap();
    let leftovers = || async {
        match &local_root {
            Some(root) => files_under(root)
                .into_iter()
                .filter(|p| p.to_string_lossy().contains('#'))
                .count(),
            None => storage.all_pending_uploads().await.unwrap().len(),
        }
    };
    let mut env = test_support::process_env(&settings);
    env.push(("MEDIA_NODE__REAPER__HEARTBEAT_INTERVAL", "1s".into()));
    let mut server = test_support::ServiceProcess::start(&dir.0, &env);
    server.wait_ready().await;
    let token = media_node::auth::Authenticator::from_settings(&settings.auth, false)
        .unwrap()
        .mint("acct", Duration::from_secs(600), None)
        .unwrap();

    // 12 MiB declared, 7 MiB sent: the first 5 MiB part is staged or sent.
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    let head = format!(
        "POST /v1/media HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
         X-Gr-File-Extension: bin\r\nIdempotency-Key: k\r\nContent-Length: {}\r\n\r\n",
        12 * 1024 * 1024
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
        .write_all(&content(7 * 1024 * 1024, 8))
        .await
        .unwrap();
    let mut staged = 0;
    for _ in 0..400 {
        staged = leftovers().await;
        if staged > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(staged, 1, "a part of the upload is in storage");
    let port = server.port;
    let admin_port = server.admin_port;
    server.signal("KILL");
    let _ = server.wait_exit(Duration::from_secs(10));
    let killed = std::time::Instant::now();
    drop(stream);

    let mut server = test_support::ServiceProcess::start_on(&dir.0, port, admin_port, &env);
    server.wait_ready().await;
    let client = reqwest::Client::new();
    let retry = content(3000, 9);
    let mut answers = Vec::new();
    let freed = loop {
        let response = client
            .post(server.url("/v1/media"))
            .bearer_auth(&token)
            .header("X-Gr-File-Extension", "bin")
            .header("Idempotency-Key", "k")
            .body(retry.clone())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        answers.push(status);
        if status == 201 {
            assert!(response.headers().get("Idempotent-Replayed").is_none());
            break killed.elapsed();
        }
        let text = response.text().await.unwrap();
        assert_eq!(status, 409, "{text}");
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "the key is still held {:?} after the crash: {answers:?} {text}\n{}",
            killed.elapsed(),
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let cleaned = loop {
        if leftovers().await == 0 && metadata.count().await.unwrap() == 1 {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "the crashed upload is still there {:?} after the crash ({} rows, {} parts)",
            killed.elapsed(),
            metadata.count().await.unwrap(),
            leftovers().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("{backend:?}: key free after {freed:?}, crashed upload removed after {cleaned:?}");
    let (status, _) = server.terminate();
    assert!(status.success());
}
