//! Long polling (`?wait=<seconds>`): hold a request until a resource is terminal, waking
//! on commits to the resource's own streams only, rather than polling or waking on every
//! commit.

use std::time::Duration;

use engine::coordinator::{saga_stream, Coordinator, SagaView};
use event_store::{EventStore, StreamWatch};
use serde::Deserialize;
use tokio::time::Instant;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};

/// The longest a request may wait.
pub const MAX_WAIT_SECS: u64 = 30;

/// `?wait=<seconds>`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
pub struct WaitQuery {
    /// Seconds (at most 30) to hold the request until the resource is terminal.
    pub wait: Option<u64>,
}

impl WaitQuery {
    /// The wait as a duration, or a 400 when it is too long. A wait never runs into the
    /// request timeout: it ends a second before it, with the resource as it is then.
    pub fn duration(&self, limits: &crate::limits::Limits) -> ApiResult<Duration> {
        let most = limits.request_timeout.saturating_sub(Duration::from_secs(1));
        match self.wait {
            Some(s) if s > MAX_WAIT_SECS => {
                Err(ApiError::BadRequest(format!("wait may be at most {MAX_WAIT_SECS} seconds")))
            }
            Some(s) => Ok(Duration::from_secs(s).min(most)),
            None => Ok(Duration::ZERO),
        }
    }
}

/// A re-check this often even without a commit signal: a backstop for a lost notice.
const BACKSTOP: Duration = Duration::from_secs(2);

/// Follows saga `saga_id` from `view` until it is terminal or `wait` passes. After each commit
/// to its stream it takes the saga's state from memory when this process made the decision
/// (the coordinator holds it), and reads only the new events otherwise. Orders are terminal
/// when their saga is.
pub async fn until_saga_terminal(
    store: &dyn EventStore,
    coordinator: &Coordinator,
    saga_id: Uuid,
    view: &mut SagaView,
    wait: Duration,
) -> ApiResult<()> {
    let deadline = Instant::now() + wait;
    let mut changes = store.stream_changes(&saga_stream(saga_id));
    loop {
        changes.mark_seen();
        match coordinator.in_memory(saga_id) {
            Some(latest) if latest.version > view.version => *view = SagaView::clone(&latest),
            _ => coordinator.refresh(saga_id, view).await?,
        }
        if view.state.status.is_terminal() || Instant::now() >= deadline {
            return Ok(());
        }
        next_change(&mut changes, deadline).await;
    }
}

/// Waits for the next commit to the watched stream, the backstop, or the deadline.
pub async fn next_change(changes: &mut StreamWatch, deadline: Instant) {
    tokio::select! {
        () = changes.changed() => {}
        () = tokio::time::sleep(BACKSTOP) => {}
        () = tokio::time::sleep_until(deadline) => {}
    }
}
