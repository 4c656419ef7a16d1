use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::json;

use crate::helpers::{assert_error, content, Backend, TestApp};
use crate::on_both_backends;

on_both_backends!(
    missing_and_bad_tokens_are_401,
    scopes_are_enforced_and_403_comes_before_404,
    repeated_authorization_headers_are_401,
);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sign(secret: &str, alg: Algorithm, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

async fn missing_and_bad_tokens_are_401(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let secret = app.settings.auth.hs256_secret.clone().unwrap();
    let secret = secret.expose();
    let id = app
        .upload_ok(&app.token("acct"), "jpg", content(10, 30))
        .await;

    let expired = sign(
        secret,
        Algorithm::HS256,
        json!({"sub": "acct", "exp": now() - 3600}),
    );
    let wrong_key = sign(
        &"w".repeat(40),
        Algorithm::HS256,
        json!({"sub": "acct", "exp": now() + 600}),
    );
    let no_sub = sign(secret, Algorithm::HS256, json!({"exp": now() + 600}));
    let no_exp = sign(secret, Algorithm::HS256, json!({"sub": "acct"}));
    let hs512 = sign(
        secret,
        Algorithm::HS512,
        json!({"sub": "acct", "exp": now() + 600}),
    );
    let valid = app.token("acct");
    let payload = valid.split('.').nth(1).unwrap();
    let alg_none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");

    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("basic scheme", Some(format!("Basic {valid}"))),
        ("empty bearer", Some("Bearer ".to_owned())),
        ("garbage", Some("Bearer not.a.jwt".to_owned())),
        ("expired", Some(format!("Bearer {expired}"))),
        ("wrong key", Some(format!("Bearer {wrong_key}"))),
        ("no sub", Some(format!("Bearer {no_sub}"))),
        ("no exp", Some(format!("Bearer {no_exp}"))),
        ("other algorithm", Some(format!("Bearer {hs512}"))),
        ("alg none", Some(format!("Bearer {alg_none}"))),
    ];
    for (name, header) in cases {
        for (method, path) in [
            (Method::POST, "/v1/media".to_owned()),
            (Method::GET, format!("/v1/media/{id}")),
            (Method::DELETE, format!("/v1/media/{id}")),
        ] {
            let mut request = app
                .request(method.clone(), &path, None)
                .header("X-Gr-File-Extension", "jpg")
                .body(b"x".to_vec());
            if let Some(value) = &header {
                request = request.header("Authorization", value);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 401, "{name} {method} {path}");
            assert_eq!(response.headers()["www-authenticate"], "Bearer", "{name}");
            assert_error(response, 401, 1005).await;
        }
    }
    assert_eq!(
        app.row_count().await,
        1,
        "nothing stored by refused uploads"
    );
    // Sanity: the same token shape with the right key works.
    let fine = sign(
        secret,
        Algorithm::HS256,
        json!({"sub": "acct", "exp": now() + 600}),
    );
    assert_eq!(app.get(&fine, &id).await.status(), 200);
}

async fn scopes_are_enforced_and_403_comes_before_404(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let id = app
        .upload_ok(&app.token("acct"), "jpg", content(10, 31))
        .await;
    let read_only = app.token_with_scope("acct", "media:read");
    let write_only = app.token_with_scope("acct", "media:write");
    let both = app.token_with_scope("acct", "openid media:write media:read");
    let neither = app.token_with_scope("acct", "profile");

    assert_error(
        app.upload(&read_only, "jpg", b"x".to_vec()).await,
        403,
        1005,
    )
    .await;
    assert_error(app.upload(&neither, "jpg", b"x".to_vec()).await, 403, 1005).await;
    assert_eq!(
        app.upload(&write_only, "jpg", b"x".to_vec()).await.status(),
        201
    );

    assert_error(app.get(&write_only, &id).await, 403, 1005).await;
    assert_eq!(app.get(&read_only, &id).await.status(), 200);
    assert_eq!(app.get(&both, &id).await.status(), 200);

    // 403 says nothing about ids: unknown and malformed ids get it too.
    let unknown = uuid::Uuid::new_v4().to_string();
    assert_error(app.get(&write_only, &unknown).await, 403, 1005).await;
    assert_error(app.get(&write_only, "nonsense").await, 403, 1005).await;
    assert_error(app.delete(&read_only, &unknown).await, 403, 1005).await;
    assert_error(app.delete(&read_only, &id).await, 403, 1005).await;
    assert_eq!(app.delete(&write_only, &id).await.status(), 200);
    let _ = Duration::from_secs(0);
}

async fn repeated_authorization_headers_are_401(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    let id = app.upload_ok(&token, "jpg", content(10, 32)).await;
    let other = app.token("other");
    // Two valid tokens, a valid one after a bad one and a bad one after a valid one: the
    // request is ambiguous whichever header a proxy would pick, so it is malformed.
    for second in [
        format!("Bearer {token}"),
        format!("Bearer {other}"),
        "Bearer not.a.jwt".to_owned(),
        "Basic eDp5".to_owned(),
    ] {
        for (method, path) in [
            (Method::POST, "/v1/media".to_owned()),
            (Method::GET, format!("/v1/media/{id}")),
            (Method::DELETE, format!("/v1/media/{id}")),
        ] {
            let response = app
                .request(method.clone(), &path, Some(&token))
                .header("Authorization", &second)
                .header("X-Gr-File-Extension", "jpg")
                .body(b"x".to_vec())
                .send()
                .await
                .unwrap();
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
            assert_error(response, 401, 1005).await;
        }
    }
    assert_eq!(app.row_count().await, 1, "nothing stored, nothing deleted");
    assert_eq!(app.get(&token, &id).await.status(), 200);
}
