//! The Kafka transport against the Kafka-protocol broker.

use std::collections::BTreeMap;
use std::time::Duration;

use event_store::OutgoingMessage;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::{Offset, TopicPartitionList};
use sagaflow_tests::{eventually, kafka_bootstrap, kafka_transport, unique_prefix};

/// The offset a group has committed on one partition, as the broker tells a new member.
fn committed(group: &str, topic: &str, partition: i32) -> Option<i64> {
    let reader: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", kafka_bootstrap()).set("group.id", group).create().unwrap();
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, partition);
    let offsets = reader.committed_offsets(list, Duration::from_secs(5)).ok()?;
    match offsets.find_partition(topic, partition)?.offset() {
        Offset::Offset(offset) => Some(offset),
        _ => None,
    }
}

/// A consumer commits the offsets of the messages it said are durable, together and without
/// a request per message, and nothing past the first message that is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_said_durable_are_committed_together_and_none_past_them() {
    let transport = kafka_transport();
    let prefix = unique_prefix();
    let (topic, group) = (format!("{prefix}.commands"), format!("{prefix}.group"));
    transport.ensure_topics(std::slice::from_ref(&topic)).await.unwrap();
    // One key: one partition, in order.
    let messages: Vec<OutgoingMessage> = (0..50)
        .map(|i| OutgoingMessage {
            topic: topic.clone(),
            key: "one-key".into(),
            payload: format!("{i}").into_bytes(),
            headers: BTreeMap::new(),
        })
        .collect();
    transport.publish(&messages).await.unwrap();
    let mut consumer = transport.subscribe(&group, std::slice::from_ref(&topic)).await.unwrap();
    let mut received = Vec::new();
    while received.len() < 50 {
        received.push(tokio::time::timeout(Duration::from_secs(60), consumer.recv()).await.unwrap().unwrap());
    }
    let partition = received[0].partition;
    assert!(received.iter().all(|d| d.partition == partition));
    // The first 40 are durable; 40 to 49 are not.
    for delivery in &received[..40] {
        consumer.commit(delivery).await.unwrap();
    }
    let first_offset = received[0].offset;
    let at = eventually("the stored offsets committed", Duration::from_secs(10), || {
        let (group, topic) = (group.clone(), topic.clone());
        async move {
            tokio::task::spawn_blocking(move || committed(&group, &topic, partition))
                .await
                .unwrap()
                .filter(|&offset| offset >= first_offset + 40)
        }
    })
    .await;
    assert_eq!(at, first_offset + 40, "committed up to the last durable message, not past it");
    drop(consumer);
}
