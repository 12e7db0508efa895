//! The saga index in the embedded SQLite database.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::params;
use sqlx::SqlitePool;
use uuid::Uuid;

use super::query::{page, stuck_counts, Stored, StoredRow, CHECKPOINT};
use super::{SagaIndex, SagaQuery, SagaRow, StuckCount, StuckFilter};
use crate::error::{Error, Result};
use crate::model::{i64_of, u64_of, AllPosition};
use crate::sqlite::Writer;

const COLUMNS: &str = "saga_id, definition, definition_version, status, current_step, started_us, progress_us, \
     finished_us, waiting_until_us, stuck_after_ms";

/// The saga index in the embedded store's SQLite database: pages are read through sqlx,
/// and every write goes through the store's one writer thread.
#[derive(Clone)]
pub struct SqliteSagaIndex {
    pool: SqlitePool,
    writer: Writer,
}

impl SqliteSagaIndex {
    /// The index in the database of `pool` (migrated with the event store's schema), written
    /// by `writer`.
    pub(crate) fn new(pool: SqlitePool, writer: Writer) -> Self {
        Self { pool, writer }
    }
}

#[async_trait]
impl SagaIndex for SqliteSagaIndex {
    async fn checkpoint(&self) -> Result<AllPosition> {
        let (transaction_id, global_position): (i64, i64) =
            sqlx::query_as("SELECT transaction_id, global_position FROM projection_checkpoints WHERE name = ?")
                .bind(CHECKPOINT)
                .fetch_optional(&self.pool)
                .await?
                .unwrap_or((0, 0));
        Ok(AllPosition { transaction_id: u64_of(transaction_id), global_position: u64_of(global_position) })
    }

    async fn rows(&self, ids: &[Uuid]) -> Result<Vec<SagaRow>> {
        let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        let rows: Vec<StoredRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM saga_index WHERE saga_id IN (SELECT value FROM json_each(?))"
        ))
        .bind(serde_json::to_string(&ids).unwrap_or_default())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(StoredRow::into_row).collect()
    }

    async fn write(&self, rows: &[SagaRow], from: AllPosition, to: AllPosition) -> Result<()> {
        let rows = rows.to_vec();
        self.writer
            .run(move |connection, state| {
                let tx = connection.transaction()?;
                let moved = tx
                    .prepare_cached(
                        "UPDATE projection_checkpoints SET transaction_id = ?1, global_position = ?2 \
                         WHERE name = ?3 AND transaction_id = ?4 AND global_position = ?5",
                    )?
                    .execute(params![
                        i64_of(to.transaction_id),
                        i64_of(to.global_position),
                        CHECKPOINT,
                        i64_of(from.transaction_id),
                        i64_of(from.global_position)
                    ])?;
                if moved == 0 {
                    state.statements.add(3);
                    return Err(Error::CheckpointMoved);
                }
                {
                    let mut upsert = tx.prepare_cached(
                        "INSERT INTO saga_index (saga_id, definition, definition_version, status, current_step, \
                            started_us, progress_us, finished_us, waiting_until_us, stuck_after_ms) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
                         ON CONFLICT (saga_id) DO UPDATE SET definition = excluded.definition, \
                            definition_version = excluded.definition_version, status = excluded.status, \
                            current_step = excluded.current_step, started_us = excluded.started_us, \
                            progress_us = excluded.progress_us, finished_us = excluded.finished_us, \
                            waiting_until_us = excluded.waiting_until_us, stuck_after_ms = excluded.stuck_after_ms",
                    )?;
                    for row in &rows {
                        let stored = Stored::of(row);
                        upsert.execute(params![
                            row.saga_id.to_string(),
                            row.definition,
                            stored.version,
                            row.status,
                            row.current_step,
                            stored.started_us,
                            stored.progress_us,
                            stored.finished_us,
                            stored.waiting_until_us,
                            stored.stuck_after_ms
                        ])?;
                    }
                }
                tx.commit()?;
                state.statements.add(3 + rows.len() as u64);
                Ok(())
            })
            .await
    }

    async fn query(&self, query: &SagaQuery) -> Result<Vec<SagaRow>> {
        let rows: Vec<StoredRow> =
            page::<sqlx::Sqlite>(COLUMNS, "", query).build_query_as().fetch_all(&self.pool).await?;
        rows.into_iter().map(StoredRow::into_row).collect()
    }

    async fn stuck_counts(&self, now: DateTime<Utc>, default_after_ms: u64) -> Result<Vec<StuckCount>> {
        let filter = StuckFilter { stuck: true, now, default_after_ms };
        let counts: Vec<(String, i64)> =
            stuck_counts::<sqlx::Sqlite>(&filter).build_query_as().fetch_all(&self.pool).await?;
        Ok(counts.into_iter().map(|(definition, count)| StuckCount { definition, count: u64_of(count) }).collect())
    }

    async fn take_newly_stuck(&self, now: DateTime<Utc>, default_after_ms: u64, limit: usize) -> Result<Vec<SagaRow>> {
        let open: Vec<String> = super::OPEN_STATUSES.iter().map(|s| format!("'{s}'")).collect();
        let sql = format!(
            "UPDATE saga_index SET stuck_reported_us = progress_us WHERE saga_id IN \
             (SELECT saga_id FROM saga_index WHERE stuck_reported_us IS NOT progress_us \
                AND status IN ({}) \
                AND CASE WHEN waiting_until_us > progress_us THEN waiting_until_us ELSE progress_us END \
                    + COALESCE(stuck_after_ms * 1000, ?1) <= ?2 \
              LIMIT ?3) RETURNING {COLUMNS}",
            open.join(", ")
        );
        let threshold = super::threshold_us(None, default_after_ms);
        let rows: Vec<StoredRow> = self
            .writer
            .run(move |connection, state| {
                state.statements.add(1);
                let mut statement = connection.prepare_cached(&sql)?;
                let rows =
                    statement.query_map(params![threshold, now.timestamp_micros(), i64_of(limit as u64)], |row| {
                        Ok(StoredRow {
                            saga_id: row.get(0)?,
                            definition: row.get(1)?,
                            definition_version: row.get(2)?,
                            status: row.get(3)?,
                            current_step: row.get(4)?,
                            started_us: row.get(5)?,
                            progress_us: row.get(6)?,
                            finished_us: row.get(7)?,
                            waiting_until_us: row.get(8)?,
                            stuck_after_ms: row.get(9)?,
                        })
                    })?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            })
            .await?;
        rows.into_iter().map(StoredRow::into_row).collect()
    }

    async fn reset(&self) -> Result<()> {
        self.writer
            .run(|connection, state| {
                let tx = connection.transaction()?;
                tx.execute(
                    "UPDATE projection_checkpoints SET transaction_id = 0, global_position = 0 WHERE name = ?1",
                    [CHECKPOINT],
                )?;
                tx.execute("DELETE FROM saga_index", [])?;
                tx.commit()?;
                state.statements.add(4);
                Ok(())
            })
            .await
    }
}
