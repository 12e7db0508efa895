//! The transport seam: publish messages to topics, consume them in consumer groups.

pub mod in_process;
pub mod kafka;

use std::collections::BTreeMap;

use async_trait::async_trait;
use event_store::OutgoingMessage;

use crate::error::Result;

/// Batches a relay has in flight at once, by default: what [`Transport::relay_pipeline`]
/// answers unless a transport says otherwise.
pub const DEFAULT_PIPELINE: usize = 4;

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

    /// This transport when it is the in-process one, whose consumers can take messages
    /// straight from the commit ([`crate::commit_delivery`]).
    fn in_process(&self) -> Option<in_process::InProcessTransport> {
        None
    }

    /// How many outbox batches a relay may have in flight on this transport at once.
    fn relay_pipeline(&self) -> usize {
        DEFAULT_PIPELINE
    }
}

/// Where one consumer stands in its group, for readiness checks: shared between the consumer
/// and whoever reports on it.
#[derive(Debug)]
pub struct ConsumerStatus {
    /// The consumer group.
    pub group: String,
    joined: std::sync::atomic::AtomicBool,
    partitions: std::sync::atomic::AtomicUsize,
}

impl ConsumerStatus {
    /// A consumer of `group` that has not been given its partitions yet.
    pub fn waiting(group: &str) -> Self {
        Self { group: group.to_owned(), joined: Default::default(), partitions: Default::default() }
    }

    /// Records the partitions the group gave this member (none is an answer too: the group
    /// has more members than partitions).
    pub fn assigned(&self, partitions: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        self.partitions.store(partitions, Relaxed);
        self.joined.store(true, Relaxed);
    }

    /// Whether the group has answered this member with an assignment yet.
    pub fn joined(&self) -> bool {
        self.joined.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The partitions of the last assignment.
    pub fn partitions(&self) -> usize {
        self.partitions.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// One member of a consumer group.
#[async_trait]
pub trait Consumer: Send {
    /// Where this consumer stands in its group.
    fn status(&self) -> std::sync::Arc<ConsumerStatus>;

    /// The next message. Cancel-safe.
    async fn recv(&mut self) -> Result<Delivery>;

    /// Records that `delivery` (and everything before it on its partition) is processed.
    /// Call only once its effect is durable.
    async fn commit(&mut self, delivery: &Delivery) -> Result<()>;
}
