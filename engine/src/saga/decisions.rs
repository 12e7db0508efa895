//! The pure decisions of a saga: the events that start it, and the events a participant's
//! reply or a due timer leads to. An operator's actions are decided in `operator_actions`,
//! on top of the same builder.

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::builder::Decision;
use super::events::{Phase, SagaEvent};
use super::gating::{Gate, NoGate};
use super::state::SagaState;
use crate::definition::SagaDefinition;

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
    use serde_json::json;

    use super::*;
    use crate::saga::test_support::{kind, secs, step, t0, three_steps, Saga};
    use crate::saga::{SagaStatus, StepStatus};

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
}
