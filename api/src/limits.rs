//! Bounds on what clients can make one process spend: writes per caller, long polls held at
//! once, time per request, body size. Past a bound the answer is a problem+json, never
//! unbounded memory.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use tokio::sync::OwnedSemaphorePermit;

use crate::error::{ApiError, ApiResult};
use crate::lingering::Linger;
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
    /// Writes per caller; `None`: unlimited.
    pub writes: Option<Arc<WriteLimit>>,
    /// How much of a body left unread is discarded before its connection closes.
    pub linger: Linger,
}

/// A token bucket per caller for writes: by the token's `sub` when requests are
/// authenticated, else by the peer's address.
#[derive(Debug)]
pub struct WriteLimit {
    limiter: DefaultKeyedRateLimiter<Key>,
    /// Writes checked, for sweeping forgotten callers every [`SWEEP_EVERY`] of them.
    checked: AtomicU64,
}

/// How many writes pass between two looks for callers to forget (a power of two).
const SWEEP_EVERY: u64 = 4_096;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Caller(String),
    Peer(IpAddr),
}

impl WriteLimit {
    /// `per_second` writes a second per caller, in bursts of up to `burst`.
    pub fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        let limiter = DefaultKeyedRateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst));
        Self { limiter, checked: AtomicU64::new(0) }
    }

    /// How long the caller `key` must wait before its next write; `None`: it may write now.
    fn wait(&self, key: &Key) -> Option<Duration> {
        // Callers that have refilled their bucket are forgotten now and then (a look at every
        // key, so not on every write).
        if self.checked.fetch_add(1, Ordering::Relaxed) & (SWEEP_EVERY - 1) == 0 && self.limiter.len() > 10_000 {
            self.limiter.retain_recent();
        }
        self.limiter.check_key(key).err().map(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

impl Limits {
    /// `long_polls` waiting requests at most, `request_timeout` per request, bodies up to
    /// `body_bytes`.
    pub fn new(long_polls: usize, request_timeout: Duration, body_bytes: usize) -> Self {
        Self {
            long_polls: Arc::new(tokio::sync::Semaphore::new(long_polls)),
            request_timeout,
            body_bytes,
            writes: None,
            linger: Linger::default(),
        }
    }

    /// With a per-caller limit on writes.
    pub fn with_writes(self, writes: WriteLimit) -> Self {
        Self { writes: Some(Arc::new(writes)), ..self }
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

/// Refuses a write past its caller's rate with 429 and `Retry-After`. Runs within the
/// authentication, so an authenticated caller is counted by its `sub`.
pub async fn rate_limit(State(limits): State<Limits>, request: Request, next: Next) -> Response {
    let Some(writes) = limits.writes.as_deref() else { return next.run(request).await };
    if matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(request).await;
    }
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let key = match (event_store::caller::current(), peer) {
        (Some(sub), _) => Key::Caller(sub),
        (None, Some(ip)) => Key::Peer(ip),
        // No address known (an in-process call): nothing to count by.
        (None, None) => return next.run(request).await,
    };
    match writes.wait(&key) {
        None => next.run(request).await,
        Some(wait) => {
            metrics::counter!("sagaflow_rate_limited_total").increment(1);
            ApiError::TooManyRequests { retry_after_secs: wait.as_secs().max(1) }.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_request_past_the_timeout_is_answered_busy_and_a_quick_one_is_not() {
        let limits = Limits::new(10, Duration::from_millis(100), 1024);
        let app = Router::new()
            .route("/slow", get(|| tokio::time::sleep(Duration::from_secs(5))))
            .route("/quick", get(|| async { "done" }))
            .layer(axum::middleware::from_fn_with_state(limits, request_timeout));
        let call = |path: &'static str| {
            let app = app.clone();
            async move { app.oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap() }
        };
        let slow = call("/slow").await;
        assert_eq!(slow.status(), 503);
        assert_eq!(slow.headers()["content-type"], "application/problem+json");
        assert!(slow.headers().contains_key("retry-after"));
        assert_eq!(call("/quick").await.status(), 200);
    }
}
