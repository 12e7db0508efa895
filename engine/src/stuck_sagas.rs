//! Stuck sagas: those that made no progress for longer than their definition's threshold (or
//! the default) while running, compensating, or failed and waiting for an operator. A watcher
//! keeps the gauge `sagaflow_sagas_stuck{definition}` and logs one warning per saga each time
//! it becomes stuck.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::saga_index_projection::SagaIndexProjection;

/// A saga stuck for this long is reported, unless its definition says otherwise.
pub const DEFAULT_STUCK_AFTER: Duration = Duration::from_secs(15 * 60);

/// Reports stuck sagas from the saga index, once it has caught up with the store.
pub struct StuckWatcher {
    projection: SagaIndexProjection,
    default_after_ms: u64,
    /// Definitions whose gauge was last set above zero.
    reported: BTreeSet<String>,
}

impl StuckWatcher {
    /// A watcher over `projection`'s index with the global threshold `default_after`.
    pub fn new(projection: SagaIndexProjection, default_after: Duration) -> Self {
        Self { projection, default_after_ms: millis(default_after), reported: BTreeSet::new() }
    }

    /// Sets the gauges and logs the sagas that became stuck since the last look; returns how
    /// many sagas it logged. An index still catching up (after an upgrade or a rebuild) holds
    /// sagas that look idle only because their later events are not in yet: it waits.
    pub async fn look(&mut self) -> Result<usize> {
        if self.projection.lag().await? > 0 {
            return Ok(0);
        }
        let now = Utc::now();
        let index = self.projection.index();
        let counts = index.stuck_counts(now, self.default_after_ms).await?;
        let now_stuck: BTreeSet<String> = counts.iter().map(|c| c.definition.clone()).collect();
        for gone in self.reported.difference(&now_stuck) {
            metrics::gauge!("sagaflow_sagas_stuck", "definition" => gone.clone()).set(0.0);
        }
        for count in &counts {
            metrics::gauge!("sagaflow_sagas_stuck", "definition" => count.definition.clone()).set(count.count as f64);
        }
        self.reported = now_stuck;
        let fresh = index.take_newly_stuck(now, self.default_after_ms, 500).await?;
        for saga in &fresh {
            tracing::warn!(
                saga_id = %saga.saga_id,
                definition = %saga.definition,
                status = %saga.status,
                current_step = saga.current_step.as_deref().unwrap_or("-"),
                last_progress_at = %saga.last_progress_at,
                "saga is stuck: no progress since {}",
                saga.last_progress_at
            );
        }
        Ok(fresh.len())
    }

    /// Looks every `every` until `cancel`.
    pub async fn run(mut self, every: Duration, cancel: CancellationToken) {
        loop {
            if let Err(err) = self.look().await {
                tracing::warn!(error = %err, "cannot look for stuck sagas; trying again");
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }
}

/// `d` in whole milliseconds (saturating).
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use event_store::memory::MemoryEventStore;
    use event_store::saga_index::SagaRow;
    use event_store::{AllPosition, EventStore, EventStoreExt};
    use uuid::Uuid;

    fn row(status: &str, idle: chrono::Duration) -> SagaRow {
        let at = Utc::now() - idle;
        SagaRow {
            saga_id: Uuid::now_v7(),
            definition: "demo".into(),
            definition_version: 1,
            status: status.into(),
            current_step: Some("a".into()),
            started_at: at,
            last_progress_at: at,
            finished_at: None,
            waiting_until: None,
            stuck_after_ms: None,
        }
    }

    #[tokio::test]
    async fn an_index_still_catching_up_reports_nothing() {
        let store = MemoryEventStore::new();
        let event = event_store::NewEvent::new("SagaCompleted", serde_json::json!({}));
        store.append("saga-x", event_store::ExpectedVersion::Any, vec![event]).await.unwrap();
        let projection = SagaIndexProjection::new(Arc::new(store.clone()));
        // A row the index holds from before the events it has not taken in yet.
        let index = Arc::clone(projection.index());
        index
            .write(&[row("RUNNING", chrono::Duration::hours(1))], AllPosition::START, AllPosition::START)
            .await
            .unwrap();
        let mut watcher = StuckWatcher::new(projection, Duration::from_secs(60));
        assert_eq!(watcher.look().await.unwrap(), 0, "behind the store: no report");
        let caught_up = store.read_all(AllPosition::START, 1).await.unwrap()[0].all_position();
        index.write(&[], AllPosition::START, caught_up).await.unwrap();
        assert_eq!(watcher.look().await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_saga_waiting_for_a_later_deadline_is_not_stuck_before_it() {
        let idle = row("RUNNING", chrono::Duration::minutes(10));
        let waiting = SagaRow { waiting_until: Some(Utc::now() + chrono::Duration::minutes(30)), ..idle.clone() };
        assert!(idle.is_stuck(Utc::now(), 60_000));
        assert!(!waiting.is_stuck(Utc::now(), 60_000));
        assert!(waiting.is_stuck(Utc::now() + chrono::Duration::minutes(32), 60_000));
    }

    #[tokio::test]
    async fn a_stuck_saga_is_logged_once_until_it_moves_on_and_sticks_again() {
        let store = MemoryEventStore::new();
        let projection = SagaIndexProjection::new(Arc::new(store.clone()));
        let index = Arc::clone(projection.index());
        let stuck = row("FAILED", chrono::Duration::minutes(10));
        let busy = row("RUNNING", chrono::Duration::seconds(1));
        let finished = row("COMPLETED", chrono::Duration::hours(1));
        let first = AllPosition { transaction_id: 0, global_position: 1 };
        index.write(&[stuck.clone(), busy, finished], AllPosition::START, first).await.unwrap();
        let mut watcher = StuckWatcher::new(projection, Duration::from_secs(60));
        assert_eq!(watcher.look().await.unwrap(), 1);
        assert_eq!(watcher.look().await.unwrap(), 0, "reported once");
        // It moves on, then gets stuck again: a new report.
        let moved = SagaRow { last_progress_at: Utc::now() - chrono::Duration::minutes(5), ..stuck };
        index.write(&[moved], first, AllPosition { transaction_id: 0, global_position: 2 }).await.unwrap();
        assert_eq!(watcher.look().await.unwrap(), 1);
    }
}
