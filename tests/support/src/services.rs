//! The services the production pair talks to, a test's own directory, database and settings.

use std::path::PathBuf;

use media_node::settings::{Secret, Settings};
use sqlx::{Connection, Executor, PgConnection};
use uuid::Uuid;

use crate::{Backend, PART_SIZE};

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

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
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
