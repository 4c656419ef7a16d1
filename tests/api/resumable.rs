//! Resumable uploads in tus 1.0.0 (`/v1/uploads`), on both backend pairs: an upload sent in
//! pieces of odd sizes is the same media as a one-shot upload of its bytes; offsets,
//! versions, types and checksums are checked; another account sees nothing; bytes past the
//! length, termination and expiry leave no row, object, temporary object or multipart
//! upload; a newer request takes over from one that stalls.

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use reqwest::{Method, Response};
use tokio::sync::mpsc;

use test_support::on_both_backends;
use test_support::{
    assert_error, content, labelled_value, sha256_hex, Backend, TestApp, PART_SIZE,
};

on_both_backends!(
    options_advertise_the_protocol,
    an_upload_in_odd_pieces_is_the_media_of_its_bytes,
    a_wrong_offset_is_409_and_the_offset_stays,
    version_type_and_header_checks,
    a_checksum_mismatch_is_460_and_discards_the_piece,
    another_account_gets_404_on_every_method,
    bytes_past_the_length_are_413_and_end_the_upload,
    termination_leaves_nothing,
    expiry_leaves_nothing,
    a_length_over_the_limit_is_413_at_creation,
    a_newer_request_takes_over_from_a_stalled_one,
    content_that_the_extension_cannot_be_is_refused,
    incomplete_uploads_per_account_are_limited,
    an_idempotency_key_returns_the_same_upload,
    creation_with_upload_and_deferred_length,
    a_stalled_body_is_408_and_keeps_what_it_sent,
    one_byte_chunks_are_kept_and_checked_like_any,
);

const TUS: &str = "1.0.0";
const OFFSET_STREAM: &str = "application/offset+octet-stream";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `Upload-Metadata` naming the file as tus-js-client does.
fn metadata(filename: &str, filetype: &str) -> String {
    format!(
        "filename {},filetype {}",
        b64(filename.as_bytes()),
        b64(filetype.as_bytes())
    )
}

/// Creates an upload of `length` bytes; its path.
async fn create(app: &TestApp, token: &str, length: u64, meta: &str) -> String {
    let response = app
        .request(Method::POST, "/v1/uploads", Some(token))
        .header("Tus-Resumable", TUS)
        .header("Upload-Length", length.to_string())
        .header("Upload-Metadata", meta)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{:?}", response.text().await);
    assert_eq!(response.headers()["tus-resumable"], TUS);
    assert!(response.headers().contains_key("upload-expires"));
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with("/v1/uploads/"), "{location}");
    location
}

async fn patch(app: &TestApp, token: &str, path: &str, offset: u64, bytes: Vec<u8>) -> Response {
    app.request(Method::PATCH, path, Some(token))
        .header("Tus-Resumable", TUS)
        .header("Content-Type", OFFSET_STREAM)
        .header("Upload-Offset", offset.to_string())
        .body(bytes)
        .send()
        .await
        .unwrap()
}

async fn head(app: &TestApp, token: &str, path: &str) -> Response {
    app.request(Method::HEAD, path, Some(token))
        .header("Tus-Resumable", TUS)
        .send()
        .await
        .unwrap()
}

fn header_u64(response: &Response, name: &str) -> u64 {
    response.headers()[name].to_str().unwrap().parse().unwrap()
}

/// The offset `HEAD` answers.
async fn offset(app: &TestApp, token: &str, path: &str) -> u64 {
    let response = head(app, token, path).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    header_u64(&response, "upload-offset")
}

fn media_id(path: &str) -> &str {
    path.rsplit('/').next().unwrap()
}

/// Asserts the upload is media of exactly `bytes`, served like a one-shot upload's.
async fn assert_media(app: &TestApp, token: &str, path: &str, bytes: &[u8]) {
    let id = media_id(path);
    let got = app.get(token, id).await;
    assert_eq!(got.status(), 200);
    let etag = got.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(etag, format!("\"{}\"", sha256_hex(bytes)));
    let body = got.bytes().await.unwrap();
    assert_eq!(body.len(), bytes.len());
    assert!(body == bytes, "the bytes differ");
    let done = head(app, token, path).await;
    assert_eq!(done.status(), 200);
    assert_eq!(header_u64(&done, "upload-offset"), bytes.len() as u64);
    assert_eq!(header_u64(&done, "upload-length"), bytes.len() as u64);
    assert!(!done.headers().contains_key("upload-expires"));
}

async fn options_advertise_the_protocol(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let response = app
        .request(Method::OPTIONS, "/v1/uploads", None)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let headers = response.headers();
    assert_eq!(headers["tus-resumable"], TUS);
    assert_eq!(headers["tus-version"], TUS);
    let extensions = headers["tus-extension"].to_str().unwrap();
    for extension in [
        "creation",
        "creation-with-upload",
        "expiration",
        "checksum",
        "termination",
    ] {
        assert!(
            extensions.split(',').any(|e| e == extension),
            "{extensions}"
        );
    }
    assert_eq!(
        headers["tus-max-size"],
        app.settings.limits.max_upload_bytes.to_string().as_str()
    );
    assert_eq!(headers["tus-checksum-algorithm"], "sha1,sha256");
}

/// Pieces of odd sizes: below a part, across part boundaries, a 1-byte piece, the last
/// one; the result is the media of the bytes, and nothing else is stored.
async fn an_upload_in_odd_pieces_is_the_media_of_its_bytes(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    let bytes = content(2 * PART_SIZE + 777_777, 7);
    let path = create(&app, &token, bytes.len() as u64, &metadata("clip.bin", "")).await;
    assert_eq!(offset(&app, &token, &path).await, 0);
    let cuts = [
        0,
        1_000_003,
        1_000_004,
        PART_SIZE + 3,
        2 * PART_SIZE + 5,
        bytes.len(),
    ];
    for window in cuts.windows(2) {
        let (from, to) = (window[0], window[1]);
        let response = patch(&app, &token, &path, from as u64, bytes[from..to].to_vec()).await;
        assert_eq!(response.status(), 204, "{:?}", response.text().await);
        assert_eq!(response.headers()["tus-resumable"], TUS);
        assert_eq!(header_u64(&response, "upload-offset"), to as u64);
        if to < bytes.len() {
            assert_eq!(offset(&app, &token, &path).await, to as u64);
        }
    }
    assert_media(&app, &token, &path, &bytes).await;
    // One row and one object: no temporary object, no multipart upload is left.
    app.assert_eventually_holds(1).await;
    // The media is listed and described like any other.
    let info = app
        .request(
            Method::GET,
            &format!("/v1/media/{}/info", media_id(&path)),
            Some(&token),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(info.status(), 200);
}

async fn a_wrong_offset_is_409_and_the_offset_stays(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    let bytes = content(100_000, 3);
    let path = create(&app, &token, bytes.len() as u64, &metadata("a.bin", "")).await;
    let first = patch(&app, &token, &path, 0, bytes[..40_000].to_vec()).await;
    assert_eq!(first.status(), 204);
    for wrong in [0, 39_999, 40_001, 100_000] {
        let response = patch(&app, &token, &path, wrong, bytes[40_000..].to_vec()).await;
        assert_eq!(header_u64(&response, "upload-offset"), 40_000);
        assert_error(response, 409, 1009).await;
    }
    assert_eq!(offset(&app, &token, &path).await, 40_000);
    let rest = patch(&app, &token, &path, 40_000, bytes[40_000..].to_vec()).await;
    assert_eq!(rest.status(), 204);
    assert_media(&app, &token, &path, &bytes).await;
}

async fn version_type_and_header_checks(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    let path = create(&app, &token, 10, &metadata("a.bin", "")).await;
    // No or another tus version: 412 naming the one spoken.
    for version in [None, Some("0.2.2"), Some("1.0.0, 1.0.0")] {
        let mut request = app
            .request(Method::PATCH, &path, Some(&token))
            .header("Content-Type", OFFSET_STREAM)
            .header("Upload-Offset", "0");
        if let Some(version) = version {
            request = request.header("Tus-Resumable", version);
        }
        let response = request.body(vec![1u8; 10]).send().await.unwrap();
        assert_eq!(response.headers()["tus-version"], TUS);
        assert_error(response, 412, 1009).await;
    }
    // Another body type: 415.
    let response = app
        .request(Method::PATCH, &path, Some(&token))
        .header("Tus-Resumable", TUS)
        .header("Content-Type", "application/octet-stream")
        .header("Upload-Offset", "0")
        .body(vec![1u8; 10])
        .send()
        .await
        .unwrap();
    assert_error(response, 415, 1009).await;
    // No offset, or not a number, or twice: 400.
    for offsets in [vec![], vec!["-1"], vec!["1e3"], vec!["0", "0"]] {
        let mut request = app
            .request(Method::PATCH, &path, Some(&token))
            .header("Tus-Resumable", TUS)
            .header("Content-Type", OFFSET_STREAM);
        for value in &offsets {
            request = request.header("Upload-Offset", *value);
        }
        let response = request.body(vec![1u8; 10]).send().await.unwrap();
        let code = if offsets.is_empty() { 1008 } else { 1009 };
        assert_error(response, 400, code).await;
    }
    // A creation without a length, or without anything naming the extension: 400.
    let no_length = app
        .request(Method::POST, "/v1/uploads", Some(&token))
        .header("Tus-Resumable", TUS)
        .header("Upload-Metadata", metadata("a.bin", ""))
        .send()
        .await
        .unwrap();
    assert_error(no_length, 400, 1008).await;
    let no_type = app
        .request(Method::POST, "/v1/uploads", Some(&token))
        .header("Tus-Resumable", TUS)
        .header("Upload-Length", "10")
        .send()
        .await
        .unwrap();
    assert_error(no_type, 400, 1008).await;
    // Without a token: 401; without the write scope: 403.
    let anonymous = app
        .request(Method::HEAD, &path, None)
        .header("Tus-Resumable", TUS)
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let reader = app.token_with_scope("acct", "media:read");
    let response = patch(&app, &reader, &path, 0, vec![1u8; 10]).await;
    assert_error(response, 403, 1005).await;
    // Nothing of it was written.
    assert_eq!(offset(&app, &token, &path).await, 0);
}

async fn a_checksum_mismatch_is_460_and_discards_the_piece(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    let bytes = content(PART_SIZE + 4321, 5);
    let path = create(&app, &token, bytes.len() as u64, &metadata("a.bin", "")).await;
    let piece = bytes[..PART_SIZE + 10].to_vec();
    let send = |algorithm: &'static str, digest: Vec<u8>, piece: Vec<u8>, at: u64| {
        let app = &app;
        let token = &token;
        let path = &path;
        async move {
            app.request(Method::PATCH, path, Some(token))
                .header("Tus-Resumable", TUS)
                .header("Content-Type", OFFSET_STREAM)
                .header("Upload-Offset", at.to_string())
                .header("Upload-Checksum", format!("{algorithm} {}", b64(&digest)))
                .body(piece)
                .send()
                .await
                .unwrap()
        }
    };
    // A wrong SHA-1 (of other bytes): 460, and the offset has not moved.
    let wrong = {
        use sha1::Digest;
        sha1::Sha1::digest(b"other bytes").to_vec()
    };
    let response = send("sha1", wrong, piece.clone(), 0).await;
    assert_error(response, 460, 1009).await;
    assert_eq!(offset(&app, &token, &path).await, 0);
    // An algorithm not offered: 400.
    let response = send("md5", vec![0; 16], piece.clone(), 0).await;
    assert_error(response, 400, 1009).await;
    // The right SHA-1, then the right SHA-256 of the rest.
    let right = {
        use sha1::Digest;
        sha1::Sha1::digest(&piece).to_vec()
    };
    let response = send("sha1", right, piece.clone(), 0).await;
    assert_eq!(response.status(), 204, "{:?}", response.text().await);
    let rest = bytes[piece.len()..].to_vec();
    let digest = hex::decode(sha256_hex(&rest)).unwrap();
    let response = send("sha256", digest, rest, piece.len() as u64).await;
    assert_eq!(response.status(), 204, "{:?}", response.text().await);
    assert_media(&app, &token, &path, &bytes).await;
    app.assert_eventually_holds(1).await;
}

async fn another_account_gets_404_on_every_method(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let owner = app.token("owner");
    let other = app.token("other");
    let bytes = content(50_000, 9);
    let path = create(&app, &owner, bytes.len() as u64, &metadata("a.bin", "")).await;
    assert_eq!(
        patch(&app, &owner, &path, 0, bytes[..10_000].to_vec())
            .await
            .status(),
        204
    );
    assert_eq!(head(&app, &other, &path).await.status(), 404);
    let response = patch(&app, &other, &path, 10_000, bytes[10_000..].to_vec()).await;
    assert_error(response, 404, 1006).await;
    let response = app
        .request(Method::DELETE, &path, Some(&other))
        .header("Tus-Resumable", TUS)
        .send()
        .await
        .unwrap();
    assert_error(response, 404, 1006).await;
    // Unknown and malformed ids are the same 404.
    for unknown in [
        format!("/v1/uploads/{}", uuid::Uuid::new_v4()),
        "/v1/uploads/not-an-id".to_owned(),
    ] {
        assert_eq!(head(&app, &owner, &unknown).await.status(), 404);
    }
    // The owner's upload is untouched and completes.
    assert_eq!(offset(&app, &owner, &path).await, 10_000);
    let rest = patch(&app, &owner, &path, 10_000, bytes[10_000..].to_vec()).await;
    assert_eq!(rest.status(), 204);
    assert_media(&app, &owner, &path, &bytes).await;
    // Once complete, the other account still sees nothing.
    assert_eq!(head(&app, &other, &path).await.status(), 404);
    assert_eq!(app.get(&other, media_id(&path)).await.status(), 404);
}

async fn bytes_past_the_length_are_413_and_end_the_upload(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    let path = create(&app, &token, PART_SIZE as u64 + 100, &metadata("a.bin", "")).await;
    assert_eq!(
        patch(&app, &token, &path, 0, content(PART_SIZE + 50, 1))
            .await
            .status(),
        204
    );
    let response = patch(&app, &token, &path, PART_SIZE as u64 + 50, content(51, 2)).await;
    assert_error(response, 413, 1009).await;
    assert_eq!(head(&app, &token, &path).await.status(), 404);
    app.assert_eventually_empty().await;
    let metrics = app.metrics_text().await;
    let ended = labelled_value(
        &metrics,
        "media_resumable_uploads_total",
        &[("event", "ended")],
    );
    assert_eq!(ended, Some(1.0), "an ended upload is counted");
}

async fn termination_leaves_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    let path = create(&app, &token, 3 * PART_SIZE as u64, &metadata("a.bin", "")).await;
    // A full part and a temporary tail.
    assert_eq!(
        patch(&app, &token, &path, 0, content(PART_SIZE + 12_345, 4))
            .await
            .status(),
        204
    );
    assert!(!app.is_empty().await);
    let response = app
        .request(Method::DELETE, &path, Some(&token))
        .header("Tus-Resumable", TUS)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(response.headers()["tus-resumable"], TUS);
    assert_eq!(head(&app, &token, &path).await.status(), 404);
    app.assert_eventually_empty().await;
    // A completed upload's DELETE deletes the media.
    let bytes = content(1000, 6);
    let done = create(&app, &token, 1000, &metadata("a.bin", "")).await;
    assert_eq!(patch(&app, &token, &done, 0, bytes).await.status(), 204);
    let response = app
        .request(Method::DELETE, &done, Some(&token))
        .header("Tus-Resumable", TUS)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(app.get(&token, media_id(&done)).await.status(), 404);
    app.assert_eventually_empty().await;
}

/// A paused upload past its expiry is 404, and the reaper removes its multipart upload,
/// temporary object and row.
async fn expiry_leaves_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    let path = create(&app, &token, 3 * PART_SIZE as u64, &metadata("a.bin", "")).await;
    assert_eq!(
        patch(&app, &token, &path, 0, content(PART_SIZE + 999, 4))
            .await
            .status(),
        204
    );
    let expires = head(&app, &token, &path).await;
    let expires = expires.headers()["upload-expires"]
        .to_str()
        .unwrap()
        .to_owned();
    let expires = httpdate::parse_http_date(&expires).unwrap();
    let in_an_hour = std::time::SystemTime::now() + Duration::from_secs(3600);
    assert!(
        expires <= in_an_hour + Duration::from_secs(2)
            && expires >= in_an_hour - Duration::from_secs(60)
    );
    app.expire(media_id(&path)).await;
    assert_eq!(head(&app, &token, &path).await.status(), 404);
    let response = patch(&app, &token, &path, PART_SIZE as u64 + 999, vec![1; 10]).await;
    assert_error(response, 404, 1006).await;
    let (_tx, stop) = tokio::sync::watch::channel(false);
    app.reaper().pass(&stop).await;
    app.assert_eventually_empty().await;
}

async fn a_length_over_the_limit_is_413_at_creation(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    let limit = app.settings.limits.max_upload_bytes;
    let response = app
        .request(Method::POST, "/v1/uploads", Some(&token))
        .header("Tus-Resumable", TUS)
        .header("Upload-Length", (limit + 1).to_string())
        .header("Upload-Metadata", metadata("a.bin", ""))
        .send()
        .await
        .unwrap();
    assert_error(response, 413, 1009).await;
    assert!(app.is_empty().await);
}

/// A PATCH whose client stalls mid-body (its connection still open) holds the upload; a
/// reconnecting client's HEAD gets it within seconds, with every byte the stalled one
/// sent, and its PATCH completes the upload.
async fn a_newer_request_takes_over_from_a_stalled_one(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    let bytes = content(PART_SIZE + 300_000, 8);
    let path = create(&app, &token, bytes.len() as u64, &metadata("a.bin", "")).await;
    let sent = 1_234_567;
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tx.send(Ok(Bytes::copy_from_slice(&bytes[..sent])))
        .await
        .unwrap();
    let stalled = app
        .request(Method::PATCH, &path, Some(&token))
        .header("Tus-Resumable", TUS)
        .header("Content-Type", OFFSET_STREAM)
        .header("Upload-Offset", "0")
        .header("Content-Length", bytes.len().to_string())
        .body(reqwest::Body::wrap_stream(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .send();
    let stalled = tokio::spawn(stalled);
    // The server has read what was sent.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let started = std::time::Instant::now();
    let resumed_at = offset(&app, &token, &path).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took over in {:?}",
        started.elapsed()
    );
    assert_eq!(resumed_at, sent as u64);
    let rest = patch(&app, &token, &path, resumed_at, bytes[sent..].to_vec()).await;
    assert_eq!(rest.status(), 204, "{:?}", rest.text().await);
    assert_media(&app, &token, &path, &bytes).await;
    drop(tx);
    let _ = stalled.await;
    app.assert_eventually_holds(1).await;
}

async fn content_that_the_extension_cannot_be_is_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0".to_vec();
    png.extend(content(20_000, 1));
    let path = create(
        &app,
        &token,
        png.len() as u64,
        &metadata("photo.jpg", "image/jpeg"),
    )
    .await;
    let response = patch(&app, &token, &path, 0, png.clone()).await;
    assert_error(response, 400, 1009).await;
    assert_eq!(head(&app, &token, &path).await.status(), 404);
    app.assert_eventually_empty().await;
    // The same bytes as what they are pass, in pieces smaller than the checked head.
    let path = create(
        &app,
        &token,
        png.len() as u64,
        &metadata("photo.png", "image/png"),
    )
    .await;
    assert_eq!(
        patch(&app, &token, &path, 0, png[..100].to_vec())
            .await
            .status(),
        204
    );
    assert_eq!(
        patch(&app, &token, &path, 100, png[100..].to_vec())
            .await
            .status(),
        204
    );
    assert_media(&app, &token, &path, &png).await;
    // Text that begins like a binary format, uploaded as text, passes.
    let text = b"%PDF is how a PDF begins; this is prose about it.\n".repeat(200);
    let path = create(
        &app,
        &token,
        text.len() as u64,
        &metadata("notes.txt", "text/plain"),
    )
    .await;
    assert_eq!(
        patch(&app, &token, &path, 0, text.clone()).await.status(),
        204
    );
    assert_media(&app, &token, &path, &text).await;
}

async fn incomplete_uploads_per_account_are_limited(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| s.uploads.max_incomplete_per_account = 2).await;
    let token = app.token("acct");
    let first = create(&app, &token, 10, &metadata("a.bin", "")).await;
    create(&app, &token, 10, &metadata("a.bin", "")).await;
    let third = app
        .request(Method::POST, "/v1/uploads", Some(&token))
        .header("Tus-Resumable", TUS)
        .header("Upload-Length", "10")
        .header("Upload-Metadata", metadata("a.bin", ""))
        .send()
        .await
        .unwrap();
    assert!(third.headers().contains_key("retry-after"));
    assert_error(third, 429, 1015).await;
    // Another account is not counted; a completed upload no longer is.
    create(&app, &app.token("other"), 10, &metadata("a.bin", "")).await;
    assert_eq!(
        patch(&app, &token, &first, 0, vec![7; 10]).await.status(),
        204
    );
    create(&app, &token, 10, &metadata("a.bin", "")).await;
}

async fn an_idempotency_key_returns_the_same_upload(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    let create_keyed = |key: &'static str| {
        let app = &app;
        let token = &token;
        async move {
            app.request(Method::POST, "/v1/uploads", Some(token))
                .header("Tus-Resumable", TUS)
                .header("Upload-Length", "1000")
                .header("Upload-Metadata", metadata("a.bin", ""))
                .header("Idempotency-Key", key)
                .send()
                .await
                .unwrap()
        }
    };
    let first = create_keyed("k-1").await;
    assert_eq!(first.status(), 201);
    let location = first.headers()["location"].clone();
    let again = create_keyed("k-1").await;
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["location"], location);
    let other = create_keyed("k-2").await;
    assert_ne!(other.headers()["location"], location);
    assert_eq!(app.row_count().await, 2);
}

async fn creation_with_upload_and_deferred_length(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    let bytes = content(PART_SIZE + 5000, 2);
    // The first bytes with the creation.
    let response = app
        .request(Method::POST, "/v1/uploads", Some(&token))
        .header("Tus-Resumable", TUS)
        .header("Upload-Length", bytes.len().to_string())
        .header("Upload-Metadata", metadata("a.bin", ""))
        .header("Content-Type", OFFSET_STREAM)
        .body(bytes[..70_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{:?}", response.text().await);
    assert_eq!(header_u64(&response, "upload-offset"), 70_000);
    let path = response.headers()["location"].to_str().unwrap().to_owned();
    let rest = patch(&app, &token, &path, 70_000, bytes[70_000..].to_vec()).await;
    assert_eq!(rest.status(), 204);
    assert_media(&app, &token, &path, &bytes).await;
    // A deferred length, declared with the last piece.
    let response = app
        .request(Method::POST, "/v1/uploads", Some(&token))
        .header("Tus-Resumable", TUS)
        .header("Upload-Defer-Length", "1")
        .header("Upload-Metadata", metadata("b.bin", ""))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let path = response.headers()["location"].to_str().unwrap().to_owned();
    let status = head(&app, &token, &path).await;
    assert_eq!(status.headers()["upload-defer-length"], "1");
    assert_eq!(
        patch(&app, &token, &path, 0, bytes[..1000].to_vec())
            .await
            .status(),
        204
    );
    let last = app
        .request(Method::PATCH, &path, Some(&token))
        .header("Tus-Resumable", TUS)
        .header("Content-Type", OFFSET_STREAM)
        .header("Upload-Offset", "1000")
        .header("Upload-Length", bytes.len().to_string())
        .body(bytes[1000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(last.status(), 204, "{:?}", last.text().await);
    assert_media(&app, &token, &path, &bytes).await;
}

/// A PATCH whose client stops sending for longer than `limits.body_idle_timeout` is
/// answered 408; what it sent before is kept, and the upload continues from there.
async fn a_stalled_body_is_408_and_keeps_what_it_sent(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| {
        s.limits.body_idle_timeout = Duration::from_secs(1);
        s.limits.min_body_rate_bytes_per_sec = 0;
    })
    .await;
    let token = app.token("acct");
    let bytes = content(PART_SIZE + 100_000, 12);
    let path = create(&app, &token, bytes.len() as u64, &metadata("a.bin", "")).await;
    let sent = PART_SIZE + 4_321;
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tx.send(Ok(Bytes::copy_from_slice(&bytes[..sent])))
        .await
        .unwrap();
    let response = app
        .request(Method::PATCH, &path, Some(&token))
        .header("Tus-Resumable", TUS)
        .header("Content-Type", OFFSET_STREAM)
        .header("Upload-Offset", "0")
        .header("Content-Length", bytes.len().to_string())
        .body(reqwest::Body::wrap_stream(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .send()
        .await
        .unwrap();
    assert_error(response, 408, 1009).await;
    drop(tx);
    assert_eq!(offset(&app, &token, &path).await, sent as u64);
    let rest = patch(&app, &token, &path, sent as u64, bytes[sent..].to_vec()).await;
    assert_eq!(rest.status(), 204, "{:?}", rest.text().await);
    assert_media(&app, &token, &path, &bytes).await;
    app.assert_eventually_holds(1).await;
}

/// A body of 1-byte chunks (past the content check's head), then the rest in one chunk
/// across a part boundary: every byte is kept, hashed and checked once.
async fn one_byte_chunks_are_kept_and_checked_like_any(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0".to_vec();
    png.extend(content(PART_SIZE + 30_000, 13));
    let path = create(
        &app,
        &token,
        png.len() as u64,
        &metadata("dot.png", "image/png"),
    )
    .await;
    let singles = 9_000;
    let chunks: Vec<Result<Bytes, std::io::Error>> = png[..singles]
        .iter()
        .map(|b| Ok(Bytes::copy_from_slice(&[*b])))
        .chain(std::iter::once(Ok(Bytes::copy_from_slice(&png[singles..]))))
        .collect();
    let response = app
        .request(Method::PATCH, &path, Some(&token))
        .header("Tus-Resumable", TUS)
        .header("Content-Type", OFFSET_STREAM)
        .header("Upload-Offset", "0")
        .header("Content-Length", png.len().to_string())
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204, "{:?}", response.text().await);
    assert_media(&app, &token, &path, &png).await;
    app.assert_eventually_holds(1).await;
}
