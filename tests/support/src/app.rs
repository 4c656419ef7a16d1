//! One media-node inside the test's process, and the requests a test sends it.

use std::time::Duration;

use actix_web::web;
use media_node::auth::Authenticator;
use media_node::domain::MediaId;
use media_node::http::routes::AppState;
use media_node::settings::Settings;
use media_node::startup::Application;
use reqwest::{Method, RequestBuilder, Response};
use serde_json::Value;

use crate::data::{files_under, seed_expired};
use crate::services::{test_settings, TempDir};
use crate::Backend;

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

    /// Moves the expiry of the row `id` to a minute ago, behind the API.
    pub async fn expire(&self, id: &str) {
        use media_node::metadata::Pool;
        let past = chrono::Utc::now() - chrono::Duration::minutes(1);
        let changed = match self.state.metadata.pool() {
            Pool::Postgres(pool) => sqlx::query("UPDATE media SET expires_at = $1 WHERE id = $2")
                .bind(past)
                .bind(uuid::Uuid::parse_str(id).unwrap())
                .execute(pool)
                .await
                .unwrap()
                .rows_affected(),
            Pool::Sqlite(pool) => sqlx::query("UPDATE media SET expires_at = ?1 WHERE id = ?2")
                .bind(past.timestamp_millis())
                .bind(id)
                .execute(pool)
                .await
                .unwrap()
                .rows_affected(),
        };
        assert_eq!(changed, 1);
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
