use reqwest::Method;

use test_support::on_both_backends;
use test_support::{assert_error, content, sha256_hex, Backend, TestApp};

on_both_backends!(
    download_carries_the_contract_headers,
    head_has_the_headers_and_no_body,
    single_ranges_are_served,
    unsatisfiable_range_is_416,
    several_ranges_get_the_whole_body,
    if_none_match_is_304,
    account_form_of_the_path,
    other_accounts_get_404,
    unknown_and_malformed_ids_are_404,
    expired_media_is_404_before_it_is_reaped,
    a_signed_link_has_a_rate_limit_of_its_own,
    signed_link_downloads_use_up_the_owners_request_rate,
    if_match_and_if_unmodified_since_that_fail_are_412,
    preconditions_are_evaluated_in_the_rfc_order,
    last_modified_is_when_the_upload_completed,
);

async fn download_carries_the_contract_headers(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    let data = content(4321, 10);
    let id = app.upload_ok(&token, "png", data.clone()).await;
    let response = app.get(&token, &id).await;
    assert_eq!(response.status(), 200);
    let h = response.headers().clone();
    assert_eq!(h["content-type"], "image/png");
    assert_eq!(h["content-length"], "4321");
    assert_eq!(h["etag"], format!("\"{}\"", sha256_hex(&data)).as_str());
    assert_eq!(h["accept-ranges"], "bytes");
    assert_eq!(
        h["content-disposition"],
        format!("attachment; filename=\"{id}.png\"").as_str()
    );
    assert_eq!(h["cache-control"], "private");
    let expires = httpdate::parse_http_date(h["expires"].to_str().unwrap()).unwrap();
    let in_a_day = std::time::SystemTime::now() + std::time::Duration::from_secs(24 * 3600);
    let skew = in_a_day
        .duration_since(expires)
        .unwrap_or_else(|e| e.duration());
    assert!(skew.as_secs() < 120, "Expires is about 24 h ahead");
    assert!(h.contains_key("x-request-id"));
    assert_eq!(response.bytes().await.unwrap(), data);
}

async fn head_has_the_headers_and_no_body(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    let data = content(5000, 11);
    let id = app.upload_ok(&token, "ogg", data.clone()).await;
    // Read from the socket: nothing may follow the header block.
    let head = app
        .raw_request("HEAD", &format!("/v1/media/{id}"), Some(&token), &[])
        .await;
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(head.header("content-length"), Some("5000"), "{head:?}");
    assert_eq!(head.header("content-type"), Some("audio/ogg"), "{head:?}");
    assert_eq!(
        head.header("etag"),
        Some(format!("\"{}\"", sha256_hex(&data)).as_str())
    );
    assert!(
        head.after_head.is_empty(),
        "HEAD sent a body: {:?}",
        String::from_utf8_lossy(&head.after_head)
    );

    let missing = app
        .raw_request(
            "HEAD",
            &format!("/v1/media/{}", uuid::Uuid::new_v4()),
            Some(&token),
            &[],
        )
        .await;
    assert_eq!(missing.status, 404, "{missing:?}");
    assert!(
        missing.after_head.is_empty(),
        "HEAD sent a body: {:?}",
        String::from_utf8_lossy(&missing.after_head)
    );
}

async fn single_ranges_are_served(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    let data = content(10_000, 12);
    let id = app.upload_ok(&token, "mp3", data.clone()).await;
    for (range, start, end) in [
        ("bytes=0-99", 0usize, 100usize),
        ("bytes=9990-", 9990, 10_000),
        ("bytes=-10", 9990, 10_000),
        ("bytes=5000-5000", 5000, 5001),
        ("bytes=9000-20000", 9000, 10_000),
    ] {
        let response = app.get_with(&token, &id, "Range", range).await;
        assert_eq!(response.status(), 206, "{range}");
        assert_eq!(
            response.headers()["content-range"],
            format!("bytes {}-{}/10000", start, end - 1).as_str()
        );
        assert_eq!(
            response.headers()["content-length"],
            (end - start).to_string().as_str()
        );
        assert_eq!(
            response.bytes().await.unwrap(),
            &data[start..end],
            "{range}"
        );
    }
}

async fn unsatisfiable_range_is_416(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    let id = app.upload_ok(&token, "mp3", content(100, 13)).await;
    for range in ["bytes=100-", "bytes=200-300", "bytes=-0"] {
        let response = app.get_with(&token, &id, "Range", range).await;
        assert_eq!(response.headers()["content-range"], "bytes */100");
        assert_error(response, 416, 1009).await;
    }
}

async fn several_ranges_get_the_whole_body(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    let data = content(1000, 14);
    let id = app.upload_ok(&token, "bin", data.clone()).await;
    for range in ["bytes=0-1,5-9", "bytes=garbage", "pages=1-2"] {
        let response = app.get_with(&token, &id, "Range", range).await;
        assert_eq!(response.status(), 200, "{range}");
        assert_eq!(response.bytes().await.unwrap(), data);
    }
}

async fn if_none_match_is_304(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    let data = content(1000, 15);
    let id = app.upload_ok(&token, "bin", data.clone()).await;
    let etag = format!("\"{}\"", sha256_hex(&data));
    for value in [etag.clone(), format!("\"other\", {etag}"), "*".to_owned()] {
        // Read from the socket: nothing may follow the header block.
        let response = app
            .raw_request(
                "GET",
                &format!("/v1/media/{id}"),
                Some(&token),
                &[("If-None-Match", &value)],
            )
            .await;
        assert_eq!(response.status, 304, "{response:?}");
        assert_eq!(response.header("etag"), Some(etag.as_str()));
        assert!(
            response.after_head.is_empty(),
            "304 sent a body: {:?}",
            String::from_utf8_lossy(&response.after_head)
        );
    }
    let response = app
        .get_with(&token, &id, "If-None-Match", "\"stale\"")
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap(), data);
}

async fn account_form_of_the_path(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct-7");
    let data = content(777, 16);
    let id = app.upload_ok(&token, "jpg", data.clone()).await;
    let response = app
        .request(Method::GET, &format!("/v1/acct-7/media/{id}"), Some(&token))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap(), data);
    let response = app
        .request(
            Method::GET,
            &format!("/v1/someone-else/media/{id}"),
            Some(&token),
        )
        .send()
        .await
        .unwrap();
    assert_error(response, 404, 1006).await;
}

async fn other_accounts_get_404(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let owner = app.token("owner");
    let other = app.token("intruder");
    let id = app.upload_ok(&owner, "jpg", content(10, 17)).await;
    assert_error(app.get(&other, &id).await, 404, 1006).await;
    let head = app
        .raw_request("HEAD", &format!("/v1/media/{id}"), Some(&other), &[])
        .await;
    assert_eq!(head.status, 404, "{head:?}");
    assert!(
        head.after_head.is_empty(),
        "HEAD sent a body: {:?}",
        String::from_utf8_lossy(&head.after_head)
    );
    assert_error(app.delete(&other, &id).await, 404, 1006).await;
    assert_eq!(app.get(&owner, &id).await.status(), 200, "still there");
}

async fn unknown_and_malformed_ids_are_404(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    let id = app.upload_ok(&token, "jpg", content(10, 18)).await;
    assert_eq!(app.get(&token, &id.to_uppercase()).await.status(), 200);
    for bad in [
        uuid::Uuid::new_v4().to_string(),
        "not-a-uuid".to_owned(),
        id.replace('-', ""),
        format!("{{{id}}}"),
        "..%2F..%2Fetc%2Fpasswd".to_owned(),
    ] {
        assert_error(app.get(&token, &bad).await, 404, 1006).await;
    }
}

async fn expired_media_is_404_before_it_is_reaped(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| {
        s.media.retention = std::time::Duration::from_secs(1);
    })
    .await;
    let token = app.token("acct");
    let id = app.upload_ok(&token, "jpg", content(10, 19)).await;
    assert_eq!(app.get(&token, &id).await.status(), 200);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_error(app.get(&token, &id).await, 404, 1006).await;
    assert_error(app.delete(&token, &id).await, 404, 1006).await;
    // Not reaped yet: the row and the object are still there, only invisible.
    assert_eq!(app.row_count().await, 1);
    assert!(app.object_exists(&id).await);
}

/// The signed link of `/info` for `id`, as handed out now.
async fn signed_link(app: &TestApp, token: &str, id: &str) -> String {
    let response = app
        .request(Method::GET, &format!("/v1/media/{id}/info"), Some(token))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let info: serde_json::Value = response.json().await.unwrap();
    info["url"].as_str().expect("a signed link").to_owned()
}

/// A link handed out in a later second than `earlier` (a link names its expiry in whole
/// seconds, so two asked for within one second are the same link).
async fn another_signed_link(app: &TestApp, token: &str, id: &str, earlier: &str) -> String {
    loop {
        let link = signed_link(app, token, id).await;
        if link != earlier {
            return link;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// `method path` `n` times at once, without a token; the statuses and the refusals.
async fn burst(
    app: &TestApp,
    method: Method,
    path: &str,
    n: usize,
) -> (Vec<u16>, Vec<reqwest::Response>) {
    let answers = futures_util::future::join_all(
        (0..n).map(|_| app.request(method.clone(), path, None).send()),
    )
    .await;
    let mut statuses = Vec::new();
    let mut refused = Vec::new();
    for answer in answers {
        let answer = answer.unwrap();
        statuses.push(answer.status().as_u16());
        if answer.status() == 429 {
            refused.push(answer);
        } else {
            assert_eq!(answer.status(), 200, "{:?}", answer.text().await);
        }
    }
    (statuses, refused)
}

fn retry_after(response: &reqwest::Response) -> u64 {
    response
        .headers()
        .get("retry-after")
        .expect("Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn a_signed_link_has_a_rate_limit_of_its_own(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("link-owner");
    let id = app.upload_ok(&token, "png", content(1000, 20)).await;
    let second = signed_link(&app, &token, &id).await;
    let first = another_signed_link(&app, &token, &id, &second).await;

    let (statuses, refused) = burst(&app, Method::GET, &first, 30).await;
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(
        !refused.is_empty(),
        "30 GETs at once of one link: {statuses:?}"
    );
    for response in refused {
        assert!(retry_after(&response) >= 1);
        assert_error(response, 429, 1015).await;
    }
    // Another link of the same media has its own allowance, and so does the owner's token.
    let other = app
        .request(Method::GET, &second, None)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
    assert_eq!(app.get(&token, &id).await.status(), 200);
    // HEADs count as much as GETs.
    let (statuses, refused) = burst(&app, Method::HEAD, &second, 30).await;
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(
        !refused.is_empty(),
        "30 HEADs at once of one link: {statuses:?}"
    );
    assert!(refused.iter().all(|r| retry_after(r) >= 1));
}

async fn signed_link_downloads_use_up_the_owners_request_rate(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| {
        s.limits.account_requests_per_second = Some(1);
        s.limits.account_request_burst = Some(3);
    })
    .await;
    let token = app.token("rated-owner");
    let id = app.upload_ok(&token, "png", content(1000, 21)).await;
    let link = signed_link(&app, &token, &id).await;
    // The upload and /info took two of the three; the link takes what is left and more.
    let (statuses, refused) = burst(&app, Method::GET, &link, 4).await;
    assert!(!refused.is_empty(), "{statuses:?}");
    for response in refused {
        assert!(retry_after(&response) >= 1);
        assert_error(response, 429, 1015).await;
    }
    // The owner's token finds its budget spent by the link.
    let response = app.get(&token, &id).await;
    assert!(retry_after(&response) >= 1);
    assert_error(response, 429, 1015).await;
    // Another account is not concerned.
    let other = app.token("someone-else");
    assert_eq!(app.get(&other, &id).await.status(), 404);
}

const LONG_AGO: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

/// `method path` with `headers`, with the token or (for a signed link) without.
async fn conditional(
    app: &TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = app.request(method, path, token);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

async fn if_match_and_if_unmodified_since_that_fail_are_412(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| {
        // Many requests of one link below: its own rate is not what is tested here.
        s.limits.signed_link_rate_per_second = 0;
    })
    .await;
    let token = app.token("acct-c");
    let data = content(2000, 22);
    let id = app.upload_ok(&token, "png", data.clone()).await;
    let etag = format!("\"{}\"", sha256_hex(&data));
    let weak = format!("W/{etag}");
    let listed = format!("\"other\", {etag}");
    let tomorrow = httpdate::fmt_http_date(
        std::time::SystemTime::now() + std::time::Duration::from_secs(24 * 3600),
    );
    let link = signed_link(&app, &token, &id).await;
    let plain = format!("/v1/media/{id}");
    let account_form = format!("/v1/acct-c/media/{id}");
    let paths = [
        (plain.as_str(), Some(token.as_str())),
        (account_form.as_str(), Some(token.as_str())),
        (link.as_str(), None),
    ];
    let last_modified = app.get(&token, &id).await.headers()["last-modified"]
        .to_str()
        .unwrap()
        .to_owned();

    for (path, token) in paths {
        for failing in [
            ("If-Match", "\"nope\""),
            ("If-Match", "nope"),
            ("If-Match", weak.as_str()),
            ("If-Match", "\"other\", W/\"x\""),
            ("If-Unmodified-Since", LONG_AGO),
        ] {
            let response = conditional(&app, Method::GET, path, token, &[failing]).await;
            assert_eq!(response.status(), 412, "{path} {failing:?}");
            let body = assert_error(response, 412, 1009).await;
            assert!(
                body["errors"][0]["details"]
                    .as_str()
                    .unwrap()
                    .contains(failing.0),
                "{body}"
            );
            // HEAD: the same status, no body.
            let head = app.raw_request("HEAD", path, token, &[failing]).await;
            assert_eq!(head.status, 412, "{path} {failing:?} {head:?}");
            assert!(head.after_head.is_empty(), "{head:?}");
        }
        for passing in [
            ("If-Match", etag.as_str()),
            ("If-Match", "*"),
            ("If-Match", listed.as_str()),
            ("If-Unmodified-Since", last_modified.as_str()),
            ("If-Unmodified-Since", tomorrow.as_str()),
            // An invalid date is ignored.
            ("If-Unmodified-Since", "yesterday"),
        ] {
            let response = conditional(&app, Method::GET, path, token, &[passing]).await;
            assert_eq!(response.status(), 200, "{path} {passing:?}");
            assert_eq!(
                response.headers()["last-modified"].to_str().unwrap(),
                last_modified
            );
            assert_eq!(response.bytes().await.unwrap(), data, "{path} {passing:?}");
            let head = app.raw_request("HEAD", path, token, &[passing]).await;
            assert_eq!(head.status, 200, "{path} {passing:?} {head:?}");
            assert_eq!(head.header("last-modified"), Some(last_modified.as_str()));
        }
    }
}

/// RFC 9110 13.2.2: If-Match, then If-Unmodified-Since (only without If-Match), then
/// If-None-Match, then Range.
async fn preconditions_are_evaluated_in_the_rfc_order(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct-o");
    let data = content(2000, 23);
    let id = app.upload_ok(&token, "png", data.clone()).await;
    let path = format!("/v1/media/{id}");
    let etag = format!("\"{}\"", sha256_hex(&data));
    let cases: [(&[(&str, &str)], u16); 8] = [
        // If-Match decides, and If-Unmodified-Since is then ignored.
        (
            &[
                ("If-Match", etag.as_str()),
                ("If-Unmodified-Since", LONG_AGO),
            ],
            200,
        ),
        (
            &[("If-Match", "\"nope\""), ("If-None-Match", "\"other\"")],
            412,
        ),
        // A failed precondition wins over a 304 and over a Range.
        (
            &[("If-Match", "\"nope\""), ("If-None-Match", etag.as_str())],
            412,
        ),
        (
            &[
                ("If-Unmodified-Since", LONG_AGO),
                ("If-None-Match", etag.as_str()),
            ],
            412,
        ),
        (
            &[("If-Unmodified-Since", LONG_AGO), ("Range", "bytes=0-9")],
            412,
        ),
        // Met, If-None-Match and Range go on as before.
        (
            &[
                ("If-Match", etag.as_str()),
                ("If-None-Match", etag.as_str()),
            ],
            304,
        ),
        (&[("If-Match", etag.as_str()), ("Range", "bytes=0-9")], 206),
        (
            &[
                ("If-Match", "*"),
                ("Range", "bytes=0-9"),
                ("If-Range", etag.as_str()),
            ],
            206,
        ),
    ];
    for (headers, status) in cases {
        let response = conditional(&app, Method::GET, &path, Some(&token), headers).await;
        assert_eq!(response.status(), status, "{headers:?}");
        match status {
            412 => {
                assert_error(response, 412, 1009).await;
            }
            // Last-Modified on every answer that describes the media.
            _ => assert!(
                response.headers().contains_key("last-modified"),
                "{headers:?}"
            ),
        }
    }
}

/// `Last-Modified` is when the upload completed (its bytes became the media), not when
/// it began, and `If-Unmodified-Since` is judged against it.
async fn last_modified_is_when_the_upload_completed(backend: Backend) {
    use bytes::Bytes;
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct-slow");
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
    let body = reqwest::Body::wrap_stream(tokio_stream::wrappers::ReceiverStream::new(receiver));
    let upload = tokio::spawn(
        app.request(Method::POST, "/v1/media", Some(&token))
            .header("X-Gr-File-Extension", "bin")
            .body(body)
            .send(),
    );
    sender
        .send(Ok(Bytes::from(content(100, 24))))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    sender
        .send(Ok(Bytes::from(content(100, 25))))
        .await
        .unwrap();
    drop(sender);
    let response = upload.await.unwrap().unwrap();
    assert_eq!(response.status(), 201);
    let created: serde_json::Value = response.json().await.unwrap();
    let id = created["media"][0]["id"].as_str().unwrap().to_owned();

    let info: serde_json::Value = app
        .request(Method::GET, &format!("/v1/media/{id}/info"), Some(&token))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let began = chrono::DateTime::parse_from_rfc3339(info["created_at"].as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono::Utc);
    let response = app.get(&token, &id).await;
    assert_eq!(response.status(), 200);
    let last_modified = response.headers()["last-modified"]
        .to_str()
        .unwrap()
        .to_owned();
    let completed: chrono::DateTime<chrono::Utc> =
        httpdate::parse_http_date(&last_modified).unwrap().into();
    assert!(
        completed >= began + chrono::Duration::seconds(1),
        "Last-Modified {last_modified} is the upload's end, 2.2 s after its start {began}"
    );
    // The media did not exist yet as it was when the upload began.
    let began_date = httpdate::fmt_http_date(began.into());
    let response = app
        .get_with(&token, &id, "If-Unmodified-Since", &began_date)
        .await;
    assert_error(response, 412, 1009).await;
    let response = app
        .get_with(&token, &id, "If-Unmodified-Since", &last_modified)
        .await;
    assert_eq!(response.status(), 200);
}
