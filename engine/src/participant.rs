//! Running a participant: consume its command topic, decide each command's effect, and
//! commit effect, reply and processed-message record in one transaction, so that a
//! command delivered twice is applied once and always answered.

use std::sync::Arc;

use async_trait::async_trait;
use event_store::{Commit, Error as StoreError, EventStore, StreamAppend};
use serde_json::Value;
use tracing::Instrument;

use crate::aggregate_turns::AggregateTurns;
use crate::consumer_loop::MessageHandler;
use crate::dead_letter::send_to_dead_letter;
use crate::envelope::{child_traceparent, Envelope, MessageKind, Outcome, HEADER_TRACEPARENT};
use crate::error::{Error, Result};
use crate::repository::SavedAppend;
use crate::saga::Failure;
use crate::topics::Topics;
use crate::trace_context;
use crate::transport::Delivery;

/// The effect of one command: what to append, and what to answer.
#[derive(Debug, Clone)]
pub struct Effect {
    pub appends: Vec<StreamAppend>,
    pub result: Result<Value, Failure>,
}

impl Effect {
    /// Success with `output`, after appending `appends`.
    pub fn success(appends: Vec<StreamAppend>, output: Value) -> Self {
        Self { appends, result: Ok(output) }
    }

    /// A business refusal: nothing appended, not worth retrying.
    pub fn refused(reason: impl Into<String>) -> Self {
        Self { appends: Vec::new(), result: Err(Failure { reason: reason.into(), retryable: false }) }
    }
}

/// A participant's domain logic. `decide` reads current state and is called again when
/// the appends it returned conflict with a concurrent writer.
#[async_trait]
pub trait CommandHandler: Send + Sync + 'static {
    async fn decide(&self, command: &Envelope) -> Result<Effect>;

    /// The effect's appends were committed: a handler with a write-through cache keeps the
    /// states they left.
    fn committed(&self, _saved: &[SavedAppend]) {}

    /// A commit failed on `stream`'s expected version: what is cached of it is stale.
    fn conflicted(&self, _stream: &str) {}

    /// The aggregates shared between commands (a SKU, an account) that `command` writes:
    /// commands on one of them are decided and committed one after another in this process.
    fn contended(&self, _command: &Envelope) -> Vec<String> {
        Vec::new()
    }
}

/// What became of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandHandled {
    Applied,
    Duplicate,
    DeadLettered(String),
}

/// Hosts one participant.
pub struct ParticipantRuntime {
    name: String,
    store: Arc<dyn EventStore>,
    topics: Topics,
    handler: Arc<dyn CommandHandler>,
    turns: AggregateTurns,
}

impl ParticipantRuntime {
    /// Hosts `handler` as participant `name`.
    pub fn new(
        name: impl Into<String>,
        store: Arc<dyn EventStore>,
        topics: Topics,
        handler: Arc<dyn CommandHandler>,
    ) -> Self {
        Self { name: name.into(), store, topics, handler, turns: AggregateTurns::default() }
    }

    /// The participant's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The consumer name its processed messages are recorded under.
    pub fn consumer_name(&self) -> String {
        format!("participant:{}", self.name)
    }

    /// Handles one delivered command.
    pub async fn handle_command(&self, delivery: &Delivery) -> Result<CommandHandled> {
        let command = match Envelope::parse(&delivery.payload) {
            Ok(e) if e.kind == MessageKind::Command => e,
            Ok(_) => return self.dead_letter(delivery, "expected a command, got a reply").await,
            Err(reason) => return self.dead_letter(delivery, &reason).await,
        };
        let span = tracing::info_span!("command", otel.name = %format!("{} {}", self.name, command.message_type),
            otel.kind = "consumer", saga_id = %command.saga_id, participant = %self.name, step = %command.step);
        trace_context::set_parent(&span, delivery.headers.get(HEADER_TRACEPARENT).map(String::as_str));
        self.apply(delivery, &command).instrument(span).await
    }

    async fn apply(&self, delivery: &Delivery, command: &Envelope) -> Result<CommandHandled> {
        let _turn = self.turns.take(self.handler.contended(command)).await;
        for _ in 0..10 {
            let effect = match self.handler.decide(command).await {
                Ok(effect) => effect,
                Err(Error::Rejected(reason) | Error::Invalid(reason)) => Effect::refused(reason),
                Err(invalid @ Error::InvalidInput { .. }) => Effect::refused(invalid.to_string()),
                Err(Error::Decode { stream, source, .. }) => Effect::refused(format!("cannot read {stream}: {source}")),
                Err(other) => return Err(other),
            };
            let (outcome, output) = match effect.result {
                Ok(output) => (Outcome::Success, output),
                Err(Failure { reason, retryable }) => (Outcome::Failure { reason, retryable }, Value::Null),
            };
            let reply = command.reply(outcome, output);
            let topic = command.reply_to.clone().unwrap_or_else(|| self.topics.replies());
            let trace = trace_context::current().unwrap_or_else(|| {
                child_traceparent(delivery.headers.get(HEADER_TRACEPARENT).map(String::as_str), command.saga_id)
            });
            let saved: Vec<SavedAppend> = effect.appends.iter().map(SavedAppend::from).collect();
            let commit = Commit { appends: effect.appends, ..Commit::default() }
                .with_message(reply.to_message(&topic, Some(&trace)))
                .processing(self.consumer_name(), command.message_id.clone());
            match self.store.commit(commit).await {
                Ok(_) => {
                    self.handler.committed(&saved);
                    return Ok(CommandHandled::Applied);
                }
                Err(StoreError::AlreadyProcessed { .. }) => return Ok(CommandHandled::Duplicate),
                Err(StoreError::WrongExpectedVersion { stream, .. }) => {
                    self.handler.conflicted(&stream);
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Contention { stream: format!("participant {}", self.name), attempts: 10 })
    }

    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<CommandHandled> {
        send_to_dead_letter(self.store.as_ref(), &self.topics, &self.consumer_name(), delivery, reason).await?;
        Ok(CommandHandled::DeadLettered(reason.to_owned()))
    }
}

#[async_trait]
impl MessageHandler for ParticipantRuntime {
    async fn handle(&self, delivery: &Delivery) -> Result<()> {
        self.handle_command(delivery).await.map(|_| ())
    }

    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<()> {
        ParticipantRuntime::dead_letter(self, delivery, reason).await.map(|_| ())
    }
}
