//! Bounds on what clients can make one process spend: long polls held at once, time per
//! request, body size. Past a bound the answer is a problem+json, never unbounded memory.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::OwnedSemaphorePermit;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Bounds that keep one process's memory and time in hand whatever its clients do.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Long polls (`?wait`) served at once; past it, 503 with `Retry-After`.
    pub long_polls: Arc<tokio::sync::Semaphore>,
    /// The longest a request may take; a long poll ends a second before it.
    pub request_timeout: Duration,
    /// The largest request body (413 past it).
    pub body_bytes: usize,
}

impl Limits {
    /// `long_polls` waiting requests at most, `request_timeout` per request, bodies up to
    /// `body_bytes`.
    pub fn new(long_polls: usize, request_timeout: Duration, body_bytes: usize) -> Self {
        Self { long_polls: Arc::new(tokio::sync::Semaphore::new(long_polls)), request_timeout, body_bytes }
    }
}

impl Default for Limits {
    /// 1,000 long polls, 40 s a request (room for a 30 s wait), 1 MiB bodies.
    fn default() -> Self {
        Self::new(1_000, Duration::from_secs(40), 1024 * 1024)
    }
}

/// Holds a place among the long polls a process serves at once; `None` when the request
/// does not wait.
pub fn long_poll_place(state: &AppState, wait: Duration) -> ApiResult<Option<OwnedSemaphorePermit>> {
    if wait.is_zero() {
        return Ok(None);
    }
    Arc::clone(&state.limits.long_polls).try_acquire_owned().map(Some).map_err(|_| {
        metrics::counter!("sagaflow_long_polls_refused_total").increment(1);
        ApiError::Busy("too many requests are waiting (`?wait`) already; try again, or ask without waiting".into())
    })
}

/// Ends a request that takes longer than the request timeout with a 503 `busy`.
pub async fn request_timeout(State(limits): State<Limits>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limits.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            metrics::counter!("sagaflow_requests_timed_out_total").increment(1);
            ApiError::Busy(format!("the request took longer than {:?}", limits.request_timeout)).into_response()
        }
    }
}
