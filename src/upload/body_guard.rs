//! The stall guard of a request body: it ends a body whose client stalls or trickles.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use tokio::time::{Instant, Sleep};

use crate::domain::ApiError;

/// How slow a request body may be.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// Longest wait for the next bytes of the body.
    pub idle_timeout: Duration,
    /// Lowest rate, in bytes a second of time spent waiting for the client, over the last
    /// `min_rate_window`; 0 turns the check off.
    pub min_rate_bytes_per_sec: u64,
    /// Waiting time granted before the rate is checked (a slow start, a mobile radio waking).
    pub min_rate_grace: Duration,
    /// The stretch of waiting time the rate is judged over: what the client sent in the last
    /// window, not since the start, so bytes sent fast at first do not buy a trickle time.
    pub min_rate_window: Duration,
}

/// A request body that ends with `ApiError::BodyTimeout` when the client stalls longer than
/// the idle timeout or falls below the minimum rate. Only time spent waiting for the client
/// counts: while the upload is busy with storage the body is not read, and that is not the
/// client's fault.
pub struct BodyGuard<S> {
    inner: S,
    limits: BodyLimits,
    received: u64,
    /// Time spent waiting for the client in completed waits.
    waited: Duration,
    /// (waiting time, bytes received by then) of the last window, in steps of at most a
    /// sixteenth of it: whatever the client's chunking, at most 18 of them.
    arrivals: VecDeque<(Duration, u64)>,
    /// When the current wait started, and why it will end if nothing arrives.
    waiting: Option<(Instant, &'static str)>,
    timer: Pin<Box<Sleep>>,
    ended: bool,
}

impl<S> BodyGuard<S> {
    pub fn new(inner: S, limits: BodyLimits) -> Self {
        Self {
            inner,
            limits,
            received: 0,
            waited: Duration::ZERO,
            arrivals: VecDeque::new(),
            waiting: None,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            ended: false,
        }
    }

    /// Records the bytes received so far at the current waiting time, and forgets the steps
    /// that left the window (keeping the last one before it: the count at its start).
    fn arrived(&mut self) {
        if self.limits.min_rate_bytes_per_sec == 0 {
            return;
        }
        let window = self.limits.min_rate_window;
        match self.arrivals.back_mut() {
            Some((at, received)) if self.waited.saturating_sub(*at) < window / 16 => {
                *received = self.received;
            }
            _ => self.arrivals.push_back((self.waited, self.received)),
        }
        let start = self.waited.saturating_sub(window);
        while self.arrivals.get(1).is_some_and(|(at, _)| *at <= start) {
            self.arrivals.pop_front();
        }
    }

    /// How long the next wait may last, and the answer's explanation when it runs out.
    fn allowed_wait(&self) -> (Duration, &'static str) {
        let idle = (
            self.limits.idle_timeout,
            "no bytes of the body arrived within the idle timeout",
        );
        if self.limits.min_rate_bytes_per_sec == 0 {
            return idle;
        }
        // Without more bytes, the body falls below the rate once what it sent in the window
        // behind the waiting-time clock drops under a window's worth (15/16 of it: the steps
        // of `arrivals` date bytes up to a sixteenth of a window early); never before the
        // grace period ends. Before a whole window has passed, the average since the start
        // counts.
        let window = self.limits.min_rate_window;
        let needed =
            (self.limits.min_rate_bytes_per_sec as f64 * window.as_secs_f64() * 15.0 / 16.0) as u64;
        let below_from = match self.received.checked_sub(needed) {
            // The first step after which the bytes still in the window are too few.
            Some(floor) => self
                .arrivals
                .iter()
                .find(|(_, received)| *received > floor)
                .map_or(Duration::MAX, |(at, _)| *at + window),
            // Fewer bytes than a window's worth in all: as if the client had kept the rate
            // before its first byte, the body is below once its bytes are worth less than
            // the time it has waited (the average since the start, until a window passed).
            None => Duration::from_secs_f64(
                self.received as f64 / (self.limits.min_rate_bytes_per_sec as f64 * 15.0 / 16.0),
            ),
        };
        let left = below_from
            .max(self.limits.min_rate_grace)
            .saturating_sub(self.waited);
        if left < idle.0 {
            (left, "the body arrived slower than the minimum rate")
        } else {
            idle
        }
    }
}

impl<S, E> Stream for BodyGuard<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Into<ApiError>,
{
    type Item = Result<Bytes, ApiError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        if this.waiting.is_none() {
            let (allowed, reason) = this.allowed_wait();
            let now = Instant::now();
            this.waiting = Some((now, reason));
            this.timer.as_mut().reset(now + allowed);
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                if let Some((since, _)) = this.waiting.take() {
                    this.waited += since.elapsed();
                }
                this.received += chunk.len() as u64;
                this.arrived();
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(err))) => {
                this.ended = true;
                Poll::Ready(Some(Err(err.into())))
            }
            Poll::Ready(None) => {
                this.ended = true;
                Poll::Ready(None)
            }
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.ended = true;
                    let reason = this.waiting.map_or("the body stalled", |(_, r)| r);
                    Poll::Ready(Some(Err(ApiError::BodyTimeout(reason.to_owned()))))
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

    fn limits(idle_ms: u64, rate: u64, grace_ms: u64) -> BodyLimits {
        BodyLimits {
            idle_timeout: Duration::from_millis(idle_ms),
            min_rate_bytes_per_sec: rate,
            min_rate_grace: Duration::from_millis(grace_ms),
            min_rate_window: Duration::from_millis(grace_ms.max(100)),
        }
    }

    #[tokio::test]
    async fn a_stalled_body_times_out() {
        let body = futures_util::stream::iter([Ok::<_, ApiError>(Bytes::from_static(b"x"))])
            .chain(futures_util::stream::pending());
        let mut guarded = BodyGuard::new(Box::pin(body), limits(200, 0, 0));
        assert!(guarded.next().await.unwrap().is_ok());
        let started = Instant::now();
        let err = guarded.next().await.unwrap().unwrap_err();
        assert!(matches!(err, ApiError::BodyTimeout(_)), "{err:?}");
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
        assert!(guarded.next().await.is_none());
    }

    #[tokio::test]
    async fn a_trickle_below_the_rate_times_out_after_the_grace() {
        // One byte every 10 ms is 100 bytes a second, under the 1000 required.
        let body = futures_util::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Some((Ok::<_, ApiError>(Bytes::from_static(b"x")), ()))
        });
        let mut guarded = BodyGuard::new(Box::pin(body), limits(30_000, 1000, 300));
        let started = Instant::now();
        let mut received = 0;
        let err = loop {
            match guarded.next().await.unwrap() {
                Ok(chunk) => received += chunk.len(),
                Err(err) => break err,
            }
        };
        assert!(matches!(err, ApiError::BodyTimeout(_)), "{err:?}");
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(300),
            "{elapsed:?} {received}"
        );
        assert!(elapsed < Duration::from_secs(5), "{elapsed:?} {received}");
    }

    #[tokio::test]
    async fn a_fast_start_does_not_buy_a_trickle_time() {
        // 100 KB at once, then 100 bytes a second where 1000 are asked for.
        let start =
            futures_util::stream::iter([Ok::<_, ApiError>(Bytes::from(vec![1u8; 100_000]))]);
        let trickle = futures_util::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Some((Ok::<_, ApiError>(Bytes::from_static(b"x")), ()))
        });
        let mut guarded = BodyGuard::new(Box::pin(start.chain(trickle)), limits(30_000, 1000, 300));
        let started = Instant::now();
        let err = loop {
            if let Err(err) = guarded.next().await.unwrap() {
                break err;
            }
        };
        assert!(matches!(err, ApiError::BodyTimeout(_)), "{err:?}");
        let elapsed = started.elapsed();
        // Grace (300 ms) + window (300 ms), and slack for a loaded machine.
        assert!(elapsed < Duration::from_millis(1500), "{elapsed:?}");
    }

    #[tokio::test]
    async fn a_body_above_the_rate_from_its_start_goes_on_before_a_window_passed() {
        // 1500 bytes a second, a grace of 100 ms and a window of 2 s: before the first
        // window is over, the body has not sent a window's worth, and that is no fault.
        let body = futures_util::stream::unfold(0, |n| async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            (n < 100).then(|| (Ok::<_, ApiError>(Bytes::from_static(&[7; 15])), n + 1))
        });
        let mut limits = limits(30_000, 1000, 100);
        limits.min_rate_window = Duration::from_secs(2);
        let mut guarded = BodyGuard::new(Box::pin(body), limits);
        let mut received = 0;
        while let Some(chunk) = guarded.next().await {
            received += chunk.unwrap().len();
        }
        assert_eq!(received, 1500);
    }

    #[tokio::test]
    async fn a_body_at_the_rate_goes_on() {
        // 20 bytes every 10 ms: 2000 bytes a second, twice the rate, in many small chunks.
        let body = futures_util::stream::unfold(0, |n| async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            (n < 150).then(|| (Ok::<_, ApiError>(Bytes::from_static(&[7; 20])), n + 1))
        });
        let mut guarded = BodyGuard::new(Box::pin(body), limits(30_000, 1000, 100));
        let mut received = 0;
        while let Some(chunk) = guarded.next().await {
            received += chunk.unwrap().len();
        }
        assert_eq!(received, 3000);
        assert!(guarded.arrivals.len() <= 18, "{}", guarded.arrivals.len());
    }

    #[tokio::test]
    async fn time_the_upload_spends_elsewhere_is_not_the_clients() {
        let body = futures_util::stream::iter([
            Ok::<_, ApiError>(Bytes::from_static(b"x")),
            Ok(Bytes::from_static(b"y")),
        ]);
        let mut guarded = BodyGuard::new(body, limits(100, 0, 0));
        assert!(guarded.next().await.unwrap().is_ok());
        // Storage is slow: the body is not read for longer than the idle timeout.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(&guarded.next().await.unwrap().unwrap()[..], b"y");
        assert!(guarded.next().await.is_none());
    }
}
