//! Checks of what the service answers: the contract's error shape, Prometheus samples.

use reqwest::Response;
use serde_json::Value;

/// Asserts the contract's error shape and returns the body.
pub async fn assert_error(response: Response, status: u16, code: u64) -> Value {
    assert_eq!(response.status().as_u16(), status, "status");
    assert!(
        response.headers().contains_key("x-request-id"),
        "every answer carries X-Request-Id"
    );
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], code, "{body}");
    assert!(body["errors"][0]["title"].is_string(), "{body}");
    assert!(
        !body["errors"][0]["details"].as_str().unwrap().is_empty(),
        "{body}"
    );
    assert_eq!(body["meta"]["api_status"], "stable");
    assert_eq!(body["meta"]["version"], "2.0.1");
    body
}

/// A sample's value in Prometheus text format: `name value` or `name{labels} value`.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.split([' ', '{']).next() == Some(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A labelled sample's value: the line for `name` whose labels include every pair.
pub fn labelled_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
