//! The admin listener: liveness, readiness and Prometheus metrics, open to the probes and
//! the scraper, and the purge of an account, which needs a token with the `media:admin`
//! scope. It is bound to its own port and never routed through the public load balancer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, HttpRequest, HttpResponse};
use prometheus::{Encoder, TextEncoder};
use serde_json::json;

use crate::auth::{Authenticator, SCOPE_ADMIN};
use crate::domain::ApiError;
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
    pub purge: Arc<crate::jobs::purge::Purge>,
    /// The public API's authenticator (the same keys): the purge needs `media:admin`.
    pub auth: Authenticator,
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/livez", web::get().to(livez))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics))
        .route("/admin/accounts/{account}/purge", web::post().to(purge));
}

/// Removes all media of an account. Only on the admin listener, which the load balancer
/// does not expose; the network policy opens it to the monitoring namespace, so the purge
/// also needs a token with the `media:admin` scope (401 without a valid one, 403 without
/// the scope), checked before the account is looked at. Each purge is logged with the
/// token's `sub`.
async fn purge(
    req: HttpRequest,
    state: web::Data<OpsState>,
    account: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let caller = state.auth.authenticate_refreshing(req.headers()).await?;
    caller.require_named(SCOPE_ADMIN)?;
    let Some(owner) = crate::domain::AccountId::parse(&account) else {
        return Err(ApiError::InvalidParameter(format!(
            "the account must be 1-{} bytes without control characters",
            crate::domain::AccountId::MAX_LEN
        )));
    };
    tracing::info!(sub = %caller.account, account = %owner, "purge requested on the admin listener");
    match state.purge.account(&owner).await {
        Ok(report) => Ok(HttpResponse::Ok().json(report)),
        Err(err) => {
            tracing::warn!(sub = %caller.account, account = %owner, "purge failed; run it again");
            Err(ApiError::Unavailable(err))
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
