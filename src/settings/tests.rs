//! Loading, layering, validation and redaction of the settings.

use std::path::PathBuf;
use std::time::Duration;

use super::*;

#[test]
fn secrets_never_print() {
    let secret = Secret::new("hunter2");
    assert!(!format!("{secret:?}").contains("hunter2"));
    let db = DatabaseSettings {
        url: Secret::new("postgres://app:s3cret@db:5432/media"),
        max_connections: 1,
        acquire_timeout: Duration::from_secs(1),
        statement_timeout: Duration::from_secs(1),
        migrate_on_start: None,
    };
    let printed = format!("{db:?}");
    assert!(!printed.contains("s3cret"), "{printed}");
    assert!(printed.contains("db:5432"), "{printed}");
}

fn load_with(environment: &str, vars: &[(&str, &str)]) -> anyhow::Result<Settings> {
    let vars = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Settings::load_from(
        Path::new("/nonexistent"),
        None,
        environment.to_owned(),
        Some(vars),
    )
}

#[test]
fn numeric_looking_secrets_stay_strings() {
    let long = "123456789012345678901234567890123456789";
    let settings = load_with(
        "development",
        &[
            ("MEDIA_NODE__AUTH__HS256_SECRET", long),
            ("MEDIA_NODE__STORAGE__S3__ACCESS_KEY_ID", "00012"),
            ("MEDIA_NODE__STORAGE__S3__SECRET_ACCESS_KEY", "1e5"),
        ],
    )
    .unwrap();
    assert_eq!(settings.auth.hs256_secret.unwrap().expose(), long);
    assert_eq!(settings.storage.s3.access_key_id.as_deref(), Some("00012"));
    assert_eq!(
        settings.storage.s3.secret_access_key.unwrap().expose(),
        "1e5"
    );
}

#[test]
fn typed_values_and_lists_from_the_environment() {
    let settings = load_with(
        "development",
        &[
            ("MEDIA_NODE__SERVER__PORT", "8081"),
            ("MEDIA_NODE__SERVER__WORKERS", "3"),
            ("MEDIA_NODE__STORAGE__S3__ALLOW_HTTP", "true"),
            ("MEDIA_NODE__AUTH__PUBLIC_KEY_FILES", "a.pem, keys/b.pem"),
            ("MEDIA_NODE__REAPER__INTERVAL", "2m"),
        ],
    )
    .unwrap();
    assert_eq!(settings.server.port, 8081);
    assert_eq!(settings.server.workers, Some(3));
    assert!(settings.storage.s3.allow_http);
    assert_eq!(
        settings.auth.public_key_files,
        vec![PathBuf::from("a.pem"), PathBuf::from("keys/b.pem")]
    );
    assert_eq!(settings.reaper.interval, Duration::from_secs(120));
}

#[test]
fn secrets_come_from_files() {
    let dir = std::env::temp_dir().join(format!("media-node-settings-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, content: &str| {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path.display().to_string()
    };
    let hs = file("hs", &format!("{}\n", "s".repeat(40)));
    let key_id = file("key-id", "AKIDFROMFILE");
    let secret_key = file("secret-key", "0123456789");
    let password = file("password", "p@ss/word\n");
    let settings = load_with(
        "development",
        &[
            ("MEDIA_NODE__AUTH__HS256_SECRET_FILE", &hs),
            ("MEDIA_NODE__STORAGE__S3__ACCESS_KEY_ID_FILE", &key_id),
            (
                "MEDIA_NODE__STORAGE__S3__SECRET_ACCESS_KEY_FILE",
                &secret_key,
            ),
            (
                "MEDIA_NODE__DATABASE__URL",
                "postgres://media@db:5432/media",
            ),
            ("MEDIA_NODE__DATABASE__PASSWORD_FILE", &password),
        ],
    )
    .unwrap();
    assert_eq!(settings.auth.hs256_secret.unwrap().expose(), "s".repeat(40));
    assert_eq!(
        settings.storage.s3.access_key_id.as_deref(),
        Some("AKIDFROMFILE")
    );
    assert_eq!(
        settings.storage.s3.secret_access_key.unwrap().expose(),
        "0123456789"
    );
    let url = url::Url::parse(settings.database.url.expose()).unwrap();
    assert_eq!(url.username(), "media");
    assert_eq!(
        percent_decode(url.password().unwrap()),
        "p@ss/word",
        "{}",
        url
    );

    let url_file = file("url", "postgres://u:pw@db/media\n");
    let settings = load_with(
        "development",
        &[("MEDIA_NODE__DATABASE__URL_FILE", &url_file)],
    )
    .unwrap();
    assert_eq!(settings.database.url.expose(), "postgres://u:pw@db/media");

    let missing = load_with(
        "development",
        &[("MEDIA_NODE__AUTH__HS256_SECRET_FILE", "/nonexistent/secret")],
    )
    .unwrap_err();
    assert!(
        format!("{missing:#}").contains("auth.hs256_secret_file"),
        "{missing:#}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn percent_decode(raw: &str) -> String {
    url::form_urlencoded::parse(format!("x={raw}").as_bytes())
        .next()
        .unwrap()
        .1
        .into_owned()
}

#[test]
fn redaction_covers_query_passwords() {
    for raw in [
        "postgres://db/media?user=app&password=hunter2",
        "postgres://db/media?sslmode=require&sslpassword=hunter2",
        "postgres://app:hunter2@db/media",
    ] {
        let redacted = redact_url(raw);
        assert!(!redacted.contains("hunter2"), "{redacted}");
        assert!(redacted.contains("db"), "{redacted}");
    }
    assert!(redact_url("postgres://db/media?sslmode=require").contains("sslmode=require"));
}

#[test]
fn durations_out_of_range_are_refused() {
    for (key, value) in [
        ("MEDIA_NODE__REAPER__STALE_UPLOAD_AFTER", "0s"),
        ("MEDIA_NODE__REAPER__STALE_UPLOAD_AFTER", "1s"),
        ("MEDIA_NODE__REAPER__HEARTBEAT_INTERVAL", "0s"),
        ("MEDIA_NODE__REAPER__HEARTBEAT_INTERVAL", "500ms"),
        ("MEDIA_NODE__REAPER__HEARTBEAT_INTERVAL", "6m"),
        ("MEDIA_NODE__MEDIA__RETENTION", "0s"),
        ("MEDIA_NODE__MEDIA__RETENTION", "100000years"),
        ("MEDIA_NODE__REAPER__LEASE", "100000years"),
        ("MEDIA_NODE__REAPER__LEASE", "0s"),
        ("MEDIA_NODE__REAPER__INTERVAL", "0s"),
        ("MEDIA_NODE__SERVER__SHUTDOWN_TIMEOUT", "100years"),
    ] {
        let err = load_with("development", &[(key, value)]).unwrap_err();
        let name = key
            .trim_start_matches("MEDIA_NODE__")
            .replace("__", ".")
            .to_lowercase();
        assert!(format!("{err:#}").contains(&name), "{key}={value}: {err:#}");
    }
    assert!(load_with(
        "development",
        &[("MEDIA_NODE__REAPER__STALE_UPLOAD_AFTER", "10s")]
    )
    .is_ok());
}

#[test]
fn an_upload_is_dead_after_three_missed_heartbeats() {
    let settings = load_with(
        "development",
        &[("MEDIA_NODE__REAPER__HEARTBEAT_INTERVAL", "1s")],
    )
    .unwrap();
    assert_eq!(settings.reaper.upload_heartbeat(), Duration::from_secs(1));
    assert_eq!(settings.reaper.upload_dead_after(), Duration::from_secs(3));
    // A short stale_upload_after caps the heartbeat at a quarter of it.
    let settings = load_with(
        "development",
        &[("MEDIA_NODE__REAPER__STALE_UPLOAD_AFTER", "8s")],
    )
    .unwrap();
    assert_eq!(settings.reaper.upload_heartbeat(), Duration::from_secs(2));
    assert_eq!(settings.reaper.upload_dead_after(), Duration::from_secs(6));
}

#[test]
fn the_media_profile_is_checked_at_start_up() {
    assert_eq!(
        load_with("development", &[]).unwrap().media.profile,
        crate::domain::profile::Profile::None
    );
    let settings = load_with("development", &[("MEDIA_NODE__MEDIA__PROFILE", "whatsapp")]);
    assert_eq!(
        settings.unwrap().media.profile,
        crate::domain::profile::Profile::Whatsapp
    );
    let err = load_with("development", &[("MEDIA_NODE__MEDIA__PROFILE", "telegram")]).unwrap_err();
    assert!(format!("{err:#}").contains("media.profile"), "{err:#}");
}

#[test]
fn production_refuses_the_embedded_backends() {
    let err = load_with("production", &[])
        .unwrap()
        .check_backends()
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("MEDIA_NODE__DATABASE__URL"),
        "{err:#}"
    );
    let err = load_with(
        "production",
        &[("MEDIA_NODE__DATABASE__URL", "postgres://db/media")],
    )
    .unwrap()
    .check_backends()
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("MEDIA_NODE__STORAGE__URL"),
        "{err:#}"
    );
    let settings = load_with(
        "production",
        &[
            ("MEDIA_NODE__DATABASE__URL", "postgres://db/media"),
            ("MEDIA_NODE__STORAGE__URL", "s3://bucket/media"),
        ],
    )
    .unwrap();
    assert!(settings.is_production());
    settings.check_backends().unwrap();
    // Development keeps its zero-setup defaults.
    load_with("development", &[])
        .unwrap()
        .check_backends()
        .unwrap();
}

#[test]
fn embedded_defaults_parse() {
    let settings = Settings::load(Path::new("/nonexistent"), None).unwrap();
    assert_eq!(settings.limits.max_upload_bytes, 38_797_312);
    assert_eq!(settings.media.retention, Duration::from_secs(24 * 3600));
    assert_eq!(settings.server.port, 8080);
    assert_eq!(settings.admin.port, 9090);
    assert_eq!(settings.reaper.batch_size, 500);
    assert_eq!(settings.reaper.interval, Duration::from_secs(60));
    assert_eq!(
        settings.reaper.stale_upload_after,
        Duration::from_secs(3600)
    );
    assert_eq!(settings.reaper.heartbeat_interval, Duration::from_secs(10));
    assert_eq!(settings.reaper.upload_heartbeat(), Duration::from_secs(10));
    assert_eq!(settings.reaper.upload_dead_after(), Duration::from_secs(30));
    assert_eq!(settings.server.shutdown_timeout, Duration::from_secs(30));
    assert_eq!(settings.database.url.expose(), "sqlite://data/media.db");
    assert_eq!(settings.storage.url, "file://data/objects");
    assert_eq!(settings.auth.key_files_poll, Duration::from_secs(5));
    assert_eq!(settings.auth.jwks_url, None);
    assert_eq!(settings.auth.jwks_refresh, Duration::from_secs(300));
    assert_eq!(
        settings.limits.upload_memory_budget_bytes,
        256 * 1024 * 1024
    );
    assert_eq!(settings.limits.upload_memory_wait, Duration::from_secs(10));
    assert_eq!(settings.limits.account_memory_share, 0.5);
    assert_eq!(settings.limits.newcomer_memory_share, 0.125);
    assert_eq!(settings.limits.max_uploads_per_account, 32);
    assert_eq!(settings.limits.account_requests_per_second, None);
    assert_eq!(settings.limits.signed_link_rate_per_second, 5);
    assert_eq!(settings.limits.signed_link_burst, 10);
}

#[test]
fn upload_limits_that_cannot_work_are_refused() {
    for (key, value, named) in [
        (
            "MEDIA_NODE__LIMITS__UPLOAD_MEMORY_BUDGET_BYTES",
            "8388608",
            "limits.upload_memory_budget_bytes",
        ),
        (
            "MEDIA_NODE__LIMITS__ACCOUNT_MEMORY_SHARE",
            "0",
            "limits.account_memory_share",
        ),
        (
            "MEDIA_NODE__LIMITS__ACCOUNT_MEMORY_SHARE",
            "1.5",
            "limits.account_memory_share",
        ),
        (
            "MEDIA_NODE__LIMITS__NEWCOMER_MEMORY_SHARE",
            "1",
            "limits.newcomer_memory_share",
        ),
        (
            "MEDIA_NODE__LIMITS__NEWCOMER_MEMORY_SHARE",
            "-0.1",
            "limits.newcomer_memory_share",
        ),
        (
            "MEDIA_NODE__LIMITS__MAX_UPLOADS_PER_ACCOUNT",
            "0",
            "limits.max_uploads_per_account",
        ),
        (
            "MEDIA_NODE__LIMITS__ACCOUNT_REQUESTS_PER_SECOND",
            "0",
            "limits.account_requests_per_second",
        ),
        (
            "MEDIA_NODE__LIMITS__SIGNED_LINK_BURST",
            "0",
            "limits.signed_link_burst",
        ),
    ] {
        let err = load_with("development", &[(key, value)]).unwrap_err();
        assert!(format!("{err:#}").contains(named), "{key}={value}: {err:#}");
    }
    // What the reserve leaves to accounts that hold memory must hold a part.
    let err = load_with(
        "development",
        &[
            ("MEDIA_NODE__LIMITS__UPLOAD_MEMORY_BUDGET_BYTES", "16777216"),
            ("MEDIA_NODE__LIMITS__ACCOUNT_MEMORY_SHARE", "1"),
            ("MEDIA_NODE__LIMITS__NEWCOMER_MEMORY_SHARE", "0.6"),
        ],
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("limits.newcomer_memory_share"),
        "{err:#}"
    );
    let settings = load_with(
        "development",
        &[
            ("MEDIA_NODE__LIMITS__ACCOUNT_REQUESTS_PER_SECOND", "20"),
            ("MEDIA_NODE__LIMITS__ACCOUNT_MEMORY_SHARE", "0.25"),
            ("MEDIA_NODE__LIMITS__SIGNED_LINK_RATE_PER_SECOND", "0"),
            ("MEDIA_NODE__LIMITS__SIGNED_LINK_BURST", "0"),
        ],
    )
    .unwrap();
    assert_eq!(settings.limits.signed_link_rate_per_second, 0);
    assert_eq!(settings.limits.account_requests_per_second, Some(20));
    assert_eq!(settings.limits.account_memory_share, 0.25);
}

#[test]
fn parts_in_flight_are_bounded() {
    assert_eq!(
        load_with("development", &[])
            .unwrap()
            .storage
            .parts_in_flight,
        2
    );
    for refused in ["0", "17"] {
        let err = load_with(
            "development",
            &[("MEDIA_NODE__STORAGE__PARTS_IN_FLIGHT", refused)],
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("storage.parts_in_flight"),
            "{err:#}"
        );
    }
    let settings = load_with(
        "development",
        &[("MEDIA_NODE__STORAGE__PARTS_IN_FLIGHT", "4")],
    )
    .unwrap();
    assert_eq!(settings.storage.parts_in_flight, 4);
}

#[test]
fn streamed_puts_are_the_default_and_need_unsigned_payloads() {
    let streamed = ("MEDIA_NODE__STORAGE__S3__STREAMED_PUT", "true");
    let signed = ("MEDIA_NODE__STORAGE__S3__SIGN_PAYLOAD", "true");
    let err = load_with("development", &[streamed, signed]).unwrap_err();
    assert!(format!("{err:#}").contains("streamed_put"), "{err:#}");
    // The default: on, unless payloads are signed; then multipart, without an error.
    let off = ("MEDIA_NODE__STORAGE__S3__STREAMED_PUT", "false");
    for (env, streams) in [
        (&[][..], true),
        (&[streamed], true),
        (&[signed], false),
        (&[off], false),
    ] {
        let s3 = load_with("development", env).unwrap().storage.s3;
        assert_eq!(s3.streams_puts(), streams, "{env:?}");
    }
    let default = load_with("development", &[]).unwrap().storage.s3;
    assert_eq!(default.streamed_put, None);
    assert_eq!(default.streamed_put_idle_timeout, Duration::from_secs(15));
    let err = load_with(
        "development",
        &[("MEDIA_NODE__STORAGE__S3__STREAMED_PUT_IDLE_TIMEOUT", "0s")],
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("streamed_put_idle_timeout"),
        "{err:#}"
    );
}
