//! The outbox relay: publishes committed outbox messages to the transport, in order,
//! and marks them published. Several relays may run; leases keep them from publishing
//! the same message at the same time.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use event_store::{EventStore, OutboxMessage, OutgoingMessage};
use tokio_util::sync::CancellationToken;

use crate::dead_letter::storable;
use crate::envelope::{HEADER_DLQ_REASON, HEADER_DLQ_SOURCE};
use crate::error::{Error, Result};
use crate::trace_context;
use crate::transport::Transport;

/// How long a claim on outbox messages lasts unless renewed; the relay renews its claims
/// every third of it while it works, so a crashed relay's claims pass to another in seconds.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);

/// Batches a relay has in flight at once, by default.
pub const DEFAULT_PIPELINE: usize = 4;

/// How long a stopping relay tries to publish what is left.
const FLUSH_ON_STOP: Duration = Duration::from_secs(5);

/// Moves messages from the store's outbox to the transport.
pub struct OutboxRelay {
    store: Arc<dyn EventStore>,
    transport: Arc<dyn Transport>,
    relay_id: String,
    batch: usize,
    lease: Duration,
    idle_poll: Duration,
    dead_letter_topic: Option<String>,
    pipeline: usize,
}

impl OutboxRelay {
    /// A relay with a unique id, batches of 200 and [`DEFAULT_LEASE`].
    pub fn new(store: Arc<dyn EventStore>, transport: Arc<dyn Transport>) -> Self {
        Self {
            store,
            transport,
            relay_id: format!("relay-{}", uuid::Uuid::now_v7()),
            batch: 200,
            lease: DEFAULT_LEASE,
            idle_poll: Duration::from_millis(250),
            dead_letter_topic: None,
            pipeline: DEFAULT_PIPELINE,
        }
    }

    /// Uses a stable relay id. Only for a relay that is alone on its store (the embedded
    /// mode): after a crash, its successor takes over its claims at once.
    #[must_use]
    pub fn with_id(mut self, relay_id: String) -> Self {
        self.relay_id = relay_id;
        self
    }

    /// Uses another lease (renewed every third of it while the relay works).
    #[must_use]
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Keeps up to `batches` batches in flight (at least 1).
    #[must_use]
    pub fn with_pipeline(mut self, batches: usize) -> Self {
        self.pipeline = batches.max(1);
        self
    }

    /// Where a message the transport refuses for good is reported instead.
    #[must_use]
    pub fn with_dead_letter_topic(mut self, topic: String) -> Self {
        self.dead_letter_topic = Some(topic);
        self
    }

    /// Publishes one batch; returns how many messages it published.
    pub async fn publish_batch(&self) -> Result<usize> {
        let mut claimed = self.store.claim_outbox(&self.relay_id, self.batch, self.lease).await?;
        let ids = ids_of(&claimed);
        self.holding_lease(&ids, self.publish_claimed(&mut claimed)).await
    }

    /// Runs `work` while renewing this relay's claims on `ids`, so that they outlive a slow
    /// publish but not a crash.
    async fn holding_lease<T>(&self, ids: &[u64], work: impl Future<Output = T>) -> T {
        tokio::pin!(work);
        let mut renew = tokio::time::interval(self.lease / 3);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        renew.tick().await;
        loop {
            tokio::select! {
                out = &mut work => return out,
                _ = renew.tick() => {
                    if let Err(err) = self.store.renew_claims(&self.relay_id, ids, self.lease).await {
                        tracing::warn!(relay = %self.relay_id, error = %err, "cannot renew outbox claims");
                    }
                }
            }
        }
    }

    /// Before a failed batch is tried again: renews its claims, and drops the batch when any
    /// was lost meanwhile (its lease ran out and another relay may be publishing it), so that
    /// two relays never publish the same rows at once. What is still ours is claimed again.
    async fn still_holding(&self, retained: &mut Vec<OutboxMessage>) -> Result<()> {
        let ids = ids_of(retained);
        let renewed = self.store.renew_claims(&self.relay_id, &ids, self.lease).await?;
        if renewed < ids.len() as u64 {
            tracing::warn!(relay = %self.relay_id, held = renewed, batch = ids.len(), "outbox claims lapsed; claiming afresh");
            retained.clear();
        }
        Ok(())
    }

    /// Publishes `claimed` and marks it published; returns how many it is done with. A message
    /// the transport refuses for good is dead-lettered (see [`Self::dead_letter`]) and the rest
    /// go on; any other failure leaves `claimed` as it is, to be tried again.
    async fn publish_claimed(&self, claimed: &mut Vec<OutboxMessage>) -> Result<usize> {
        let mut published = 0;
        while !claimed.is_empty() {
            let mut messages: Vec<_> = claimed.iter().map(|m| m.message.clone()).collect();
            // Each message's publish span ends when the batch is published.
            let _spans: Vec<_> =
                messages.iter_mut().filter_map(|m| trace_context::publish_span(&m.topic, &mut m.headers)).collect();
            match self.transport.publish(&messages).await {
                Ok(()) => {
                    let ids = ids_of(claimed);
                    self.store.mark_published(&self.relay_id, &ids).await?;
                    published += ids.len();
                    claimed.clear();
                }
                Err(Error::Unpublishable { index, reason }) if index < claimed.len() => {
                    self.dead_letter(&claimed[index], &reason).await?;
                    claimed.remove(index);
                    published += 1;
                }
                Err(err) => return Err(err),
            }
        }
        Ok(published)
    }

    /// Reports a message the transport refuses for good on the dead-letter topic (an empty
    /// record whose headers say why) and marks its row dead-lettered: the row, the full copy,
    /// stays in the outbox table for an operator and is never deleted by retention.
    async fn dead_letter(&self, message: &OutboxMessage, reason: &str) -> Result<()> {
        tracing::error!(relay = %self.relay_id, outbox_id = message.id, topic = %message.message.topic, %reason,
            "the transport refuses an outbox message for good; dead-lettering a record of it");
        if let Some(topic) = &self.dead_letter_topic {
            let mut headers: BTreeMap<String, String> = message.message.headers.clone();
            headers.insert(
                HEADER_DLQ_REASON.to_owned(),
                format!("cannot publish ({} bytes): {reason}", message.message.payload.len()),
            );
            headers.insert(HEADER_DLQ_SOURCE.to_owned(), format!("outbox:{}:{}", message.id, message.message.topic));
            let record = OutgoingMessage {
                topic: topic.clone(),
                key: message.message.key.clone(),
                payload: Vec::new(),
                headers,
            };
            match self.transport.publish(&[record]).await {
                Ok(()) => {}
                // The record is refused too (the dead-letter topic has its own limits): the row
                // in the outbox, marked below, is then the only report; do not block on it.
                Err(Error::Unpublishable { reason: refused, .. }) => tracing::error!(
                    relay = %self.relay_id, outbox_id = message.id, %refused,
                    "the dead-letter record is refused too; the outbox row keeps the message"
                ),
                Err(err) => return Err(err),
            }
        }
        self.store.mark_dead_lettered(&self.relay_id, message.id, &storable(reason)).await?;
        Ok(())
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

    /// Publishes a batch that failed before, if it is still ours (see [`Self::still_holding`]).
    async fn retry(&self, unpublished: &mut Vec<OutboxMessage>) -> Result<usize> {
        self.still_holding(unpublished).await?;
        let ids = ids_of(unpublished);
        self.holding_lease(&ids, self.publish_claimed(unpublished)).await
    }

    /// Publishes `batch` (claimed), holding its lease; gives back its ids and what is left
    /// of it.
    async fn publish_owned(&self, mut batch: Vec<OutboxMessage>) -> (Vec<u64>, Vec<OutboxMessage>, Result<usize>) {
        let ids = ids_of(&batch);
        let result = self.holding_lease(&ids, self.publish_claimed(&mut batch)).await;
        (ids, batch, result)
    }

    /// Runs until cancelled, then flushes what is left. Up to [`Self::with_pipeline`] batches are in
    /// flight at once: the next is claimed (besides the ids in flight) and handed to
    /// the transport while the broker acknowledges the earlier ones. The producer keeps the
    /// order within a partition, and refuses to leave a gap (it fails the rest instead), so
    /// batches complete in order; a failed batch, and whatever was in flight behind it, is
    /// retried before anything newer is claimed, so one saga's messages keep their order.
    pub async fn run(self, cancel: CancellationToken) {
        let mut changes = self.store.changes();
        let mut failures = 0_u32;
        tracing::info!(relay = %self.relay_id, transport = self.transport.name(), "outbox relay started");
        let mut unpublished: Vec<OutboxMessage> = Vec::new();
        let mut in_flight = futures::stream::FuturesOrdered::new();
        let mut in_flight_ids: std::collections::HashSet<u64> = std::collections::HashSet::new();
        loop {
            changes.borrow_and_update();
            if !unpublished.is_empty() {
                // Only with nothing in flight: retry what failed, oldest first.
                let result = tokio::select! {
                    () = cancel.cancelled() => break,
                    result = self.retry(&mut unpublished) => result,
                };
                match result {
                    Ok(_) => failures = 0,
                    Err(err) => {
                        failures = failures.saturating_add(1);
                        tracing::warn!(relay = %self.relay_id, error = %err, failures, "outbox relay could not publish; will retry");
                        let backoff = Duration::from_millis(200 * u64::from(failures.min(15)));
                        tokio::select! {
                            () = cancel.cancelled() => break,
                            () = tokio::time::sleep(backoff) => {}
                        }
                    }
                }
                continue;
            }
            if in_flight.len() < self.pipeline {
                let besides: Vec<u64> = in_flight_ids.iter().copied().collect();
                let claimed = tokio::select! {
                    () = cancel.cancelled() => break,
                    claimed = self.store.claim_outbox_besides(&self.relay_id, &besides, self.batch, self.lease) => claimed,
                };
                match claimed {
                    Ok(batch) if !batch.is_empty() => {
                        in_flight_ids.extend(batch.iter().map(|m| m.id));
                        in_flight.push_back(self.publish_owned(batch));
                        continue;
                    }
                    Ok(_) => {}
                    Err(err) => {
                        tracing::warn!(relay = %self.relay_id, error = %err, "cannot claim outbox messages; will retry");
                        failures = failures.saturating_add(1);
                    }
                }
            }
            if in_flight.is_empty() {
                let wait = if failures == 0 {
                    self.idle_poll
                } else {
                    Duration::from_millis(200 * u64::from(failures.min(15)))
                };
                tokio::select! {
                    () = cancel.cancelled() => break,
                    _ = changes.changed() => {}
                    () = tokio::time::sleep(wait) => {}
                }
                continue;
            }
            let done = tokio::select! {
                () = cancel.cancelled() => break,
                done = futures::StreamExt::next(&mut in_flight) => done,
            };
            let Some((ids, rest, result)) = done else { continue };
            for id in &ids {
                in_flight_ids.remove(id);
            }
            if let Err(err) = result {
                failures = failures.saturating_add(1);
                tracing::warn!(relay = %self.relay_id, error = %err, failures, "outbox relay could not publish; will retry");
                // Let what is behind it finish, and keep everything unpublished, in id order.
                unpublished = rest;
                while let Some((_, rest, _)) = futures::StreamExt::next(&mut in_flight).await {
                    unpublished.extend(rest);
                }
                in_flight_ids.clear();
                unpublished.sort_by_key(|m| m.id);
            } else {
                failures = 0;
            }
        }
        drop(in_flight);
        // Bounded: with the transport gone, what is left simply stays in the outbox.
        match tokio::time::timeout(FLUSH_ON_STOP, self.flush()).await {
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

fn ids_of(messages: &[OutboxMessage]) -> Vec<u64> {
    messages.iter().map(|m| m.id).collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use event_store::memory::MemoryEventStore;
    use event_store::Commit;

    use super::*;
    use crate::transport::Consumer;

    /// Fails the first `transient` publishes, refuses topic "too-big" for good, and records
    /// what it accepted.
    #[derive(Default)]
    struct Flaky {
        transient: Mutex<u32>,
        accepted: Mutex<Vec<OutgoingMessage>>,
    }

    #[async_trait]
    impl Transport for Flaky {
        async fn ensure_topics(&self, _topics: &[String]) -> Result<()> {
            Ok(())
        }

        async fn publish(&self, messages: &[OutgoingMessage]) -> Result<()> {
            {
                let mut transient = self.transient.lock().unwrap();
                if *transient > 0 {
                    *transient -= 1;
                    return Err(Error::Transport("NOT_ENOUGH_REPLICAS".into()));
                }
            }
            if let Some(index) = messages.iter().position(|m| m.topic == "too-big") {
                return Err(Error::Unpublishable { index, reason: "MessageSizeTooLarge".into() });
            }
            self.accepted.lock().unwrap().extend_from_slice(messages);
            Ok(())
        }

        async fn subscribe(&self, _group: &str, _topics: &[String]) -> Result<Box<dyn Consumer>> {
            Err(Error::Transport("not for this test".into()))
        }

        async fn ping(&self) -> Result<()> {
            Ok(())
        }

        fn name(&self) -> &'static str {
            "flaky"
        }
    }

    fn message(topic: &str, n: u8) -> OutgoingMessage {
        OutgoingMessage { topic: topic.into(), key: "k".into(), payload: vec![n], headers: BTreeMap::new() }
    }

    #[tokio::test]
    async fn temporary_failures_are_retried_without_dead_lettering_anything() {
        let store: Arc<dyn EventStore> = Arc::new(MemoryEventStore::new());
        let commit = Commit::default().with_message(message("t", 1)).with_message(message("t", 2));
        store.commit(commit).await.unwrap();
        let transport = Arc::new(Flaky { transient: Mutex::new(6), ..Flaky::default() });
        let relay = OutboxRelay::new(Arc::clone(&store), transport.clone()).with_dead_letter_topic("dlq".into());
        let cancel = CancellationToken::new();
        let task = tokio::spawn(relay.run(cancel.clone()));
        for _ in 0..200 {
            if store.outbox_pending().await.unwrap() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        cancel.cancel();
        task.await.unwrap();
        let accepted = transport.accepted.lock().unwrap().clone();
        assert_eq!(accepted, [message("t", 1), message("t", 2)], "published once the broker recovered");
    }

    #[tokio::test]
    async fn only_a_message_refused_for_good_is_replaced_by_a_dead_letter_record() {
        let store: Arc<dyn EventStore> = Arc::new(MemoryEventStore::new());
        let commit = Commit::default()
            .with_message(message("t", 1))
            .with_message(message("too-big", 2))
            .with_message(message("t", 3));
        store.commit(commit).await.unwrap();
        let transport = Arc::new(Flaky::default());
        let relay = OutboxRelay::new(Arc::clone(&store), transport.clone()).with_dead_letter_topic("dlq".into());
        assert_eq!(relay.flush().await.unwrap(), 3);
        let accepted = transport.accepted.lock().unwrap().clone();
        let topics: Vec<&str> = accepted.iter().map(|m| m.topic.as_str()).collect();
        assert_eq!(topics, ["dlq", "t", "t"]);
        assert!(accepted[0].headers[HEADER_DLQ_REASON].contains("MessageSizeTooLarge"));
        assert_eq!(store.outbox_pending().await.unwrap(), 0);
        let later = chrono::Utc::now() + chrono::Duration::seconds(1);
        assert_eq!(store.delete_published_outbox(later, 10).await.unwrap(), 2, "the refused row is kept");
    }
}
