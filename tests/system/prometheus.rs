//! A real Prometheus server (Debian's package, started by `scripts/prometheus`) scrapes a
//! running media-node; the test reads the results back through Prometheus's query API.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use media_node::auth::Authenticator;
use serde_json::Value;
use test_support::{content, Backend, ServiceProcess, TempDir};

fn prometheus(args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/prometheus");
    let out = Command::new(script).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "scripts/prometheus {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

struct Prometheus<'a> {
    dir: &'a Path,
    url: String,
    client: reqwest::Client,
}

impl<'a> Prometheus<'a> {
    fn start(dir: &'a Path, target: &str) -> Self {
        let exports = prometheus(&["start", dir.to_str().unwrap(), target]);
        let url = exports
            .trim()
            .strip_prefix("export MEDIA_NODE_TEST_PROMETHEUS_URL=")
            .unwrap()
            .to_owned();
        Self {
            dir,
            url,
            client: reqwest::Client::new(),
        }
    }

    /// A call of Prometheus's HTTP API, e.g. `rules` or `query` with parameters.
    async fn api(&self, call: &str, params: &[(&str, &str)]) -> Value {
        let url =
            url::Url::parse_with_params(&format!("{}/api/v1/{call}", self.url), params).unwrap();
        let answer: Value = self
            .client
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(answer["status"], "success", "{answer}");
        answer
    }

    /// The value of an instant query that yields one sample, if it does.
    async fn value(&self, query: &str) -> Option<f64> {
        let answer = self.api("query", &[("query", query)]).await;
        let result = answer["data"]["result"].as_array().unwrap();
        result
            .first()
            .and_then(|sample| sample["value"][1].as_str())
            .and_then(|v| v.parse().ok())
    }

    /// Polls until `query` equals `expected` (bounded).
    async fn wait_for(&self, query: &str, expected: f64) {
        let mut last = None;
        for _ in 0..150 {
            last = self.value(query).await;
            if last == Some(expected) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{query}: expected {expected}, last saw {last:?}");
    }
}

impl Drop for Prometheus<'_> {
    fn drop(&mut self) {
        prometheus(&["stop", self.dir.to_str().unwrap()]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_uploads_and_downloads() {
    let dir = TempDir::new();
    let settings = test_support::test_settings(Backend::Production, &dir).await;
    let mut server = ServiceProcess::start(&dir.0, &test_support::process_env(&settings));
    server.wait_ready().await;
    let prom_dir = dir.0.join("prometheus");
    let prom = Prometheus::start(&prom_dir, &format!("127.0.0.1:{}", server.admin_port));

    prom.wait_for(r#"up{job="media-node"}"#, 1.0).await;
    // The alert rules are loaded and healthy.
    let rules = prom.api("rules", &[]).await;
    let group = &rules["data"]["groups"][0];
    assert_eq!(group["name"], "media-node");
    let loaded = group["rules"].as_array().unwrap();
    // Every rule of the file, however many it holds.
    let in_file = std::fs::read_to_string("deploy/prometheus/alerts.yaml")
        .unwrap()
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    assert!(in_file >= 7, "{in_file} rules in alerts.yaml");
    assert_eq!(loaded.len(), in_file);
    assert!(loaded.iter().all(|r| r["health"] == "ok"), "{group}");

    let stored = r#"sum(media_uploads_total{job="media-node", outcome="stored"}) or vector(0)"#;
    let bytes = r#"sum(media_upload_bytes_total{job="media-node"})"#;
    prom.wait_for(bytes, 0.0).await;
    let before = prom.value(stored).await.unwrap();

    let token = Authenticator::from_settings(&settings.auth, false)
        .unwrap()
        .mint("acct", Duration::from_secs(600), None)
        .unwrap();
    let client = reqwest::Client::new();
    let sizes = [10_000usize, 200_000, 1_500_000, 6 * 1024 * 1024, 123];
    let mut ids = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        let response = client
            .post(server.url("/v1/media"))
            .bearer_auth(&token)
            .header("X-Gr-File-Extension", "bin")
            .body(content(*size, i as u8))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let json: Value = response.json().await.unwrap();
        ids.push(json["media"][0]["id"].as_str().unwrap().to_owned());
    }
    for id in &ids[..2] {
        let body = client
            .get(server.url(&format!("/v1/media/{id}")))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert!(!body.is_empty());
    }

    let total: usize = sizes.iter().sum();
    prom.wait_for(stored, before + sizes.len() as f64).await;
    prom.wait_for(bytes, total as f64).await;
    prom.wait_for(r#"sum(media_downloads_total{job="media-node"})"#, 2.0)
        .await;
    prom.wait_for(
        r#"sum(media_download_bytes_total{job="media-node"})"#,
        (sizes[0] + sizes[1]) as f64,
    )
    .await;
    prom.wait_for(
        r#"sum(http_requests_total{job="media-node", route="/v1/media", status="201"})"#,
        sizes.len() as f64,
    )
    .await;
    prom.wait_for(r#"min(media_backend_up{job="media-node"})"#, 1.0)
        .await;
    assert!(prom
        .value(r#"process_resident_memory_bytes{job="media-node"}"#)
        .await
        .is_some_and(|rss| rss > 0.0));

    let (status, logs) = server.terminate();
    assert!(status.success(), "{logs}");
}
