//! A saga's state: where the saga and each of its steps stand, and the fold (`apply`) of
//! its stream into that state.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::events::{Phase, Resolution, SagaEvent};
use crate::definition::{SagaDefinition, StepDefinition};

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
    pub(super) fn attempt_of(&self, phase: Phase, message_id: &str) -> Option<u32> {
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
    pub(super) fn may_have_applied(&self) -> bool {
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::saga::test_support::{three_steps, Saga};

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
