//! PostgreSQL backend.
//!
//! A commit is one call of the `sagaflow_commit` SQL function: one round trip whatever its
//! size. Per-stream concurrency: the function takes a transaction-scoped advisory lock on
//! the stream and compares versions; a unique `(stream_id, version)` constraint backs that up. Global
//! order without a global lock: each event records its transaction id (xid8), and `$all`
//! readers see only events of transactions older than every running one, in (transaction,
//! position) order, so writers commit in parallel and no reader skips an event that
//! commits later at a lower position. Commits are announced to other processes by one
//! task that coalesces them into few NOTIFYs, so no commit waits on PostgreSQL's
//! notification lock.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::json;
use sqlx::postgres::{PgDatabaseError, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row, Transaction};
use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, DropGuard};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::model::{
    i64_of, u64_of, AllPosition, AppendResult, Commit, CommitResult, DueTimer, ExpectedVersion, OutboxMessage,
    OutgoingMessage, RecordedEvent, Snapshot, TimerChange,
};
use crate::signals::CommitSignals;
use crate::sql::{limit_of, run_commit};
use crate::store::EventStore;

/// Columns of an event row, in the order the row readers expect.
const EVENT_COLUMNS: &str =
    "global_position, transaction_id::text::int8 AS transaction_id, event_id, stream_id, version, event_type, data, metadata, recorded_at";

/// Embedded migrations of the PostgreSQL schema.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

const NOTIFY_CHANNEL: &str = "sagaflow_commits";
/// NOTIFY payloads must stay under 8,000 bytes; beyond this a notice says "anything".
const MAX_NOTICE_BYTES: usize = 7_000;
/// The notice entry that means "any stream may have changed".
const ANY_STREAM: &str = "*";

/// Event store on PostgreSQL.
#[derive(Clone)]
pub struct PgEventStore {
    pool: PgPool,
    signals: Arc<CommitSignals>,
    announcer: Arc<Announcer>,
    _tasks: Arc<DropGuard>,
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
        let signals = Arc::new(CommitSignals::default());
        let announcer = Arc::new(Announcer::new());
        let cancel = CancellationToken::new();
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(NOTIFY_CHANNEL).await?;
        tokio::spawn(listen_for_commits(listener, Arc::clone(&signals), announcer.instance.clone(), cancel.clone()));
        tokio::spawn(Arc::clone(&announcer).run(pool.clone(), cancel.clone()));
        Ok(Self { pool, signals, announcer, _tasks: Arc::new(cancel.drop_guard()) })
    }

    /// The underlying pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Writes `commit` inside the caller's transaction `tx`, which may hold writes of its own:
    /// the events, outbox messages and timers become durable when `tx` commits. Waiters in
    /// this process are not woken (there is no commit yet); subscribers find the events at
    /// their next poll.
    pub async fn commit_within(&self, tx: &mut Transaction<'_, Postgres>, commit: &Commit) -> Result<CommitResult> {
        crate::store::validate_commit(commit)?;
        write_commit(&mut **tx, commit).await
    }

    async fn commit_tx(&self, commit: &Commit) -> Result<CommitResult> {
        // One statement outside a transaction block: one round trip, its own transaction.
        let result = write_commit(&self.pool, commit).await?;
        self.announcer.announce(commit);
        Ok(result)
    }
}

/// Runs `sagaflow_commit` (see its migration) on `executor` and maps its refusals.
async fn write_commit<'e, E>(executor: E, commit: &Commit) -> Result<CommitResult>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    let written: serde_json::Value = sqlx::query_scalar("SELECT sagaflow_commit($1)")
        .bind(commit_json(commit))
        .fetch_one(executor)
        .await
        .map_err(|e| map_refusal(e, commit))?;
    let landed: Vec<Landed> = serde_json::from_value(written)
        .map_err(|e| Error::Invalid(format!("sagaflow_commit returned an unexpected shape: {e}")))?;
    let mut appends: Vec<Option<AppendResult>> = vec![None; commit.appends.len()];
    for landed in landed {
        let append = commit.appends.get(landed.i).ok_or_else(|| Error::Invalid("sagaflow_commit: bad index".into()))?;
        appends[landed.i] = Some(AppendResult {
            stream_id: append.stream_id.clone(),
            next_expected_version: landed.version,
            positions: landed.positions,
            already_stored: landed.already_stored,
        });
    }
    let appends = appends.into_iter().collect::<Option<Vec<_>>>();
    Ok(CommitResult { appends: appends.ok_or_else(|| Error::Invalid("sagaflow_commit skipped an append".into()))? })
}

/// Where one append landed, as `sagaflow_commit` reports it.
#[derive(serde::Deserialize)]
struct Landed {
    i: usize,
    version: u64,
    positions: Vec<u64>,
    already_stored: bool,
}

/// The argument of `sagaflow_commit`: appends in stream-id order (the lock order), the
/// last change per timer key.
fn commit_json(commit: &Commit) -> serde_json::Value {
    let mut order: Vec<usize> = (0..commit.appends.len()).collect();
    order.sort_by(|a, b| commit.appends[*a].stream_id.cmp(&commit.appends[*b].stream_id));
    let appends: Vec<serde_json::Value> = order
        .into_iter()
        .map(|i| {
            let append = &commit.appends[i];
            let expected = match append.expected {
                ExpectedVersion::Any => json!("any"),
                ExpectedVersion::NoStream | ExpectedVersion::Exact(0) => json!("no_stream"),
                ExpectedVersion::Exact(v) => json!(v),
            };
            let events: Vec<serde_json::Value> = append
                .events
                .iter()
                .map(|e| json!({ "id": e.event_id, "type": e.event_type, "data": e.data, "metadata": e.metadata }))
                .collect();
            json!({ "i": i, "stream": append.stream_id, "expected": expected, "events": events })
        })
        .collect();
    let outbox: Vec<serde_json::Value> = commit
        .outbox
        .iter()
        .map(|m| json!({ "topic": m.topic, "key": m.key, "payload": BASE64.encode(&m.payload), "headers": m.headers }))
        .collect();
    let mut timers: BTreeMap<&str, Option<String>> = BTreeMap::new();
    for change in &commit.timers {
        match change {
            TimerChange::Set { key, due_at } => {
                timers.insert(key, Some(due_at.to_rfc3339_opts(SecondsFormat::Micros, true)))
            }
            TimerChange::Cancel { key } => timers.insert(key, None),
        };
    }
    let timers: Vec<serde_json::Value> =
        timers.into_iter().map(|(key, due_at)| json!({ "key": key, "due_at": due_at })).collect();
    let processed = commit.processed.as_ref().map(|p| json!({ "consumer": p.consumer, "message_id": p.message_id }));
    json!({ "appends": appends, "processed": processed, "outbox": outbox, "timers": timers })
}

/// Maps the refusals `sagaflow_commit` raises (SQLSTATE class SF) and unique violations to
/// the store's typed errors.
fn map_refusal(err: sqlx::Error, commit: &Commit) -> Error {
    let sqlx::Error::Database(db) = &err else { return Error::Database(err) };
    let detail = db.try_downcast_ref::<PgDatabaseError>().and_then(PgDatabaseError::detail).unwrap_or_default();
    let stream = db.message().to_owned();
    let append = commit.appends.iter().find(|a| a.stream_id == stream);
    match db.code().as_deref() {
        Some("SF001") => Error::WrongExpectedVersion {
            expected: append.map_or(ExpectedVersion::Any, |a| a.expected),
            actual: detail.parse::<u64>().ok().filter(|v| *v > 0),
            stream,
        },
        Some("SF002") => match &commit.processed {
            Some(p) => Error::AlreadyProcessed { consumer: p.consumer.clone(), message_id: p.message_id.clone() },
            None => Error::Database(err),
        },
        Some("SF004") => Error::PartialIdempotentAppend { stream },
        _ if db.is_unique_violation() && db.constraint() == Some("events_event_id_key") => {
            // DETAIL: Key (event_id)=(<uuid>) already exists.
            let event_id = detail
                .split(['(', ')'])
                .find_map(|part| Uuid::parse_str(part).ok())
                .or_else(|| commit.appends.iter().flat_map(|a| &a.events).map(|e| e.event_id).next())
                .unwrap_or_default();
            Error::DuplicateEventId { event_id }
        }
        _ => Error::Database(err),
    }
}

impl PgEventStore {
    /// Runs one retention delete (`$1` the cut-off, `$2` the batch size).
    async fn delete_batch(&self, sql: &str, before: DateTime<Utc>, limit: usize) -> Result<u64> {
        Ok(sqlx::query(sql).bind(before).bind(limit_of(limit)).execute(&self.pool).await?.rows_affected())
    }
}

/// Tells other processes about this process's commits: one task, one NOTIFY at a time,
/// carrying every stream committed since the last one. Commits never wait for it.
struct Announcer {
    /// Tells this process's own notices from others'.
    instance: String,
    pending: Mutex<Pending>,
    ready: Notify,
}

#[derive(Default)]
struct Pending {
    any: bool,
    streams: BTreeSet<String>,
    bytes: usize,
}

impl Announcer {
    fn new() -> Self {
        Self { instance: Uuid::new_v4().simple().to_string(), pending: Mutex::default(), ready: Notify::new() }
    }

    fn announce(&self, commit: &Commit) {
        {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            pending.any = true;
            for append in &commit.appends {
                let stream = &append.stream_id;
                if pending.bytes + stream.len() + 1 > MAX_NOTICE_BYTES || stream.contains('\n') || stream == ANY_STREAM
                {
                    pending.streams.clear();
                    pending.streams.insert(ANY_STREAM.to_owned());
                    pending.bytes = MAX_NOTICE_BYTES;
                } else if !pending.streams.contains(ANY_STREAM) && pending.streams.insert(stream.clone()) {
                    pending.bytes += stream.len() + 1;
                }
            }
        }
        self.ready.notify_one();
    }

    /// The next notice: this instance, then one stream per line (or `*`).
    fn take(&self) -> Option<String> {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        pending.any.then(|| {
            let mut notice = self.instance.clone();
            for stream in pending.streams {
                notice.push('\n');
                notice.push_str(&stream);
            }
            notice
        })
    }

    async fn run(self: Arc<Self>, pool: PgPool, cancel: CancellationToken) {
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = self.ready.notified() => {}
            }
            let Some(notice) = self.take() else { continue };
            let sent = sqlx::query("SELECT pg_notify($1, $2)").bind(NOTIFY_CHANNEL).bind(&notice).execute(&pool).await;
            if let Err(err) = sent {
                // Other processes' waiters fall back to their polls.
                tracing::warn!(error = %err, "cannot announce commits to other processes");
            }
        }
    }
}

async fn listen_for_commits(
    mut listener: PgListener,
    signals: Arc<CommitSignals>,
    instance: String,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            received = listener.recv() => match received {
                Ok(notice) => {
                    let mut lines = notice.payload().split('\n');
                    if lines.next() == Some(instance.as_str()) {
                        continue;
                    }
                    let streams: Vec<&str> = lines.collect();
                    if streams.contains(&ANY_STREAM) {
                        signals.wake_all();
                    } else {
                        signals.committed(streams);
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "commit listener lost its connection; retrying");
                    // Wake waiters: they re-read and lose nothing while we reconnect.
                    signals.wake_all();
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
        transaction_id: u64_of(row.try_get("transaction_id")?),
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
        run_commit("postgres", &self.signals, &commit, self.commit_tx(&commit)).await
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
             ORDER BY transaction_id, global_position LIMIT $3"
        ))
        .bind(i64_of(after.transaction_id))
        .bind(i64_of(after.global_position))
        .bind(limit_of(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_from_row).collect()
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
