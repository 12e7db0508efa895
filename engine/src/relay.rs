//! The outbox relay: publishes committed outbox messages to the transport, in order,
//! and marks them published. Several relays may run; leases keep them from publishing
//! the same message at the same time.

use std::sync::Arc;
use std::time::Duration;

use event_store::{EventStore, OutboxMessage};
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::transport::Transport;

/// Moves messages from the store's outbox to the transport.
pub struct OutboxRelay {
    store: Arc<dyn EventStore>,
    transport: Arc<dyn Transport>,
    relay_id: String,
    batch: usize,
    lease: Duration,
    idle_poll: Duration,
}

impl OutboxRelay {
    /// A relay with a unique id, batches of 200 and 30 s leases.
    pub fn new(store: Arc<dyn EventStore>, transport: Arc<dyn Transport>) -> Self {
        Self {
            store,
            transport,
            relay_id: format!("relay-{}", uuid::Uuid::now_v7()),
            batch: 200,
            lease: Duration::from_secs(30),
            idle_poll: Duration::from_millis(250),
        }
    }

    /// Publishes one batch; returns how many messages it published.
    pub async fn publish_batch(&self) -> Result<usize> {
        let claimed = self.store.claim_outbox(&self.relay_id, self.batch, self.lease).await?;
        self.publish_claimed(&claimed).await
    }

    async fn publish_claimed(&self, claimed: &[OutboxMessage]) -> Result<usize> {
        if claimed.is_empty() {
            return Ok(0);
        }
        let messages: Vec<_> = claimed.iter().map(|m| m.message.clone()).collect();
        self.transport.publish(&messages).await?;
        let ids: Vec<u64> = claimed.iter().map(|m| m.id).collect();
        self.store.mark_published(&self.relay_id, &ids).await?;
        Ok(ids.len())
    }

    async fn report_pending(&self) {
        if let Ok(pending) = self.store.outbox_pending().await {
            #[allow(clippy::cast_precision_loss)]
            metrics::gauge!("sagaflow_outbox_pending").set(pending as f64);
        }
    }

    /// Publishes until the outbox is empty (or an error stops it).
    pub async fn flush(&self) -> Result<usize> {
        let mut total = 0;
        loop {
            let n = self.publish_batch().await?;
            total += n;
            if n == 0 {
                return Ok(total);
            }
        }
    }

    /// Runs until cancelled, then flushes what is left.
    pub async fn run(self, cancel: CancellationToken) {
        let mut changes = self.store.changes();
        let mut failures = 0_u32;
        tracing::info!(relay = %self.relay_id, transport = self.transport.name(), "outbox relay started");
        // A batch that failed to publish is retried before anything newer is claimed,
        // so one saga's messages keep their order.
        let mut unpublished: Vec<OutboxMessage> = Vec::new();
        while !cancel.is_cancelled() {
            changes.borrow_and_update();
            let result = if unpublished.is_empty() {
                match self.store.claim_outbox(&self.relay_id, self.batch, self.lease).await {
                    Ok(claimed) => {
                        unpublished = claimed;
                        self.publish_claimed(&unpublished).await
                    }
                    Err(e) => Err(e.into()),
                }
            } else {
                self.publish_claimed(&unpublished).await
            };
            match result {
                Ok(n) => {
                    unpublished.clear();
                    failures = 0;
                    if n == self.batch {
                        continue;
                    }
                    self.report_pending().await;
                }
                Err(err) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(relay = %self.relay_id, error = %err, failures, "outbox relay could not publish; will retry");
                }
            }
            let wait =
                if failures == 0 { self.idle_poll } else { Duration::from_millis(200 * u64::from(failures.min(25))) };
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = changes.changed(), if failures == 0 => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
        match tokio::time::timeout(Duration::from_secs(10), self.flush()).await {
            Ok(Ok(n)) => tracing::info!(relay = %self.relay_id, flushed = n, "outbox relay stopped"),
            Ok(Err(err)) => {
                tracing::warn!(relay = %self.relay_id, error = %err, "outbox relay stopped before the outbox was empty")
            }
            Err(_) => tracing::warn!(relay = %self.relay_id, "outbox relay flush timed out"),
        }
    }
}
