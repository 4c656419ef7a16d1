//! The request id: taken from `X-Request-Id` when the caller (or the load balancer) sent a
//! sane one, generated otherwise; echoed on every response, attached to every log line of
//! the request (`telemetry::middleware`), and available to error bodies through a
//! task-local.

use actix_web::http::header::{HeaderName, HeaderValue};

pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");
const MAX_LEN: usize = 128;

tokio::task_local! {
    static CURRENT: RequestId;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(String);

impl RequestId {
    /// The first sane value among `values` (every `X-Request-Id` of the request, in order:
    /// load balancers may add theirs, which is not an error), else a new id.
    pub fn from_header<'a>(values: impl IntoIterator<Item = &'a HeaderValue>) -> Self {
        let given = values
            .into_iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| {
                !v.is_empty()
                    && v.len() <= MAX_LEN
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
            })
            .map(str::to_owned);
        Self(given.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    #[cfg(test)]
    pub(crate) fn for_tests(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The id of the request being served on this task, if any.
pub fn current() -> Option<RequestId> {
    CURRENT.try_with(Clone::clone).ok()
}

/// Runs `future` with `id` as the current request id.
pub async fn scope<F: std::future::Future>(id: RequestId, future: F) -> F::Output {
    CURRENT.scope(id, future).await
}
