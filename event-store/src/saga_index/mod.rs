//! The saga index: one row per saga (definition, status, current step, times), kept by a
//! projection of `$all` in the store's own database, so that sagas are listed and filtered
//! without replaying their streams. The rows and the projection's checkpoint move in one
//! transaction, and a writer whose checkpoint moved under it writes nothing, so any number of
//! processes may run the projection.

mod memory;
mod postgres;
mod query;
mod sqlite;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::Result;
use crate::model::AllPosition;

pub use memory::MemorySagaIndex;
pub use postgres::PgSagaIndex;
pub use sqlite::SqliteSagaIndex;

/// Statuses in which a saga waits for something: it can become stuck.
pub const OPEN_STATUSES: [&str; 3] = ["RUNNING", "COMPENSATING", "FAILED"];

/// One saga as the index holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaRow {
    pub saga_id: Uuid,
    pub definition: String,
    pub definition_version: u32,
    /// `RUNNING`, `COMPENSATING`, `COMPLETED`, `COMPENSATED` or `FAILED`.
    pub status: String,
    pub current_step: Option<String>,
    pub started_at: DateTime<Utc>,
    /// The saga's last event that moved it on.
    pub last_progress_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The deadline of the attempt in flight, or the time of the retry it waits for: a saga
    /// waiting for one is idle by design until then.
    pub waiting_until: Option<DateTime<Utc>>,
    /// The definition's own stuck threshold; the global default applies when absent.
    pub stuck_after_ms: Option<u64>,
}

impl SagaRow {
    /// Whether the saga has made no progress for longer than its threshold, counted from its
    /// last progress or, when later, from the deadline or retry it was waiting for.
    pub fn is_stuck(&self, now: DateTime<Utc>, default_stuck_after_ms: u64) -> bool {
        let idle_from = self.waiting_until.map_or(self.last_progress_at, |w| w.max(self.last_progress_at));
        OPEN_STATUSES.contains(&self.status.as_str())
            && idle_from.timestamp_micros().saturating_add(threshold_us(self.stuck_after_ms, default_stuck_after_ms))
                <= now.timestamp_micros()
    }
}

fn threshold_us(own_ms: Option<u64>, default_ms: u64) -> i64 {
    i64::try_from(own_ms.unwrap_or(default_ms).saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// Where a page starts: after the saga with this start time and id, in the page's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SagaCursor {
    pub started_at: DateTime<Utc>,
    pub saga_id: Uuid,
}

impl SagaCursor {
    /// The cursor after `row`.
    pub fn after(row: &SagaRow) -> Self {
        Self { started_at: row.started_at, saga_id: row.saga_id }
    }

    /// `at` as the index stores it: to the microsecond.
    pub fn stored_time(at: DateTime<Utc>) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(at.timestamp_micros()).unwrap_or(at)
    }

    /// An opaque text form for clients.
    pub fn encode(&self) -> String {
        format!("{}_{}", self.started_at.timestamp_micros(), self.saga_id.simple())
    }

    /// Reads [`SagaCursor::encode`]'s form back; `None` when it is not one.
    pub fn decode(text: &str) -> Option<Self> {
        let (micros, id) = text.split_once('_')?;
        let started_at = DateTime::from_timestamp_micros(micros.parse().ok()?)?;
        Some(Self { started_at, saga_id: Uuid::try_parse(id).ok()? })
    }
}

/// Stuck or not, as of `now` with the global threshold `default_after_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StuckFilter {
    pub stuck: bool,
    pub now: DateTime<Utc>,
    pub default_after_ms: u64,
}

/// A filtered page of the index, by start time (then id).
#[derive(Debug, Clone, Default)]
pub struct SagaQuery {
    pub status: Option<String>,
    pub definition: Option<String>,
    pub stuck: Option<StuckFilter>,
    /// Started at or after.
    pub started_from: Option<DateTime<Utc>>,
    /// Started before.
    pub started_to: Option<DateTime<Utc>>,
    pub after: Option<SagaCursor>,
    /// Newest first.
    pub descending: bool,
    pub limit: usize,
}

/// Stuck sagas of one definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StuckCount {
    pub definition: String,
    pub count: u64,
}

/// A backend's saga index.
#[async_trait]
pub trait SagaIndex: Send + Sync + 'static {
    /// The position of the last event the index has taken in.
    async fn checkpoint(&self) -> Result<AllPosition>;

    /// The rows of these sagas that the index has.
    async fn rows(&self, ids: &[Uuid]) -> Result<Vec<SagaRow>>;

    /// Writes `rows` (replacing those of the same sagas) and moves the checkpoint from `from`
    /// to `to`, in one transaction. Fails with [`crate::Error::CheckpointMoved`], writing
    /// nothing, when the checkpoint is no longer `from` (another projection got there first).
    async fn write(&self, rows: &[SagaRow], from: AllPosition, to: AllPosition) -> Result<()>;

    /// One page of sagas matching `query`.
    async fn query(&self, query: &SagaQuery) -> Result<Vec<SagaRow>>;

    /// Stuck sagas per definition (definitions with none are left out).
    async fn stuck_counts(&self, now: DateTime<Utc>, default_after_ms: u64) -> Result<Vec<StuckCount>>;

    /// Up to `limit` stuck sagas not yet reported since their last progress; each is marked
    /// reported, so it is returned once until it moves on and gets stuck again.
    async fn take_newly_stuck(&self, now: DateTime<Utc>, default_after_ms: u64, limit: usize) -> Result<Vec<SagaRow>>;

    /// Empties the index and sets its checkpoint back to the start, for a rebuild.
    async fn reset(&self) -> Result<()>;
}
