//! Per-request telemetry: the middleware that gives every request its id, its log line and
//! its HTTP metrics.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderValue, CONTENT_LENGTH};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{web, Error, HttpMessage};
use tracing::Instrument;

use crate::http::access_log::{Finish, ObservedBody};
use crate::http::request_id::{self, RequestId};
use crate::http::routes::AppState;

/// Middleware: assigns the request id, runs the request inside a span that carries it,
/// counts and times it by route template, and writes one log line when the response body
/// has been sent (or cut off). Headers (and so tokens) are never logged. The request's body
/// is held until the answer is sent, so an answer to an unread body closes the connection
/// (see `held_payload`).
pub async fn middleware(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let id = RequestId::from_header(req.headers().get_all(&request_id::HEADER));
    req.extensions_mut().insert(id.clone());
    let method = method_label(req.method());
    let method_shown = bounded_method(req.method());
    // The template (`/v1/media/{id}`), never the raw path: ids must not become labels.
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let request_bytes = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let metrics = req
        .app_data::<web::Data<AppState>>()
        .map(|state| state.metrics.http.clone());
    let payload = crate::http::held_payload::hold_payload(&mut req);
    let span =
        tracing::info_span!("request", request_id = %id, method = %method_shown, route = %route);
    // Logs on drop: if this future is dropped before an answer, the line says so.
    let mut finish = Finish::new(span.clone(), Instant::now());
    finish.request_bytes = request_bytes;

    let mut response = request_id::scope(id.clone(), next.call(req).instrument(span)).await?;
    if let Ok(value) = HeaderValue::from_str(id.as_str()) {
        response.headers_mut().insert(request_id::HEADER, value);
    }
    let status = response.status().as_u16();
    finish.status = Some(status);
    if let Some(http) = metrics {
        http.requests
            .with_label_values(&[method, &route, &status.to_string()])
            .inc();
        finish.duration = Some(http.duration.with_label_values(&[method, &route]));
    }
    Ok(response.map_body(|_, body| ObservedBody::new(body, finish, payload)))
}

/// Middleware of the admin listener: every answer carries `X-Request-Id` too, without a
/// log line per probe or scrape.
pub async fn request_id_only(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let id = RequestId::from_header(req.headers().get(&request_id::HEADER));
    let mut response = next.call(req).await?;
    if let Ok(value) = HeaderValue::from_str(id.as_str()) {
        response.headers_mut().insert(request_id::HEADER, value);
    }
    Ok(response)
}

/// The `method` label: the methods of HTTP itself (RFC 9110, PATCH) as they are, any other
/// token a client made up as `OTHER`, so no client can add label values.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "OTHER",
    }
}

/// Longest method name written to the log as it is; longer ones are cut.
const LOGGED_METHOD_MAX: usize = 24;

/// The method for the log: at most `LOGGED_METHOD_MAX` bytes (methods are ASCII tokens),
/// with `...` when cut.
fn bounded_method(method: &Method) -> String {
    let raw = method.as_str();
    match raw.get(..LOGGED_METHOD_MAX) {
        Some(head) if raw.len() > LOGGED_METHOD_MAX => format!("{head}..."),
        _ => raw.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_up_methods_share_one_label_and_are_cut_in_the_log() {
        let long = Method::from_bytes("X".repeat(5000).as_bytes()).unwrap();
        assert_eq!(method_label(&long), "OTHER");
        assert_eq!(
            method_label(&Method::from_bytes(b"PURGE").unwrap()),
            "OTHER"
        );
        assert_eq!(method_label(&Method::GET), "GET");
        let shown = bounded_method(&long);
        assert_eq!(shown.len(), LOGGED_METHOD_MAX + 3);
        assert_eq!(bounded_method(&Method::DELETE), "DELETE");
    }
}
