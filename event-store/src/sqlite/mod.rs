//! SQLite backend: the embedded, durable default for a single process.
//!
//! One thread writes ([`writer`]): it takes every commit queued when it wakes and writes them
//! as one group, in one transaction with one fsync, each commit with its own verdict
//! ([`group_commit`]). Versions and positions are given out by that thread, so they follow
//! commit order. Reads run on the caller's task over a small pool of WAL readers ([`reads`]).
//! The saga index's filtered pages, and the migrations, go through sqlx.

mod bound_rows;
mod committed;
mod encoded_commit;
mod group_commit;
mod reads;
mod statement_count;
mod writer;
mod writer_state;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use self::committed::Tap;
use self::encoded_commit::EncodedCommit;
use self::reads::{at, event_of, Reads, EVENT_COLUMNS, INLINE_ROWS};
pub use self::statement_count::StatementCount;
pub(crate) use self::writer::Writer;
pub(crate) use self::writer_state::WriterState;
use crate::error::{Error, Result};
use crate::model::{
    i64_of, u64_of, AllPosition, Commit, CommitResult, CommittedOutbox, DueTimer, OutboxMessage, OutboxPosition,
    OutgoingMessage, RecordedEvent, Snapshot,
};
use crate::signals::CommitSignals;
use crate::sql::{limit_of, run_commit};
use crate::store::EventStore;

/// Embedded migrations of the SQLite schema.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// Event store in a SQLite database file.
#[derive(Clone)]
pub struct SqliteEventStore {
    writer: Writer,
    reads: Arc<Reads>,
    /// For the saga index's filtered pages.
    pool: SqlitePool,
    signals: Arc<CommitSignals>,
    statements: Arc<StatementCount>,
    tap: Tap,
}

impl SqliteEventStore {
    /// Opens (creating when missing) `dir/sagaflow.db` and applies migrations.
    pub async fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::Invalid(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join("sagaflow.db");
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new().max_connections(2).connect_with(options).await?;
        MIGRATOR.run(&pool).await?;

        let statements = Arc::new(StatementCount::default());
        let tap = Tap::default();
        let connection = Connection::open(&path)?;
        // A crash loses nothing acknowledged: every group is fsynced before its commits are
        // answered.
        connection.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")?;
        connection.busy_timeout(Duration::from_secs(10))?;
        // The group commit has nine statements (six writes, three probes) in 32 row counts
        // each: room for all of them and the other writes, so none is prepared twice.
        connection.set_prepared_statement_cache_capacity(384);
        let state = WriterState::load(&connection, Arc::clone(&statements), tap.clone())?;
        let writer = Writer::start(connection, state)?;
        Ok(Self {
            writer,
            reads: Arc::new(Reads::new(&path, Arc::clone(&statements))),
            pool,
            signals: Arc::default(),
            statements,
            tap,
        })
    }

    /// The SQL statements this store has run, for the bench.
    pub fn statements(&self) -> Arc<StatementCount> {
        Arc::clone(&self.statements)
    }

    /// Runs one write statement on the writer thread, in a transaction of its own; returns
    /// the rows it changed.
    async fn write<P>(&self, sql: &'static str, params: P) -> Result<usize>
    where
        P: rusqlite::Params + Send + 'static,
    {
        self.writer
            .run(move |connection, state| {
                let changed = connection.prepare_cached(sql)?.execute(params)?;
                state.statements.add(1);
                Ok(changed)
            })
            .await
    }

    async fn read_events(
        &self,
        sql: String,
        key: Option<String>,
        from: i64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let read = move |connection: &Connection| -> rusqlite::Result<Vec<RecordedEvent>> {
            let mut statement = connection.prepare_cached(&sql)?;
            let rows = match &key {
                Some(key) => statement.query_map(params![key, from, limit_of(limit)], event_of)?,
                None => statement.query_map(params![from, limit_of(limit)], event_of)?,
            };
            rows.collect()
        };
        if limit > INLINE_ROWS {
            self.reads.read_blocking(read).await
        } else {
            self.reads.read(read)
        }
    }
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn lease_until(lease: Duration) -> i64 {
    micros(Utc::now()).saturating_add(i64::try_from(lease.as_micros()).unwrap_or(i64::MAX))
}

#[async_trait]
impl EventStore for SqliteEventStore {
    async fn commit(&self, commit: Commit) -> Result<CommitResult> {
        let encoded = Arc::new(EncodedCommit::new(crate::store::prepare_commit(commit)?));
        run_commit("sqlite", &self.signals, &encoded.commit, self.writer.commit(Arc::clone(&encoded))).await
    }

    async fn read_stream(&self, stream_id: &str, from_version: u64, limit: usize) -> Result<Vec<RecordedEvent>> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = ?1 AND version >= ?2 ORDER BY version LIMIT ?3"
        );
        self.read_events(sql, Some(stream_id.to_owned()), i64_of(from_version), limit).await
    }

    async fn stream_version(&self, stream_id: &str) -> Result<Option<u64>> {
        let version: Option<i64> = self.reads.read(|connection| {
            connection
                .prepare_cached("SELECT version FROM streams WHERE stream_id = ?1")?
                .query_row([stream_id], |row| row.get(0))
                .optional()
        })?;
        Ok(version.map(u64_of).filter(|v| *v > 0))
    }

    async fn read_all(&self, after: AllPosition, limit: usize) -> Result<Vec<RecordedEvent>> {
        // Commits are serial here: the transaction id is the position.
        let sql =
            format!("SELECT {EVENT_COLUMNS} FROM events WHERE global_position > ?1 ORDER BY global_position LIMIT ?2");
        self.read_events(sql, None, i64_of(after.global_position), limit).await
    }

    async fn count_after(&self, after: AllPosition, cap: usize) -> Result<u64> {
        let count: i64 = self.reads.read(|connection| {
            connection
                .prepare_cached("SELECT count(*) FROM (SELECT 1 FROM events WHERE global_position > ?1 LIMIT ?2)")?
                .query_row(params![i64_of(after.global_position), limit_of(cap)], |row| row.get(0))
        })?;
        Ok(u64_of(count))
    }

    fn saga_index(&self) -> Arc<dyn crate::saga_index::SagaIndex> {
        Arc::new(crate::saga_index::SqliteSagaIndex::new(self.pool.clone(), self.writer.clone()))
    }

    async fn list_streams(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        self.reads.read(|connection| {
            connection
                .prepare_cached(
                    "SELECT stream_id FROM streams WHERE substr(stream_id, 1, length(?1)) = ?1 AND version > 0
                       AND (?2 IS NULL OR stream_id > ?2) ORDER BY stream_id LIMIT ?3",
                )?
                .query_map(params![prefix, after, limit_of(limit)], |row| row.get(0))?
                .collect()
        })
    }

    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<()> {
        let state = snapshot.state.to_string();
        self.write(
            "INSERT INTO snapshots (stream_id, version, state, taken_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (stream_id, version) DO UPDATE SET state = excluded.state, taken_at = excluded.taken_at",
            (snapshot.stream_id, i64_of(snapshot.version), state, micros(snapshot.taken_at)),
        )
        .await?;
        Ok(())
    }

    async fn load_snapshot(&self, stream_id: &str, max_version: Option<u64>) -> Result<Option<Snapshot>> {
        let row: Option<(String, i64, String, i64)> = self.reads.read(|connection| {
            connection
                .prepare_cached(
                    "SELECT stream_id, version, state, taken_at FROM snapshots
                     WHERE stream_id = ?1 AND version <= ?2 ORDER BY version DESC LIMIT 1",
                )?
                .query_row(params![stream_id, max_version.map_or(i64::MAX, i64_of)], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
                })
                .optional()
        })?;
        row.map(|(stream_id, version, state, taken_at)| {
            Ok(Snapshot {
                stream_id,
                version: u64_of(version),
                state: serde_json::from_str(&state)
                    .map_err(|e| Error::Invalid(format!("stored JSON is corrupt: {e}")))?,
                taken_at: at(taken_at),
            })
        })
        .transpose()
    }

    async fn hold_outbox(&self, relay_id: &str, lease: Duration) -> Result<Option<OutboxPosition>> {
        let relay_id = relay_id.to_owned();
        let until = lease_until(lease);
        let held: Option<i64> = self
            .writer
            .run(move |connection, state| {
                state.statements.add(1);
                Ok(connection
                    .prepare_cached(
                        "UPDATE outbox_relay SET owner = ?1, lease_until = ?2
                         WHERE name = 'outbox' AND (owner IS NULL OR owner = ?1 OR lease_until < ?3)
                         RETURNING id",
                    )?
                    .query_row(params![relay_id, until, micros(Utc::now())], |row| row.get(0))
                    .optional()?)
            })
            .await?;
        Ok(held.map(|id| OutboxPosition { transaction_id: u64_of(id), id: u64_of(id) }))
    }

    async fn read_outbox(&self, after: OutboxPosition, limit: usize) -> Result<Vec<OutboxMessage>> {
        let read = move |connection: &Connection| -> rusqlite::Result<Vec<OutboxMessage>> {
            connection
                .prepare_cached(
                    "SELECT id, topic, msg_key, payload, headers, created_at FROM outbox WHERE id > ?1 ORDER BY id LIMIT ?2",
                )?
                .query_map(params![i64_of(after.id), limit_of(limit)], |row| {
                    let id = u64_of(row.get(0)?);
                    let headers: String = row.get(4)?;
                    Ok(OutboxMessage {
                        id,
                        transaction_id: id,
                        created_at: at(row.get(5)?),
                        message: OutgoingMessage {
                            topic: row.get(1)?,
                            key: row.get(2)?,
                            payload: row.get(3)?,
                            headers: serde_json::from_str(&headers).unwrap_or_default(),
                        },
                    })
                })?
                .collect()
        };
        if limit > INLINE_ROWS {
            self.reads.read_blocking(read).await
        } else {
            self.reads.read(read)
        }
    }

    async fn advance_outbox(&self, relay_id: &str, to: OutboxPosition, lease: Duration) -> Result<bool> {
        let moved = self
            .write(
                "UPDATE outbox_relay SET id = max(id, ?1), lease_until = ?2 WHERE name = 'outbox' AND owner = ?3",
                (i64_of(to.id), lease_until(lease), relay_id.to_owned()),
            )
            .await?;
        Ok(moved == 1)
    }

    async fn mark_dead_lettered(&self, id: u64, reason: &str) -> Result<()> {
        self.write("UPDATE outbox SET dead_letter_reason = ?1 WHERE id = ?2", (reason.to_owned(), i64_of(id))).await?;
        Ok(())
    }

    async fn delete_published_outbox(&self, before: DateTime<Utc>, limit: usize) -> Result<u64> {
        let deleted = self
            .write(
                // Ids follow commit times (one writer), so the old rows are the front of the
                // table: a batch looks at its first `limit` rows only, and deletes the old ones
                // among them. No index on the time is needed, and no batch scans the rows kept.
                "DELETE FROM outbox WHERE id IN (
                   SELECT id FROM (
                     SELECT id, created_at FROM outbox
                      WHERE id <= (SELECT id FROM outbox_relay WHERE name = 'outbox') AND dead_letter_reason IS NULL
                      ORDER BY id LIMIT ?2)
                   WHERE created_at < ?1)",
                (micros(before), limit_of(limit)),
            )
            .await?;
        Ok(deleted as u64)
    }

    async fn delete_processed_messages(&self, before: DateTime<Utc>, limit: usize) -> Result<u64> {
        let deleted = self
            .write(
                // As for the outbox: rowids follow commit times.
                "DELETE FROM processed_messages WHERE rowid IN (
                   SELECT r FROM (SELECT rowid AS r, processed_at FROM processed_messages ORDER BY rowid LIMIT ?2)
                   WHERE processed_at < ?1)",
                (micros(before), limit_of(limit)),
            )
            .await?;
        Ok(deleted as u64)
    }

    async fn outbox_pending(&self) -> Result<u64> {
        let n: i64 = self.reads.read(|connection| {
            connection
                .prepare_cached(
                    "SELECT count(*) FROM outbox WHERE id > (SELECT id FROM outbox_relay WHERE name = 'outbox')",
                )?
                .query_row([], |row| row.get(0))
        })?;
        Ok(u64_of(n))
    }

    fn committed_outbox(&self) -> Option<tokio::sync::mpsc::Receiver<CommittedOutbox>> {
        Some(self.tap.open())
    }

    async fn due_timers(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<DueTimer>> {
        self.reads.read(|connection| {
            connection
                .prepare_cached("SELECT timer_key, due_at FROM timers WHERE due_at <= ?1 ORDER BY due_at LIMIT ?2")?
                .query_map(params![micros(now), limit_of(limit)], |row| {
                    Ok(DueTimer { key: row.get(0)?, due_at: at(row.get(1)?) })
                })?
                .collect()
        })
    }

    fn signals(&self) -> &Arc<CommitSignals> {
        &self.signals
    }

    async fn ping(&self) -> Result<()> {
        self.reads.read(|connection| connection.query_row("SELECT 1", [], |_| Ok(())))
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
}
