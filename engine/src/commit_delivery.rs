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
use futures::StreamExt;
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
    committed: mpsc::Receiver<CommittedOutbox>,
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
        Self { store, transport, committed, relay_id }
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
                () = cancel.cancelled() => return Ok(()),
                group = self.committed.recv(), if !at.behind && pending < MAX_IN_FLIGHT => {
                    let Some(group) = group else { return Ok(()) };
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

async fn pause(cancel: &CancellationToken, wait: Duration) {
    tokio::select! {
        () = cancel.cancelled() => {}
        () = tokio::time::sleep(wait) => {}
    }
}
