//! Typed configuration: embedded `config/default.toml`, then `config/<APP_ENV>.toml`, then
//! `--config FILE`, then `MEDIA_NODE__SECTION__KEY` environment variables.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{Config, Environment, File, FileFormat};
use serde::Deserialize;

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
}

impl fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &redact_url(self.url.expose()))
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

/// The URL with any password replaced, for logs and `Debug`.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("redacted"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "[unparseable url]".to_owned(),
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct StorageSettings {
    pub url: String,
    pub part_size_bytes: usize,
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
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    pub hs256_secret: Option<Secret>,
    pub public_key_files: Vec<PathBuf>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    pub generated_secret_file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MediaSettings {
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
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
}

#[derive(Debug, Clone, Deserialize)]
pub struct ReaperSettings {
    /// Whether `serve` runs the reaper (a `reap --once` CronJob can take over instead).
    pub enabled: bool,
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    pub batch_size: u32,
    #[serde(with = "humantime_serde")]
    pub stale_upload_after: Duration,
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
        let mut builder = Config::builder()
            .add_source(File::from_str(DEFAULTS, FileFormat::Toml))
            .add_source(File::from(config_dir.join(format!("{environment}.toml"))).required(false));
        if let Some(path) = extra_file {
            builder = builder.add_source(File::from(path).required(true));
        }
        let settings = builder
            .add_source(
                Environment::with_prefix("MEDIA_NODE")
                    .prefix_separator("__")
                    .separator("__")
                    .list_separator(",")
                    .with_list_parse_key("auth.public_key_files")
                    .try_parsing(true),
            )
            .build()?;
        let mut settings: Settings = settings.try_deserialize()?;
        settings.environment = environment;
        settings.validate()?;
        Ok(settings)
    }

    pub fn is_production(&self) -> bool {
        self.environment == "production"
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.limits.max_upload_bytes > 0,
            "limits.max_upload_bytes must be positive"
        );
        anyhow::ensure!(
            !self.limits.body_idle_timeout.is_zero(),
            "limits.body_idle_timeout must be positive"
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
            !self.media.retention.is_zero(),
            "media.retention must be positive"
        );
        anyhow::ensure!(
            self.reaper.batch_size > 0,
            "reaper.batch_size must be positive"
        );
        anyhow::ensure!(
            !self.reaper.interval.is_zero(),
            "reaper.interval must be positive"
        );
        anyhow::ensure!(
            !self.reaper.lease.is_zero(),
            "reaper.lease must be positive"
        );
        Ok(())
    }
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
        };
        let printed = format!("{db:?}");
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(printed.contains("db:5432"), "{printed}");
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
        assert_eq!(settings.server.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(settings.database.url.expose(), "sqlite://data/media.db");
        assert_eq!(settings.storage.url, "file://data/objects");
    }
}
