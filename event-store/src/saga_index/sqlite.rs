//! The saga index in the embedded SQLite database.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::SqlitePool;
use uuid::Uuid;

use super::query::{page, push_stuck, stuck_counts, Stored, StoredRow, CHECKPOINT};
use super::{SagaIndex, SagaQuery, SagaRow, StuckCount, StuckFilter};
use crate::error::{Error, Result};
use crate::model::{i64_of, u64_of, AllPosition};

const COLUMNS: &str = "saga_id, definition, definition_version, status, current_step, started_us, progress_us, \
     finished_us, waiting_until_us, stuck_after_ms";

/// The saga index in the embedded store's SQLite database.
#[derive(Clone)]
pub struct SqliteSagaIndex {
    pool: SqlitePool,
}

impl SqliteSagaIndex {
    /// The index in the database of `pool` (migrated with the event store's schema).
    pub fn new(pool: SqlitePool) -> Self {
        Self { pool }
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
        let mut tx = self.pool.begin().await?;
        let moved = sqlx::query(
            "UPDATE projection_checkpoints SET transaction_id = ?, global_position = ? \
             WHERE name = ? AND transaction_id = ? AND global_position = ?",
        )
        .bind(i64_of(to.transaction_id))
        .bind(i64_of(to.global_position))
        .bind(CHECKPOINT)
        .bind(i64_of(from.transaction_id))
        .bind(i64_of(from.global_position))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if moved == 0 {
            return Err(Error::CheckpointMoved);
        }
        for row in rows {
            let stored = Stored::of(row);
            sqlx::query(
                "INSERT INTO saga_index (saga_id, definition, definition_version, status, current_step, started_us, \
                    progress_us, finished_us, waiting_until_us, stuck_after_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (saga_id) DO UPDATE SET definition = excluded.definition, \
                    definition_version = excluded.definition_version, status = excluded.status, \
                    current_step = excluded.current_step, started_us = excluded.started_us, \
                    progress_us = excluded.progress_us, finished_us = excluded.finished_us, \
                    waiting_until_us = excluded.waiting_until_us, stuck_after_ms = excluded.stuck_after_ms",
            )
            .bind(row.saga_id.to_string())
            .bind(&row.definition)
            .bind(stored.version)
            .bind(&row.status)
            .bind(&row.current_step)
            .bind(stored.started_us)
            .bind(stored.progress_us)
            .bind(stored.finished_us)
            .bind(stored.waiting_until_us)
            .bind(stored.stuck_after_ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
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
        let mut sql = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "UPDATE saga_index SET stuck_reported_us = progress_us WHERE saga_id IN \
             (SELECT saga_id FROM saga_index WHERE stuck_reported_us IS NOT progress_us",
        );
        push_stuck(&mut sql, &StuckFilter { stuck: true, now, default_after_ms });
        sql.push(" LIMIT ").push_bind(i64_of(limit as u64));
        sql.push(format!(") RETURNING {COLUMNS}"));
        let rows: Vec<StoredRow> = sql.build_query_as().fetch_all(&self.pool).await?;
        rows.into_iter().map(StoredRow::into_row).collect()
    }

    async fn reset(&self) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE projection_checkpoints SET transaction_id = 0, global_position = 0 WHERE name = ?")
            .bind(CHECKPOINT)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM saga_index").execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }
}
