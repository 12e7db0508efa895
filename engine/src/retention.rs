//! Retention: deletes, in batches and in the background, what the engine no longer needs:
//! published outbox rows (at or before the relay's position) after [`Retention::outbox`], and processed-message records (the
//! deduplication record) after [`Retention::dedup_window`].
//!
//! The dedup window must outlast any redelivery: a message is redelivered only while it is
//! still on its topic (Kafka keeps it for the topic's `retention.ms`, 7 days by default)
//! or still unpublished in the outbox (unpublished rows are never deleted).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use event_store::EventStore;
use tokio_util::sync::CancellationToken;

use crate::error::Result;

/// How long things are kept, and how the deletes are paced.
#[derive(Debug, Clone)]
pub struct Retention {
    /// Published outbox messages (payloads included) are deleted this long after they were
    /// committed.
    pub outbox: Duration,
    /// Processed-message records are kept this long, so a redelivered message is still
    /// recognised and applied once.
    pub dedup_window: Duration,
    /// Rows deleted per statement: small enough to hold no lock for long.
    pub batch: usize,
    /// Pause between two rounds.
    pub interval: Duration,
}

impl Default for Retention {
    /// 24 h of published outbox rows, an 8-day dedup window (one day past Kafka's default
    /// 7-day topic retention), batches of 5,000, a round a minute.
    fn default() -> Self {
        Self {
            outbox: Duration::from_secs(24 * 3600),
            dedup_window: Duration::from_secs(8 * 24 * 3600),
            batch: 5_000,
            interval: Duration::from_secs(60),
        }
    }
}

/// What one round deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub outbox: u64,
    pub processed: u64,
}

/// Deletes everything past retention now, batch by batch, until nothing is left or `cancel`.
pub async fn prune(store: &dyn EventStore, retention: &Retention, cancel: &CancellationToken) -> Result<Pruned> {
    let batch = retention.batch.max(1);
    let outbox_before = cutoff(retention.outbox);
    let outbox = drain("outbox", batch, cancel, || store.delete_published_outbox(outbox_before, batch)).await?;
    let processed_before = cutoff(retention.dedup_window);
    let processed =
        drain("processed_messages", batch, cancel, || store.delete_processed_messages(processed_before, batch)).await?;
    Ok(Pruned { outbox, processed })
}

fn cutoff(kept_for: Duration) -> chrono::DateTime<Utc> {
    Utc::now() - chrono::Duration::from_std(kept_for).unwrap_or(chrono::Duration::MAX)
}

/// Runs `delete_batch` until it deletes fewer than `batch` rows; returns how many it deleted.
async fn drain<F, Fut>(
    table: &'static str,
    batch: usize,
    cancel: &CancellationToken,
    mut delete_batch: F,
) -> Result<u64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = event_store::Result<u64>>,
{
    let mut deleted = 0;
    while !cancel.is_cancelled() {
        let n = delete_batch().await?;
        deleted += n;
        metrics::counter!("sagaflow_retention_deleted_total", "table" => table).increment(n);
        if n < batch as u64 {
            break;
        }
        tokio::task::yield_now().await;
    }
    Ok(deleted)
}

/// Prunes every `retention.interval` until cancelled.
pub async fn run_retention(store: Arc<dyn EventStore>, retention: Retention, cancel: CancellationToken) {
    tracing::info!(outbox = ?retention.outbox, dedup_window = ?retention.dedup_window, "retention started");
    loop {
        match prune(store.as_ref(), &retention, &cancel).await {
            Ok(pruned) if pruned != Pruned::default() => {
                tracing::info!(outbox = pruned.outbox, processed = pruned.processed, "retention deleted old rows");
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "retention round failed; trying again next round"),
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(retention.interval) => {}
        }
    }
    tracing::info!("retention stopped");
}

#[cfg(test)]
mod tests {
    use event_store::memory::MemoryEventStore;
    use event_store::{Commit, OutgoingMessage};

    use super::*;

    #[tokio::test]
    async fn only_published_rows_and_records_past_their_window_are_deleted() {
        let store = MemoryEventStore::new();
        let message =
            || OutgoingMessage { topic: "t".into(), key: "k".into(), payload: vec![1], headers: Default::default() };
        for n in 0..7 {
            store.commit(Commit::default().with_message(message()).processing("c", format!("m{n}"))).await.unwrap();
        }
        // The relay published the first 5.
        let lease = Duration::from_secs(10);
        let start = store.hold_outbox("r", lease).await.unwrap().unwrap();
        let read = store.read_outbox(start, 5).await.unwrap();
        assert!(store.advance_outbox("r", read[4].position(), lease).await.unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;

        let keep_all = Retention {
            outbox: Duration::from_secs(60),
            dedup_window: Duration::from_secs(60),
            batch: 2,
            ..Retention::default()
        };
        assert_eq!(prune(&store, &keep_all, &CancellationToken::new()).await.unwrap(), Pruned::default());

        let expire =
            Retention { outbox: Duration::ZERO, dedup_window: Duration::ZERO, batch: 2, ..Retention::default() };
        let pruned = prune(&store, &expire, &CancellationToken::new()).await.unwrap();
        assert_eq!(pruned, Pruned { outbox: 5, processed: 7 }, "in batches of 2 until none is left");
        assert_eq!(store.outbox_pending().await.unwrap(), 2, "unpublished messages are never deleted");
        let again = Commit::default().processing("c", "m0");
        assert!(store.commit(again).await.is_ok(), "the record of m0 is gone");
    }
}
