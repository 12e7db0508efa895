//! A transport inside one process, for unit tests and the embedded mode.
//!
//! Every consumer group has its own queue per topic; members of a group compete for its
//! messages. Messages published before any group subscribed to a topic wait for the first.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use event_store::OutgoingMessage;
use tokio::sync::watch;

use super::{Consumer, Delivery, Transport};
use crate::error::Result;

#[derive(Default)]
struct Inner {
    /// (group, topic) → queue.
    queues: HashMap<(String, String), VecDeque<Delivery>>,
    /// topic → groups subscribed.
    groups: HashMap<String, BTreeSet<String>>,
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
}

#[async_trait]
impl Transport for InProcessTransport {
    async fn ensure_topics(&self, _topics: &[String]) -> Result<()> {
        Ok(())
    }

    async fn publish(&self, messages: &[OutgoingMessage]) -> Result<()> {
        let mut inner = self.lock();
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
                inner.unclaimed.entry(message.topic.clone()).or_default().push_back(delivery);
                continue;
            }
            for group in groups {
                inner.queues.entry((group, message.topic.clone())).or_default().push_back(delivery.clone());
            }
        }
        drop(inner);
        self.published.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }

    async fn subscribe(&self, group: &str, topics: &[String]) -> Result<Box<dyn Consumer>> {
        let mut inner = self.lock();
        for topic in topics {
            let added = inner.groups.entry(topic.clone()).or_default().insert(group.to_owned());
            let backlog = if added { inner.unclaimed.remove(topic).unwrap_or_default() } else { VecDeque::new() };
            inner.queues.entry((group.to_owned(), topic.clone())).or_default().extend(backlog);
        }
        Ok(Box::new(InProcessConsumer {
            transport: self.clone(),
            group: group.to_owned(),
            topics: topics.to_vec(),
            published: self.published.subscribe(),
        }))
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }

    fn name(&self) -> &'static str {
        "in-process"
    }
}

struct InProcessConsumer {
    transport: InProcessTransport,
    group: String,
    topics: Vec<String>,
    published: watch::Receiver<u64>,
}

#[async_trait]
impl Consumer for InProcessConsumer {
    async fn recv(&mut self) -> Result<Delivery> {
        loop {
            self.published.borrow_and_update();
            {
                let mut inner = self.transport.lock();
                for topic in &self.topics {
                    if let Some(d) =
                        inner.queues.get_mut(&(self.group.clone(), topic.clone())).and_then(VecDeque::pop_front)
                    {
                        return Ok(d);
                    }
                }
            }
            if self.published.changed().await.is_err() {
                return Err(crate::Error::Transport("in-process transport closed".into()));
            }
        }
    }

    async fn commit(&mut self, _delivery: &Delivery) -> Result<()> {
        Ok(())
    }
}
