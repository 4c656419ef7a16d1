//! Housekeeping: an account lists its own live media, page by page, and an operator purges
//! an account (command line and admin listener) while uploads and the reaper run.

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use test_support::on_both_backends;
use test_support::{assert_error, content, Backend, TestApp};

on_both_backends!(
    listing_pages_through_the_callers_live_media_newest_first,
    listing_refuses_bad_parameters,
    purge_removes_an_account_and_fences_its_streaming_upload,
    purge_from_the_command_line,
    info_describes_the_media_and_its_signed_link_works_without_a_token,
);

async fn list(app: &TestApp, token: &str, query: &str) -> Value {
    let response = app
        .request(Method::GET, &format!("/v1/media{query}"), Some(token))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn listing_pages_through_the_callers_live_media_newest_first(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("lister");
    let mut uploaded = Vec::new();
    for i in 0..5 {
        uploaded.push(
            app.upload_ok(&token, "jpg", content(100 + i, i as u8))
                .await,
        );
        // Distinct creation instants (milliseconds), so "newest first" is well defined.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    // Someone else's media and a deleted one are not listed.
    app.upload_ok(&app.token("stranger"), "png", content(10, 9))
        .await;
    let deleted = uploaded.remove(1);
    assert_eq!(app.delete(&token, &deleted).await.status(), 200);
    let newest_first: Vec<String> = uploaded.iter().rev().cloned().collect();

    let first = list(&app, &token, "?limit=3").await;
    let ids = |page: &Value| -> Vec<String> {
        page["media"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&first), newest_first[..3].to_vec());
    let item = &first["media"][0];
    assert_eq!(item["mime_type"], "image/jpeg");
    assert_eq!(item["extension"], "jpg");
    assert_eq!(item["file_size"], 104);
    assert_eq!(item["sha256"].as_str().unwrap().len(), 64);
    assert!(item["created_at"].as_str().unwrap().ends_with('Z'));
    assert!(item.get("url").is_none());
    assert_eq!(first["meta"]["version"], "2.0.1");
    let next = first["next"].as_str().unwrap().to_owned();

    let second = list(&app, &token, &format!("?limit=3&after={next}")).await;
    assert_eq!(ids(&second), newest_first[3..].to_vec());
    assert!(second["next"].is_null());
    let all = list(&app, &token, "").await;
    assert_eq!(ids(&all), newest_first);

    // Reading needs media:read.
    let writer = app.token_with_scope("lister", "media:write");
    let response = app
        .request(Method::GET, "/v1/media", Some(&writer))
        .send()
        .await
        .unwrap();
    assert_error(response, 403, 1005).await;
}

async fn listing_refuses_bad_parameters(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    for query in [
        "?limit=0",
        "?limit=1001",
        "?limit=ten",
        "?after=xyz",
        "?limit=1&limit=2",
    ] {
        let response = app
            .request(Method::GET, &format!("/v1/media{query}"), Some(&token))
            .send()
            .await
            .unwrap();
        assert_error(response, 400, 1009).await;
    }
    let response = app
        .request(Method::GET, "/v1/media", None)
        .send()
        .await
        .unwrap();
    assert_error(response, 401, 1005).await;
}

async fn purge_removes_an_account_and_fences_its_streaming_upload(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let doomed = app.token("doomed");
    let keeper = app.token("keeper");
    let mut gone = Vec::new();
    for i in 0..4 {
        gone.push(app.upload_ok(&doomed, "bin", content(1000, i)).await);
    }
    let kept = app.upload_ok(&keeper, "bin", content(1000, 7)).await;

    // An upload of the account still streaming when the purge runs: a slow body that ends
    // after the purge.
    let data = content(64 * 1024, 8);
    let pieces: Vec<bytes::Bytes> = data
        .chunks(16 * 1024)
        .map(bytes::Bytes::copy_from_slice)
        .collect();
    let body = futures_util::stream::unfold(pieces.into_iter(), |mut rest| async move {
        let piece = rest.next()?;
        tokio::time::sleep(Duration::from_millis(400)).await;
        Some((Ok::<_, std::io::Error>(piece), rest))
    });
    let streaming = tokio::spawn(
        app.request(Method::POST, "/v1/media", Some(&doomed))
            .header("X-Gr-File-Extension", "bin")
            .body(reqwest::Body::wrap_stream(body))
            .send(),
    );
    for _ in 0..100 {
        if app.metrics.media.uploads_in_flight.get() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let response = reqwest::Client::new()
        .post(format!("{}/admin/accounts/doomed/purge", app.admin_address))
        .bearer_auth(app.token_with_scope("ops", "media:admin"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let report: Value = response.json().await.unwrap();
    assert_eq!(report["deleted"], 4, "{report}");
    assert_eq!(report["fenced_uploads"], 1, "{report}");

    // The streaming upload is refused at its commit and rolled back.
    let answer = streaming.await.unwrap().unwrap();
    assert_eq!(answer.status(), 503);
    for id in &gone {
        assert_eq!(app.get(&doomed, id).await.status(), 404);
    }
    assert_eq!(app.get(&keeper, &kept).await.status(), 200);
    // Only the other account's media is left: one row, one object.
    app.assert_eventually_holds(1).await;

    // The public listener has no such route.
    let response = app
        .request(Method::POST, "/admin/accounts/keeper/purge", Some(&keeper))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

async fn purge_from_the_command_line(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let gone = app.token("gone");
    for i in 0..3 {
        app.upload_ok(
            &gone,
            "bin",
            content(6 * 1024 * 1024 * (i % 2) + 10, i as u8),
        )
        .await;
    }
    let kept = app
        .upload_ok(&app.token("kept"), "bin", content(10, 5))
        .await;
    let dir = test_support::TempDir::new();
    let out = test_support::media_node_command(&dir.0)
        .args(["purge", "--account", "gone"])
        .envs(test_support::process_env(&app.settings))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["deleted"], 3, "{report}");
    assert_eq!(report["remaining"], 0, "{report}");
    assert_eq!(app.row_count().await, 1);
    assert_eq!(app.object_keys().await.len(), 1);
    assert_eq!(app.get(&app.token("kept"), &kept).await.status(), 200);
    // An account that is not one is refused with a reason.
    let out = test_support::media_node_command(&dir.0)
        .args(["purge", "--account", ""])
        .envs(test_support::process_env(&app.settings))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--account"));
}

async fn info_describes_the_media_and_its_signed_link_works_without_a_token(backend: Backend) {
    let app = TestApp::spawn_with(backend, |s| {
        s.auth.url_signing_secret = Some(media_node::settings::Secret::new("u".repeat(32)));
        s.auth.signed_url_ttl = Duration::from_secs(2);
    })
    .await;
    let token = app.token("owner");
    let data = content(3000, 4);
    let id = app.upload_ok(&token, "png", data.clone()).await;

    let response = app
        .request(Method::GET, &format!("/v1/media/{id}/info"), Some(&token))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let info: Value = response.json().await.unwrap();
    assert_eq!(info["id"], id.as_str());
    assert_eq!(info["mime_type"], "image/png");
    assert_eq!(info["extension"], "png");
    assert_eq!(info["file_size"], 3000);
    assert_eq!(info["sha256"], test_support::sha256_hex(&data));
    assert!(info["expires_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(info["meta"]["api_status"], "stable");
    let url = info["url"].as_str().unwrap().to_owned();
    assert!(
        url.starts_with(&format!("/v1/media/{id}?")),
        "relative: {url}"
    );

    // The link downloads without a token, ranges and all ...
    let download = app.request(Method::GET, &url, None).send().await.unwrap();
    assert_eq!(download.status(), 200);
    assert_eq!(download.bytes().await.unwrap().as_ref(), data.as_slice());
    let part = app
        .request(Method::GET, &url, None)
        .header("Range", "bytes=0-9")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    // ... for its own id only, unaltered, and not after it expires.
    let other = app.upload_ok(&token, "png", content(10, 5)).await;
    let swapped = url.replace(&id, &other);
    let response = app
        .request(Method::GET, &swapped, None)
        .send()
        .await
        .unwrap();
    assert_error(response, 401, 1005).await;
    let tampered = url.replace("signature=", "signature=00");
    let response = app
        .request(Method::GET, &tampered, None)
        .send()
        .await
        .unwrap();
    assert_error(response, 401, 1005).await;
    // A stranger's token does not read /info of someone else's media.
    let response = app
        .request(
            Method::GET,
            &format!("/v1/media/{id}/info"),
            Some(&app.token("stranger")),
        )
        .send()
        .await
        .unwrap();
    assert_error(response, 404, 1006).await;
    // A link expires.
    let info: Value = app
        .request(Method::GET, &format!("/v1/media/{id}/info"), Some(&token))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let fresh = info["url"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let response = app.request(Method::GET, &fresh, None).send().await.unwrap();
    assert_error(response, 401, 1005).await;
}
