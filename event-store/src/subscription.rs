//! Catch-up subscriptions to `$all`: read history from a checkpoint, then follow live appends.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::error::Result;
use crate::model::RecordedEvent;
use crate::store::EventStore;

/// Delivers every event after a checkpoint exactly once, in global order.
///
/// The subscriber stores [`Subscription::position`] where it likes and resumes with
/// [`Subscription::after`]. Live delivery wakes on the store's commit notifications;
/// a slow poll backs them up in case a notification is lost.
pub struct Subscription {
    store: Arc<dyn EventStore>,
    position: u64,
    buffer: VecDeque<RecordedEvent>,
    changes: watch::Receiver<u64>,
    batch: usize,
    poll: Duration,
}

impl Subscription {
    /// Subscribes to events with a global position above `checkpoint` (0: from the start).
    pub fn after(store: Arc<dyn EventStore>, checkpoint: u64) -> Self {
        let changes = store.changes();
        Self {
            store,
            position: checkpoint,
            buffer: VecDeque::new(),
            changes,
            batch: 500,
            poll: Duration::from_millis(500),
        }
    }

    /// The position of the last event delivered: the checkpoint to resume from.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The next event, waiting for one to be appended if the subscriber is caught up.
    /// Cancel-safe: dropping the future loses no event.
    pub async fn next(&mut self) -> Result<RecordedEvent> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                self.position = event.global_position;
                return Ok(event);
            }
            // Mark the current change as seen before reading, so an append racing with
            // the read still wakes us.
            self.changes.borrow_and_update();
            let events = self.store.read_all(self.position, self.batch).await?;
            if events.is_empty() {
                tokio::select! {
                    _ = self.changes.changed() => {}
                    () = tokio::time::sleep(self.poll) => {}
                }
            } else {
                self.buffer.extend(events);
            }
        }
    }
}
