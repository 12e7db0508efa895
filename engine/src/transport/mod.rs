//! The transport seam: publish messages to topics, consume them in consumer groups.

pub mod in_process;
pub mod kafka;

use std::collections::BTreeMap;

use async_trait::async_trait;
use event_store::OutgoingMessage;

use crate::error::Result;

/// A consumed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

impl Delivery {
    /// `topic:partition:offset`, unique per message on a broker.
    pub fn position(&self) -> String {
        format!("{}:{}:{}", self.topic, self.partition, self.offset)
    }
}

/// Moves messages between the coordinator and the participants.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Creates the topics when missing; idempotent.
    async fn ensure_topics(&self, topics: &[String]) -> Result<()>;

    /// Publishes the messages; returns once every one is durably accepted.
    async fn publish(&self, messages: &[OutgoingMessage]) -> Result<()>;

    /// Joins consumer group `group` on `topics`.
    async fn subscribe(&self, group: &str, topics: &[String]) -> Result<Box<dyn Consumer>>;

    /// Checks that the transport is reachable.
    async fn ping(&self) -> Result<()>;

    /// A short name, for logs and health reports.
    fn name(&self) -> &'static str;

    /// How many outbox batches a relay may have in flight on this transport at once.
    fn relay_pipeline(&self) -> usize {
        crate::relay::DEFAULT_PIPELINE
    }
}

/// One member of a consumer group.
#[async_trait]
pub trait Consumer: Send {
    /// The next message. Cancel-safe.
    async fn recv(&mut self) -> Result<Delivery>;

    /// Records that `delivery` (and everything before it on its partition) is processed.
    /// Call only once its effect is durable.
    async fn commit(&mut self, delivery: &Delivery) -> Result<()>;
}
