//! Graceful drain of a real `media-node` process: SIGTERM while a 37 MiB upload streams
//! slowly, and the shutdown deadline cutting an upload off.

use std::time::Duration;

use bytes::Bytes;
use media_node::auth::Authenticator;
use media_node::metadata::Metadata;
use media_node::storage::Storage;
use test_support::{
    content, sha256_hex, Backend, ServiceProcess, Services, TcpProxy, TempDir, MAX_UPLOAD,
};

/// A body that trickles `data` out in 1 MiB chunks, `pause` apart.
fn slow_body(data: Vec<u8>, pause: Duration) -> reqwest::Body {
    let chunks: Vec<Bytes> = data
        .chunks(1024 * 1024)
        .map(Bytes::copy_from_slice)
        .collect();
    let stream = futures_util::stream::unfold(chunks.into_iter(), move |mut rest| async move {
        let chunk = rest.next()?;
        tokio::time::sleep(pause).await;
        Some((Ok::<_, std::io::Error>(chunk), rest))
    });
    reqwest::Body::wrap_stream(stream)
}

/// A `media-node` process with the given drain settings, and a token for it.
struct Draining {
    dir: TempDir,
    settings: media_node::settings::Settings,
    env: Vec<(&'static str, String)>,
    server: ServiceProcess,
    token: String,
}

impl Draining {
    async fn start(backend: Backend, drain_delay: &str, shutdown_timeout: &str) -> Self {
        Self::start_with(backend, drain_delay, shutdown_timeout, |_| {}).await
    }

    /// `start`, after `adjust` had its say over the process's settings.
    async fn start_with(
        backend: Backend,
        drain_delay: &str,
        shutdown_timeout: &str,
        adjust: impl FnOnce(&mut media_node::settings::Settings),
    ) -> Self {
        let dir = TempDir::new();
        let mut settings = test_support::test_settings(backend, &dir).await;
        adjust(&mut settings);
        let mut env = test_support::process_env(&settings);
        env.extend([
            ("MEDIA_NODE__SERVER__DRAIN_DELAY", drain_delay.to_owned()),
            (
                "MEDIA_NODE__SERVER__SHUTDOWN_TIMEOUT",
                shutdown_timeout.to_owned(),
            ),
        ]);
        let mut server = ServiceProcess::start(&dir.0, &env);
        server.wait_ready().await;
        let token = Authenticator::from_settings(&settings.auth, false)
            .unwrap()
            .mint("acct", Duration::from_secs(600), None)
            .unwrap();
        Self {
            dir,
            settings,
            env,
            server,
            token,
        }
    }
}

async fn wait_for_in_flight_upload(server: &ServiceProcess) {
    for _ in 0..200 {
        if server.metric("media_uploads_in_flight").await == 1.0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the upload never started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_slow_upload_finish() {
    let Draining {
        dir,
        settings: _,
        env,
        server,
        token,
    } = Draining::start(Backend::Embedded, "1s", "60s").await;

    // 37 MiB over about five seconds.
    let data = content(MAX_UPLOAD as usize, 50);
    let upload = tokio::spawn(
        reqwest::Client::new()
            .post(server.url("/v1/media"))
            .bearer_auth(&token)
            .header("X-Gr-File-Extension", "mp4")
            .body(slow_body(data.clone(), Duration::from_millis(130)))
            .send(),
    );
    wait_for_in_flight_upload(&server).await;

    server.signal("TERM");
    // Readiness turns 503 at once ...
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ready = reqwest::get(server.admin_url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503);
    assert!(
        !upload.is_finished(),
        "the upload is still streaming during the drain"
    );
    // ... and after the drain delay new connections are refused.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let refused = tokio::net::TcpStream::connect(("127.0.0.1", server.port)).await;
    assert!(
        refused.is_err(),
        "the listener still accepts after the drain delay"
    );

    let response = upload.await.unwrap().unwrap();
    assert_eq!(response.status(), 201);
    let json: serde_json::Value = response.json().await.unwrap();
    let id = json["media"][0]["id"].as_str().unwrap().to_owned();
    let (status, logs) = server.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "exit {status}\n{logs}");
    assert_eq!(status.code(), Some(0));

    // A new process over the same data serves the upload.
    let mut again = ServiceProcess::start(&dir.0, &env);
    again.wait_ready().await;
    let download = reqwest::Client::new()
        .get(again.url(&format!("/v1/media/{id}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(download.status(), 200);
    let body = download.bytes().await.unwrap();
    assert_eq!(sha256_hex(&body), sha256_hex(&data));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shutdown_deadline_aborts_uploads_without_leftovers() {
    let Draining {
        dir: _dir,
        settings,
        env: _,
        server,
        token,
    } = Draining::start(Backend::Production, "0s", "1s").await;
    let metadata = Metadata::connect(settings.database.url.expose(), 2).unwrap();
    let storage = Storage::from_settings(&settings.storage).unwrap();

    // 20 MiB over twenty seconds: far past the stop deadline (1 s: the upload is cut off at
    // 750 ms and rolled back in the quarter second that is left).
    let upload = tokio::spawn(
        reqwest::Client::new()
            .post(server.url("/v1/media"))
            .bearer_auth(&token)
            .header("X-Gr-File-Extension", "mp4")
            .body(slow_body(
                content(20 * 1024 * 1024, 51),
                Duration::from_secs(1),
            ))
            .send(),
    );
    wait_for_in_flight_upload(&server).await;
    // Under way in storage: the row and an open multipart upload with its first part.
    for _ in 0..200 {
        if !storage.all_pending_uploads().await.unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metadata.count().await.unwrap(), 1);
    assert_eq!(storage.all_pending_uploads().await.unwrap().len(), 1);

    server.signal("TERM");
    let (status, logs) = server.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "exit {status}\n{logs}");
    let answer = upload.await.unwrap();
    assert!(
        answer.as_ref().map_or(true, |r| r.status() != 201),
        "the cut-off upload must not succeed: {answer:?}"
    );
    // Nothing left: no row, no object, no open multipart upload.
    assert_eq!(metadata.count().await.unwrap(), 0, "{logs}");
    assert!(storage.object_keys().await.unwrap().is_empty());
    assert!(storage.all_pending_uploads().await.unwrap().is_empty());
}

/// The same with `storage.s3.streamed_put`: the PUT under way when the deadline cuts the
/// upload off is stopped before its declared length, so S3 keeps nothing, and the row goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shutdown_deadline_cuts_a_streamed_put_off_without_leftovers() {
    let Draining {
        dir: _dir,
        settings,
        env: _,
        server,
        token,
    } = Draining::start_with(Backend::Production, "0s", "1s", |s| {
        s.storage.s3.streamed_put = Some(true);
    })
    .await;
    let metadata = Metadata::connect(settings.database.url.expose(), 2).unwrap();
    let storage = Storage::from_settings(&settings.storage).unwrap();
    let size = 20 * 1024 * 1024;
    let upload = tokio::spawn(
        reqwest::Client::new()
            .post(server.url("/v1/media"))
            .bearer_auth(&token)
            .header("X-Gr-File-Extension", "mp4")
            .header("Content-Length", size)
            .body(slow_body(content(size, 52), Duration::from_secs(1)))
            .send(),
    );
    wait_for_in_flight_upload(&server).await;
    for _ in 0..200 {
        if metadata.count().await.unwrap() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metadata.count().await.unwrap(), 1);
    // A second of body: the PUT has its first chunks.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let streamed = server.metric("media_upload_memory_bytes").await;
    assert_eq!(streamed, 640.0 * 1024.0, "a streamed PUT's window");

    server.signal("TERM");
    let (status, logs) = server.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "exit {status}\n{logs}");
    let answer = upload.await.unwrap();
    assert!(
        answer.as_ref().map_or(true, |r| r.status() != 201),
        "the cut-off upload must not succeed: {answer:?}"
    );
    assert_eq!(metadata.count().await.unwrap(), 0, "{logs}");
    assert!(storage.object_keys().await.unwrap().is_empty());
    assert!(storage.all_pending_uploads().await.unwrap().is_empty());
}

/// A shutdown timeout under a second is not truncated to zero (which cut every request off
/// at once): an upload that needs a few hundred milliseconds more finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sub_second_shutdown_timeout_is_honoured() {
    let Draining {
        dir: _dir,
        server,
        token,
        ..
    } = Draining::start(Backend::Embedded, "0s", "900ms").await;
    let data = content(3 * 1024 * 1024, 52);
    let upload = tokio::spawn(
        reqwest::Client::new()
            .post(server.url("/v1/media"))
            .bearer_auth(&token)
            .header("X-Gr-File-Extension", "mp4")
            .body(slow_body(data, Duration::from_millis(100)))
            .send(),
    );
    wait_for_in_flight_upload(&server).await;
    server.signal("TERM");
    let response = upload.await.unwrap().unwrap();
    assert_eq!(response.status(), 201);
    let (status, logs) = server.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit {status}\n{logs}");
}

/// The whole stop, clean-ups included, ends by `drain_delay + shutdown_timeout`, even when
/// object storage stops answering in the middle of it (the clean-up of the cut-off upload
/// cannot finish; its row is left to the reaper).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_stop_ends_by_its_deadline() {
    let services = Services::from_env();
    let (proxy, proxied) = TcpProxy::for_s3(&services.s3_endpoint).await;
    let Draining {
        dir: _dir,
        settings,
        server,
        token,
        ..
    } = Draining::start_with(Backend::Production, "200ms", "2s", |s| {
        s.storage.s3.endpoint = Some(proxied);
    })
    .await;
    let mut direct = settings.storage.clone();
    direct.s3.endpoint = Some(services.s3_endpoint.clone());
    let storage = Storage::from_settings(&direct).unwrap();

    // 20 MiB over twenty seconds; wait for its multipart upload to exist.
    let upload = tokio::spawn(
        reqwest::Client::new()
            .post(server.url("/v1/media"))
            .bearer_auth(&token)
            .header("X-Gr-File-Extension", "mp4")
            .body(slow_body(
                content(20 * 1024 * 1024, 53),
                Duration::from_secs(1),
            ))
            .send(),
    );
    for _ in 0..200 {
        if !storage.all_pending_uploads().await.unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(storage.all_pending_uploads().await.unwrap().len(), 1);

    proxy.freeze();
    let signalled = std::time::Instant::now();
    server.signal("TERM");
    let (status, logs) = server.wait_exit(Duration::from_secs(30));
    let took = signalled.elapsed();
    assert!(status.success(), "exit {status}\n{logs}");
    // The deadline is 2.2 s; the rest of the bound is the process's own exit.
    assert!(
        took < Duration::from_millis(3000),
        "the stop took {took:?}\n{logs}"
    );
    let answer = upload.await.unwrap();
    assert!(answer.as_ref().map_or(true, |r| r.status() != 201));
}
