//! Streamed reads from object storage. A download of 37 MiB to a phone on a slow link can
//! take many minutes, so a streamed GET must not carry a whole-request deadline (that cut
//! downloads off after a minute); it gets a connect timeout and an idle timeout instead:
//! the transport's read timeout, and `ReadIdle` on the body stream here.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use object_store::ClientOptions;
use tokio::time::{Instant, Sleep};

use super::error::StorageError;

/// Client options for streamed GETs: connect and read (idle) timeouts, no total deadline.
pub(super) fn read_client(
    connect_timeout: Duration,
    idle_timeout: Duration,
    allow_http: bool,
) -> ClientOptions {
    ClientOptions::new()
        .with_connect_timeout(connect_timeout)
        .with_timeout_disabled()
        .with_read_timeout(idle_timeout)
        .with_allow_http(allow_http)
}

/// A body stream that fails when the next chunk takes longer than `idle` to arrive. Only
/// time spent waiting on storage counts: while the client is slow to take what it has,
/// the stream is not polled and no clock runs.
pub struct ReadIdle<S> {
    inner: S,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
    waiting: bool,
    ended: bool,
}

impl<S> ReadIdle<S> {
    pub fn new(inner: S, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            waiting: false,
            ended: false,
        }
    }
}

impl<S> Stream for ReadIdle<S>
where
    S: Stream<Item = Result<Bytes, StorageError>> + Unpin,
{
    type Item = Result<Bytes, StorageError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        if !this.waiting {
            this.waiting = true;
            let deadline = Instant::now() + this.idle;
            this.timer.as_mut().reset(deadline);
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(item) => {
                this.waiting = false;
                this.ended = !matches!(item, Some(Ok(_)));
                Poll::Ready(item)
            }
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.ended = true;
                    let stalled = std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("object storage sent nothing for {:?}", this.idle),
                    );
                    Poll::Ready(Some(Err(StorageError::from(
                        object_store::Error::Generic {
                            store: "storage read",
                            source: Box::new(stalled),
                        },
                    ))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn a_stalled_read_fails_after_the_idle_timeout() {
        let body = futures_util::stream::iter([Ok(Bytes::from_static(b"a"))])
            .chain(futures_util::stream::pending());
        let mut read = ReadIdle::new(Box::pin(body), Duration::from_millis(200));
        assert!(read.next().await.unwrap().is_ok());
        // A slow client: the stream is not polled for longer than the timeout.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = Instant::now();
        assert!(read.next().await.unwrap().is_err());
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
        assert!(read.next().await.is_none());
    }
}
