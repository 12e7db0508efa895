//! Fires stored timers (step deadlines and retry backoffs). Timers live in the event
//! store, so they survive restarts; several coordinators may run this loop, and
//! optimistic concurrency on the saga stream keeps one decision per timer.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use event_store::EventStore;
use tokio_util::sync::CancellationToken;

use crate::coordinator::Coordinator;

/// Polls for due timers every `poll` until cancelled.
pub async fn run_timeouts(
    coordinator: Arc<Coordinator>,
    store: Arc<dyn EventStore>,
    poll: Duration,
    cancel: CancellationToken,
) {
    tracing::info!("timeout scanner started");
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(poll) => {}
        }
        let due = match store.due_timers(Utc::now(), 200).await {
            Ok(due) => due,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read due timers");
                continue;
            }
        };
        for timer in due {
            if cancel.is_cancelled() {
                break;
            }
            if let Err(err) = coordinator.fire_timer(&timer.key, Utc::now()).await {
                tracing::warn!(saga_id = %timer.key, error = %err, "cannot handle due timer; will retry");
            }
        }
    }
    tracing::info!("timeout scanner stopped");
}
