//! The response body as the client receives it: counted, and finished (logged, timed) when
//! its last byte has been handed to the connection or when it is dropped half-way (the
//! client went away), not when the handler returned its head.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use actix_web::body::{BodySize, MessageBody};
use bytes::Bytes;

use crate::http::held_payload::HeldPayload;

/// What is written when the body ends.
pub struct Finish {
    pub span: tracing::Span,
    pub started: Instant,
    /// `None` while the handler runs: a request cancelled then (the client went away, the
    /// connection broke) is logged without a status.
    pub status: Option<u16>,
    pub request_bytes: Option<u64>,
    /// `http_request_duration_seconds`, already labelled.
    pub duration: Option<prometheus::Histogram>,
    sent: u64,
    complete: bool,
}

impl Finish {
    pub fn new(span: tracing::Span, started: Instant) -> Self {
        Self {
            span,
            started,
            status: None,
            request_bytes: None,
            duration: None,
            sent: 0,
            complete: false,
        }
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed();
        if let Some(duration) = &self.duration {
            duration.observe(elapsed.as_secs_f64());
        }
        let (status, request_bytes, response_bytes, complete) =
            (self.status, self.request_bytes, self.sent, self.complete);
        self.span.in_scope(|| {
            tracing::info!(
                status,
                request_bytes,
                response_bytes,
                complete,
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                "request finished"
            )
        });
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts what it yields and runs `Finish` at its end.
    pub struct ObservedBody<B> {
        #[pin]
        inner: B,
        finish: Option<Finish>,
        // Dropped with the body, after actix-http has decided on the connection's fate (see
        // `held_payload::hold_payload`).
        payload: Option<HeldPayload>,
    }
}

impl<B> ObservedBody<B> {
    pub fn new(inner: B, finish: Finish, payload: Option<HeldPayload>) -> Self {
        Self {
            inner,
            finish: Some(finish),
            payload,
        }
    }
}

impl<B: MessageBody> MessageBody for ObservedBody<B> {
    type Error = B::Error;

    fn size(&self) -> BodySize {
        self.inner.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_next(cx);
        match &polled {
            Poll::Ready(Some(Ok(chunk))) => {
                if let Some(finish) = this.finish.as_mut() {
                    finish.sent += chunk.len() as u64;
                }
            }
            Poll::Ready(None) => {
                if let Some(mut finish) = this.finish.take() {
                    finish.complete = true;
                }
            }
            _ => {}
        }
        polled
    }
}
