//! PostgreSQL backend.
//!
//! Per-stream concurrency: the writer locks the stream's row (`FOR UPDATE`) and compares
//! versions; a unique `(stream_id, version)` constraint backs that up. Global order: event
//! rows get their position from a sequence while the transaction holds an advisory lock
//! that is released only at commit, so positions become visible in increasing order and a
//! reader of `$all` never skips an event that commits later at a lower position.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row, Transaction};
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::model::{
    i64_of, u64_of, AppendResult, Commit, CommitResult, DueTimer, OutboxMessage, OutgoingMessage, RecordedEvent,
    Snapshot, StreamAppend, TimerChange,
};
use crate::sql::{limit_of, run_commit, EVENT_COLUMNS};
use crate::store::EventStore;

/// Embedded migrations of the PostgreSQL schema.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

const NOTIFY_CHANNEL: &str = "sagaflow_commits";
/// Advisory lock key that orders global positions ("sagaflow" in ASCII, truncated).
const GLOBAL_ORDER_LOCK: i64 = 0x7361_6761_666c_6f77;

/// Event store on PostgreSQL.
#[derive(Clone)]
pub struct PgEventStore {
    pool: PgPool,
    changes: Arc<watch::Sender<u64>>,
    _listener: Arc<DropGuard>,
}

impl PgEventStore {
    /// Connects, applies migrations and starts listening for commits of other processes.
    pub async fn connect(url: &str) -> Result<Self> {
        // A short acquire timeout: with the database down, an HTTP request gets its 503 within
        // seconds instead of hanging; background work retries anyway.
        let pool =
            PgPoolOptions::new().max_connections(20).acquire_timeout(Duration::from_secs(3)).connect(url).await?;
        MIGRATOR.run(&pool).await?;
        Self::from_pool(pool).await
    }

    /// Uses an existing pool whose database already has the schema.
    pub async fn from_pool(pool: PgPool) -> Result<Self> {
        let (tx, _) = watch::channel(0_u64);
        let changes = Arc::new(tx);
        let cancel = CancellationToken::new();
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(NOTIFY_CHANNEL).await?;
        tokio::spawn(listen_for_commits(listener, Arc::clone(&changes), cancel.clone()));
        Ok(Self { pool, changes, _listener: Arc::new(cancel.drop_guard()) })
    }

    /// The underlying pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn append_one(tx: &mut Transaction<'_, Postgres>, append: &StreamAppend) -> Result<AppendResult> {
        sqlx::query("INSERT INTO streams (stream_id, version) VALUES ($1, 0) ON CONFLICT (stream_id) DO NOTHING")
            .bind(&append.stream_id)
            .execute(&mut **tx)
            .await?;
        let current: i64 = sqlx::query_scalar("SELECT version FROM streams WHERE stream_id = $1 FOR UPDATE")
            .bind(&append.stream_id)
            .fetch_one(&mut **tx)
            .await?;
        let current = u64_of(current);
        let actual = (current > 0).then_some(current);

        if !append.events.is_empty() {
            let ids: Vec<Uuid> = append.events.iter().map(|e| e.event_id).collect();
            let stored: Vec<(Uuid, i64)> = sqlx::query_as(
                "SELECT event_id, global_position FROM events WHERE stream_id = $1 AND event_id = ANY($2)",
            )
            .bind(&append.stream_id)
            .bind(&ids)
            .fetch_all(&mut **tx)
            .await?;
            if stored.len() == ids.len() {
                let by_id: BTreeMap<Uuid, i64> = stored.into_iter().collect();
                let positions = ids.iter().filter_map(|id| by_id.get(id)).map(|p| u64_of(*p)).collect();
                return Ok(AppendResult {
                    stream_id: append.stream_id.clone(),
                    next_expected_version: current,
                    positions,
                    already_stored: true,
                });
            }
            if !stored.is_empty() {
                return Err(Error::PartialIdempotentAppend { stream: append.stream_id.clone() });
            }
        }
        if !append.expected.matches(actual) {
            return Err(Error::WrongExpectedVersion {
                stream: append.stream_id.clone(),
                expected: append.expected,
                actual,
            });
        }
        Ok(AppendResult {
            stream_id: append.stream_id.clone(),
            next_expected_version: current,
            positions: Vec::new(),
            already_stored: false,
        })
    }

    async fn insert_events(
        tx: &mut Transaction<'_, Postgres>,
        append: &StreamAppend,
        result: &mut AppendResult,
    ) -> Result<()> {
        let mut version = result.next_expected_version;
        for event in &append.events {
            version += 1;
            let position: i64 = sqlx::query_scalar(
                "INSERT INTO events (event_id, stream_id, version, event_type, data, metadata)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING global_position",
            )
            .bind(event.event_id)
            .bind(&append.stream_id)
            .bind(i64_of(version))
            .bind(&event.event_type)
            .bind(&event.data)
            .bind(&event.metadata)
            .fetch_one(&mut **tx)
            .await
            .map_err(|e| map_unique_violation(e, append, result.next_expected_version, event.event_id))?;
            result.positions.push(u64_of(position));
        }
        sqlx::query("UPDATE streams SET version = $2 WHERE stream_id = $1")
            .bind(&append.stream_id)
            .bind(i64_of(version))
            .execute(&mut **tx)
            .await?;
        result.next_expected_version = version;
        Ok(())
    }

    async fn commit_tx(&self, commit: &Commit) -> Result<CommitResult> {
        let mut tx = self.pool.begin().await?;
        // Lock streams in id order so that multi-stream commits cannot deadlock.
        let mut order: Vec<usize> = (0..commit.appends.len()).collect();
        order.sort_by(|a, b| commit.appends[*a].stream_id.cmp(&commit.appends[*b].stream_id));
        let mut results: Vec<Option<AppendResult>> = vec![None; commit.appends.len()];
        for i in order {
            results[i] = Some(Self::append_one(&mut tx, &commit.appends[i]).await?);
        }
        if let Some(processed) = &commit.processed {
            let inserted = sqlx::query(
                "INSERT INTO processed_messages (consumer, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )
            .bind(&processed.consumer)
            .bind(&processed.message_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 0 {
                return Err(Error::AlreadyProcessed {
                    consumer: processed.consumer.clone(),
                    message_id: processed.message_id.clone(),
                });
            }
        }
        let writes_events = commit
            .appends
            .iter()
            .zip(&results)
            .any(|(a, r)| !a.events.is_empty() && r.as_ref().is_some_and(|r| !r.already_stored));
        if writes_events {
            sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(GLOBAL_ORDER_LOCK).execute(&mut *tx).await?;
        }
        let mut out = Vec::with_capacity(results.len());
        for (append, result) in commit.appends.iter().zip(results) {
            let mut result = result.ok_or_else(|| Error::Invalid("append skipped".into()))?;
            if !result.already_stored && !append.events.is_empty() {
                Self::insert_events(&mut tx, append, &mut result).await?;
            }
            out.push(result);
        }
        for message in &commit.outbox {
            sqlx::query("INSERT INTO outbox (topic, msg_key, payload, headers) VALUES ($1, $2, $3, $4)")
                .bind(&message.topic)
                .bind(&message.key)
                .bind(&message.payload)
                .bind(serde_json::to_value(&message.headers).unwrap_or_default())
                .execute(&mut *tx)
                .await?;
        }
        for timer in &commit.timers {
            match timer {
                TimerChange::Set { key, due_at } => {
                    sqlx::query(
                        "INSERT INTO timers (timer_key, due_at) VALUES ($1, $2)
                         ON CONFLICT (timer_key) DO UPDATE SET due_at = EXCLUDED.due_at",
                    )
                    .bind(key)
                    .bind(due_at)
                    .execute(&mut *tx)
                    .await?;
                }
                TimerChange::Cancel { key } => {
                    sqlx::query("DELETE FROM timers WHERE timer_key = $1").bind(key).execute(&mut *tx).await?;
                }
            }
        }
        sqlx::query("SELECT pg_notify($1, '')").bind(NOTIFY_CHANNEL).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(CommitResult { appends: out })
    }
}

impl PgEventStore {
    /// Runs one retention delete (`$1` the cut-off, `$2` the batch size).
    async fn delete_batch(&self, sql: &str, before: DateTime<Utc>, limit: usize) -> Result<u64> {
        Ok(sqlx::query(sql).bind(before).bind(limit_of(limit)).execute(&self.pool).await?.rows_affected())
    }
}

fn map_unique_violation(err: sqlx::Error, append: &StreamAppend, current: u64, event_id: Uuid) -> Error {
    if let sqlx::Error::Database(db) = &err {
        if db.is_unique_violation() {
            return match db.constraint() {
                Some("events_event_id_key") => Error::DuplicateEventId { event_id },
                _ => Error::WrongExpectedVersion {
                    stream: append.stream_id.clone(),
                    expected: append.expected,
                    actual: (current > 0).then_some(current),
                },
            };
        }
    }
    Error::Database(err)
}

async fn listen_for_commits(mut listener: PgListener, changes: Arc<watch::Sender<u64>>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            received = listener.recv() => match received {
                Ok(_) => { changes.send_modify(|n| *n = n.wrapping_add(1)); }
                Err(err) => {
                    tracing::warn!(error = %err, "commit listener lost its connection; retrying");
                    // Wake waiters: they re-read and lose nothing while we reconnect.
                    changes.send_modify(|n| *n = n.wrapping_add(1));
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
        }
    }
}

fn event_from_row(row: &PgRow) -> Result<RecordedEvent> {
    Ok(RecordedEvent {
        global_position: u64_of(row.try_get("global_position")?),
        event_id: row.try_get("event_id")?,
        stream_id: row.try_get("stream_id")?,
        version: u64_of(row.try_get("version")?),
        event_type: row.try_get("event_type")?,
        data: row.try_get("data")?,
        metadata: row.try_get("metadata")?,
        recorded_at: row.try_get("recorded_at")?,
    })
}

#[async_trait]
impl EventStore for PgEventStore {
    async fn commit(&self, commit: Commit) -> Result<CommitResult> {
        run_commit("postgres", &self.changes, &commit, self.commit_tx(&commit)).await
    }

    async fn read_stream(&self, stream_id: &str, from_version: u64, limit: usize) -> Result<Vec<RecordedEvent>> {
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = $1 AND version >= $2 ORDER BY version LIMIT $3"
        ))
        .bind(stream_id)
        .bind(i64_of(from_version))
        .bind(limit_of(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn stream_version(&self, stream_id: &str) -> Result<Option<u64>> {
        let version: Option<i64> = sqlx::query_scalar("SELECT version FROM streams WHERE stream_id = $1")
            .bind(stream_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(version.map(u64_of).filter(|v| *v > 0))
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<RecordedEvent>> {
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE global_position > $1 ORDER BY global_position LIMIT $2"
        ))
        .bind(i64_of(after))
        .bind(limit_of(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn list_streams(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT stream_id FROM streams WHERE starts_with(stream_id, $1) AND version > 0
               AND ($2::text IS NULL OR stream_id > $2) ORDER BY stream_id LIMIT $3",
        )
        .bind(prefix)
        .bind(after)
        .bind(limit_of(limit))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<()> {
        sqlx::query(
            "INSERT INTO snapshots (stream_id, version, state, taken_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (stream_id, version) DO UPDATE SET state = EXCLUDED.state, taken_at = EXCLUDED.taken_at",
        )
        .bind(&snapshot.stream_id)
        .bind(i64_of(snapshot.version))
        .bind(&snapshot.state)
        .bind(snapshot.taken_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn load_snapshot(&self, stream_id: &str, max_version: Option<u64>) -> Result<Option<Snapshot>> {
        let row = sqlx::query(
            "SELECT stream_id, version, state, taken_at FROM snapshots
             WHERE stream_id = $1 AND ($2::bigint IS NULL OR version <= $2) ORDER BY version DESC LIMIT 1",
        )
        .bind(stream_id)
        .bind(max_version.map(i64_of))
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(Snapshot {
                stream_id: row.try_get("stream_id")?,
                version: u64_of(row.try_get("version")?),
                state: row.try_get("state")?,
                taken_at: row.try_get("taken_at")?,
            })
        })
        .transpose()
    }

    async fn claim_outbox(&self, relay_id: &str, limit: usize, lease: Duration) -> Result<Vec<OutboxMessage>> {
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        let rows = sqlx::query(
            "UPDATE outbox SET claimed_by = $1, claimed_until = now() + $2 * interval '1 millisecond'
             WHERE id IN (
               SELECT id FROM outbox
               WHERE published_at IS NULL AND (claimed_until IS NULL OR claimed_until < now() OR claimed_by = $1)
               ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED)
             RETURNING id, topic, msg_key, payload, headers, created_at",
        )
        .bind(relay_id)
        .bind(lease_ms)
        .bind(limit_of(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut messages = rows
            .iter()
            .map(|row| {
                let headers: serde_json::Value = row.try_get("headers")?;
                Ok(OutboxMessage {
                    id: u64_of(row.try_get("id")?),
                    created_at: row.try_get("created_at")?,
                    message: OutgoingMessage {
                        topic: row.try_get("topic")?,
                        key: row.try_get("msg_key")?,
                        payload: row.try_get("payload")?,
                        headers: serde_json::from_value(headers).unwrap_or_default(),
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        messages.sort_by_key(|m| m.id);
        Ok(messages)
    }

    async fn mark_published(&self, relay_id: &str, ids: &[u64]) -> Result<()> {
        let ids: Vec<i64> = ids.iter().copied().map(i64_of).collect();
        sqlx::query(
            "UPDATE outbox SET published_at = now() WHERE id = ANY($1) AND claimed_by = $2 AND published_at IS NULL",
        )
        .bind(&ids)
        .bind(relay_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn mark_dead_lettered(&self, relay_id: &str, id: u64, reason: &str) -> Result<()> {
        sqlx::query(
            "UPDATE outbox SET published_at = now(), dead_letter_reason = $3
             WHERE id = $1 AND claimed_by = $2 AND published_at IS NULL",
        )
        .bind(i64_of(id))
        .bind(relay_id)
        .bind(reason)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn renew_claims(&self, relay_id: &str, ids: &[u64], lease: Duration) -> Result<u64> {
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        let ids: Vec<i64> = ids.iter().copied().map(i64_of).collect();
        Ok(sqlx::query(
            "UPDATE outbox SET claimed_until = now() + $2 * interval '1 millisecond'
             WHERE id = ANY($3) AND claimed_by = $1 AND published_at IS NULL",
        )
        .bind(relay_id)
        .bind(lease_ms)
        .bind(&ids)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    async fn delete_published_outbox(&self, before: DateTime<Utc>, limit: usize) -> Result<u64> {
        self.delete_batch(
            "DELETE FROM outbox WHERE id = ANY(ARRAY(
               SELECT id FROM outbox WHERE published_at < $1 AND dead_letter_reason IS NULL
               ORDER BY published_at LIMIT $2))",
            before,
            limit,
        )
        .await
    }

    async fn delete_processed_messages(&self, before: DateTime<Utc>, limit: usize) -> Result<u64> {
        self.delete_batch(
            "DELETE FROM processed_messages WHERE ctid = ANY(ARRAY(
               SELECT ctid FROM processed_messages WHERE processed_at < $1 ORDER BY processed_at LIMIT $2))",
            before,
            limit,
        )
        .await
    }

    async fn outbox_pending(&self) -> Result<u64> {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL").fetch_one(&self.pool).await?;
        Ok(u64_of(n))
    }

    async fn due_timers(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<DueTimer>> {
        let rows: Vec<(String, DateTime<Utc>)> =
            sqlx::query_as("SELECT timer_key, due_at FROM timers WHERE due_at <= $1 ORDER BY due_at LIMIT $2")
                .bind(now)
                .bind(limit_of(limit))
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|(key, due_at)| DueTimer { key, due_at }).collect())
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }
}
