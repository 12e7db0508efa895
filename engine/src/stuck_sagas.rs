//! Stuck sagas: those that made no progress for longer than their definition's threshold (or
//! the default) while running, compensating, or failed and waiting for an operator. A watcher
//! keeps the gauge `sagaflow_sagas_stuck{definition}` and logs one warning per saga each time
//! it becomes stuck.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use event_store::saga_index::SagaIndex;
use tokio_util::sync::CancellationToken;

use crate::error::Result;

/// A saga stuck for this long is reported, unless its definition says otherwise.
pub const DEFAULT_STUCK_AFTER: Duration = Duration::from_secs(15 * 60);

/// Reports stuck sagas from the saga index.
pub struct StuckWatcher {
    index: Arc<dyn SagaIndex>,
    default_after_ms: u64,
    /// Definitions whose gauge was last set above zero.
    reported: BTreeSet<String>,
}

impl StuckWatcher {
    /// A watcher over `index` with the global threshold `default_after`.
    pub fn new(index: Arc<dyn SagaIndex>, default_after: Duration) -> Self {
        let default_after_ms = u64::try_from(default_after.as_millis()).unwrap_or(u64::MAX);
        Self { index, default_after_ms, reported: BTreeSet::new() }
    }

    /// Sets the gauges and logs the sagas that became stuck since the last look; returns how
    /// many sagas it logged.
    pub async fn look(&mut self) -> Result<usize> {
        let now = Utc::now();
        let counts = self.index.stuck_counts(now, self.default_after_ms).await?;
        let now_stuck: BTreeSet<String> = counts.iter().map(|c| c.definition.clone()).collect();
        for gone in self.reported.difference(&now_stuck) {
            metrics::gauge!("sagaflow_sagas_stuck", "definition" => gone.clone()).set(0.0);
        }
        for count in &counts {
            metrics::gauge!("sagaflow_sagas_stuck", "definition" => count.definition.clone()).set(count.count as f64);
        }
        self.reported = now_stuck;
        let fresh = self.index.take_newly_stuck(now, self.default_after_ms, 500).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use event_store::memory::MemoryEventStore;
    use event_store::saga_index::SagaRow;
    use event_store::{AllPosition, EventStore};
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
            stuck_after_ms: None,
        }
    }

    #[tokio::test]
    async fn a_stuck_saga_is_logged_once_until_it_moves_on_and_sticks_again() {
        let index = MemoryEventStore::new().saga_index();
        let stuck = row("FAILED", chrono::Duration::minutes(10));
        let busy = row("RUNNING", chrono::Duration::seconds(1));
        let finished = row("COMPLETED", chrono::Duration::hours(1));
        let first = AllPosition { transaction_id: 0, global_position: 1 };
        index.write(&[stuck.clone(), busy, finished], AllPosition::START, first).await.unwrap();
        let mut watcher = StuckWatcher::new(Arc::clone(&index), Duration::from_secs(60));
        assert_eq!(watcher.look().await.unwrap(), 1);
        assert_eq!(watcher.look().await.unwrap(), 0, "reported once");
        // It moves on, then gets stuck again: a new report.
        let moved = SagaRow { last_progress_at: Utc::now() - chrono::Duration::minutes(5), ..stuck };
        index.write(&[moved], first, AllPosition { transaction_id: 0, global_position: 2 }).await.unwrap();
        assert_eq!(watcher.look().await.unwrap(), 1);
    }
}
