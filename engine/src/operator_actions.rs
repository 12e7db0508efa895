//! What an operator may do to a saga by hand: retry the step it failed on, settle a step's
//! outcome, or abort it. Each is a pure decision over the saga's state, recorded as events
//! in the saga's stream with who did it and why.

use chrono::{DateTime, Utc};
use serde_json::Value;

pub use crate::error::ActionRefused;
use crate::saga::{Decision, Gate, NoGate, Phase, Resolution, SagaEvent, SagaState, SagaStatus, StepStatus};

/// An operator's action on one saga.
#[derive(Debug, Clone, PartialEq)]
pub enum OperatorAction {
    /// A new attempt of the step a FAILED saga stopped on (or of its compensation).
    Retry,
    /// Settles the outcome of the step the saga is on; a success's `output` (an object)
    /// joins the context.
    Resolve { step: String, outcome: Resolution, output: Value },
    /// Compensates a RUNNING saga now, as if its current step had failed.
    Abort,
}

/// Who acts, and why; both go into the saga's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub name: String,
    pub reason: String,
}

impl SagaState {
    /// The step the saga is on and in which phase: the one awaited or waiting to retry
    /// while it runs, or the one it failed on.
    pub fn open_step(&self) -> Option<(usize, Phase)> {
        match self.status {
            SagaStatus::Running | SagaStatus::Compensating => self
                .awaiting
                .as_ref()
                .map(|a| (a.step, a.phase))
                .or_else(|| self.retry.as_ref().map(|r| (r.step, r.phase))),
            SagaStatus::Failed => {
                if let Some(i) = self.steps.iter().position(|s| s.status == StepStatus::CompensationFailed) {
                    return Some((i, Phase::Compensation));
                }
                self.steps
                    .iter()
                    .rposition(|s| s.attempts > 0 && matches!(s.status, StepStatus::Failed | StepStatus::TimedOut))
                    .map(|i| (i, Phase::Forward))
            }
            _ => None,
        }
    }

    /// The events an operator's action leads to, or why it is refused.
    pub fn on_operator(
        &self,
        action: &OperatorAction,
        actor: &Actor,
        now: DateTime<Utc>,
    ) -> Result<Vec<SagaEvent>, ActionRefused> {
        self.on_operator_gated(action, actor, now, &NoGate)
    }

    /// [`Self::on_operator`], with the commands it sends through `gate`.
    pub fn on_operator_gated(
        &self,
        action: &OperatorAction,
        actor: &Actor,
        now: DateTime<Utc>,
        gate: &dyn Gate,
    ) -> Result<Vec<SagaEvent>, ActionRefused> {
        if actor.reason.trim().is_empty() {
            return Err(ActionRefused::Invalid("a reason is required".into()));
        }
        let mut d = Decision::gated(self, now, gate);
        match action {
            OperatorAction::Retry => self.retry_by(&mut d, actor)?,
            OperatorAction::Resolve { step, outcome, output } => {
                self.resolve_by(&mut d, actor, step, *outcome, output)?
            }
            OperatorAction::Abort => self.abort_by(&mut d, actor)?,
        }
        Ok(d.events)
    }

    fn status_name(&self) -> String {
        serde_json::to_value(self.status).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
    }

    fn retry_by(&self, d: &mut Decision, actor: &Actor) -> Result<(), ActionRefused> {
        if self.status != SagaStatus::Failed {
            return Err(ActionRefused::NotAllowed(format!(
                "only a FAILED saga can be retried; this one is {}",
                self.status_name()
            )));
        }
        let (index, phase) =
            self.open_step().ok_or_else(|| ActionRefused::NotAllowed("the saga has no step to retry".into()))?;
        let step = &self.steps[index];
        let attempt = match phase {
            Phase::Forward => step.attempts,
            Phase::Compensation => step.compensation_attempts,
        } + 1;
        d.emit(SagaEvent::OperatorRetried {
            step: step.name.clone(),
            phase,
            actor: actor.name.clone(),
            reason: actor.reason.clone(),
        });
        d.send(index, phase, attempt);
        Ok(())
    }

    fn resolve_by(
        &self,
        d: &mut Decision,
        actor: &Actor,
        step: &str,
        outcome: Resolution,
        output: &Value,
    ) -> Result<(), ActionRefused> {
        let Some(named) = self.steps.iter().position(|s| s.name == step) else {
            return Err(ActionRefused::Invalid(format!("the saga has no step named '{step}'")));
        };
        if !matches!(output, Value::Null | Value::Object(_)) {
            return Err(ActionRefused::Invalid("output must be a JSON object".into()));
        }
        let Some((index, phase)) = self.open_step() else {
            return Err(ActionRefused::NotAllowed(format!(
                "a {} saga has no step left to resolve",
                self.status_name()
            )));
        };
        if index != named {
            let on = &self.steps[index].name;
            return Err(ActionRefused::NotAllowed(format!("the saga is on step '{on}', not '{step}'")));
        }
        let after_pivot = self.pivot().is_some_and(|p| index > p);
        match (phase, outcome) {
            (Phase::Compensation, Resolution::Succeeded) => {
                return Err(ActionRefused::Invalid(format!(
                    "step '{step}' is being compensated: it can only be resolved as compensated"
                )))
            }
            (Phase::Forward, Resolution::Compensated) if after_pivot => {
                return Err(ActionRefused::Invalid(format!(
                    "step '{step}' comes after the pivot, which cannot be undone: it can only be resolved as succeeded"
                )))
            }
            (_, Resolution::Compensated) if !output.is_null() => {
                return Err(ActionRefused::Invalid("only a success has an output".into()));
            }
            _ => {}
        }
        d.emit(SagaEvent::OperatorResolved {
            step: step.to_owned(),
            outcome,
            output: output.clone(),
            actor: actor.name.clone(),
            reason: actor.reason.clone(),
        });
        match (phase, outcome) {
            (_, Resolution::Succeeded) => d.advance(index),
            (Phase::Forward, Resolution::Compensated) => {
                let reason = format!("step '{step}' resolved as compensated by {}: {}", actor.name, actor.reason);
                d.emit(SagaEvent::CompensationStarted { failed_step: step.to_owned(), reason });
                d.compensate_below(index);
            }
            (Phase::Compensation, Resolution::Compensated) => d.compensate_below(index),
        }
        Ok(())
    }

    fn abort_by(&self, d: &mut Decision, actor: &Actor) -> Result<(), ActionRefused> {
        if self.status != SagaStatus::Running {
            return Err(ActionRefused::NotAllowed(format!(
                "only a RUNNING saga can be aborted; this one is {}",
                self.status_name()
            )));
        }
        let Some((index, _)) = self.open_step() else {
            return Err(ActionRefused::NotAllowed("the saga is on no step".into()));
        };
        if let Some(pivot) = self.pivot() {
            let pivot_in_flight = index == pivot && (self.awaiting.is_some() || self.steps[index].possibly_applied);
            if index > pivot || pivot_in_flight {
                return Err(ActionRefused::NotAllowed(format!(
                    "the pivot step '{}' has been sent: the saga can no longer be compensated",
                    self.steps[pivot].name
                )));
            }
        }
        let step = self.steps[index].name.clone();
        d.emit(SagaEvent::OperatorAborted {
            step: step.clone(),
            actor: actor.name.clone(),
            reason: actor.reason.clone(),
        });
        d.begin_compensation(index, format!("aborted by {} at step '{step}': {}", actor.name, actor.reason));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::saga::test_support::{secs, step, Saga};

    fn by() -> Actor {
        Actor { name: "ops@example".into(), reason: "fixed the cause".into() }
    }

    impl Saga {
        fn operator(&mut self, action: &OperatorAction) -> Result<Vec<&'static str>, ActionRefused> {
            let events = self.state.on_operator(action, &by(), secs(100))?;
            Ok(self.record(events))
        }
    }

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
        let mut saga = Saga::start(vec![step("a", Some("UndoA"), 1), step("b", Some("UndoB"), 1), step("p", None, 1)]);
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
        let empty = Actor { name: "x".into(), reason: " ".into() };
        assert!(matches!(
            unknown_pivot().state.on_operator(&OperatorAction::Retry, &empty, secs(0)),
            Err(ActionRefused::Invalid(_))
        ));
    }
}
