//! Delivery straight from the commit, for the embedded mode: the outbox messages of each group
//! of commits are handed to the in-process consumers as soon as the group is durable
//! ([`EventStore::committed_outbox`]), with many groups in flight. Nothing reads or polls the
//! outbox while the hand-over keeps up. The outbox stays the record: the position handled by
//! every consumer is recorded (at most every [`RECORD_EVERY`]) like a relay's, and after a crash
//! what was committed and not yet handled is read from the outbox, delivered again, and dropped
//! by its consumers as a duplicate. A group the hand-over missed (its channel was full) shows as
//! a gap and is read from the outbox too.

use std::sync::Arc;
use std::time::Duration;

use event_store::{CommittedOutbox, EventStore, OutboxMessage, OutboxPosition};
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::relay::DEFAULT_LEASE;
use crate::transport::in_process::InProcessTransport;

/// How often the handled position is recorded; a crash delivers again what was handled since.
const RECORD_EVERY: Duration = Duration::from_millis(100);
/// Messages handed over and not yet handled, at most; past it the hand-over waits (and what
/// it misses meanwhile is read from the outbox later).
const MAX_IN_FLIGHT: usize = 20_000;
/// Outbox rows read at once while catching up.
const READ_BATCH: usize = 500;
/// The wait after a failed delivery or read, before reading again from the handled position.
const BACKOFF: Duration = Duration::from_millis(200);

/// Hands committed outbox messages straight to an in-process transport.
pub struct CommitDelivery {
    store: Arc<dyn EventStore>,
    transport: InProcessTransport,
    /// `None` once the store handed its commits to another reader: the outbox is then read
    /// after every commit signal, as a relay would.
    committed: Option<mpsc::Receiver<CommittedOutbox>>,
    relay_id: String,
}

/// Where the delivery stands while it holds the outbox.
struct Position {
    /// Handed over up to here (from the hand-over or the outbox).
    read_to: OutboxPosition,
    /// Handled by every consumer up to here.
    handled: OutboxPosition,
    /// Read the outbox before taking from the hand-over again.
    behind: bool,
}

impl CommitDelivery {
    /// Delivers what `committed` hands over (the receiver of `store`'s
    /// [`EventStore::committed_outbox`]) to `transport`, holding the outbox as `relay_id`.
    pub fn new(
        store: Arc<dyn EventStore>,
        transport: InProcessTransport,
        committed: mpsc::Receiver<CommittedOutbox>,
        relay_id: String,
    ) -> Self {
        Self { store, transport, committed: Some(committed), relay_id }
    }

    /// Runs until cancelled, then records how far every message is handled.
    pub async fn run(mut self, cancel: CancellationToken) {
        tracing::info!(relay = %self.relay_id, "delivering outbox messages straight from the commit");
        while !cancel.is_cancelled() {
            let held = match self.store.hold_outbox(&self.relay_id, DEFAULT_LEASE).await {
                Ok(Some(held)) => held,
                Ok(None) => {
                    tracing::info!(relay = %self.relay_id, "another relay holds the outbox; waiting");
                    pause(&cancel, DEFAULT_LEASE / 3).await;
                    continue;
                }
                Err(err) => {
                    tracing::warn!(relay = %self.relay_id, error = %err, "cannot take the outbox; will retry");
                    pause(&cancel, BACKOFF).await;
                    continue;
                }
            };
            let mut position = Position { read_to: held, handled: held, behind: true };
            match self.deliver(&mut position, &cancel).await {
                Ok(()) => {}
                Err(err) => {
                    tracing::warn!(relay = %self.relay_id, error = %err, "delivery failed; reading again from what is handled");
                }
            }
            if let Err(err) = self.store.advance_outbox(&self.relay_id, position.handled, DEFAULT_LEASE).await {
                tracing::warn!(relay = %self.relay_id, error = %err, "cannot record the handled position");
            }
            if !cancel.is_cancelled() {
                pause(&cancel, BACKOFF).await;
            }
        }
        tracing::info!(relay = %self.relay_id, "commit delivery stopped");
    }

    /// Delivers while this process holds the outbox; returns on cancel or a failure.
    async fn deliver(&mut self, at: &mut Position, cancel: &CancellationToken) -> Result<()> {
        let mut in_flight = FuturesOrdered::new();
        let mut pending = 0_usize;
        let mut unrecorded = false;
        let mut record = tokio::time::interval(RECORD_EVERY);
        let mut renew = tokio::time::interval(DEFAULT_LEASE / 3);
        let mut changes = self.store.changes();
        loop {
            if at.behind && pending < MAX_IN_FLIGHT {
                let batch = self.store.read_outbox(at.read_to, READ_BATCH).await?;
                at.behind = batch.len() == READ_BATCH;
                if let Some(last) = batch.last() {
                    at.read_to = last.position();
                    pending += batch.len();
                    in_flight.push_back(self.hand_over(batch)?);
                }
                continue;
            }
            tokio::select! {
                () = cancel.cancelled() => {
                    // Count what is handled already, in order, so that it is recorded.
                    while let Some(Some((end, _, Ok(())))) = in_flight.next().now_or_never() {
                        at.handled = end;
                    }
                    return Ok(());
                }
                group = next_group(&mut self.committed), if !at.behind && pending < MAX_IN_FLIGHT => {
                    let Some(group) = group else {
                        tracing::warn!(relay = %self.relay_id, "the store hands its commits to another reader; reading the outbox instead");
                        (self.committed, at.behind) = (None, true);
                        continue;
                    };
                    if group.after > at.read_to.id {
                        // A group was missed: the outbox has it.
                        at.behind = true;
                        continue;
                    }
                    let fresh: Vec<OutboxMessage> = group.messages.into_iter().filter(|m| m.id > at.read_to.id).collect();
                    if let Some(last) = fresh.last() {
                        at.read_to = last.position();
                        pending += fresh.len();
                        in_flight.push_back(self.hand_over(fresh)?);
                    }
                }
                done = in_flight.next(), if !in_flight.is_empty() => {
                    let Some(done) = done else { continue };
                    let (end, count, handled): (OutboxPosition, usize, Result<()>) = done;
                    handled?;
                    pending -= count;
                    at.handled = end;
                    unrecorded = true;
                }
                _ = record.tick(), if unrecorded => {
                    unrecorded = false;
                    self.record(at.handled).await?;
                }
                _ = renew.tick() => self.record(at.handled).await?,
                _ = changes.changed(), if self.committed.is_none() => at.behind = true,
            }
        }
    }

    /// Hands `batch` over; the future resolves with where it ends, its size, and whether every
    /// consumer handled it.
    fn hand_over(
        &self,
        batch: Vec<OutboxMessage>,
    ) -> Result<impl std::future::Future<Output = (OutboxPosition, usize, Result<()>)>> {
        let end = batch.last().map(OutboxMessage::position).unwrap_or_default();
        let count = batch.len();
        let messages: Vec<_> = batch.into_iter().map(|m| m.message).collect();
        let handled = self.transport.deliver(&messages)?;
        Ok(async move { (end, count, handled.wait().await) })
    }

    /// Records the handled position and renews the lease; a lost lease ends the delivery.
    async fn record(&self, handled: OutboxPosition) -> Result<()> {
        if self.store.advance_outbox(&self.relay_id, handled, DEFAULT_LEASE).await? {
            Ok(())
        } else {
            Err(crate::error::Error::Transport("another relay took the outbox".into()))
        }
    }
}

/// The next group handed over; pending forever once there is no hand-over.
async fn next_group(committed: &mut Option<mpsc::Receiver<CommittedOutbox>>) -> Option<CommittedOutbox> {
    match committed {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

async fn pause(cancel: &CancellationToken, wait: Duration) {
    tokio::select! {
        () = cancel.cancelled() => {}
        () = tokio::time::sleep(wait) => {}
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::transport::Transport;
    use event_store::sqlite::SqliteEventStore;
    use event_store::{Commit, OutgoingMessage};
    use std::collections::BTreeMap;

    fn message(n: u8) -> Commit {
        Commit {
            outbox: vec![OutgoingMessage {
                topic: "t".into(),
                key: "k".into(),
                payload: vec![n],
                headers: BTreeMap::new(),
            }],
            ..Commit::default()
        }
    }

    async fn received(consumer: &mut Box<dyn crate::transport::Consumer>, n: usize) -> Vec<u8> {
        let mut payloads = Vec::new();
        for _ in 0..n {
            let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.recv()).await.unwrap().unwrap();
            consumer.commit(&delivery).await.unwrap();
            payloads.push(delivery.payload[0]);
        }
        payloads
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_was_committed_before_is_read_then_each_commit_is_handed_straight_over_and_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn EventStore> = Arc::new(SqliteEventStore::open(dir.path()).await.unwrap());
        let transport = InProcessTransport::new();
        let mut consumer = transport.subscribe("g", &["t".into()]).await.unwrap();
        for n in 1..=3 {
            store.commit(message(n)).await.unwrap();
        }
        let committed = store.committed_outbox().unwrap();
        let cancel = CancellationToken::new();
        let delivery = CommitDelivery::new(Arc::clone(&store), transport, committed, "embedded".into());
        let running = tokio::spawn(delivery.run(cancel.clone()));
        assert_eq!(received(&mut consumer, 3).await, [1, 2, 3], "the backlog, from the outbox");
        for n in 4..=6 {
            store.commit(message(n)).await.unwrap();
        }
        assert_eq!(received(&mut consumer, 3).await, [4, 5, 6], "straight from the commits");
        // Another reader takes the hand-over: what follows is read from the outbox.
        let _other = store.committed_outbox().unwrap();
        for n in 7..=8 {
            store.commit(message(n)).await.unwrap();
        }
        assert_eq!(received(&mut consumer, 2).await, [7, 8]);
        cancel.cancel();
        running.await.unwrap();
        assert_eq!(store.outbox_pending().await.unwrap(), 0, "the handled position is recorded on stop");
    }
}
