//! Catch-up subscriptions to `$all`: read history from a checkpoint, then follow live appends.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::error::Result;
use crate::model::{AllPosition, RecordedEvent};
use crate::store::EventStore;

/// Delivers every event after a checkpoint exactly once, in global order.
///
/// The subscriber stores [`Subscription::position`] where it likes and resumes with
/// [`Subscription::after`]. Live delivery wakes on the store's commit notifications;
/// a slow poll backs them up in case a notification is lost.
pub struct Subscription {
    store: Arc<dyn EventStore>,
    position: AllPosition,
    buffer: VecDeque<RecordedEvent>,
    changes: watch::Receiver<u64>,
    batch: usize,
    poll: Duration,
    /// Set after a commit signal that found nothing visible yet: the next, growing, pause.
    held_back: Option<Duration>,
}

/// The first re-read after a commit signal that found its events not yet visible.
const HELD_BACK_FIRST_RETRY: Duration = Duration::from_millis(2);

impl Subscription {
    /// Subscribes to the events after `checkpoint` ([`AllPosition::START`]: from the start).
    pub fn after(store: Arc<dyn EventStore>, checkpoint: AllPosition) -> Self {
        let changes = store.changes();
        Self {
            store,
            position: checkpoint,
            buffer: VecDeque::new(),
            changes,
            batch: 500,
            poll: Duration::from_millis(500),
            held_back: None,
        }
    }

    /// The position of the last event delivered: the checkpoint to resume from.
    pub fn position(&self) -> AllPosition {
        self.position
    }

    /// The next event, waiting for one to be appended if the subscriber is caught up.
    /// Cancel-safe: dropping the future loses no event.
    pub async fn next(&mut self) -> Result<RecordedEvent> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                self.position = event.all_position();
                return Ok(event);
            }
            // Mark the current change as seen before reading, so an append racing with
            // the read still wakes us.
            self.changes.borrow_and_update();
            let events = self.store.read_all(self.position, self.batch).await?;
            if events.is_empty() {
                // After a commit signal, an event may still be held back behind an older
                // transaction that has not finished: look again soon, then less often.
                let pause = self.held_back.unwrap_or(self.poll);
                tokio::select! {
                    _ = self.changes.changed() => self.held_back = Some(HELD_BACK_FIRST_RETRY),
                    () = tokio::time::sleep(pause) => {
                        self.held_back = self.held_back.map(|d| d * 2).filter(|d| *d < self.poll);
                    }
                }
            } else {
                self.held_back = None;
                self.buffer.extend(events);
            }
        }
    }
}
