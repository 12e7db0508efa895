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
    /// A projection's checkpoint moved since it read it: another projection wrote first.
    /// Nothing was written; read the checkpoint again.
    #[error("the projection checkpoint moved; another projection wrote first")]
    CheckpointMoved,
    /// A request the store cannot accept (empty stream id, …).
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// An error of the embedded SQLite store's own connections.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl Error {
    /// Whether trying the same operation again may succeed: the database was unreachable,
    /// busy or shutting down, or a concurrent writer won. Everything else (data the store
    /// refuses, a broken schema) fails again the same way.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::WrongExpectedVersion { .. } | Self::AlreadyProcessed { .. } | Self::CheckpointMoved => true,
            Self::DuplicateEventId { .. } | Self::PartialIdempotentAppend { .. } | Self::Invalid(_) => false,
            Self::Database(err) => sqlx_is_transient(err),
            Self::Sqlite(err) => err.sqlite_error_code().is_some_and(|code| {
                use rusqlite::ErrorCode::{CannotOpen, DatabaseBusy, DatabaseLocked, DiskFull, SystemIoFailure};
                matches!(code, DatabaseBusy | DatabaseLocked | SystemIoFailure | DiskFull | CannotOpen)
            }),
            Self::Migrate(_) => false,
        }
    }
}

fn sqlx_is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| database_code_is_transient(&code)),
        _ => false,
    }
}

/// PostgreSQL SQLSTATE classes of connection trouble (08), rollbacks for serialization or
/// deadlock (40), exhausted resources (53), operator intervention such as a shutdown (57)
/// and system errors (58), plus a read-only server during a failover (25006) and lock
/// timeouts (55P03, 55006); SQLite's busy, locked, I/O, full and cannot-open codes.
fn database_code_is_transient(code: &str) -> bool {
    // A SQLSTATE has five characters; SQLite's (extended) result codes have at most four digits.
    if code.len() < 5 {
        return code.parse::<u32>().is_ok_and(|sqlite| matches!(sqlite & 0xff, 5 | 6 | 10 | 13 | 14));
    }
    matches!(code.get(..2), Some("08" | "40" | "53" | "57" | "58")) || matches!(code, "25006" | "55P03" | "55006")
}

fn display_actual(actual: Option<u64>) -> String {
    actual.map_or_else(|| "no stream".to_owned(), |v| v.to_string())
}

/// Result alias of the event store.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_or_busy_databases_are_transient_and_refused_data_is_not() {
        assert!(Error::Database(sqlx::Error::PoolTimedOut).is_transient());
        assert!(Error::Database(sqlx::Error::Io(std::io::ErrorKind::ConnectionRefused.into())).is_transient());
        assert!(!Error::Invalid("NUL".into()).is_transient());
        assert!(!Error::Database(sqlx::Error::RowNotFound).is_transient());
        assert!(database_code_is_transient("57P01"), "admin shutdown");
        assert!(database_code_is_transient("08006"), "connection failure");
        assert!(database_code_is_transient("40001"), "serialization failure");
        assert!(!database_code_is_transient("22P05"), "untranslatable character (a NUL)");
        assert!(!database_code_is_transient("23505"), "unique violation");
        assert!(database_code_is_transient("25006"), "read-only during a failover");
        assert!(database_code_is_transient("55P03"), "lock not available");
        assert!(database_code_is_transient("5") && database_code_is_transient("517"), "SQLITE_BUSY");
        assert!(!database_code_is_transient("19"), "SQLITE_CONSTRAINT");
    }
}
