//! The SQL both database backends share: the index's columns, its filters and keyset paging.

use chrono::DateTime;
use sqlx::{Database, Encode, QueryBuilder, Type};
use uuid::Uuid;

use super::{threshold_us, SagaQuery, SagaRow, StuckFilter};
use crate::error::{Error, Result};
use crate::model::u64_of;

/// The projection's checkpoint row.
pub(super) const CHECKPOINT: &str = "saga_index";

/// A row as stored: times in microseconds since the epoch, so both databases compare them alike.
#[derive(sqlx::FromRow)]
pub(super) struct StoredRow {
    pub saga_id: String,
    pub definition: String,
    pub definition_version: i64,
    pub status: String,
    pub current_step: Option<String>,
    pub started_us: i64,
    pub progress_us: i64,
    pub finished_us: Option<i64>,
    pub waiting_until_us: Option<i64>,
    pub stuck_after_ms: Option<i64>,
}

impl StoredRow {
    pub(super) fn into_row(self) -> Result<SagaRow> {
        let at = |us: i64| DateTime::from_timestamp_micros(us).unwrap_or_default();
        Ok(SagaRow {
            saga_id: Uuid::try_parse(&self.saga_id)
                .map_err(|e| Error::Invalid(format!("saga index holds a bad id '{}': {e}", self.saga_id)))?,
            definition: self.definition,
            definition_version: u32::try_from(self.definition_version).unwrap_or_default(),
            status: self.status,
            current_step: self.current_step,
            started_at: at(self.started_us),
            last_progress_at: at(self.progress_us),
            finished_at: self.finished_us.map(at),
            waiting_until: self.waiting_until_us.map(at),
            stuck_after_ms: self.stuck_after_ms.map(u64_of),
        })
    }
}

/// Appends the stuck condition (or its negation) to a WHERE clause.
pub(super) fn push_stuck<'a, DB>(sql: &mut QueryBuilder<'a, DB>, filter: &StuckFilter)
where
    DB: Database,
    i64: Encode<'a, DB> + Type<DB>,
{
    sql.push(if filter.stuck { " AND (" } else { " AND NOT (" });
    // The statuses as literals (not bound), so that the partial index of open sagas serves
    // every plan, generic ones included.
    let open: Vec<String> = super::OPEN_STATUSES.iter().map(|s| format!("'{s}'")).collect();
    sql.push(format!("status IN ({}) AND ", open.join(", ")));
    sql.push(
        "CASE WHEN waiting_until_us > progress_us THEN waiting_until_us ELSE progress_us END \
         + COALESCE(stuck_after_ms * 1000, ",
    );
    sql.push_bind(threshold_us(None, filter.default_after_ms));
    sql.push(") <= ");
    sql.push_bind(filter.now.timestamp_micros());
    sql.push(")");
}

/// Stuck sagas per definition, as `(definition, count)` rows.
pub(super) fn stuck_counts<'a, DB>(filter: &StuckFilter) -> QueryBuilder<'a, DB>
where
    DB: Database,
    i64: Encode<'a, DB> + Type<DB>,
{
    let mut sql = QueryBuilder::new("SELECT definition, count(*) FROM saga_index WHERE TRUE");
    push_stuck(&mut sql, filter);
    sql.push(" GROUP BY definition ORDER BY definition");
    sql
}

/// `SELECT <columns> FROM saga_index WHERE …` for one page of `query`, ordered for keyset
/// paging: each filter and the cursor are index ranges, so the work follows the page size.
/// `id_cast` turns a bound text id into the column's type.
pub(super) fn page<'a, DB>(columns: &str, id_cast: &str, query: &SagaQuery) -> QueryBuilder<'a, DB>
where
    DB: Database,
    i64: Encode<'a, DB> + Type<DB>,
    String: Encode<'a, DB> + Type<DB>,
{
    let mut sql = QueryBuilder::new(format!("SELECT {columns} FROM saga_index WHERE TRUE"));
    if let Some(status) = &query.status {
        sql.push(" AND status = ").push_bind(status.clone());
    }
    if let Some(definition) = &query.definition {
        sql.push(" AND definition = ").push_bind(definition.clone());
    }
    if let Some(from) = query.started_from {
        sql.push(" AND started_us >= ").push_bind(from.timestamp_micros());
    }
    if let Some(to) = query.started_to {
        sql.push(" AND started_us < ").push_bind(to.timestamp_micros());
    }
    if let Some(stuck) = &query.stuck {
        push_stuck(&mut sql, stuck);
    }
    if let Some(after) = &query.after {
        sql.push(if query.descending { " AND (started_us, saga_id) < (" } else { " AND (started_us, saga_id) > (" });
        sql.push_bind(after.started_at.timestamp_micros());
        sql.push(", ").push_bind(after.saga_id.to_string()).push(id_cast).push(")");
    }
    let direction = if query.descending { "DESC" } else { "ASC" };
    sql.push(format!(" ORDER BY started_us {direction}, saga_id {direction} LIMIT "));
    sql.push_bind(i64::try_from(query.limit).unwrap_or(i64::MAX));
    sql
}

/// The stored form of a row's times and numbers.
pub(super) struct Stored {
    pub started_us: i64,
    pub progress_us: i64,
    pub finished_us: Option<i64>,
    pub waiting_until_us: Option<i64>,
    pub stuck_after_ms: Option<i64>,
    pub version: i64,
}

impl Stored {
    pub(super) fn of(row: &SagaRow) -> Self {
        Self {
            started_us: row.started_at.timestamp_micros(),
            progress_us: row.last_progress_at.timestamp_micros(),
            finished_us: row.finished_at.map(|t| t.timestamp_micros()),
            waiting_until_us: row.waiting_until.map(|t| t.timestamp_micros()),
            stuck_after_ms: row.stuck_after_ms.map(crate::model::i64_of),
            version: i64::from(row.definition_version),
        }
    }
}
