use std::time::Duration;

use reqwest::Method;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use test_support::on_both_backends;
use test_support::{assert_error, content, sha256_hex, Backend, TestApp, MAX_UPLOAD};

on_both_backends!(
    upload_answers_the_exact_created_body,
    upload_is_readable_back_byte_for_byte,
    multipart_sized_upload_round_trips,
    extension_is_normalised,
    missing_extension_is_refused,
    hostile_extensions_are_refused,
    repeated_extension_headers_are_refused,
    empty_body_is_refused,
    exact_limit_is_accepted_and_one_more_refused_by_content_length,
    chunked_body_over_the_limit_is_cut_off,
    client_disconnect_mid_body_leaves_nothing,
    concurrent_uploads_are_all_readable,
    mass_cancellation_strands_no_rows,
    content_digest_is_verified_before_commit,
    multipart_uploads_round_trip_with_one_to_four_parts_in_flight,
);

async fn upload_answers_the_exact_created_body(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let response = app
        .upload(&app.token("acct"), "jpeg", content(1000, 1))
        .await;
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(response.headers()["content-type"], "application/json");
    let body = response.text().await.unwrap();
    let json: Value = serde_json::from_str(&body).unwrap();
    let id = json["media"][0]["id"].as_str().unwrap();
    let parsed = uuid::Uuid::parse_str(id).unwrap();
    assert_eq!(parsed.get_version_num(), 4);
    assert_eq!(id, id.to_lowercase());
    assert_eq!(
        body,
        format!(
            r#"{{"media":[{{"id":"{id}"}}],"meta":{{"api_status":"stable","version":"2.0.1"}}}}"#
        )
    );
    assert_eq!(location, format!("/v1/media/{id}"));
}

async fn upload_is_readable_back_byte_for_byte(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    let data = content(300_000, 2);
    let id = app.upload_ok(&token, "pdf", data.clone()).await;
    let response = app.get(&token, &id).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap(), data);
    let row = app
        .state
        .metadata
        .get(media_node::domain::MediaId::parse(&id).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.size_bytes, Some(300_000));
    assert_eq!(row.sha256.as_deref(), Some(sha256_hex(&data).as_str()));
    assert_eq!(row.status, media_node::metadata::MediaStatus::Ready);
    assert_eq!(row.owner.as_str(), "acct");
    let retention = row.expires_at - row.created_at;
    assert_eq!(retention.num_hours(), 24);
}

async fn multipart_sized_upload_round_trips(backend: Backend) {
    // Over two parts of 5 MiB, so storage sees a multipart upload with a short last part.
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    let data = content(12 * 1024 * 1024 + 17, 3);
    let id = app.upload_ok(&token, "mp4", data.clone()).await;
    let response = app.get(&token, &id).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-length"], data.len().to_string());
    let body = response.bytes().await.unwrap();
    assert!(body == data, "content differs");
    assert_eq!(app.pending_multipart_uploads().await, 0);
}

/// `storage.parts_in_flight`: one part at a time (each waits for the one before) up to
/// four, the parts reach storage whole and in order, and their memory is given back.
async fn multipart_uploads_round_trip_with_one_to_four_parts_in_flight(backend: Backend) {
    for in_flight in [1, 4] {
        let app = TestApp::spawn_with(backend, |s| s.storage.parts_in_flight = in_flight).await;
        let token = app.token("acct");
        let data = content(4 * 5 * 1024 * 1024 + 1234, 40 + in_flight as u8);
        let id = app.upload_ok(&token, "mp4", data.clone()).await;
        let body = app.get(&token, &id).await.bytes().await.unwrap();
        assert!(body == data, "{in_flight} in flight: content differs");
        assert_eq!(app.pending_multipart_uploads().await, 0);
        let text = app.metrics_text().await;
        assert_eq!(
            test_support::metric_value(&text, "media_upload_memory_bytes"),
            Some(0.0)
        );
    }
}

/// S3 bodies go as UNSIGNED-PAYLOAD by default; with `storage.s3.sign_payload` each
/// request carries its body's SHA-256 in the signature, which the S3 server checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_payloads_are_accepted_by_s3() {
    let app = TestApp::spawn_with(Backend::Production, |s| s.storage.s3.sign_payload = true).await;
    let token = app.token("acct");
    for data in [content(4096, 5), content(11 * 1024 * 1024 + 3, 6)] {
        let id = app.upload_ok(&token, "bin", data.clone()).await;
        let body = app.get(&token, &id).await.bytes().await.unwrap();
        assert_eq!(sha256_hex(&body), sha256_hex(&data));
    }
    assert_eq!(app.row_count().await, 2);
    assert_eq!(app.pending_multipart_uploads().await, 0);
}

async fn extension_is_normalised(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    for (given, stored, content_type) in [
        (".JPEG", "jpeg", "image/jpeg"),
        ("Ogg", "ogg", "audio/ogg"),
        ("xyz123", "xyz123", "application/octet-stream"),
    ] {
        let id = app.upload_ok(&token, given, b"data".to_vec()).await;
        let response = app.get(&token, &id).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], content_type);
        assert_eq!(
            response.headers()["content-disposition"],
            format!("attachment; filename=\"{id}.{stored}\"").as_str()
        );
    }
}

async fn missing_extension_is_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let response = app
        .request(Method::POST, "/v1/media", Some(&app.token("acct")))
        .body(b"data".to_vec())
        .send()
        .await
        .unwrap();
    assert_error(response, 400, 1008).await;
    assert!(app.is_empty().await);
}

async fn hostile_extensions_are_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    for bad in [
        "",
        ".",
        "..png",
        "../../etc/passwd",
        "a/b",
        "a\\b",
        "png.",
        "tar.gz",
        "jp g",
        "abcdefghijklmnopq",
        "%2e%2e",
        "png;rm",
        "\u{00e9}",
        "*",
        "a\tb",
    ] {
        let response = app
            .request(Method::POST, "/v1/media", Some(&token))
            .header(
                "X-Gr-File-Extension",
                reqwest::header::HeaderValue::from_bytes(bad.as_bytes()).unwrap(),
            )
            .body(b"data".to_vec())
            .send()
            .await
            .unwrap();
        let body = assert_error(response, 400, 1009).await;
        assert!(body["errors"][0]["details"]
            .as_str()
            .unwrap()
            .contains("X-Gr-File-Extension"));
    }
    assert!(app.is_empty().await);
}

async fn repeated_extension_headers_are_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    for values in [["png", "../x"], ["png", "png"], ["../x", "png"]] {
        let response = app
            .request(Method::POST, "/v1/media", Some(&token))
            .header("X-Gr-File-Extension", values[0])
            .header("X-Gr-File-Extension", values[1])
            .body(b"data".to_vec())
            .send()
            .await
            .unwrap();
        let body = assert_error(response, 400, 1009).await;
        let details = body["errors"][0]["details"].as_str().unwrap();
        assert!(details.contains("X-Gr-File-Extension"), "{details}");
    }
    assert!(app.is_empty().await);
}

async fn empty_body_is_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    let response = app.upload(&token, "jpeg", Vec::new()).await;
    assert_error(response, 400, 1008).await;
    // Also without a Content-Length (a chunked body that ends at once).
    let empty = futures_util::stream::iter(Vec::<Result<Vec<u8>, std::io::Error>>::new());
    let response = app
        .request(Method::POST, "/v1/media", Some(&token))
        .header("X-Gr-File-Extension", "jpeg")
        .body(reqwest::Body::wrap_stream(empty))
        .send()
        .await
        .unwrap();
    assert_error(response, 400, 1008).await;
    assert!(app.is_empty().await);
}

/// Sends a raw HTTP/1.1 request head and returns the response head and body as text.
async fn raw_exchange(app: &TestApp, head: &str, body: &[u8]) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", app.port())).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    if !body.is_empty() {
        // The server may answer and close before the whole body is written.
        let _ = stream.write_all(body).await;
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

async fn exact_limit_is_accepted_and_one_more_refused_by_content_length(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    let data = content(MAX_UPLOAD as usize, 4);
    let id = app.upload_ok(&token, "mp4", data.clone()).await;
    let response = app.get(&token, &id).await;
    assert_eq!(
        response.headers()["etag"],
        format!("\"{}\"", sha256_hex(&data)).as_str()
    );
    assert!(response.bytes().await.unwrap() == data);
    app.delete(&token, &id).await;

    // One byte more, declared: refused from the head alone, no body byte sent.
    let head = format!(
        "POST /v1/media HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
         X-Gr-File-Extension: mp4\r\nContent-Length: {}\r\n\r\n",
        MAX_UPLOAD + 1
    );
    let answer = raw_exchange(&app, &head, &[]).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"code\":1009"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("x-request-id:"),
        "{answer}"
    );
    app.assert_eventually_empty().await;
}

async fn chunked_body_over_the_limit_is_cut_off(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    let head = format!(
        "POST /v1/media HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
         X-Gr-File-Extension: mp4\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let data = content(MAX_UPLOAD as usize + 1, 5);
    let mut body = Vec::with_capacity(data.len() + 4096);
    for chunk in data.chunks(1 << 20) {
        body.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        body.extend_from_slice(chunk);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let answer = raw_exchange(&app, &head, &body).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"code\":1009"), "{answer}");
    app.assert_eventually_empty().await;

    // Exactly the limit, chunked, is fine.
    let data = content(MAX_UPLOAD as usize, 6);
    let stream = futures_util::stream::iter(
        data.chunks(1 << 20)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let response = app
        .request(Method::POST, "/v1/media", Some(&token))
        .header("X-Gr-File-Extension", "mp4")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
}

async fn client_disconnect_mid_body_leaves_nothing(backend: Backend) {
    // On S3 a multipart upload (the streamed PUT's own test is in streamed_put.rs).
    let app = TestApp::spawn_with(backend, |s| s.storage.s3.streamed_put = Some(false)).await;
    let token = app.token("acct");
    // 12 MiB declared, 7 MiB sent: storage has a multipart upload with one part when the
    // client goes away.
    let mut stream = TcpStream::connect(("127.0.0.1", app.port())).await.unwrap();
    let head = format!(
        "POST /v1/media HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
         X-Gr-File-Extension: mp4\r\nContent-Length: {}\r\n\r\n",
        12 * 1024 * 1024
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
        .write_all(&content(7 * 1024 * 1024, 7))
        .await
        .unwrap();
    stream.flush().await.unwrap();
    // Wait until the upload is under way in storage: the row exists and, on S3, a
    // multipart upload has been opened for the first 5 MiB part.
    let mut under_way = false;
    for _ in 0..200 {
        let started = app.row_count().await == 1
            && (backend == Backend::Embedded || app.pending_multipart_uploads().await == 1);
        if started {
            under_way = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(under_way, "the upload never reached storage");
    drop(stream);
    app.assert_eventually_empty().await;
    let text = app.metrics_text().await;
    let aborted =
        test_support::labelled_value(&text, "media_uploads_total", &[("outcome", "aborted")]);
    assert_eq!(aborted, Some(1.0), "{text}");
    assert_eq!(
        test_support::metric_value(&text, "media_uploads_in_flight"),
        Some(0.0)
    );
}

async fn concurrent_uploads_are_all_readable(backend: Backend) {
    let app = std::sync::Arc::new(TestApp::spawn(backend).await);
    let token = app.token("acct");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..24u8 {
        let app = app.clone();
        let token = token.clone();
        tasks.spawn(async move {
            let data = content(1024 * 1024, 100 + i);
            let id = app.upload_ok(&token, "bin", data.clone()).await;
            (id, data)
        });
    }
    let uploaded = tasks.join_all().await;
    assert_eq!(uploaded.len(), 24);
    for (id, data) in &uploaded {
        let response = app.get(&token, id).await;
        assert_eq!(response.status(), 200);
        assert!(response.bytes().await.unwrap() == *data, "{id} differs");
    }
    assert_eq!(app.row_count().await, 24);
}

/// Many uploads cancelled at once (a load balancer restart) while the database is slow to
/// write: their clean-ups queue for a small pool and retry on pool timeouts and busy
/// errors instead of giving up, so no `uploading` row is left for the reaper an hour later.
async fn mass_cancellation_strands_no_rows(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| {
        s.database.max_connections = 2;
        s.database.acquire_timeout = Duration::from_millis(100);
        // A hundred uploads of one account: above its default cap of concurrent uploads.
        s.limits.max_uploads_per_account = 100;
    })
    .await;
    let token = app.token("acct");
    let mut streams = Vec::new();
    for _ in 0..100 {
        let mut stream = TcpStream::connect(("127.0.0.1", app.port())).await.unwrap();
        let head = format!(
            "POST /v1/media HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
             X-Gr-File-Extension: bin\r\nContent-Length: {}\r\n\r\n",
            1024 * 1024
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&content(16 * 1024, 9)).await.unwrap();
        streams.push(stream);
        // Spread the starts so that the inserts themselves get connections.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Counted over a pool of its own: the application's is starved on purpose.
    let url = app.settings.database.url.expose().to_owned();
    let observer = media_node::metadata::Metadata::connect(&url, 1).unwrap();
    // Every upload that got its row is under way (some may have been refused 503 at once).
    let mut rows = 0;
    for _ in 0..200 {
        rows = observer.count().await.unwrap();
        if rows as i64 == app.metrics.media.uploads_in_flight.get() && rows > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(rows >= 50, "too few uploads under way: {rows}");

    // Writes stall for a second and a half (another session holds the table), and in that
    // moment every client goes away.
    let lock = WriteLock::take(backend, &url).await;
    drop(streams);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    lock.release().await;

    for _ in 0..300 {
        if observer.count().await.unwrap() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        observer.count().await.unwrap(),
        0,
        "rows stranded by the clean-ups"
    );
    app.assert_eventually_empty().await;
}

/// Another session that keeps every writer of `media` waiting until released.
enum WriteLock {
    Postgres(sqlx::PgConnection),
    Sqlite(sqlx::SqliteConnection),
}

impl WriteLock {
    async fn take(backend: Backend, url: &str) -> Self {
        use sqlx::{Connection, Executor};
        match backend {
            Backend::Production => {
                let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
                conn.execute("BEGIN").await.unwrap();
                conn.execute("LOCK TABLE media IN SHARE MODE")
                    .await
                    .unwrap();
                WriteLock::Postgres(conn)
            }
            Backend::Embedded => {
                let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
                conn.execute("BEGIN IMMEDIATE").await.unwrap();
                WriteLock::Sqlite(conn)
            }
        }
    }

    async fn release(self) {
        use sqlx::Executor;
        match self {
            WriteLock::Postgres(mut conn) => conn.execute("ROLLBACK").await.map(drop),
            WriteLock::Sqlite(mut conn) => conn.execute("ROLLBACK").await.map(drop),
        }
        .unwrap();
    }
}

/// `Content-Digest: sha-256=:…:` (RFC 9530): a matching body is stored; a body that does
/// not match (here: the digest of other bytes, a multipart-sized one too) is 400 and nothing
/// stays; a malformed field is 400 before the body. Downloads carry `Repr-Digest`, the
/// digest of the whole file, on 200 and 206 alike.
async fn content_digest_is_verified_before_commit(backend: Backend) {
    use base64::Engine;
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    let digest = |bytes: &[u8]| {
        use sha2::Digest;
        format!(
            "sha-256=:{}:",
            base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(bytes))
        )
    };
    let upload_with = |body: Vec<u8>, field: String| {
        app.request(Method::POST, "/v1/media", Some(&token))
            .header("X-Gr-File-Extension", "bin")
            .header("Content-Digest", field)
            .body(body)
            .send()
    };
    let data = content(3000, 1);
    let response = upload_with(data.clone(), digest(&data)).await.unwrap();
    assert_eq!(response.status(), 201);
    let id = response.json::<Value>().await.unwrap()["media"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    for size in [3000, 6 * 1024 * 1024] {
        let body = content(size, 2);
        let response = upload_with(body, digest(b"other bytes")).await.unwrap();
        let error = assert_error(response, 400, 1009).await;
        assert!(error["errors"][0]["details"]
            .as_str()
            .unwrap()
            .contains("Content-Digest"));
    }
    let response = upload_with(content(10, 3), "sha-256=not-a-byte-sequence".to_owned())
        .await
        .unwrap();
    assert_error(response, 400, 1009).await;
    // Only the matching upload was kept.
    app.assert_eventually_holds(1).await;

    let whole = app.get(&token, &id).await;
    assert_eq!(
        whole.headers()["repr-digest"].to_str().unwrap(),
        digest(&data)
    );
    let part = app.get_with(&token, &id, "Range", "bytes=0-9").await;
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers()["repr-digest"].to_str().unwrap(),
        digest(&data)
    );
}
