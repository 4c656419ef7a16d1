//! `storage.s3.streamed_put`: an upload that declares a length larger than a part goes to
//! S3 as one PUT, forwarded as it arrives. It must keep every rule of the multipart path:
//! the bytes read back, the row before the object, nothing left by a refusal, a client that
//! goes away, or a replayed retry (S3 discards a PUT cut before its declared length), and
//! memory bounded by a small window instead of part buffers.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::Method;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use test_support::{
    assert_error, content, labelled_value, metric_value, sha256_hex, Backend, TestApp,
};

/// Larger than two test parts of 5 MiB, not a multiple of the 128 KiB chunks.
const LARGE: usize = 12 * 1024 * 1024 + 17;

async fn streamed_app() -> TestApp {
    TestApp::spawn_with(Backend::Production, |s| {
        s.storage.s3.streamed_put = Some(true)
    })
    .await
}

/// Calls of one storage operation so far.
fn storage_calls(text: &str, operation: &str) -> f64 {
    labelled_value(
        text,
        "media_storage_operation_duration_seconds_count",
        &[("operation", operation)],
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_large_body_goes_in_one_put_and_reads_back() {
    let app = streamed_app().await;
    let token = app.token("acct");
    let data = content(LARGE, 1);
    let id = app.upload_ok(&token, "mp4", data.clone()).await;
    let response = app.get(&token, &id).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-length"], LARGE.to_string());
    let body = response.bytes().await.unwrap();
    assert!(body == data, "content differs");
    let row = app
        .state
        .metadata
        .get(media_node::domain::MediaId::parse(&id).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.size_bytes, Some(LARGE as u64));
    assert_eq!(row.sha256.as_deref(), Some(sha256_hex(&data).as_str()));

    let text = app.metrics_text().await;
    assert_eq!(storage_calls(&text, "put_streamed"), 1.0, "{text}");
    assert_eq!(storage_calls(&text, "create_multipart"), 0.0, "{text}");
    // The window was given back.
    assert_eq!(metric_value(&text, "media_upload_memory_bytes"), Some(0.0));

    // A body of one part or less still goes in one PUT from memory; a chunked body (no
    // declared length) as a multipart upload.
    let small = content(3000, 2);
    let small_id = app.upload_ok(&token, "bin", small.clone()).await;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = content(LARGE, 3)
        .chunks(64 * 1024)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let chunked = app
        .request(Method::POST, "/v1/media", Some(&token))
        .header("X-Gr-File-Extension", "bin")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(chunked.status(), 201);
    let text = app.metrics_text().await;
    assert_eq!(storage_calls(&text, "put_streamed"), 1.0, "{text}");
    assert_eq!(storage_calls(&text, "create_multipart"), 1.0, "{text}");
    let body = app.get(&token, &small_id).await.bytes().await.unwrap();
    assert_eq!(body, small);
    app.assert_eventually_holds(3).await;
}

/// The digest is compared before the last chunk leaves: the PUT never completes, so S3
/// has no object, and the row goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_fails_its_digest_leaves_no_object() {
    use base64::Engine;
    let app = streamed_app().await;
    let token = app.token("acct");
    // Exact multiples of the chunk size too, whose last chunk is a full one. Were the last
    // chunk sent before the check, S3 would often (not always: it races the cancel)
    // complete the PUT, and an object without a row would stay; so several tries.
    let sizes = [
        LARGE,
        12 * 1024 * 1024,
        12 * 1024 * 1024,
        10 * 1024 * 1024,
        9 * 1024 * 1024,
    ];
    for (seed, size) in (4u8..).zip(sizes) {
        let other = <sha2::Sha256 as sha2::Digest>::digest(b"other bytes");
        let response = app
            .request(Method::POST, "/v1/media", Some(&token))
            .header("X-Gr-File-Extension", "bin")
            .header(
                "Content-Digest",
                format!(
                    "sha-256=:{}:",
                    base64::engine::general_purpose::STANDARD.encode(other)
                ),
            )
            .body(content(size, seed))
            .send()
            .await
            .unwrap();
        let error = assert_error(response, 400, 1009).await;
        assert!(error["errors"][0]["details"]
            .as_str()
            .unwrap()
            .contains("Content-Digest"));
    }
    app.assert_eventually_empty().await;
    let text = app.metrics_text().await;
    assert_eq!(
        storage_calls(&text, "put_streamed"),
        0.0,
        "never finished: {text}"
    );
}

/// A client that goes away mid-body: the PUT is cut before its declared length, S3 keeps
/// nothing, the row is removed, and the window is given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_body_leaves_nothing() {
    let app = streamed_app().await;
    let token = app.token("acct");
    let mut stream = TcpStream::connect(("127.0.0.1", app.port())).await.unwrap();
    let head = format!(
        "POST /v1/media HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
         X-Gr-File-Extension: mp4\r\nContent-Length: {LARGE}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
        .write_all(&content(7 * 1024 * 1024, 6))
        .await
        .unwrap();
    stream.flush().await.unwrap();
    // Under way: the row exists and the window is reserved (a part's worth would be
    // 5 MiB; the window is five 128 KiB chunks, 640 KiB).
    let mut reserved = None;
    for _ in 0..200 {
        let text = app.metrics_text().await;
        let memory = metric_value(&text, "media_upload_memory_bytes").unwrap_or(0.0);
        if app.row_count().await == 1 && memory > 0.0 {
            reserved = Some(memory);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(reserved, Some(640.0 * 1024.0));
    drop(stream);
    app.assert_eventually_empty().await;
    let text = app.metrics_text().await;
    assert_eq!(
        labelled_value(&text, "media_uploads_total", &[("outcome", "aborted")]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(metric_value(&text, "media_upload_memory_bytes"), Some(0.0));
}

/// A retry with the same key and bytes streams into a PUT of its own that is cut before
/// its end: the first upload answers, and S3 holds one object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_retry_leaves_one_object() {
    let app = streamed_app().await;
    let token = app.token("acct");
    let upload = |body: Vec<u8>| {
        app.request(Method::POST, "/v1/media", Some(&token))
            .header("X-Gr-File-Extension", "mp4")
            .header("Idempotency-Key", "retry-large-1")
            .body(body)
            .send()
    };
    let data = content(LARGE, 7);
    let first = upload(data.clone()).await.unwrap();
    assert_eq!(first.status(), 201);
    let id = first.json::<Value>().await.unwrap()["media"][0]["id"].clone();

    let again = upload(data.clone()).await.unwrap();
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap()["media"][0]["id"], id);

    let other = upload(content(LARGE, 8)).await.unwrap();
    assert_error(other, 422, 1009).await;
    app.assert_eventually_holds(1).await;
    let body = app
        .get(&token, id.as_str().unwrap())
        .await
        .bytes()
        .await
        .unwrap();
    assert!(body == data, "content differs");
}

/// Concurrent streamed uploads each read back whole: chunks of one never reach another's
/// PUT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streamed_uploads_read_back() {
    let app = std::sync::Arc::new(streamed_app().await);
    let token = app.token("acct");
    let mut tasks = tokio::task::JoinSet::new();
    for seed in 0..6u8 {
        let (app, token) = (app.clone(), token.clone());
        tasks.spawn(async move {
            let data = content(LARGE - seed as usize * 1000, 20 + seed);
            let id = app.upload_ok(&token, "mp4", data.clone()).await;
            (id, sha256_hex(&data))
        });
    }
    while let Some(done) = tasks.join_next().await {
        let (id, sha) = done.unwrap();
        let body = app.get(&token, &id).await.bytes().await.unwrap();
        assert_eq!(sha256_hex(&body), sha);
    }
    app.assert_eventually_holds(6).await;
}

/// S3 that refuses the configuration (a wrong secret, no such bucket) answers the PUT
/// before its body: 500 (code 1014) for an operator to fix, as on the multipart path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_refusing_the_configuration_is_500() {
    type Adjust = fn(&mut media_node::settings::Settings);
    let cases: [(&str, Adjust); 2] = [
        ("wrong secret key", |s| {
            s.storage.s3.streamed_put = Some(true);
            s.storage.s3.secret_access_key =
                Some(media_node::settings::Secret::new("not-the-secret-key"));
        }),
        ("missing bucket", |s| {
            s.storage.s3.streamed_put = Some(true);
            s.storage.url = "s3://media-node-no-such-bucket/t".to_owned();
        }),
    ];
    for (case, adjust) in cases {
        let app = TestApp::spawn_with(Backend::Production, adjust).await;
        let response = app
            .upload(&app.token("acct"), "mp4", content(LARGE, 9))
            .await;
        assert!(
            !response.headers().contains_key("retry-after"),
            "{case}: not worth a retry"
        );
        assert_error(response, 500, 1014).await;
        assert_eq!(app.row_count().await, 0, "{case}");
    }
}

/// S3 that stops taking the body (a dead link) fails the upload within
/// `storage.read_idle_timeout`: 503, the row removed, no object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_that_stops_taking_the_body_is_503_within_the_idle_limit() {
    let services = test_support::Services::from_env();
    let (proxy, proxied) = test_support::TcpProxy::for_s3(&services.s3_endpoint).await;
    let app = TestApp::spawn_with(Backend::Production, |s| {
        s.storage.s3.streamed_put = Some(true);
        s.storage.s3.endpoint = Some(proxied);
        s.storage.read_idle_timeout = Duration::from_secs(1);
        s.storage.request_timeout = Duration::from_secs(2);
    })
    .await;
    let token = app.token("acct");
    // 40 MiB over about four seconds; the link dies after the first second. Socket buffers
    // take a few MiB; then S3 takes nothing.
    let pieces: Vec<Vec<u8>> = content(36 * 1024 * 1024, 10)
        .chunks(1024 * 1024)
        .map(<[u8]>::to_vec)
        .collect();
    let total: usize = pieces.iter().map(Vec::len).sum();
    let body = futures_util::stream::iter(pieces).then(|piece| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok::<_, std::io::Error>(piece)
    });
    let upload = app
        .request(Method::POST, "/v1/media", Some(&token))
        .header("X-Gr-File-Extension", "mp4")
        .header("Content-Length", total)
        .body(reqwest::Body::wrap_stream(body))
        .send();
    let upload = tokio::spawn(upload);
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.freeze();
    let started = std::time::Instant::now();
    // About 5 s here: the idle limit (1 s), the listing that looks for a configuration
    // fault (3 s at most), the roll-back. The bound is generous for a loaded machine; what
    // it catches is a hang, which would last as long as the link stays dead.
    let answer = tokio::time::timeout(Duration::from_secs(60), upload)
        .await
        .expect("the upload hung on a dead storage link")
        .unwrap();
    // The client may see the 503, or the connection closed under its unsent body.
    if let Ok(response) = answer {
        assert_error(response, 503, 1011).await;
    }
    println!("answered {:?} after the link died", started.elapsed());
    // The row goes (PostgreSQL is reachable); S3, seen directly, has nothing.
    for _ in 0..100 {
        if app.row_count().await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.row_count().await, 0);
    let mut direct = app.settings.storage.clone();
    direct.s3.endpoint = Some(services.s3_endpoint.clone());
    let storage = media_node::storage::Storage::from_settings(&direct).unwrap();
    assert!(storage.object_keys().await.unwrap().is_empty());
    assert!(storage.all_pending_uploads().await.unwrap().is_empty());
}

/// The default on S3: a body that declares a length larger than a part goes as one
/// streamed PUT; with `sign_payload`, which a forwarded body cannot satisfy, multipart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_put_is_the_default_unless_payloads_are_signed() {
    for (sign_payload, put_streamed, create_multipart) in [(false, 1.0, 0.0), (true, 0.0, 1.0)] {
        let app = TestApp::spawn_with(Backend::Production, |s| {
            assert_eq!(
                s.storage.s3.streamed_put, None,
                "the shipped default is unset"
            );
            s.storage.s3.sign_payload = sign_payload;
        })
        .await;
        let token = app.token("acct");
        let data = content(LARGE, 21);
        let id = app.upload_ok(&token, "mp4", data.clone()).await;
        let body = app.get(&token, &id).await.bytes().await.unwrap();
        assert!(
            body == data,
            "content differs (sign_payload = {sign_payload})"
        );
        let text = app.metrics_text().await;
        assert_eq!(storage_calls(&text, "put_streamed"), put_streamed, "{text}");
        assert_eq!(
            storage_calls(&text, "create_multipart"),
            create_multipart,
            "{text}"
        );
        app.assert_eventually_holds(1).await;
    }
}

/// Sends the head of an upload of `LARGE` bytes and its first 6 MiB, pauses for `pause`,
/// then sends the rest (as far as the server still reads it), and reads the answer.
async fn upload_with_a_pause(app: &TestApp, pause: Duration) -> (u16, String) {
    let token = app.token("acct");
    let data = content(LARGE, 22);
    let mut stream = TcpStream::connect(("127.0.0.1", app.port())).await.unwrap();
    let head = format!(
        "POST /v1/media HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
         X-Gr-File-Extension: mp4\r\nContent-Length: {LARGE}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let (first, rest) = data.split_at(6 * 1024 * 1024);
    stream.write_all(first).await.unwrap();
    stream.flush().await.unwrap();
    tokio::time::sleep(pause).await;
    // The server may have answered and closed meanwhile: then the rest does not go (a write
    // to a closed connection would bring a reset that discards the unread answer).
    let answered = tokio::time::timeout(Duration::from_millis(200), stream.peek(&mut [0u8; 1]))
        .await
        .is_ok_and(|peeked| peeked.is_ok());
    if !answered {
        stream.write_all(rest).await.unwrap();
    }
    let (status, head, body) = tokio::time::timeout(
        Duration::from_secs(60),
        crate::http_layer::read_answer(&mut stream),
    )
    .await
    .unwrap_or_else(|_| panic!("no answer after a pause of {pause:?}"));
    (status, head + &String::from_utf8_lossy(&body))
}

/// A phone that pauses 25 s mid-body gets either its 201 or a 408 with nothing kept, never
/// a 503 or a partial object, on every path:
/// - by default the minimum body rate (1 KiB/s over 10 s) answers 408 first;
/// - with the rate check off, a body forwarded into a streamed PUT may pause only
///   `storage.s3.streamed_put_idle_timeout` (15 s): S3 ends a request whose body has not
///   moved for about 20 s (AWS: `RequestTimeout`), which would be a 503, so the client is
///   answered 408 before;
/// - with the rate check off, a multipart upload (S3 sees no request while the client
///   pauses) rides the pause out within `limits.body_idle_timeout` (30 s): 201.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_pausing_25_s_mid_body_gets_201_or_408_never_a_partial_object() {
    let cases = [
        ("default", None, true, 408),
        ("streamed PUT, no rate check", Some(true), false, 408),
        ("multipart, no rate check", Some(false), false, 201),
    ];
    let runs = cases.map(|(case, streamed_put, rate_check, expected)| async move {
        let app = TestApp::spawn_with(Backend::Production, |s| {
            s.storage.s3.streamed_put = streamed_put;
            if !rate_check {
                s.limits.min_body_rate_bytes_per_sec = 0;
            }
        })
        .await;
        let started = std::time::Instant::now();
        let (status, text) = upload_with_a_pause(&app, Duration::from_secs(25)).await;
        println!("{case}: {status} after {:?}", started.elapsed());
        assert_eq!(status, expected, "{case}: {text}");
        if status == 408 {
            assert!(text.contains("\"code\":1009"), "{case}: {text}");
            app.assert_eventually_empty().await;
        } else {
            app.assert_eventually_holds(1).await;
        }
        let metrics = app.metrics_text().await;
        let multipart = storage_calls(&metrics, "create_multipart");
        assert_eq!(
            multipart,
            f64::from(streamed_put == Some(false)),
            "{case}: {metrics}"
        );
    });
    futures_util::future::join_all(runs).await;
}

/// A slow, steady phone: the streamed PUT lives as long as the client's upload, and no
/// request timeout of the storage client cuts it (here the control calls' whole-request
/// limit is 2 s, while the body takes about 12 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_steady_client_outlasting_every_storage_timeout_gets_its_201() {
    let app = TestApp::spawn_with(Backend::Production, |s| {
        s.storage.request_timeout = Duration::from_secs(2);
        s.storage.read_idle_timeout = Duration::from_secs(2);
    })
    .await;
    let token = app.token("acct");
    let data = content(LARGE, 23);
    let pieces: Vec<Vec<u8>> = data.chunks(256 * 1024).map(<[u8]>::to_vec).collect();
    let body = futures_util::stream::iter(pieces).then(|piece| async move {
        tokio::time::sleep(Duration::from_millis(250)).await;
        Ok::<_, std::io::Error>(piece)
    });
    let started = std::time::Instant::now();
    let response = app
        .request(Method::POST, "/v1/media", Some(&token))
        .header("X-Gr-File-Extension", "mp4")
        .header("Content-Length", LARGE)
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    println!("{LARGE} bytes sent over {:?}", started.elapsed());
    assert_eq!(response.status(), 201, "{:?}", response.text().await);
    let id = response.json::<Value>().await.unwrap()["media"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let stored = app.get(&token, &id).await.bytes().await.unwrap();
    assert!(stored == data, "content differs");
    let text = app.metrics_text().await;
    assert_eq!(storage_calls(&text, "put_streamed"), 1.0, "{text}");
}
