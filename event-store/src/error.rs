//! The one error type of the event store.

use uuid::Uuid;

use crate::model::ExpectedVersion;

/// Everything an event store operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Optimistic concurrency: the stream is not at the version the writer expected.
    /// Nothing of the commit was written.
    #[error("wrong expected version on stream '{stream}': expected {expected}, actual {}", display_actual(*.actual))]
    WrongExpectedVersion {
        stream: String,
        expected: ExpectedVersion,
        /// The stream's current version; `None` when the stream has no events.
        actual: Option<u64>,
    },
    /// The event id is already stored in a different stream.
    #[error("event id {event_id} is already stored in another stream")]
    DuplicateEventId { event_id: Uuid },
    /// Some, but not all, of the event ids of an append are already stored in the stream.
    #[error("append to '{stream}' mixes already stored and new event ids")]
    PartialIdempotentAppend { stream: String },
    /// The message was already processed by this consumer; nothing was written.
    #[error("message '{message_id}' was already processed by '{consumer}'")]
    AlreadyProcessed { consumer: String, message_id: String },
    /// A request the store cannot accept (empty stream id, …).
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

fn display_actual(actual: Option<u64>) -> String {
    actual.map_or_else(|| "no stream".to_owned(), |v| v.to_string())
}

/// Result alias of the event store.
pub type Result<T, E = Error> = std::result::Result<T, E>;
