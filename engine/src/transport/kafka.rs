//! Kafka transport (rdkafka): an idempotent producer (acks=all) and consumer groups whose
//! offsets are stored only when the consumer says a message's effect is durable, and
//! committed with the others stored by then, once a second (and when partitions are revoked
//! or the consumer closes): one commit request per interval, not one per message.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use event_store::OutgoingMessage;
use futures::future::join_all;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer as _, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};

use super::{Consumer, ConsumerStatus, Delivery, Transport};
use crate::envelope::valid_topic;
use crate::error::{Error, Result};

/// How to reach and use the Kafka cluster.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    pub bootstrap_servers: String,
    /// Partitions of the topics Sagaflow creates.
    pub partitions: i32,
    pub replication_factor: i32,
    /// Consumer group session timeout; short values detect dead members quickly.
    pub session_timeout_ms: u32,
    /// How long a consumer may sit without partitions before it is reported as stuck.
    pub assignment_warning_after: Duration,
    /// The longest a fetch waits at the broker for new messages (`fetch.wait.max.ms`). A
    /// broker that answers a fetch only when this passes (not when a message arrives, as
    /// the development broker does) adds about half of it to every hop.
    pub fetch_wait_max_ms: u32,
}

impl KafkaConfig {
    /// Defaults for `bootstrap_servers`: 6 partitions, replication 1, 10 s sessions, 100 ms
    /// fetch waits.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            partitions: 6,
            replication_factor: 1,
            session_timeout_ms: 10_000,
            assignment_warning_after: Duration::from_secs(20),
            fetch_wait_max_ms: 100,
        }
    }
}

/// Whether the broker (or the client) refuses this one message for good, for what the
/// message itself is: resending it cannot succeed. Leader elections, `NOT_ENOUGH_REPLICAS`,
/// timeouts and unreachable brokers are temporary; so are authorization and policy refusals
/// (an operator fixes an ACL, and the message must still go out) and a batch that is too
/// large (the next try batches differently). None of those is listed.
fn refuses_for_good(err: &KafkaError) -> bool {
    let KafkaError::MessageProduction(code) = err else { return false };
    matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::InvalidTopic
            | RDKafkaErrorCode::UnsupportedForMessageFormat
            | RDKafkaErrorCode::BadMessage
            | RDKafkaErrorCode::InvalidArgument
    )
}

/// How often a consumer commits the offsets stored since its last commit. A crash loses at most
/// this much of committed offsets: those messages come again and are dropped as duplicates.
const OFFSET_COMMIT_INTERVAL_MS: &str = "1000";

/// How long a consumer whose topics vanished may sit without partitions before it
/// subscribes again.
const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(15);

fn kafka_err(context: &str, err: &KafkaError) -> Error {
    Error::Transport(format!("{context}: {err}"))
}

/// Kafka transport.
pub struct KafkaTransport {
    config: KafkaConfig,
    producer: RwLock<FutureProducer>,
    admin: AdminClient<DefaultClientContext>,
    known_topics: Mutex<HashSet<String>>,
}

impl KafkaTransport {
    /// Creates the producer and admin client (connections are made lazily).
    pub fn new(config: KafkaConfig) -> Result<Self> {
        let producer = Self::create_producer(&config)?;
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &config.bootstrap_servers)
            .create()
            .map_err(|e| kafka_err("creating admin client", &e))?;
        Ok(Self { config, producer: RwLock::new(producer), admin, known_topics: Mutex::default() })
    }

    fn create_producer(config: &KafkaConfig) -> Result<FutureProducer> {
        ClientConfig::new()
            .set("bootstrap.servers", &config.bootstrap_servers)
            .set("enable.idempotence", "true")
            // A message that fails for good fails the ones behind it too (a fatal error)
            // instead of leaving a gap: the relay keeps several batches in flight and
            // relies on that to keep the order within a partition.
            .set("enable.gapless.guarantee", "true")
            .set("acks", "all")
            .set("linger.ms", "2")
            // A message not delivered in 10 s fails back to the relay, which keeps it in the
            // outbox and tries again (with a fresh producer, see `replace_if_stuck`).
            .set("message.timeout.ms", "10000")
            .create()
            .map_err(|e| kafka_err("creating producer", &e))
    }

    fn producer(&self) -> FutureProducer {
        self.producer.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Replaces the producer when it cannot recover by itself: it failed for good (fatal),
    /// or a message timed out (an idempotent producer whose state the broker forgot, say a
    /// broker restarted empty, retries `UNKNOWN_PRODUCER_ID` until then). A fresh producer
    /// gets a new producer id; what the old one had not delivered is still in the outbox and
    /// is published again (consumers drop duplicates).
    fn replace_if_stuck(&self, used: FutureProducer, timed_out: bool) {
        let fatal = used.client().fatal_error();
        if fatal.is_none() && !timed_out {
            return;
        }
        let old = {
            let mut current = self.producer.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            if !std::ptr::eq(current.client().native_ptr(), used.client().native_ptr()) {
                return; // another publish replaced it already
            }
            match Self::create_producer(&self.config) {
                Ok(fresh) => std::mem::replace(&mut *current, fresh),
                Err(err) => {
                    tracing::error!(error = %err, "cannot replace the Kafka producer");
                    return;
                }
            }
        };
        tracing::warn!(fatal = ?fatal, timed_out, "the Kafka producer could not deliver; replaced it");
        // Dropping a producer purges and flushes for up to 500 ms: not on an async thread.
        tokio::task::spawn_blocking(move || drop((old, used)));
    }

    fn unknown_topics(&self, messages: &[OutgoingMessage]) -> Vec<String> {
        let known = self.known_topics.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut missing: Vec<String> =
            messages.iter().map(|m| m.topic.clone()).filter(|t| !known.contains(t)).collect();
        missing.sort();
        missing.dedup();
        missing
    }
}

#[async_trait]
impl Transport for KafkaTransport {
    async fn ensure_topics(&self, topics: &[String]) -> Result<()> {
        if topics.is_empty() {
            return Ok(());
        }
        let new_topics: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|t| NewTopic::new(t, self.config.partitions, TopicReplication::Fixed(self.config.replication_factor)))
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Timeout::After(Duration::from_secs(15))));
        let results =
            self.admin.create_topics(&new_topics, &options).await.map_err(|e| kafka_err("creating topics", &e))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => return Err(Error::Transport(format!("creating topic {topic}: {code}"))),
            }
        }
        self.known_topics.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend(topics.iter().cloned());
        Ok(())
    }

    async fn publish(&self, messages: &[OutgoingMessage]) -> Result<()> {
        if let Some(index) = messages.iter().position(|m| !valid_topic(&m.topic)) {
            let reason = format!("'{}' is not a valid topic name", messages[index].topic);
            return Err(Error::Unpublishable { index, reason });
        }
        // The broker may not create topics on demand: make sure they exist first.
        let missing = self.unknown_topics(messages);
        self.ensure_topics(&missing).await?;
        let producer = self.producer();
        let sends = messages.iter().map(|m| {
            let mut headers = OwnedHeaders::new_with_capacity(m.headers.len());
            for (key, value) in &m.headers {
                headers = headers.insert(Header { key, value: Some(value.as_bytes()) });
            }
            let record = FutureRecord::to(&m.topic).key(&m.key).payload(&m.payload).headers(headers);
            producer.send(record, Timeout::After(Duration::from_secs(10)))
        });
        let mut transient = None;
        let mut timed_out = false;
        for (index, result) in join_all(sends).await.into_iter().enumerate() {
            if let Err((err, _)) = result {
                if refuses_for_good(&err) {
                    return Err(Error::Unpublishable { index, reason: err.to_string() });
                }
                timed_out |= matches!(err, KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut));
                transient.get_or_insert_with(|| kafka_err("publishing", &err));
            }
        }
        if transient.is_some() {
            // A broker that lost its topics (restarted empty) answers "unknown topic": check
            // them again before the next try, creating what is missing.
            self.known_topics.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
            self.replace_if_stuck(producer, timed_out);
        }
        transient.map_or(Ok(()), Err)
    }

    async fn subscribe(&self, group: &str, topics: &[String]) -> Result<Box<dyn Consumer>> {
        self.ensure_topics(topics).await?;
        let status = Arc::new(ConsumerStatus::waiting(group));
        let consumer: StreamConsumer<GroupLog> = ClientConfig::new()
            .set("bootstrap.servers", &self.config.bootstrap_servers)
            .set("group.id", group)
            // librdkafka commits what was stored, on an interval and at a revoke or a close;
            // it stores nothing by itself (see `commit`).
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.commit.interval.ms", OFFSET_COMMIT_INTERVAL_MS)
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", self.config.fetch_wait_max_ms.to_string())
            // Notice a topic that was created again (a broker restarted empty) within seconds.
            .set("topic.metadata.refresh.interval.ms", "5000")
            .set("session.timeout.ms", self.config.session_timeout_ms.to_string())
            .set("heartbeat.interval.ms", (self.config.session_timeout_ms / 4).max(500).to_string())
            .create_with_context(GroupLog { status: Arc::clone(&status) })
            .map_err(|e| kafka_err("creating consumer", &e))?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&names).map_err(|e| kafka_err("subscribing", &e))?;
        tracing::info!(%group, ?topics, "kafka consumer subscribed");
        Ok(Box::new(KafkaConsumer {
            status,
            consumer: Some(consumer),
            group: group.to_owned(),
            topics: topics.to_vec(),
            since: Instant::now(),
            warn_after: self.config.assignment_warning_after,
            warned: false,
            topic_vanished: None,
        }))
    }

    async fn ping(&self) -> Result<()> {
        let producer = self.producer();
        tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, Duration::from_secs(3)).map(|_| ()))
            .await
            .map_err(|e| Error::Transport(format!("metadata task: {e}")))?
            .map_err(|e| kafka_err("fetching metadata", &e))
    }

    fn name(&self) -> &'static str {
        "kafka"
    }
}

/// Logs every partition assignment and revocation of a consumer, so that an operator sees
/// when a group rebalances and how long partitions were without an owner.
struct GroupLog {
    status: Arc<ConsumerStatus>,
}

impl ClientContext for GroupLog {}

impl ConsumerContext for GroupLog {
    fn post_rebalance(&self, _base: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                self.status.assigned(list.count());
                tracing::info!(group = %self.status.group, partitions = list.count(), "partitions assigned")
            }
            Rebalance::Revoke(list) => {
                tracing::info!(group = %self.status.group, partitions = list.count(), "partitions revoked")
            }
            Rebalance::Error(err) => tracing::warn!(group = %self.status.group, error = %err, "rebalance failed"),
        }
    }
}

struct KafkaConsumer {
    status: Arc<ConsumerStatus>,
    /// Always there until the consumer is dropped (see its `Drop`).
    consumer: Option<StreamConsumer<GroupLog>>,
    group: String,
    topics: Vec<String>,
    since: Instant,
    warn_after: Duration,
    warned: bool,
    /// When the broker said a subscribed topic or partition does not exist (a broker that
    /// restarted empty): if the consumer then sits without partitions, it subscribes anew.
    topic_vanished: Option<Instant>,
}

impl Drop for KafkaConsumer {
    /// An rdkafka consumer's destructor leaves the group and waits for the broker (100 ms on
    /// an idle loopback broker, far longer on a busy or stalled one): it runs on a blocking
    /// thread, so that a crashed or stopped consumer task never stalls the async threads.
    fn drop(&mut self) {
        let Some(consumer) = self.consumer.take() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || drop(consumer))),
            Err(_) => drop(consumer),
        }
    }
}

impl KafkaConsumer {
    fn consumer(&self) -> Result<&StreamConsumer<GroupLog>> {
        self.consumer.as_ref().ok_or_else(|| Error::Transport("the consumer is closed".into()))
    }

    /// A member that never gets partitions would sit silently forever (a known broker-side
    /// rebalance hang): say so loudly instead.
    fn check_assignment(&mut self) {
        let Some(consumer) = self.consumer.as_ref() else { return };
        let assigned = consumer.assignment().map(|a| a.count()).unwrap_or(0);
        if assigned > 0 {
            self.topic_vanished = None;
        } else if self.topic_vanished.is_some_and(|at| at.elapsed() >= RESUBSCRIBE_AFTER) {
            // Its topics were gone and have been created again, but the group did not
            // notice (seen on a broker restarted empty): join it again.
            self.topic_vanished = None;
            let names: Vec<&str> = self.topics.iter().map(String::as_str).collect();
            consumer.unsubscribe();
            match consumer.subscribe(&names) {
                Ok(()) => {
                    tracing::warn!(group = %self.group, "no partitions since the topics vanished; subscribed again")
                }
                Err(err) => tracing::error!(group = %self.group, error = %err, "cannot subscribe again"),
            }
        }
        if self.warned || self.since.elapsed() < self.warn_after {
            return;
        }
        if assigned == 0 {
            tracing::error!(
                group = %self.group,
                waited_s = self.since.elapsed().as_secs(),
                "consumer has no partitions assigned yet; the group's rebalance is slow or stuck (another member holding every partition, or a dead member not yet expired)"
            );
        }
        self.warned = true;
    }
}

#[async_trait]
impl Consumer for KafkaConsumer {
    fn status(&self) -> Arc<ConsumerStatus> {
        Arc::clone(&self.status)
    }

    async fn recv(&mut self) -> Result<Delivery> {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), self.consumer()?.recv()).await {
                Err(_) => self.check_assignment(),
                Ok(Err(err)) => {
                    let vanished = matches!(
                        err,
                        KafkaError::MessageConsumption(
                            RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownPartition
                        )
                    );
                    if vanished {
                        self.topic_vanished.get_or_insert_with(Instant::now);
                    }
                    self.check_assignment();
                    return Err(kafka_err("consuming", &err));
                }
                Ok(Ok(message)) => {
                    let mut headers = BTreeMap::new();
                    if let Some(hs) = message.headers() {
                        for h in hs.iter() {
                            let value = h.value.map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
                            headers.insert(h.key.to_owned(), value);
                        }
                    }
                    return Ok(Delivery {
                        topic: message.topic().to_owned(),
                        partition: message.partition(),
                        offset: message.offset(),
                        key: message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                        payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                        headers,
                    });
                }
            }
        }
    }

    /// Stores the offset after `delivery` for the next periodic commit: no request of its own.
    async fn commit(&mut self, delivery: &Delivery) -> Result<()> {
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&delivery.topic, delivery.partition, Offset::Offset(delivery.offset + 1))
            .map_err(|e| kafka_err("building commit", &e))?;
        // Fails for a partition revoked meanwhile: its new owner gets the message again.
        self.consumer()?.store_offsets(&list).map_err(|e| kafka_err("storing offset", &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_errors_about_the_message_itself_are_permanent() {
        let production = |code| KafkaError::MessageProduction(code);
        assert!(refuses_for_good(&production(RDKafkaErrorCode::MessageSizeTooLarge)));
        assert!(refuses_for_good(&production(RDKafkaErrorCode::InvalidTopic)));
        for temporary in [
            RDKafkaErrorCode::NotLeaderForPartition,
            RDKafkaErrorCode::NotEnoughReplicas,
            RDKafkaErrorCode::NotEnoughReplicasAfterAppend,
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::RequestTimedOut,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::UnknownTopicOrPartition,
            RDKafkaErrorCode::LeaderNotAvailable,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::PolicyViolation,
            RDKafkaErrorCode::MessageBatchTooLarge,
        ] {
            assert!(!refuses_for_good(&production(temporary)), "{temporary:?} is temporary");
        }
    }
}
