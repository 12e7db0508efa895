//! Kafka topic names, under a configurable prefix (default `sagaflow`).

/// The topics one Sagaflow deployment uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Default for Topics {
    fn default() -> Self {
        Self::new("sagaflow")
    }
}

impl Topics {
    /// Topics named `<prefix>.commands.<participant>`, `<prefix>.replies`, `<prefix>.dead-letter`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into() }
    }

    /// Where commands for `participant` go.
    pub fn commands(&self, participant: &str) -> String {
        format!("{}.commands.{participant}", self.prefix)
    }

    /// Where every participant sends its replies.
    pub fn replies(&self) -> String {
        format!("{}.replies", self.prefix)
    }

    /// Where messages that cannot be processed go, with the reason.
    pub fn dead_letter(&self) -> String {
        format!("{}.dead-letter", self.prefix)
    }
}
