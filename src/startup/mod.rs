//! Assembles the application from `Settings`: backends, the public API server and the admin
//! server, each on a listener it binds itself (port 0 gives a free port, for tests).

pub mod allocator;
pub mod logging;

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use actix_web::dev::Server;
use actix_web::{middleware, web, App, HttpServer};
use anyhow::Context;
use tokio::sync::watch;

use crate::auth::Authenticator;
use crate::http::admin::OpsState;
use crate::http::routes::AppState;
use crate::jobs::reaper::Reaper;
use crate::metadata::Metadata;
use crate::metrics::Metrics;
use crate::settings::{redact_url, Settings};
use crate::storage::Storage;
use crate::upload::ingest::{Cleanups, Ingest};
use crate::upload::shutdown::{wait_for_plan, StopPlan};

pub struct Application {
    port: u16,
    admin_port: u16,
    server: Server,
    admin: Server,
    state: web::Data<AppState>,
    draining: Arc<AtomicBool>,
    reaper: Option<Reaper>,
    stop: StopBudget,
    stop_plan: watch::Sender<Option<StopPlan>>,
}

/// How a stop spends `server.drain_delay + server.shutdown_timeout`, the one deadline of
/// the whole stop: the listener accepts during the drain delay; requests in flight then
/// get the shutdown timeout less a reserve (a quarter of it, at most 5 s), in which the
/// uploads cut off at that instant are rolled back.
#[derive(Debug, Clone, Copy)]
struct StopBudget {
    drain_delay: Duration,
    /// From the end of the drain until requests are cut off.
    requests: Duration,
    /// From the end of the drain until the process has stopped.
    shutdown_timeout: Duration,
}

impl StopBudget {
    fn new(drain_delay: Duration, shutdown_timeout: Duration) -> Self {
        let reserve = (shutdown_timeout / 4).min(Duration::from_secs(5));
        Self {
            drain_delay,
            requests: shutdown_timeout - reserve,
            shutdown_timeout,
        }
    }

    fn plan(&self, signalled: Instant) -> StopPlan {
        let drained = signalled + self.drain_delay;
        StopPlan {
            cut_requests_at: drained + self.requests,
            deadline: drained + self.shutdown_timeout,
        }
    }
}

impl Application {
    /// Connects the backends, applies migrations and binds both listeners.
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        // Configuration errors first, before anything touches a backend.
        let auth = Authenticator::from_settings(&settings.auth, settings.is_production())?;
        auth.start().await;
        let metrics = Metrics::new()?;
        let metadata = Metadata::connect_with(
            settings.database.url.expose(),
            &crate::metadata::PoolOptions::from(&settings.database),
        )?
        .with_timings(metrics.backend.database.clone());
        metrics
            .pool
            .max_connections
            .set(i64::from(settings.database.max_connections));
        prepare_schema(&metadata, settings).await?;
        let storage = Storage::from_settings(&settings.storage)?
            .with_timings(metrics.backend.storage.clone());
        let retention = chrono::Duration::from_std(settings.media.retention)
            .context("media.retention is out of range")?;
        let ingest = Ingest {
            metadata: metadata.clone(),
            storage: storage.clone(),
            max_upload_bytes: settings.limits.max_upload_bytes,
            part_size: settings.storage.part_size_bytes,
            parts_in_flight: settings.storage.parts_in_flight,
            retention,
            heartbeat: settings.reaper.upload_heartbeat(),
            dead_after: settings.reaper.upload_dead_after(),
            metrics: metrics.media.clone(),
            // A quarter of the pool at most, so requests keep connections of their own.
            cleanups: Cleanups::on_current_runtime(
                (settings.database.max_connections / 4).max(1) as usize
            ),
            verify_content: settings.media.verify_content,
            body_limits: crate::upload::body_guard::BodyLimits {
                idle_timeout: settings.limits.body_idle_timeout,
                min_rate_bytes_per_sec: settings.limits.min_body_rate_bytes_per_sec,
                min_rate_grace: settings.limits.min_body_rate_grace,
                min_rate_window: settings.limits.min_body_rate_window,
            },
            streamed_put_idle_timeout: settings.storage.s3.streamed_put_idle_timeout,
        };
        let (stop_plan, stop_signal) = watch::channel(None);
        let state = web::Data::new(AppState {
            auth,
            metadata: metadata.clone(),
            storage: storage.clone(),
            resumable: crate::upload::resumable::Resumable::new(
                ingest.clone(),
                settings.uploads.incomplete_expiry,
                settings.uploads.max_incomplete_per_account,
            ),
            ingest,
            limits: crate::upload::limits::Limits::new(&settings.limits, metrics.limits.clone()),
            metrics: metrics.clone(),
            stop: stop_signal,
            links: crate::http::signed_url::UrlSigner::from_settings(settings)?,
            link_limits: crate::http::signed_url::LinkLimits::new(
                settings.limits.signed_link_rate_per_second,
                settings.limits.signed_link_burst,
                metrics.media.signed_link_refusals.clone(),
            ),
            profile: settings.media.profile,
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
            purge: Arc::new(crate::jobs::purge::Purge::from_settings(
                metadata.clone(),
                storage.clone(),
                settings,
            )),
            auth: state.auth.clone(),
        });

        let public = TcpListener::bind((settings.server.host.as_str(), settings.server.port))
            .with_context(|| {
                format!("binding {}:{}", settings.server.host, settings.server.port)
            })?;
        let admin = TcpListener::bind((settings.admin.host.as_str(), settings.admin.port))
            .with_context(|| format!("binding {}:{}", settings.admin.host, settings.admin.port))?;
        let port = public.local_addr()?.port();
        let admin_port = admin.local_addr()?.port();

        let stop = StopBudget::new(
            settings.server.drain_delay,
            settings.server.shutdown_timeout,
        );
        let workers = settings
            .server
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let cap = crate::http::connections::cap(
            settings.server.max_connections,
            crate::http::connections::raise_fd_limit(),
            workers,
            settings.database.max_connections,
        );
        let server = crate::http::server::start(
            public,
            crate::http::server::Options {
                workers,
                max_connections_per_worker: cap.per_worker,
                // actix counts whole seconds (rounded up); upload bodies are cut at the
                // exact instant (`cut_off_at_stop`), and `run_until_stopped` bounds the
                // whole stop.
                shutdown_timeout: stop.requests,
                request_header_timeout: settings.server.request_header_timeout,
                keep_alive: settings.server.keep_alive,
                send_timeout: settings.server.send_timeout,
            },
            state.clone(),
        )?;

        let admin = HttpServer::new(move || {
            App::new()
                .app_data(ops.clone())
                .wrap(middleware::from_fn(crate::http::telemetry::request_id_only))
                .configure(crate::http::admin::configure)
        })
        .workers(1)
        // Probes and scrapes are short; a stop never waits long for them.
        .shutdown_timeout(1)
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
            stop,
            stop_plan,
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

    /// Serves until SIGTERM or SIGINT, then stops within one deadline,
    /// `server.drain_delay + server.shutdown_timeout` after the signal: readiness turns 503
    /// at once; the listener keeps accepting for the drain delay, then closes; requests in
    /// flight may finish until the shutdown timeout less its reserve (`StopBudget`); uploads
    /// still running then are cut off and rolled back; the reaper stops between batches;
    /// clean-ups get what is left of the deadline; then the admin listener closes.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let public = self.server.handle();
        let admin = self.admin.handle();
        let draining = self.draining.clone();
        let budget = self.stop;
        let stop_plan = self.stop_plan;
        let mut stop_signal = self.state.stop.clone();
        let (stop_reaper, reaper_stopped) = watch::channel(false);
        let mut reaper = self
            .reaper
            .map(|reaper| tokio::spawn(reaper.run(reaper_stopped)));
        tokio::spawn(async move {
            shutdown_signal().await;
            let plan = budget.plan(Instant::now());
            stop_plan.send_replace(Some(plan));
            draining.store(true, Ordering::SeqCst);
            tracing::info!(
                drain_delay = ?budget.drain_delay,
                shutdown_timeout = ?budget.shutdown_timeout,
                "shutdown requested: readiness is 503, draining"
            );
            tokio::time::sleep(budget.drain_delay).await;
            tracing::info!("no longer accepting connections; waiting for in-flight requests");
            public.stop(true).await;
        });
        let admin_task = tokio::spawn(self.admin);
        let trimmer = tokio::spawn(crate::startup::allocator::trim_periodically());

        // The server ends once its workers have stopped; whatever happens, the stop does
        // not outlast its deadline.
        let past_deadline = async {
            let plan = wait_for_plan(&mut stop_signal).await;
            tokio::time::sleep_until(plan.deadline).await;
        };
        tokio::select! {
            served = self.server => served?,
            () = past_deadline => {
                tracing::warn!("requests still running at the stop deadline are dropped");
            }
        }
        let deadline = self
            .state
            .stop
            .borrow()
            .map(|plan| plan.deadline)
            .unwrap_or_else(|| Instant::now() + budget.shutdown_timeout);

        let _ = stop_reaper.send(true);
        if let Some(task) = reaper.as_mut() {
            if tokio::time::timeout_at(deadline, &mut *task).await.is_err() {
                // Its claims keep their lease and are retried by any replica afterwards.
                task.abort();
                tracing::warn!("the reaper's batch outlived the stop deadline");
            }
        }
        if !self.state.ingest.cleanups.wait_until(deadline).await {
            tracing::warn!("some cancelled uploads were not cleaned up; the reaper will");
        }
        trimmer.abort();
        admin.stop(true).await;
        admin_task.await??;
        // A connection still held by a clean-up that missed the deadline must not hold the
        // exit.
        let _ = tokio::time::timeout(Duration::from_millis(500), self.state.metadata.close()).await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Migrates (development) or checks that the schema is new enough (production; the
/// migration Job migrates), per `database.migrate_on_start`.
pub async fn prepare_schema(metadata: &Metadata, settings: &Settings) -> anyhow::Result<()> {
    let database = redact_url(settings.database.url.expose());
    if settings.migrate_on_start() {
        metadata
            .migrate()
            .await
            .with_context(|| format!("migrating {database}"))?;
    } else {
        let newer = metadata
            .check_schema()
            .await
            .with_context(|| format!("checking the schema of {database}"))?;
        if !newer.is_empty() {
            tracing::info!(
                ?newer,
                "the schema has migrations of a newer release; they are additive and left alone"
            );
        }
    }
    Ok(())
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
