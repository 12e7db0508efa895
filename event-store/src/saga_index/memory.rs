//! The saga index in memory, for unit tests of what uses it.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{SagaIndex, SagaQuery, SagaRow, StuckCount};
use crate::error::{Error, Result};
use crate::model::AllPosition;

#[derive(Default)]
struct State {
    checkpoint: AllPosition,
    rows: BTreeMap<Uuid, SagaRow>,
    reported: BTreeMap<Uuid, DateTime<Utc>>,
}

/// A saga index held in memory.
#[derive(Default)]
pub struct MemorySagaIndex {
    state: Mutex<State>,
}

impl MemorySagaIndex {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn matches(query: &SagaQuery, row: &SagaRow) -> bool {
    let key = (row.started_at, row.saga_id);
    query.status.as_ref().is_none_or(|s| *s == row.status)
        && query.definition.as_ref().is_none_or(|d| *d == row.definition)
        && query.started_from.is_none_or(|t| row.started_at >= t)
        && query.started_to.is_none_or(|t| row.started_at < t)
        && query.stuck.is_none_or(|f| row.is_stuck(f.now, f.default_after_ms) == f.stuck)
        && query.after.is_none_or(|a| {
            let after = (a.started_at, a.saga_id);
            if query.descending {
                key < after
            } else {
                key > after
            }
        })
}

#[async_trait]
impl SagaIndex for MemorySagaIndex {
    async fn checkpoint(&self) -> Result<AllPosition> {
        Ok(self.lock().checkpoint)
    }

    async fn rows(&self, ids: &[Uuid]) -> Result<Vec<SagaRow>> {
        let state = self.lock();
        Ok(ids.iter().filter_map(|id| state.rows.get(id).cloned()).collect())
    }

    async fn write(&self, rows: &[SagaRow], from: AllPosition, to: AllPosition) -> Result<()> {
        let mut state = self.lock();
        if state.checkpoint != from {
            return Err(Error::CheckpointMoved);
        }
        state.checkpoint = to;
        // Times to the microsecond, as the databases keep them (cursors compare at that grain).
        let at = super::SagaCursor::stored_time;
        for row in rows {
            let row = SagaRow {
                started_at: at(row.started_at),
                last_progress_at: at(row.last_progress_at),
                finished_at: row.finished_at.map(at),
                waiting_until: row.waiting_until.map(at),
                ..row.clone()
            };
            state.rows.insert(row.saga_id, row);
        }
        Ok(())
    }

    async fn query(&self, query: &SagaQuery) -> Result<Vec<SagaRow>> {
        let state = self.lock();
        let mut found: Vec<SagaRow> = state.rows.values().filter(|r| matches(query, r)).cloned().collect();
        found.sort_by_key(|r| (r.started_at, r.saga_id));
        if query.descending {
            found.reverse();
        }
        found.truncate(query.limit);
        Ok(found)
    }

    async fn stuck_counts(&self, now: DateTime<Utc>, default_after_ms: u64) -> Result<Vec<StuckCount>> {
        let mut counts = BTreeMap::<String, u64>::new();
        for row in self.lock().rows.values().filter(|r| r.is_stuck(now, default_after_ms)) {
            *counts.entry(row.definition.clone()).or_default() += 1;
        }
        Ok(counts.into_iter().map(|(definition, count)| StuckCount { definition, count }).collect())
    }

    async fn take_newly_stuck(&self, now: DateTime<Utc>, default_after_ms: u64, limit: usize) -> Result<Vec<SagaRow>> {
        let mut state = self.lock();
        let State { rows, reported, .. } = &mut *state;
        let fresh: Vec<SagaRow> = rows
            .values()
            .filter(|r| r.is_stuck(now, default_after_ms) && reported.get(&r.saga_id) != Some(&r.last_progress_at))
            .take(limit)
            .cloned()
            .collect();
        for row in &fresh {
            reported.insert(row.saga_id, row.last_progress_at);
        }
        Ok(fresh)
    }

    async fn reset(&self) -> Result<()> {
        *self.lock() = State::default();
        Ok(())
    }
}
