//! The data the event store takes and gives back.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// What a writer believes a stream's version to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpectedVersion {
    /// The stream must have no events yet.
    NoStream,
    /// The stream's last event must have exactly this version.
    Exact(u64),
    /// No check.
    Any,
}

impl ExpectedVersion {
    /// The expectation matching a stream's current version (`None`: no stream).
    pub fn from_current(current: Option<u64>) -> Self {
        match current {
            None | Some(0) => Self::NoStream,
            Some(v) => Self::Exact(v),
        }
    }

    /// Whether a stream at `actual` satisfies this expectation.
    pub fn matches(self, actual: Option<u64>) -> bool {
        match self {
            Self::Any => true,
            Self::NoStream | Self::Exact(0) => actual.unwrap_or(0) == 0,
            Self::Exact(v) => actual == Some(v),
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoStream => f.write_str("no stream"),
            Self::Exact(v) => write!(f, "{v}"),
            Self::Any => f.write_str("any"),
        }
    }
}

/// An event to append.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Client-suppliable id; re-appending a stored id to the same stream is a no-op.
    pub event_id: Uuid,
    pub event_type: String,
    pub data: Value,
    /// Correlation id, causation id, trace context, …
    pub metadata: Value,
}

impl NewEvent {
    /// A new event with a fresh time-ordered id and empty metadata.
    pub fn new(event_type: impl Into<String>, data: Value) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            event_type: event_type.into(),
            data,
            metadata: Value::Object(serde_json::Map::new()),
        }
    }

    /// Sets the event id (for idempotent retries).
    #[must_use]
    pub fn with_id(mut self, event_id: Uuid) -> Self {
        self.event_id = event_id;
        self
    }

    /// Sets the metadata.
    #[must_use]
    pub fn with_metadata(mut self, metadata: Value) -> Self {
        self.metadata = metadata;
        self
    }
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent {
    pub event_id: Uuid,
    pub stream_id: String,
    /// Gap-free per stream, starting at 1.
    pub version: u64,
    /// Unique across all streams, increasing within a stream and within a transaction. Across
    /// transactions that commit concurrently it need not follow commit order: `$all` is read
    /// in [`AllPosition`] order.
    pub global_position: u64,
    /// The transaction that wrote the event (PostgreSQL's 64-bit transaction id). On the
    /// single-writer backends, commits are serial and this equals `global_position`.
    pub transaction_id: u64,
    pub event_type: String,
    pub data: Value,
    pub metadata: Value,
    pub recorded_at: DateTime<Utc>,
}

impl RecordedEvent {
    /// Where the event sits in `$all`.
    pub fn all_position(&self) -> AllPosition {
        AllPosition { transaction_id: self.transaction_id, global_position: self.global_position }
    }
}

/// A place in `$all`, the order of all events: by writing transaction, then by position.
/// A reader of `$all` sees an event only once every older transaction has finished, so it
/// never finds a new event behind a place it passed. `AllPosition::START` is before
/// every event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AllPosition {
    pub transaction_id: u64,
    pub global_position: u64,
}

impl AllPosition {
    /// Before every event.
    pub const START: Self = Self { transaction_id: 0, global_position: 0 };
}

impl fmt::Display for AllPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.transaction_id, self.global_position)
    }
}

/// Events to append to one stream, guarded by an expected version.
#[derive(Debug, Clone)]
pub struct StreamAppend {
    pub stream_id: String,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
}

/// A message to hand to the transport once the commit carrying it is durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutgoingMessage {
    pub topic: String,
    pub key: String,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

/// Marks a consumed message as processed in the same transaction as its effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessedMessage {
    pub consumer: String,
    pub message_id: String,
}

/// A durable wake-up, keyed so that one owner (a saga) has at most one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimerChange {
    Set { key: String, due_at: DateTime<Utc> },
    Cancel { key: String },
}

/// Everything written in one atomic transaction.
#[derive(Debug, Clone, Default)]
pub struct Commit {
    pub appends: Vec<StreamAppend>,
    pub outbox: Vec<OutgoingMessage>,
    pub processed: Option<ProcessedMessage>,
    pub timers: Vec<TimerChange>,
}

impl Commit {
    /// A commit that appends to one stream.
    pub fn append(stream_id: impl Into<String>, expected: ExpectedVersion, events: Vec<NewEvent>) -> Self {
        Self::default().with_append(stream_id, expected, events)
    }

    /// Adds an append to another stream.
    #[must_use]
    pub fn with_append(
        mut self,
        stream_id: impl Into<String>,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Self {
        self.appends.push(StreamAppend { stream_id: stream_id.into(), expected, events });
        self
    }

    /// Adds an outgoing message.
    #[must_use]
    pub fn with_message(mut self, message: OutgoingMessage) -> Self {
        self.outbox.push(message);
        self
    }

    /// Records the consumed message this commit is the effect of.
    #[must_use]
    pub fn processing(mut self, consumer: impl Into<String>, message_id: impl Into<String>) -> Self {
        self.processed = Some(ProcessedMessage { consumer: consumer.into(), message_id: message_id.into() });
        self
    }

    /// Adds a timer change.
    #[must_use]
    pub fn with_timer(mut self, change: TimerChange) -> Self {
        self.timers.push(change);
        self
    }
}

/// Where one stream append landed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendResult {
    pub stream_id: String,
    /// The stream's version after the append: the `expected` for the next one.
    pub next_expected_version: u64,
    /// Global positions of the appended (or, for an idempotent retry, the original) events.
    pub positions: Vec<u64>,
    /// True when every event id was already stored and nothing was written.
    pub already_stored: bool,
}

/// The outcome of a commit: one entry per append, in request order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CommitResult {
    pub appends: Vec<AppendResult>,
}

/// Folded state of a stream at a version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub stream_id: String,
    pub version: u64,
    pub state: Value,
    pub taken_at: DateTime<Utc>,
}

/// A place in the outbox: by writing transaction, then by id, the order in which messages
/// become visible to its reader (as [`AllPosition`] is for events). [`OutboxPosition::START`]
/// is before every message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OutboxPosition {
    pub transaction_id: u64,
    pub id: u64,
}

impl OutboxPosition {
    /// Before every message.
    pub const START: Self = Self { transaction_id: 0, id: 0 };
}

impl fmt::Display for OutboxPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.transaction_id, self.id)
    }
}

/// A committed outbox message, as the relay reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    /// Unique; increasing within a transaction.
    pub id: u64,
    /// The transaction that wrote it (on the single-writer backends, equal to `id`).
    pub transaction_id: u64,
    pub message: OutgoingMessage,
    pub created_at: DateTime<Utc>,
}

impl OutboxMessage {
    /// Where the message sits in the outbox.
    pub fn position(&self) -> OutboxPosition {
        OutboxPosition { transaction_id: self.transaction_id, id: self.id }
    }
}

/// The outbox messages of one group of commits, handed over as soon as the group is durable
/// (see [`crate::EventStore::committed_outbox`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOutbox {
    /// The last outbox id committed before this group's: a reader that has not seen every
    /// message up to it missed a group, and reads the gap from the outbox.
    pub after: u64,
    /// In outbox order; never empty.
    pub messages: Vec<OutboxMessage>,
}

/// A timer whose time has come.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueTimer {
    pub key: String,
    pub due_at: DateTime<Utc>,
}

pub(crate) fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(crate) fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
