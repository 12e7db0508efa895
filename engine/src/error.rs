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
    #[error("invalid input: {0}")]
    Invalid(String),
    /// Input that breaks several rules; every one is listed.
    #[error("invalid {what}: {}", .problems.join("; "))]
    InvalidInput { what: &'static str, problems: Vec<String> },
}

/// Result alias of the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;
