//! Long polling (`?wait=<seconds>`): hold a request until a resource is terminal, waking
//! on commits to the resource's own streams only, rather than polling or waking on every
//! commit.

use std::future::Future;
use std::time::Duration;

use event_store::{EventStore, StreamWatch};
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

/// A re-read this often even without a commit signal: a backstop for a lost notice.
const BACKSTOP: Duration = Duration::from_secs(2);

/// Calls `read` until it reports a terminal value or `wait` passes, re-reading after each
/// commit to one of `streams`; returns the last value.
pub async fn until_terminal<T, F, Fut>(
    store: &dyn EventStore,
    streams: &[String],
    wait: Duration,
    mut read: F,
) -> ApiResult<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ApiResult<(T, bool)>>,
{
    let deadline = tokio::time::Instant::now() + wait;
    let mut watches: Vec<StreamWatch> =
        if wait.is_zero() { Vec::new() } else { streams.iter().map(|s| store.stream_changes(s)).collect() };
    loop {
        watches.iter_mut().for_each(StreamWatch::mark_seen);
        let (value, terminal) = read().await?;
        if terminal || tokio::time::Instant::now() >= deadline {
            return Ok(value);
        }
        let any_change = futures::future::select_all(watches.iter_mut().map(|w| Box::pin(w.changed())));
        tokio::select! {
            _ = any_change => {}
            () = tokio::time::sleep(BACKSTOP) => {}
            () = tokio::time::sleep_until(deadline) => {}
        }
    }
}
