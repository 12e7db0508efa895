//! The saga index in PostgreSQL.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::query::{page, push_stuck, stuck_counts, Stored, StoredRow, CHECKPOINT};
use super::{SagaIndex, SagaQuery, SagaRow, StuckCount, StuckFilter};
use crate::error::{Error, Result};
use crate::model::{i64_of, u64_of, AllPosition};

const COLUMNS: &str = "saga_id::text AS saga_id, definition, definition_version::int8 AS definition_version, status, \
     current_step, started_us, progress_us, finished_us, waiting_until_us, stuck_after_ms";

/// The saga index in the event store's PostgreSQL database.
#[derive(Clone)]
pub struct PgSagaIndex {
    pool: PgPool,
}

impl PgSagaIndex {
    /// The index in the database of `pool` (migrated with the event store's schema).
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl SagaIndex for PgSagaIndex {
    async fn checkpoint(&self) -> Result<AllPosition> {
        let (transaction_id, global_position): (i64, i64) =
            sqlx::query_as("SELECT transaction_id, global_position FROM projection_checkpoints WHERE name = $1")
                .bind(CHECKPOINT)
                .fetch_optional(&self.pool)
                .await?
                .unwrap_or((0, 0));
        Ok(AllPosition { transaction_id: u64_of(transaction_id), global_position: u64_of(global_position) })
    }

    async fn rows(&self, ids: &[Uuid]) -> Result<Vec<SagaRow>> {
        let rows: Vec<StoredRow> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM saga_index WHERE saga_id = ANY($1)"))
            .bind(ids)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(StoredRow::into_row).collect()
    }

    async fn write(&self, rows: &[SagaRow], from: AllPosition, to: AllPosition) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        // The checkpoint row is locked until commit: concurrent projections take turns, and
        // the one that finds the checkpoint moved writes nothing.
        let moved = sqlx::query(
            "UPDATE projection_checkpoints SET transaction_id = $2, global_position = $3 \
             WHERE name = $1 AND transaction_id = $4 AND global_position = $5",
        )
        .bind(CHECKPOINT)
        .bind(i64_of(to.transaction_id))
        .bind(i64_of(to.global_position))
        .bind(i64_of(from.transaction_id))
        .bind(i64_of(from.global_position))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if moved == 0 {
            return Err(Error::CheckpointMoved);
        }
        if !rows.is_empty() {
            let stored: Vec<Stored> = rows.iter().map(Stored::of).collect();
            sqlx::query(
                "INSERT INTO saga_index (saga_id, definition, definition_version, status, current_step, started_us, \
                    progress_us, finished_us, waiting_until_us, stuck_after_ms) \
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::int4[], $4::text[], $5::text[], $6::int8[], \
                    $7::int8[], $8::int8[], $9::int8[], $10::int8[]) \
                 ON CONFLICT (saga_id) DO UPDATE SET definition = excluded.definition, \
                    definition_version = excluded.definition_version, status = excluded.status, \
                    current_step = excluded.current_step, started_us = excluded.started_us, \
                    progress_us = excluded.progress_us, finished_us = excluded.finished_us, \
                    waiting_until_us = excluded.waiting_until_us, stuck_after_ms = excluded.stuck_after_ms",
            )
            .bind(rows.iter().map(|r| r.saga_id).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.definition.clone()).collect::<Vec<_>>())
            .bind(stored.iter().map(|s| i32::try_from(s.version).unwrap_or(i32::MAX)).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.status.clone()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.current_step.clone()).collect::<Vec<_>>())
            .bind(stored.iter().map(|s| s.started_us).collect::<Vec<_>>())
            .bind(stored.iter().map(|s| s.progress_us).collect::<Vec<_>>())
            .bind(stored.iter().map(|s| s.finished_us).collect::<Vec<_>>())
            .bind(stored.iter().map(|s| s.waiting_until_us).collect::<Vec<_>>())
            .bind(stored.iter().map(|s| s.stuck_after_ms).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn query(&self, query: &SagaQuery) -> Result<Vec<SagaRow>> {
        let rows: Vec<StoredRow> =
            page::<sqlx::Postgres>(COLUMNS, "::uuid", query).build_query_as().fetch_all(&self.pool).await?;
        rows.into_iter().map(StoredRow::into_row).collect()
    }

    async fn stuck_counts(&self, now: DateTime<Utc>, default_after_ms: u64) -> Result<Vec<StuckCount>> {
        let filter = StuckFilter { stuck: true, now, default_after_ms };
        let counts: Vec<(String, i64)> =
            stuck_counts::<sqlx::Postgres>(&filter).build_query_as().fetch_all(&self.pool).await?;
        Ok(counts.into_iter().map(|(definition, count)| StuckCount { definition, count: u64_of(count) }).collect())
    }

    async fn take_newly_stuck(&self, now: DateTime<Utc>, default_after_ms: u64, limit: usize) -> Result<Vec<SagaRow>> {
        let mut sql = sqlx::QueryBuilder::<sqlx::Postgres>::new(
            "UPDATE saga_index SET stuck_reported_us = progress_us WHERE saga_id IN \
             (SELECT saga_id FROM saga_index WHERE stuck_reported_us IS DISTINCT FROM progress_us",
        );
        push_stuck(&mut sql, &StuckFilter { stuck: true, now, default_after_ms });
        sql.push(" LIMIT ").push_bind(i64_of(limit as u64));
        sql.push(format!(" FOR UPDATE SKIP LOCKED) RETURNING {COLUMNS}"));
        let rows: Vec<StoredRow> = sql.build_query_as().fetch_all(&self.pool).await?;
        rows.into_iter().map(StoredRow::into_row).collect()
    }

    async fn reset(&self) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE projection_checkpoints SET transaction_id = 0, global_position = 0 WHERE name = $1")
            .bind(CHECKPOINT)
            .execute(&mut *tx)
            .await?;
        sqlx::query("TRUNCATE saga_index").execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }
}
