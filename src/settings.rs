//! Typed configuration: embedded `config/default.toml`, then `config/<APP_ENV>.toml`, then
//! `--config FILE`, then `MEDIA_NODE__SECTION__KEY` environment variables.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use config::{Config, Environment, File, FileFormat};
use serde::{Deserialize, Deserializer};

const DEFAULTS: &str = include_str!("../config/default.toml");

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

impl DatabaseSettings {
    pub fn pool_options(&self) -> crate::metadata::PoolOptions {
        crate::metadata::PoolOptions {
            max_connections: self.max_connections,
            acquire_timeout: self.acquire_timeout,
            statement_timeout: self.statement_timeout,
        }
    }
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
    /// buffers), instead of a multipart upload. Off by default: a multipart upload retries
    /// a failed part, tolerates a client that pauses longer than S3's own idle limit, and
    /// holds an S3 connection only while a part is sent. Needs `sign_payload = false`.
    #[serde(default)]
    pub streamed_put: bool,
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
    pub verify_content: crate::content_check::VerifyContent,
    /// Per-type rules of a messaging platform (`none` or `whatsapp`).
    #[serde(default)]
    pub profile: crate::profile::Profile,
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

impl LimitSettings {
    pub fn limits_config(&self) -> crate::limits::LimitsConfig {
        crate::limits::LimitsConfig {
            memory_budget_bytes: self.upload_memory_budget_bytes,
            account_memory_share: self.account_memory_share,
            newcomer_memory_share: self.newcomer_memory_share,
            memory_wait: self.upload_memory_wait,
            max_uploads_per_account: self.max_uploads_per_account,
            max_waiting_uploads: self.max_waiting_uploads,
            account_requests_per_second: self.account_requests_per_second,
            account_request_burst: self.account_request_burst,
        }
    }
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
    /// Loads the layers described in the module docs. `config_dir` holds `<APP_ENV>.toml`.
    pub fn load(config_dir: &Path, extra_file: Option<&Path>) -> anyhow::Result<Self> {
        let environment = std::env::var("APP_ENV").unwrap_or_else(|_| "development".to_owned());
        Self::load_from(config_dir, extra_file, environment, None)
    }

    /// `load`, with the `MEDIA_NODE__` variables taken from `vars` instead of the process
    /// environment when given (tests).
    pub fn load_from(
        config_dir: &Path,
        extra_file: Option<&Path>,
        environment: String,
        vars: Option<config::Map<String, String>>,
    ) -> anyhow::Result<Self> {
        let mut builder = Config::builder()
            .add_source(File::from_str(DEFAULTS, FileFormat::Toml))
            .add_source(File::from(config_dir.join(format!("{environment}.toml"))).required(false));
        if let Some(path) = extra_file {
            builder = builder.add_source(File::from(path).required(true));
        }
        // Values from the environment stay strings until a typed field asks for a number or
        // a flag: guessing types would turn a numeric-looking secret into a number (and a
        // long one into a rounded float).
        let layered = builder
            .add_source(
                Environment::with_prefix("MEDIA_NODE")
                    .prefix_separator("__")
                    .separator("__")
                    .source(vars),
            )
            .build()?;
        let mut settings: Settings = layered.clone().try_deserialize()?;
        settings.environment = environment;
        let files: SecretFiles = layered.try_deserialize()?;
        files.apply(&mut settings)?;
        settings.validate()?;
        Ok(settings)
    }

    pub fn is_production(&self) -> bool {
        self.environment == "production"
    }

    fn validate(&self) -> anyhow::Result<()> {
        self.validate_durations()?;
        anyhow::ensure!(
            self.limits.max_upload_bytes > 0,
            "limits.max_upload_bytes must be positive"
        );
        anyhow::ensure!(
            !self.limits.body_idle_timeout.is_zero(),
            "limits.body_idle_timeout must be positive"
        );
        anyhow::ensure!(
            self.limits.min_body_rate_bytes_per_sec == 0
                || self.limits.min_body_rate_window >= Duration::from_secs(1),
            "limits.min_body_rate_window must be at least 1s"
        );
        anyhow::ensure!(
            !self.server.request_header_timeout.is_zero(),
            "server.request_header_timeout must be positive"
        );
        anyhow::ensure!(
            !self.storage.request_timeout.is_zero() && !self.storage.read_idle_timeout.is_zero(),
            "storage.request_timeout and storage.read_idle_timeout must be positive"
        );
        anyhow::ensure!(
            !self.server.send_timeout.is_zero(),
            "server.send_timeout must be positive"
        );
        anyhow::ensure!(
            self.server.max_connections != Some(0),
            "server.max_connections must be positive"
        );
        anyhow::ensure!(
            self.storage.part_size_bytes >= 5 * 1024 * 1024,
            "storage.part_size_bytes must be at least 5 MiB (the S3 minimum part size)"
        );
        anyhow::ensure!(
            !(self.storage.s3.streamed_put && self.storage.s3.sign_payload),
            "storage.s3.streamed_put needs storage.s3.sign_payload = false: a body forwarded \
             as it arrives cannot be signed by a hash known only at its end"
        );
        anyhow::ensure!(
            (1..=16).contains(&self.storage.parts_in_flight),
            "storage.parts_in_flight must be between 1 and 16"
        );
        anyhow::ensure!(
            self.reaper.batch_size > 0,
            "reaper.batch_size must be positive"
        );
        for secret in [
            &self.auth.url_signing_secret,
            &self.auth.url_signing_secret_previous,
        ]
        .into_iter()
        .flatten()
        {
            anyhow::ensure!(
                secret.expose().len() >= 32,
                "auth.url_signing_secret must be at least 32 bytes long"
            );
        }
        if let Some(base) = &self.server.public_base_url {
            let parsed = url::Url::parse(base)
                .map_err(|e| anyhow::anyhow!("server.public_base_url {base:?}: {e}"))?;
            anyhow::ensure!(
                matches!(parsed.scheme(), "http" | "https"),
                "server.public_base_url must be an http(s) URL"
            );
        }
        self.validate_upload_limits()
    }

    /// The memory budget must hold a whole part for one upload of one account (else an
    /// upload could never start its next part), and fit the budget's KiB counter.
    fn validate_upload_limits(&self) -> anyhow::Result<()> {
        let limits = &self.limits;
        let part = self.storage.part_size_bytes as u64;
        anyhow::ensure!(
            limits.upload_memory_budget_bytes <= u64::from(u32::MAX) * 1024,
            "limits.upload_memory_budget_bytes must be at most 4 TiB"
        );
        anyhow::ensure!(
            limits.account_memory_share > 0.0 && limits.account_memory_share <= 1.0,
            "limits.account_memory_share must be above 0 and at most 1"
        );
        let share =
            (limits.upload_memory_budget_bytes as f64 * limits.account_memory_share).floor() as u64;
        anyhow::ensure!(
            share >= part,
            "limits.upload_memory_budget_bytes × limits.account_memory_share ({share} bytes) \
             must hold at least one part (storage.part_size_bytes, {part} bytes)"
        );
        anyhow::ensure!(
            (0.0..1.0).contains(&limits.newcomer_memory_share),
            "limits.newcomer_memory_share must be at least 0 and below 1"
        );
        let open = (limits.upload_memory_budget_bytes as f64 * (1.0 - limits.newcomer_memory_share))
            .floor() as u64;
        anyhow::ensure!(
            open >= part,
            "limits.upload_memory_budget_bytes × (1 − limits.newcomer_memory_share) ({open} \
             bytes) must hold at least one part (storage.part_size_bytes, {part} bytes)"
        );
        anyhow::ensure!(
            limits.upload_memory_wait <= Duration::from_secs(3600),
            "limits.upload_memory_wait must be at most 1h"
        );
        anyhow::ensure!(
            limits.max_uploads_per_account > 0,
            "limits.max_uploads_per_account must be positive"
        );
        anyhow::ensure!(
            limits.account_requests_per_second != Some(0)
                && limits.account_request_burst != Some(0),
            "limits.account_requests_per_second and limits.account_request_burst must be \
             positive (leave them unset to turn the rate limit off)"
        );
        anyhow::ensure!(
            limits.signed_link_rate_per_second == 0 || limits.signed_link_burst > 0,
            "limits.signed_link_burst must be positive (set limits.signed_link_rate_per_second \
             to 0 to turn the per-link rate limit off)"
        );
        Ok(())
    }

    /// Durations that date arithmetic and the upload heartbeat rely on: each within a range
    /// that makes sense, so a typo is a clear start-up error instead of a panic or of live
    /// uploads being reaped.
    fn validate_durations(&self) -> anyhow::Result<()> {
        const SECOND: Duration = Duration::from_secs(1);
        const DAY: Duration = Duration::from_secs(24 * 3600);
        let checks = [
            ("media.retention", self.media.retention, SECOND, 366 * DAY),
            (
                "reaper.interval",
                self.reaper.interval,
                Duration::from_millis(10),
                DAY,
            ),
            (
                "reaper.stale_upload_after",
                self.reaper.stale_upload_after,
                MIN_STALE_UPLOAD_AFTER,
                7 * DAY,
            ),
            (
                "reaper.heartbeat_interval",
                self.reaper.heartbeat_interval,
                MIN_HEARTBEAT_INTERVAL,
                MAX_HEARTBEAT_INTERVAL,
            ),
            ("reaper.lease", self.reaper.lease, SECOND, DAY),
            (
                "server.drain_delay",
                self.server.drain_delay,
                Duration::ZERO,
                DAY,
            ),
            (
                "server.shutdown_timeout",
                self.server.shutdown_timeout,
                Duration::ZERO,
                DAY,
            ),
            ("auth.leeway", self.auth.leeway, Duration::ZERO, DAY),
            (
                "database.acquire_timeout",
                self.database.acquire_timeout,
                Duration::from_millis(1),
                DAY,
            ),
            (
                "database.statement_timeout",
                self.database.statement_timeout,
                Duration::from_millis(1),
                DAY,
            ),
        ];
        for (name, value, min, max) in checks {
            anyhow::ensure!(
                value >= min && value <= max,
                "{name} is {}: it must be between {} and {}",
                humantime::format_duration(value),
                humantime::format_duration(min),
                humantime::format_duration(max),
            );
        }
        Ok(())
    }

    /// For the commands that use the backends (`serve`, `migrate`, `reap`): in production
    /// they must be named, since the embedded development defaults (SQLite and files under
    /// ./data) would silently keep media on one pod's disk.
    pub fn check_backends(&self) -> anyhow::Result<()> {
        if !self.is_production() {
            return Ok(());
        }
        let defaults = Self::embedded_defaults()?;
        anyhow::ensure!(
            self.database.url != defaults.database.url,
            "APP_ENV=production needs a database: set MEDIA_NODE__DATABASE__URL \
             (postgres://...) or MEDIA_NODE__DATABASE__URL_FILE"
        );
        anyhow::ensure!(
            self.storage.url != defaults.storage.url,
            "APP_ENV=production needs object storage: set MEDIA_NODE__STORAGE__URL \
             (s3://bucket/prefix)"
        );
        anyhow::ensure!(
            !self.auth.key_files_poll.is_zero(),
            "auth.key_files_poll must be positive"
        );
        anyhow::ensure!(
            !self.auth.jwks_refresh.is_zero(),
            "auth.jwks_refresh must be positive"
        );
        Ok(())
    }

    fn embedded_defaults() -> anyhow::Result<Self> {
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

/// Secrets that may be mounted as files (Kubernetes Secrets) instead of set as values:
/// `MEDIA_NODE__AUTH__HS256_SECRET_FILE`, `MEDIA_NODE__DATABASE__URL_FILE`,
/// `MEDIA_NODE__DATABASE__PASSWORD_FILE`, `MEDIA_NODE__STORAGE__S3__ACCESS_KEY_ID_FILE`,
/// `MEDIA_NODE__STORAGE__S3__SECRET_ACCESS_KEY_FILE`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SecretFiles {
    auth: AuthSecretFiles,
    database: DatabaseSecretFiles,
    storage: StorageSecretFiles,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct AuthSecretFiles {
    hs256_secret_file: Option<PathBuf>,
    url_signing_secret_file: Option<PathBuf>,
    url_signing_secret_previous_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct DatabaseSecretFiles {
    url_file: Option<PathBuf>,
    /// Only the password, put into the URL (which then needs none of its own).
    password_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StorageSecretFiles {
    s3: S3SecretFiles,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct S3SecretFiles {
    access_key_id_file: Option<PathBuf>,
    secret_access_key_file: Option<PathBuf>,
}

impl SecretFiles {
    fn apply(self, settings: &mut Settings) -> anyhow::Result<()> {
        if let Some(path) = &self.auth.hs256_secret_file {
            settings.auth.hs256_secret = Some(read_secret_file(path, "auth.hs256_secret_file")?);
        }
        if let Some(path) = &self.auth.url_signing_secret_file {
            settings.auth.url_signing_secret =
                Some(read_secret_file(path, "auth.url_signing_secret_file")?);
        }
        if let Some(path) = &self.auth.url_signing_secret_previous_file {
            settings.auth.url_signing_secret_previous = Some(read_secret_file(
                path,
                "auth.url_signing_secret_previous_file",
            )?);
        }
        if let Some(path) = &self.database.url_file {
            settings.database.url = read_secret_file(path, "database.url_file")?;
        }
        if let Some(path) = &self.database.password_file {
            let password = read_secret_file(path, "database.password_file")?;
            let mut url = url::Url::parse(settings.database.url.expose())
                .context("database.password_file needs a database.url with a host")?;
            url.set_password(Some(password.expose()))
                .map_err(|()| anyhow::anyhow!("database.url cannot carry a password"))?;
            settings.database.url = Secret::new(url.to_string());
        }
        let s3 = &mut settings.storage.s3;
        if let Some(path) = &self.storage.s3.access_key_id_file {
            s3.access_key_id = Some(
                read_secret_file(path, "storage.s3.access_key_id_file")?
                    .expose()
                    .to_owned(),
            );
        }
        if let Some(path) = &self.storage.s3.secret_access_key_file {
            s3.secret_access_key =
                Some(read_secret_file(path, "storage.s3.secret_access_key_file")?);
        }
        Ok(())
    }
}

/// A secret from a file, without the trailing newline editors and `echo` add.
fn read_secret_file(path: &Path, key: &str) -> anyhow::Result<Secret> {
    let raw = std::fs::read_to_string(path)
        .with_context(|| format!("{key}: reading {}", path.display()))?;
    let value = raw.trim_end_matches(['\n', '\r']);
    anyhow::ensure!(!value.is_empty(), "{key}: {} is empty", path.display());
    Ok(Secret::new(value))
}

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

#[cfg(test)]
mod tests {
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
            crate::profile::Profile::None
        );
        let settings = load_with("development", &[("MEDIA_NODE__MEDIA__PROFILE", "whatsapp")]);
        assert_eq!(
            settings.unwrap().media.profile,
            crate::profile::Profile::Whatsapp
        );
        let err =
            load_with("development", &[("MEDIA_NODE__MEDIA__PROFILE", "telegram")]).unwrap_err();
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
    fn streamed_puts_need_unsigned_payloads() {
        let streamed = ("MEDIA_NODE__STORAGE__S3__STREAMED_PUT", "true");
        let err = load_with(
            "development",
            &[streamed, ("MEDIA_NODE__STORAGE__S3__SIGN_PAYLOAD", "true")],
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("streamed_put"), "{err:#}");
        let settings = load_with("development", &[streamed]).unwrap();
        assert!(settings.storage.s3.streamed_put);
        assert!(
            !load_with("development", &[])
                .unwrap()
                .storage
                .s3
                .streamed_put
        );
    }
}
