//! The sections of the settings, as `config/default.toml` lays them out, with their
//! defaults and the derived values the rest of the service asks for.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use config::{Config, File, FileFormat};
use serde::{Deserialize, Deserializer};

pub(super) const DEFAULTS: &str = include_str!("../../config/default.toml");

/// A value that must never reach a log line: `Debug` and `Display` print a placeholder.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub server: ServerSettings,
    pub admin: AdminSettings,
    pub database: DatabaseSettings,
    pub storage: StorageSettings,
    pub auth: AuthSettings,
    pub media: MediaSettings,
    pub limits: LimitSettings,
    pub reaper: ReaperSettings,
    pub uploads: UploadSettings,
    pub log: LogSettings,
    /// `APP_ENV`, not read from the files: `production` turns development conveniences off.
    #[serde(skip)]
    pub environment: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    /// Where clients reach the API (`https://media.example.com`): signed links are made
    /// absolute with it; unset, they are relative.
    #[serde(default)]
    pub public_base_url: Option<String>,
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// After SIGTERM, how long the listener keeps accepting while readiness already says
    /// 503, so load balancers stop sending before connections are refused.
    #[serde(with = "humantime_serde")]
    pub drain_delay: Duration,
    /// HTTP worker threads; unset means one per CPU core.
    pub workers: Option<usize>,
    /// Time a client has to send a request's head once connected.
    #[serde(with = "humantime_serde")]
    pub request_header_timeout: Duration,
    /// How long an idle connection is kept open between requests.
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    /// Open connections of the public listener, for the whole replica; unset means as many
    /// as the file descriptor limit allows after a reserve for everything else.
    pub max_connections: Option<usize>,
    /// A connection whose client accepts no bytes of the answer for this long is closed
    /// (TCP_USER_TIMEOUT on Linux: unacknowledged data or a closed receive window).
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AdminSettings {
    pub host: String,
    pub port: u16,
}

#[derive(Clone, Deserialize)]
pub struct DatabaseSettings {
    /// May carry a password, so it is redacted in `Debug`.
    pub url: Secret,
    pub max_connections: u32,
    /// How long a call waits for a pooled connection.
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
    /// PostgreSQL `statement_timeout`; also bounds each call on the client side.
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// Whether `serve` and `reap` apply migrations at start-up. Unset: yes in development
    /// (zero setup), no in production, where only `media-node migrate` (the migration Job)
    /// changes the schema and the others check that it is new enough.
    #[serde(default)]
    pub migrate_on_start: Option<bool>,
}

impl fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &redact_url(self.url.expose()))
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("migrate_on_start", &self.migrate_on_start)
            .finish()
    }
}

/// The URL with any password replaced, for logs and `Debug`: the user-info password and
/// query parameters that carry one (`?password=`, libpq's `sslpassword=`).
pub fn redact_url(raw: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(raw) else {
        return "[unparseable url]".to_owned();
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("redacted"));
    }
    let secret_key = |key: &str| key.to_ascii_lowercase().contains("password");
    if parsed.query_pairs().any(|(key, _)| secret_key(&key)) {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(key, value)| {
                let value = if secret_key(&key) {
                    "redacted".to_owned()
                } else {
                    value.into_owned()
                };
                (key.into_owned(), value)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

fn default_newcomer_memory_share() -> f64 {
    0.125
}

fn default_max_waiting_uploads() -> u32 {
    128
}

fn default_signed_link_rate_per_second() -> u32 {
    5
}

fn default_signed_link_burst() -> u32 {
    10
}

fn default_parts_in_flight() -> usize {
    2
}

#[derive(Debug, Clone, Deserialize)]
pub struct StorageSettings {
    pub url: String,
    pub part_size_bytes: usize,
    /// Parts of one multipart upload sent at once while the next one fills; each holds a
    /// part's worth of the memory budget.
    #[serde(default = "default_parts_in_flight")]
    pub parts_in_flight: usize,
    /// Whole-request limit of control calls to object storage (put, part, complete,
    /// delete, head); streamed reads have none.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// A streamed read from object storage that delivers nothing for this long fails.
    #[serde(with = "humantime_serde")]
    pub read_idle_timeout: Duration,
    pub s3: S3Settings,
}

#[derive(Debug, Clone, Deserialize)]
pub struct S3Settings {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret>,
    pub allow_http: bool,
    /// Whether each request body sent to S3 is signed by its SHA-256 (SigV4), a second
    /// pass over every byte beside the upload's own hash. Off: bodies go as
    /// UNSIGNED-PAYLOAD, protected in transit by TLS (and media-node still hashes what it
    /// receives). Worth turning on only for plain HTTP (`allow_http`) across a network.
    #[serde(default)]
    pub sign_payload: bool,
    /// Whether an upload that declares a `Content-Length` larger than one part goes to S3
    /// as one PUT whose body is forwarded as it arrives (a small window of memory, no part
    /// buffers, one object write), instead of a multipart upload. Unset: on, unless
    /// `sign_payload` is (a body forwarded as it arrives cannot be signed by a hash known
    /// only at its end); `true` with `sign_payload` is refused. Multipart stays for bodies
    /// of unknown length (forms, chunked bodies). See `streams_puts`.
    #[serde(default)]
    pub streamed_put: Option<bool>,
    /// Longest pause of a body that is being forwarded into a streamed PUT, after which the
    /// client is answered 408 and nothing is kept. Below S3's own limit for a request body
    /// that stops moving (AWS ends it with `RequestTimeout` after about 20 s), so that a
    /// pausing client gets its 408 before S3 cuts the PUT off (a 503). The shorter of this
    /// and `limits.body_idle_timeout` applies.
    #[serde(
        with = "humantime_serde",
        default = "default_streamed_put_idle_timeout"
    )]
    pub streamed_put_idle_timeout: Duration,
}

fn default_streamed_put_idle_timeout() -> Duration {
    Duration::from_secs(15)
}

impl S3Settings {
    /// Whether bodies of declared length go to S3 as one streamed PUT (`streamed_put`).
    pub fn streams_puts(&self) -> bool {
        self.streamed_put.unwrap_or(!self.sign_payload)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    pub hs256_secret: Option<Secret>,
    /// PEM public keys; each key's id (matched against a token's `kid`) is its file name
    /// without extension. A list in a file, or a comma-separated string in an environment
    /// variable.
    #[serde(deserialize_with = "paths_from_list_or_string")]
    pub public_key_files: Vec<PathBuf>,
    /// How often the key files are re-read; a changed file replaces its key.
    #[serde(with = "humantime_serde")]
    pub key_files_poll: Duration,
    /// The identity provider's JWKS (`https://…/jwks.json`), if its keys are to be used.
    pub jwks_url: Option<String>,
    /// How often the JWKS is fetched again.
    #[serde(with = "humantime_serde")]
    pub jwks_refresh: Duration,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    pub generated_secret_file: PathBuf,
    /// Signs the download links of `/info` (HMAC-SHA256); the same on every replica.
    #[serde(default)]
    pub url_signing_secret: Option<Secret>,
    /// The key before the last rotation: links it signed stay valid until they expire.
    #[serde(default)]
    pub url_signing_secret_previous: Option<Secret>,
    /// How long a signed download link is valid.
    #[serde(with = "humantime_serde", default = "default_signed_url_ttl")]
    pub signed_url_ttl: Duration,
}

fn default_signed_url_ttl() -> Duration {
    Duration::from_secs(300)
}

#[derive(Debug, Clone, Deserialize)]
pub struct MediaSettings {
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Whether an upload's first bytes are checked against its extension.
    #[serde(default)]
    pub verify_content: crate::domain::content_check::VerifyContent,
    /// Per-type rules of a messaging platform (`none` or `whatsapp`).
    #[serde(default)]
    pub profile: crate::domain::profile::Profile,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LimitSettings {
    pub max_upload_bytes: u64,
    /// Longest wait for the next bytes of an upload's body before it is answered 408.
    #[serde(with = "humantime_serde")]
    pub body_idle_timeout: Duration,
    /// Lowest average body rate after the grace period (0 turns it off).
    pub min_body_rate_bytes_per_sec: u64,
    #[serde(with = "humantime_serde")]
    pub min_body_rate_grace: Duration,
    /// The recent stretch of waiting time the minimum body rate is judged over.
    #[serde(with = "humantime_serde")]
    pub min_body_rate_window: Duration,
    /// Bytes all uploads of the replica may hold in part buffers at once.
    pub upload_memory_budget_bytes: u64,
    /// How long an upload waits for room in the budget before it is answered 503.
    #[serde(with = "humantime_serde")]
    pub upload_memory_wait: Duration,
    /// The part of the budget one account may hold, in (0, 1].
    pub account_memory_share: f64,
    /// The part of the budget kept for accounts that hold none of it, in [0, 1): taken
    /// only when the rest is full, so that accounts holding the rest with slow uploads
    /// cannot make another wait.
    #[serde(default = "default_newcomer_memory_share")]
    pub newcomer_memory_share: f64,
    /// Uploads one account may run at once on a replica; more are answered 429 at once.
    pub max_uploads_per_account: u32,
    /// Uploads that may wait for room in the budget at once on a replica; one more that
    /// would wait is answered 503 at once. Each waiting upload holds what its client has
    /// sent in the HTTP layer's buffers, outside the budget.
    #[serde(default = "default_max_waiting_uploads")]
    pub max_waiting_uploads: u32,
    /// Requests a second one account may make on a replica; unset turns the limit off.
    pub account_requests_per_second: Option<u32>,
    /// Requests an account may make at once above the rate; unset: one second's worth.
    pub account_request_burst: Option<u32>,
    /// Requests a second one signed download link may make on a replica (0 turns the
    /// limit off). A link's downloads also count against its owner's request rate.
    #[serde(default = "default_signed_link_rate_per_second")]
    pub signed_link_rate_per_second: u32,
    /// Requests one signed link may make at once above its rate.
    #[serde(default = "default_signed_link_burst")]
    pub signed_link_burst: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ReaperSettings {
    /// Whether `serve` runs the reaper (a `reap --once` CronJob can take over instead).
    pub enabled: bool,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    pub batch_size: u32,
    /// An upper bound on how long a live upload goes between heartbeats: the heartbeat is
    /// at most a quarter of it, whatever `heartbeat_interval` says.
    #[serde(with = "humantime_serde")]
    pub stale_upload_after: Duration,
    /// How often a live upload refreshes the heartbeat on its row; one that missed three
    /// in a row is dead (`ReaperSettings::upload_dead_after`).
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// How long a replica holds a claimed batch; longer than a batch ever takes.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
}

/// Resumable uploads (tus 1.0 and the IETF draft).
#[derive(Debug, Clone, Deserialize)]
pub struct UploadSettings {
    /// How long a paused upload is kept after its last byte.
    #[serde(with = "humantime_serde")]
    pub incomplete_expiry: Duration,
    /// Incomplete uploads one account may have at once; one more is answered 429.
    pub max_incomplete_per_account: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    /// `info`, `debug`, ... or a full `tracing` filter; `RUST_LOG` overrides it.
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

impl Settings {
    pub fn is_production(&self) -> bool {
        self.environment == "production"
    }

    /// The embedded defaults alone (`config/default.toml`), before any other layer.
    pub(crate) fn embedded_defaults() -> anyhow::Result<Self> {
        Ok(Config::builder()
            .add_source(File::from_str(DEFAULTS, FileFormat::Toml))
            .build()?
            .try_deserialize()?)
    }

    /// Whether `serve` and `reap` migrate at start-up (see `DatabaseSettings`).
    pub fn migrate_on_start(&self) -> bool {
        self.database
            .migrate_on_start
            .unwrap_or(!self.is_production())
    }
}

impl ReaperSettings {
    /// How often a live upload refreshes the heartbeat on its row: `heartbeat_interval`,
    /// at most a quarter of `stale_upload_after`.
    pub fn upload_heartbeat(&self) -> Duration {
        self.heartbeat_interval.min(self.stale_upload_after / 4)
    }

    /// An upload whose heartbeat is older than this is dead: it missed three beats in a
    /// row. Its `Idempotency-Key` is free again, it may no longer commit, and the reaper
    /// removes it.
    pub fn upload_dead_after(&self) -> Duration {
        self.upload_heartbeat() * DEAD_AFTER_MISSED_BEATS
    }
}

/// Heartbeats an upload may miss in a row before it is dead.
pub const DEAD_AFTER_MISSED_BEATS: u32 = 3;

/// The smallest `reaper.stale_upload_after`: below it, heartbeats would flood the database.
pub const MIN_STALE_UPLOAD_AFTER: Duration = Duration::from_secs(4);

/// The range of `reaper.heartbeat_interval`: below it, heartbeats would flood the
/// database; above it, a crashed upload would hold its key too long.
pub const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
pub const MAX_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(300);

/// `public_key_files` as a TOML list or as one comma-separated string (the environment).
fn paths_from_list_or_string<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<PathBuf>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrString {
        List(Vec<PathBuf>),
        String(String),
    }
    Ok(match ListOrString::deserialize(deserializer)? {
        ListOrString::List(paths) => paths,
        ListOrString::String(joined) => joined
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect(),
    })
}
