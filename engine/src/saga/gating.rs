//! Circuit-breaker gating: whether a participant takes commands now. Every decision sends
//! its commands through a [`Gate`]; the coordinator's circuit breakers are one.

use chrono::{DateTime, Utc};
use uuid::Uuid;

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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::definition::OnOpenCircuit;
    use crate::saga::test_support::{definition, secs, step, t0, Saga};
    use crate::saga::{start, ReplyOutcome, SagaState, SagaStatus};

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
}
