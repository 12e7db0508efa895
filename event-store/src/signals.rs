//! Commit signals: wake whoever waits for a commit, either any commit (subscriptions, the
//! relay) or one to a given stream (a long poll on one resource), so that a waiter wakes for
//! its own streams only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;

/// The commit signals of one store instance.
#[derive(Debug)]
pub struct CommitSignals {
    any: watch::Sender<u64>,
    streams: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl Default for CommitSignals {
    fn default() -> Self {
        Self { any: watch::channel(0).0, streams: Mutex::default() }
    }
}

impl CommitSignals {
    fn streams(&self) -> MutexGuard<'_, HashMap<String, watch::Sender<u64>>> {
        self.streams.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A commit touched `streams` (possibly none: outbox or timers only).
    pub fn committed<'a>(&self, streams: impl IntoIterator<Item = &'a str>) {
        {
            let watched = self.streams();
            if !watched.is_empty() {
                for stream in streams {
                    if let Some(sender) = watched.get(stream) {
                        sender.send_modify(|n| *n = n.wrapping_add(1));
                    }
                }
            }
        }
        self.any.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Something may have been committed anywhere (a lost notification connection): wakes
    /// every waiter, who re-reads and loses nothing.
    pub fn wake_all(&self) {
        for sender in self.streams().values() {
            sender.send_modify(|n| *n = n.wrapping_add(1));
        }
        self.any.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Ticks after every commit.
    pub fn any(&self) -> watch::Receiver<u64> {
        self.any.subscribe()
    }

    /// Ticks after every commit to `stream`.
    pub fn stream(self: &Arc<Self>, stream: &str) -> StreamWatch {
        let receiver = self.streams().entry(stream.to_owned()).or_insert_with(|| watch::channel(0).0).subscribe();
        StreamWatch { signals: Arc::clone(self), stream: stream.to_owned(), receiver }
    }
}

/// Waits for commits to one stream; unregisters itself when dropped.
#[derive(Debug)]
pub struct StreamWatch {
    signals: Arc<CommitSignals>,
    stream: String,
    receiver: watch::Receiver<u64>,
}

impl StreamWatch {
    /// Marks every commit so far as seen: call before reading, so a commit racing with the
    /// read still wakes the next [`StreamWatch::changed`].
    pub fn mark_seen(&mut self) {
        self.receiver.borrow_and_update();
    }

    /// Whether a commit to the stream came since the last [`StreamWatch::mark_seen`].
    pub fn has_changed(&self) -> bool {
        self.receiver.has_changed().unwrap_or(true)
    }

    /// Resolves at the next unseen commit to the stream. Cancel-safe.
    pub async fn changed(&mut self) {
        if self.receiver.changed().await.is_err() {
            // The sender lives as long as a watch is registered; never reached.
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for StreamWatch {
    fn drop(&mut self) {
        let mut streams = self.signals.streams();
        // This watch is the last receiver: forget the stream.
        if streams.get(&self.stream).is_some_and(|s| s.receiver_count() <= 1) {
            streams.remove(&self.stream);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_stream_watch_wakes_for_its_stream_only_and_is_forgotten_when_dropped() {
        let signals = Arc::new(CommitSignals::default());
        let mut watch = signals.stream("a");
        watch.mark_seen();
        signals.committed(["b"]);
        assert!(tokio::time::timeout(Duration::from_millis(50), watch.changed()).await.is_err(), "woken by b");
        signals.committed(["b", "a"]);
        tokio::time::timeout(Duration::from_millis(50), watch.changed()).await.expect("woken by a");
        let second = signals.stream("a");
        drop(watch);
        assert_eq!(signals.streams().len(), 1, "kept while another watch waits");
        drop(second);
        assert!(signals.streams().is_empty());
    }
}
