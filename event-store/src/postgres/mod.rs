//! PostgreSQL backend.
//!
//! A commit is one SQL statement (`commit.sql`): one round trip whatever its size.
//! Per-stream concurrency: the statement compares each stream's version with the writer's
//! expectation, and the unique `(stream_id, version)` key stops a concurrent writer of the
//! same version (it waits for the first and then fails). Global
//! order without a global lock: each event records its transaction id (xid8), and `$all`
//! readers see only events of transactions older than every running one, in (transaction,
//! position) order, so writers commit in parallel and no reader skips an event that
//! commits later at a lower position. Commits are announced to other processes by one
//! task that coalesces them into few NOTIFYs, so no commit waits on PostgreSQL's
//! notification lock.

mod commit;
mod group_commit;
mod notices;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row, Transaction};
use tokio_util::sync::{CancellationToken, DropGuard};

use self::group_commit::GroupCommitter;
use self::notices::{listen_for_commits, new_instance, NOTIFY_CHANNEL};

use crate::error::Result;
use crate::model::{
    i64_of, u64_of, AllPosition, Commit, CommitResult, DueTimer, OutboxMessage, OutboxPosition, OutgoingMessage,
    RecordedEvent, Snapshot,
};
use crate::signals::CommitSignals;
use crate::sql::{limit_of, run_commit};
use crate::store::EventStore;

/// Columns of an event row, in the order the row readers expect. The transaction id is read as
/// a number under its own name: an output column named `transaction_id` would take the place of
/// the table's in an `ORDER BY`, and no index orders the cast.
const EVENT_COLUMNS: &str =
    "global_position, transaction_id::text::int8 AS transaction_number, event_id, stream_id, version, event_type, data, metadata, recorded_at";

/// Embedded migrations of the PostgreSQL schema.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// Connections of a store made by [`PgEventStore::connect`].
pub const DEFAULT_POOL_SIZE: u32 = 20;

/// Settings of every connection the store opens.
///
/// - `plan_cache_mode=force_generic_plan`: each statement is planned once per connection and
///   the plan reused (see `commit.sql`); planning the commit statement on every call cost more
///   than running it.
/// - `enable_seqscan=off`: a cached plan is made from the statistics of the moment and kept
///   until they change. Planned while a table is small (a new deployment, an outbox that
///   retention emptied, statistics autovacuum took of a nearly empty table), a statement
///   would scan the whole table on every call as it grows, until autovacuum comes back (a
///   minute and a half on a new database, longer for a slowly growing table). Every hot
///   statement has an index that serves it, so with sequential scans priced out their cost
///   follows the rows they touch, not the size of the table when the connection planned them.
///   A statement with no index to use still scans.
pub const SESSION_SETTINGS: [(&str, &str); 2] = [("plan_cache_mode", "force_generic_plan"), ("enable_seqscan", "off")];

/// Event store on PostgreSQL.
#[derive(Clone)]
pub struct PgEventStore {
    pool: PgPool,
    signals: Arc<CommitSignals>,
    group: Arc<GroupCommitter>,
    _tasks: Arc<DropGuard>,
}

impl PgEventStore {
    /// Connects, applies migrations and starts listening for commits of other processes.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, DEFAULT_POOL_SIZE).await
    }

    /// Like [`PgEventStore::connect`], with at most `max_connections` connections.
    pub async fn connect_with(url: &str, max_connections: u32) -> Result<Self> {
        let options = url.parse::<PgConnectOptions>()?.options(SESSION_SETTINGS);
        // A short acquire timeout: with the database down, an HTTP request gets its 503 within
        // seconds instead of hanging; background work retries anyway.
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(3))
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Self::from_pool(pool).await
    }

    /// Uses an existing pool whose database already has the schema.
    pub async fn from_pool(pool: PgPool) -> Result<Self> {
        let signals = Arc::new(CommitSignals::default());
        let instance = new_instance();
        let cancel = CancellationToken::new();
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(NOTIFY_CHANNEL).await?;
        tokio::spawn(listen_for_commits(listener, Arc::clone(&signals), instance.clone(), cancel.clone()));
        let group = Arc::new(GroupCommitter::start(pool.clone(), instance, cancel.clone()));
        Ok(Self { pool, signals, group, _tasks: Arc::new(cancel.drop_guard()) })
    }

    /// The underlying pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Writes `commit` inside the caller's transaction `tx`, which may hold writes of its own:
    /// the events, outbox messages and timers become durable when `tx` commits. Waiters in
    /// this process are not woken (there is no commit yet); subscribers find the events at
    /// their next poll. The events are not stamped with the request's caller: the caller's
    /// own transaction says who writes.
    pub async fn commit_within(&self, tx: &mut Transaction<'_, Postgres>, commit: &Commit) -> Result<CommitResult> {
        crate::store::validate_commit(commit)?;
        commit::write_in(&mut **tx, commit).await
    }

    async fn commit_tx(&self, commit: Arc<Commit>) -> Result<CommitResult> {
        // One statement outside a transaction block, alone or with the commits of a group.
        self.group.commit(commit).await
    }
}

impl PgEventStore {
    /// Runs one retention delete (`$1` the cut-off, `$2` the batch size).
    async fn delete_batch(&self, sql: &str, before: DateTime<Utc>, limit: usize) -> Result<u64> {
        Ok(sqlx::query(sql).bind(before).bind(limit_of(limit)).execute(&self.pool).await?.rows_affected())
    }
}

/// A lease in whole milliseconds, for SQL.
fn millis(lease: Duration) -> i64 {
    i64::try_from(lease.as_millis()).unwrap_or(i64::MAX)
}

fn event_from_row(row: &PgRow) -> Result<RecordedEvent> {
    Ok(RecordedEvent {
        global_position: u64_of(row.try_get("global_position")?),
        transaction_id: u64_of(row.try_get("transaction_number")?),
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
        let commit = Arc::new(crate::store::prepare_commit(commit)?);
        run_commit("postgres", &self.signals, &commit, self.commit_tx(Arc::clone(&commit))).await
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
        let version: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM events WHERE stream_id = $1")
            .bind(stream_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(version.map(u64_of).filter(|v| *v > 0))
    }

    async fn read_all(&self, after: AllPosition, limit: usize) -> Result<Vec<RecordedEvent>> {
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM events
             WHERE (transaction_id, global_position) > ($1::int8::text::xid8, $2)
               AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
             ORDER BY events.transaction_id, events.global_position LIMIT $3"
        ))
        .bind(i64_of(after.transaction_id))
        .bind(i64_of(after.global_position))
        .bind(limit_of(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn count_after(&self, after: AllPosition, cap: usize) -> Result<u64> {
        let count: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT 1 FROM events
               WHERE (transaction_id, global_position) > ($1::int8::text::xid8, $2) LIMIT $3) AS behind",
        )
        .bind(i64_of(after.transaction_id))
        .bind(i64_of(after.global_position))
        .bind(limit_of(cap))
        .fetch_one(&self.pool)
        .await?;
        Ok(u64_of(count))
    }

    fn saga_index(&self) -> Arc<dyn crate::saga_index::SagaIndex> {
        Arc::new(crate::saga_index::PgSagaIndex::new(self.pool.clone()))
    }

    async fn list_streams(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT stream_id FROM streams WHERE starts_with(stream_id, $1)
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

    async fn hold_outbox(&self, relay_id: &str, lease: Duration) -> Result<Option<OutboxPosition>> {
        let held: Option<(i64, i64)> = sqlx::query_as(
            "UPDATE outbox_relay SET owner = $1, lease_until = clock_timestamp() + $2 * interval '1 millisecond'
             WHERE name = 'outbox' AND (owner IS NULL OR owner = $1 OR lease_until < clock_timestamp())
             RETURNING transaction_id, id",
        )
        .bind(relay_id)
        .bind(millis(lease))
        .fetch_optional(&self.pool)
        .await?;
        Ok(held.map(|(transaction_id, id)| OutboxPosition { transaction_id: u64_of(transaction_id), id: u64_of(id) }))
    }

    async fn read_outbox(&self, after: OutboxPosition, limit: usize) -> Result<Vec<OutboxMessage>> {
        let rows = sqlx::query(
            "SELECT id, transaction_id::text::int8 AS transaction_number, topic, msg_key, payload, headers, created_at
               FROM outbox
              WHERE (transaction_id, id) > ($1::int8::text::xid8, $2)
                AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
              ORDER BY outbox.transaction_id, outbox.id LIMIT $3",
        )
        .bind(i64_of(after.transaction_id))
        .bind(i64_of(after.id))
        .bind(limit_of(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let headers: serde_json::Value = row.try_get("headers")?;
                Ok(OutboxMessage {
                    id: u64_of(row.try_get("id")?),
                    transaction_id: u64_of(row.try_get("transaction_number")?),
                    created_at: row.try_get("created_at")?,
                    message: OutgoingMessage {
                        topic: row.try_get("topic")?,
                        key: row.try_get("msg_key")?,
                        payload: row.try_get("payload")?,
                        headers: serde_json::from_value(headers).unwrap_or_default(),
                    },
                })
            })
            .collect()
    }

    async fn advance_outbox(&self, relay_id: &str, to: OutboxPosition, lease: Duration) -> Result<bool> {
        let moved = sqlx::query(
            "UPDATE outbox_relay
                SET transaction_id = CASE WHEN (transaction_id, id) < ($2, $3) THEN $2 ELSE transaction_id END,
                    id = CASE WHEN (transaction_id, id) < ($2, $3) THEN $3 ELSE id END,
                    lease_until = clock_timestamp() + $4 * interval '1 millisecond'
              WHERE name = 'outbox' AND owner = $1",
        )
        .bind(relay_id)
        .bind(i64_of(to.transaction_id))
        .bind(i64_of(to.id))
        .bind(millis(lease))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(moved == 1)
    }

    async fn mark_dead_lettered(&self, id: u64, reason: &str) -> Result<()> {
        sqlx::query("UPDATE outbox SET dead_letter_reason = $2 WHERE id = $1")
            .bind(i64_of(id))
            .bind(reason)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn delete_published_outbox(&self, before: DateTime<Utc>, limit: usize) -> Result<u64> {
        self.delete_batch(
            "DELETE FROM outbox WHERE id = ANY(ARRAY(
               SELECT o.id FROM outbox o, outbox_relay r
                WHERE r.name = 'outbox' AND o.created_at < $1 AND o.dead_letter_reason IS NULL
                  AND (o.transaction_id, o.id) <= (r.transaction_id::text::xid8, r.id)
                ORDER BY o.created_at LIMIT $2))",
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
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM outbox o, outbox_relay r
              WHERE r.name = 'outbox' AND (o.transaction_id, o.id) > (r.transaction_id::text::xid8, r.id)",
        )
        .fetch_one(&self.pool)
        .await?;
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

    fn signals(&self) -> &Arc<CommitSignals> {
        &self.signals
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }
}
