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
