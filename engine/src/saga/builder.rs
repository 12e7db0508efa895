//! The builder every decision is made with: it emits events onto a copy of the state, and
//! knows the moves decisions share (send an attempt through the gate, retry, advance,
//! compensate).

use chrono::{DateTime, Utc};

use super::events::{Phase, SagaEvent};
use super::gating::Gate;
use super::state::{SagaState, StepState};
use crate::definition::OnOpenCircuit;

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
    pub(super) fn retry(&mut self, index: usize, phase: Phase, attempt: u32) -> bool {
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

    pub(super) fn compensation_gave_up(&mut self, index: usize, attempt: u32, reason: &str) {
        if !self.retry(index, Phase::Compensation, attempt) {
            let step = self.name(index);
            self.emit(SagaEvent::SagaFailed {
                reason: format!("compensation of step '{step}' failed after {attempt} attempt(s): {reason}"),
            });
        }
    }
}
