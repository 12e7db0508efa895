//! The events of a saga's own stream: everything that happens to a saga, step by step.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::definition::SagaDefinition;

/// Running a step, or undoing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Forward,
    Compensation,
}

impl Phase {
    pub(super) fn as_str(self) -> &'static str {
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
