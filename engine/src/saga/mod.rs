//! The saga state machine: the events of a saga's own stream, the state they fold into,
//! and the pure decisions that turn a reply or a due timer into new events.
//!
//! - `events`: [`SagaEvent`], what happens to a saga, and [`Phase`], [`Resolution`];
//! - `state`: [`SagaState`] and the statuses of the saga and its steps, folded from the
//!   events by [`SagaState::apply`];
//! - `gating`: the [`Gate`] every command goes through (the circuit breakers);
//! - `builder`: the `Decision` every decision is built with;
//! - `decisions`: [`start`], [`SagaState::on_reply`] and [`SagaState::on_timer`].

mod builder;
mod decisions;
mod events;
mod gating;
mod state;
#[cfg(test)]
pub(crate) mod test_support;

pub(crate) use builder::Decision;
pub use decisions::{start, start_gated, Failure, ReplyOutcome};
pub use events::{Phase, Resolution, SagaEvent};
pub use gating::{Gate, NoGate};
pub use state::{Awaiting, SagaState, SagaStatus, ScheduledRetry, StepCommand, StepState, StepStatus};
