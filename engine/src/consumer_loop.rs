//! The loop every consumer runs: receive, handle until the effect is durable, then commit
//! the offset. A failing handler is retried with backoff; the offset is never committed
//! ahead of the effect.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::transport::{Consumer, Delivery};

/// Processes one delivered message, durably (or returns an error to be retried).
#[async_trait]
pub trait MessageHandler: Send + Sync + 'static {
    async fn handle(&self, delivery: &Delivery) -> Result<()>;
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
        loop {
            match handler.handle(&delivery).await {
                Ok(()) => break,
                Err(err) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(consumer = %name, position = %delivery.position(), error = %err, failures, "handling failed; retrying");
                    let backoff = Duration::from_millis(100 * u64::from(failures.min(50)));
                    tokio::select! {
                        () = cancel.cancelled() => {
                            tracing::info!(consumer = %name, "consumer stopped");
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
}
