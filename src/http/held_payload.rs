//! The request's payload held for the length of the response (see [`HeldPayload`]).

use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use actix_web::dev::{Payload, ServiceRequest};
use actix_web::error::PayloadError;
use actix_web::HttpMessage;
use bytes::Bytes;
use futures_util::Stream;

/// The request's payload, held by the response until it is sent. actix-http closes the
/// connection after an answer whose request body is unread and still held; a payload the
/// handler dropped it would instead drain for as long as the client keeps sending (a
/// chunked body has no end in sight), holding the connection. So every answer to a request
/// whose body was not read to the end closes its connection, after a short linger.
pub struct HeldPayload(#[allow(dead_code)] Rc<RefCell<Payload>>);

/// The handler's view of a held payload.
struct SharedPayload(Rc<RefCell<Payload>>);

impl Stream for SharedPayload {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_next(cx)
    }
}

/// Takes the request's payload (if it has one) and gives the handler a view of it; the
/// returned hold keeps it alive for the response.
pub fn hold_payload(req: &mut ServiceRequest) -> Option<HeldPayload> {
    let payload = req.take_payload();
    if matches!(payload, Payload::None) {
        return None;
    }
    let shared = Rc::new(RefCell::new(payload));
    req.set_payload(Payload::Stream {
        payload: Box::pin(SharedPayload(shared.clone())),
    });
    Some(HeldPayload(shared))
}
