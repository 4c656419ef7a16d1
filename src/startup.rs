//! Assembles the application from `Settings`: backends, the public API server and the admin
//! server, each on a listener it binds itself (port 0 gives a free port, for tests).

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{middleware, web, App, HttpServer};
use anyhow::Context;
use tokio::sync::watch;

use crate::auth::Authenticator;
use crate::ingest::{Cleanups, Ingest};
use crate::metadata::Metadata;
use crate::metrics::Metrics;
use crate::ops::OpsState;
use crate::reaper::Reaper;
use crate::routes::AppState;
use crate::settings::{redact_url, Settings};
use crate::storage::Storage;

pub struct Application {
    port: u16,
    admin_port: u16,
    server: Server,
    admin: Server,
    state: web::Data<AppState>,
    draining: Arc<AtomicBool>,
    reaper: Option<Reaper>,
    drain_delay: std::time::Duration,
    shutdown_timeout: std::time::Duration,
}

impl Application {
    /// Connects the backends, applies migrations and binds both listeners.
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        let metrics = Metrics::new()?;
        let metadata = Metadata::connect(
            settings.database.url.expose(),
            settings.database.max_connections,
        )?
        .with_timings(metrics.backend.database.clone());
        metrics
            .pool
            .max_connections
            .set(i64::from(settings.database.max_connections));
        metadata
            .migrate()
            .await
            .with_context(|| format!("migrating {}", redact_url(settings.database.url.expose())))?;
        let storage = Storage::from_settings(&settings.storage)?
            .with_timings(metrics.backend.storage.clone());
        let auth = Authenticator::from_settings(&settings.auth, settings.is_production())?;
        let retention = chrono::Duration::from_std(settings.media.retention)
            .context("media.retention is out of range")?;
        let ingest = Ingest {
            metadata: metadata.clone(),
            storage: storage.clone(),
            max_upload_bytes: settings.limits.max_upload_bytes,
            part_size: settings.storage.part_size_bytes,
            retention,
            metrics: metrics.media.clone(),
            cleanups: Cleanups::on_current_runtime(),
            body_limits: crate::body::BodyLimits {
                idle_timeout: settings.limits.body_idle_timeout,
                min_rate_bytes_per_sec: settings.limits.min_body_rate_bytes_per_sec,
                min_rate_grace: settings.limits.min_body_rate_grace,
            },
        };
        let state = web::Data::new(AppState {
            auth,
            metadata: metadata.clone(),
            storage: storage.clone(),
            ingest,
            metrics: metrics.clone(),
        });
        let draining = Arc::new(AtomicBool::new(false));
        let reaper = settings.reaper.enabled.then(|| {
            Reaper::new(
                metadata.clone(),
                storage.clone(),
                settings.reaper.clone(),
                metrics.reaper.clone(),
            )
        });
        let ops = web::Data::new(OpsState {
            metadata: metadata.clone(),
            storage: storage.clone(),
            metrics: metrics.clone(),
            draining: draining.clone(),
            last_check: Default::default(),
        });

        let public = TcpListener::bind((settings.server.host.as_str(), settings.server.port))
            .with_context(|| {
                format!("binding {}:{}", settings.server.host, settings.server.port)
            })?;
        let admin = TcpListener::bind((settings.admin.host.as_str(), settings.admin.port))
            .with_context(|| format!("binding {}:{}", settings.admin.host, settings.admin.port))?;
        let port = public.local_addr()?.port();
        let admin_port = admin.local_addr()?.port();

        let workers = settings
            .server
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let cap = crate::connections::cap(
            settings.server.max_connections,
            crate::connections::raise_fd_limit(),
            workers,
            settings.database.max_connections,
        );
        let server = crate::public_server::start(
            public,
            crate::public_server::Options {
                workers,
                max_connections_per_worker: cap.per_worker,
                shutdown_timeout: settings.server.shutdown_timeout,
                request_header_timeout: settings.server.request_header_timeout,
                keep_alive: settings.server.keep_alive,
                send_timeout: settings.server.send_timeout,
            },
            state.clone(),
        )?;

        let admin = HttpServer::new(move || {
            App::new()
                .app_data(ops.clone())
                .wrap(middleware::from_fn(crate::telemetry::request_id_only))
                .configure(crate::ops::configure)
        })
        .workers(1)
        .tcp_nodelay(true)
        .disable_signals()
        .listen(admin)?
        .run();

        tracing::info!(
            port,
            admin_port,
            database = metadata.backend_name(),
            storage = storage.describe(),
            max_connections = cap.total,
            fd_limit = cap.fd_limit,
            "media-node listening"
        );
        Ok(Self {
            port,
            admin_port,
            server,
            admin,
            state,
            draining,
            reaper,
            drain_delay: settings.server.drain_delay,
            shutdown_timeout: settings.server.shutdown_timeout,
        })
    }

    /// This process's metrics (tests read the reaper's counters here).
    pub fn metrics(&self) -> Metrics {
        self.state.metrics.clone()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// The shared state, for tests and subcommands that look behind the API.
    pub fn state(&self) -> web::Data<AppState> {
        self.state.clone()
    }

    /// Serves until SIGTERM or SIGINT, then drains: readiness turns 503 at once, the
    /// listener keeps accepting for `server.drain_delay`, then stops; in-flight requests get
    /// `server.shutdown_timeout` to finish and are cut off after it (their uploads rolled
    /// back); the reaper stops between batches; then the admin listener closes.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let public = self.server.handle();
        let admin = self.admin.handle();
        let draining = self.draining.clone();
        let drain_delay = self.drain_delay;
        let (stop_reaper, reaper_stopped) = watch::channel(false);
        let reaper = self
            .reaper
            .map(|reaper| tokio::spawn(reaper.run(reaper_stopped)));
        tokio::spawn(async move {
            shutdown_signal().await;
            draining.store(true, Ordering::SeqCst);
            tracing::info!(
                ?drain_delay,
                "shutdown requested: readiness is 503, draining"
            );
            tokio::time::sleep(drain_delay).await;
            tracing::info!("no longer accepting connections; waiting for in-flight requests");
            public.stop(true).await;
        });
        let admin_task = tokio::spawn(self.admin);
        self.server.await?;

        let _ = stop_reaper.send(true);
        if let Some(reaper) = reaper {
            reaper.await?;
        }
        if !self.state.ingest.cleanups.wait(self.shutdown_timeout).await {
            tracing::warn!("some cancelled uploads were not cleaned up; the reaper will");
        }
        admin.stop(true).await;
        admin_task.await??;
        self.state.metadata.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                }
            }
            _ => std::future::pending().await,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
