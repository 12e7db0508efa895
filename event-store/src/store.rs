//! The seam every backend implements.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::model::{
    AllPosition, AppendResult, Commit, CommittedOutbox, DueTimer, ExpectedVersion, NewEvent, OutboxMessage,
    OutboxPosition, RecordedEvent, Snapshot,
};
use crate::signals::{CommitSignals, StreamWatch};

/// An event store backend.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Writes every part of `commit` in one transaction, or nothing.
    ///
    /// Fails with [`Error::WrongExpectedVersion`] when a stream is not at its expected
    /// version and with [`Error::AlreadyProcessed`] when the commit's processed message
    /// was already recorded.
    async fn commit(&self, commit: Commit) -> Result<crate::model::CommitResult>;

    /// Up to `limit` events of a stream, from version `from_version` (inclusive) on.
    async fn read_stream(&self, stream_id: &str, from_version: u64, limit: usize) -> Result<Vec<RecordedEvent>>;

    /// The stream's current version; `None` when it has no events.
    async fn stream_version(&self, stream_id: &str) -> Result<Option<u64>>;

    /// Up to `limit` events of all streams after `after`, in `$all` order. An event is
    /// returned only once every transaction older than its own has finished, so a later
    /// read never returns an event before one an earlier read returned.
    async fn read_all(&self, after: AllPosition, limit: usize) -> Result<Vec<RecordedEvent>>;

    /// How many events of `$all` follow `after`, counting to `cap` at most: how far a
    /// projection's checkpoint is behind, at a cost bounded by `cap`.
    async fn count_after(&self, after: AllPosition, cap: usize) -> Result<u64>;

    /// The saga index kept in this backend's database.
    fn saga_index(&self) -> Arc<dyn crate::saga_index::SagaIndex>;

    /// Stream ids that start with `prefix`, in id order, after `after`.
    async fn list_streams(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<String>>;

    /// Stores the folded state of a stream at a version (replacing one at the same version).
    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<()>;

    /// The latest snapshot of a stream, at or below `max_version` when given.
    async fn load_snapshot(&self, stream_id: &str, max_version: Option<u64>) -> Result<Option<Snapshot>>;

    /// Takes the outbox for relay `relay_id`, or keeps it, for `lease` from now: one relay
    /// publishes the outbox at a time. Returns where the outbox is published up to when this
    /// relay holds it, `None` while another relay's lease runs. The same relay id may take it
    /// again at once (a restarted single-process relay keeps its id).
    async fn hold_outbox(&self, relay_id: &str, lease: Duration) -> Result<Option<OutboxPosition>>;

    /// Up to `limit` outbox messages after `after`, in outbox order. Like
    /// [`EventStore::read_all`], a message is returned only once every transaction older than
    /// its own has finished, so a later read never returns a message before one an earlier
    /// read returned. Reading writes nothing: the relay reads ahead of what it has published.
    async fn read_outbox(&self, after: OutboxPosition, limit: usize) -> Result<Vec<OutboxMessage>>;

    /// Records that every message up to `to` is published (or dead-lettered) and renews the
    /// lease of `relay_id`: one write per batch, none per message. Returns `false`, writing
    /// nothing, when `relay_id` no longer holds the outbox (its lease ran out and another relay
    /// took it). A position behind the recorded one only renews the lease.
    async fn advance_outbox(&self, relay_id: &str, to: OutboxPosition, lease: Duration) -> Result<bool>;

    /// Marks message `id` as refused by the transport for good, with `reason`: the row, the only
    /// full copy of the message, is kept for an operator (retention does not delete it).
    async fn mark_dead_lettered(&self, id: u64, reason: &str) -> Result<()>;

    /// Deletes up to `limit` published outbox messages committed before `before` (retention);
    /// rows marked dead-lettered, and messages not yet published, are kept.
    /// Returns how many were deleted; fewer than `limit` means none is left.
    async fn delete_published_outbox(&self, before: DateTime<Utc>, limit: usize) -> Result<u64>;

    /// Deletes up to `limit` processed-message records older than `before` (the end of the
    /// deduplication window). Returns how many were deleted.
    async fn delete_processed_messages(&self, before: DateTime<Utc>, limit: usize) -> Result<u64>;

    /// How many outbox messages are not yet published (past the relay's position).
    async fn outbox_pending(&self) -> Result<u64>;

    /// The outbox messages of each group of commits from now on, handed over as soon as the
    /// group is durable, for a relay that delivers straight from the commit instead of reading
    /// the outbox. `None` where the backend cannot tell (a relay then reads the outbox). One
    /// receiver at a time: taking it again replaces the last. Groups that find the receiver full
    /// are not handed over; the gap shows in [`CommittedOutbox::after`].
    fn committed_outbox(&self) -> Option<tokio::sync::mpsc::Receiver<CommittedOutbox>> {
        None
    }

    /// Timers due at or before `now`, earliest first.
    async fn due_timers(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<DueTimer>>;

    /// Wakes waiters after commits (in any process sharing the database, where the backend
    /// can tell).
    fn signals(&self) -> &Arc<CommitSignals>;

    /// Ticks after every commit.
    fn changes(&self) -> watch::Receiver<u64> {
        self.signals().any()
    }

    /// Ticks after every commit to `stream`.
    fn stream_changes(&self, stream: &str) -> StreamWatch {
        self.signals().stream(stream)
    }

    /// Checks that the backend answers.
    async fn ping(&self) -> Result<()>;

    /// A short name of the backend, for logs and health reports.
    fn backend(&self) -> &'static str;
}

/// Conveniences over [`EventStore`].
#[async_trait]
pub trait EventStoreExt: EventStore {
    /// Appends events to one stream.
    async fn append(&self, stream_id: &str, expected: ExpectedVersion, events: Vec<NewEvent>) -> Result<AppendResult> {
        let mut result = self.commit(Commit::append(stream_id, expected, events)).await?;
        result.appends.pop().ok_or_else(|| Error::Invalid("commit returned no append result".into()))
    }

    /// Every event of a stream, from `from_version` on (reads in pages).
    async fn read_stream_to_end(&self, stream_id: &str, from_version: u64) -> Result<Vec<RecordedEvent>> {
        crate::read::stream_events(self, stream_id, from_version, READ_PAGE).try_collect().await
    }
}

/// Events fetched per round trip when a whole stream is read.
/// (A long replay is bound by its round trips: 100,000 events are 20 of these.)
pub const READ_PAGE: usize = 5_000;

impl<T: EventStore + ?Sized> EventStoreExt for T {}

/// What every backend's `commit` does first: the caller stamped into the events' metadata
/// (see [`crate::caller`]), then the commit checked.
pub(crate) fn prepare_commit(commit: Commit) -> Result<Commit> {
    let commit = crate::caller::stamped(commit);
    validate_commit(&commit)?;
    Ok(commit)
}

/// Refuses what no backend can store faithfully, before any work is done.
pub(crate) fn validate_commit(commit: &Commit) -> Result<()> {
    let mut event_ids = std::collections::HashSet::new();
    for append in &commit.appends {
        if append.stream_id.is_empty() || append.stream_id.len() > 512 || append.stream_id.contains('\0') {
            return Err(Error::Invalid("stream id must be 1..=512 characters, without NUL".into()));
        }
        for event in &append.events {
            if event.event_type.is_empty() || event.event_type.contains('\0') {
                return Err(Error::Invalid(format!("an event for '{}' has an empty type or a NUL", append.stream_id)));
            }
            if !event_ids.insert(event.event_id) {
                return Err(Error::Invalid(format!("event id {} appears twice in one commit", event.event_id)));
            }
            // PostgreSQL's jsonb cannot hold U+0000; refuse it everywhere alike.
            if has_nul(&event.data) || has_nul(&event.metadata) {
                return Err(Error::Invalid(format!("event data for '{}' contains a NUL character", append.stream_id)));
            }
        }
    }
    if let Some(processed) = &commit.processed {
        if processed.consumer.contains('\0') || processed.message_id.contains('\0') {
            return Err(Error::Invalid("a processed-message id contains a NUL character".into()));
        }
    }
    for message in &commit.outbox {
        let nul = message.topic.contains('\0')
            || message.key.contains('\0')
            || message.headers.iter().any(|(k, v)| k.contains('\0') || v.contains('\0'));
        if nul {
            return Err(Error::Invalid(format!(
                "an outbox message for '{}' has a NUL in its key or headers",
                message.topic
            )));
        }
    }
    let mut ids: Vec<&str> = commit.appends.iter().map(|a| a.stream_id.as_str()).collect();
    ids.sort_unstable();
    if ids.windows(2).any(|w| w[0] == w[1]) {
        return Err(Error::Invalid("a commit may append to a stream only once".into()));
    }
    Ok(())
}

/// Whether any string (or object key) inside `value` holds U+0000, which PostgreSQL's jsonb
/// cannot store: the one check, used here and at the engine's wire edge.
pub fn has_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(has_nul),
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}
