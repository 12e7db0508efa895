//! The event store's contract against the embedded SQLite backend and the in-memory one.

use std::sync::Arc;

use event_store::memory::MemoryEventStore;
use event_store::sqlite::SqliteEventStore;
use event_store::EventStore;
use sagaflow_tests::contract;

macro_rules! on_sqlite_and_memory {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let store: Arc<dyn EventStore> = Arc::new(SqliteEventStore::open(dir.path()).await.unwrap());
                    contract::$name(Arc::clone(&store), store).await;
                }
            )*
        }
        mod memory {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let store: Arc<dyn EventStore> = Arc::new(MemoryEventStore::new());
                    contract::$name(Arc::clone(&store), store).await;
                }
            )*
        }
    };
}

on_sqlite_and_memory!(
    racing_writers_get_exactly_one_winner_per_version,
    stale_writer_gets_wrong_expected_version_and_writes_nothing,
    reappending_a_stored_event_id_is_a_no_op_returning_the_original_position,
    all_stream_order_with_concurrent_writers_never_lets_a_subscriber_skip,
    catch_up_then_live_subscription_delivers_every_event_once_in_order,
    long_streams_read_as_an_async_stream_in_pages,
    snapshot_plus_tail_equals_full_replay,
    one_relay_at_a_time_reads_the_outbox_in_commit_order_from_its_checkpoint,
    a_relay_reading_while_writers_commit_sees_every_message_once,
    a_renewed_lease_outlives_its_first_term_and_a_dead_one_passes_on,
    retention_deletes_old_published_rows_and_dedup_records_in_batches,
    processed_message_record_makes_a_redelivered_effect_a_no_op,
    timers_are_stored_replaced_and_cancelled_with_commits,
    streams_are_listed_by_prefix,
);

/// A caller that goes away mid-commit (a dropped HTTP request, a consumer shutting down)
/// must not fail the commits that were queued to be written in the same group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_caller_goes_away_fails_no_other_commit() {
    use event_store::{Commit, ExpectedVersion, NewEvent};
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteEventStore::open(dir.path()).await.unwrap());
    for round in 0..30 {
        let mut kept = Vec::new();
        for i in 0..32 {
            let store = Arc::clone(&store);
            let commit = Commit::append(
                format!("s-{round}-{i}"),
                ExpectedVersion::NoStream,
                vec![NewEvent::new("E", serde_json::json!({ "i": i }))],
            );
            let task = tokio::spawn(async move {
                if i % 2 == 0 {
                    // Goes away at once, possibly while it writes the group it leads.
                    let _ = tokio::time::timeout(std::time::Duration::from_micros(50), store.commit(commit)).await;
                    None
                } else {
                    Some(store.commit(commit).await)
                }
            });
            kept.push(task);
        }
        for task in kept {
            if let Some(result) = task.await.unwrap() {
                assert!(result.is_ok(), "round {round}: a commit failed with its neighbour: {result:?}");
            }
        }
    }
}
