//! Hands the outbox messages of each durable group to the one reader that asked for them
//! ([`crate::EventStore::committed_outbox`]): delivery straight from the commit.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::mpsc;

use crate::model::CommittedOutbox;

/// Groups the reader has not taken yet, at most; a group that finds the channel full is
/// skipped, and the reader reads it from the outbox.
const CAPACITY: usize = 4_096;

/// The reader's end, shared between the store (which replaces it) and the writer thread.
#[derive(Clone, Default)]
pub(crate) struct Tap(Arc<Mutex<Option<mpsc::Sender<CommittedOutbox>>>>);

impl Tap {
    /// A new receiver, replacing the last.
    pub(super) fn open(&self) -> mpsc::Receiver<CommittedOutbox> {
        let (sender, receiver) = mpsc::channel(CAPACITY);
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(sender);
        receiver
    }

    /// Whether anyone reads: the writer copies the messages only then.
    pub(super) fn is_open(&self) -> bool {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).as_ref().is_some_and(|s| !s.is_closed())
    }

    /// Hands a durable group over, without waiting.
    pub(super) fn send(&self, group: CommittedOutbox) {
        let guard = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sender) = guard.as_ref() {
            if sender.try_send(group).is_err() {
                tracing::debug!("the committed-outbox reader is behind; it will read the outbox");
            }
        }
    }
}
