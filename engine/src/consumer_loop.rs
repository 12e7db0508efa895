//! The loop every consumer runs: receive, handle until the effect is durable, then commit
//! the offset. A handler failing for a transient reason (store or broker unreachable) is
//! retried with backoff; a message that fails for any other reason goes to the dead-letter
//! topic with that reason, so it cannot stop its partition. The offset is never committed
//! ahead of the effect (or of the dead-letter record).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
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

/// Consumes until cancelled. Stops between messages, or abandons one whose effect is not
/// yet durable (it will be delivered again and deduplicated).
pub async fn run_consumer(
    name: String,
    mut consumer: Box<dyn Consumer>,
    handler: Arc<dyn MessageHandler>,
    cancel: CancellationToken,
) {
    tracing::info!(consumer = %name, "consumer started");
    loop {
        let delivery = tokio::select! {
            () = cancel.cancelled() => break,
            received = consumer.recv() => received,
        };
        let delivery = match delivery {
            Ok(d) => d,
            Err(err) => {
                tracing::warn!(consumer = %name, error = %err, "receive failed");
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let mut failures = 0_u32;
        let mut permanent: Option<String> = None;
        loop {
            let result = match &permanent {
                None => handler.handle(&delivery).await,
                Some(reason) => handler.dead_letter(&delivery, reason).await,
            };
            match result {
                Ok(()) => break,
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
                        () = cancel.cancelled() => {
                            tracing::info!(consumer = %name, "consumer stopped");
                            release(consumer);
                            return;
                        }
                        () = tokio::time::sleep(backoff) => {}
                    }
                }
            }
        }
        if let Err(err) = consumer.commit(&delivery).await {
            // Harmless: the message comes again and is dropped as a duplicate.
            tracing::warn!(consumer = %name, error = %err, "offset commit failed");
        }
    }
    tracing::info!(consumer = %name, "consumer stopped");
    release(consumer);
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
        let task = tokio::spawn(run_consumer("test".into(), Box::new(consumer), handler.clone(), cancel.clone()));
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
}
