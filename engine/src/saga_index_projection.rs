//! Keeps the saga index: a catch-up subscription on `$all` folds each saga event into its
//! saga's index row, and writes the rows with the checkpoint in one transaction.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use event_store::saga_index::{SagaIndex, SagaRow};
use event_store::{AllPosition, EventStore, RecordedEvent};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::codec::decode;
use crate::error::Result;
use crate::saga::{Phase, Resolution, SagaEvent, SagaStatus};

/// Events read from `$all` per transaction of the index, by default.
const BATCH: usize = 1_000;
/// A lag is counted up to this many events (the count costs as much as the lag).
pub const MAX_COUNTED_LAG: usize = 10_000;
/// How long a caught-up projection lets commits gather after a signal before it reads them.
const GATHER: Duration = Duration::from_millis(100);
/// How often a caught-up projection looks again if no commit signal came.
const POLL: Duration = Duration::from_millis(500);

/// The projection that keeps a store's saga index.
#[derive(Clone)]
pub struct SagaIndexProjection {
    store: Arc<dyn EventStore>,
    index: Arc<dyn SagaIndex>,
    batch: usize,
}

impl SagaIndexProjection {
    /// The projection into `store`'s own saga index.
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        let index = store.saga_index();
        Self { store, index, batch: BATCH }
    }

    /// Reads `batch` events per transaction instead of the default 1,000.
    pub fn with_batch(self, batch: usize) -> Self {
        Self { batch: batch.max(1), ..self }
    }

    /// The index this projection writes.
    pub fn index(&self) -> &Arc<dyn SagaIndex> {
        &self.index
    }

    /// Takes in one batch of `$all` after the checkpoint; returns how many events it read.
    /// When another projection moved the checkpoint first, nothing is written and the next
    /// step starts from where that one got to.
    pub async fn step(&self) -> Result<usize> {
        let from = self.index.checkpoint().await?;
        let events = self.store.read_all(from, self.batch).await?;
        let Some(last) = events.last() else { return Ok(0) };
        let to = last.all_position();
        let ids: Vec<Uuid> = {
            let mut ids: Vec<Uuid> = events.iter().filter_map(saga_of).collect();
            ids.sort_unstable();
            ids.dedup();
            ids
        };
        let mut rows: HashMap<Uuid, SagaRow> = if ids.is_empty() {
            HashMap::new()
        } else {
            self.index.rows(&ids).await?.into_iter().map(|r| (r.saga_id, r)).collect()
        };
        for event in &events {
            let Some(saga_id) = saga_of(event) else { continue };
            match decode::<SagaEvent>(event) {
                Ok(saga_event) => apply(&mut rows, saga_id, event, &saga_event),
                Err(err) => tracing::warn!(error = %err, "saga index skips an event it cannot read"),
            }
        }
        let mut rows: Vec<SagaRow> = rows.into_values().filter(|r| ids.binary_search(&r.saga_id).is_ok()).collect();
        rows.sort_unstable_by_key(|r| r.saga_id);
        match self.index.write(&rows, from, to).await {
            Err(event_store::Error::CheckpointMoved) => Ok(events.len()),
            other => other.map(|()| events.len()).map_err(Into::into),
        }
    }

    /// Takes in everything `$all` holds now; returns how many events it read.
    pub async fn catch_up(&self) -> Result<u64> {
        let mut read = 0;
        loop {
            let batch = self.step().await?;
            read += batch as u64;
            if batch < self.batch {
                return Ok(read);
            }
        }
    }

    /// Empties the index and takes in all of `$all` again; returns how many events it read.
    pub async fn rebuild(&self) -> Result<u64> {
        self.index.reset().await?;
        self.catch_up().await
    }

    /// How many events of `$all` the index has not taken in yet, counted up to
    /// [`MAX_COUNTED_LAG`].
    pub async fn lag(&self) -> Result<u64> {
        let checkpoint: AllPosition = self.index.checkpoint().await?;
        Ok(self.store.count_after(checkpoint, MAX_COUNTED_LAG).await?)
    }

    /// Follows `$all` until `cancel`: a batch at a time while behind, then on every commit.
    pub async fn run(self, cancel: CancellationToken) {
        let mut changes = self.store.changes();
        let mut failures = 0u32;
        loop {
            changes.borrow_and_update();
            if cancel.is_cancelled() {
                return;
            }
            let pause = match self.step().await {
                Ok(read) if read == self.batch => {
                    failures = 0;
                    continue;
                }
                Ok(_) => {
                    failures = 0;
                    POLL
                }
                Err(err) => {
                    failures += 1;
                    tracing::warn!(error = %err, failures, "saga index projection failed; retrying");
                    Duration::from_millis(200 * u64::from(failures.min(25)))
                }
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = changes.changed(), if failures == 0 => {
                    // Let the commits of the next moments join this one: one index
                    // transaction takes in many saga steps, instead of one write per commit
                    // competing with the sagas' own (on SQLite, for its one writer).
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(GATHER) => {}
                    }
                }
                () = tokio::time::sleep(pause) => {}
            }
        }
    }
}

/// The saga whose stream holds `event`.
fn saga_of(event: &RecordedEvent) -> Option<Uuid> {
    event.stream_id.strip_prefix(crate::coordinator::STREAM_PREFIX).and_then(|id| Uuid::try_parse(id).ok())
}

/// Folds one saga event into the saga's row.
fn apply(rows: &mut HashMap<Uuid, SagaRow>, saga_id: Uuid, event: &RecordedEvent, saga_event: &SagaEvent) {
    let at = event.recorded_at;
    if let SagaEvent::SagaStarted { definition, .. } = saga_event {
        rows.insert(
            saga_id,
            SagaRow {
                saga_id,
                definition: definition.name.clone(),
                definition_version: definition.version,
                status: SagaStatus::Running.as_str().to_owned(),
                current_step: definition.steps.first().map(|s| s.name.clone()),
                started_at: at,
                last_progress_at: at,
                finished_at: None,
                waiting_until: None,
                stuck_after_ms: definition.stuck_after_ms,
            },
        );
        return;
    }
    // Without its start (the start was lost to a rebuild from a later checkpoint), a saga
    // cannot be described: it is left out.
    let Some(row) = rows.get_mut(&saga_id) else { return };
    let set_status = |row: &mut SagaRow, status: SagaStatus| {
        row.status = status.as_str().to_owned();
        row.finished_at = status.is_terminal().then_some(at);
    };
    // What the saga waits for now: an attempt's deadline or a retry's time, else nothing.
    row.waiting_until = match saga_event {
        SagaEvent::StepCommandSent { deadline, .. } | SagaEvent::CompensationSent { deadline, .. } => Some(*deadline),
        SagaEvent::StepRetryScheduled { at, .. } | SagaEvent::StepHeld { until: at, .. } => Some(*at),
        SagaEvent::ReplyIgnored { .. } => row.waiting_until,
        _ => None,
    };
    match saga_event {
        SagaEvent::SagaStarted { .. } => {}
        // A reply nobody waits for moves nothing on.
        SagaEvent::ReplyIgnored { .. } => return,
        SagaEvent::StepCommandSent { step, .. }
        | SagaEvent::StepSucceeded { step, .. }
        | SagaEvent::StepFailed { step, .. }
        | SagaEvent::StepTimedOut { step, .. }
        | SagaEvent::StepRetryScheduled { step, .. }
        | SagaEvent::StepHeld { step, .. }
        | SagaEvent::CompensationSent { step, .. }
        | SagaEvent::StepCompensated { step, .. }
        | SagaEvent::CompensationFailed { step, .. }
        | SagaEvent::OperatorAborted { step, .. } => row.current_step = Some(step.clone()),
        SagaEvent::CompensationStarted { failed_step, .. } => {
            row.current_step = Some(failed_step.clone());
            set_status(row, SagaStatus::Compensating);
        }
        SagaEvent::SagaCompleted {} => {
            row.current_step = None;
            set_status(row, SagaStatus::Completed);
        }
        SagaEvent::SagaCompensated { .. } => set_status(row, SagaStatus::Compensated),
        SagaEvent::SagaFailed { .. } => set_status(row, SagaStatus::Failed),
        SagaEvent::OperatorRetried { step, phase, .. } => {
            row.current_step = Some(step.clone());
            let status = match phase {
                Phase::Forward => SagaStatus::Running,
                Phase::Compensation => SagaStatus::Compensating,
            };
            set_status(row, status);
        }
        SagaEvent::OperatorResolved { step, outcome, .. } => {
            row.current_step = Some(step.clone());
            // As the saga's own fold: a success goes forward, a compensation goes back.
            let status = match outcome {
                Resolution::Succeeded => SagaStatus::Running,
                Resolution::Compensated => SagaStatus::Compensating,
            };
            set_status(row, status);
        }
    }
    row.last_progress_at = at;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::encode;
    use crate::definition::{SagaDefinition, StepDefinition};
    use event_store::memory::MemoryEventStore;
    use event_store::saga_index::{SagaQuery, StuckFilter};
    use event_store::{EventStoreExt, ExpectedVersion};
    use serde_json::json;

    fn definition() -> SagaDefinition {
        let step = |name: &str, undo: Option<&str>| StepDefinition {
            name: name.into(),
            participant: "p".into(),
            command: "Do".into(),
            compensation: undo.map(Into::into),
            timeout_ms: 1_000,
            retry: Default::default(),
        };
        SagaDefinition {
            stuck_after_ms: Some(60_000),
            on_open_circuit: Default::default(),
            name: "demo".into(),
            version: 3,
            steps: vec![step("a", Some("Undo")), step("b", None)],
        }
    }

    async fn record(store: &MemoryEventStore, id: Uuid, events: &[SagaEvent]) {
        let stream = crate::coordinator::saga_stream(id);
        let events = events.iter().map(|e| encode(e).unwrap()).collect();
        store.append(&stream, ExpectedVersion::Any, events).await.unwrap();
    }

    #[tokio::test]
    async fn rows_follow_status_step_and_progress_and_a_rebuild_gives_the_same() {
        let store = MemoryEventStore::new();
        let (done, failed) = (Uuid::now_v7(), Uuid::now_v7());
        let start = |id| SagaEvent::SagaStarted { saga_id: id, definition: definition(), input: json!({}) };
        let sent = |step: &str| SagaEvent::StepCommandSent {
            step: step.into(),
            attempt: 1,
            message_id: "m".into(),
            deadline: chrono::Utc::now(),
        };
        record(&store, done, &[start(done), sent("a")]).await;
        record(&store, failed, &[start(failed), sent("a")]).await;
        // An event of another stream is passed over.
        store.append("order-1", ExpectedVersion::Any, vec![event_store::NewEvent::new("X", json!({}))]).await.unwrap();
        let projection = SagaIndexProjection::new(Arc::new(store.clone()));
        projection.catch_up().await.unwrap();
        assert_eq!(projection.lag().await.unwrap(), 0);
        let row = &projection.index().rows(&[done]).await.unwrap()[0];
        assert_eq!((row.status.as_str(), row.current_step.as_deref()), ("RUNNING", Some("a")));
        assert_eq!((row.definition.as_str(), row.definition_version, row.stuck_after_ms), ("demo", 3, Some(60_000)));

        record(&store, done, &[SagaEvent::SagaCompleted {}]).await;
        let compensate = SagaEvent::CompensationStarted { failed_step: "a".into(), reason: "no".into() };
        record(&store, failed, &[compensate, SagaEvent::SagaFailed { reason: "undo failed".into() }]).await;
        assert!(projection.lag().await.unwrap() > 0);
        projection.catch_up().await.unwrap();
        let rows = projection.index().rows(&[done, failed]).await.unwrap();
        let by_id: HashMap<Uuid, &SagaRow> = rows.iter().map(|r| (r.saga_id, r)).collect();
        assert_eq!(by_id[&done].status, "COMPLETED");
        assert!(by_id[&done].finished_at.is_some() && by_id[&done].current_step.is_none());
        assert_eq!((by_id[&failed].status.as_str(), by_id[&failed].current_step.as_deref()), ("FAILED", Some("a")));

        let failed_page = SagaQuery { status: Some("FAILED".into()), limit: 10, ..SagaQuery::default() };
        assert_eq!(projection.index().query(&failed_page).await.unwrap().len(), 1);
        let later = chrono::Utc::now() + chrono::Duration::minutes(2);
        let stuck = SagaQuery {
            stuck: Some(StuckFilter { stuck: true, now: later, default_after_ms: 3_600_000 }),
            limit: 10,
            ..SagaQuery::default()
        };
        // The definition's own 60 s threshold applies, not the hour of the default.
        assert_eq!(projection.index().query(&stuck).await.unwrap()[0].saga_id, failed);

        let before = projection.index().query(&SagaQuery { limit: 10, ..SagaQuery::default() }).await.unwrap();
        projection.rebuild().await.unwrap();
        let after = projection.index().query(&SagaQuery { limit: 10, ..SagaQuery::default() }).await.unwrap();
        assert_eq!(before, after);
    }

    #[tokio::test]
    async fn a_projection_that_lost_the_race_writes_nothing_and_goes_on_from_the_winner() {
        let store = MemoryEventStore::new();
        let id = Uuid::now_v7();
        record(&store, id, &[SagaEvent::SagaStarted { saga_id: id, definition: definition(), input: json!({}) }]).await;
        let index = store.saga_index();
        let to = store.read_all(AllPosition::START, 10).await.unwrap()[0].all_position();
        index.write(&[], AllPosition::START, to).await.unwrap();
        let late = index.write(&[], AllPosition::START, to).await;
        assert!(matches!(late, Err(event_store::Error::CheckpointMoved)), "{late:?}");
    }
}
