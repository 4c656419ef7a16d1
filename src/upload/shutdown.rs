//! The shutdown cut-off: when a stop begins, its plan says when uploads still streaming
//! are cut off (and rolled back) and when the process must be gone.

use tokio::sync::watch;
use tokio::time::Instant;

use crate::domain::ApiError;

/// The instants of a stop that has begun.
#[derive(Debug, Clone, Copy)]
pub struct StopPlan {
    /// Uploads still streaming are cut off and rolled back.
    pub cut_requests_at: Instant,
    /// The process has stopped, clean-ups included.
    pub deadline: Instant,
}

/// `None` until a stop begins, then its plan.
pub type StopSignal = watch::Receiver<Option<StopPlan>>;

/// The plan of the stop, once one has begun.
pub async fn wait_for_plan(signal: &mut StopSignal) -> StopPlan {
    loop {
        if let Some(plan) = *signal.borrow_and_update() {
            return plan;
        }
        if signal.changed().await.is_err() {
            // The sender is gone: no stop will ever be planned.
            std::future::pending::<()>().await;
        }
    }
}

/// Ends `body` with `ShuttingDown` at the instant a stop cuts requests off.
pub fn cut_off_at_stop<S, E>(
    body: S,
    stop: StopSignal,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, ApiError>> + Unpin
where
    S: futures_util::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    E: Into<ApiError>,
{
    use futures_util::StreamExt;
    Box::pin(futures_util::stream::unfold(
        Some((body, stop)),
        |state| async move {
            let (mut body, mut stop) = state?;
            let cut = async {
                let plan = wait_for_plan(&mut stop).await;
                tokio::time::sleep_until(plan.cut_requests_at).await;
            };
            tokio::select! {
                chunk = body.next() => {
                    let chunk = chunk?;
                    Some((chunk.map_err(Into::into), Some((body, stop))))
                }
                () = cut => Some((Err(ApiError::ShuttingDown), None)),
            }
        },
    ))
}
