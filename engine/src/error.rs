//! The one error type of the engine.

/// Everything the engine can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] event_store::Error),
    /// A domain rule refused a command.
    #[error("{0}")]
    Rejected(String),
    /// Optimistic concurrency kept failing after the bounded number of attempts.
    #[error("stream '{stream}' kept changing under us; gave up after {attempts} attempts")]
    Contention { stream: String, attempts: u32 },
    #[error("cannot decode event {version} of '{stream}': {source}")]
    Decode { stream: String, version: u64, source: serde_json::Error },
    #[error("cannot encode: {0}")]
    Encode(serde_json::Error),
    /// A saga definition failed validation; every reason is listed.
    #[error("invalid saga definition: {}", .0.join("; "))]
    InvalidDefinition(Vec<String>),
    #[error("{what} '{id}' not found")]
    NotFound { what: &'static str, id: String },
    #[error("transport error: {0}")]
    Transport(String),
    /// The transport refuses this message for good (too large, invalid topic, …); sending
    /// it again cannot succeed. `index` is its place in the batch handed to `publish`.
    #[error("message {index} of the batch cannot be published: {reason}")]
    Unpublishable { index: usize, reason: String },
    #[error("invalid input: {0}")]
    Invalid(String),
    /// An operator's action on a saga was refused.
    #[error(transparent)]
    ActionRefused(#[from] ActionRefused),
    /// Input that breaks several rules; every one is listed.
    #[error("invalid {what}: {}", .problems.join("; "))]
    InvalidInput { what: &'static str, problems: Vec<String> },
}

impl Error {
    /// Whether handling the same message again may succeed (store or transport unreachable,
    /// a concurrent writer). A consumer retries only these; anything else goes to the
    /// dead-letter topic, so one bad message cannot stop a partition.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Store(err) => err.is_transient(),
            Self::Contention { .. } | Self::Transport(_) => true,
            Self::Rejected(_)
            | Self::Decode { .. }
            | Self::Encode(_)
            | Self::InvalidDefinition(_)
            | Self::NotFound { .. }
            | Self::Unpublishable { .. }
            | Self::Invalid(_)
            | Self::ActionRefused(_)
            | Self::InvalidInput { .. } => false,
        }
    }
}

/// Why an operator's action on a saga was not taken. It is defined here, under the operator
/// actions that refuse with it, so that [`Error`] needs nothing from them; they re-export it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionRefused {
    /// The saga is not in a state that allows the action.
    #[error("{0}")]
    NotAllowed(String),
    /// The action's input is wrong.
    #[error("{0}")]
    Invalid(String),
}

/// Result alias of the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;
