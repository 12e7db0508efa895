//! Long polling (`?wait=<seconds>`): hold a request until a resource is terminal, waking
//! on the store's commit notifications rather than polling in a loop.

use std::future::Future;
use std::time::Duration;

use event_store::EventStore;
use serde::Deserialize;

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
    /// The wait as a duration, or a 400 when it is too long.
    pub fn duration(&self) -> ApiResult<Duration> {
        match self.wait {
            Some(s) if s > MAX_WAIT_SECS => {
                Err(ApiError::BadRequest(format!("wait may be at most {MAX_WAIT_SECS} seconds")))
            }
            Some(s) => Ok(Duration::from_secs(s)),
            None => Ok(Duration::ZERO),
        }
    }
}

/// Calls `read` until it reports a terminal value or `wait` passes; returns the last value.
pub async fn until_terminal<T, F, Fut>(store: &dyn EventStore, wait: Duration, mut read: F) -> ApiResult<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ApiResult<(T, bool)>>,
{
    let deadline = tokio::time::Instant::now() + wait;
    let mut changes = store.changes();
    loop {
        changes.borrow_and_update();
        let (value, terminal) = read().await?;
        if terminal || tokio::time::Instant::now() >= deadline {
            return Ok(value);
        }
        tokio::select! {
            _ = changes.changed() => {}
            () = tokio::time::sleep_until(deadline) => {}
        }
    }
}
