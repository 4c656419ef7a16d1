//! Secrets mounted as files instead of set as values.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

use super::sections::*;

/// Secrets that may be mounted as files (Kubernetes Secrets) instead of set as values:
/// `MEDIA_NODE__AUTH__HS256_SECRET_FILE`, `MEDIA_NODE__DATABASE__URL_FILE`,
/// `MEDIA_NODE__DATABASE__PASSWORD_FILE`, `MEDIA_NODE__STORAGE__S3__ACCESS_KEY_ID_FILE`,
/// `MEDIA_NODE__STORAGE__S3__SECRET_ACCESS_KEY_FILE`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct SecretFiles {
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
    pub(super) fn apply(self, settings: &mut Settings) -> anyhow::Result<()> {
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
