//! The outbox relay: reads committed outbox messages in outbox order, publishes them to the
//! transport, and records once per batch how far it has published. One relay holds the outbox
//! at a time, by a lease it renews while it lives; the others stand by and take over when a
//! lease runs out. A message is never updated when published: the relay's position says what
//! is published, and retention deletes published rows later, in bulk.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use event_store::{EventStore, OutboxMessage, OutboxPosition, OutgoingMessage};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::dead_letter::storable;
use crate::envelope::{HEADER_DLQ_REASON, HEADER_DLQ_SOURCE};
use crate::error::{Error, Result};
use crate::trace_context;
use crate::transport::Transport;

// The default lives with the transport, whose `relay_pipeline` falls back on it.
pub use crate::transport::DEFAULT_PIPELINE;

/// How long a relay holds the outbox unless it renews its lease; it renews every third of it,
/// so a crashed relay's outbox passes to another within seconds.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);
/// How often the relay records how far it published (once per batch would be one write per
/// few messages under light load). After a crash, what it published since is published again,
/// and dropped by its consumers as duplicates.
const RECORD_EVERY: Duration = Duration::from_millis(100);
/// How long an idle relay lets commits gather after a signal before it reads them.
const READ_GATHER: Duration = Duration::from_millis(1);

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

/// A batch in flight: where it ends, and how its publishing went.
type Published = (OutboxPosition, Result<()>);

impl OutboxRelay {
    /// A relay with a unique id, batches of 500 and [`DEFAULT_LEASE`].
    pub fn new(store: Arc<dyn EventStore>, transport: Arc<dyn Transport>) -> Self {
        Self {
            store,
            transport,
            relay_id: format!("relay-{}", uuid::Uuid::now_v7()),
            batch: 500,
            lease: DEFAULT_LEASE,
            idle_poll: Duration::from_millis(250),
            dead_letter_topic: None,
            pipeline: DEFAULT_PIPELINE,
        }
    }

    /// Uses a stable relay id. Only for a relay that is alone on its store (the embedded
    /// mode): after a crash, its successor takes the outbox over at once.
    #[must_use]
    pub fn with_id(mut self, relay_id: String) -> Self {
        self.relay_id = relay_id;
        self
    }

    /// Uses another lease (renewed every third of it while the relay lives).
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

    /// Publishes `batch`. A message the transport refuses for good is dead-lettered (see
    /// [`Self::dead_letter`]) and the rest go on; any other failure fails the batch, to be read
    /// and published again.
    async fn publish(&self, mut batch: Vec<OutboxMessage>) -> Result<()> {
        while !batch.is_empty() {
            let mut messages: Vec<_> = batch.iter().map(|m| m.message.clone()).collect();
            // Each message's publish span ends when the batch is published.
            let _spans: Vec<_> =
                messages.iter_mut().filter_map(|m| trace_context::publish_span(&m.topic, &mut m.headers)).collect();
            match self.transport.publish(&messages).await {
                Ok(()) => return Ok(()),
                Err(Error::Unpublishable { index, reason }) if index < batch.len() => {
                    self.dead_letter(&batch[index], &reason).await?;
                    // What came before it was not published either: send it again with the rest.
                    batch.remove(index);
                }
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// A batch and where it ends, as a future for the pipeline.
    async fn publish_owned(&self, batch: Vec<OutboxMessage>) -> Published {
        let end = batch.last().map(OutboxMessage::position).unwrap_or_default();
        (end, self.publish(batch).await)
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
        self.store.mark_dead_lettered(message.id, &storable(reason)).await?;
        Ok(())
    }

    /// Publishes until the outbox is empty (or an error stops it), one batch at a time; returns
    /// how many messages it published. Publishes nothing while another relay holds the outbox.
    pub async fn flush(&self) -> Result<usize> {
        let Some(mut published) = self.store.hold_outbox(&self.relay_id, self.lease).await? else {
            return Ok(0);
        };
        let mut total = 0;
        loop {
            let batch = self.store.read_outbox(published, self.batch).await?;
            let Some(end) = batch.last().map(OutboxMessage::position) else { return Ok(total) };
            total += batch.len();
            self.publish(batch).await?;
            if !self.store.advance_outbox(&self.relay_id, end, self.lease).await? {
                return Ok(total);
            }
            published = end;
        }
    }

    /// Runs until cancelled, then flushes what is left. While it holds the outbox, up to
    /// [`Self::with_pipeline`] batches are in flight at once: the next is read while the broker
    /// acknowledges the earlier ones. The producer keeps the order within a partition and
    /// refuses to leave a gap (it fails the rest instead), so batches complete in order, and
    /// the position recorded after a batch covers only batches that are published. After a
    /// failure, what is in flight finishes and the relay reads again from the position it
    /// recorded: one saga's messages keep their order (a message published twice is dropped by
    /// its consumer).
    pub async fn run(self, cancel: CancellationToken) {
        tracing::info!(relay = %self.relay_id, transport = self.transport.name(), "outbox relay started");
        let mut changes = self.store.changes();
        let mut failures = 0_u32;
        // Where the outbox is published up to, while this relay holds it; and how far it read.
        let mut held: Option<OutboxPosition> = None;
        let mut read_to = OutboxPosition::START;
        // Read to the end: nothing more to read until a commit (or the idle poll) says so.
        let mut drained = false;
        let mut in_flight = futures::stream::FuturesOrdered::new();
        // Published up to `held`, recorded up to what the last record said: the position is
        // recorded once per RECORD_EVERY, not per batch (a crash publishes the rest again).
        let mut unrecorded = false;
        let mut last_record = tokio::time::Instant::now();
        let mut renew = tokio::time::interval(self.lease / 3);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if changes.has_changed().unwrap_or(false) {
                changes.borrow_and_update();
                drained = false;
            }
            let Some(published) = held else {
                match self.store.hold_outbox(&self.relay_id, self.lease).await {
                    Ok(Some(position)) => {
                        tracing::info!(relay = %self.relay_id, %position, "outbox relay holds the outbox");
                        (held, read_to, failures, drained) = (Some(position), position, 0, false);
                        renew.reset();
                        continue;
                    }
                    Ok(None) => {}
                    Err(err) => {
                        tracing::warn!(relay = %self.relay_id, error = %err, "cannot take the outbox; will retry")
                    }
                }
                // Another relay holds it: stand by, and try again within a lease.
                tokio::select! {
                    () = cancel.cancelled() => break,
                    _ = renew.tick() => {}
                }
                continue;
            };
            if in_flight.len() < self.pipeline && failures == 0 && !drained {
                let read = tokio::select! {
                    () = cancel.cancelled() => break,
                    read = self.store.read_outbox(read_to, self.batch) => read,
                };
                match read {
                    Ok(batch) if !batch.is_empty() => {
                        drained = batch.len() < self.batch;
                        read_to = batch.last().map_or(read_to, OutboxMessage::position);
                        in_flight.push_back(self.publish_owned(batch));
                        continue;
                    }
                    Ok(_) => drained = true,
                    Err(err) => {
                        tracing::warn!(relay = %self.relay_id, error = %err, "cannot read the outbox; will retry");
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
                    _ = changes.changed() => {
                        // Let the commits of the moment gather: one read takes them all.
                        tokio::time::sleep(READ_GATHER).await;
                        drained = false;
                    }
                    () = tokio::time::sleep(wait) => drained = false,
                    () = tokio::time::sleep_until(last_record + RECORD_EVERY), if unrecorded => {
                        (held, unrecorded, last_record) = (self.renew(published).await, false, tokio::time::Instant::now());
                    }
                    _ = renew.tick() => {
                        (held, unrecorded, last_record) = (self.renew(published).await, false, tokio::time::Instant::now());
                    }
                }
                // A failed read or batch is tried again after its backoff.
                if failures > 0 && in_flight.is_empty() {
                    failures = 0;
                }
                continue;
            }
            let done = tokio::select! {
                () = cancel.cancelled() => break,
                _ = changes.changed(), if drained => {
                    drained = false;
                    continue;
                }
                _ = renew.tick() => {
                    (held, unrecorded, last_record) = (self.renew(published).await, false, tokio::time::Instant::now());
                    if held.is_none() {
                        in_flight = futures::stream::FuturesOrdered::new();
                    }
                    continue;
                }
                done = in_flight.next() => done,
            };
            let Some((end, result)) = done else { continue };
            match result {
                Ok(()) if failures == 0 => {
                    held = Some(end);
                    unrecorded = true;
                    if last_record.elapsed() >= RECORD_EVERY {
                        // A record that fails leaves it to a later one, or the next holder
                        // publishes the rest again.
                        (held, unrecorded, last_record) = (self.renew(end).await, false, tokio::time::Instant::now());
                        if held.is_none() {
                            in_flight = futures::stream::FuturesOrdered::new();
                        }
                    }
                }
                // Behind a failed batch: not recorded; read again from the recorded position.
                Ok(()) => {}
                Err(err) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(relay = %self.relay_id, error = %err, failures, "outbox relay could not publish; will retry");
                }
            }
            if failures > 0 && in_flight.is_empty() {
                // Everything in flight is done: read again from what is recorded, after a backoff.
                read_to = held.unwrap_or(read_to);
                let backoff = Duration::from_millis(200 * u64::from(failures.min(15)));
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                (failures, drained) = (0, false);
            }
        }
        drop(in_flight);
        if let (Some(published), true) = (held, unrecorded) {
            self.renew(published).await;
        }
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

    /// Renews the lease at the position recorded; `None` when the outbox is no longer this
    /// relay's. A failure to reach the store keeps it: the lease is renewed at the next tick.
    async fn renew(&self, published: OutboxPosition) -> Option<OutboxPosition> {
        match self.store.advance_outbox(&self.relay_id, published, self.lease).await {
            Ok(true) => Some(published),
            Ok(false) => {
                tracing::warn!(relay = %self.relay_id, "outbox relay lost the outbox to another relay");
                None
            }
            Err(err) => {
                tracing::warn!(relay = %self.relay_id, error = %err, "cannot renew the outbox lease");
                Some(published)
            }
        }
    }
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

    #[tokio::test]
    async fn two_relays_publish_every_message_once_in_order_and_one_takes_over_from_the_other() {
        let store: Arc<dyn EventStore> = Arc::new(MemoryEventStore::new());
        let transport = Arc::new(Flaky::default());
        let lease = Duration::from_millis(300);
        let relay = |id: &str| {
            OutboxRelay::new(Arc::clone(&store), transport.clone())
                .with_id(id.into())
                .with_lease(lease)
                .with_pipeline(4)
        };
        let (first, second) = (CancellationToken::new(), CancellationToken::new());
        let mut a = Some(tokio::spawn(relay("a").run(first.clone())));
        let b = tokio::spawn(relay("b").run(second.clone()));
        for n in 0..100_u8 {
            store.commit(Commit::default().with_message(message("t", n))).await.unwrap();
            if n == 50 {
                // The holder stops; the other takes the outbox when the lease runs out.
                tokio::time::sleep(Duration::from_millis(50)).await;
                first.cancel();
                a.take().unwrap().await.unwrap();
            }
        }
        for _ in 0..100 {
            if store.outbox_pending().await.unwrap() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        second.cancel();
        b.await.unwrap();
        let payloads: Vec<u8> = transport.accepted.lock().unwrap().iter().map(|m| m.payload[0]).collect();
        assert_eq!(payloads, (0..100).collect::<Vec<u8>>(), "each message once, in commit order");
    }
}
