//! Read connections of the embedded store. A read runs on the calling task, on a connection
//! taken from a small pool: a WAL reader answers from the page cache in microseconds, which
//! is cheaper than waking another thread for it. Reads that may return many rows run on
//! tokio's blocking pool instead, so they never hold up a runtime worker.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use chrono::DateTime;
use rusqlite::{Connection, OpenFlags, Row};
use uuid::Uuid;

use super::statement_count::StatementCount;
use crate::error::{Error, Result};
use crate::model::{u64_of, RecordedEvent};

/// Idle read connections kept open.
const KEEP: usize = 4;
/// Reads of more rows than this run on the blocking pool.
pub(super) const INLINE_ROWS: usize = 256;

/// Columns of an event row, in the order [`event_of`] reads them.
pub(super) const EVENT_COLUMNS: &str =
    "global_position, event_id, stream_id, version, event_type, data, metadata, recorded_at";

/// A pool of read-only connections to one database file.
pub(crate) struct Reads {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    statements: Arc<StatementCount>,
}

impl Reads {
    pub(super) fn new(path: &Path, statements: Arc<StatementCount>) -> Self {
        Self { path: path.to_owned(), idle: Mutex::default(), statements }
    }

    /// Runs one statement's worth of reading on a pooled connection, here and now.
    pub(super) fn read<T>(&self, read: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        let taken = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let connection = match taken {
            Some(connection) => connection,
            None => self.open()?,
        };
        let result = read(&connection);
        self.statements.add(1);
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < KEEP {
            idle.push(connection);
        }
        Ok(result?)
    }

    /// [`Self::read`] on the blocking pool, for reads of many rows.
    pub(super) async fn read_blocking<T, F>(self: &Arc<Self>, read: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let reads = Arc::clone(self);
        tokio::task::spawn_blocking(move || reads.read(read))
            .await
            .map_err(|e| Error::Invalid(format!("a read of the SQLite store failed to run: {e}")))?
    }

    fn open(&self) -> Result<Connection> {
        let connection = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
        )?;
        connection.busy_timeout(std::time::Duration::from_secs(10))?;
        connection.set_prepared_statement_cache_capacity(64);
        Ok(connection)
    }
}

/// An event from a row of [`EVENT_COLUMNS`]. Commits are serial here: the transaction id is
/// the position.
pub(super) fn event_of(row: &Row<'_>) -> rusqlite::Result<RecordedEvent> {
    let position = u64_of(row.get(0)?);
    let event_id: String = row.get(1)?;
    let data: String = row.get(5)?;
    let metadata: String = row.get(6)?;
    Ok(RecordedEvent {
        global_position: position,
        transaction_id: position,
        event_id: Uuid::parse_str(&event_id).map_err(|e| corrupt(1, e))?,
        stream_id: row.get(2)?,
        version: u64_of(row.get(3)?),
        event_type: row.get(4)?,
        data: serde_json::from_str(&data).map_err(|e| corrupt(5, e))?,
        metadata: serde_json::from_str(&metadata).map_err(|e| corrupt(6, e))?,
        recorded_at: at(row.get(7)?),
    })
}

/// A time stored as microseconds since the epoch.
pub(super) fn at(micros: i64) -> chrono::DateTime<chrono::Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

/// A stored value that does not decode.
pub(super) fn corrupt(column: usize, err: impl std::error::Error + Send + Sync + 'static) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, Box::new(err))
}
