//! SQLite backend: the embedded, durable default for a single process.
//!
//! One write lock serializes commits, so versions and global positions are assigned in
//! commit order; readers run concurrently (WAL journal). Group commit: commits that queue
//! while another is written share the next transaction (one fsync), each inside its own
//! savepoint, so a commit that fails (a version conflict) is rolled back alone.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use tokio::sync::{oneshot, Mutex};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::model::{
    i64_of, u64_of, AllPosition, AppendResult, Commit, CommitResult, DueTimer, OutboxMessage, OutboxPosition,
    OutgoingMessage, RecordedEvent, Snapshot, StreamAppend, TimerChange,
};
use crate::signals::CommitSignals;
use crate::sql::{limit_of, run_commit};
use crate::store::EventStore;

/// Columns of an event row, in the order the row readers expect.
const EVENT_COLUMNS: &str =
    "global_position, global_position AS transaction_id, event_id, stream_id, version, event_type, data, metadata, recorded_at";

/// Embedded migrations of the SQLite schema.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// Event store in a SQLite database file.
#[derive(Clone)]
pub struct SqliteEventStore {
    pool: SqlitePool,
    write: Arc<Mutex<()>>,
    signals: Arc<CommitSignals>,
    queue: Arc<std::sync::Mutex<Vec<Queued>>>,
}

/// A commit waiting for the writer.
struct Queued {
    commit: Arc<Commit>,
    done: oneshot::Sender<Result<CommitResult>>,
}

/// The writer's side of the store: what draining the queue needs, owned, so that it runs in
/// a task of its own.
struct GroupWriter {
    pool: SqlitePool,
    write: Arc<Mutex<()>>,
    queue: Arc<std::sync::Mutex<Vec<Queued>>>,
}

/// At most this many commits share one transaction.
const MAX_GROUP: usize = 256;

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn from_micros(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

fn json_text(value: &serde_json::Value) -> String {
    value.to_string()
}

fn parse_json(text: &str) -> Result<serde_json::Value> {
    serde_json::from_str(text).map_err(|e| Error::Invalid(format!("stored JSON is corrupt: {e}")))
}

impl SqliteEventStore {
    /// Opens (creating when missing) `dir/sagaflow.db` and applies migrations.
    pub async fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::Invalid(format!("cannot create {}: {e}", dir.display())))?;
        let options = SqliteConnectOptions::new()
            .filename(dir.join("sagaflow.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new().max_connections(8).connect_with(options).await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool, write: Arc::default(), signals: Arc::default(), queue: Arc::default() })
    }

    async fn append_one(tx: &mut Transaction<'_, Sqlite>, append: &StreamAppend) -> Result<AppendResult> {
        sqlx::query("INSERT INTO streams (stream_id, version) VALUES (?, 0) ON CONFLICT (stream_id) DO NOTHING")
            .bind(&append.stream_id)
            .execute(&mut **tx)
            .await?;
        let current: i64 = sqlx::query_scalar("SELECT version FROM streams WHERE stream_id = ?")
            .bind(&append.stream_id)
            .fetch_one(&mut **tx)
            .await?;
        let current = u64_of(current);
        let actual = (current > 0).then_some(current);
        // One query for all the ids, as the PostgreSQL backend does.
        let ids: Vec<String> = append.events.iter().map(|e| e.event_id.to_string()).collect();
        let found: Vec<(String, String, i64)> = if ids.is_empty() {
            Vec::new()
        } else {
            sqlx::query_as(
                "SELECT event_id, stream_id, global_position FROM events WHERE event_id IN (SELECT value FROM json_each(?))",
            )
            .bind(serde_json::to_string(&ids).unwrap_or_default())
            .fetch_all(&mut **tx)
            .await?
        };
        let mut stored = Vec::new();
        for event in &append.events {
            let id = event.event_id.to_string();
            match found.iter().find(|(found_id, _, _)| *found_id == id) {
                Some((_, stream, position)) if *stream == append.stream_id => stored.push(u64_of(*position)),
                Some(_) => return Err(Error::DuplicateEventId { event_id: event.event_id }),
                None => {}
            }
        }
        if !append.events.is_empty() && stored.len() == append.events.len() {
            return Ok(AppendResult {
                stream_id: append.stream_id.clone(),
                next_expected_version: current,
                positions: stored,
                already_stored: true,
            });
        }
        if !stored.is_empty() {
            return Err(Error::PartialIdempotentAppend { stream: append.stream_id.clone() });
        }
        if !append.expected.matches(actual) {
            return Err(Error::WrongExpectedVersion {
                stream: append.stream_id.clone(),
                expected: append.expected,
                actual,
            });
        }
        let mut result = AppendResult {
            stream_id: append.stream_id.clone(),
            next_expected_version: current,
            positions: Vec::new(),
            already_stored: false,
        };
        let mut version = current;
        let now = micros(Utc::now());
        for event in &append.events {
            version += 1;
            let position: i64 = sqlx::query_scalar(
                "INSERT INTO events (event_id, stream_id, version, event_type, data, metadata, recorded_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING global_position",
            )
            .bind(event.event_id.to_string())
            .bind(&append.stream_id)
            .bind(i64_of(version))
            .bind(&event.event_type)
            .bind(json_text(&event.data))
            .bind(json_text(&event.metadata))
            .bind(now)
            .fetch_one(&mut **tx)
            .await?;
            result.positions.push(u64_of(position));
        }
        sqlx::query("UPDATE streams SET version = ? WHERE stream_id = ?")
            .bind(i64_of(version))
            .bind(&append.stream_id)
            .execute(&mut **tx)
            .await?;
        result.next_expected_version = version;
        Ok(result)
    }

    /// Queues `commit` for the writer and waits for its outcome. The writing runs in a task
    /// of its own: the first to get the write lock writes everything queued as one group,
    /// and a caller that goes away takes no one else's commit with it.
    async fn commit_tx(&self, commit: Arc<Commit>) -> Result<CommitResult> {
        let (done, result) = oneshot::channel();
        lock_queue(&self.queue).push(Queued { commit, done });
        let writer =
            GroupWriter { pool: self.pool.clone(), write: Arc::clone(&self.write), queue: Arc::clone(&self.queue) };
        tokio::spawn(writer.drain());
        result.await.map_err(|_| Error::Invalid("the commit was dropped by the writer".into()))?
    }
}

fn lock_queue(queue: &std::sync::Mutex<Vec<Queued>>) -> std::sync::MutexGuard<'_, Vec<Queued>> {
    queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl GroupWriter {
    /// Writes what is queued, a group at a time, as the single writer.
    async fn drain(self) {
        let _writer = self.write.lock().await;
        loop {
            let group: Vec<Queued> = {
                let mut queue = lock_queue(&self.queue);
                let n = queue.len().min(MAX_GROUP);
                queue.drain(..n).collect()
            };
            if group.is_empty() {
                break;
            }
            self.write_group(group).await;
        }
    }

    /// Writes a group in one transaction, each commit in a savepoint. When the transaction
    /// itself fails, each commit is tried again in its own.
    async fn write_group(&self, group: Vec<Queued>) {
        if group.len() == 1 {
            for queued in group {
                let result = self.write_alone(&queued.commit).await;
                let _ = queued.done.send(result);
            }
            return;
        }
        let mut outcomes = Vec::with_capacity(group.len());
        let written = async {
            let mut tx = self.pool.begin().await?;
            for queued in &group {
                sqlx::query("SAVEPOINT c").execute(&mut *tx).await?;
                let outcome = Self::write_one(&mut tx, &queued.commit).await;
                if outcome.is_err() {
                    sqlx::query("ROLLBACK TO SAVEPOINT c").execute(&mut *tx).await?;
                }
                sqlx::query("RELEASE SAVEPOINT c").execute(&mut *tx).await?;
                outcomes.push(outcome);
            }
            tx.commit().await?;
            Ok::<_, Error>(())
        }
        .await;
        match written {
            Ok(()) => {
                for (queued, outcome) in group.into_iter().zip(outcomes) {
                    let _ = queued.done.send(outcome);
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, commits = group.len(), "group commit failed; writing its commits one by one");
                for queued in group {
                    let result = self.write_alone(&queued.commit).await;
                    let _ = queued.done.send(result);
                }
            }
        }
    }

    async fn write_alone(&self, commit: &Commit) -> Result<CommitResult> {
        let mut tx = self.pool.begin().await?;
        let result = Self::write_one(&mut tx, commit).await?;
        tx.commit().await?;
        Ok(result)
    }

    async fn write_one(tx: &mut Transaction<'_, Sqlite>, commit: &Commit) -> Result<CommitResult> {
        let mut results = Vec::with_capacity(commit.appends.len());
        for append in &commit.appends {
            results.push(SqliteEventStore::append_one(tx, append).await?);
        }
        if let Some(processed) = &commit.processed {
            let inserted = sqlx::query(
                "INSERT INTO processed_messages (consumer, message_id, processed_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            )
            .bind(&processed.consumer)
            .bind(&processed.message_id)
            .bind(micros(Utc::now()))
            .execute(&mut **tx)
            .await?
            .rows_affected();
            if inserted == 0 {
                return Err(Error::AlreadyProcessed {
                    consumer: processed.consumer.clone(),
                    message_id: processed.message_id.clone(),
                });
            }
        }
        for message in &commit.outbox {
            sqlx::query("INSERT INTO outbox (topic, msg_key, payload, headers, created_at) VALUES (?, ?, ?, ?, ?)")
                .bind(&message.topic)
                .bind(&message.key)
                .bind(&message.payload)
                .bind(serde_json::to_string(&message.headers).unwrap_or_default())
                .bind(micros(Utc::now()))
                .execute(&mut **tx)
                .await?;
        }
        for timer in &commit.timers {
            match timer {
                TimerChange::Set { key, due_at } => {
                    sqlx::query(
                        "INSERT INTO timers (timer_key, due_at) VALUES (?, ?)
                         ON CONFLICT (timer_key) DO UPDATE SET due_at = excluded.due_at",
                    )
                    .bind(key)
                    .bind(micros(*due_at))
                    .execute(&mut **tx)
                    .await?;
                }
                TimerChange::Cancel { key } => {
                    sqlx::query("DELETE FROM timers WHERE timer_key = ?").bind(key).execute(&mut **tx).await?;
                }
            }
        }
        Ok(CommitResult { appends: results })
    }
}

fn event_from_row(row: &SqliteRow) -> Result<RecordedEvent> {
    let event_id: String = row.try_get("event_id")?;
    Ok(RecordedEvent {
        global_position: u64_of(row.try_get("global_position")?),
        transaction_id: u64_of(row.try_get("transaction_id")?),
        event_id: Uuid::parse_str(&event_id).map_err(|e| Error::Invalid(format!("stored event id is corrupt: {e}")))?,
        stream_id: row.try_get("stream_id")?,
        version: u64_of(row.try_get("version")?),
        event_type: row.try_get("event_type")?,
        data: parse_json(row.try_get("data")?)?,
        metadata: parse_json(row.try_get("metadata")?)?,
        recorded_at: from_micros(row.try_get("recorded_at")?),
    })
}

impl SqliteEventStore {
    /// Runs one retention delete (the cut-off, then the batch size), as the single writer.
    async fn delete_batch(&self, sql: &str, before: DateTime<Utc>, limit: usize) -> Result<u64> {
        let _writer = self.write.lock().await;
        Ok(sqlx::query(sql).bind(micros(before)).bind(limit_of(limit)).execute(&self.pool).await?.rows_affected())
    }
}

#[async_trait]
impl EventStore for SqliteEventStore {
    async fn commit(&self, commit: Commit) -> Result<CommitResult> {
        let commit = Arc::new(crate::store::prepare_commit(commit)?);
        run_commit("sqlite", &self.signals, &commit, self.commit_tx(Arc::clone(&commit))).await
    }

    async fn read_stream(&self, stream_id: &str, from_version: u64, limit: usize) -> Result<Vec<RecordedEvent>> {
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = ? AND version >= ? ORDER BY version LIMIT ?"
        ))
        .bind(stream_id)
        .bind(i64_of(from_version))
        .bind(limit_of(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn stream_version(&self, stream_id: &str) -> Result<Option<u64>> {
        let version: Option<i64> = sqlx::query_scalar("SELECT version FROM streams WHERE stream_id = ?")
            .bind(stream_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(version.map(u64_of).filter(|v| *v > 0))
    }

    async fn read_all(&self, after: AllPosition, limit: usize) -> Result<Vec<RecordedEvent>> {
        // Commits are serial here: the transaction id is the position.
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE global_position > ? ORDER BY global_position LIMIT ?"
        ))
        .bind(i64_of(after.global_position))
        .bind(limit_of(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn count_after(&self, after: AllPosition, cap: usize) -> Result<u64> {
        let count: i64 =
            sqlx::query_scalar("SELECT count(*) FROM (SELECT 1 FROM events WHERE global_position > ? LIMIT ?)")
                .bind(i64_of(after.global_position))
                .bind(limit_of(cap))
                .fetch_one(&self.pool)
                .await?;
        Ok(u64_of(count))
    }

    fn saga_index(&self) -> Arc<dyn crate::saga_index::SagaIndex> {
        Arc::new(crate::saga_index::SqliteSagaIndex::new(self.pool.clone()))
    }

    async fn list_streams(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT stream_id FROM streams WHERE substr(stream_id, 1, length(?)) = ? AND version > 0
               AND (? IS NULL OR stream_id > ?) ORDER BY stream_id LIMIT ?",
        )
        .bind(prefix)
        .bind(prefix)
        .bind(after)
        .bind(after)
        .bind(limit_of(limit))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<()> {
        sqlx::query(
            "INSERT INTO snapshots (stream_id, version, state, taken_at) VALUES (?, ?, ?, ?)
             ON CONFLICT (stream_id, version) DO UPDATE SET state = excluded.state, taken_at = excluded.taken_at",
        )
        .bind(&snapshot.stream_id)
        .bind(i64_of(snapshot.version))
        .bind(json_text(&snapshot.state))
        .bind(micros(snapshot.taken_at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn load_snapshot(&self, stream_id: &str, max_version: Option<u64>) -> Result<Option<Snapshot>> {
        let row: Option<(String, i64, String, i64)> = sqlx::query_as(
            "SELECT stream_id, version, state, taken_at FROM snapshots
             WHERE stream_id = ? AND version <= ? ORDER BY version DESC LIMIT 1",
        )
        .bind(stream_id)
        .bind(max_version.map_or(i64::MAX, i64_of))
        .fetch_optional(&self.pool)
        .await?;
        row.map(|(stream_id, version, state, taken_at)| {
            Ok(Snapshot {
                stream_id,
                version: u64_of(version),
                state: parse_json(&state)?,
                taken_at: from_micros(taken_at),
            })
        })
        .transpose()
    }

    async fn hold_outbox(&self, relay_id: &str, lease: Duration) -> Result<Option<OutboxPosition>> {
        let now = micros(Utc::now());
        let until = now.saturating_add(i64::try_from(lease.as_micros()).unwrap_or(i64::MAX));
        let _writer = self.write.lock().await;
        let held: Option<i64> = sqlx::query_scalar(
            "UPDATE outbox_relay SET owner = ?, lease_until = ?
             WHERE name = 'outbox' AND (owner IS NULL OR owner = ? OR lease_until < ?)
             RETURNING id",
        )
        .bind(relay_id)
        .bind(until)
        .bind(relay_id)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(held.map(|id| OutboxPosition { transaction_id: u64_of(id), id: u64_of(id) }))
    }

    async fn read_outbox(&self, after: OutboxPosition, limit: usize) -> Result<Vec<OutboxMessage>> {
        let rows = sqlx::query(
            "SELECT id, topic, msg_key, payload, headers, created_at FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
        )
        .bind(i64_of(after.id))
        .bind(limit_of(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let headers: String = row.try_get("headers")?;
                let id = u64_of(row.try_get("id")?);
                Ok(OutboxMessage {
                    id,
                    transaction_id: id,
                    created_at: from_micros(row.try_get("created_at")?),
                    message: OutgoingMessage {
                        topic: row.try_get("topic")?,
                        key: row.try_get("msg_key")?,
                        payload: row.try_get("payload")?,
                        headers: serde_json::from_str(&headers).unwrap_or_default(),
                    },
                })
            })
            .collect()
    }

    async fn advance_outbox(&self, relay_id: &str, to: OutboxPosition, lease: Duration) -> Result<bool> {
        let until = micros(Utc::now()).saturating_add(i64::try_from(lease.as_micros()).unwrap_or(i64::MAX));
        let _writer = self.write.lock().await;
        let moved =
            sqlx::query("UPDATE outbox_relay SET id = max(id, ?), lease_until = ? WHERE name = 'outbox' AND owner = ?")
                .bind(i64_of(to.id))
                .bind(until)
                .bind(relay_id)
                .execute(&self.pool)
                .await?
                .rows_affected();
        Ok(moved == 1)
    }

    async fn mark_dead_lettered(&self, id: u64, reason: &str) -> Result<()> {
        let _writer = self.write.lock().await;
        sqlx::query("UPDATE outbox SET dead_letter_reason = ? WHERE id = ?")
            .bind(reason)
            .bind(i64_of(id))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn delete_published_outbox(&self, before: DateTime<Utc>, limit: usize) -> Result<u64> {
        self.delete_batch(
            "DELETE FROM outbox WHERE id IN (
               SELECT id FROM outbox WHERE created_at < ? AND dead_letter_reason IS NULL
                  AND id <= (SELECT id FROM outbox_relay WHERE name = 'outbox')
               ORDER BY created_at LIMIT ?)",
            before,
            limit,
        )
        .await
    }

    async fn delete_processed_messages(&self, before: DateTime<Utc>, limit: usize) -> Result<u64> {
        self.delete_batch(
            "DELETE FROM processed_messages WHERE rowid IN (
               SELECT rowid FROM processed_messages WHERE processed_at < ? ORDER BY processed_at LIMIT ?)",
            before,
            limit,
        )
        .await
    }

    async fn outbox_pending(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM outbox WHERE id > (SELECT id FROM outbox_relay WHERE name = 'outbox')",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(u64_of(n))
    }

    async fn due_timers(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<DueTimer>> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT timer_key, due_at FROM timers WHERE due_at <= ? ORDER BY due_at LIMIT ?")
                .bind(micros(now))
                .bind(limit_of(limit))
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|(key, due_at)| DueTimer { key, due_at: from_micros(due_at) }).collect())
    }

    fn signals(&self) -> &Arc<CommitSignals> {
        &self.signals
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
}
