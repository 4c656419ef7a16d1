//! Every Prometheus metric of the service, defined once, in one registry per process.
//! Names follow Prometheus conventions: base units (seconds, bytes), `_total` counters.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// Requests refused because a backend rejects the service's configuration (wrong keys,
/// bucket, region), by backend. One counter for the process: errors are raised where no
/// registry is at hand, and every registry of the process exports it.
pub static BACKEND_MISCONFIGURED: std::sync::LazyLock<IntCounterVec> =
    std::sync::LazyLock::new(|| {
        IntCounterVec::new(
            Opts::new(
                "media_backend_misconfigured_total",
                "Requests failed because a backend refuses the service's configuration",
            ),
            &["backend"],
        )
        .expect("a valid metric")
    });

/// Every `outcome` of `media_uploads_total`.
pub const UPLOAD_OUTCOMES: [&str; 10] = [
    "stored",
    "replayed",
    "conflict",
    "rejected",
    "too_large",
    "aborted",
    "denied",
    "unavailable",
    "limited",
    "failed",
];

/// Every `stage` of `media_reaper_errors_total`.
pub const REAPER_STAGES: [&str; 7] = [
    "claim",
    "multipart",
    "storage",
    "delete_rows",
    "release",
    "backlog",
    "panic",
];

/// Reaper metrics (DESIGN.md section 5).
#[derive(Clone, Debug)]
pub struct ReaperMetrics {
    /// Passes started.
    pub runs: IntCounter,
    /// Media whose object and row were both removed, counted once per row.
    pub deleted: IntCounter,
    /// Failures by stage: claim, multipart, storage, delete_rows, release, backlog, and
    /// panic (a pass that panicked; the next one runs as usual).
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
#[derive(Clone, Debug)]
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

/// The HTTP API, by route template (never the raw path, so ids do not become labels).
#[derive(Clone, Debug)]
pub struct HttpMetrics {
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
}

impl HttpMetrics {
    fn new() -> Self {
        Self {
            requests: IntCounterVec::new(
                Opts::new("http_requests_total", "HTTP requests answered"),
                &["method", "route", "status"],
            )
            .unwrap(),
            // Up to minutes: a 37 MiB upload over a slow mobile link takes that long.
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "http_request_duration_seconds",
                    "Time from request head to the end of the response",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    120.0, 300.0,
                ]),
                &["method", "route"],
            )
            .unwrap(),
        }
    }
}

/// Uploads and downloads of media.
#[derive(Clone, Debug)]
pub struct MediaMetrics {
    /// By outcome: stored, replayed (an `Idempotency-Key` retry answered with the stored
    /// media), conflict (409/422 on an `Idempotency-Key`), rejected, too_large, aborted,
    /// denied, unavailable, limited, failed.
    pub uploads: IntCounterVec,
    pub upload_bytes: IntCounter,
    pub upload_size: Histogram,
    pub uploads_in_flight: IntGauge,
    pub downloads: IntCounter,
    pub download_bytes: IntCounter,
    /// Requests of a signed download link refused by the link's own rate.
    pub signed_link_refusals: IntCounter,
    /// Resumable uploads by event: created, resumed (a request continued an upload that
    /// held bytes), completed, terminated (`DELETE`), ended (refused mid-way: past its
    /// length, its content); the reaper counts the expired ones.
    pub resumable: IntCounterVec,
    pub resumable_created: IntCounter,
    pub resumable_resumed: IntCounter,
    pub resumable_completed: IntCounter,
    pub resumable_terminated: IntCounter,
    pub resumable_ended: IntCounter,
}

impl MediaMetrics {
    fn new() -> Self {
        const KIB: f64 = 1024.0;
        const MIB: f64 = 1024.0 * 1024.0;
        let resumable = IntCounterVec::new(
            Opts::new(
                "media_resumable_uploads_total",
                "Resumable upload events (created, resumed, completed, terminated, ended)",
            ),
            &["event"],
        )
        .unwrap();
        Self {
            uploads: IntCounterVec::new(
                Opts::new("media_uploads_total", "Upload requests by outcome"),
                &["outcome"],
            )
            .unwrap(),
            upload_bytes: IntCounter::new(
                "media_upload_bytes_total",
                "Bytes of media stored by completed uploads",
            )
            .unwrap(),
            upload_size: Histogram::with_opts(
                HistogramOpts::new("media_upload_size_bytes", "Size of stored uploads").buckets(
                    vec![
                        KIB,
                        10.0 * KIB,
                        100.0 * KIB,
                        MIB,
                        5.0 * MIB,
                        10.0 * MIB,
                        20.0 * MIB,
                        30.0 * MIB,
                        37.0 * MIB,
                    ],
                ),
            )
            .unwrap(),
            uploads_in_flight: IntGauge::new(
                "media_uploads_in_flight",
                "Uploads currently streaming into storage",
            )
            .unwrap(),
            downloads: IntCounter::new(
                "media_downloads_total",
                "Downloads started (200 and 206 answers to GET)",
            )
            .unwrap(),
            download_bytes: IntCounter::new(
                "media_download_bytes_total",
                "Bytes of media sent to clients",
            )
            .unwrap(),
            signed_link_refusals: IntCounter::new(
                "media_signed_link_refusals_total",
                "Requests of a signed download link refused (429) by the link's own rate",
            )
            .unwrap(),
            resumable_created: resumable.with_label_values(&["created"]),
            resumable_resumed: resumable.with_label_values(&["resumed"]),
            resumable_completed: resumable.with_label_values(&["completed"]),
            resumable_terminated: resumable.with_label_values(&["terminated"]),
            resumable_ended: resumable.with_label_values(&["ended"]),
            resumable,
        }
    }
}

/// The database connection pool and the backends' reachability, refreshed when metrics
/// are scraped.
#[derive(Clone, Debug)]
pub struct PoolMetrics {
    pub connections: prometheus::IntGaugeVec,
    pub max_connections: IntGauge,
    /// 1 when the backend answered the last (cached) readiness check, else 0.
    pub backend_up: prometheus::IntGaugeVec,
}

/// All metrics of one process.
#[derive(Clone, Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub reaper: ReaperMetrics,
    pub backend: BackendMetrics,
    pub http: HttpMetrics,
    pub media: MediaMetrics,
    pub pool: PoolMetrics,
    pub limits: LimitMetrics,
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
        let http = HttpMetrics::new();
        registry.register(Box::new(http.requests.clone()))?;
        registry.register(Box::new(http.duration.clone()))?;
        registry.register(Box::new(PROTOCOL_ERRORS.clone()))?;
        let media = MediaMetrics::new();
        registry.register(Box::new(media.uploads.clone()))?;
        registry.register(Box::new(media.upload_bytes.clone()))?;
        registry.register(Box::new(media.upload_size.clone()))?;
        registry.register(Box::new(media.uploads_in_flight.clone()))?;
        registry.register(Box::new(media.downloads.clone()))?;
        registry.register(Box::new(media.download_bytes.clone()))?;
        registry.register(Box::new(media.signed_link_refusals.clone()))?;
        registry.register(Box::new(media.resumable.clone()))?;
        let limits = LimitMetrics::new();
        limits.register(&registry)?;
        let pool = PoolMetrics {
            connections: prometheus::IntGaugeVec::new(
                Opts::new(
                    "media_database_pool_connections",
                    "Database connections by state",
                ),
                &["state"],
            )?,
            max_connections: IntGauge::new(
                "media_database_pool_max_connections",
                "Size limit of the database connection pool",
            )?,
            backend_up: prometheus::IntGaugeVec::new(
                Opts::new(
                    "media_backend_up",
                    "Whether the backend answered the last readiness check (1) or not (0)",
                ),
                &["backend"],
            )?,
        };
        registry.register(Box::new(pool.connections.clone()))?;
        registry.register(Box::new(pool.max_connections.clone()))?;
        registry.register(Box::new(pool.backend_up.clone()))?;
        registry.register(Box::new(BACKEND_MISCONFIGURED.clone()))?;
        BACKEND_MISCONFIGURED.with_label_values(&["storage"]);

        // Known label values start at zero, so rates and alerts see every series from the
        // first scrape instead of only after the first event.
        for outcome in UPLOAD_OUTCOMES {
            media.uploads.with_label_values(&[outcome]);
        }
        for stage in REAPER_STAGES {
            reaper.errors.with_label_values(&[stage]);
        }
        for state in ["idle", "in_use"] {
            pool.connections.with_label_values(&[state]);
        }
        Ok(Self {
            registry,
            reaper,
            backend,
            http,
            media,
            pool,
            limits,
        })
    }
}

/// Metrics of the limits.
#[derive(Clone, Debug)]
pub struct LimitMetrics {
    /// Bytes of the budget reserved by uploads now.
    pub memory_in_use: IntGauge,
    pub memory_budget: IntGauge,
    /// Reservations that could not be had at once and waited.
    pub memory_waits: IntCounter,
    /// Uploads refused for want of memory, by the limit that was full: `replica` or
    /// `account` after waiting, `queue` at once when `max_waiting_uploads` already wait.
    pub memory_refusals: IntCounterVec,
    /// Requests refused at once by an account limit: `concurrent_uploads` or `request_rate`.
    pub account_refusals: IntCounterVec,
}

impl LimitMetrics {
    pub fn new() -> Self {
        let metrics = Self {
            memory_in_use: IntGauge::new(
                "media_upload_memory_bytes",
                "Bytes of the upload memory budget reserved by part buffers",
            )
            .unwrap(),
            memory_budget: IntGauge::new(
                "media_upload_memory_budget_bytes",
                "The upload memory budget of the replica",
            )
            .unwrap(),
            memory_waits: IntCounter::new(
                "media_upload_memory_waits_total",
                "Part buffer reservations that waited for room in the memory budget",
            )
            .unwrap(),
            memory_refusals: IntCounterVec::new(
                Opts::new(
                    "media_upload_memory_refusals_total",
                    "Uploads refused for want of memory, by the limit that was full: replica or \
                     account after waiting, queue at once (too many waiting already)",
                ),
                &["limit"],
            )
            .unwrap(),
            account_refusals: IntCounterVec::new(
                Opts::new(
                    "media_account_refusals_total",
                    "Requests refused at once by a per-account limit",
                ),
                &["limit"],
            )
            .unwrap(),
        };
        for limit in ["replica", "account", "queue"] {
            metrics.memory_refusals.with_label_values(&[limit]);
        }
        for limit in ["concurrent_uploads", "request_rate"] {
            metrics.account_refusals.with_label_values(&[limit]);
        }
        metrics
    }

    pub fn register(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.memory_in_use.clone()))?;
        registry.register(Box::new(self.memory_budget.clone()))?;
        registry.register(Box::new(self.memory_waits.clone()))?;
        registry.register(Box::new(self.memory_refusals.clone()))?;
        registry.register(Box::new(self.account_refusals.clone()))?;
        Ok(())
    }
}

impl Default for LimitMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// `http_protocol_errors_total`: the process-wide count of what actix-http logged as an
/// error (see `startup::logging`). One counter for the process, like
/// `BACKEND_MISCONFIGURED`: the log layer that counts has no registry at hand.
pub static PROTOCOL_ERRORS: std::sync::LazyLock<IntCounter> = std::sync::LazyLock::new(|| {
    IntCounter::new(
        "http_protocol_errors_total",
        "Connections the HTTP layer ended with an error before or outside the API \
         (malformed requests, header timeouts, oversized heads, broken streams)",
    )
    .expect("a valid metric")
});
