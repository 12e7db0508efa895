//! What the saga's unit tests share: step and definition builders, a clock, and [`Saga`],
//! which records the events of each decision and folds them.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

use super::{start, Failure, ReplyOutcome, SagaEvent, SagaState};
use crate::definition::{RetryPolicy, SagaDefinition, StepDefinition};

pub(crate) fn step(name: &str, compensation: Option<&str>, max_attempts: u32) -> StepDefinition {
    StepDefinition {
        name: name.into(),
        participant: format!("{name}-svc"),
        command: format!("Do{name}"),
        compensation: compensation.map(Into::into),
        timeout_ms: 1_000,
        retry: RetryPolicy { max_attempts, initial_backoff_ms: 10, max_backoff_ms: 100, multiplier: 2 },
    }
}

pub(crate) fn definition(steps: Vec<StepDefinition>) -> SagaDefinition {
    SagaDefinition { stuck_after_ms: None, on_open_circuit: Default::default(), name: "test".into(), version: 1, steps }
}

pub(crate) fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().with_timezone(&Utc)
}

pub(crate) fn secs(s: i64) -> DateTime<Utc> {
    t0() + chrono::Duration::seconds(s)
}

pub(crate) struct Saga {
    pub(crate) state: SagaState,
    pub(crate) log: Vec<SagaEvent>,
}

impl Saga {
    pub(crate) fn start(steps: Vec<StepDefinition>) -> Self {
        let mut saga = Self { state: SagaState::default(), log: vec![] };
        let events = start(Uuid::nil(), definition(steps), json!({"order": 7}), t0());
        saga.record(events);
        saga
    }

    pub(crate) fn record(&mut self, events: Vec<SagaEvent>) -> Vec<&'static str> {
        let names = events.iter().map(kind).collect();
        for e in &events {
            self.state.apply(e);
        }
        self.log.extend(events);
        names
    }

    pub(crate) fn pending_id(&self) -> String {
        self.state.awaiting.as_ref().expect("awaiting a reply").message_id.clone()
    }

    fn reply(&mut self, result: Result<Value, Failure>, at: i64) -> Vec<&'static str> {
        let in_reply_to = self.pending_id();
        let reply = ReplyOutcome { reply_id: format!("{in_reply_to}/reply"), in_reply_to, result };
        let events = self.state.on_reply(&reply, secs(at));
        self.record(events)
    }

    pub(crate) fn ok(&mut self, output: Value) -> Vec<&'static str> {
        self.reply(Ok(output), 0)
    }

    pub(crate) fn fail(&mut self, reason: &str, retryable: bool) -> Vec<&'static str> {
        self.reply(Err(Failure { reason: reason.into(), retryable }), 0)
    }

    pub(crate) fn timer(&mut self, at: i64) -> Vec<&'static str> {
        let events = self.state.on_timer(secs(at));
        self.record(events)
    }
}

pub(crate) fn kind(e: &SagaEvent) -> &'static str {
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

pub(crate) fn three_steps() -> Vec<StepDefinition> {
    vec![step("a", Some("UndoA"), 1), step("b", Some("UndoB"), 1), step("c", None, 1)]
}
