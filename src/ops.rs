//! The admin listener: liveness, readiness and Prometheus metrics. It is bound to its own
//! port and never routed through the public load balancer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, HttpResponse};
use prometheus::{Encoder, TextEncoder};
use serde_json::json;

use crate::metadata::Metadata;
use crate::metrics::Metrics;
use crate::storage::Storage;

/// How long a readiness probe waits for each backend.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a backend check is reused, so frequent probes (several kubelets, a load
/// balancer) do not hammer the database and storage.
const PROBE_CACHE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct OpsState {
    pub metadata: Metadata,
    pub storage: Storage,
    pub metrics: Metrics,
    /// Set once shutdown begins: readiness answers 503 so the load balancer stops sending.
    pub draining: Arc<AtomicBool>,
    /// The last backend check: when, database reachable, storage reachable.
    pub last_check: Arc<tokio::sync::Mutex<Option<(Instant, bool, bool)>>>,
    /// Removes an account's media (`POST /admin/accounts/{account}/purge`).
    pub purge: Arc<crate::purge::Purge>,
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/livez", web::get().to(livez))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics))
        .route("/admin/accounts/{account}/purge", web::post().to(purge));
}

/// Removes all media of an account. Only on the admin listener, which the load balancer
/// does not expose and the network policy opens to the monitoring namespace alone.
async fn purge(state: web::Data<OpsState>, account: web::Path<String>) -> HttpResponse {
    let Some(owner) = crate::domain::AccountId::parse(&account) else {
        return HttpResponse::BadRequest().json(json!({ "error": "not a valid account" }));
    };
    match state.purge.account(&owner).await {
        Ok(report) => HttpResponse::Ok().json(report),
        Err(err) => {
            tracing::warn!(error = ?err, "purge failed; run it again");
            HttpResponse::ServiceUnavailable()
                .insert_header((actix_web::http::header::RETRY_AFTER, "5"))
                .json(json!({ "error": "the purge did not finish; run it again" }))
        }
    }
}

async fn livez() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

async fn readyz(state: web::Data<OpsState>) -> HttpResponse {
    if state.draining.load(Ordering::SeqCst) {
        return HttpResponse::ServiceUnavailable().json(json!({ "status": "draining" }));
    }
    let (database_ok, storage_ok) = backends_reachable(&state).await;
    let body = json!({
        "status": if database_ok && storage_ok { "ready" } else { "unavailable" },
        "database": if database_ok { "ok" } else { "unreachable" },
        "storage": if storage_ok { "ok" } else { "unreachable" },
    });
    if database_ok && storage_ok {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

async fn metrics(state: web::Data<OpsState>) -> HttpResponse {
    backends_reachable(&state).await;
    let (open, idle) = state.metadata.pool_state();
    let pool = &state.metrics.pool.connections;
    pool.with_label_values(&["idle"]).set(idle as i64);
    pool.with_label_values(&["in_use"])
        .set(i64::from(open).saturating_sub(idle as i64));
    let encoder = TextEncoder::new();
    let mut buffer = Vec::new();
    if let Err(err) = encoder.encode(&state.metrics.registry.gather(), &mut buffer) {
        tracing::error!(error = %err, "encoding metrics failed");
        return HttpResponse::InternalServerError().finish();
    }
    HttpResponse::Ok()
        .content_type(encoder.format_type())
        .body(buffer)
}

/// The cached result of checking both backends; one check at a time, however many probes.
async fn backends_reachable(state: &OpsState) -> (bool, bool) {
    let mut last = state.last_check.lock().await;
    if let Some((at, database, storage)) = *last {
        if at.elapsed() < PROBE_CACHE {
            return (database, storage);
        }
    }
    let (database, storage) = tokio::join!(
        tokio::time::timeout(PROBE_TIMEOUT, state.metadata.ping()),
        tokio::time::timeout(PROBE_TIMEOUT, state.storage.ping()),
    );
    let result = (
        matches!(database, Ok(Ok(()))),
        matches!(storage, Ok(Ok(()))),
    );
    *last = Some((Instant::now(), result.0, result.1));
    let up = &state.metrics.pool.backend_up;
    up.with_label_values(&["database"]).set(i64::from(result.0));
    up.with_label_values(&["storage"]).set(i64::from(result.1));
    result
}
