//! The saga state machine: the events of a saga's own stream, the state they fold into,
//! and the pure decisions that turn a reply or a due timer into new events.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::definition::{OnOpenCircuit, SagaDefinition, StepDefinition};

/// Running a step, or undoing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Forward,
    Compensation,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Self::Forward => "do",
            Self::Compensation => "undo",
        }
    }
}

/// Everything that happens to a saga; its stream is its audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum SagaEvent {
    SagaStarted {
        saga_id: Uuid,
        definition: SagaDefinition,
        input: Value,
    },
    StepCommandSent {
        step: String,
        attempt: u32,
        message_id: String,
        deadline: DateTime<Utc>,
    },
    StepSucceeded {
        step: String,
        attempt: u32,
        reply_id: String,
        output: Value,
    },
    StepFailed {
        step: String,
        attempt: u32,
        reason: String,
        retryable: bool,
    },
    StepTimedOut {
        step: String,
        attempt: u32,
        message_id: String,
    },
    StepRetryScheduled {
        step: String,
        phase: Phase,
        next_attempt: u32,
        at: DateTime<Utc>,
    },
    /// The participant's circuit is open: the attempt waits, unspent and with no timeout
    /// running, until `until` or until the circuit closes.
    StepHeld {
        step: String,
        phase: Phase,
        attempt: u32,
        participant: String,
        until: DateTime<Utc>,
    },
    CompensationStarted {
        failed_step: String,
        reason: String,
    },
    CompensationSent {
        step: String,
        attempt: u32,
        message_id: String,
        deadline: DateTime<Utc>,
    },
    StepCompensated {
        step: String,
        attempt: u32,
        reply_id: String,
    },
    CompensationFailed {
        step: String,
        attempt: u32,
        reason: String,
    },
    /// A reply for an attempt the saga no longer waits for (late after a timeout, or stray).
    ReplyIgnored {
        reply_id: String,
        in_reply_to: String,
        reason: String,
    },
    SagaCompleted {},
    SagaCompensated {
        reason: String,
    },
    /// A compensation kept failing, or a step failed after the pivot: an operator must look.
    SagaFailed {
        reason: String,
    },
    /// An operator gave the step the saga failed on a new attempt (of its command, or of its
    /// compensation when `phase` is compensation).
    OperatorRetried {
        step: String,
        phase: Phase,
        actor: String,
        reason: String,
    },
    /// An operator settled a step's outcome by hand; a success's `output` joins the context.
    OperatorResolved {
        step: String,
        outcome: Resolution,
        #[serde(default)]
        output: Value,
        actor: String,
        reason: String,
    },
    /// An operator aborted the running saga at `step`, which counts as failed.
    OperatorAborted {
        step: String,
        actor: String,
        reason: String,
    },
}

/// How an operator settled a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// The step took effect.
    Succeeded,
    /// The step's effect is undone, or never happened.
    Compensated,
}

/// Where a saga stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SagaStatus {
    #[default]
    NotStarted,
    Running,
    Compensating,
    Completed,
    Compensated,
    Failed,
}

impl SagaStatus {
    /// The name used on the wire and in the saga index (`RUNNING`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotStarted => "NOT_STARTED",
            Self::Running => "RUNNING",
            Self::Compensating => "COMPENSATING",
            Self::Completed => "COMPLETED",
            Self::Compensated => "COMPENSATED",
            Self::Failed => "FAILED",
        }
    }

    /// Reads [`SagaStatus::as_str`]'s names back.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::NotStarted, Self::Running, Self::Compensating, Self::Completed, Self::Compensated, Self::Failed]
            .into_iter()
            .find(|s| s.as_str() == text)
    }

    /// Whether nothing more will happen to the saga.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Compensated | Self::Failed)
    }
}

/// Where one step stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StepStatus {
    #[default]
    Pending,
    Running,
    WaitingToRetry,
    Succeeded,
    Failed,
    TimedOut,
    Compensating,
    Compensated,
    CompensationFailed,
}

/// One step's progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepState {
    pub name: String,
    pub status: StepStatus,
    pub attempts: u32,
    pub compensation_attempts: u32,
    /// An attempt timed out, so its command may still land and take effect: whatever
    /// later attempts report, the step counts as possibly applied.
    #[serde(default)]
    pub possibly_applied: bool,
    /// Message ids of the attempts sent so far, forward then compensation: a late success
    /// reply to an earlier attempt still proves the step (or its undo) took effect.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sent_ids: Vec<(Phase, String)>,
}

impl StepState {
    fn sent(&mut self, phase: Phase, attempt: u32, message_id: &str) {
        match phase {
            Phase::Forward => {
                self.status = StepStatus::Running;
                self.attempts = attempt;
            }
            Phase::Compensation => {
                self.status = StepStatus::Compensating;
                self.compensation_attempts = attempt;
            }
        }
        self.sent_ids.push((phase, message_id.to_owned()));
    }

    /// The attempt number of `message_id` if it was sent for this step in `phase`.
    fn attempt_of(&self, phase: Phase, message_id: &str) -> Option<u32> {
        let position = self.sent_ids.iter().filter(|(p, _)| *p == phase).position(|(_, id)| id == message_id)?;
        u32::try_from(position + 1).ok()
    }

    fn succeeded(&mut self) {
        self.status = StepStatus::Succeeded;
    }

    fn failed(&mut self) {
        self.status = StepStatus::Failed;
    }

    fn timed_out(&mut self) {
        self.status = StepStatus::TimedOut;
        self.possibly_applied = true;
    }

    /// Whether the step took, or may have taken, effect.
    fn may_have_applied(&self) -> bool {
        match self.status {
            StepStatus::Succeeded | StepStatus::TimedOut => true,
            StepStatus::Failed => self.possibly_applied,
            _ => false,
        }
    }

    fn waiting_to_retry(&mut self, phase: Phase) {
        if phase == Phase::Forward {
            self.status = StepStatus::WaitingToRetry;
        }
    }

    fn compensated(&mut self) {
        self.status = StepStatus::Compensated;
    }

    fn compensation_failed(&mut self) {
        self.status = StepStatus::CompensationFailed;
    }
}

/// The attempt a saga waits a reply for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Awaiting {
    pub step: usize,
    pub phase: Phase,
    pub attempt: u32,
    pub message_id: String,
    pub deadline: DateTime<Utc>,
}

/// A retry waiting for its backoff to pass, or an attempt held by an open circuit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledRetry {
    pub step: usize,
    pub phase: Phase,
    pub attempt: u32,
    pub at: DateTime<Utc>,
    /// Held by an open circuit: it goes (or waits again) whenever the saga is woken.
    #[serde(default)]
    pub held: bool,
}

/// A saga's state: the fold of its stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SagaState {
    pub saga_id: Option<Uuid>,
    pub definition: Option<SagaDefinition>,
    pub input: Value,
    /// The input merged with every succeeded step's output; sent with each command.
    pub context: Value,
    pub status: SagaStatus,
    pub steps: Vec<StepState>,
    pub awaiting: Option<Awaiting>,
    pub retry: Option<ScheduledRetry>,
    /// Why the saga is compensating, compensated or failed.
    pub reason: Option<String>,
}

/// The outcome a participant reported.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplyOutcome {
    pub reply_id: String,
    pub in_reply_to: String,
    pub result: Result<Value, Failure>,
}

/// A failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: String,
    /// Whether another attempt might succeed (a business refusal is not retryable).
    pub retryable: bool,
}

/// A command the coordinator must send because of a decision.
#[derive(Debug, Clone, PartialEq)]
pub struct StepCommand {
    pub step: StepDefinition,
    pub phase: Phase,
    pub attempt: u32,
    pub message_id: String,
    pub command_type: String,
    pub payload: Value,
}

impl SagaState {
    fn step_index(&self, name: &str) -> Option<usize> {
        self.definition.as_ref().and_then(|d| d.step_index(name))
    }

    pub(crate) fn step_def(&self, index: usize) -> Option<&StepDefinition> {
        self.definition.as_ref().and_then(|d| d.steps.get(index))
    }

    /// The definition of step `name`.
    pub(crate) fn step_named(&self, name: &str) -> Option<&StepDefinition> {
        self.step_def(self.step_index(name)?)
    }

    /// Whether the saga waits for the reply to `attempt` of step `name`.
    pub(crate) fn awaits(&self, name: &str, attempt: u32) -> bool {
        self.awaiting.as_ref().is_some_and(|a| a.attempt == attempt && self.step_index(name) == Some(a.step))
    }

    /// When the decision `events` only holds again the attempt the saga already holds (its
    /// circuit is still open): the time it now waits until. Waiting on is no progress, so the
    /// coordinator moves the saga's timer instead of recording the decision.
    pub(crate) fn held_again(&self, events: &[SagaEvent]) -> Option<DateTime<Utc>> {
        let [SagaEvent::StepHeld { step, attempt, phase, until, .. }] = events else { return None };
        let held = self.retry.as_ref().filter(|r| r.held)?;
        (self.step_index(step) == Some(held.step) && held.attempt == *attempt && held.phase == *phase).then_some(*until)
    }

    pub(crate) fn pivot(&self) -> Option<usize> {
        self.definition.as_ref().and_then(SagaDefinition::pivot)
    }

    /// Folds one event.
    pub fn apply(&mut self, event: &SagaEvent) {
        match event {
            SagaEvent::SagaStarted { saga_id, definition, input } => {
                self.saga_id = Some(*saga_id);
                self.steps = definition
                    .steps
                    .iter()
                    .map(|s| StepState {
                        name: s.name.clone(),
                        status: StepStatus::Pending,
                        attempts: 0,
                        compensation_attempts: 0,
                        possibly_applied: false,
                        sent_ids: Vec::new(),
                    })
                    .collect();
                self.definition = Some(definition.clone());
                self.input = input.clone();
                self.context = match input {
                    Value::Object(_) => input.clone(),
                    other => Value::Object(Map::from_iter([("input".to_owned(), other.clone())])),
                };
                self.status = SagaStatus::Running;
            }
            SagaEvent::StepCommandSent { step, attempt, message_id, deadline } => {
                self.sent(step, Phase::Forward, *attempt, message_id, *deadline);
            }
            SagaEvent::CompensationSent { step, attempt, message_id, deadline } => {
                self.sent(step, Phase::Compensation, *attempt, message_id, *deadline);
            }
            SagaEvent::StepSucceeded { step, output, .. } => {
                self.with_step(step, StepState::succeeded);
                if let (Value::Object(context), Value::Object(output)) = (&mut self.context, output) {
                    context.extend(output.clone());
                }
                self.awaiting = None;
                self.retry = None;
            }
            SagaEvent::StepFailed { step, .. } => {
                self.with_step(step, StepState::failed);
                self.awaiting = None;
            }
            SagaEvent::StepTimedOut { step, .. } => {
                self.with_step(step, StepState::timed_out);
                self.awaiting = None;
            }
            SagaEvent::StepRetryScheduled { step, phase, next_attempt, at } => {
                self.with_step(step, |s| s.waiting_to_retry(*phase));
                self.retry = self.step_index(step).map(|index| ScheduledRetry {
                    step: index,
                    phase: *phase,
                    attempt: *next_attempt,
                    at: *at,
                    held: false,
                });
            }
            SagaEvent::StepHeld { step, phase, attempt, until, .. } => {
                self.awaiting = None;
                self.retry = self.step_index(step).map(|index| ScheduledRetry {
                    step: index,
                    phase: *phase,
                    attempt: *attempt,
                    at: *until,
                    held: true,
                });
            }
            SagaEvent::CompensationStarted { reason, .. } => {
                self.status = SagaStatus::Compensating;
                self.reason = Some(reason.clone());
            }
            SagaEvent::StepCompensated { step, .. } => {
                self.with_step(step, StepState::compensated);
                self.awaiting = None;
                self.retry = None;
            }
            SagaEvent::CompensationFailed { step, .. } => {
                self.with_step(step, StepState::compensation_failed);
                self.awaiting = None;
            }
            SagaEvent::ReplyIgnored { .. } => {}
            SagaEvent::SagaCompleted {} => self.finish(SagaStatus::Completed, None),
            SagaEvent::SagaCompensated { reason } => self.finish(SagaStatus::Compensated, Some(reason)),
            SagaEvent::SagaFailed { reason } => self.finish(SagaStatus::Failed, Some(reason)),
            SagaEvent::OperatorRetried { phase, .. } => match phase {
                Phase::Forward => {
                    self.status = SagaStatus::Running;
                    self.reason = None;
                }
                Phase::Compensation => self.status = SagaStatus::Compensating,
            },
            SagaEvent::OperatorResolved { step, outcome, output, .. } => {
                match outcome {
                    Resolution::Succeeded => {
                        self.with_step(step, StepState::succeeded);
                        if let (Value::Object(context), Value::Object(output)) = (&mut self.context, output) {
                            context.extend(output.clone());
                        }
                        self.status = SagaStatus::Running;
                    }
                    Resolution::Compensated => {
                        self.with_step(step, StepState::compensated);
                        self.status = SagaStatus::Compensating;
                    }
                }
                self.awaiting = None;
                self.retry = None;
            }
            SagaEvent::OperatorAborted { step, .. } => {
                // An attempt in flight may still land: the step counts as possibly applied.
                let in_flight = self.awaiting.is_some();
                self.with_step(step, |s| {
                    s.failed();
                    s.possibly_applied |= in_flight;
                });
                self.awaiting = None;
                self.retry = None;
            }
        }
    }

    fn sent(&mut self, step: &str, phase: Phase, attempt: u32, message_id: &str, deadline: DateTime<Utc>) {
        self.with_step(step, |s| s.sent(phase, attempt, message_id));
        self.awaiting = self.step_index(step).map(|index| Awaiting {
            step: index,
            phase,
            attempt,
            message_id: message_id.to_owned(),
            deadline,
        });
        self.retry = None;
    }

    fn with_step(&mut self, name: &str, f: impl FnOnce(&mut StepState)) {
        if let Some(step) = self.steps.iter_mut().find(|s| s.name == name) {
            f(step);
        }
    }

    fn finish(&mut self, status: SagaStatus, reason: Option<&String>) {
        self.status = status;
        if let Some(reason) = reason {
            self.reason = Some(reason.clone());
        }
        self.awaiting = None;
        self.retry = None;
    }

    /// When the saga next needs attention without a reply: a deadline or a retry.
    pub fn next_wakeup(&self) -> Option<DateTime<Utc>> {
        if self.status.is_terminal() {
            return None;
        }
        self.awaiting.as_ref().map(|a| a.deadline).or_else(|| self.retry.as_ref().map(|r| r.at))
    }

    /// The command to send for a `…Sent` event, with the context as it is now.
    pub fn command_for(&self, event: &SagaEvent) -> Option<StepCommand> {
        let (step, phase, attempt, message_id) = match event {
            SagaEvent::StepCommandSent { step, attempt, message_id, .. } => (step, Phase::Forward, attempt, message_id),
            SagaEvent::CompensationSent { step, attempt, message_id, .. } => {
                (step, Phase::Compensation, attempt, message_id)
            }
            _ => return None,
        };
        let def = self.step_def(self.step_index(step)?)?.clone();
        let command_type = match phase {
            Phase::Forward => def.command.clone(),
            Phase::Compensation => def.compensation.clone()?,
        };
        let mut payload = self.context.clone();
        if let (Phase::Compensation, Value::Object(map), Some(reason)) = (phase, &mut payload, &self.reason) {
            map.insert("compensation_reason".to_owned(), Value::String(reason.clone()));
        }
        Some(StepCommand { step: def, phase, attempt: *attempt, message_id: message_id.clone(), command_type, payload })
    }
}

/// Whether a participant takes commands now; the coordinator's circuit breakers answer.
pub trait Gate {
    /// `None` to send saga `saga_id`'s command to `participant` now; else the time until
    /// which its circuit is open. `patience` is how long the command's answer may take.
    fn open_until(
        &self,
        participant: &str,
        saga_id: Uuid,
        patience: std::time::Duration,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>>;

    /// Saga `saga_id` waits for `participant`'s circuit: wake it when the circuit closes.
    fn holding(&self, _participant: &str, _saga_id: Uuid) {}
}

/// A gate that is never closed: every command goes.
pub struct NoGate;

impl Gate for NoGate {
    fn open_until(&self, _: &str, _: Uuid, _: std::time::Duration, _: DateTime<Utc>) -> Option<DateTime<Utc>> {
        None
    }
}

/// Builds the events of a decision while keeping a state that already includes them.
pub(crate) struct Decision<'g> {
    pub(crate) state: SagaState,
    pub(crate) events: Vec<SagaEvent>,
    now: DateTime<Utc>,
    gate: &'g dyn Gate,
}

impl<'g> Decision<'g> {
    pub(crate) fn gated(state: &SagaState, now: DateTime<Utc>, gate: &'g dyn Gate) -> Self {
        Self { state: state.clone(), events: Vec::new(), now, gate }
    }

    pub(crate) fn emit(&mut self, event: SagaEvent) {
        self.state.apply(&event);
        self.events.push(event);
    }

    pub(crate) fn name(&self, index: usize) -> String {
        self.state.step_def(index).map(|s| s.name.clone()).unwrap_or_default()
    }

    /// Sends the attempt, unless the participant's circuit is open: then the attempt waits,
    /// or, when the definition says so, a forward step fails at once.
    pub(crate) fn send(&mut self, index: usize, phase: Phase, attempt: u32) {
        let Some(def) = self.state.step_def(index) else { return };
        let saga_id = self.state.saga_id.unwrap_or_default();
        let step = def.name.clone();
        if let Some(until) = self.gate.open_until(&def.participant, saga_id, def.timeout(), self.now) {
            let participant = def.participant.clone();
            // Past the pivot nothing is undone: a step there fails only for an operator, so it waits.
            let fail_fast = phase == Phase::Forward
                && self.state.definition.as_ref().is_some_and(|d| d.on_open_circuit == OnOpenCircuit::Fail)
                && self.state.pivot().is_none_or(|pivot| index <= pivot);
            if fail_fast {
                let reason = format!("participant '{participant}' is unavailable (its circuit is open)");
                self.emit(SagaEvent::StepFailed {
                    step: step.clone(),
                    attempt,
                    reason: reason.clone(),
                    retryable: false,
                });
                self.begin_compensation(index, format!("step '{step}' failed: {reason}"));
            } else {
                self.gate.holding(&participant, saga_id);
                self.emit(SagaEvent::StepHeld { step, phase, attempt, participant, until });
            }
            return;
        }
        let message_id = format!("{saga_id}/{step}/{}/{attempt}", phase.as_str());
        let deadline = self.now + chrono::Duration::from_std(def.timeout()).unwrap_or(chrono::Duration::MAX);
        self.emit(match phase {
            Phase::Forward => SagaEvent::StepCommandSent { step, attempt, message_id, deadline },
            Phase::Compensation => SagaEvent::CompensationSent { step, attempt, message_id, deadline },
        });
    }

    /// Retries when the policy allows another attempt; returns false when attempts are used up.
    fn retry(&mut self, index: usize, phase: Phase, attempt: u32) -> bool {
        let Some(policy) = self.state.step_def(index).map(|s| s.retry.clone()) else { return false };
        if attempt >= policy.max_attempts {
            return false;
        }
        let next_attempt = attempt + 1;
        let at = self.now + chrono::Duration::from_std(policy.backoff(next_attempt)).unwrap_or(chrono::Duration::MAX);
        self.emit(SagaEvent::StepRetryScheduled { step: self.name(index), phase, next_attempt, at });
        true
    }

    pub(crate) fn advance(&mut self, done: usize) {
        if done + 1 < self.state.steps.len() {
            self.send(done + 1, Phase::Forward, 1);
        } else {
            self.emit(SagaEvent::SagaCompleted {});
        }
    }

    pub(crate) fn begin_compensation(&mut self, failed: usize, reason: String) {
        let pivot = self.state.pivot();
        let failed_is_pivot = pivot == Some(failed);
        if failed_is_pivot && self.state.steps.get(failed).is_some_and(|s| s.possibly_applied) {
            // An earlier attempt of the pivot timed out and may still land: undoing the steps
            // before it could leave it applied with nothing under it. An operator must decide.
            let step = self.name(failed);
            self.emit(SagaEvent::SagaFailed {
                reason: format!(
                    "pivot step '{step}' had an attempt time out; its outcome is unknown and it cannot be compensated ({reason})"
                ),
            });
            return;
        }
        if let Some(pivot) = pivot.filter(|p| *p < failed).map(|p| self.name(p)) {
            let failed = self.name(failed);
            self.emit(SagaEvent::SagaFailed {
                reason: format!("step '{failed}' failed after the pivot step '{pivot}' completed: {reason}"),
            });
            return;
        }
        self.emit(SagaEvent::CompensationStarted { failed_step: self.name(failed), reason });
        // A step that timed out (in any attempt) may still take effect: it is compensated too.
        self.compensate_below(failed + 1);
    }

    /// Sends the compensation of the latest step below `below` that took (or may have
    /// taken) effect, or ends the saga as compensated.
    pub(crate) fn compensate_below(&mut self, below: usize) {
        let next = (0..below.min(self.state.steps.len())).rev().find(|i| {
            let compensable = self.state.step_def(*i).is_some_and(|s| s.compensation.is_some());
            compensable && self.state.steps.get(*i).is_some_and(StepState::may_have_applied)
        });
        match next {
            Some(index) => self.send(index, Phase::Compensation, 1),
            None => {
                let reason = self.state.reason.clone().unwrap_or_default();
                self.emit(SagaEvent::SagaCompensated { reason });
            }
        }
    }

    fn compensation_gave_up(&mut self, index: usize, attempt: u32, reason: &str) {
        if !self.retry(index, Phase::Compensation, attempt) {
            let step = self.name(index);
            self.emit(SagaEvent::SagaFailed {
                reason: format!("compensation of step '{step}' failed after {attempt} attempt(s): {reason}"),
            });
        }
    }
}

/// The events that start a saga: it is recorded, and its first step's command is sent.
pub fn start(saga_id: Uuid, definition: SagaDefinition, input: Value, now: DateTime<Utc>) -> Vec<SagaEvent> {
    start_gated(saga_id, definition, input, now, &NoGate)
}

/// [`start`], through `gate`.
pub fn start_gated(
    saga_id: Uuid,
    definition: SagaDefinition,
    input: Value,
    now: DateTime<Utc>,
    gate: &dyn Gate,
) -> Vec<SagaEvent> {
    let mut decision = Decision::gated(&SagaState::default(), now, gate);
    decision.emit(SagaEvent::SagaStarted { saga_id, definition, input });
    decision.send(0, Phase::Forward, 1);
    decision.events
}

impl SagaState {
    /// The events a participant's reply leads to.
    pub fn on_reply(&self, reply: &ReplyOutcome, now: DateTime<Utc>) -> Vec<SagaEvent> {
        self.on_reply_gated(reply, now, &NoGate)
    }

    /// [`Self::on_reply`], with the commands it sends through `gate`.
    pub fn on_reply_gated(&self, reply: &ReplyOutcome, now: DateTime<Utc>, gate: &dyn Gate) -> Vec<SagaEvent> {
        let mut d = Decision::gated(self, now, gate);
        let awaited = self
            .awaiting
            .clone()
            .filter(|a| a.message_id == reply.in_reply_to)
            .map(|a| (a.step, a.phase, a.attempt))
            .or_else(|| self.earlier_attempt_succeeded(reply));
        let Some((index, phase, attempt)) = awaited else {
            let reason = if self.status.is_terminal() {
                "saga already finished"
            } else {
                "the saga is not waiting for a reply to that message"
            };
            d.emit(SagaEvent::ReplyIgnored {
                reply_id: reply.reply_id.clone(),
                in_reply_to: reply.in_reply_to.clone(),
                reason: reason.to_owned(),
            });
            return d.events;
        };
        let step = d.name(index);
        match (phase, &reply.result) {
            (Phase::Forward, Ok(output)) => {
                d.emit(SagaEvent::StepSucceeded {
                    step,
                    attempt,
                    reply_id: reply.reply_id.clone(),
                    output: output.clone(),
                });
                d.advance(index);
            }
            (Phase::Forward, Err(failure)) => {
                d.emit(SagaEvent::StepFailed {
                    step: step.clone(),
                    attempt,
                    reason: failure.reason.clone(),
                    retryable: failure.retryable,
                });
                if !(failure.retryable && d.retry(index, Phase::Forward, attempt)) {
                    d.begin_compensation(index, format!("step '{step}' failed: {}", failure.reason));
                }
            }
            (Phase::Compensation, Ok(_)) => {
                d.emit(SagaEvent::StepCompensated { step, attempt, reply_id: reply.reply_id.clone() });
                d.compensate_below(index);
            }
            (Phase::Compensation, Err(failure)) => {
                d.emit(SagaEvent::CompensationFailed { step, attempt, reason: failure.reason.clone() });
                d.compensation_gave_up(index, attempt, &failure.reason);
            }
        }
        d.events
    }

    /// A success reply to an earlier attempt of the step and phase the saga is on (waiting
    /// for a later attempt, or for its backoff to pass): the effect it reports is real, since
    /// participants apply a command once per business key, so it settles the step as well
    /// as the awaited attempt would. A late failure is not taken: the later attempt decides.
    fn earlier_attempt_succeeded(&self, reply: &ReplyOutcome) -> Option<(usize, Phase, u32)> {
        if reply.result.is_err() || self.status.is_terminal() {
            return None;
        }
        let (index, phase) = match (&self.awaiting, &self.retry) {
            (Some(a), _) => (a.step, a.phase),
            (None, Some(r)) => (r.step, r.phase),
            (None, None) => return None,
        };
        let attempt = self.steps.get(index)?.attempt_of(phase, &reply.in_reply_to)?;
        Some((index, phase, attempt))
    }

    /// The events a due timer leads to: a timed-out attempt, a retry whose backoff passed,
    /// or a held attempt (which goes, or waits again).
    pub fn on_timer(&self, now: DateTime<Utc>) -> Vec<SagaEvent> {
        self.on_timer_gated(now, &NoGate)
    }

    /// [`Self::on_timer`], with the commands it sends through `gate`.
    pub fn on_timer_gated(&self, now: DateTime<Utc>, gate: &dyn Gate) -> Vec<SagaEvent> {
        let mut d = Decision::gated(self, now, gate);
        if self.status.is_terminal() {
            return d.events;
        }
        if let Some(awaiting) = self.awaiting.clone().filter(|a| a.deadline <= now) {
            let (index, attempt) = (awaiting.step, awaiting.attempt);
            let step = d.name(index);
            match awaiting.phase {
                Phase::Forward => {
                    d.emit(SagaEvent::StepTimedOut { step: step.clone(), attempt, message_id: awaiting.message_id });
                    if !d.retry(index, Phase::Forward, attempt) {
                        let compensable = self.step_def(index).is_some_and(|s| s.compensation.is_some());
                        let after_pivot = self.pivot().is_some_and(|p| p < index);
                        if compensable || after_pivot {
                            d.begin_compensation(index, format!("step '{step}' timed out after {attempt} attempt(s)"));
                        } else {
                            // The pivot may still take effect: undoing the steps before it could
                            // leave it applied with nothing under it. An operator must decide.
                            d.emit(SagaEvent::SagaFailed {
                                reason: format!(
                                    "pivot step '{step}' timed out after {attempt} attempt(s); its outcome is unknown and it cannot be compensated"
                                ),
                            });
                        }
                    }
                }
                Phase::Compensation => {
                    let reason = "timed out".to_owned();
                    d.emit(SagaEvent::CompensationFailed { step, attempt, reason: reason.clone() });
                    d.compensation_gave_up(index, attempt, &reason);
                }
            }
        } else if let Some(retry) = self.retry.clone().filter(|r| r.held || r.at <= now) {
            d.send(retry.step, retry.phase, retry.attempt);
        }
        d.events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::RetryPolicy;
    use serde_json::json;

    fn step(name: &str, compensation: Option<&str>, max_attempts: u32) -> StepDefinition {
        StepDefinition {
            name: name.into(),
            participant: format!("{name}-svc"),
            command: format!("Do{name}"),
            compensation: compensation.map(Into::into),
            timeout_ms: 1_000,
            retry: RetryPolicy { max_attempts, initial_backoff_ms: 10, max_backoff_ms: 100, multiplier: 2 },
        }
    }

    fn definition(steps: Vec<StepDefinition>) -> SagaDefinition {
        SagaDefinition {
            stuck_after_ms: None,
            on_open_circuit: Default::default(),
            name: "test".into(),
            version: 1,
            steps,
        }
    }

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().with_timezone(&Utc)
    }

    fn secs(s: i64) -> DateTime<Utc> {
        t0() + chrono::Duration::seconds(s)
    }

    struct Saga {
        state: SagaState,
        log: Vec<SagaEvent>,
    }

    impl Saga {
        fn start(steps: Vec<StepDefinition>) -> Self {
            let mut saga = Self { state: SagaState::default(), log: vec![] };
            let events = start(Uuid::nil(), definition(steps), json!({"order": 7}), t0());
            saga.record(events);
            saga
        }

        fn record(&mut self, events: Vec<SagaEvent>) -> Vec<&'static str> {
            let names = events.iter().map(kind).collect();
            for e in &events {
                self.state.apply(e);
            }
            self.log.extend(events);
            names
        }

        fn pending_id(&self) -> String {
            self.state.awaiting.as_ref().expect("awaiting a reply").message_id.clone()
        }

        fn reply(&mut self, result: Result<Value, Failure>, at: i64) -> Vec<&'static str> {
            let in_reply_to = self.pending_id();
            let reply = ReplyOutcome { reply_id: format!("{in_reply_to}/reply"), in_reply_to, result };
            let events = self.state.on_reply(&reply, secs(at));
            self.record(events)
        }

        fn ok(&mut self, output: Value) -> Vec<&'static str> {
            self.reply(Ok(output), 0)
        }

        fn fail(&mut self, reason: &str, retryable: bool) -> Vec<&'static str> {
            self.reply(Err(Failure { reason: reason.into(), retryable }), 0)
        }

        fn timer(&mut self, at: i64) -> Vec<&'static str> {
            let events = self.state.on_timer(secs(at));
            self.record(events)
        }
    }

    fn kind(e: &SagaEvent) -> &'static str {
        match e {
            SagaEvent::SagaStarted { .. } => "SagaStarted",
            SagaEvent::StepCommandSent { .. } => "StepCommandSent",
            SagaEvent::StepSucceeded { .. } => "StepSucceeded",
            SagaEvent::StepFailed { .. } => "StepFailed",
            SagaEvent::StepTimedOut { .. } => "StepTimedOut",
            SagaEvent::StepRetryScheduled { .. } => "StepRetryScheduled",
            SagaEvent::StepHeld { .. } => "StepHeld",
            SagaEvent::CompensationStarted { .. } => "CompensationStarted",
            SagaEvent::CompensationSent { .. } => "CompensationSent",
            SagaEvent::StepCompensated { .. } => "StepCompensated",
            SagaEvent::CompensationFailed { .. } => "CompensationFailed",
            SagaEvent::ReplyIgnored { .. } => "ReplyIgnored",
            SagaEvent::SagaCompleted {} => "SagaCompleted",
            SagaEvent::SagaCompensated { .. } => "SagaCompensated",
            SagaEvent::SagaFailed { .. } => "SagaFailed",
            SagaEvent::OperatorRetried { .. } => "OperatorRetried",
            SagaEvent::OperatorResolved { .. } => "OperatorResolved",
            SagaEvent::OperatorAborted { .. } => "OperatorAborted",
        }
    }

    /// A gate whose circuits are all open (until a minute in) while `shut` holds.
    struct Circuits {
        shut: std::cell::Cell<bool>,
    }

    impl Gate for Circuits {
        fn open_until(&self, _: &str, _: Uuid, _: std::time::Duration, _: DateTime<Utc>) -> Option<DateTime<Utc>> {
            self.shut.get().then(|| secs(60))
        }
    }

    fn succeed_through(saga: &mut Saga, gate: &Circuits, at: i64) -> Vec<&'static str> {
        let in_reply_to = saga.pending_id();
        let reply = ReplyOutcome { reply_id: format!("{in_reply_to}/reply"), in_reply_to, result: Ok(json!({})) };
        let events = saga.state.on_reply_gated(&reply, secs(at), gate);
        saga.record(events)
    }

    #[test]
    fn an_open_circuit_holds_the_attempt_unspent_until_the_saga_is_woken_with_it_closed() {
        let mut saga = Saga::start(vec![step("a", Some("UndoA"), 2), step("b", Some("UndoB"), 2)]);
        let gate = Circuits { shut: std::cell::Cell::new(true) };
        assert_eq!(succeed_through(&mut saga, &gate, 1), ["StepSucceeded", "StepHeld"]);
        assert!(saga.state.awaiting.is_none(), "no attempt is out, so no timeout runs");
        assert_eq!(saga.state.next_wakeup(), Some(secs(60)));
        // Woken while the circuit is still open: it waits again, on the same attempt.
        let events = saga.state.on_timer_gated(secs(2), &gate);
        assert_eq!(saga.record(events), ["StepHeld"]);
        gate.shut.set(false);
        let events = saga.state.on_timer_gated(secs(3), &gate);
        assert_eq!(saga.record(events), ["StepCommandSent"]);
        assert_eq!(saga.state.awaiting.as_ref().map(|a| a.attempt), Some(1), "holding spent no attempt");
        assert_eq!(saga.ok(json!({})), ["StepSucceeded", "SagaCompleted"]);
    }

    #[test]
    fn a_definition_may_fail_fast_on_an_open_circuit_while_compensations_still_wait() {
        let mut def = definition(vec![step("a", Some("UndoA"), 2), step("b", Some("UndoB"), 2)]);
        def.on_open_circuit = OnOpenCircuit::Fail;
        let mut saga = Saga { state: SagaState::default(), log: vec![] };
        saga.record(start(Uuid::nil(), def, json!({}), t0()));
        let gate = Circuits { shut: std::cell::Cell::new(true) };
        let events = succeed_through(&mut saga, &gate, 1);
        assert_eq!(events, ["StepSucceeded", "StepFailed", "CompensationStarted", "StepHeld"]);
        assert_eq!(saga.state.status, SagaStatus::Compensating);
        gate.shut.set(false);
        let events = saga.state.on_timer_gated(secs(61), &gate);
        assert_eq!(saga.record(events), ["CompensationSent"]);
        assert_eq!(saga.ok(json!({})), ["StepCompensated", "SagaCompensated"]);
    }

    #[test]
    fn past_the_pivot_a_fail_fast_definition_still_holds() {
        let mut def = definition(vec![step("a", Some("UndoA"), 2), step("pivot", None, 2), step("after", None, 2)]);
        def.on_open_circuit = OnOpenCircuit::Fail;
        let mut saga = Saga { state: SagaState::default(), log: vec![] };
        saga.record(start(Uuid::nil(), def, json!({}), t0()));
        saga.ok(json!({}));
        let gate = Circuits { shut: std::cell::Cell::new(true) };
        // Nothing after the pivot is undone: failing there would leave the saga to an operator.
        assert_eq!(succeed_through(&mut saga, &gate, 1), ["StepSucceeded", "StepHeld"]);
        assert_eq!(saga.state.status, SagaStatus::Running);
    }

    fn by() -> crate::operator_actions::Actor {
        crate::operator_actions::Actor { name: "ops@example".into(), reason: "fixed the cause".into() }
    }

    impl Saga {
        fn operator(
            &mut self,
            action: &crate::operator_actions::OperatorAction,
        ) -> Result<Vec<&'static str>, crate::operator_actions::ActionRefused> {
            let events = self.state.on_operator(action, &by(), secs(100))?;
            Ok(self.record(events))
        }
    }

    mod operator_actions {
        use super::*;
        use crate::operator_actions::{ActionRefused, OperatorAction};

        fn resolve(step: &str, outcome: Resolution, output: Value) -> OperatorAction {
            OperatorAction::Resolve { step: step.into(), outcome, output }
        }

        /// a → pivot (timed out: outcome unknown) → FAILED.
        fn unknown_pivot() -> Saga {
            let mut saga = Saga::start(vec![step("a", Some("UndoA"), 1), step("pivot", None, 1), step("c", None, 1)]);
            saga.ok(json!({}));
            assert_eq!(saga.timer(5), ["StepTimedOut", "SagaFailed"]);
            saga
        }

        #[test]
        fn retry_gives_the_failed_step_a_new_attempt_and_the_saga_goes_on() {
            let mut saga = unknown_pivot();
            assert_eq!(saga.operator(&OperatorAction::Retry).unwrap(), ["OperatorRetried", "StepCommandSent"]);
            assert_eq!((saga.state.status, saga.state.reason.as_deref()), (SagaStatus::Running, None));
            assert_eq!(saga.pending_id(), "00000000-0000-0000-0000-000000000000/pivot/do/2");
            assert_eq!(saga.ok(json!({})), ["StepSucceeded", "StepCommandSent"]);
            assert_eq!(saga.ok(json!({})), ["StepSucceeded", "SagaCompleted"]);
        }

        #[test]
        fn retry_of_a_compensation_that_gave_up_resumes_compensating() {
            let mut saga = Saga::start(vec![step("a", Some("UndoA"), 1), step("b", Some("UndoB"), 1)]);
            saga.ok(json!({}));
            saga.fail("declined", false);
            assert_eq!(saga.fail("db down", true), ["CompensationFailed", "SagaFailed"]);
            assert_eq!(saga.operator(&OperatorAction::Retry).unwrap(), ["OperatorRetried", "CompensationSent"]);
            assert_eq!(saga.state.status, SagaStatus::Compensating);
            assert!(saga.pending_id().ends_with("/a/undo/2"), "{}", saga.pending_id());
            assert_eq!(saga.ok(json!({})), ["StepCompensated", "SagaCompensated"]);
        }

        #[test]
        fn an_unknown_pivot_resolved_as_succeeded_goes_forward_with_its_output() {
            let mut saga = unknown_pivot();
            let events = saga.operator(&resolve("pivot", Resolution::Succeeded, json!({"ref": "T-1"}))).unwrap();
            assert_eq!(events, ["OperatorResolved", "StepCommandSent"]);
            assert_eq!(saga.state.context["ref"], "T-1", "the output joins the context");
            assert_eq!(saga.state.steps[1].status, StepStatus::Succeeded);
            assert_eq!(saga.ok(json!({})), ["StepSucceeded", "SagaCompleted"]);
        }

        #[test]
        fn an_unknown_pivot_resolved_as_compensated_undoes_the_steps_before_it() {
            let mut saga = unknown_pivot();
            let events = saga.operator(&resolve("pivot", Resolution::Compensated, Value::Null)).unwrap();
            assert_eq!(events, ["OperatorResolved", "CompensationStarted", "CompensationSent"]);
            assert!(saga.state.reason.as_deref().unwrap().contains("resolved as compensated by ops@example"));
            assert_eq!(saga.ok(json!({})), ["StepCompensated", "SagaCompensated"]);
        }

        #[test]
        fn abort_compensates_now_including_the_step_in_flight() {
            let mut saga =
                Saga::start(vec![step("a", Some("UndoA"), 1), step("b", Some("UndoB"), 1), step("p", None, 1)]);
            saga.ok(json!({}));
            let events = saga.operator(&OperatorAction::Abort).unwrap();
            assert_eq!(events, ["OperatorAborted", "CompensationStarted", "CompensationSent"]);
            assert!(saga.pending_id().ends_with("/b/undo/1"), "the in-flight step may land: undone first");
            assert_eq!(saga.ok(json!({})), ["StepCompensated", "CompensationSent"]);
            assert_eq!(saga.ok(json!({})), ["StepCompensated", "SagaCompensated"]);
            assert!(saga.state.reason.as_deref().unwrap().starts_with("aborted by ops@example at step 'b'"));
        }

        #[test]
        fn actions_that_the_state_does_not_allow_are_refused() {
            let mut running = Saga::start(vec![step("a", Some("UndoA"), 1), step("p", None, 1), step("c", None, 1)]);
            let not_allowed = |r: Result<Vec<&str>, ActionRefused>| matches!(r, Err(ActionRefused::NotAllowed(_)));
            let invalid = |r: Result<Vec<&str>, ActionRefused>| matches!(r, Err(ActionRefused::Invalid(_)));
            assert!(not_allowed(running.operator(&OperatorAction::Retry)), "only FAILED sagas are retried");
            assert!(not_allowed(running.operator(&resolve("p", Resolution::Succeeded, Value::Null))), "not its step");
            assert!(invalid(running.operator(&resolve("zz", Resolution::Succeeded, Value::Null))));
            assert!(invalid(running.operator(&resolve("a", Resolution::Succeeded, json!([1])))));
            running.ok(json!({}));
            assert!(not_allowed(running.operator(&OperatorAction::Abort)), "the pivot is in flight");
            running.ok(json!({}));
            assert!(not_allowed(running.operator(&OperatorAction::Abort)), "past the pivot");
            assert!(invalid(running.operator(&resolve("c", Resolution::Compensated, Value::Null))), "after the pivot");
            running.ok(json!({}));
            assert!(not_allowed(running.operator(&OperatorAction::Abort)), "completed");
            let empty = crate::operator_actions::Actor { name: "x".into(), reason: " ".into() };
            assert!(matches!(
                unknown_pivot().state.on_operator(&OperatorAction::Retry, &empty, secs(0)),
                Err(ActionRefused::Invalid(_))
            ));
        }
    }

    fn three_steps() -> Vec<StepDefinition> {
        vec![step("a", Some("UndoA"), 1), step("b", Some("UndoB"), 1), step("c", None, 1)]
    }

    #[test]
    fn happy_path_runs_every_step_in_order_and_merges_outputs() {
        let mut saga = Saga::start(three_steps());
        assert_eq!(saga.log.iter().map(kind).collect::<Vec<_>>(), ["SagaStarted", "StepCommandSent"]);
        assert_eq!(saga.state.steps[0].status, StepStatus::Running);
        assert_eq!(saga.ok(json!({"reservation": "r1"})), ["StepSucceeded", "StepCommandSent"]);
        let command = saga.state.command_for(saga.log.last().unwrap()).unwrap();
        assert_eq!((command.command_type.as_str(), command.attempt), ("Dob", 1));
        assert_eq!(command.payload, json!({"order": 7, "reservation": "r1"}));
        assert_eq!(saga.ok(json!({})), ["StepSucceeded", "StepCommandSent"]);
        assert_eq!(saga.ok(json!({})), ["StepSucceeded", "SagaCompleted"]);
        assert_eq!(saga.state.status, SagaStatus::Completed);
        assert!(saga.state.steps.iter().all(|s| s.status == StepStatus::Succeeded));
        assert_eq!(saga.state.next_wakeup(), None);
    }

    #[test]
    fn business_failure_compensates_finished_steps_in_reverse_order() {
        let steps = vec![step("a", Some("UndoA"), 3), step("b", Some("UndoB"), 3), step("c", Some("UndoC"), 3)];
        let mut saga = Saga::start(steps);
        saga.ok(json!({}));
        saga.ok(json!({}));
        assert_eq!(saga.fail("declined", false), ["StepFailed", "CompensationStarted", "CompensationSent"]);
        assert_eq!(saga.state.status, SagaStatus::Compensating);
        let undo_b = saga.state.command_for(saga.log.last().unwrap()).unwrap();
        assert_eq!(undo_b.command_type, "UndoB");
        assert_eq!(undo_b.payload["compensation_reason"], "step 'c' failed: declined");
        assert_eq!(saga.ok(json!({})), ["StepCompensated", "CompensationSent"]);
        assert_eq!(saga.state.command_for(saga.log.last().unwrap()).unwrap().command_type, "UndoA");
        assert_eq!(saga.ok(json!({})), ["StepCompensated", "SagaCompensated"]);
        assert_eq!(saga.state.status, SagaStatus::Compensated);
        assert_eq!(saga.state.reason.as_deref(), Some("step 'c' failed: declined"));
        let statuses: Vec<StepStatus> = saga.state.steps.iter().map(|s| s.status).collect();
        assert_eq!(statuses, [StepStatus::Compensated, StepStatus::Compensated, StepStatus::Failed]);
    }

    #[test]
    fn failure_of_the_first_step_compensates_nothing() {
        let mut saga = Saga::start(three_steps());
        assert_eq!(saga.fail("short stock", false), ["StepFailed", "CompensationStarted", "SagaCompensated"]);
        assert_eq!(saga.state.status, SagaStatus::Compensated);
    }

    #[test]
    fn retryable_failure_waits_for_the_backoff_then_sends_the_next_attempt() {
        let mut saga = Saga::start(vec![step("a", Some("UndoA"), 2)]);
        assert_eq!(saga.fail("busy", true), ["StepFailed", "StepRetryScheduled"]);
        assert_eq!(saga.state.steps[0].status, StepStatus::WaitingToRetry);
        let at = saga.state.retry.as_ref().unwrap().at;
        assert_eq!(saga.state.next_wakeup(), Some(at));
        assert!(at > t0() && at <= secs(1));
        assert!(saga.state.on_timer(t0()).is_empty(), "backoff not over yet");
        assert_eq!(saga.timer(1), ["StepCommandSent"]);
        assert_eq!(saga.state.steps[0].attempts, 2);
        // Last attempt fails: no more retries, compensation (nothing to undo).
        assert_eq!(saga.fail("busy", true), ["StepFailed", "CompensationStarted", "SagaCompensated"]);
    }

    #[test]
    fn timeout_is_retried_per_policy_then_compensated() {
        let mut saga = Saga::start(vec![step("a", Some("UndoA"), 1), step("b", Some("UndoB"), 2)]);
        saga.ok(json!({}));
        assert!(saga.state.on_timer(t0()).is_empty(), "deadline not reached");
        assert_eq!(saga.timer(2), ["StepTimedOut", "StepRetryScheduled"]);
        assert_eq!(saga.state.steps[1].status, StepStatus::WaitingToRetry);
        assert_eq!(saga.timer(3), ["StepCommandSent"]);
        assert_eq!(saga.timer(10), ["StepTimedOut", "CompensationStarted", "CompensationSent"]);
        assert_eq!(saga.state.reason.as_deref(), Some("step 'b' timed out after 2 attempt(s)"));
        // The timed-out step may have taken effect late: it is undone first, then 'a'.
        let undo = saga.state.command_for(saga.log.last().unwrap()).unwrap();
        assert_eq!(undo.command_type, "UndoB");
        assert_eq!(saga.ok(json!({})), ["StepCompensated", "CompensationSent"]);
        assert_eq!(saga.state.command_for(saga.log.last().unwrap()).unwrap().command_type, "UndoA");
        assert_eq!(saga.ok(json!({})), ["StepCompensated", "SagaCompensated"]);
    }

    #[test]
    fn a_pivot_that_times_out_fails_the_saga_instead_of_compensating_around_it() {
        let mut saga = Saga::start(vec![step("a", Some("UndoA"), 1), step("pivot", None, 1)]);
        saga.ok(json!({}));
        assert_eq!(saga.timer(5), ["StepTimedOut", "SagaFailed"]);
        assert!(saga.state.reason.as_deref().unwrap().contains("outcome is unknown"));
        assert_eq!(saga.state.steps[0].status, StepStatus::Succeeded, "nothing undone under the pivot");
    }

    #[test]
    fn a_pivot_that_refuses_compensates_the_steps_before_it() {
        let mut saga = Saga::start(vec![step("a", Some("UndoA"), 1), step("pivot", None, 1)]);
        saga.ok(json!({}));
        assert_eq!(saga.fail("no", false), ["StepFailed", "CompensationStarted", "CompensationSent"]);
    }

    #[test]
    fn a_refusal_after_a_timed_out_attempt_still_compensates_the_step() {
        let mut saga = Saga::start(vec![step("a", Some("UndoA"), 1), step("b", Some("UndoB"), 2)]);
        saga.ok(json!({}));
        assert_eq!(saga.timer(2), ["StepTimedOut", "StepRetryScheduled"]);
        assert_eq!(saga.timer(3), ["StepCommandSent"]);
        // Attempt 2 is refused, but attempt 1 may still land and take effect.
        assert_eq!(saga.fail("no credit", false), ["StepFailed", "CompensationStarted", "CompensationSent"]);
        let undo = saga.state.command_for(saga.log.last().unwrap()).unwrap();
        assert_eq!(undo.command_type, "UndoB", "the possibly applied step is undone first");
        assert_eq!(saga.ok(json!({})), ["StepCompensated", "CompensationSent"]);
        assert_eq!(saga.state.command_for(saga.log.last().unwrap()).unwrap().command_type, "UndoA");
        assert_eq!(saga.ok(json!({})), ["StepCompensated", "SagaCompensated"]);
    }

    #[test]
    fn a_pivot_refusal_after_a_timed_out_attempt_leaves_the_outcome_unknown() {
        let mut saga = Saga::start(vec![step("a", Some("UndoA"), 1), step("pivot", None, 2)]);
        saga.ok(json!({}));
        assert_eq!(saga.timer(2), ["StepTimedOut", "StepRetryScheduled"]);
        assert_eq!(saga.timer(3), ["StepCommandSent"]);
        assert_eq!(saga.fail("no", false), ["StepFailed", "SagaFailed"]);
        assert!(saga.state.reason.as_deref().unwrap().contains("outcome is unknown"));
        assert_eq!(saga.state.steps[0].status, StepStatus::Succeeded, "nothing undone under the pivot");
    }

    #[test]
    fn a_compensation_that_keeps_failing_fails_the_saga_for_an_operator() {
        let mut saga = Saga::start(vec![step("a", Some("UndoA"), 2), step("b", Some("UndoB"), 1)]);
        saga.ok(json!({}));
        saga.fail("declined", false);
        assert_eq!(saga.fail("db down", true), ["CompensationFailed", "StepRetryScheduled"]);
        assert_eq!(saga.state.steps[0].status, StepStatus::CompensationFailed);
        assert_eq!(saga.timer(5), ["CompensationSent"]);
        assert_eq!(saga.state.steps[0].compensation_attempts, 2);
        assert_eq!(saga.fail("db down", false), ["CompensationFailed", "SagaFailed"]);
        assert_eq!(saga.state.status, SagaStatus::Failed);
        assert_eq!(saga.state.reason.as_deref(), Some("compensation of step 'a' failed after 2 attempt(s): db down"));
        assert!(saga.state.on_timer(secs(100)).is_empty(), "a failed saga does nothing more");
    }

    #[test]
    fn a_compensation_that_times_out_counts_as_failed() {
        let mut saga = Saga::start(vec![step("a", Some("UndoA"), 1), step("b", Some("UndoB"), 1)]);
        saga.ok(json!({}));
        saga.fail("declined", false);
        assert_eq!(saga.timer(5), ["CompensationFailed", "SagaFailed"]);
    }

    #[test]
    fn failure_after_the_pivot_is_not_compensated() {
        let mut saga =
            Saga::start(vec![step("a", Some("UndoA"), 1), step("pivot", None, 1), step("c", Some("UndoC"), 1)]);
        saga.ok(json!({}));
        saga.ok(json!({}));
        assert_eq!(saga.fail("boom", false), ["StepFailed", "SagaFailed"]);
        assert!(saga.state.reason.as_deref().unwrap().contains("after the pivot step 'pivot'"));
    }

    #[test]
    fn retriable_steps_after_the_pivot_run_forward_and_fail_for_an_operator() {
        let steps = || vec![step("a", Some("UndoA"), 1), step("pivot", None, 1), step("settle", None, 2)];
        let mut saga = Saga::start(steps());
        saga.ok(json!({}));
        saga.ok(json!({}));
        assert_eq!(saga.ok(json!({})), ["StepSucceeded", "SagaCompleted"]);

        let mut saga = Saga::start(steps());
        saga.ok(json!({}));
        saga.ok(json!({}));
        assert_eq!(saga.timer(5), ["StepTimedOut", "StepRetryScheduled"]);
        saga.timer(6);
        assert_eq!(saga.timer(20), ["StepTimedOut", "SagaFailed"]);
        let reason = saga.state.reason.as_deref().unwrap();
        assert!(reason.contains("step 'settle' failed after the pivot step 'pivot' completed"), "{reason}");
        assert_eq!(saga.state.steps[0].status, StepStatus::Succeeded, "nothing undone under the pivot");
    }

    #[test]
    fn late_failures_and_stray_replies_are_recorded_and_ignored() {
        let mut saga = Saga::start(vec![step("a", Some("UndoA"), 2)]);
        let first = saga.pending_id();
        saga.timer(2);
        saga.timer(3);
        let failure = Failure { reason: "late no".into(), retryable: false };
        let late = ReplyOutcome { reply_id: "late".into(), in_reply_to: first, result: Err(failure) };
        let events = saga.state.on_reply(&late, secs(3));
        assert_eq!(events.iter().map(kind).collect::<Vec<_>>(), ["ReplyIgnored"]);
        saga.record(events);
        assert_eq!(saga.state.steps[0].attempts, 2, "still waiting for attempt 2");
        saga.ok(json!({}));
        let after = ReplyOutcome { reply_id: "x".into(), in_reply_to: "y".into(), result: Ok(json!({})) };
        let events = saga.state.on_reply(&after, secs(4));
        assert!(matches!(&events[..], [SagaEvent::ReplyIgnored { reason, .. }] if reason == "saga already finished"));
    }

    #[test]
    fn a_late_success_of_an_earlier_attempt_settles_the_step() {
        let mut saga = Saga::start(vec![step("a", Some("UndoA"), 3), step("b", Some("UndoB"), 1)]);
        let first = saga.pending_id();
        assert_eq!(saga.timer(2), ["StepTimedOut", "StepRetryScheduled"]);
        // During the backoff, the reply to attempt 1 arrives: the step took effect.
        let late = ReplyOutcome { reply_id: "r1".into(), in_reply_to: first, result: Ok(json!({"x": 1})) };
        let events = saga.state.on_reply(&late, secs(2));
        assert_eq!(events.iter().map(kind).collect::<Vec<_>>(), ["StepSucceeded", "StepCommandSent"]);
        saga.record(events);
        assert!(saga.state.retry.is_none(), "no retry of a step that succeeded");
        assert_eq!(saga.state.context["x"], 1);
        assert_eq!(saga.state.command_for(saga.log.last().unwrap()).unwrap().step.name, "b");
        // b times out: a's undo is sent; its attempt 1 times out, and attempt 2 is awaited when
        // attempt 1's success arrives: the compensation is done.
        assert_eq!(saga.timer(20), ["StepTimedOut", "CompensationStarted", "CompensationSent"]);
        let undo_b = saga.pending_id();
        assert_eq!(saga.ok(json!({})), ["StepCompensated", "CompensationSent"]);
        assert_ne!(saga.pending_id(), undo_b);
        let undo_a1 = saga.pending_id();
        assert_eq!(saga.timer(40), ["CompensationFailed", "StepRetryScheduled"]);
        assert_eq!(saga.timer(41), ["CompensationSent"]);
        let late_undo = ReplyOutcome { reply_id: "u1".into(), in_reply_to: undo_a1, result: Ok(json!({})) };
        let events = saga.state.on_reply(&late_undo, secs(42));
        assert_eq!(events.iter().map(kind).collect::<Vec<_>>(), ["StepCompensated", "SagaCompensated"]);
    }

    #[test]
    fn folding_the_recorded_stream_rebuilds_the_same_state() {
        let mut saga = Saga::start(three_steps());
        saga.ok(json!({"x": 1}));
        saga.fail("nope", false);
        let mut rebuilt = SagaState::default();
        for event in &saga.log {
            let json = serde_json::to_value(event).unwrap();
            rebuilt.apply(&serde_json::from_value(json).unwrap());
        }
        assert_eq!(rebuilt, saga.state);
    }
}
