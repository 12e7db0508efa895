//! The aggregate seam: state rebuilt by folding events, commands decided against it.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// An event-sourced aggregate.
///
/// Events are serde enums tagged adjacently (`#[serde(tag = "type", content = "data")]`),
/// so the variant name becomes the stored event type and its fields the event data.
pub trait Aggregate: Default + Clone + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The aggregate type; its streams are named `{TYPE}-{id}`.
    const TYPE: &'static str;
    type Event: Serialize + DeserializeOwned + Clone + Send + Sync;
    type Command: Send + Sync;
    /// Why a command was refused.
    type Error: std::fmt::Display;

    /// Folds one event into the state. Must not fail: events are facts.
    fn apply(&mut self, event: &Self::Event);

    /// Decides the events a command produces; an empty list means "nothing to do".
    fn handle(&self, command: &Self::Command) -> Result<Vec<Self::Event>, Self::Error>;
}

/// The stream that holds the aggregate `id` of type `A`.
pub fn stream_id<A: Aggregate>(id: &str) -> String {
    format!("{}-{id}", A::TYPE)
}
