use reqwest::Method;

use test_support::on_both_backends;
use test_support::{labelled_value, Backend, TestApp};

on_both_backends!(the_document_is_served_without_a_token);

/// `GET /openapi.json` needs no token, is the checked-in document, and goes through the
/// telemetry like every route (request id, metrics under its own route label).
async fn the_document_is_served_without_a_token(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let response = app
        .request(Method::GET, "/openapi.json", None)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-request-id"));
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let body = response.text().await.unwrap();
    assert_eq!(body, media_node::http::openapi::json());
    let checked_in =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json")).unwrap();
    assert_eq!(
        body, checked_in,
        "regenerate with UPDATE_OPENAPI=1 cargo test --lib openapi"
    );
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");

    let head = app
        .request(Method::HEAD, "/openapi.json", None)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    let post = app
        .request(Method::POST, "/openapi.json", None)
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
    assert_eq!(post.headers()["allow"], "GET, HEAD");

    let text = app.metrics_text().await;
    let served = labelled_value(
        &text,
        "http_requests_total",
        &[
            ("method", "GET"),
            ("route", "/openapi.json"),
            ("status", "200"),
        ],
    );
    assert!(served.is_some_and(|n| n >= 1.0), "{text}");
}
