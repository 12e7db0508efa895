//! The broker's raw limit, with no engine code: rdkafka producing to and consuming from one
//! topic with the engine's client settings. A saga needs 8 messages (4 commands, 4 replies),
//! so this bounds sagas/s from above.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

use crate::cpu::CpuMeter;
use crate::stats::{percentile, Figure};

/// What the broker does alone.
pub struct BrokerFigures {
    /// Messages/s produced and consumed end to end, with the CPU split while it ran.
    pub throughput: Figure,
    pub cpu: String,
    /// One message at a time: produce, then wait until the consumer has it.
    pub hop: Figure,
    /// Batches of 200 messages, each acknowledged before the next (the relay's pattern):
    /// messages/s, and the time per batch.
    pub batches: Figure,
}

fn client(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    config
}

async fn topic(bootstrap: &str, partitions: i32) -> String {
    let name = format!("bench-raw-{}", uuid::Uuid::now_v7().simple());
    let admin: AdminClient<DefaultClientContext> = client(bootstrap).create().unwrap();
    admin
        .create_topics(&[NewTopic::new(&name, partitions, TopicReplication::Fixed(1))], &AdminOptions::new())
        .await
        .unwrap();
    name
}

fn producer(bootstrap: &str) -> FutureProducer {
    client(bootstrap).set("enable.idempotence", "true").set("acks", "all").set("linger.ms", "2").create().unwrap()
}

fn consumer(bootstrap: &str, topic: &str) -> StreamConsumer {
    let consumer: StreamConsumer = client(bootstrap)
        .set("group.id", format!("bench-{}", uuid::Uuid::now_v7().simple()))
        .set("enable.auto.commit", "true")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", humantime::parse_duration(&crate::fetch_wait()).unwrap().as_millis().to_string())
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    consumer
}

/// Produces `count` messages of `size` bytes as fast as the producer takes them while a
/// consumer group member reads them; then ping-pongs single messages.
pub async fn raw_limit(bootstrap: &str, count: usize, size: usize, cpu: &mut CpuMeter) -> BrokerFigures {
    let topic = topic(bootstrap, 6).await;
    let consumer = Arc::new(consumer(bootstrap, &topic));
    // Join the group before producing, so the figure is not the rebalance delay.
    let warmup = producer(bootstrap);
    warmup.send(FutureRecord::to(&topic).key("warm").payload("warm"), Timeout::Never).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await.expect("consumer joins").unwrap();

    let received = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (consumer, received) = (Arc::clone(&consumer), Arc::clone(&received));
        tokio::spawn(async move {
            while received.load(Ordering::Relaxed) < count {
                if tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await.is_err() {
                    break;
                }
                received.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let payload = vec![b'x'; size];
    let producer = producer(bootstrap);
    cpu.start();
    let started = Instant::now();
    let keys: Vec<String> = (0..997).map(|k| format!("k{k}")).collect();
    let mut sends = futures::stream::FuturesUnordered::new();
    for i in 0..count {
        let record = FutureRecord::to(&topic).key(&keys[i % keys.len()]).payload(&payload);
        sends.push(producer.send(record, Timeout::Never));
        if sends.len() >= 5_000 {
            use futures::StreamExt;
            sends.next().await;
        }
    }
    {
        use futures::StreamExt;
        while sends.next().await.is_some() {}
    }
    reader.await.unwrap();
    let elapsed = started.elapsed();
    let cpu_split = cpu.stop(elapsed);
    let got = received.load(Ordering::Relaxed);
    let throughput = Figure::rate(got, elapsed, Vec::new());

    // The relay's pattern: a batch of 200 sent, all acknowledged, then the next.
    let batches_started = Instant::now();
    let mut batch_latencies = Vec::new();
    for b in 0..20 {
        let begun = Instant::now();
        let sends: Vec<_> = (0..200)
            .map(|i| {
                producer.send(
                    FutureRecord::to(&topic).key(&keys[(b * 200 + i) % keys.len()]).payload(&payload),
                    Timeout::Never,
                )
            })
            .collect();
        for result in futures::future::join_all(sends).await {
            result.unwrap();
        }
        batch_latencies.push(begun.elapsed());
    }
    let batches = Figure::rate(20 * 200, batches_started.elapsed(), batch_latencies);

    let mut hops = Vec::new();
    for i in 0..100 {
        let begun = Instant::now();
        let key = format!("hop{i}");
        producer.send(FutureRecord::to(&topic).key(&key).payload(&payload), Timeout::Never).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), consumer.recv()).await.unwrap().unwrap();
        hops.push(begun.elapsed());
    }
    hops.sort();
    let hop = Figure { per_s: 1.0 / percentile(&hops, 0.5).as_secs_f64().max(1e-9), latencies: hops };
    BrokerFigures { throughput, cpu: cpu_split, hop, batches }
}
