//! Typed configuration: embedded `config/default.toml`, then `config/<APP_ENV>.toml`, then
//! `--config FILE`, then `MEDIA_NODE__SECTION__KEY` environment variables.

use std::path::Path;

use config::{Config, Environment, File, FileFormat};

mod secret_files;
mod sections;
#[cfg(test)]
mod tests;
mod validate;

use secret_files::SecretFiles;
pub use sections::*;

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
}
