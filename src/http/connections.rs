//! How many connections the public listener may hold. Every open connection costs file
//! descriptors (its socket, and while it streams, a connection to object storage), and a
//! process out of descriptors cannot answer anyone: not the API, not `/readyz`, not the
//! database. The cap keeps a reserve for everything else.

/// Descriptors kept for the admin listener and its scrapes, logs, the runtime, and object
/// storage's connection pool beyond what the connections themselves use.
const RESERVE: u64 = 512;
/// Descriptors one public connection may use: its socket, a storage connection while it
/// streams, and a duplicate the response watchdog may hold.
const PER_CONNECTION: u64 = 3;
/// Above this per worker, more connections only add scheduling latency.
const MAX_PER_WORKER: u64 = 25_000;

/// Set up of every accepted public connection: a client that accepts no bytes of an
/// answer for `send_timeout` (it stopped reading, so its receive window stays closed, or it
/// vanished, so nothing is acknowledged) is disconnected by the kernel
/// (`TCP_USER_TIMEOUT`). actix-http has no write timeout, and stops polling a response body
/// whose socket is full, so without this a stalled reader would hold its connection, its
/// storage read and their buffers forever. A slow reader keeps acknowledging and is not
/// affected.
pub fn on_connect(connection: &dyn std::any::Any, send_timeout: std::time::Duration) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Some(stream) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() {
        if let Err(err) = socket2::SockRef::from(stream).set_tcp_user_timeout(Some(send_timeout)) {
            tracing::debug!(error = %err, "TCP_USER_TIMEOUT not set");
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = (connection, send_timeout);
}

/// The cap of the public listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionCap {
    /// The process's (soft) descriptor limit, when known.
    pub fd_limit: Option<u64>,
    /// Connections across the replica.
    pub total: usize,
    /// actix-web's `max_connections` is per worker.
    pub per_worker: usize,
}

/// Raises the soft descriptor limit to the hard one and returns the result (Unix only).
pub fn raise_fd_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        use rustix::process::{getrlimit, setrlimit, Resource};
        let mut limit = getrlimit(Resource::Nofile);
        if limit.current < limit.maximum {
            limit.current = limit.maximum;
            if setrlimit(Resource::Nofile, limit).is_err() {
                tracing::debug!("could not raise the file descriptor limit");
            }
        }
        getrlimit(Resource::Nofile).current
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The cap for `workers` workers: the configured total, but never more than the descriptor
/// limit allows after the reserve (and the database pool).
pub fn cap(
    configured: Option<usize>,
    fd_limit: Option<u64>,
    workers: usize,
    database_connections: u32,
) -> ConnectionCap {
    let workers = workers.max(1) as u64;
    let by_fds = fd_limit.map(|limit| {
        limit.saturating_sub(RESERVE + u64::from(database_connections)) / PER_CONNECTION
    });
    let ceiling = MAX_PER_WORKER * workers;
    let total = match (configured, by_fds) {
        (Some(configured), Some(by_fds)) => (configured as u64).min(by_fds),
        (Some(configured), None) => configured as u64,
        (None, Some(by_fds)) => by_fds,
        (None, None) => ceiling,
    }
    .min(ceiling)
    .max(workers);
    ConnectionCap {
        fd_limit,
        total: usize::try_from(total).unwrap_or(usize::MAX),
        per_worker: usize::try_from(total / workers).unwrap_or(usize::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_stays_below_the_descriptor_limit() {
        // The probe's set-up: 20 000 descriptors, 2 workers, a pool of 10.
        let probe = cap(None, Some(20_000), 2, 10);
        let fds_needed = probe.total as u64 * PER_CONNECTION + RESERVE + 10;
        assert!(fds_needed <= 20_000, "{probe:?}");
        assert_eq!(probe.per_worker * 2, probe.total);
        assert!(probe.total > 5_000, "{probe:?}");
        // A configured cap is honoured when lower, not when higher.
        assert_eq!(cap(Some(100), Some(20_000), 2, 10).total, 100);
        assert_eq!(cap(Some(100_000), Some(20_000), 2, 10), probe);
        // A tiny limit still leaves one connection per worker.
        assert_eq!(cap(None, Some(100), 4, 10).per_worker, 1);
        assert_eq!(cap(None, None, 2, 10).per_worker, 25_000);
    }
}
