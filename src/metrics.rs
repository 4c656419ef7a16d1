//! Every Prometheus metric of the service, defined once, in one registry per process.
//! Names follow Prometheus conventions: base units (seconds, bytes), `_total` counters.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// Reaper metrics (DESIGN.md section 5).
#[derive(Clone)]
pub struct ReaperMetrics {
    /// Passes started.
    pub runs: IntCounter,
    /// Media whose object and row were both removed, counted once per row.
    pub deleted: IntCounter,
    /// Failures by stage: claim, multipart, storage, delete_rows, release, backlog.
    pub errors: IntCounterVec,
    /// Unix time of the last pass that finished without an error.
    pub last_success: prometheus::Gauge,
    /// Rows whose `expires_at` has passed and that are not reaped yet.
    pub expired_backlog: IntGauge,
    /// How long a whole pass took.
    pub pass_duration: Histogram,
}

impl ReaperMetrics {
    fn new() -> Self {
        Self {
            runs: IntCounter::new("media_reaper_runs_total", "Reaper passes started").unwrap(),
            deleted: IntCounter::new(
                "media_reaper_deleted_total",
                "Expired or stale media removed by the reaper (object and row)",
            )
            .unwrap(),
            errors: IntCounterVec::new(
                Opts::new("media_reaper_errors_total", "Reaper failures by stage"),
                &["stage"],
            )
            .unwrap(),
            last_success: prometheus::Gauge::new(
                "media_reaper_last_success_timestamp_seconds",
                "Unix time of the last reaper pass that finished without errors",
            )
            .unwrap(),
            expired_backlog: IntGauge::new(
                "media_expired_backlog",
                "Media past their expiry that are not reaped yet",
            )
            .unwrap(),
            pass_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "media_reaper_pass_duration_seconds",
                    "Duration of one reaper pass",
                )
                .buckets(vec![0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0]),
            )
            .unwrap(),
        }
    }

    fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.runs.clone()))?;
        registry.register(Box::new(self.deleted.clone()))?;
        registry.register(Box::new(self.errors.clone()))?;
        registry.register(Box::new(self.last_success.clone()))?;
        registry.register(Box::new(self.expired_backlog.clone()))?;
        registry.register(Box::new(self.pass_duration.clone()))?;
        Ok(())
    }
}

/// Durations of calls to the backends, by operation.
#[derive(Clone)]
pub struct BackendMetrics {
    pub storage: HistogramVec,
    pub database: HistogramVec,
}

impl BackendMetrics {
    fn new() -> Self {
        let buckets = vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        Self {
            storage: HistogramVec::new(
                HistogramOpts::new(
                    "media_storage_operation_duration_seconds",
                    "Duration of object storage operations",
                )
                .buckets(buckets.clone()),
                &["operation"],
            )
            .unwrap(),
            database: HistogramVec::new(
                HistogramOpts::new(
                    "media_database_operation_duration_seconds",
                    "Duration of metadata database operations",
                )
                .buckets(buckets),
                &["operation"],
            )
            .unwrap(),
        }
    }
}

/// All metrics of one process.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub reaper: ReaperMetrics,
    pub backend: BackendMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let reaper = ReaperMetrics::new();
        reaper.register(&registry)?;
        let backend = BackendMetrics::new();
        registry.register(Box::new(backend.storage.clone()))?;
        registry.register(Box::new(backend.database.clone()))?;
        Ok(Self {
            registry,
            reaper,
            backend,
        })
    }
}
