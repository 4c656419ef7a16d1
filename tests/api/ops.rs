use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use test_support::on_both_backends;
use test_support::{assert_error, content, labelled_value, metric_value, Backend, TestApp};

on_both_backends!(metrics_describe_what_happened);

async fn metrics_describe_what_happened(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    let sizes = [1_000usize, 250_000, 6 * 1024 * 1024];
    let mut ids = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        ids.push(app.upload_ok(&token, "jpg", content(*size, i as u8)).await);
    }
    assert_eq!(app.upload(&token, "jpg", Vec::new()).await.status(), 400);
    assert_eq!(
        app.upload(
            &app.token_with_scope("acct", "media:read"),
            "jpg",
            b"x".to_vec()
        )
        .await
        .status(),
        403
    );
    let body = app.get(&token, &ids[1]).await.bytes().await.unwrap();
    assert_eq!(body.len(), sizes[1]);
    let ranged = app
        .request(Method::GET, &format!("/v1/media/{}", ids[0]), Some(&token))
        .header("Range", "bytes=0-99")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.bytes().await.unwrap().len(), 100);
    assert_eq!(app.get(&token, "not-an-id").await.status(), 404);

    let text = app.metrics_text().await;
    let value = |name: &str, labels: &[(&str, &str)]| {
        labelled_value(&text, name, labels).unwrap_or_else(|| panic!("{name} {labels:?}\n{text}"))
    };
    assert_eq!(value("media_uploads_total", &[("outcome", "stored")]), 3.0);
    assert_eq!(
        value("media_uploads_total", &[("outcome", "rejected")]),
        1.0
    );
    assert_eq!(value("media_uploads_total", &[("outcome", "denied")]), 1.0);
    let stored: usize = sizes.iter().sum();
    assert_eq!(
        metric_value(&text, "media_upload_bytes_total"),
        Some(stored as f64)
    );
    assert_eq!(
        metric_value(&text, "media_upload_size_bytes_count"),
        Some(3.0)
    );
    assert_eq!(
        metric_value(&text, "media_upload_size_bytes_sum"),
        Some(stored as f64)
    );
    assert_eq!(metric_value(&text, "media_uploads_in_flight"), Some(0.0));
    assert_eq!(metric_value(&text, "media_downloads_total"), Some(2.0));
    assert_eq!(
        metric_value(&text, "media_download_bytes_total"),
        Some((sizes[1] + 100) as f64)
    );

    let requests = |method: &str, route: &str, status: &str| {
        value(
            "http_requests_total",
            &[("method", method), ("route", route), ("status", status)],
        )
    };
    assert_eq!(requests("POST", "/v1/media", "201"), 3.0);
    assert_eq!(requests("POST", "/v1/media", "400"), 1.0);
    assert_eq!(requests("GET", "/v1/media/{id}", "200"), 1.0);
    assert_eq!(requests("GET", "/v1/media/{id}", "206"), 1.0);
    assert_eq!(requests("GET", "/v1/media/{id}", "404"), 1.0);
    for id in &ids {
        assert!(!text.contains(id.as_str()), "an id became a label");
    }
    assert!(
        value(
            "http_request_duration_seconds_count",
            &[("route", "/v1/media")]
        ) >= 5.0
    );

    // Backend timings by operation, the pool, the process.
    // The 6 MiB upload: on S3 one streamed PUT (its length is declared), on local disk
    // object_store's multipart writer.
    let storage_ops: &[&str] = match backend {
        Backend::Production => &["put", "put_streamed", "get"],
        Backend::Embedded => &[
            "put",
            "create_multipart",
            "put_part",
            "complete_multipart",
            "get",
        ],
    };
    for op in storage_ops {
        assert!(
            value(
                "media_storage_operation_duration_seconds_count",
                &[("operation", op)]
            ) >= 1.0,
            "{op}"
        );
    }
    for op in ["insert_uploading", "mark_ready", "find_readable", "delete"] {
        assert!(
            value(
                "media_database_operation_duration_seconds_count",
                &[("operation", op)]
            ) >= 1.0,
            "{op}"
        );
    }
    assert!(labelled_value(
        &text,
        "media_database_pool_connections",
        &[("state", "idle")]
    )
    .is_some());
    assert_eq!(
        metric_value(&text, "media_database_pool_max_connections"),
        Some(app.settings.database.max_connections as f64)
    );
    assert!(metric_value(&text, "process_resident_memory_bytes").unwrap() > 0.0);
    assert!(metric_value(&text, "process_open_fds").unwrap() > 0.0);
    assert!(metric_value(&text, "process_cpu_seconds_total").is_some());
    // The reaper's metrics are exported from the start.
    assert!(metric_value(&text, "media_reaper_deleted_total").is_some());
    assert!(metric_value(&text, "media_expired_backlog").is_some());
}

on_both_backends!(readiness_checks_are_cached);

async fn readiness_checks_are_cached(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let pings = |text: &str| {
        labelled_value(
            text,
            "media_database_operation_duration_seconds_count",
            &[("operation", "ping")],
        )
        .unwrap_or(0.0)
    };
    let before = pings(&app.metrics_text().await);
    for _ in 0..10 {
        let ready = reqwest::get(format!("{}/readyz", app.admin_address))
            .await
            .unwrap();
        assert_eq!(ready.status(), 200);
    }
    let after = pings(&app.metrics_text().await);
    // The first scrape checked the backends (scrapes refresh media_backend_up through the
    // same cache); the ten probes and the second scrape, all within about a second, add at
    // most one more check (if a second boundary fell in between), not ten.
    assert!(before >= 1.0, "{before}");
    assert!(after - before <= 1.0, "{before} -> {after}");
}

on_both_backends!(the_purge_needs_a_token_with_the_admin_scope);

/// `POST /admin/accounts/{A}/purge` answers 401 without a valid token (verified with the
/// public API's keys), 403 for a token whose scope lacks `media:admin` (a token without a
/// `scope` claim is no admin), and purges only for an admin; reading the admin listener
/// needs no token.
async fn the_purge_needs_a_token_with_the_admin_scope(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let user = app.token("acct");
    for i in 0..2 {
        app.upload_ok(&user, "bin", content(1000, i)).await;
    }
    let purge = |token: Option<String>| {
        let request = app
            .client
            .post(format!("{}/admin/accounts/acct/purge", app.admin_address));
        async move {
            match token {
                Some(token) => request.bearer_auth(token),
                None => request,
            }
            .send()
            .await
            .unwrap()
        }
    };

    let unauthenticated = |response: reqwest::Response| async move {
        let challenge = response.headers().get("www-authenticate").cloned();
        assert_error(response, 401, 1005).await;
        assert_eq!(challenge.unwrap(), "Bearer");
    };
    unauthenticated(purge(None).await).await;
    // Signed with another key, or not a JWT at all: 401.
    let foreign = media_node::auth::Authenticator::from_settings(
        &media_node::settings::AuthSettings {
            hs256_secret: Some(media_node::settings::Secret::new("o".repeat(32))),
            ..app.settings.auth.clone()
        },
        false,
    )
    .unwrap()
    .mint("ops", Duration::from_secs(600), Some("media:admin"))
    .unwrap();
    for token in [foreign, "not-a-jwt".to_owned()] {
        unauthenticated(purge(Some(token)).await).await;
    }
    // Valid tokens that are no admin's: without a scope claim, or with the user scopes.
    for token in [
        app.token("ops"),
        app.token_with_scope("ops", "media:read media:write"),
        app.token_with_scope("ops", "media:adminx"),
    ] {
        let error = assert_error(purge(Some(token)).await, 403, 1005).await;
        let details = error["errors"][0]["details"].as_str().unwrap();
        assert!(details.contains("media:admin"), "{details}");
    }
    assert_eq!(app.row_count().await, 2, "a refused purge removed media");

    let admin = app.token_with_scope("ops", "media:read media:admin");
    let response = purge(Some(admin)).await;
    assert_eq!(response.status(), 200);
    let report: Value = response.json().await.unwrap();
    assert_eq!(report["deleted"], 2, "{report}");
    app.assert_eventually_holds(0).await;

    // An admin token does not make a user: the public API still wants its scopes.
    let admin_only = app.token_with_scope("acct", "media:admin");
    let response = app.upload(&admin_only, "bin", content(10, 9)).await;
    assert_error(response, 403, 1005).await;

    // Probes and scrapes stay open.
    for path in ["/livez", "/readyz", "/metrics"] {
        let response = reqwest::get(format!("{}{path}", app.admin_address))
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
}
