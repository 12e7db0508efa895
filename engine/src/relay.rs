//! The outbox relay: publishes committed outbox messages to the transport, in order,
//! and marks them published. Several relays may run; leases keep them from publishing
//! the same message at the same time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use event_store::{EventStore, OutboxMessage, OutgoingMessage};
use tokio_util::sync::CancellationToken;

use crate::envelope::{HEADER_DLQ_REASON, HEADER_DLQ_SOURCE};
use crate::error::Result;
use crate::transport::Transport;

/// After this many failed tries of one batch, while the transport answers, the relay looks
/// for the message that cannot be published.
const POISON_AFTER_FAILURES: u32 = 5;

/// Moves messages from the store's outbox to the transport.
pub struct OutboxRelay {
    store: Arc<dyn EventStore>,
    transport: Arc<dyn Transport>,
    relay_id: String,
    batch: usize,
    lease: Duration,
    idle_poll: Duration,
    dead_letter_topic: Option<String>,
}

impl OutboxRelay {
    /// A relay with a unique id, batches of 200 and leases (2 min) longer than a publish may take.
    pub fn new(store: Arc<dyn EventStore>, transport: Arc<dyn Transport>) -> Self {
        Self {
            store,
            transport,
            relay_id: format!("relay-{}", uuid::Uuid::now_v7()),
            batch: 200,
            lease: Duration::from_secs(120),
            idle_poll: Duration::from_millis(250),
            dead_letter_topic: None,
        }
    }

    /// Uses a stable relay id. Only for a relay that is alone on its store (the embedded
    /// mode): after a crash, its successor takes over its claims at once.
    #[must_use]
    pub fn with_id(mut self, relay_id: String) -> Self {
        self.relay_id = relay_id;
        self
    }

    /// Where a message that cannot be published at all is reported instead.
    #[must_use]
    pub fn with_dead_letter_topic(mut self, topic: String) -> Self {
        self.dead_letter_topic = Some(topic);
        self
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

    /// Publishes a failing batch message by message; a message that fails alone while the
    /// transport answers is replaced by a dead-letter record (its row stays in the outbox).
    async fn isolate_poison(&self, claimed: &[OutboxMessage]) -> Result<usize> {
        self.transport.ping().await?;
        let Some(dead_letter_topic) = &self.dead_letter_topic else {
            return self.publish_claimed(claimed).await;
        };
        for message in claimed {
            if let Err(err) = self.publish_claimed(std::slice::from_ref(message)).await {
                tracing::error!(relay = %self.relay_id, outbox_id = message.id, topic = %message.message.topic, error = %err,
                    "outbox message cannot be published; dead-lettering a record of it");
                let record = OutgoingMessage {
                    topic: dead_letter_topic.clone(),
                    key: message.message.key.clone(),
                    payload: Vec::new(),
                    headers: BTreeMap::from([
                        (
                            HEADER_DLQ_REASON.to_owned(),
                            format!("cannot publish ({} bytes): {err}", message.message.payload.len()),
                        ),
                        (HEADER_DLQ_SOURCE.to_owned(), format!("outbox:{}:{}", message.id, message.message.topic)),
                    ]),
                };
                self.transport.publish(&[record]).await?;
                self.store.mark_published(&self.relay_id, &[message.id]).await?;
            }
        }
        Ok(claimed.len())
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

    async fn step(&self, unpublished: &mut Vec<OutboxMessage>, failures: u32) -> Result<usize> {
        if unpublished.is_empty() {
            *unpublished = self.store.claim_outbox(&self.relay_id, self.batch, self.lease).await?;
        }
        let n = if failures >= POISON_AFTER_FAILURES {
            self.isolate_poison(unpublished).await?
        } else {
            self.publish_claimed(unpublished).await?
        };
        unpublished.clear();
        Ok(n)
    }

    /// Runs until cancelled, then flushes what is left.
    pub async fn run(self, cancel: CancellationToken) {
        let mut changes = self.store.changes();
        let mut failures = 0_u32;
        tracing::info!(relay = %self.relay_id, transport = self.transport.name(), "outbox relay started");
        // A batch that failed to publish is retried before anything newer is claimed,
        // so one saga's messages keep their order.
        let mut unpublished: Vec<OutboxMessage> = Vec::new();
        loop {
            changes.borrow_and_update();
            let result = tokio::select! {
                () = cancel.cancelled() => break,
                result = self.step(&mut unpublished, failures) => result,
            };
            match result {
                Ok(n) => {
                    failures = 0;
                    if n == self.batch {
                        continue;
                    }
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
                tracing::info!(relay = %self.relay_id, error = %err, "outbox relay stopped; the rest stays in the outbox");
            }
            Err(_) => {
                tracing::warn!(relay = %self.relay_id, "outbox relay flush timed out; the rest stays in the outbox")
            }
        }
    }
}
