//! In-memory backend for unit tests: same contract as the durable ones, nothing survives a restart.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::model::{
    AllPosition, AppendResult, Commit, CommitResult, DueTimer, OutboxMessage, OutboxPosition, RecordedEvent, Snapshot,
    TimerChange,
};
use crate::signals::CommitSignals;
use crate::store::{prepare_commit, EventStore};

struct OutboxEntry {
    message: OutboxMessage,
    dead_letter_reason: Option<String>,
}

/// The relay that holds the outbox, until when, and where it has published up to.
#[derive(Default)]
struct OutboxRelay {
    owner: Option<(String, DateTime<Utc>)>,
    published: OutboxPosition,
}

#[derive(Default)]
struct State {
    streams: HashMap<String, Vec<RecordedEvent>>,
    all: Vec<RecordedEvent>,
    event_streams: HashMap<Uuid, String>,
    snapshots: HashMap<String, BTreeMap<u64, Snapshot>>,
    outbox: Vec<OutboxEntry>,
    outbox_ids: u64,
    relay: OutboxRelay,
    processed: HashMap<(String, String), DateTime<Utc>>,
    timers: HashMap<String, DateTime<Utc>>,
}

/// Event store held in memory.
#[derive(Clone)]
pub struct MemoryEventStore {
    state: Arc<Mutex<State>>,
    signals: Arc<CommitSignals>,
    saga_index: Arc<crate::saga_index::MemorySagaIndex>,
}

impl Default for MemoryEventStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryEventStore {
    /// An empty store.
    pub fn new() -> Self {
        Self { state: Arc::default(), signals: Arc::default(), saga_index: Arc::default() }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn current_version(state: &State, stream_id: &str) -> u64 {
    state.streams.get(stream_id).map_or(0, |s| s.len() as u64)
}

#[async_trait]
impl EventStore for MemoryEventStore {
    async fn commit(&self, commit: Commit) -> Result<CommitResult> {
        let commit = prepare_commit(commit)?;
        let touched: Vec<String> = commit.appends.iter().map(|a| a.stream_id.clone()).collect();
        let mut state = self.lock();
        // Check everything first: a failed commit writes nothing.
        let mut plans = Vec::with_capacity(commit.appends.len());
        for append in &commit.appends {
            let current = current_version(&state, &append.stream_id);
            let stored: Vec<u64> = append
                .events
                .iter()
                .filter_map(|e| {
                    state
                        .streams
                        .get(&append.stream_id)?
                        .iter()
                        .find(|r| r.event_id == e.event_id)
                        .map(|r| r.global_position)
                })
                .collect();
            if !append.events.is_empty() && stored.len() == append.events.len() {
                plans.push((current, Some(stored)));
                continue;
            }
            if !stored.is_empty() {
                return Err(Error::PartialIdempotentAppend { stream: append.stream_id.clone() });
            }
            let actual = (current > 0).then_some(current);
            if !append.expected.matches(actual) {
                return Err(Error::WrongExpectedVersion {
                    stream: append.stream_id.clone(),
                    expected: append.expected,
                    actual,
                });
            }
            if let Some(e) = append.events.iter().find(|e| state.event_streams.contains_key(&e.event_id)) {
                return Err(Error::DuplicateEventId { event_id: e.event_id });
            }
            plans.push((current, None));
        }
        if let Some(p) = &commit.processed {
            if state.processed.contains_key(&(p.consumer.clone(), p.message_id.clone())) {
                return Err(Error::AlreadyProcessed { consumer: p.consumer.clone(), message_id: p.message_id.clone() });
            }
        }
        let mut results = Vec::with_capacity(plans.len());
        for (append, (current, stored)) in commit.appends.into_iter().zip(plans) {
            if let Some(positions) = stored {
                results.push(AppendResult {
                    stream_id: append.stream_id,
                    next_expected_version: current,
                    positions,
                    already_stored: true,
                });
                continue;
            }
            let mut positions = Vec::new();
            let mut version = current;
            for event in append.events {
                version += 1;
                let recorded = RecordedEvent {
                    event_id: event.event_id,
                    stream_id: append.stream_id.clone(),
                    version,
                    global_position: state.all.len() as u64 + 1,
                    transaction_id: state.all.len() as u64 + 1,
                    event_type: event.event_type,
                    data: event.data,
                    metadata: event.metadata,
                    recorded_at: Utc::now(),
                };
                positions.push(recorded.global_position);
                state.event_streams.insert(recorded.event_id, append.stream_id.clone());
                state.streams.entry(append.stream_id.clone()).or_default().push(recorded.clone());
                state.all.push(recorded);
            }
            results.push(AppendResult {
                stream_id: append.stream_id,
                next_expected_version: version,
                positions,
                already_stored: false,
            });
        }
        if let Some(p) = commit.processed {
            state.processed.insert((p.consumer, p.message_id), Utc::now());
        }
        for message in commit.outbox {
            state.outbox_ids += 1;
            let id = state.outbox_ids;
            state.outbox.push(OutboxEntry {
                message: OutboxMessage { id, transaction_id: id, message, created_at: Utc::now() },
                dead_letter_reason: None,
            });
        }
        for timer in commit.timers {
            match timer {
                TimerChange::Set { key, due_at } => {
                    state.timers.insert(key, due_at);
                }
                TimerChange::Cancel { key } => {
                    state.timers.remove(&key);
                }
            }
        }
        drop(state);
        self.signals.committed(touched.iter().map(String::as_str));
        Ok(CommitResult { appends: results })
    }

    async fn read_stream(&self, stream_id: &str, from_version: u64, limit: usize) -> Result<Vec<RecordedEvent>> {
        let state = self.lock();
        Ok(state
            .streams
            .get(stream_id)
            .map(|s| s.iter().filter(|e| e.version >= from_version).take(limit).cloned().collect())
            .unwrap_or_default())
    }

    async fn stream_version(&self, stream_id: &str) -> Result<Option<u64>> {
        let v = current_version(&self.lock(), stream_id);
        Ok((v > 0).then_some(v))
    }

    async fn read_all(&self, after: AllPosition, limit: usize) -> Result<Vec<RecordedEvent>> {
        let state = self.lock();
        let start = usize::try_from(after.global_position).unwrap_or(usize::MAX).min(state.all.len());
        Ok(state.all[start..].iter().take(limit).cloned().collect())
    }

    async fn count_after(&self, after: AllPosition, cap: usize) -> Result<u64> {
        let behind = self.lock().all.iter().filter(|e| e.all_position() > after).take(cap).count();
        Ok(behind as u64)
    }

    fn saga_index(&self) -> Arc<dyn crate::saga_index::SagaIndex> {
        Arc::clone(&self.saga_index) as Arc<dyn crate::saga_index::SagaIndex>
    }

    async fn list_streams(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        let state = self.lock();
        let mut ids: Vec<String> = state
            .streams
            .keys()
            .filter(|id| id.starts_with(prefix) && after.is_none_or(|a| id.as_str() > a))
            .cloned()
            .collect();
        ids.sort();
        ids.truncate(limit);
        Ok(ids)
    }

    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<()> {
        self.lock().snapshots.entry(snapshot.stream_id.clone()).or_default().insert(snapshot.version, snapshot);
        Ok(())
    }

    async fn load_snapshot(&self, stream_id: &str, max_version: Option<u64>) -> Result<Option<Snapshot>> {
        let state = self.lock();
        Ok(state
            .snapshots
            .get(stream_id)
            .and_then(|s| s.range(..=max_version.unwrap_or(u64::MAX)).next_back().map(|(_, s)| s.clone())))
    }

    async fn hold_outbox(&self, relay_id: &str, lease: Duration) -> Result<Option<OutboxPosition>> {
        let now = Utc::now();
        let until = now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
        let mut state = self.lock();
        let relay = &mut state.relay;
        if relay.owner.as_ref().is_some_and(|(owner, until)| owner != relay_id && *until >= now) {
            return Ok(None);
        }
        relay.owner = Some((relay_id.to_owned(), until));
        Ok(Some(relay.published))
    }

    async fn read_outbox(&self, after: OutboxPosition, limit: usize) -> Result<Vec<OutboxMessage>> {
        let state = self.lock();
        Ok(state.outbox.iter().map(|e| &e.message).filter(|m| m.position() > after).take(limit).cloned().collect())
    }

    async fn advance_outbox(&self, relay_id: &str, to: OutboxPosition, lease: Duration) -> Result<bool> {
        let until = Utc::now() + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
        let mut state = self.lock();
        let relay = &mut state.relay;
        if relay.owner.as_ref().is_none_or(|(owner, _)| owner != relay_id) {
            return Ok(false);
        }
        relay.owner = Some((relay_id.to_owned(), until));
        relay.published = relay.published.max(to);
        Ok(true)
    }

    async fn outbox_pending(&self) -> Result<u64> {
        let state = self.lock();
        Ok(state.outbox.iter().filter(|e| e.message.position() > state.relay.published).count() as u64)
    }

    async fn mark_dead_lettered(&self, id: u64, reason: &str) -> Result<()> {
        let mut state = self.lock();
        if let Some(entry) = state.outbox.iter_mut().find(|e| e.message.id == id) {
            entry.dead_letter_reason = Some(reason.to_owned());
        }
        Ok(())
    }

    async fn delete_published_outbox(&self, before: DateTime<Utc>, limit: usize) -> Result<u64> {
        let mut state = self.lock();
        let published = state.relay.published;
        let mut deleted = 0_usize;
        state.outbox.retain(|e| {
            let expired = deleted < limit
                && e.dead_letter_reason.is_none()
                && e.message.position() <= published
                && e.message.created_at < before;
            deleted += usize::from(expired);
            !expired
        });
        Ok(deleted as u64)
    }

    async fn delete_processed_messages(&self, before: DateTime<Utc>, limit: usize) -> Result<u64> {
        let mut state = self.lock();
        let mut deleted = 0_usize;
        state.processed.retain(|_, at| {
            let expired = deleted < limit && *at < before;
            deleted += usize::from(expired);
            !expired
        });
        Ok(deleted as u64)
    }

    async fn due_timers(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<DueTimer>> {
        let state = self.lock();
        let mut due: Vec<DueTimer> = state
            .timers
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(key, due_at)| DueTimer { key: key.clone(), due_at: *due_at })
            .collect();
        due.sort_by_key(|t| t.due_at);
        due.truncate(limit);
        Ok(due)
    }

    fn signals(&self) -> &Arc<CommitSignals> {
        &self.signals
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}
