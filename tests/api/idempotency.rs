//! `Idempotency-Key` on `POST /v1/media`: a retry with the same key and bytes answers the
//! first upload's media and keeps nothing of its own; other bytes are 422; a retry while
//! the first still streams is 409; a key is free again once its media expired or was
//! deleted or purged, or its first upload crashed; keys are per account.

use std::time::Duration;

use bytes::Bytes;
use reqwest::{Method, Response};
use serde_json::Value;
use tokio::sync::mpsc;

use test_support::on_both_backends;
use test_support::{assert_error, content, labelled_value, Backend, TestApp, PART_SIZE};

on_both_backends!(
    the_same_bytes_again_answer_the_same_media,
    other_bytes_under_the_same_key_are_422_and_leave_nothing,
    another_extension_under_the_same_key_is_422_and_leaves_nothing,
    a_retry_while_the_first_streams_is_409_before_its_body,
    a_crashed_first_upload_frees_its_key,
    expired_media_frees_its_key,
    deleted_and_purged_media_free_their_key,
    keys_are_per_account,
    invalid_or_repeated_keys_are_400,
    concurrent_retries_after_the_first_is_ready_share_its_id,
    racing_first_uploads_store_one_medium,
    a_failed_first_upload_frees_its_key,
);

async fn upload_keyed(app: &TestApp, token: &str, key: &str, body: Vec<u8>) -> Response {
    upload_keyed_as(app, token, key, "bin", body).await
}

async fn upload_keyed_as(
    app: &TestApp,
    token: &str,
    key: &str,
    extension: &str,
    body: Vec<u8>,
) -> Response {
    app.request(Method::POST, "/v1/media", Some(token))
        .header("X-Gr-File-Extension", extension)
        .header("Idempotency-Key", key)
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Asserts a 201 of the contract's shape and returns the id and whether it was a replay.
async fn created(response: Response) -> (String, bool) {
    assert_eq!(response.status(), 201, "{:?}", response.headers());
    let replayed = match response.headers().get("idempotent-replayed") {
        None => false,
        Some(value) => {
            assert_eq!(value, "true");
            true
        }
    };
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    let id = body["media"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        body,
        serde_json::json!({"media":[{"id": id}],"meta":{"api_status":"stable","version":"2.0.1"}})
    );
    assert_eq!(location, format!("/v1/media/{id}"));
    (id, replayed)
}

async fn assert_content(app: &TestApp, token: &str, id: &str, expected: &[u8]) {
    let response = app.get(token, id).await;
    assert_eq!(response.status(), 200);
    assert!(
        response.bytes().await.unwrap() == expected,
        "content of {id}"
    );
}

async fn outcome(app: &TestApp, label: &str) -> f64 {
    let text = app.metrics_text().await;
    labelled_value(&text, "media_uploads_total", &[("outcome", label)]).unwrap_or(0.0)
}

/// A keyed upload whose body the test sends: its first upload "still streaming".
struct HeldUpload {
    sender: Option<mpsc::Sender<Result<Bytes, std::io::Error>>>,
    response: tokio::task::JoinHandle<reqwest::Result<Response>>,
}

impl HeldUpload {
    async fn start(app: &TestApp, token: &str, key: &str, first: Vec<u8>) -> Self {
        let (sender, receiver) = mpsc::channel(4);
        let body =
            reqwest::Body::wrap_stream(tokio_stream::wrappers::ReceiverStream::new(receiver));
        let request = app
            .request(Method::POST, "/v1/media", Some(token))
            .header("X-Gr-File-Extension", "bin")
            .header("Idempotency-Key", key)
            .body(body);
        let response = tokio::spawn(request.send());
        sender.send(Ok(Bytes::from(first))).await.unwrap();
        Self {
            sender: Some(sender),
            response,
        }
    }

    async fn send(&self, bytes: Vec<u8>) {
        let sender = self.sender.as_ref().unwrap();
        sender.send(Ok(Bytes::from(bytes))).await.unwrap();
    }

    async fn finish(mut self) -> Response {
        drop(self.sender.take());
        tokio::time::timeout(Duration::from_secs(30), &mut self.response)
            .await
            .expect("an answer once the body ended")
            .unwrap()
            .unwrap()
    }
}

/// Waits (bounded) until there are `n` rows.
async fn wait_for_rows(app: &TestApp, n: u64) {
    for _ in 0..200 {
        if app.row_count().await == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(app.row_count().await, n, "rows");
}

/// A first upload, then retries with the same bytes (small, and multipart-sized), in the
/// plain and the quoted form of the key: the same id, 201, `Idempotent-Replayed: true`,
/// and one row and one object per medium.
async fn the_same_bytes_again_answer_the_same_media(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    let small = content(3000, 1);
    let (id, replayed) = created(upload_keyed(&app, &token, "order-17", small.clone()).await).await;
    assert!(!replayed, "a first upload is no replay");

    for key in ["order-17", "\"order-17\""] {
        let (again, replayed) = created(upload_keyed(&app, &token, key, small.clone()).await).await;
        assert_eq!(again, id, "{key}");
        assert!(replayed, "{key}");
    }
    assert_eq!(app.row_count().await, 1);
    assert_eq!(app.object_keys().await.len(), 1);

    // Multipart-sized: the retry's parts reach storage before its hash is known, and are
    // removed all the same.
    let large = content(PART_SIZE + PART_SIZE / 2, 2);
    let (large_id, _) = created(upload_keyed(&app, &token, "big", large.clone()).await).await;
    let (again, replayed) = created(upload_keyed(&app, &token, "big", large.clone()).await).await;
    assert_eq!(again, large_id);
    assert!(replayed);
    app.assert_eventually_holds(2).await;
    assert_content(&app, &token, &id, &small).await;
    assert_content(&app, &token, &large_id, &large).await;
    assert_eq!(outcome(&app, "replayed").await, 3.0);
    assert_eq!(outcome(&app, "stored").await, 2.0);
    assert_eq!(
        test_support::metric_value(&app.metrics_text().await, "media_uploads_in_flight"),
        Some(0.0)
    );
}

/// The same key with other bytes: 422 (code 1009, details naming the key), nothing of the
/// retry stays, and the first upload is untouched and still answers its own retries.
async fn other_bytes_under_the_same_key_are_422_and_leave_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    let first = content(2000, 3);
    let (id, _) = created(upload_keyed(&app, &token, "k-1", first.clone()).await).await;

    for other in [content(2000, 4), content(PART_SIZE + 1000, 5)] {
        let response = upload_keyed(&app, &token, "k-1", other).await;
        let error = assert_error(response, 422, 1009).await;
        let details = error["errors"][0]["details"].as_str().unwrap();
        assert!(details.contains("Idempotency-Key"), "{details}");
        assert!(details.contains("conflict"), "{details}");
    }
    app.assert_eventually_holds(1).await;
    assert_content(&app, &token, &id, &first).await;
    let (again, replayed) = created(upload_keyed(&app, &token, "k-1", first).await).await;
    assert_eq!(again, id);
    assert!(replayed);
    assert_eq!(outcome(&app, "conflict").await, 2.0);
    app.assert_eventually_holds(1).await;
}

/// The extension is part of the request: the same key and bytes with another
/// `X-Gr-File-Extension` are 422 (code 1009, details naming the extension), also at
/// `Expect: 100-continue` before the body is sent, and nothing of the retry stays; the
/// same extension in another spelling (case, a leading dot) is the same request.
async fn another_extension_under_the_same_key_is_422_and_leaves_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    let small = content(2000, 11);
    let (id, _) = created(upload_keyed_as(&app, &token, "ext-1", "bin", small.clone()).await).await;
    let large = content(PART_SIZE + 1000, 12);
    let (large_id, _) =
        created(upload_keyed_as(&app, &token, "ext-2", "bin", large.clone()).await).await;

    for (key, body) in [("ext-1", &small), ("ext-2", &large)] {
        for extension in ["txt", "jpg"] {
            let response = upload_keyed_as(&app, &token, key, extension, body.clone()).await;
            let error = assert_error(response, 422, 1009).await;
            let details = error["errors"][0]["details"].as_str().unwrap();
            assert!(details.contains("Idempotency-Key"), "{details}");
            assert!(details.contains("X-Gr-File-Extension"), "{details}");
        }
    }
    let headers = [
        ("X-Gr-File-Extension", "txt".to_owned()),
        ("Authorization", format!("Bearer {token}")),
        ("Idempotency-Key", "ext-1".to_owned()),
    ];
    let (_stream, head) =
        crate::http_layer::expect_continue_with(app.port(), &headers, small.len() as u64).await;
    assert!(head.starts_with("HTTP/1.1 422"), "{head}");
    app.assert_eventually_holds(2).await;

    // The first uploads are untouched, served as what they were sent as, and still answer
    // their retries, whatever the spelling of their extension.
    for extension in ["bin", "BIN", ".bin"] {
        let (again, replayed) =
            created(upload_keyed_as(&app, &token, "ext-1", extension, small.clone()).await).await;
        assert_eq!(again, id, "{extension}");
        assert!(replayed, "{extension}");
    }
    let (again, replayed) =
        created(upload_keyed_as(&app, &token, "ext-2", "bin", large.clone()).await).await;
    assert_eq!(again, large_id);
    assert!(replayed);
    let response = app.get(&token, &id).await;
    assert_eq!(
        response.headers()["content-type"],
        "application/octet-stream"
    );
    assert_content(&app, &token, &id, &small).await;
    assert_content(&app, &token, &large_id, &large).await;
    assert_eq!(outcome(&app, "conflict").await, 4.0);
    app.assert_eventually_holds(2).await;
}

/// While the first upload streams, a retry is 409 (code 1004) without a byte of its body
/// read, also at `Expect: 100-continue`; once the first is ready, the retry answers it.
async fn a_retry_while_the_first_streams_is_409_before_its_body(backend: Backend) {
    // The held body trickles: no 408 for it on a slow machine.
    let app = TestApp::spawn_with(backend, |settings| {
        settings.limits.min_body_rate_grace = Duration::from_secs(300);
    })
    .await;
    let token = app.token("acct");
    let first = content(4000, 6);
    let held = HeldUpload::start(&app, &token, "slow", first[..1000].to_vec()).await;
    wait_for_rows(&app, 1).await;

    // The retry's body never comes: the answer must not wait for it.
    let (_silent, receiver) = mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    let body = reqwest::Body::wrap_stream(tokio_stream::wrappers::ReceiverStream::new(receiver));
    let retry = app
        .request(Method::POST, "/v1/media", Some(&token))
        .header("X-Gr-File-Extension", "bin")
        .header("Idempotency-Key", "slow")
        .body(body)
        .send();
    let response = tokio::time::timeout(Duration::from_secs(10), retry)
        .await
        .expect("answered without its body")
        .unwrap();
    let error = assert_error(response, 409, 1004).await;
    assert!(error["errors"][0]["details"]
        .as_str()
        .unwrap()
        .contains("Idempotency-Key"));

    // With `Expect: 100-continue` the client is told before it sends anything.
    let headers = [
        ("X-Gr-File-Extension", "bin".to_owned()),
        ("Authorization", format!("Bearer {token}")),
        ("Idempotency-Key", "slow".to_owned()),
    ];
    let (_stream, head) = crate::http_layer::expect_continue_with(app.port(), &headers, 4000).await;
    assert!(head.starts_with("HTTP/1.1 409"), "{head}");
    // Only the first upload's row exists.
    assert_eq!(app.row_count().await, 1);

    held.send(first[1000..].to_vec()).await;
    let (id, replayed) = created(held.finish().await).await;
    assert!(!replayed);
    let (again, replayed) = created(upload_keyed(&app, &token, "slow", first.clone()).await).await;
    assert_eq!(again, id);
    assert!(replayed);
    app.assert_eventually_holds(1).await;
    assert_content(&app, &token, &id, &first).await;
}

/// A first upload that crashed (its row `uploading`, its heartbeat older than three
/// `reaper.heartbeat_interval`s, an object written) holds its key no more: a new upload
/// with the key is stored as a first one, and the reaper still removes the crashed row and
/// its object.
async fn a_crashed_first_upload_frees_its_key(backend: Backend) {
    use media_node::domain::{AccountId, FileExtension, MediaId};
    use media_node::metadata::{KeyedInsert, NewMedia};
    use object_store::ObjectStoreExt;
    // The test runs the reaper's passes itself: the background reaper's quick pass for
    // dead uploads (every heartbeat) would otherwise race it for the rows it looks at.
    let app = TestApp::spawn_with(backend, |s| s.reaper.enabled = false).await;
    let token = app.token("acct");
    let metadata = &app.state.metadata;
    let storage = &app.state.storage;

    // A live upload holding the key first: a new one is 409.
    let now = chrono::Utc::now();
    let live = NewMedia {
        id: MediaId::new_random(),
        owner: AccountId::parse("acct").unwrap(),
        extension: FileExtension::parse("bin").unwrap(),
        created_at: now,
        expires_at: now + chrono::Duration::hours(24),
    };
    let stale_before = now - chrono::Duration::hours(1);
    assert_eq!(
        metadata
            .insert_uploading_keyed(&live, "live", stale_before)
            .await
            .unwrap(),
        KeyedInsert::Inserted
    );
    let response = upload_keyed(&app, &token, "live", content(10, 1)).await;
    assert_error(response, 409, 1004).await;

    // A crashed one: started two hours ago, its heartbeat never refreshed since.
    let started = now - chrono::Duration::hours(2);
    let crashed = NewMedia {
        id: MediaId::new_random(),
        created_at: started,
        expires_at: started + chrono::Duration::hours(24),
        ..live.clone()
    };
    assert_eq!(
        metadata
            .insert_uploading_keyed(&crashed, "retry-me", started - chrono::Duration::hours(1))
            .await
            .unwrap(),
        KeyedInsert::Inserted
    );
    storage
        .store()
        .put(&storage.key(crashed.id), b"half an upload".to_vec().into())
        .await
        .unwrap();

    let bytes = content(3000, 7);
    let (id, replayed) = created(upload_keyed(&app, &token, "retry-me", bytes.clone()).await).await;
    assert!(!replayed);
    assert_ne!(id, crashed.id.to_string());
    let (again, replayed) =
        created(upload_keyed(&app, &token, "retry-me", bytes.clone()).await).await;
    assert_eq!(again, id, "the new upload holds the key now");
    assert!(replayed);
    let old = metadata
        .get(crashed.id)
        .await
        .unwrap()
        .expect("left to the reaper");
    assert_eq!(old.idempotency_key, None);

    // The reaper removes the crashed upload, row and object; the new media stays.
    metadata.delete(live.id).await.unwrap();
    let report = app
        .reaper()
        .pass(&tokio::sync::watch::channel(false).1)
        .await;
    assert_eq!(report.deleted, 1, "{report:?}");
    assert!(metadata.get(crashed.id).await.unwrap().is_none());
    app.assert_eventually_holds(1).await;
    assert_content(&app, &token, &id, &bytes).await;
}

/// Media that expired (before the reaper got to it) frees its key: the same bytes are
/// stored again under a new id; the reaper removes the expired one.
async fn expired_media_frees_its_key(backend: Backend) {
    // The test runs the reaper's passes itself: the background reaper's quick pass for
    // dead uploads (every heartbeat) would otherwise race it for the rows it looks at.
    let app = TestApp::spawn_with(backend, |s| s.reaper.enabled = false).await;
    let token = app.token("acct");
    let bytes = content(1500, 8);
    let (first, _) = created(upload_keyed(&app, &token, "daily", bytes.clone()).await).await;
    app.expire(&first).await;

    let (second, replayed) =
        created(upload_keyed(&app, &token, "daily", bytes.clone()).await).await;
    assert_ne!(second, first);
    assert!(!replayed);
    assert_eq!(
        app.row_count().await,
        2,
        "the expired row waits for the reaper"
    );
    let (again, replayed) = created(upload_keyed(&app, &token, "daily", bytes.clone()).await).await;
    assert_eq!(again, second);
    assert!(replayed);

    let report = app
        .reaper()
        .pass(&tokio::sync::watch::channel(false).1)
        .await;
    assert_eq!(report.deleted, 1, "{report:?}");
    app.assert_eventually_holds(1).await;
    assert!(!app.object_exists(&first).await);
    assert_content(&app, &token, &second, &bytes).await;
}

/// Deleted media, and media removed by a purge of the account, free their key.
async fn deleted_and_purged_media_free_their_key(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    let bytes = content(1200, 9);
    let (first, _) = created(upload_keyed(&app, &token, "k", bytes.clone()).await).await;
    assert_eq!(app.delete(&token, &first).await.status(), 200);

    let (second, replayed) = created(upload_keyed(&app, &token, "k", bytes.clone()).await).await;
    assert_ne!(second, first);
    assert!(!replayed);
    app.assert_eventually_holds(1).await;

    let purged = app
        .client
        .post(format!("{}/admin/accounts/acct/purge", app.admin_address))
        .bearer_auth(app.token_with_scope("ops", "media:admin"))
        .send()
        .await
        .unwrap();
    assert_eq!(purged.status(), 200);
    app.assert_eventually_holds(0).await;

    // Other bytes now: no 422, the key is free.
    let other = content(1200, 10);
    let (third, replayed) = created(upload_keyed(&app, &token, "k", other.clone()).await).await;
    assert_ne!(third, second);
    assert!(!replayed);
    app.assert_eventually_holds(1).await;
    assert_content(&app, &token, &third, &other).await;
}

/// Two accounts use the same key independently.
async fn keys_are_per_account(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let alice = app.token("alice");
    let bob = app.token("bob");
    let (a, _) = created(upload_keyed(&app, &alice, "shared", content(800, 11)).await).await;
    let (b, replayed) = created(upload_keyed(&app, &bob, "shared", content(800, 12)).await).await;
    assert_ne!(a, b);
    assert!(!replayed, "another account's key is not this one's");
    let (a2, replayed) =
        created(upload_keyed(&app, &alice, "shared", content(800, 11)).await).await;
    assert_eq!((a2.as_str(), replayed), (a.as_str(), true));
    let (b2, replayed) = created(upload_keyed(&app, &bob, "shared", content(800, 12)).await).await;
    assert_eq!((b2.as_str(), replayed), (b.as_str(), true));
    // Each sees only its own.
    assert_eq!(app.get(&bob, &a).await.status(), 404);
    app.assert_eventually_holds(2).await;
}

/// Empty, too long, with a space, a tab, DEL or another control character, non-ASCII,
/// empty quotes, or two headers: 400 (code 1009), before anything is stored. The longest
/// key, bare or quoted, is fine.
async fn invalid_or_repeated_keys_are_400(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    let too_long = "k".repeat(256);
    let invalid: Vec<reqwest::header::HeaderValue> = vec![
        reqwest::header::HeaderValue::from_static(""),
        reqwest::header::HeaderValue::from_static("\"\""),
        reqwest::header::HeaderValue::from_static("\""),
        reqwest::header::HeaderValue::from_static("\"abcq"),
        reqwest::header::HeaderValue::from_static("\"abc\"x"),
        reqwest::header::HeaderValue::from_str(&too_long).unwrap(),
        reqwest::header::HeaderValue::from_str(&format!("\"{too_long}\"")).unwrap(),
        reqwest::header::HeaderValue::from_static("two words"),
        reqwest::header::HeaderValue::from_static("tab\there"),
        reqwest::header::HeaderValue::from_bytes("clé".as_bytes()).unwrap(),
        reqwest::header::HeaderValue::from_bytes(&[b'k', 0xff]).unwrap(),
    ];
    for value in invalid {
        let response = app
            .request(Method::POST, "/v1/media", Some(&token))
            .header("X-Gr-File-Extension", "bin")
            .header("Idempotency-Key", value.clone())
            .body(content(10, 1))
            .send()
            .await
            .unwrap();
        let error = assert_error(response, 400, 1009).await;
        assert!(
            error["errors"][0]["details"]
                .as_str()
                .unwrap()
                .contains("Idempotency-Key"),
            "{value:?}: {error}"
        );
    }
    // Two headers, even equal ones.
    let response = app
        .request(Method::POST, "/v1/media", Some(&token))
        .header("X-Gr-File-Extension", "bin")
        .header("Idempotency-Key", "same")
        .header("Idempotency-Key", "same")
        .body(content(10, 1))
        .send()
        .await
        .unwrap();
    let error = assert_error(response, 400, 1009).await;
    assert!(error["errors"][0]["details"]
        .as_str()
        .unwrap()
        .contains("exactly one Idempotency-Key"));
    // Control characters no HTTP client library sends, on the raw socket: refused whether
    // the HTTP layer or the API sees them first.
    for control in ["a\u{1}b", "a\u{7f}b"] {
        let answer = app
            .raw_request(
                "POST",
                "/v1/media",
                Some(&token),
                &[
                    ("X-Gr-File-Extension", "bin"),
                    ("Idempotency-Key", control),
                    ("Content-Length", "0"),
                ],
            )
            .await;
        assert_eq!(answer.status, 400, "{control:?}: {answer:?}");
    }
    // At `Expect: 100-continue` too.
    let answer = app
        .raw_request(
            "POST",
            "/v1/media",
            Some(&token),
            &[
                ("X-Gr-File-Extension", "bin"),
                ("Idempotency-Key", ""),
                ("Content-Length", "10"),
                ("Expect", "100-continue"),
            ],
        )
        .await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert!(app.is_empty().await);

    let longest = "k".repeat(255);
    let (id, _) = created(upload_keyed(&app, &token, &longest, content(10, 2)).await).await;
    let (again, replayed) =
        created(upload_keyed(&app, &token, &format!("\"{longest}\""), content(10, 2)).await).await;
    assert_eq!((again.as_str(), replayed), (id.as_str(), true));
    // Each request the API saw (the raw ones may be refused by the HTTP layer first).
    assert!(outcome(&app, "rejected").await >= 9.0);
}

/// Once the first upload is ready, concurrent identical retries all get its id; none of
/// them keeps anything.
async fn concurrent_retries_after_the_first_is_ready_share_its_id(backend: Backend) {
    let app = std::sync::Arc::new(TestApp::spawn(backend).await);
    let token = app.token("acct");
    let bytes = content(20_000, 13);
    let (id, _) = created(upload_keyed(&app, &token, "burst", bytes.clone()).await).await;
    let mut retries = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (app, token, bytes) = (app.clone(), token.clone(), bytes.clone());
        retries
            .spawn(async move { created(upload_keyed(&app, &token, "burst", bytes).await).await });
    }
    for (again, replayed) in retries.join_all().await {
        assert_eq!(again, id);
        assert!(replayed);
    }
    app.assert_eventually_holds(1).await;
    assert_eq!(outcome(&app, "replayed").await, 8.0);
}

/// First uploads racing for one key: the key goes to one of them; every other is either
/// its replay (it was ready by then) or 409 (it was still streaming). One medium is stored.
async fn racing_first_uploads_store_one_medium(backend: Backend) {
    let app = std::sync::Arc::new(TestApp::spawn(backend).await);
    let token = app.token("acct");
    let bytes = content(50_000, 14);
    let mut racers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (app, token, bytes) = (app.clone(), token.clone(), bytes.clone());
        racers.spawn(async move { upload_keyed(&app, &token, "race", bytes).await });
    }
    let mut ids = Vec::new();
    let mut fresh = 0;
    for response in racers.join_all().await {
        match response.status().as_u16() {
            201 => {
                let (id, replayed) = created(response).await;
                fresh += u32::from(!replayed);
                ids.push(id);
            }
            _ => {
                assert_error(response, 409, 1004).await;
            }
        }
    }
    assert_eq!(fresh, 1, "exactly one upload took the key");
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    app.assert_eventually_holds(1).await;
    assert_content(&app, &token, &ids[0], &bytes).await;
}

/// A first upload that fails (its body does not match its Content-Digest; the client goes
/// away mid-body) keeps nothing, key included: the retry is stored as a first upload.
async fn a_failed_first_upload_frees_its_key(backend: Backend) {
    use tokio::io::AsyncWriteExt;
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    let bytes = content(5000, 15);
    let response = app
        .request(Method::POST, "/v1/media", Some(&token))
        .header("X-Gr-File-Extension", "bin")
        .header("Idempotency-Key", "digest")
        .header(
            "Content-Digest",
            "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:",
        )
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_error(response, 400, 1009).await;
    let (id, replayed) = created(upload_keyed(&app, &token, "digest", bytes.clone()).await).await;
    assert!(!replayed);
    app.assert_eventually_holds(1).await;

    // Gone mid-body: once its clean-up ran, the key is free.
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", app.port()))
        .await
        .unwrap();
    let head = format!(
        "POST /v1/media HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         X-Gr-File-Extension: bin\r\nIdempotency-Key: gone\r\nContent-Length: 9000\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&bytes[..3000]).await.unwrap();
    stream.flush().await.unwrap();
    wait_for_rows(&app, 2).await;
    drop(stream);
    let mut answer = None;
    for _ in 0..100 {
        let response = upload_keyed(&app, &token, "gone", bytes.clone()).await;
        if response.status() == 409 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        answer = Some(created(response).await);
        break;
    }
    let (second, replayed) = answer.expect("the key was freed");
    assert!(!replayed);
    assert_ne!(second, id);
    app.assert_eventually_holds(2).await;
}
