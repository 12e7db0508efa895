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
    outbox_is_claimed_in_order_and_each_message_once_with_two_relays,
    expired_outbox_lease_is_claimed_again,
    a_renewed_lease_outlives_its_first_term_and_a_dead_one_passes_on,
    retention_deletes_old_published_rows_and_dedup_records_in_batches,
    processed_message_record_makes_a_redelivered_effect_a_no_op,
    timers_are_stored_replaced_and_cancelled_with_commits,
    streams_are_listed_by_prefix,
);
