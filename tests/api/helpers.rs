//! Starts a real media-node on port 0 for one test, on one of the two backend pairs:
//! SQLite + local disk (the embedded default) or PostgreSQL + the S3 server started by
//! `scripts/s3-server`. Each test gets its own database and its own key prefix.

// Shared by several test binaries and the benchmarks; each uses a part.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use actix_web::web;
use media_node::auth::Authenticator;
use media_node::domain::MediaId;
use media_node::http::routes::AppState;
use media_node::settings::{Secret, Settings};
use media_node::startup::Application;
use reqwest::{Method, RequestBuilder, Response};
use serde_json::Value;
use sqlx::{Connection, Executor, PgConnection};
use uuid::Uuid;

pub const MAX_UPLOAD: u64 = 38_797_312;
pub const PART_SIZE: usize = 5 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite + local disk.
    Embedded,
    /// PostgreSQL + S3 (Garage).
    Production,
}

/// Declares a test body `async fn name(backend: Backend)` once and runs it on both pairs.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite_local_disk() {
                    super::$name($crate::helpers::Backend::Embedded).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres_s3() {
                    super::$name($crate::helpers::Backend::Production).await
                }
            }
        )+
    };
}

/// The S3 server and PostgreSQL the production pair talks to. Taken from the environment
/// (`scripts/test` exports it) or from the file `scripts/s3-server` writes.
pub struct Services {
    pub postgres_admin_url: String,
    pub s3_endpoint: String,
    pub s3_region: String,
    pub s3_bucket: String,
    pub s3_access_key_id: String,
    pub s3_secret_access_key: String,
}

impl Services {
    pub fn from_env() -> Self {
        let file = s3_env_file();
        let var = |name: &str| {
            std::env::var(name)
                .ok()
                .or_else(|| file.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
                .unwrap_or_else(|| {
                    panic!(
                        "{name} is not set and no S3 server state was found: run the tests \
                         with scripts/test, or start scripts/s3-server first"
                    )
                })
        };
        Self {
            postgres_admin_url: std::env::var("MEDIA_NODE_TEST_DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned()),
            s3_endpoint: var("MEDIA_NODE_TEST_S3_ENDPOINT"),
            s3_region: var("MEDIA_NODE_TEST_S3_REGION"),
            s3_bucket: var("MEDIA_NODE_TEST_S3_BUCKET"),
            s3_access_key_id: var("MEDIA_NODE_TEST_S3_ACCESS_KEY_ID"),
            s3_secret_access_key: var("MEDIA_NODE_TEST_S3_SECRET_ACCESS_KEY"),
        }
    }
}

fn s3_env_file() -> Vec<(String, String)> {
    let dir = std::env::var("MEDIA_NODE_S3_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/media-node/garage-run")
        });
    std::fs::read_to_string(dir.join("s3.env"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let line = line.trim().strip_prefix("export ").unwrap_or(line.trim());
            let (k, v) = line.split_once('=')?;
            Some((k.to_owned(), v.trim_matches(['"', '\'']).to_owned()))
        })
        .collect()
}

/// A directory removed when the test ends.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("media-node-test-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Settings for one test on `backend`: fresh database, fresh prefix, random secret.
pub async fn test_settings(backend: Backend, dir: &TempDir) -> Settings {
    let mut settings = Settings::load(std::path::Path::new("config"), None).unwrap();
    settings.server.host = "127.0.0.1".into();
    settings.server.port = 0;
    settings.server.workers = Some(2);
    settings.admin.host = "127.0.0.1".into();
    settings.admin.port = 0;
    settings.storage.part_size_bytes = PART_SIZE;
    settings.auth.hs256_secret = Some(Secret::new(
        hex::encode(Uuid::new_v4().as_bytes()).repeat(2),
    ));
    settings.auth.generated_secret_file = dir.0.join("jwt-secret");
    settings.auth.url_signing_secret = Some(Secret::new(
        hex::encode(Uuid::new_v4().as_bytes()).repeat(2),
    ));
    match backend {
        Backend::Embedded => {
            settings.database.url =
                Secret::new(format!("sqlite://{}", dir.0.join("media.db").display()));
            settings.storage.url = format!("file://{}", dir.0.join("objects").display());
        }
        Backend::Production => {
            let services = Services::from_env();
            settings.database.url = Secret::new(create_database(&services).await);
            settings.database.max_connections = 5;
            settings.storage.url = format!("s3://{}/t-{}", services.s3_bucket, Uuid::new_v4());
            settings.storage.s3.endpoint = Some(services.s3_endpoint);
            settings.storage.s3.region = Some(services.s3_region);
            settings.storage.s3.access_key_id = Some(services.s3_access_key_id);
            settings.storage.s3.secret_access_key =
                Some(Secret::new(services.s3_secret_access_key));
            settings.storage.s3.allow_http = true;
        }
    }
    settings
}

/// A fresh, empty PostgreSQL database; its name says it belongs to the tests, so
/// `scripts/test` can drop leftovers of earlier runs.
pub async fn create_database(services: &Services) -> String {
    let name = format!("media_node_test_{}", Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&services.postgres_admin_url)
        .await
        .expect("PostgreSQL must be running: scripts/postgres start");
    admin
        .execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
        .await
        .unwrap();
    let mut url = url::Url::parse(&services.postgres_admin_url).unwrap();
    url.set_path(&name);
    url.to_string()
}

pub struct TestApp {
    pub address: String,
    pub admin_address: String,
    pub client: reqwest::Client,
    pub state: web::Data<AppState>,
    pub settings: Settings,
    pub auth: Authenticator,
    pub metrics: media_node::metrics::Metrics,
    _dir: TempDir,
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, |_| {}).await
    }

    /// Starts the application after `adjust` had its say over the settings.
    pub async fn spawn_with(backend: Backend, adjust: impl FnOnce(&mut Settings)) -> Self {
        let dir = TempDir::new();
        let mut settings = test_settings(backend, &dir).await;
        adjust(&mut settings);
        let app = Application::build(&settings)
            .await
            .expect("application starts");
        let address = format!("http://127.0.0.1:{}", app.port());
        let admin_address = format!("http://127.0.0.1:{}", app.admin_port());
        let state = app.state();
        let metrics = app.metrics();
        tokio::spawn(app.run_until_stopped());
        let auth = Authenticator::from_settings(&settings.auth, false).unwrap();
        Self {
            address,
            admin_address,
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            state,
            settings,
            auth,
            metrics,
            _dir: dir,
        }
    }

    pub fn port(&self) -> u16 {
        self.address.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// A token for `sub` with every scope.
    pub fn token(&self, sub: &str) -> String {
        self.auth.mint(sub, Duration::from_secs(600), None).unwrap()
    }

    pub fn token_with_scope(&self, sub: &str, scope: &str) -> String {
        self.auth
            .mint(sub, Duration::from_secs(600), Some(scope))
            .unwrap()
    }

    pub fn request(&self, method: Method, path: &str, token: Option<&str>) -> RequestBuilder {
        let builder = self
            .client
            .request(method, format!("{}{}", self.address, path));
        match token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    pub async fn upload(&self, token: &str, extension: &str, body: Vec<u8>) -> Response {
        self.request(Method::POST, "/v1/media", Some(token))
            .header("X-Gr-File-Extension", extension)
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// Uploads and returns the new id, asserting a 201.
    pub async fn upload_ok(&self, token: &str, extension: &str, body: Vec<u8>) -> String {
        let response = self.upload(token, extension, body).await;
        assert_eq!(response.status(), 201, "{:?}", response.text().await);
        let json: Value = response.json().await.unwrap();
        json["media"][0]["id"].as_str().unwrap().to_owned()
    }

    pub async fn get(&self, token: &str, id: &str) -> Response {
        self.request(Method::GET, &format!("/v1/media/{id}"), Some(token))
            .send()
            .await
            .unwrap()
    }

    /// `GET /v1/media/{id}` with one extra header (`Range`, `If-None-Match`, ...).
    pub async fn get_with(
        &self,
        token: &str,
        id: &str,
        header: &str,
        value: impl AsRef<str>,
    ) -> Response {
        self.request(Method::GET, &format!("/v1/media/{id}"), Some(token))
            .header(header, value.as_ref())
            .send()
            .await
            .unwrap()
    }

    pub async fn delete(&self, token: &str, id: &str) -> Response {
        self.request(Method::DELETE, &format!("/v1/media/{id}"), Some(token))
            .send()
            .await
            .unwrap()
    }

    pub async fn row_count(&self) -> u64 {
        self.state.metadata.count().await.unwrap()
    }

    /// Every object. On local disk, every file under the storage root, read from the
    /// directory itself: the store's listing skips the `<id>#n` staging files of unfinished
    /// multipart uploads, and hidden files, which are leftovers all the same.
    pub async fn object_keys(&self) -> Vec<String> {
        match self.settings.storage.url.strip_prefix("file://") {
            Some(root) => files_under(std::path::Path::new(root)),
            None => self.state.storage.object_keys().await.unwrap(),
        }
    }

    pub async fn pending_multipart_uploads(&self) -> usize {
        self.state
            .storage
            .all_pending_uploads()
            .await
            .unwrap()
            .len()
    }

    /// Whether there is no row, no object and no unfinished multipart upload.
    pub async fn is_empty(&self) -> bool {
        self.row_count().await == 0
            && self.object_keys().await.is_empty()
            && self.pending_multipart_uploads().await == 0
    }

    /// Waits (bounded) until nothing is stored; cleanup after a cancelled upload runs in the
    /// background.
    pub async fn assert_eventually_empty(&self) {
        for _ in 0..100 {
            if self.is_empty().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "left behind: {} rows, objects {:?}, {} multipart uploads",
            self.row_count().await,
            self.object_keys().await,
            self.pending_multipart_uploads().await
        );
    }

    /// Waits (bounded) until exactly `n` rows are left, then asserts that they are all
    /// that is stored: `n` objects and no unfinished multipart upload.
    pub async fn assert_eventually_holds(&self, n: u64) {
        for _ in 0..100 {
            if self.row_count().await == n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(self.row_count().await, n, "rows");
        assert_eq!(self.object_keys().await.len() as u64, n, "objects");
        assert_eq!(
            self.pending_multipart_uploads().await,
            0,
            "multipart uploads"
        );
    }

    /// `n` ready media that expired a minute ago, each with its object, written behind the
    /// API for speed.
    pub async fn seed_expired(&self, n: usize) -> Vec<MediaId> {
        seed_expired(&self.state.metadata, &self.state.storage, n).await
    }

    /// A reaper over this application's backends, for tests that run passes themselves.
    pub fn reaper(&self) -> media_node::jobs::reaper::Reaper {
        media_node::jobs::reaper::Reaper::new(
            self.state.metadata.clone(),
            self.state.storage.clone(),
            self.settings.reaper.clone(),
            self.metrics.reaper.clone(),
        )
    }

    pub async fn object_exists(&self, id: &str) -> bool {
        self.state
            .storage
            .exists(MediaId::parse(id).unwrap())
            .await
            .unwrap()
    }
}

/// An answer read from the raw socket by `TestApp::raw_request`.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// The header fields as sent, names in lower case.
    pub headers: Vec<(String, String)>,
    /// Every byte the server sent after the blank line that ends the header block.
    pub after_head: Vec<u8>,
}

impl RawResponse {
    /// The value of the one field `name` (lower case); panics when it is repeated.
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut values = self.headers.iter().filter(|(n, _)| n == name);
        let value = values.next().map(|(_, v)| v.as_str());
        assert!(values.next().is_none(), "{name} repeated: {self:?}");
        value
    }
}

impl TestApp {
    /// `method path` on a fresh connection with `Connection: close`, reading everything the
    /// server writes until it closes the connection. For checks that an answer has no body,
    /// which an HTTP client cannot make: it reads only what the framing announces, and
    /// nothing of a HEAD or 304 answer.
    pub async fn raw_request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
    ) -> RawResponse {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut head =
            format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
        if let Some(token) = token {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port()))
            .await
            .unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
        let text = String::from_utf8_lossy(&answer).into_owned();
        assert!(
            matches!(closed, Ok(Ok(_))),
            "the server did not close the connection after its answer ({closed:?}): {text:?}"
        );
        let end = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no complete header block: {text:?}"));
        let block = String::from_utf8(answer[..end].to_vec()).unwrap();
        let mut lines = block.split("\r\n");
        let status_line = lines.next().unwrap();
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers = lines
            .map(|line| {
                let (name, value) = line
                    .split_once(':')
                    .unwrap_or_else(|| panic!("bad header line {line:?}"));
                (name.trim().to_ascii_lowercase(), value.trim().to_owned())
            })
            .collect();
        RawResponse {
            status,
            headers,
            after_head: answer[end + 4..].to_vec(),
        }
    }
}

/// Every file under `root` (any kind but a directory, hidden ones included), as sorted
/// paths relative to it with `/` between components. A root that does not exist is empty.
pub fn files_under(root: &std::path::Path) -> Vec<String> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => panic!("reading {}: {err}", dir.display()),
        };
        for entry in entries {
            let entry = entry.unwrap();
            let path = entry.path();
            // A directory may vanish between listing and looking (clean-ups run meanwhile).
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => dirs.push(path),
                Ok(_) => {
                    let relative = path.strip_prefix(root).unwrap();
                    let parts: Vec<_> = relative
                        .components()
                        .map(|c| c.as_os_str().to_string_lossy().into_owned())
                        .collect();
                    files.push(parts.join("/"));
                }
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => panic!("reading {}: {err}", path.display()),
            }
        }
    }
    files.sort();
    files
}

/// Deterministic, non-repeating test content.
pub fn content(len: usize, seed: u8) -> Vec<u8> {
    let mut state = u32::from(seed).wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

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

/// A TCP proxy in front of a real server, to take that server "off the network" mid-test:
/// `cut` refuses and drops connections (an outage the client notices at once), `freeze`
/// keeps every connection open and silent (a dead link the client can only time out on).
pub struct TcpProxy {
    pub port: u16,
    cut: std::sync::Arc<tokio::sync::Notify>,
    frozen: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(target: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = std::sync::Arc::new(tokio::sync::Notify::new());
        let cut_signal = cut.clone();
        let (frozen, frozen_signal) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    _ = cut_signal.notified() => break,
                    accepted = listener.accept() => {
                        let Ok((mut inbound, _)) = accepted else { break };
                        let mut frozen = frozen_signal.clone();
                        connections.spawn(async move {
                            let frozen_now = *frozen.borrow();
                            if frozen_now {
                                // Accepted, and never a byte either way.
                                std::future::pending::<()>().await;
                            }
                            let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await
                            else {
                                return;
                            };
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                                _ = async { frozen.wait_for(|f| *f).await.map(|_| ()) } => {
                                    // Both sockets stay open, and silent.
                                    std::future::pending::<()>().await;
                                }
                            }
                        });
                    }
                }
            }
            // Dropping the listener and every connection: the server is gone.
            connections.abort_all();
        });
        Self {
            port,
            cut,
            frozen,
            task,
        }
    }

    /// A proxy in front of the PostgreSQL server of `database_url`, and that URL with the
    /// proxy in its place.
    pub async fn for_database(database_url: &str) -> (Self, String) {
        let mut url = url::Url::parse(database_url).unwrap();
        let target = (
            url.host_str().unwrap().to_owned(),
            url.port().unwrap_or(5432),
        );
        let target = tokio::net::lookup_host(target)
            .await
            .unwrap()
            .next()
            .unwrap();
        let proxy = Self::start(target).await;
        url.set_port(Some(proxy.port)).unwrap();
        (proxy, url.to_string())
    }

    /// A proxy in front of the S3 server at `endpoint`, and the endpoint through it.
    pub async fn for_s3(endpoint: &str) -> (Self, String) {
        let endpoint = url::Url::parse(endpoint).unwrap();
        let target = tokio::net::lookup_host((
            endpoint.host_str().unwrap().to_owned(),
            endpoint.port_or_known_default().unwrap(),
        ))
        .await
        .unwrap()
        .next()
        .unwrap();
        let proxy = Self::start(target).await;
        let proxied = format!("http://127.0.0.1:{}", proxy.port);
        (proxy, proxied)
    }

    /// Refuses new connections and drops the open ones.
    pub async fn cut(self) {
        self.cut.notify_one();
        let _ = self.task.await;
    }

    /// Stops forwarding without closing anything: a link that died silently.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }
}

/// `n` ready media that expired a minute ago, each with a small object.
pub async fn seed_expired(
    metadata: &media_node::metadata::Metadata,
    storage: &media_node::storage::Storage,
    n: usize,
) -> Vec<MediaId> {
    let expires_at = chrono::Utc::now() - chrono::Duration::minutes(1);
    seed(metadata, storage, n, expires_at).await
}

/// `n` ready media expiring at `expires_at`, each with a small object, written behind the
/// API (32 at a time) for speed.
pub async fn seed(
    metadata: &media_node::metadata::Metadata,
    storage: &media_node::storage::Storage,
    n: usize,
    expires_at: chrono::DateTime<chrono::Utc>,
) -> Vec<MediaId> {
    use futures_util::StreamExt;
    use object_store::ObjectStoreExt;
    let created_at = expires_at - chrono::Duration::hours(24);
    futures_util::stream::iter(0..n)
        .map(|i| async move {
            let id = MediaId::new_random();
            metadata
                .insert_uploading(&media_node::metadata::NewMedia {
                    id,
                    owner: media_node::domain::AccountId::parse("seed").unwrap(),
                    extension: media_node::domain::FileExtension::parse("bin").unwrap(),
                    created_at,
                    expires_at,
                })
                .await
                .unwrap();
            storage
                .store()
                .put(&storage.key(id), format!("object {i}").into_bytes().into())
                .await
                .unwrap();
            metadata
                .mark_ready(id, 8, "00", chrono::DateTime::UNIX_EPOCH)
                .await
                .unwrap();
            id
        })
        .buffer_unordered(32)
        .collect()
        .await
}

/// The `media-node` binary, run in `dir` with no `MEDIA_NODE__`, `AWS_`, `APP_ENV` or
/// `RUST_LOG` variables inherited from the test's environment.
pub fn media_node_command(dir: &std::path::Path) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_media-node"));
    command
        .current_dir(dir)
        .env_remove("APP_ENV")
        .env_remove("RUST_LOG");
    for (key, _) in std::env::vars() {
        if key.starts_with("MEDIA_NODE__") || key.starts_with("AWS_") {
            command.env_remove(key);
        }
    }
    command
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `media-node serve` process on free loopback ports, its output in a log file.
pub struct ServiceProcess {
    pub child: std::process::Child,
    pub port: u16,
    pub admin_port: u16,
    log: PathBuf,
}

impl ServiceProcess {
    pub fn start(dir: &std::path::Path, envs: &[(&str, String)]) -> Self {
        Self::start_on(dir, free_port(), free_port(), envs)
    }

    /// `start` on given ports: a replica started again where it was (a rollout's new pod
    /// behind the same endpoint). Each start logs to a file of its own.
    pub fn start_on(
        dir: &std::path::Path,
        port: u16,
        admin_port: u16,
        envs: &[(&str, String)],
    ) -> Self {
        static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = dir.join(format!("media-node-{port}-{n}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = media_node_command(dir)
            .env("MEDIA_NODE__SERVER__HOST", "127.0.0.1")
            .env("MEDIA_NODE__SERVER__PORT", port.to_string())
            .env("MEDIA_NODE__ADMIN__HOST", "127.0.0.1")
            .env("MEDIA_NODE__ADMIN__PORT", admin_port.to_string())
            .env("MEDIA_NODE__SERVER__WORKERS", "1")
            // Tests that exercise the drain set their own.
            .env("MEDIA_NODE__SERVER__DRAIN_DELAY", "100ms")
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Self {
            child,
            port,
            admin_port,
            log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn wait_ready(&mut self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let url = self.admin_url("/readyz");
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("media-node exited early: {status}\n{}", self.logs());
            }
            if let Ok(response) = reqwest::get(&url).await {
                if response.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("media-node did not become ready\n{}", self.logs());
    }

    /// The value of an unlabelled counter or gauge on `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(self.admin_url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        metric_value(&text, name).unwrap_or_else(|| panic!("{name} not exported"))
    }

    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let sent = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        assert!(sent.success());
    }

    /// Waits (bounded) for the process to exit; its status and logs.
    pub fn wait_exit(mut self, within: Duration) -> (std::process::ExitStatus, String) {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, self.logs());
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("no exit within {within:?}\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then the exit status and everything it logged.
    pub fn terminate(self) -> (std::process::ExitStatus, String) {
        self.signal("TERM");
        self.wait_exit(Duration::from_secs(40))
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

impl TestApp {
    pub async fn metrics_text(&self) -> String {
        reqwest::get(format!("{}/metrics", self.admin_address))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// The environment that makes a `media-node` process use the backends of `settings`.
pub fn process_env(settings: &Settings) -> Vec<(&'static str, String)> {
    let mut env = vec![
        (
            "MEDIA_NODE__DATABASE__URL",
            settings.database.url.expose().to_owned(),
        ),
        ("MEDIA_NODE__STORAGE__URL", settings.storage.url.clone()),
        (
            "MEDIA_NODE__STORAGE__PART_SIZE_BYTES",
            settings.storage.part_size_bytes.to_string(),
        ),
    ];
    if let Some(secret) = &settings.auth.hs256_secret {
        env.push(("MEDIA_NODE__AUTH__HS256_SECRET", secret.expose().to_owned()));
    }
    if let Some(secret) = &settings.auth.url_signing_secret {
        env.push((
            "MEDIA_NODE__AUTH__URL_SIGNING_SECRET",
            secret.expose().to_owned(),
        ));
    }
    let s3 = &settings.storage.s3;
    if let Some(endpoint) = &s3.endpoint {
        env.push(("MEDIA_NODE__STORAGE__S3__ENDPOINT", endpoint.clone()));
        env.push((
            "MEDIA_NODE__STORAGE__S3__ALLOW_HTTP",
            s3.allow_http.to_string(),
        ));
    }
    if s3.streamed_put {
        env.push(("MEDIA_NODE__STORAGE__S3__STREAMED_PUT", "true".to_owned()));
    }
    if let Some(region) = &s3.region {
        env.push(("MEDIA_NODE__STORAGE__S3__REGION", region.clone()));
    }
    if let Some(key) = &s3.access_key_id {
        env.push(("MEDIA_NODE__STORAGE__S3__ACCESS_KEY_ID", key.clone()));
    }
    if let Some(secret) = &s3.secret_access_key {
        env.push((
            "MEDIA_NODE__STORAGE__S3__SECRET_ACCESS_KEY",
            secret.expose().to_owned(),
        ));
    }
    env
}
