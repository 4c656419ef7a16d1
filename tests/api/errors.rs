use reqwest::Method;

use sqlx::{Connection, Executor};

use test_support::on_both_backends;
use test_support::{assert_error, content, Backend, Services, TcpProxy, TestApp};

on_both_backends!(
    unknown_routes_and_methods_are_json,
    request_id_is_echoed_or_generated,
    repeated_request_id_uses_the_first_sane_one,
    storage_down_is_503_and_nothing_is_stored,
    admin_endpoints_live_on_their_own_port,
);

async fn admin_endpoints_live_on_their_own_port(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for path in ["/livez", "/readyz"] {
        let response = reqwest::get(format!("{}{path}", app.admin_address))
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    let metrics = reqwest::get(format!("{}/metrics", app.admin_address))
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(metrics.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    // The public port has none of them.
    for path in ["/livez", "/readyz", "/metrics"] {
        let response = app.request(Method::GET, path, None).send().await.unwrap();
        assert_error(response, 404, 1006).await;
    }
}

async fn unknown_routes_and_methods_are_json(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    let response = app
        .request(Method::GET, "/nope", Some(&token))
        .send()
        .await
        .unwrap();
    assert_error(response, 404, 1006).await;
    let response = app
        .request(Method::GET, "/metrics", None)
        .send()
        .await
        .unwrap();
    assert_error(response, 404, 1006).await;

    let response = app
        .request(Method::PUT, "/v1/media", Some(&token))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["allow"], "GET, HEAD, POST");
    assert_error(response, 405, 1025).await;
    let id = uuid::Uuid::new_v4();
    let response = app
        .request(Method::POST, &format!("/v1/media/{id}"), Some(&token))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["allow"], "GET, HEAD, DELETE");
    assert_error(response, 405, 1025).await;
}

async fn request_id_is_echoed_or_generated(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    let response = app
        .request(Method::GET, "/v1/media/x", Some(&token))
        .header("X-Request-Id", "trace-abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-abc-123");
    let response = app.upload(&token, "jpg", content(10, 40)).await;
    let generated = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(uuid::Uuid::parse_str(&generated).is_ok(), "{generated}");
    // A hostile value is replaced, not echoed.
    let response = app
        .request(Method::GET, "/v1/media/x", Some(&token))
        .header("X-Request-Id", "a b\"<script>")
        .send()
        .await
        .unwrap();
    let id = response.headers()["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
}

async fn repeated_request_id_uses_the_first_sane_one(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let token = app.token("acct");
    // Load balancers append their own id; a repeated header is not an error.
    let response = app
        .request(Method::GET, "/v1/media/x", Some(&token))
        .header("X-Request-Id", "a b\"<script>")
        .header("X-Request-Id", "lb-trace-1")
        .header("X-Request-Id", "client-trace-2")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "lb-trace-1");
    assert_error(response, 404, 1006).await;
    let response = app
        .request(Method::GET, "/v1/media/x", Some(&token))
        .header("X-Request-Id", "first-1")
        .header("X-Request-Id", "second-2")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "first-1");
    // None sane: one is generated.
    let response = app
        .request(Method::GET, "/v1/media/x", Some(&token))
        .header("X-Request-Id", "")
        .header("X-Request-Id", "a b")
        .send()
        .await
        .unwrap();
    let id = response.headers()["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
}

async fn storage_down_is_503_and_nothing_is_stored(backend: Backend) {
    // Storage nobody can write to: a port nothing listens on (S3), a file where the
    // objects directory should be (local disk).
    let blocker = test_support::TempDir::new();
    let app = TestApp::spawn_with(backend, |s| match backend {
        Backend::Production => s.storage.s3.endpoint = Some("http://127.0.0.1:9".to_owned()),
        Backend::Embedded => {
            let objects = blocker.0.join("objects");
            std::fs::create_dir_all(&objects).unwrap();
            s.storage.url = format!("file://{}", objects.display());
        }
    })
    .await;
    if backend == Backend::Embedded {
        // Make the directory unwritable by replacing it with a file after start-up.
        let objects = blocker.0.join("objects");
        std::fs::remove_dir_all(&objects).unwrap();
        std::fs::write(&objects, b"not a directory").unwrap();
    }
    let token = app.token("acct");
    for size in [1000usize, 6 * 1024 * 1024] {
        let response = app.upload(&token, "jpg", content(size, 41)).await;
        assert!(response.headers().contains_key("retry-after"));
        assert_error(response, 503, 1011).await;
    }
    // No media became visible; a row may remain only as 'uploading', for the reaper.
    let ready = match app.state.metadata.pool() {
        media_node::metadata::Pool::Postgres(pool) => {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM media WHERE status = 'ready'")
                .fetch_one(pool)
                .await
                .unwrap()
        }
        media_node::metadata::Pool::Sqlite(pool) => {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM media WHERE status = 'ready'")
                .fetch_one(pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(ready, 0);
}

/// PostgreSQL going away under a running replica: uploads and downloads answer 503 with
/// `Retry-After`, and nothing reaches storage without a row. (The embedded SQLite backend
/// is a file inside the process; it has no network to lose.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_down_is_503_and_nothing_reaches_storage() {
    let services = Services::from_env();
    let database = test_support::create_database(&services).await;
    let (proxy, url) = TcpProxy::for_database(&database).await;
    let app = TestApp::spawn_with(Backend::Production, |s| {
        s.database.url = media_node::settings::Secret::new(url);
    })
    .await;
    let token = app.token("acct");
    let id = app.upload_ok(&token, "jpg", content(100, 42)).await;
    let objects_before = app.object_keys().await;

    proxy.cut().await;
    let response = app.upload(&token, "jpg", content(100, 43)).await;
    assert_eq!(response.headers()["retry-after"], "5");
    assert_error(response, 503, 1011).await;
    let response = app.get(&token, &id).await;
    assert_error(response, 503, 1011).await;
    assert_eq!(
        app.object_keys().await,
        objects_before,
        "no object without a row"
    );
    let ready = reqwest::get(format!("{}/readyz", app.admin_address))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
}

/// A statement blocked by a lock (another session holds the table) is cancelled by the
/// server's `statement_timeout`: 503 and `Retry-After`, not a hung request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_statement_is_503_not_a_hang() {
    let app = TestApp::spawn_with(Backend::Production, |s| {
        s.database.statement_timeout = std::time::Duration::from_secs(1);
    })
    .await;
    let token = app.token("acct");
    app.upload_ok(&token, "jpg", content(10, 1)).await;
    let mut locker = sqlx::PgConnection::connect(app.settings.database.url.expose())
        .await
        .unwrap();
    locker.execute("BEGIN").await.unwrap();
    locker
        .execute("LOCK TABLE media IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();

    let answer = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        app.upload(&token, "jpg", content(10, 2)),
    )
    .await
    .expect("the request hung behind the lock");
    assert_error(answer, 503, 1011).await;
    locker.execute("ROLLBACK").await.unwrap();
    assert_eq!(app.row_count().await, 1, "nothing of the refused upload");
}

/// A database link that dies silently in the middle of a statement (no reset, no answer):
/// the client-side bound on every call answers 503 instead of waiting forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_dead_database_link_is_503_not_a_hang() {
    let services = Services::from_env();
    let database = test_support::create_database(&services).await;
    let (proxy, url) = TcpProxy::for_database(&database).await;
    let app = TestApp::spawn_with(Backend::Production, |s| {
        s.database.url = media_node::settings::Secret::new(url);
        s.database.acquire_timeout = std::time::Duration::from_secs(1);
        s.database.statement_timeout = std::time::Duration::from_secs(2);
    })
    .await;
    let token = app.token("acct");
    app.upload_ok(&token, "jpg", content(10, 1)).await;

    // Hold the upload's first statement at the server, then kill the link under it.
    let mut locker = sqlx::PgConnection::connect(&database).await.unwrap();
    locker.execute("BEGIN").await.unwrap();
    locker
        .execute("LOCK TABLE media IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let upload = {
        let request = app
            .request(reqwest::Method::POST, "/v1/media", Some(&token))
            .header("X-Gr-File-Extension", "jpg")
            .body(content(10, 2));
        tokio::spawn(request.send())
    };
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    proxy.freeze();
    locker.execute("ROLLBACK").await.unwrap();

    let answer = tokio::time::timeout(std::time::Duration::from_secs(20), upload)
        .await
        .expect("the request hung on a dead link")
        .unwrap()
        .unwrap();
    assert_error(answer, 503, 1011).await;
}

/// Storage that refuses the service's configuration (a wrong secret key, a bucket that does
/// not exist) is a 500 that an operator must fix, logged and counted, not a 503 that clients
/// retry forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_refusing_the_configuration_is_500_and_counted() {
    type Adjust = fn(&mut media_node::settings::Settings);
    let cases: [(&str, Adjust); 2] = [
        ("wrong secret key", |s| {
            s.storage.s3.secret_access_key =
                Some(media_node::settings::Secret::new("not-the-secret-key"));
        }),
        ("missing bucket", |s| {
            s.storage.url = "s3://media-node-no-such-bucket/t".to_owned();
        }),
    ];
    for (case, adjust) in cases {
        let app = TestApp::spawn_with(Backend::Production, adjust).await;
        let counted = || {
            media_node::metrics::BACKEND_MISCONFIGURED
                .with_label_values(&["storage"])
                .get()
        };
        let before = counted();
        let response = app.upload(&app.token("acct"), "jpg", content(100, 1)).await;
        assert!(
            !response.headers().contains_key("retry-after"),
            "{case}: not worth a retry"
        );
        assert_error(response, 500, 1014).await;
        assert!(counted() > before, "{case}: counted");
        let text = app.metrics_text().await;
        assert!(
            text.contains("media_backend_misconfigured_total{backend=\"storage\"}"),
            "{case}: exported"
        );
    }
}
