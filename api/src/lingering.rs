//! Lingering close for request bodies: a request answered before its body was read whole (a
//! 413 past the body limit, a 401, any early refusal) has the rest of its body read and
//! discarded in the background, within bounds, before the connection may close. Without it,
//! a client that writes its whole body before it reads the answer (Python's `urllib`, most
//! simple clients) sees a reset while still writing, and never the answer: closing a socket
//! with unread input makes the kernel send RST. nginx calls this a lingering close.
//!
//! The bounds keep it from being abused: bytes and time per request, and requests lingering
//! at once. Past them the connection closes as before.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::header::EXPECT;
use axum::middleware::Next;
use axum::response::Response;
use futures::StreamExt;
use http_body::{Frame, SizeHint};
use tokio::sync::Semaphore;

/// How much of the bodies left unread one process discards before it closes their connections.
#[derive(Debug, Clone)]
pub struct Linger {
    /// Bytes discarded per request at most.
    pub bytes: u64,
    /// Time spent discarding per request at most.
    pub time: Duration,
    /// Requests discarding at once; others close at once.
    slots: Arc<Semaphore>,
}

impl Linger {
    /// Up to `bytes` and `time` per request, `at_once` requests at a time.
    pub fn new(bytes: u64, time: Duration, at_once: usize) -> Self {
        Self { bytes, time, slots: Arc::new(Semaphore::new(at_once)) }
    }
}

impl Default for Linger {
    /// 16 MiB and 5 s per request, 64 requests at once.
    fn default() -> Self {
        Self::new(16 * 1024 * 1024, Duration::from_secs(5), 64)
    }
}

/// Wraps the request body so that whatever a handler leaves unread is discarded, within
/// `linger`'s bounds, instead of resetting the connection.
pub async fn linger(State(linger): State<Linger>, request: Request, next: Next) -> Response {
    // A client that waits for `100 Continue` sends no body when answered first: nothing to read,
    // and what it sends next is its next request.
    if request.headers().contains_key(EXPECT) || request.body().is_end_stream() {
        return next.run(request).await;
    }
    let request = request.map(|body| Body::new(DiscardOnDrop { body: Some(body), linger }));
    next.run(request).await
}

/// A request body that, dropped before its end, reads the rest in a task of its own.
struct DiscardOnDrop {
    body: Option<Body>,
    linger: Linger,
}

impl HttpBody for DiscardOnDrop {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        match self.get_mut().body.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body.as_ref().map(HttpBody::size_hint).unwrap_or_default()
    }
}

impl Drop for DiscardOnDrop {
    fn drop(&mut self) {
        let Some(body) = self.body.take().filter(|b| !b.is_end_stream()) else { return };
        let Ok(slot) = Arc::clone(&self.linger.slots).try_acquire_owned() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (limit, time) = (self.linger.bytes, self.linger.time);
        runtime.spawn(async move {
            let _slot = slot;
            let mut data = body.into_data_stream();
            let mut discarded = 0_u64;
            let read = async {
                while let Some(Ok(chunk)) = data.next().await {
                    discarded += chunk.len() as u64;
                    if discarded > limit {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(time, read).await;
            metrics::counter!("sagaflow_http_body_bytes_discarded_total").increment(discarded);
        });
    }
}
