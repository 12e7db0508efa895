//! The saga coordinator: starts sagas, applies replies and due timers to them, and
//! records each decision (events, commands to send, next timer, the processed reply)
//! in one event-store transaction.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use event_store::read::stream_events;
use event_store::store::READ_PAGE;
use event_store::{Commit, Error as StoreError, EventStore, ExpectedVersion, RecordedEvent, StreamAppend, TimerChange};
use futures::TryStreamExt;
use lru::LruCache;
use serde_json::{json, Value};
use tracing::Instrument;
use uuid::Uuid;

use crate::circuit_breaker::CircuitBreakers;
use crate::codec::{decode, encode};
use crate::consumer_loop::MessageHandler;
use crate::dead_letter::send_to_dead_letter;
use crate::definition::SagaDefinition;
use crate::definition_registry::DefinitionRegistry;
use crate::envelope::{traceparent_for, Envelope, MessageKind, Outcome, HEADER_TRACEPARENT};
use crate::error::{Error, Result};
use crate::operator_actions::{Actor, OperatorAction};
use crate::saga::{self, Failure, ReplyOutcome, SagaEvent, SagaState};
use crate::topics::Topics;
use crate::trace_context;
use crate::transport::Delivery;

/// The name under which the coordinator records processed replies.
pub const CONSUMER_NAME: &str = "coordinator";
/// What every saga stream's id starts with.
pub const STREAM_PREFIX: &str = "saga-";
const MAX_CONFLICT_RETRIES: u32 = 10;

/// The stream of saga `id`.
pub fn saga_stream(id: Uuid) -> String {
    format!("{STREAM_PREFIX}{id}")
}

/// A saga as folded from its stream.
#[derive(Debug, Clone, Default)]
pub struct SagaView {
    pub state: SagaState,
    /// The stream version the state was folded to.
    pub version: u64,
    /// The `traceparent` of the saga's latest decision (its events' metadata): where a
    /// decision no message caused, such as a timeout, joins the saga's trace.
    pub trace: Option<String>,
}

/// What became of a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyHandled {
    Applied,
    Duplicate,
    DeadLettered(String),
}

/// Sagas kept in memory between their replies.
const CACHED_SAGAS: usize = 20_000;
/// Sagas this process finished, kept in memory for a while for the long polls that follow them.
const FINISHED_SAGAS: usize = 2_048;

/// Drives sagas.
pub struct Coordinator {
    store: Arc<dyn EventStore>,
    registry: Arc<DefinitionRegistry>,
    topics: Topics,
    /// The states of running sagas as this process last wrote them: a reply then needs no
    /// read. Only a cache: every decision is committed with the cached version as the
    /// expected one, and a conflict (another process moved the saga on) reloads.
    cache: Mutex<LruCache<Uuid, Arc<SagaView>>>,
    /// The last states of sagas this process finished.
    finished: Mutex<LruCache<Uuid, Arc<SagaView>>>,
    /// Each participant's circuit, as this process's decisions have seen it.
    breakers: Arc<CircuitBreakers>,
}

impl Coordinator {
    /// A coordinator over `store`.
    pub fn new(store: Arc<dyn EventStore>, registry: Arc<DefinitionRegistry>, topics: Topics) -> Self {
        let capacity = |n| NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN);
        let breakers = Arc::new(CircuitBreakers::default());
        Self {
            store,
            registry,
            topics,
            cache: Mutex::new(LruCache::new(capacity(CACHED_SAGAS))),
            finished: Mutex::new(LruCache::new(capacity(FINISHED_SAGAS))),
            breakers,
        }
    }

    /// Uses `breakers` for the participants' circuits (default policy otherwise).
    #[must_use]
    pub fn with_circuit_breakers(mut self, breakers: Arc<CircuitBreakers>) -> Self {
        self.breakers = breakers;
        self
    }

    /// The participants' circuits.
    pub fn circuit_breakers(&self) -> &Arc<CircuitBreakers> {
        &self.breakers
    }

    fn cached(&self) -> std::sync::MutexGuard<'_, LruCache<Uuid, Arc<SagaView>>> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The saga's state for a decision: cached, or folded from its stream.
    async fn current(&self, saga_id: Uuid) -> Result<Option<Arc<SagaView>>> {
        if let Some(view) = self.cached().get(&saga_id).cloned() {
            return Ok(Some(view));
        }
        Ok(self.load(saga_id).await?.map(Arc::new))
    }

    fn finished(&self) -> std::sync::MutexGuard<'_, LruCache<Uuid, Arc<SagaView>>> {
        self.finished.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Remembers the state a committed decision left the saga in; a finished saga moves to
    /// the smaller cache of finished ones.
    fn remember(&self, saga_id: Uuid, view: SagaView) {
        let view = Arc::new(view);
        if view.state.status.is_terminal() {
            self.cached().pop(&saga_id);
            self.finished().put(saga_id, view);
        } else {
            self.cached().put(saga_id, view);
        }
    }

    fn forget(&self, saga_id: Uuid) {
        self.cached().pop(&saga_id);
        self.finished().pop(&saga_id);
    }

    /// The saga as this process's last committed decision left it, when it is in memory:
    /// what a long poll follows instead of reading the stream. Another process may have
    /// moved the saga on since (after a rebalance); a reader that needs the latest state
    /// reads the stream.
    pub fn in_memory(&self, saga_id: Uuid) -> Option<Arc<SagaView>> {
        let running = self.cached().peek(&saga_id).cloned();
        running.or_else(|| self.finished().peek(&saga_id).cloned())
    }

    /// The definitions it starts sagas from.
    pub fn registry(&self) -> &Arc<DefinitionRegistry> {
        &self.registry
    }

    /// The topics it uses.
    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// Starts a saga of a registered definition (latest version unless given).
    pub async fn start(&self, name: &str, version: Option<u32>, input: Value, saga_id: Option<Uuid>) -> Result<Uuid> {
        let definition = self.registry.get(name, version).await?;
        self.start_with(&definition, input, saga_id.unwrap_or_else(Uuid::now_v7), Commit::default()).await
    }

    /// Starts a saga, adding `extra` (say, a read-model append) to the same transaction.
    /// Fails with `WrongExpectedVersion` when a saga with this id already exists.
    pub async fn start_with(
        &self,
        definition: &SagaDefinition,
        input: Value,
        saga_id: Uuid,
        extra: Commit,
    ) -> Result<Uuid> {
        let span = tracing::info_span!("saga start", otel.name = %format!("saga start {}", definition.name),
            saga_id = %saga_id, definition = %definition.name);
        async {
            let events = saga::start_gated(saga_id, definition.clone(), input, Utc::now(), self.breakers.as_ref());
            let (commit, after) = self.decision_commit(saga_id, &SagaState::default(), 0, &events, None, extra)?;
            self.store.commit(commit).await?;
            self.remember(saga_id, after);
            metrics::counter!("sagaflow_sagas_started_total", "definition" => definition.name.clone()).increment(1);
            tracing::info!(saga_id = %saga_id, definition = %definition.name, version = definition.version, "saga started");
            Ok(saga_id)
        }
        .instrument(span)
        .await
    }

    /// The saga's current state, or `None` when there is no such saga.
    pub async fn load(&self, saga_id: Uuid) -> Result<Option<SagaView>> {
        self.load_while(saga_id, |_| true).await
    }

    /// The saga's state folded from the first events of its stream for which `keep` holds
    /// (a version or a point in time to replay to), or `None` when there is no such saga.
    pub async fn load_while(&self, saga_id: Uuid, keep: impl Fn(&RecordedEvent) -> bool) -> Result<Option<SagaView>> {
        let mut view = SagaView::default();
        let exists = self.fold_into(saga_id, &mut view, keep).await?;
        Ok(exists.then_some(view))
    }

    /// Folds into `view` the saga's events after `view.version`: one short read when little
    /// happened, for callers that follow a saga (long polls).
    pub async fn refresh(&self, saga_id: Uuid, view: &mut SagaView) -> Result<()> {
        self.fold_into(saga_id, view, |_| true).await.map(drop)
    }

    /// Folds the events after `view.version` while `keep` holds; whether any was read.
    async fn fold_into(
        &self,
        saga_id: Uuid,
        view: &mut SagaView,
        keep: impl Fn(&RecordedEvent) -> bool,
    ) -> Result<bool> {
        let stream = saga_stream(saga_id);
        let mut events = stream_events(self.store.as_ref(), &stream, view.version + 1, READ_PAGE);
        let mut read = false;
        while let Some(event) = events.try_next().await? {
            read = true;
            if !keep(&event) {
                break;
            }
            view.state.apply(&decode::<SagaEvent>(&event)?);
            view.version = event.version;
            if let Some(trace) = event.metadata.get(HEADER_TRACEPARENT).and_then(Value::as_str) {
                view.trace = Some(trace.to_owned());
            }
        }
        Ok(read)
    }

    /// Lists saga ids in id order (time order, for ids the engine made), after `after`.
    pub async fn list(&self, after: Option<Uuid>, limit: usize) -> Result<Vec<Uuid>> {
        let after = after.map(saga_stream);
        let streams = self.store.list_streams(STREAM_PREFIX, after.as_deref(), limit).await?;
        Ok(streams.iter().filter_map(|s| Uuid::parse_str(&s[STREAM_PREFIX.len()..]).ok()).collect())
    }

    /// Applies a reply consumed from the replies topic.
    pub async fn handle_reply(&self, delivery: &Delivery) -> Result<ReplyHandled> {
        let envelope = match Envelope::parse(&delivery.payload) {
            Ok(e) if e.kind == MessageKind::Reply => e,
            Ok(_) => return self.dead_letter(delivery, "expected a reply, got a command").await,
            Err(reason) => return self.dead_letter(delivery, &reason).await,
        };
        let result = match &envelope.outcome {
            Some(Outcome::Success) => Ok(envelope.payload.clone()),
            Some(Outcome::Failure { reason, retryable }) => {
                Err(Failure { reason: reason.clone(), retryable: *retryable })
            }
            None => return self.dead_letter(delivery, "a reply needs an outcome").await,
        };
        let reply = ReplyOutcome {
            reply_id: envelope.message_id.clone(),
            in_reply_to: envelope.in_reply_to.clone().unwrap_or_default(),
            result,
        };
        let span = tracing::info_span!("saga reply", otel.name = %format!("saga reply {}", envelope.step),
            otel.kind = "consumer", saga_id = %envelope.saga_id, step = %envelope.step);
        trace_context::set_parent(&span, delivery.headers.get(HEADER_TRACEPARENT).map(String::as_str));
        self.apply_reply(delivery, &envelope, &reply).instrument(span).await
    }

    /// Decides on a parsed reply, deciding again on a conflict.
    async fn apply_reply(
        &self,
        delivery: &Delivery,
        envelope: &Envelope,
        reply: &ReplyOutcome,
    ) -> Result<ReplyHandled> {
        for _ in 0..MAX_CONFLICT_RETRIES {
            let view = match self.current(envelope.saga_id).await {
                Ok(Some(view)) => view,
                Ok(None) => return self.dead_letter(delivery, &format!("no saga with id {}", envelope.saga_id)).await,
                // A saga stream that cannot be read would block its partition forever.
                Err(err @ Error::Decode { .. }) => {
                    tracing::error!(saga_id = %envelope.saga_id, error = %err, "saga stream cannot be read");
                    return self.dead_letter(delivery, &format!("saga stream cannot be read: {err}")).await;
                }
                Err(err) => return Err(err),
            };
            let events = view.state.on_reply_gated(reply, Utc::now(), self.breakers.as_ref());
            let (commit, after) = self.decision_commit(
                envelope.saga_id,
                &view.state,
                view.version,
                &events,
                Some(&envelope.message_id),
                Commit::default(),
            )?;
            match self.store.commit(commit).await {
                Ok(_) => {
                    log_decision(envelope.saga_id, &view.state, &events);
                    self.remember(envelope.saga_id, after);
                    self.record_outcomes(&view.state, &events).await;
                    return Ok(ReplyHandled::Applied);
                }
                Err(StoreError::AlreadyProcessed { .. }) => return Ok(ReplyHandled::Duplicate),
                Err(StoreError::WrongExpectedVersion { .. }) => self.forget(envelope.saga_id),
                Err(e) => {
                    self.forget(envelope.saga_id);
                    return Err(e.into());
                }
            }
        }
        Err(Error::Contention { stream: saga_stream(envelope.saga_id), attempts: MAX_CONFLICT_RETRIES })
    }

    /// Handles a due timer of saga `key`: a timed-out attempt or a retry whose backoff passed.
    pub async fn fire_timer(&self, key: &str, now: DateTime<Utc>) -> Result<()> {
        let Ok(saga_id) = Uuid::parse_str(key) else {
            return self.set_timer(key, None).await;
        };
        for _ in 0..MAX_CONFLICT_RETRIES {
            let view = match self.current(saga_id).await {
                Ok(Some(view)) => view,
                Ok(None) => return self.set_timer(key, None).await,
                Err(err @ Error::Decode { .. }) => {
                    tracing::error!(%saga_id, error = %err, "saga stream cannot be read; dropping its timer");
                    return self.set_timer(key, None).await;
                }
                Err(err) => return Err(err),
            };
            let events = view.state.on_timer_gated(now, self.breakers.as_ref());
            let held_again = view.state.held_again(&events);
            if events.is_empty() || held_again.is_some() {
                // The timer is stale (the saga moved on), or a held attempt waits on: align the
                // timer with the saga, unless the saga changed meanwhile (then its own commit
                // set the right timer). Waiting on is no progress, so it writes no event.
                let change = match held_again.or_else(|| view.state.next_wakeup()) {
                    Some(due_at) => TimerChange::Set { key: key.to_owned(), due_at },
                    None => TimerChange::Cancel { key: key.to_owned() },
                };
                let guarded = Commit::append(saga_stream(saga_id), ExpectedVersion::Exact(view.version), Vec::new())
                    .with_timer(change);
                return match self.store.commit(guarded).await {
                    Ok(_) => Ok(()),
                    Err(StoreError::WrongExpectedVersion { .. }) => {
                        self.forget(saga_id);
                        Ok(())
                    }
                    Err(e) => Err(e.into()),
                };
            }
            // A decision no message caused joins the saga's trace where it last left it.
            let span = tracing::info_span!("saga timer", saga_id = %saga_id);
            trace_context::set_parent(&span, view.trace.as_deref());
            let (commit, after) = span.in_scope(|| {
                self.decision_commit(saga_id, &view.state, view.version, &events, None, Commit::default())
            })?;
            match self.store.commit(commit).instrument(span).await {
                Ok(_) => {
                    log_decision(saga_id, &view.state, &events);
                    self.remember(saga_id, after);
                    self.record_outcomes(&view.state, &events).await;
                    return Ok(());
                }
                Err(StoreError::WrongExpectedVersion { .. }) => self.forget(saga_id),
                Err(e) => {
                    self.forget(saga_id);
                    return Err(e.into());
                }
            }
        }
        Err(Error::Contention { stream: saga_stream(saga_id), attempts: MAX_CONFLICT_RETRIES })
    }

    /// Applies an operator's action to saga `saga_id`, adding `extra` (an idempotency
    /// record, say) to the same transaction. With `expected_version`, the saga must not
    /// have changed since the operator looked at it.
    pub async fn act(
        &self,
        saga_id: Uuid,
        action: &OperatorAction,
        actor: &Actor,
        expected_version: Option<u64>,
        extra: Commit,
    ) -> Result<SagaView> {
        let span = tracing::info_span!("saga operator action", saga_id = %saga_id, actor = %actor.name);
        async move {
        for _ in 0..MAX_CONFLICT_RETRIES {
            // Read from the store, not this process's cache: another process may have moved
            // the saga on, and a refusal, unlike a decision, is never checked at commit.
            let view =
                self.load(saga_id).await?.ok_or_else(|| Error::NotFound { what: "saga", id: saga_id.to_string() })?;
            if let Some(expected) = expected_version.filter(|v| *v != view.version) {
                return Err(StoreError::WrongExpectedVersion {
                    stream: saga_stream(saga_id),
                    expected: ExpectedVersion::Exact(expected),
                    actual: Some(view.version),
                }
                .into());
            }
            let events = view.state.on_operator_gated(action, actor, Utc::now(), self.breakers.as_ref())?;
            let (commit, after) =
                self.decision_commit(saga_id, &view.state, view.version, &events, None, extra.clone())?;
            match self.store.commit(commit).await {
                Ok(_) => {
                    tracing::warn!(%saga_id, actor = %actor.name, reason = %actor.reason, ?action, "operator action");
                    log_decision(saga_id, &view.state, &events);
                    self.remember(saga_id, after.clone());
                    return Ok(after);
                }
                // Someone else changed the saga: decide again on what it is now (and, with an
                // expected version, refuse).
                Err(StoreError::WrongExpectedVersion { stream, .. }) if stream == saga_stream(saga_id) => {
                    self.forget(saga_id);
                }
                Err(e) => {
                    self.forget(saga_id);
                    return Err(e.into());
                }
            }
        }
        Err(Error::Contention { stream: saga_stream(saga_id), attempts: MAX_CONFLICT_RETRIES })
        }
        .instrument(span)
        .await
    }

    /// Tells the circuit breakers what a committed decision learnt of its participants: an
    /// answer (a refusal too) is a success, a timeout or retryable failure a failure. When that
    /// closes a circuit, the sagas held by it are woken (their timers made due now).
    async fn record_outcomes(&self, before: &SagaState, events: &[SagaEvent]) {
        let now = Utc::now();
        let mut woken = Vec::new();
        for event in events {
            let (step, failed) = match event {
                SagaEvent::StepSucceeded { step, .. } | SagaEvent::StepCompensated { step, .. } => (step, false),
                // Only an answer to the attempt sent: a step failed fast (its circuit was
                // open) never reached the participant.
                SagaEvent::StepFailed { step, attempt, retryable, .. } => {
                    if !before.awaits(step, *attempt) {
                        continue;
                    }
                    (step, *retryable)
                }
                SagaEvent::StepTimedOut { step, .. } | SagaEvent::CompensationFailed { step, .. } => (step, true),
                _ => continue,
            };
            let Some(def) = before.step_named(step) else { continue };
            let saga_id = before.saga_id.unwrap_or_default();
            woken.extend(self.breakers.record(&def.participant, saga_id, failed, now));
        }
        if woken.is_empty() {
            return;
        }
        let mut wake = Commit::default();
        for saga_id in &woken {
            wake = wake.with_timer(TimerChange::Set { key: saga_id.to_string(), due_at: now });
        }
        // Not waking them only delays them to their own timer (the end of the hold).
        if let Err(err) = self.store.commit(wake).await {
            tracing::warn!(error = %err, sagas = woken.len(), "cannot wake the sagas a closed circuit held");
        }
    }

    async fn set_timer(&self, key: &str, at: Option<DateTime<Utc>>) -> Result<()> {
        let change = match at {
            Some(due_at) => TimerChange::Set { key: key.to_owned(), due_at },
            None => TimerChange::Cancel { key: key.to_owned() },
        };
        self.store.commit(Commit::default().with_timer(change)).await?;
        Ok(())
    }

    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<ReplyHandled> {
        send_to_dead_letter(self.store.as_ref(), &self.topics, CONSUMER_NAME, delivery, reason).await?;
        Ok(ReplyHandled::DeadLettered(reason.to_owned()))
    }

    /// One decision as one transaction: the saga's new events, the commands they send,
    /// the saga's next timer, and the reply that caused it; with the state it leaves.
    fn decision_commit(
        &self,
        saga_id: Uuid,
        state: &SagaState,
        version: u64,
        events: &[SagaEvent],
        reply_id: Option<&str>,
        mut commit: Commit,
    ) -> Result<(Commit, SagaView)> {
        let mut working = state.clone();
        let mut stored = Vec::with_capacity(events.len());
        let trace = trace_context::current();
        let metadata = match &trace {
            Some(trace) => json!({ "correlation_id": saga_id, "causation_id": reply_id, HEADER_TRACEPARENT: trace }),
            None => json!({ "correlation_id": saga_id, "causation_id": reply_id }),
        };
        // Made for the first command; without exported spans, the saga id is the trace id.
        let mut command_trace = None;
        for event in events {
            working.apply(event);
            if let Some(command) = working.command_for(event) {
                let envelope = Envelope {
                    message_id: command.message_id,
                    saga_id,
                    kind: MessageKind::Command,
                    step: command.step.name.clone(),
                    message_type: command.command_type,
                    attempt: command.attempt,
                    in_reply_to: None,
                    reply_to: Some(self.topics.replies()),
                    payload: command.payload,
                    outcome: None,
                    sent_at: Utc::now(),
                };
                let topic = self.topics.commands(&command.step.participant);
                let trace =
                    command_trace.get_or_insert_with(|| trace.clone().unwrap_or_else(|| traceparent_for(saga_id)));
                commit.outbox.push(envelope.to_message(&topic, Some(trace)));
            }
            stored.push(encode(event)?.with_metadata(metadata.clone()));
        }
        let stored_count = stored.len() as u64;
        if !stored.is_empty() {
            commit.appends.push(StreamAppend {
                stream_id: saga_stream(saga_id),
                expected: ExpectedVersion::from_current(Some(version)),
                events: stored,
            });
        }
        commit.timers.push(match working.next_wakeup() {
            Some(due_at) => TimerChange::Set { key: saga_id.to_string(), due_at },
            None => TimerChange::Cancel { key: saga_id.to_string() },
        });
        if let Some(reply_id) = reply_id {
            commit = commit.processing(CONSUMER_NAME, reply_id);
        }
        let version = version + stored_count;
        Ok((commit, SagaView { state: working, version, trace }))
    }
}

/// Logs a decision and counts its outcomes.
fn log_decision(saga_id: Uuid, before: &SagaState, events: &[SagaEvent]) {
    let definition = before.definition.as_ref().map(|d| d.name.clone()).unwrap_or_default();
    for event in events {
        match event {
            SagaEvent::SagaCompleted {} => {
                metrics::counter!("sagaflow_sagas_completed_total", "definition" => definition.clone()).increment(1);
                tracing::info!(%saga_id, "saga completed");
            }
            SagaEvent::SagaCompensated { reason } => {
                metrics::counter!("sagaflow_sagas_compensated_total", "definition" => definition.clone()).increment(1);
                tracing::info!(%saga_id, %reason, "saga compensated");
            }
            SagaEvent::SagaFailed { reason } => {
                metrics::counter!("sagaflow_sagas_failed_total", "definition" => definition.clone()).increment(1);
                tracing::error!(%saga_id, %reason, "saga failed; needs an operator");
            }
            SagaEvent::StepSucceeded { step, .. } | SagaEvent::StepFailed { step, .. } => {
                // The attempt was sent when its deadline minus the step's timeout.
                if let (Some(awaiting), Some(def)) = (&before.awaiting, before.definition.as_ref()) {
                    if let Some(timeout) = def.steps.get(awaiting.step).map(|s| s.timeout_ms) {
                        let sent =
                            awaiting.deadline - chrono::Duration::milliseconds(i64::try_from(timeout).unwrap_or(0));
                        let elapsed = (Utc::now() - sent).to_std().unwrap_or_default();
                        metrics::histogram!("sagaflow_step_duration_seconds", "definition" => definition.clone(), "step" => step.clone())
                            .record(elapsed.as_secs_f64());
                    }
                }
            }
            SagaEvent::StepTimedOut { step, attempt, .. } => tracing::warn!(%saga_id, %step, attempt, "step timed out"),
            _ => tracing::debug!(%saga_id, ?event, "saga event"),
        }
    }
}

/// Feeds the replies topic to the coordinator.
pub struct ReplyHandler(pub Arc<Coordinator>);

#[async_trait]
impl MessageHandler for ReplyHandler {
    async fn handle(&self, delivery: &Delivery) -> Result<()> {
        self.0.handle_reply(delivery).await.map(|_| ())
    }

    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<()> {
        self.0.dead_letter(delivery, reason).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::{RetryPolicy, StepDefinition};
    use crate::operator_actions::{ActionRefused, Actor, OperatorAction};
    use event_store::memory::MemoryEventStore;

    #[tokio::test]
    async fn an_operator_action_decides_on_the_saga_as_stored_not_as_this_process_last_saw_it() {
        let store: Arc<dyn EventStore> = Arc::new(MemoryEventStore::new());
        let registry = Arc::new(DefinitionRegistry::new(Arc::clone(&store)));
        let step = StepDefinition {
            name: "pivot".into(),
            participant: "p".into(),
            command: "Do".into(),
            compensation: None,
            timeout_ms: 10,
            retry: RetryPolicy { max_attempts: 1, ..RetryPolicy::default() },
        };
        registry
            .register(SagaDefinition {
                stuck_after_ms: None,
                on_open_circuit: Default::default(),
                name: "one".into(),
                version: 0,
                steps: vec![step],
            })
            .await
            .unwrap();
        // Two coordinators over one store, as two processes: the API's started the saga (and
        // keeps it in memory); the other one's timer failed it.
        let api = Coordinator::new(Arc::clone(&store), Arc::clone(&registry), Topics::new("t"));
        let worker = Coordinator::new(Arc::clone(&store), registry, Topics::new("t"));
        let saga_id = api.start("one", None, json!({}), None).await.unwrap();
        worker.fire_timer(&saga_id.to_string(), Utc::now() + chrono::Duration::seconds(1)).await.unwrap();
        assert_eq!(worker.load(saga_id).await.unwrap().unwrap().state.status, saga::SagaStatus::Failed);

        let actor = Actor { name: "ops".into(), reason: "carrier is back".into() };
        let retried = api.act(saga_id, &OperatorAction::Retry, &actor, None, Commit::default()).await;
        let view = retried.expect("a FAILED saga can be retried");
        assert_eq!(view.state.status, saga::SagaStatus::Running);
        let stale = api.act(saga_id, &OperatorAction::Retry, &actor, None, Commit::default()).await;
        assert!(matches!(stale, Err(Error::ActionRefused(ActionRefused::NotAllowed(_)))), "{stale:?}");
    }
}
