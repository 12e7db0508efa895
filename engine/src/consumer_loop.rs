//! The loop every consumer runs: receive, handle until the effect is durable, then commit
//! the offset. Messages are handled concurrently, up to a bound, except that messages with
//! the same key (a saga, an aggregate) are handled one after another in partition order. An
//! offset is committed only once every message before it on its partition is durable.
//! A handler failing for a transient reason (store or broker unreachable) is retried with
//! backoff; a message that fails for any other reason goes to the dead-letter topic with
//! that reason, so it cannot stop its partition.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::transport::{Consumer, Delivery};

/// Processes one delivered message, durably.
#[async_trait]
pub trait MessageHandler: Send + Sync + 'static {
    /// Handles the message; an error is retried when [`crate::Error::is_transient`].
    async fn handle(&self, delivery: &Delivery) -> Result<()>;

    /// Durably records the message on the dead-letter topic with `reason`.
    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<()>;
}

/// Messages a consumer has received and not yet committed, at most.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;

/// Consumes until cancelled, handling up to `max_in_flight` messages at once. At a stop,
/// messages whose effect is not yet durable are abandoned: they are delivered again and
/// deduplicated.
pub async fn run_consumer(
    name: String,
    mut consumer: Box<dyn Consumer>,
    handler: Arc<dyn MessageHandler>,
    max_in_flight: usize,
    cancel: CancellationToken,
) {
    tracing::info!(consumer = %name, max_in_flight, "consumer started");
    let name: Arc<str> = name.into();
    let mut work = InFlight::default();
    let mut running: JoinSet<Option<Delivery>> = JoinSet::new();
    loop {
        let room = work.received < max_in_flight.max(1);
        tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            Some(done) = running.join_next(), if !running.is_empty() => {
                let Ok(Some(delivery)) = done else {
                    // Cancelled inside its retries (shutdown), or the task panicked: stop
                    // here; what is not committed comes again.
                    break;
                };
                let (next, committable) = work.finish(delivery);
                if let Some(next) = next {
                    running.spawn(handle_durably(Arc::clone(&name), Arc::clone(&handler), next, cancel.clone()));
                }
                if let Some(up_to) = committable {
                    if let Err(err) = consumer.commit(&up_to).await {
                        // Harmless: the messages come again and are dropped as duplicates.
                        tracing::warn!(consumer = %name, error = %err, "offset commit failed");
                    }
                }
            }
            received = consumer.recv(), if room => match received {
                Ok(delivery) => {
                    if let Some(ready) = work.receive(delivery) {
                        running.spawn(handle_durably(Arc::clone(&name), Arc::clone(&handler), ready, cancel.clone()));
                    }
                }
                Err(err) => {
                    tracing::warn!(consumer = %name, error = %err, "receive failed");
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            },
        }
    }
    running.abort_all();
    tracing::info!(consumer = %name, "consumer stopped");
    release(consumer);
}

/// What a consumer holds between receiving messages and committing them.
#[derive(Default)]
struct InFlight {
    received: usize,
    /// Per ordering key: the messages waiting behind the one being handled.
    keys: HashMap<String, VecDeque<Delivery>>,
    /// Per (topic, partition): offsets received, with the delivery once it is durable.
    partitions: HashMap<(String, i32), BTreeMap<i64, Option<Delivery>>>,
}

impl InFlight {
    /// Messages of one key keep their order; without a key, their partition's.
    fn key_of(delivery: &Delivery) -> String {
        delivery.key.clone().unwrap_or_else(|| format!("{}:{}", delivery.topic, delivery.partition))
    }

    /// Takes a new message; returns it when it can be handled now (no other of its key is).
    /// A message delivered again while this consumer still holds it (a rebalance delivers
    /// from the committed offset) is dropped: the copy held will be handled and committed.
    fn receive(&mut self, delivery: Delivery) -> Option<Delivery> {
        let offsets = self.partitions.entry((delivery.topic.clone(), delivery.partition)).or_default();
        match offsets.entry(delivery.offset) {
            std::collections::btree_map::Entry::Occupied(_) => return None,
            std::collections::btree_map::Entry::Vacant(slot) => slot.insert(None),
        };
        self.received += 1;
        match self.keys.entry(Self::key_of(&delivery)) {
            std::collections::hash_map::Entry::Occupied(mut waiting) => {
                waiting.get_mut().push_back(delivery);
                None
            }
            std::collections::hash_map::Entry::Vacant(idle) => {
                idle.insert(VecDeque::new());
                Some(delivery)
            }
        }
    }

    /// A message's effect is durable. Returns the next message of its key to handle, and
    /// the delivery up to which its partition can now be committed.
    fn finish(&mut self, delivery: Delivery) -> (Option<Delivery>, Option<Delivery>) {
        let key = Self::key_of(&delivery);
        let next = match self.keys.get_mut(&key).and_then(VecDeque::pop_front) {
            Some(next) => Some(next),
            None => {
                self.keys.remove(&key);
                None
            }
        };
        let mut committable = None;
        if let Some(offsets) = self.partitions.get_mut(&(delivery.topic.clone(), delivery.partition)) {
            offsets.insert(delivery.offset, Some(delivery));
            while let Some(entry) = offsets.first_entry() {
                if entry.get().is_none() {
                    break;
                }
                committable = entry.remove();
                self.received -= 1;
            }
        }
        (next, committable)
    }
}

/// Handles one message until its effect (or its dead-letter record) is durable; `None` when
/// cancelled first.
async fn handle_durably(
    name: Arc<str>,
    handler: Arc<dyn MessageHandler>,
    delivery: Delivery,
    cancel: CancellationToken,
) -> Option<Delivery> {
    let mut failures = 0_u32;
    let mut permanent: Option<String> = None;
    loop {
        let result = match &permanent {
            None => handler.handle(&delivery).await,
            Some(reason) => handler.dead_letter(&delivery, reason).await,
        };
        match result {
            Ok(()) => return Some(delivery),
            Err(err) if permanent.is_none() && !err.is_transient() => {
                tracing::error!(consumer = %name, position = %delivery.position(), error = %err, "message cannot be handled; dead-lettering it");
                permanent = Some(err.to_string());
            }
            Err(err) => {
                // A dead-letter write that fails for a transient reason (the store went
                // away) suggests the first failure came from the store too: handle the
                // message again once the store is back rather than dead-letter it.
                permanent = None;
                failures = failures.saturating_add(1);
                tracing::warn!(consumer = %name, position = %delivery.position(), error = %err, failures, "handling failed; retrying");
                let backoff = Duration::from_millis(100 * u64::from(failures.min(50)));
                tokio::select! {
                    () = cancel.cancelled() => return None,
                    () = tokio::time::sleep(backoff) => {}
                }
            }
        }
    }
}

/// Drops a consumer off the async threads: a Kafka consumer leaving its group blocks in
/// its destructor, for long when the broker is unreachable, and must not hold up shutdown.
fn release(consumer: Box<dyn Consumer>) {
    let spawned = std::thread::Builder::new().name("consumer-close".into()).spawn(move || drop(consumer));
    if let Err(err) = spawned {
        tracing::warn!(error = %err, "cannot close the consumer on its own thread");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use super::*;
    use crate::error::Error;

    struct Scripted {
        queue: Vec<Delivery>,
        committed: Arc<Mutex<Vec<i64>>>,
    }

    #[async_trait]
    impl Consumer for Scripted {
        fn status(&self) -> Arc<crate::transport::ConsumerStatus> {
            Arc::new(crate::transport::ConsumerStatus::waiting("scripted"))
        }

        async fn recv(&mut self) -> Result<Delivery> {
            if self.queue.is_empty() {
                std::future::pending::<()>().await;
            }
            Ok(self.queue.remove(0))
        }

        async fn commit(&mut self, delivery: &Delivery) -> Result<()> {
            self.committed.lock().unwrap().push(delivery.offset);
            Ok(())
        }
    }

    #[derive(Default)]
    struct Recorder {
        handled: Mutex<Vec<i64>>,
        dead: Mutex<Vec<(i64, String)>>,
        transient_failures_left: Mutex<u32>,
    }

    #[async_trait]
    impl MessageHandler for Recorder {
        async fn handle(&self, delivery: &Delivery) -> Result<()> {
            match delivery.payload.as_slice() {
                b"unstorable" => Err(Error::Store(event_store::Error::Invalid("a NUL".into()))),
                b"flaky" if *self.transient_failures_left.lock().unwrap() > 0 => {
                    *self.transient_failures_left.lock().unwrap() -= 1;
                    Err(Error::Transport("broker unreachable".into()))
                }
                _ => {
                    self.handled.lock().unwrap().push(delivery.offset);
                    Ok(())
                }
            }
        }

        async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<()> {
            self.dead.lock().unwrap().push((delivery.offset, reason.to_owned()));
            Ok(())
        }
    }

    fn delivery(offset: i64, payload: &[u8]) -> Delivery {
        Delivery {
            topic: "t".into(),
            partition: 0,
            offset,
            key: None,
            payload: payload.to_vec(),
            headers: BTreeMap::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_that_fails_for_good_is_dead_lettered_and_transient_failures_are_retried() {
        let committed = Arc::new(Mutex::new(Vec::new()));
        let consumer = Scripted {
            queue: vec![delivery(0, b"ok"), delivery(1, b"unstorable"), delivery(2, b"flaky"), delivery(3, b"ok")],
            committed: Arc::clone(&committed),
        };
        let handler = Arc::new(Recorder { transient_failures_left: Mutex::new(3), ..Recorder::default() });
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run_consumer("test".into(), Box::new(consumer), handler.clone(), 8, cancel.clone()));
        tokio::time::sleep(Duration::from_secs(10)).await;
        cancel.cancel();
        task.await.unwrap();
        assert_eq!(*handler.handled.lock().unwrap(), [0, 2, 3], "the flaky message was retried until it went through");
        let dead = handler.dead.lock().unwrap().clone();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].0, 1);
        assert!(dead[0].1.contains("NUL"), "{}", dead[0].1);
        assert_eq!(*committed.lock().unwrap(), [0, 1, 2, 3], "every offset committed after its effect");
    }

    /// Handles messages of one key one at a time and waits on `gate` for a "slow" one.
    struct Gated {
        gate: tokio::sync::Semaphore,
        handled: Mutex<Vec<i64>>,
    }

    #[async_trait]
    impl MessageHandler for Gated {
        async fn handle(&self, delivery: &Delivery) -> Result<()> {
            if delivery.payload == b"slow" {
                let _permit = self.gate.acquire().await.unwrap();
            }
            self.handled.lock().unwrap().push(delivery.offset);
            Ok(())
        }

        async fn dead_letter(&self, _delivery: &Delivery, _reason: &str) -> Result<()> {
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn other_keys_go_on_while_one_waits_and_offsets_are_committed_only_behind_durable_effects() {
        let keyed = |offset, key: &str, payload: &[u8]| Delivery { key: Some(key.into()), ..delivery(offset, payload) };
        let committed = Arc::new(Mutex::new(Vec::new()));
        let consumer = Scripted {
            queue: vec![keyed(0, "a", b"slow"), keyed(1, "b", b"ok"), keyed(2, "a", b"ok"), keyed(3, "b", b"ok")],
            committed: Arc::clone(&committed),
        };
        let handler = Arc::new(Gated { gate: tokio::sync::Semaphore::new(0), handled: Mutex::default() });
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run_consumer("test".into(), Box::new(consumer), handler.clone(), 8, cancel.clone()));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(*handler.handled.lock().unwrap(), [1, 3], "key b went on; a's second message waits for its first");
        assert!(committed.lock().unwrap().is_empty(), "nothing committed past the unfinished offset 0");
        handler.gate.add_permits(1);
        tokio::time::sleep(Duration::from_secs(1)).await;
        cancel.cancel();
        task.await.unwrap();
        assert_eq!(*handler.handled.lock().unwrap(), [1, 3, 0, 2], "a's messages in their order");
        assert_eq!(*committed.lock().unwrap(), [1, 3], "each commit covers a durable prefix");
    }

    #[test]
    fn a_message_delivered_again_while_its_partition_waits_is_counted_once() {
        // After a rebalance the broker delivers again from the committed offset, including
        // messages this consumer still holds; the window must not leak a slot for them.
        let keyed = |offset, key: &str| Delivery { key: Some(key.into()), ..delivery(offset, b"ok") };
        let mut work = InFlight::default();
        let first = work.receive(keyed(0, "a")).unwrap();
        let second = work.receive(keyed(1, "b")).unwrap();
        assert_eq!(work.finish(second).1, None, "offset 1 waits behind offset 0");
        if let Some(again) = work.receive(keyed(1, "b")) {
            work.finish(again);
        }
        let (_, committable) = work.finish(first);
        assert_eq!(committable.map(|d| d.offset), Some(1));
        assert_eq!(work.received, 0, "every slot of the window is free again");
        assert!(work.partitions.values().all(BTreeMap::is_empty));
    }
}
