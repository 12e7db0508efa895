//! A transport inside one process, for unit tests and the embedded mode.
//!
//! Every consumer group has its own queue per topic; members of a group compete for its
//! messages. `publish` returns only once every subscribed group has committed the message,
//! so the outbox relay marks a message published only after its effect is durable: after a
//! crash or restart, whatever was in flight is still in the outbox and is published again
//! (and deduplicated by its consumers). Messages for a topic no group subscribes to (say,
//! the dead-letter topic) are kept in memory for the first group that does, the newest
//! [`MAX_UNCLAIMED`] per topic (their rows stay in the outbox table until retention).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use event_store::OutgoingMessage;
use tokio::sync::{oneshot, watch};

use super::{Consumer, ConsumerStatus, Delivery, Transport};
use crate::error::{Error, Result};

/// Messages kept per topic that no group subscribes to; older ones are dropped.
pub const MAX_UNCLAIMED: usize = 1_000;

struct Queued {
    delivery: Delivery,
    ack: Option<oneshot::Sender<()>>,
}

#[derive(Default)]
struct Inner {
    /// (group, topic) → queue.
    queues: HashMap<(String, String), VecDeque<Queued>>,
    /// topic → groups subscribed.
    groups: HashMap<String, BTreeSet<String>>,
    /// group → consumers alive.
    live: HashMap<String, usize>,
    /// topic → messages no group has seen yet.
    unclaimed: HashMap<String, VecDeque<Delivery>>,
    offsets: HashMap<String, i64>,
}

/// In-process transport.
#[derive(Clone)]
pub struct InProcessTransport {
    inner: Arc<Mutex<Inner>>,
    published: Arc<watch::Sender<u64>>,
}

impl Default for InProcessTransport {
    fn default() -> Self {
        Self::new()
    }
}

impl InProcessTransport {
    /// An empty transport.
    pub fn new() -> Self {
        Self { inner: Arc::default(), published: Arc::new(watch::channel(0).0) }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `messages` for every group subscribed to their topics, at once, and returns what
    /// resolves when each group has committed them: a caller may hand over more batches before
    /// the first is handled (delivery straight from the commit does).
    pub fn deliver(&self, messages: &[OutgoingMessage]) -> Result<Handled> {
        let mut acks = Vec::new();
        {
            let mut inner = self.lock();
            // Refuse the whole batch while a subscribed group has no live member: nobody
            // would commit it, and it must stay in the outbox until somebody can.
            for message in messages {
                for group in inner.groups.get(&message.topic).into_iter().flatten() {
                    if inner.live.get(group).copied().unwrap_or(0) == 0 {
                        return Err(Error::Transport(format!("consumer group '{group}' has no live member")));
                    }
                }
            }
            for message in messages {
                let offset = inner.offsets.entry(message.topic.clone()).or_insert(0);
                let delivery = Delivery {
                    topic: message.topic.clone(),
                    partition: 0,
                    offset: *offset,
                    key: Some(message.key.clone()),
                    payload: message.payload.clone(),
                    headers: message.headers.clone(),
                };
                *offset += 1;
                let groups: Vec<String> =
                    inner.groups.get(&message.topic).map(|g| g.iter().cloned().collect()).unwrap_or_default();
                if groups.is_empty() {
                    let kept = inner.unclaimed.entry(message.topic.clone()).or_default();
                    if kept.len() >= MAX_UNCLAIMED {
                        kept.pop_front();
                        tracing::debug!(topic = %message.topic, "no group reads this topic; dropped its oldest message");
                    }
                    kept.push_back(delivery);
                    continue;
                }
                for group in groups {
                    let (tx, rx) = oneshot::channel();
                    acks.push(rx);
                    let queued = Queued { delivery: delivery.clone(), ack: Some(tx) };
                    inner.queues.entry((group, message.topic.clone())).or_default().push_back(queued);
                }
            }
        }
        self.published.send_modify(|n| *n = n.wrapping_add(1));
        Ok(Handled(acks))
    }
}

/// Messages handed over by [`InProcessTransport::deliver`], until every group has committed them.
#[must_use = "the messages are handled once this resolves"]
pub struct Handled(Vec<oneshot::Receiver<()>>);

impl Handled {
    /// Resolves once every subscribed group has committed the messages; fails when a consumer
    /// stopped first (the messages are then delivered again from the outbox).
    pub async fn wait(self) -> Result<()> {
        for ack in self.0 {
            ack.await.map_err(|_| Error::Transport("a consumer stopped before committing a message".into()))?;
        }
        Ok(())
    }
}

#[async_trait]
impl Transport for InProcessTransport {
    async fn ensure_topics(&self, _topics: &[String]) -> Result<()> {
        Ok(())
    }

    async fn publish(&self, messages: &[OutgoingMessage]) -> Result<()> {
        self.deliver(messages)?.wait().await
    }

    async fn subscribe(&self, group: &str, topics: &[String]) -> Result<Box<dyn Consumer>> {
        let mut inner = self.lock();
        for topic in topics {
            let added = inner.groups.entry(topic.clone()).or_default().insert(group.to_owned());
            let backlog = if added { inner.unclaimed.remove(topic).unwrap_or_default() } else { VecDeque::new() };
            inner
                .queues
                .entry((group.to_owned(), topic.clone()))
                .or_default()
                .extend(backlog.into_iter().map(|delivery| Queued { delivery, ack: None }));
        }
        *inner.live.entry(group.to_owned()).or_insert(0) += 1;
        // One process, one member: the group's whole topic is this consumer's at once.
        let status = Arc::new(ConsumerStatus::waiting(group));
        status.assigned(topics.len());
        Ok(Box::new(InProcessConsumer {
            transport: self.clone(),
            status,
            group: group.to_owned(),
            topics: topics.to_vec(),
            published: self.published.subscribe(),
            pending: HashMap::new(),
        }))
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }

    fn name(&self) -> &'static str {
        "in-process"
    }

    fn in_process(&self) -> Option<InProcessTransport> {
        Some(self.clone())
    }

    /// Publish returns only once the consumers have committed: one batch at a time. (Deeper
    /// pipelines stalled the embedded engine under heavy contention on one aggregate; not
    /// understood yet, so not used here.)
    fn relay_pipeline(&self) -> usize {
        1
    }
}

struct InProcessConsumer {
    transport: InProcessTransport,
    status: Arc<ConsumerStatus>,
    group: String,
    topics: Vec<String>,
    published: watch::Receiver<u64>,
    /// Acknowledgements owed for received, not yet committed messages.
    pending: HashMap<String, BTreeMap<i64, oneshot::Sender<()>>>,
}

#[async_trait]
impl Consumer for InProcessConsumer {
    fn status(&self) -> Arc<ConsumerStatus> {
        Arc::clone(&self.status)
    }

    async fn recv(&mut self) -> Result<Delivery> {
        loop {
            self.published.borrow_and_update();
            {
                let mut inner = self.transport.lock();
                for topic in &self.topics {
                    let key = (self.group.clone(), topic.clone());
                    if let Some(queued) = inner.queues.get_mut(&key).and_then(VecDeque::pop_front) {
                        if let Some(ack) = queued.ack {
                            let topic = self.pending.entry(queued.delivery.topic.clone()).or_default();
                            topic.insert(queued.delivery.offset, ack);
                        }
                        return Ok(queued.delivery);
                    }
                }
            }
            if self.published.changed().await.is_err() {
                return Err(Error::Transport("in-process transport closed".into()));
            }
        }
    }

    async fn commit(&mut self, delivery: &Delivery) -> Result<()> {
        // Everything up to this offset of the topic (one partition here) is processed.
        let Some(pending) = self.pending.get_mut(&delivery.topic) else { return Ok(()) };
        let later = pending.split_off(&(delivery.offset + 1));
        for ack in std::mem::replace(pending, later).into_values() {
            // The publisher may have given up waiting; that is fine.
            let _ = ack.send(());
        }
        Ok(())
    }
}

impl Drop for InProcessConsumer {
    fn drop(&mut self) {
        let mut inner = self.transport.lock();
        if let Some(n) = inner.live.get_mut(&self.group) {
            *n = n.saturating_sub(1);
        }
        // Pending acknowledgements are dropped: their publishers see the message unprocessed.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn message(topic: &str, n: u8) -> OutgoingMessage {
        OutgoingMessage { topic: topic.into(), key: "k".into(), payload: vec![n], headers: BTreeMap::new() }
    }

    #[tokio::test]
    async fn publish_returns_once_the_consumer_commits() {
        let transport = InProcessTransport::new();
        let mut consumer = transport.subscribe("g", &["t".into()]).await.unwrap();
        let publisher = tokio::spawn({
            let transport = transport.clone();
            async move { transport.publish(&[message("t", 1)]).await }
        });
        let delivery = consumer.recv().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!publisher.is_finished(), "not acknowledged before the commit");
        consumer.commit(&delivery).await.unwrap();
        publisher.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_consumer_that_stops_before_committing_fails_the_publish() {
        let transport = InProcessTransport::new();
        let mut consumer = transport.subscribe("g", &["t".into()]).await.unwrap();
        let publisher = tokio::spawn({
            let transport = transport.clone();
            async move { transport.publish(&[message("t", 1)]).await }
        });
        consumer.recv().await.unwrap();
        drop(consumer);
        assert!(publisher.await.unwrap().is_err(), "the relay keeps the message in the outbox");
        assert!(transport.publish(&[message("t", 2)]).await.is_err(), "no live member: refused");
    }

    #[tokio::test]
    async fn messages_nobody_reads_are_bounded_to_the_newest() {
        let transport = InProcessTransport::new();
        for n in 0..(MAX_UNCLAIMED + 5) {
            transport.publish(&[message("dead-letter", (n % 256) as u8)]).await.unwrap();
        }
        assert_eq!(transport.lock().unclaimed["dead-letter"].len(), MAX_UNCLAIMED);
        let mut late = transport.subscribe("ops", &["dead-letter".into()]).await.unwrap();
        assert_eq!(late.recv().await.unwrap().offset, 5, "the oldest were dropped");
    }

    #[tokio::test]
    async fn groups_each_get_every_message_and_members_share_them() {
        let transport = InProcessTransport::new();
        let mut a1 = transport.subscribe("a", &["t".into()]).await.unwrap();
        let mut a2 = transport.subscribe("a", &["t".into()]).await.unwrap();
        let mut b = transport.subscribe("b", &["t".into()]).await.unwrap();
        let publisher = tokio::spawn({
            let transport = transport.clone();
            async move { transport.publish(&[message("t", 1), message("t", 2)]).await }
        });
        let (x, y) = (a1.recv().await.unwrap(), a2.recv().await.unwrap());
        assert_ne!(x.payload, y.payload, "members of a group compete");
        a1.commit(&x).await.unwrap();
        a2.commit(&y).await.unwrap();
        for _ in 0..2 {
            let d = b.recv().await.unwrap();
            b.commit(&d).await.unwrap();
        }
        publisher.await.unwrap().unwrap();
    }
}
