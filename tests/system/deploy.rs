//! The deployment files say what operators rely on.

use serde_json::Value;

fn read_json(path: &str) -> Value {
    let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&full).unwrap()).unwrap()
}

#[test]
fn s3_lifecycle_rule_is_a_backstop_for_the_reaper() {
    let rules = read_json("deploy/s3-lifecycle.json")["Rules"]
        .as_array()
        .unwrap()
        .clone();
    let enabled = |rule: &&Value| rule["Status"] == "Enabled";
    let expire = rules
        .iter()
        .filter(enabled)
        .find(|r| r.get("Expiration").is_some())
        .expect("an expiration rule");
    assert_eq!(expire["Expiration"]["Days"], 2, "objects go after 2 days");
    let abort = rules
        .iter()
        .filter(enabled)
        .find(|r| r.get("AbortIncompleteMultipartUpload").is_some())
        .expect("a rule for unfinished multipart uploads");
    assert_eq!(
        abort["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"],
        1
    );
    for rule in &rules {
        assert!(rule["Filter"]["Prefix"].is_string(), "scoped to the prefix");
    }
}

/// Metric names (as exported, before `_bucket`/`_count`/`_sum`) that `text` mentions.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts_name = (bytes[i].is_ascii_lowercase())
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'));
        if starts_name {
            let end = (i..bytes.len())
                .find(|&j| !(bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_'))
                .unwrap_or(bytes.len());
            let word = &text[i..end];
            if ["http_", "media_", "process_"]
                .iter()
                .any(|p| word.starts_with(p))
            {
                let base = ["_bucket", "_count", "_sum"]
                    .iter()
                    .find_map(|s| word.strip_suffix(s))
                    .unwrap_or(word);
                names.insert(base.to_owned());
            }
            i = end;
        } else {
            i += 1;
        }
    }
    names
}

/// Every metric the dashboard and the alert rules use is one the service exports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_use_only_exported_metrics() {
    let app = test_support::TestApp::spawn(test_support::Backend::Embedded).await;
    let token = app.token("acct");
    let id = app
        .upload_ok(&token, "mp4", test_support::content(6 * 1024 * 1024, 1))
        .await;
    assert_eq!(app.get(&token, &id).await.status(), 200);
    let exported = app.metrics_text().await;
    let is_exported = |name: &str| {
        exported
            .lines()
            .any(|l| l.starts_with(&format!("# TYPE {name} ")))
    };

    let root = env!("CARGO_MANIFEST_DIR");
    let dashboard =
        std::fs::read_to_string(format!("{root}/deploy/grafana/media-node.json")).unwrap();
    let dashboard_json: Value = serde_json::from_str(&dashboard).unwrap();
    let exprs: Vec<String> = dashboard_json["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect();
    assert!(exprs.len() >= 20, "the dashboard has its panels");
    let alerts = std::fs::read_to_string(format!("{root}/deploy/prometheus/alerts.yaml")).unwrap();
    let alert_exprs: String = alerts
        .lines()
        .filter(|l| !l.trim_start().starts_with("description") && !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");

    let used = metric_names(&(exprs.join("\n") + "\n" + &alert_exprs));
    assert!(used.contains("media_uploads_total") && used.contains("media_expired_backlog"));
    // The check itself sees an unknown name.
    let bogus = metric_names("sum(rate(media_bogus_total[5m])) / http_requests_total_count");
    assert!(bogus.contains("media_bogus_total") && !is_exported("media_bogus_total"));
    assert!(bogus.contains("http_requests_total"));
    let missing: Vec<&String> = used.iter().filter(|n| !is_exported(n)).collect();
    assert!(missing.is_empty(), "used but not exported: {missing:?}");
}
