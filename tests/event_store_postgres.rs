//! The event store's contract against a real PostgreSQL (a fresh database per test).

use sagaflow_tests::{contract, pg_store, MIGRATOR};
use sqlx::PgPool;

macro_rules! on_postgres {
    ($($name:ident),* $(,)?) => { $(
        #[sqlx::test(migrator = "MIGRATOR")]
        async fn $name(pool: PgPool) {
            // Two store instances: the second listens for commits like another process would.
            contract::$name(pg_store(pool.clone()).await, pg_store(pool).await).await;
        }
    )* };
}

on_postgres!(
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
