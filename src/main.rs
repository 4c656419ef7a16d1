//! The `media-node` binary: settings, logging, subcommand, run.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use media_node::auth::Authenticator;
use media_node::jobs::reaper::Reaper;
use media_node::metadata::Metadata;
use media_node::metrics::Metrics;
use media_node::settings::Settings;
use media_node::startup::logging;
use media_node::startup::Application;
use media_node::storage::Storage;

#[derive(Parser)]
#[command(
    name = "media-node",
    version,
    about = "Upload once, refer by id, kept 24 hours"
)]
struct Cli {
    /// A TOML file layered over config/default.toml and config/<APP_ENV>.toml.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where config/<APP_ENV>.toml is looked for.
    #[arg(long, global = true, value_name = "DIR", default_value = "config")]
    config_dir: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API and the admin endpoints (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Print a JWT signed with the configured HS256 secret (development and tests).
    Token {
        /// The account the token speaks for (the `sub` claim).
        #[arg(long)]
        sub: String,
        /// How long the token is valid, e.g. 1h, 30m, 7d.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Space-separated scopes, e.g. "media:read media:write", or "media:admin" for the
        /// purge on the admin listener; none means reading and writing (not media:admin).
        #[arg(long)]
        scope: Option<String>,
    },
    /// Remove all media of one account, rows and objects (also on the admin listener:
    /// POST /admin/accounts/{account}/purge, with a token of scope media:admin). Uploads of
    /// the account still streaming roll back at their commit.
    Purge {
        /// The account (a token's `sub`).
        #[arg(long)]
        account: String,
    },
    /// Remove expired media and crashed uploads, as the background reaper does.
    Reap {
        /// Run one full pass and exit (for a CronJob or an operator). Required: the
        /// continuous reaper runs inside `serve`.
        #[arg(long, required = true)]
        once: bool,
    },
}

fn main() {
    // Before the runtime starts its threads.
    media_node::startup::allocator::tune();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("starting the runtime");
    runtime.block_on(start());
}

async fn start() {
    let cli = Cli::parse();
    if let Err(err) = run(cli).await {
        // The whole cause chain, so a failed start says why.
        eprintln!("media-node: {err:#}");
        tracing::error!(error = format!("{err:#}"), "exiting");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings =
        Settings::load(&cli.config_dir, cli.config.as_deref()).context("loading configuration")?;
    let command = cli.command.unwrap_or(Command::Serve);
    logging::init(&settings.log, !matches!(command, Command::Serve));
    if !matches!(command, Command::Token { .. }) {
        settings.check_backends()?;
    }
    match command {
        Command::Serve => {
            let app = Application::build(&settings).await?;
            app.run_until_stopped().await
        }
        Command::Migrate => {
            let metadata = connect(&settings)?;
            metadata.migrate().await.context("applying migrations")?;
            tracing::info!(database = metadata.backend_name(), "migrations applied");
            Ok(())
        }
        Command::Reap { once: _ } => {
            let metadata = connect(&settings)?;
            media_node::startup::prepare_schema(&metadata, &settings).await?;
            let storage = Storage::from_settings(&settings.storage)?;
            let metrics = Metrics::new()?;
            let reaper = Reaper::new(metadata, storage, settings.reaper.clone(), metrics.reaper);
            let (_never, shutdown) = tokio::sync::watch::channel(false);
            let report = reaper.pass(&shutdown).await;
            println!(
                "{}",
                serde_json::json!({ "deleted": report.deleted, "errors": report.errors })
            );
            anyhow::ensure!(
                report.errors == 0,
                "the pass had {} errors; the rows stay for the next pass",
                report.errors
            );
            Ok(())
        }
        Command::Purge { account } => {
            let owner = media_node::domain::AccountId::parse(&account)
                .context("--account is not a valid account")?;
            let metadata = connect(&settings)?;
            media_node::startup::prepare_schema(&metadata, &settings).await?;
            let storage = Storage::from_settings(&settings.storage)?;
            let purge = media_node::jobs::purge::Purge::from_settings(metadata, storage, &settings);
            let report = purge.account(&owner).await?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::Token { sub, ttl, scope } => {
            let auth = Authenticator::from_settings(&settings.auth, settings.is_production())?;
            println!("{}", auth.mint(&sub, ttl, scope.as_deref())?);
            Ok(())
        }
    }
}

/// The metadata database, connected lazily, with the time a migration may need.
fn connect(settings: &Settings) -> anyhow::Result<Metadata> {
    let mut options = media_node::metadata::PoolOptions::from(&settings.database);
    // Migrations may rewrite large tables: more time than a request's statement gets.
    options.statement_timeout = options.statement_timeout.max(Duration::from_secs(3600));
    Ok(Metadata::connect_with(
        settings.database.url.expose(),
        &options,
    )?)
}
