//! The `media-node` binary as an operator or a newcomer runs it: embedded defaults in an
//! empty directory, the `token`, `migrate` and `serve` subcommands, configuration through
//! `MEDIA_NODE__…` variables, and a clean exit on SIGTERM.

use std::path::Path;
use std::process::{Command, Output};

const DB_PASSWORD: &str = "pw-never-in-logs-4711";

use test_support::{
    free_port, media_node_command as media_node, ServiceProcess, Services, TempDir,
};

fn output(command: &mut Command) -> Output {
    command.output().unwrap()
}

fn token(dir: &Path, sub: &str, extra: &[&str]) -> String {
    let out = output(media_node(dir).args(["token", "--sub", sub]).args(extra));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test]
async fn newcomer_flow_on_embedded_defaults() {
    let dir = TempDir::new();
    // The first token creates the development secret, private to its owner.
    let first = token(&dir.0, "demo", &[]);
    let secret_file = dir.0.join("data/jwt-secret");
    let mode = std::fs::metadata(&secret_file).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    let secret = std::fs::read_to_string(&secret_file).unwrap();
    assert_eq!(secret.trim().len(), 64);

    let mut server = ServiceProcess::start(&dir.0, &[]);
    server.wait_ready().await;
    // The server uses the same secret: a token minted before it started works.
    let client = reqwest::Client::new();
    let response = client
        .post(format!("http://127.0.0.1:{}/v1/media", server.port))
        .bearer_auth(&first)
        .header("X-Gr-File-Extension", "txt")
        .body("hello media-node")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let body = response.text().await.unwrap();
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = json["media"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        body,
        format!(
            r#"{{"media":[{{"id":"{id}"}}],"meta":{{"api_status":"stable","version":"2.0.1"}}}}"#
        )
    );
    let read_only = token(&dir.0, "demo", &["--scope", "media:read", "--ttl", "5m"]);
    let download = client
        .get(format!("http://127.0.0.1:{}/v1/media/{id}", server.port))
        .bearer_auth(&read_only)
        .send()
        .await
        .unwrap();
    assert_eq!(download.status(), 200);
    assert_eq!(download.text().await.unwrap(), "hello media-node");
    // The objects and the database live under ./data.
    assert!(dir.0.join("data/media.db").exists());
    assert!(dir.0.join("data/objects").join(&id).exists());

    let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", server.admin_port))
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);

    // The purge on the admin listener takes a token minted with `--scope media:admin`, not
    // the user's, and is logged with the admin's `sub`.
    let purge_url = format!(
        "http://127.0.0.1:{}/admin/accounts/demo/purge",
        server.admin_port
    );
    let refused = client
        .post(&purge_url)
        .bearer_auth(&first)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let admin = token(
        &dir.0,
        "ops-alice",
        &["--scope", "media:admin", "--ttl", "5m"],
    );
    let purged = client
        .post(&purge_url)
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(purged.status(), 200);
    let report: serde_json::Value = purged.json().await.unwrap();
    assert_eq!(report["deleted"], 1, "{report}");
    assert!(!dir.0.join("data/objects").join(&id).exists());

    // Ctrl-C drains like SIGTERM and exits 0.
    server.signal("INT");
    let (status, logs) = server.wait_exit(std::time::Duration::from_secs(30));
    assert!(status.success(), "exit {status}: {logs}");
    assert!(logs.contains("shutdown requested"), "{logs}");
    assert!(!logs.contains(secret.trim()), "the secret was logged");
    assert!(!logs.contains(&first), "a token was logged");
    assert!(!logs.contains(&admin), "a token was logged");
    assert!(
        logs.lines()
            .any(|line| line.contains("purge") && line.contains("ops-alice")),
        "the purge was not logged with its sub: {logs}"
    );
}

#[test]
fn token_refuses_what_the_server_would_refuse() {
    let dir = TempDir::new();
    let long = "x".repeat(300);
    for (args, expected) in [
        (vec!["--sub", ""], "--sub"),
        (vec!["--sub", long.as_str()], "--sub"),
        (vec!["--sub", "a\tb"], "--sub"),
        (vec!["--sub", "demo", "--scope", "   "], "--scope"),
        (vec!["--sub", "demo", "--scope", ""], "--scope"),
    ] {
        let out = output(media_node(&dir.0).arg("token").args(&args));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} minted a token");
        assert!(out.stdout.is_empty(), "{args:?} printed a token");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    // The longest account the server takes, and scopes split as the server splits them.
    let max = "x".repeat(255);
    token(&dir.0, &max, &[]);
    let jwt = token(&dir.0, "demo", &["--scope", "  media:read\tmedia:write "]);
    let payload = jwt.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&base64url_decode(payload)).unwrap();
    assert_eq!(claims["scope"], "media:read media:write");
}

/// Unpadded base64url, enough to read a JWT payload.
fn base64url_decode(input: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'-' => 62,
        b'_' => 63,
        _ => panic!("not base64url: {c}"),
    };
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in input.bytes() {
        acc = (acc << 6) | u32::from(value(c));
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[tokio::test]
async fn production_without_a_key_refuses_to_start() {
    let dir = TempDir::new();
    let out = output(
        media_node(&dir.0)
            .env("APP_ENV", "production")
            .env("MEDIA_NODE__DATABASE__URL", "postgres://127.0.0.1:1/none")
            .env("MEDIA_NODE__STORAGE__URL", "s3://none")
            .env("MEDIA_NODE__SERVER__PORT", free_port().to_string())
            .env("MEDIA_NODE__ADMIN__PORT", free_port().to_string())
            .arg("serve"),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no JWT key configured"), "{stderr}");
    assert!(
        !dir.0.join("data/jwt-secret").exists(),
        "no secret generated"
    );

    let out = output(
        media_node(&dir.0)
            .env("APP_ENV", "production")
            .args(["token", "--sub", "x"]),
    );
    assert!(!out.status.success());
}

#[test]
fn unusable_public_keys_refuse_to_start() {
    let dir = TempDir::new();
    let private = dir.0.join("small.key");
    let public = dir.0.join("small.pem");
    for args in [
        vec![
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:1024",
        ],
        vec!["pkey", "-pubout", "-in"],
    ] {
        let mut command = Command::new("openssl");
        command.args(&args);
        if args[0] == "genpkey" {
            command.arg("-out").arg(&private);
        } else {
            command.arg(&private).arg("-out").arg(&public);
        }
        assert!(output(&mut command).status.success(), "openssl {args:?}");
    }
    for (key, value, expected) in [
        (
            "MEDIA_NODE__AUTH__PUBLIC_KEY_FILES",
            public.display().to_string(),
            "an RSA key of 1024 bits is too small: at least 2048 bits are required",
        ),
        (
            "MEDIA_NODE__AUTH__JWKS_URL",
            "ftp://idp.example/jwks.json".to_owned(),
            "auth.jwks_url is not an http(s) URL",
        ),
    ] {
        // A process that starts anyway is killed (and the test fails) instead of hanging it.
        let server = ServiceProcess::start(&dir.0, &[(key, value)]);
        let (status, logs) = server.wait_exit(std::time::Duration::from_secs(20));
        assert!(!status.success(), "{key} accepted");
        assert!(logs.contains(expected), "{key}: {logs}");
    }
}

#[tokio::test]
async fn configuration_comes_from_the_environment_and_secrets_stay_out_of_logs() {
    let dir = TempDir::new();
    let services = Services::from_env();
    let database = test_support::create_database(&services).await;
    let secret = "env-secret-0123456789abcdef0123456789abcdef".to_owned();
    let bucket = format!("s3://{}/cli-{}", services.s3_bucket, uuid::Uuid::new_v4());

    // `migrate` alone creates the schema (what a Kubernetes Job runs).
    let out = output(
        media_node(&dir.0)
            .env("MEDIA_NODE__DATABASE__URL", &database)
            .arg("migrate"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pool = sqlx::PgPool::connect(&database).await.unwrap();
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'media'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(tables, 1);

    // The server trusts local connections, so any password works; it must never be logged.
    let mut with_password = url::Url::parse(&database).unwrap();
    with_password.set_password(Some(DB_PASSWORD)).unwrap();
    let with_password = with_password.to_string();
    let envs = [
        ("APP_ENV", "production".to_owned()),
        ("MEDIA_NODE__DATABASE__URL", with_password.clone()),
        ("MEDIA_NODE__STORAGE__URL", bucket),
        (
            "MEDIA_NODE__STORAGE__S3__ENDPOINT",
            services.s3_endpoint.clone(),
        ),
        (
            "MEDIA_NODE__STORAGE__S3__REGION",
            services.s3_region.clone(),
        ),
        (
            "MEDIA_NODE__STORAGE__S3__ACCESS_KEY_ID",
            services.s3_access_key_id.clone(),
        ),
        (
            "MEDIA_NODE__STORAGE__S3__SECRET_ACCESS_KEY",
            services.s3_secret_access_key.clone(),
        ),
        ("MEDIA_NODE__STORAGE__S3__ALLOW_HTTP", "true".to_owned()),
        ("MEDIA_NODE__AUTH__HS256_SECRET", secret.clone()),
        ("MEDIA_NODE__LIMITS__MAX_UPLOAD_BYTES", "10".to_owned()),
        ("MEDIA_NODE__MEDIA__RETENTION", "90m".to_owned()),
        ("RUST_LOG", "debug".to_owned()),
    ];
    let mut server = ServiceProcess::start(&dir.0, &envs);
    assert!(with_password.contains(DB_PASSWORD));
    server.wait_ready().await;
    let minted = output(
        media_node(&dir.0)
            .env("APP_ENV", "production")
            .env("MEDIA_NODE__AUTH__HS256_SECRET", &secret)
            .args(["token", "--sub", "ops"]),
    );
    assert!(minted.status.success());
    let jwt = String::from_utf8(minted.stdout).unwrap().trim().to_owned();

    let client = reqwest::Client::new();
    let upload = |body: &'static str| {
        client
            .post(format!("http://127.0.0.1:{}/v1/media", server.port))
            .bearer_auth(&jwt)
            .header("X-Gr-File-Extension", "txt")
            .body(body)
            .send()
    };
    assert_eq!(upload("0123456789").await.unwrap().status(), 201);
    assert_eq!(upload("0123456789A").await.unwrap().status(), 413);
    let expires_in: f64 = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM (expires_at - created_at))::float8 FROM media",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(expires_in, 90.0 * 60.0);

    let (status, logs) = server.terminate();
    assert!(status.success(), "exit {status}: {logs}");
    assert!(
        logs.contains("request finished"),
        "requests are logged: {logs}"
    );
    for secret_value in [
        &secret,
        &services.s3_secret_access_key,
        &jwt,
        &DB_PASSWORD.to_owned(),
    ] {
        assert!(!logs.contains(secret_value.as_str()), "a secret was logged");
    }
}

/// `APP_ENV=production` without backend URLs is a start-up error, not a silent fallback to
/// SQLite and files on the pod's disk: nothing is created.
#[test]
fn production_never_falls_back_to_the_embedded_backends() {
    let dir = TempDir::new();
    for command in ["migrate", "serve"] {
        let out = output(
            media_node(&dir.0)
                .arg(command)
                .env("APP_ENV", "production")
                .env("MEDIA_NODE__AUTH__HS256_SECRET", "p".repeat(40)),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{command}: {stderr}");
        assert!(stderr.contains("MEDIA_NODE__DATABASE__URL"), "{stderr}");
        assert!(!dir.0.join("data").exists(), "{command} created data/");
    }
}

/// Roll-back: a database migrated by a newer release carries a migration this binary does
/// not know. In production (`serve` only checks the schema) and in development (`serve`
/// migrates), the older binary starts on it and serves.
#[tokio::test]
async fn a_release_serves_on_a_schema_with_an_unknown_newer_migration() {
    for environment in ["production", "development"] {
        let dir = TempDir::new();
        let settings = test_support::test_settings(test_support::Backend::Production, &dir).await;
        let mut envs = test_support::process_env(&settings);
        envs.push(("APP_ENV", environment.to_owned()));
        let migrated = output(
            media_node(&dir.0)
                .arg("migrate")
                .envs(envs.iter().map(|(k, v)| (*k, v.as_str()))),
        );
        assert!(migrated.status.success(), "{migrated:?}");
        let pool = sqlx::PgPool::connect(settings.database.url.expose())
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (29991231000000, 'a later release', true, '\\x00', 1)",
        )
        .execute(&pool)
        .await
        .unwrap();

        let mut server = ServiceProcess::start(&dir.0, &envs);
        server.wait_ready().await;
        let token = media_node::auth::Authenticator::from_settings(&settings.auth, false)
            .unwrap()
            .mint("acct", std::time::Duration::from_secs(60), None)
            .unwrap();
        let response = reqwest::Client::new()
            .post(server.url("/v1/media"))
            .bearer_auth(&token)
            .header("X-Gr-File-Extension", "txt")
            .body("served on a newer schema")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{environment}");
        let (status, logs) = server.terminate();
        assert!(status.success(), "{environment}: {logs}");
        // `migrate` itself (the next migration Job of this release) tolerates it too.
        let again = output(
            media_node(&dir.0)
                .arg("migrate")
                .envs(envs.iter().map(|(k, v)| (*k, v.as_str()))),
        );
        assert!(again.status.success(), "{again:?}");
    }
}

/// In production `serve` never changes the schema: on a database the migration Job has not
/// prepared it refuses to start, saying what to run; after `migrate` it serves.
#[tokio::test]
async fn production_serve_checks_the_schema_and_leaves_migrating_to_the_job() {
    let dir = TempDir::new();
    let settings = test_support::test_settings(test_support::Backend::Production, &dir).await;
    let mut envs = test_support::process_env(&settings);
    envs.push(("APP_ENV", "production".to_owned()));
    let mut server = ServiceProcess::start(&dir.0, &envs);
    let (status, logs) = server_exit(&mut server);
    assert!(!status.success());
    assert!(logs.contains("media-node migrate"), "{logs}");
    let pool = sqlx::PgPool::connect(settings.database.url.expose())
        .await
        .unwrap();
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'media'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(tables, 0, "serve created no table");

    let migrated = output(
        media_node(&dir.0)
            .arg("migrate")
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str()))),
    );
    assert!(migrated.status.success(), "{migrated:?}");
    let mut server = ServiceProcess::start(&dir.0, &envs);
    server.wait_ready().await;
}

fn server_exit(server: &mut ServiceProcess) -> (std::process::ExitStatus, String) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            return (status, server.logs());
        }
        assert!(std::time::Instant::now() < deadline, "{}", server.logs());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Text logs written to a file (or a pipe, or a log collector) carry no terminal colour
/// codes.
#[tokio::test]
async fn text_logs_to_a_file_have_no_colour_codes() {
    let dir = TempDir::new();
    let mut server =
        ServiceProcess::start(&dir.0, &[("MEDIA_NODE__LOG__FORMAT", "text".to_owned())]);
    server.wait_ready().await;
    let (status, logs) = server.terminate();
    assert!(status.success(), "{logs}");
    assert!(logs.contains("media-node listening"), "{logs}");
    assert!(
        !logs.contains('\u{1b}'),
        "escape codes in the log: {logs:?}"
    );
}
