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
    one_relay_at_a_time_reads_the_outbox_in_commit_order_from_its_checkpoint,
    a_relay_reading_while_writers_commit_sees_every_message_once,
    a_renewed_lease_outlives_its_first_term_and_a_dead_one_passes_on,
    retention_deletes_old_published_rows_and_dedup_records_in_batches,
    processed_message_record_makes_a_redelivered_effect_a_no_op,
    timers_are_stored_replaced_and_cancelled_with_commits,
    streams_are_listed_by_prefix,
);

/// The outbox is read with the same transaction horizon as `$all`: a message whose transaction
/// took its id first but commits last is read before the ones after it, never skipped.
#[sqlx::test(migrator = "MIGRATOR")]
async fn a_relay_never_passes_a_message_whose_transaction_commits_late(pool: PgPool) {
    use std::time::Duration;

    use event_store::postgres::PgEventStore;
    use event_store::{Commit, EventStore, OutgoingMessage};

    let store = PgEventStore::from_pool(pool.clone()).await.unwrap();
    let message = |text: &str| {
        Commit::default().with_message(OutgoingMessage {
            topic: "t".into(),
            key: "k".into(),
            payload: text.as_bytes().to_vec(),
            headers: Default::default(),
        })
    };
    let lease = Duration::from_secs(30);
    let start = store.hold_outbox("relay", lease).await.unwrap().unwrap();
    let mut late = store.pool().begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()").execute(&mut *late).await.unwrap();
    store.commit_within(&mut late, &message("late")).await.unwrap();
    store.commit(message("early")).await.unwrap();
    assert!(
        store.read_outbox(start, 10).await.unwrap().is_empty(),
        "\"early\" waits behind the older transaction still open"
    );
    late.commit().await.unwrap();
    // Tests beside this one may hold older transactions of their own a little longer.
    let mut read = Vec::new();
    for _ in 0..500 {
        read = store.read_outbox(start, 10).await.unwrap();
        if read.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let texts: Vec<_> = read.iter().map(|m| String::from_utf8_lossy(&m.message.payload).into_owned()).collect();
    assert_eq!(texts, ["late", "early"], "in the order of the transactions' ids");
    assert!(store.advance_outbox("relay", read[1].position(), lease).await.unwrap());
    assert_eq!(store.outbox_pending().await.unwrap(), 0);
}

/// Gap safety without a global lock: 32 writers take their positions, then hold their
/// transactions open for a random while (some roll back), so transactions commit in every
/// order relative to their positions. A live subscriber must see every committed event
/// exactly once, in the order it reports, and never an event of a rolled-back transaction.
#[sqlx::test(migrator = "MIGRATOR")]
async fn a_subscriber_never_skips_events_of_transactions_that_commit_late(pool: PgPool) {
    use std::collections::HashSet;
    use std::sync::Arc;
    use std::time::Duration;

    use event_store::postgres::PgEventStore;
    use event_store::{AllPosition, Commit, EventStore, ExpectedVersion, NewEvent, Subscription};

    const WRITERS: usize = 32;
    const PER_WRITER: usize = 8;
    let store = PgEventStore::from_pool(pool.clone()).await.unwrap();
    let shared: Arc<dyn EventStore> = Arc::new(store.clone());
    let mut subscription = Subscription::after(Arc::clone(&shared), AllPosition::START);
    let (done_tx, mut done_rx) = tokio::sync::watch::channel(false);
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            tokio::select! {
                event = subscription.next() => seen.push(event.unwrap()),
                _ = done_rx.changed() => {
                    while let Ok(Ok(e)) = tokio::time::timeout(Duration::from_millis(1500), subscription.next()).await {
                        seen.push(e);
                    }
                    return seen;
                }
            }
        }
    });
    // One inversion for certain: B takes its transaction id first, A then writes first, so
    // $all holds B's event (higher position) before A's.
    let mut b = store.pool().begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()").execute(&mut *b).await.unwrap();
    let mut a = store.pool().begin().await.unwrap();
    let first = |stream: &str| {
        Commit::append(stream, ExpectedVersion::Any, vec![NewEvent::new("Written", serde_json::json!({}))])
    };
    let (commit_a, commit_b) = (first("a"), first("b"));
    store.commit_within(&mut a, &commit_a).await.unwrap();
    store.commit_within(&mut b, &commit_b).await.unwrap();
    a.commit().await.unwrap();
    b.commit().await.unwrap();
    let mut committed: HashSet<_> = [&commit_a, &commit_b].iter().map(|c| c.appends[0].events[0].event_id).collect();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut committed = Vec::new();
                for i in 0..PER_WRITER {
                    let event = NewEvent::new("Written", serde_json::json!({ "writer": w, "i": i }));
                    let id = event.event_id;
                    let mut tx = store.pool().begin().await.unwrap();
                    store
                        .commit_within(&mut tx, &Commit::append(format!("w-{w}"), ExpectedVersion::Any, vec![event]))
                        .await
                        .unwrap();
                    // The position is taken; the commit comes later, at random.
                    tokio::time::sleep(Duration::from_millis(rand::random_range(0..40))).await;
                    if rand::random_ratio(1, 8) {
                        tx.rollback().await.unwrap();
                    } else {
                        tx.commit().await.unwrap();
                        committed.push(id);
                    }
                }
                committed
            })
        })
        .collect();
    for w in writers {
        committed.extend(w.await.unwrap());
    }
    done_tx.send(true).unwrap();
    let seen = reader.await.unwrap();
    let seen_ids: Vec<_> = seen.iter().map(|e| e.event_id).collect();
    assert_eq!(
        seen_ids.iter().copied().collect::<HashSet<_>>(),
        committed,
        "every committed event, nothing rolled back"
    );
    assert_eq!(seen_ids.len(), committed.len(), "each exactly once");
    assert!(seen.windows(2).all(|w| w[0].all_position() < w[1].all_position()), "in increasing $all position");
    let late = seen.windows(2).filter(|w| w[0].global_position > w[1].global_position).count();
    assert!(late > 0, "some transactions come after ones with higher positions (else the test proves nothing)");
    let all = shared.read_all(AllPosition::START, 10_000).await.unwrap();
    assert_eq!(all.iter().map(|e| e.event_id).collect::<Vec<_>>(), seen_ids, "the final $all order is the order seen");
}

/// A database written before the gap-safe order (events at transaction 0) keeps its events
/// first in `$all`, ahead of everything written after the upgrade.
#[sqlx::test(migrator = "MIGRATOR")]
async fn events_written_before_the_upgrade_come_first_in_all(pool: PgPool) {
    use event_store::{AllPosition, EventStoreExt, ExpectedVersion, NewEvent};

    let store = pg_store(pool.clone()).await;
    store.append("old", ExpectedVersion::NoStream, vec![NewEvent::new("Old", serde_json::json!({}))]).await.unwrap();
    // What the migration gives rows written before it.
    sqlx::query("UPDATE events SET transaction_id = '0'").execute(&pool).await.unwrap();
    store.append("new", ExpectedVersion::NoStream, vec![NewEvent::new("New", serde_json::json!({}))]).await.unwrap();
    // $all shows an event once every older transaction in the cluster has finished (other
    // tests run beside this one): wait for both.
    let mut all = Vec::new();
    for _ in 0..100 {
        all = store.read_all(AllPosition::START, 10).await.unwrap();
        if all.len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let types: Vec<&str> = all.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["Old", "New"]);
    assert_eq!(all[0].transaction_id, 0);
    assert!(all[1].transaction_id > 0);
}

/// Hot statements keep using their indexes when tables grow after a connection cached its
/// plans. The store's connections cache one generic plan per statement; a plan made while a
/// table looked small (statistics of a nearly empty table, as autovacuum or an ANALYZE leaves
/// them on a new deployment or after retention emptied the outbox) must not go on scanning the
/// whole table once it holds 100,000 rows.
#[sqlx::test(migrator = "MIGRATOR")]
async fn hot_statements_use_indexes_however_small_the_tables_were_when_planned(pool: PgPool) {
    use std::time::Duration;

    use chrono::Utc;
    use event_store::postgres::PgEventStore;
    use event_store::saga_index::SagaRow;
    use event_store::{AllPosition, Commit, EventStore, ExpectedVersion, NewEvent, OutgoingMessage, TimerChange};
    use serde_json::json;
    use uuid::Uuid;

    use sagaflow_tests::hot_tables::{keep_autovacuum_off, HOT_TABLES as TABLES};

    keep_autovacuum_off(&pool).await;
    // Two connections: the commit listener holds one, so every hot statement is planned and
    // cached on the other, the backend whose scans are flushed and counted.
    let url = sagaflow_tests::process::database_url_of(&pool).await;
    let store = PgEventStore::connect_with(&url, 2).await.unwrap();
    let index = store.saga_index();

    let hot_paths = |round: u32| {
        let (store, index) = (store.clone(), std::sync::Arc::clone(&index));
        async move {
            for i in 0..20 {
                let stream = format!("hot-{round}-{i}");
                let saga = Uuid::now_v7();
                let commit = Commit::append(&stream, ExpectedVersion::NoStream, vec![NewEvent::new("A", json!({}))])
                    .with_message(OutgoingMessage {
                        topic: "t".into(),
                        key: stream.clone(),
                        payload: b"{}".to_vec(),
                        headers: Default::default(),
                    })
                    .processing("hot-consumer", format!("m-{round}-{i}"))
                    .with_timer(TimerChange::Set { key: format!("timer-{stream}"), due_at: Utc::now() });
                store.commit(commit).await.unwrap();
                let next = Commit::append(&stream, ExpectedVersion::Exact(1), vec![NewEvent::new("B", json!({}))])
                    .with_timer(TimerChange::Cancel { key: format!("timer-{stream}") });
                store.commit(next).await.unwrap();
                assert_eq!(store.read_stream(&stream, 1, 10).await.unwrap().len(), 2);
                assert_eq!(store.stream_version(&stream).await.unwrap(), Some(2));
                let lease = Duration::from_secs(30);
                let at = store.hold_outbox("hot-relay", lease).await.unwrap().expect("one relay here");
                if let Some(last) = store.read_outbox(at, 10).await.unwrap().last() {
                    assert!(store.advance_outbox("hot-relay", last.position(), lease).await.unwrap());
                }
                store.due_timers(Utc::now(), 10).await.unwrap();
                store.outbox_pending().await.unwrap();
                let from = index.checkpoint().await.unwrap();
                let to = AllPosition { global_position: from.global_position + 1, ..from };
                let now = Utc::now();
                let row = SagaRow {
                    saga_id: saga,
                    definition: "hot".into(),
                    definition_version: 1,
                    status: "RUNNING".into(),
                    current_step: Some("s".into()),
                    started_at: now,
                    last_progress_at: now,
                    finished_at: None,
                    waiting_until: None,
                    stuck_after_ms: None,
                };
                index.write(&[row], from, to).await.unwrap();
                assert_eq!(index.rows(&[saga]).await.unwrap().len(), 1);
            }
            let last = store.read_all(AllPosition::START, 1).await.unwrap();
            let after = last.first().map_or(AllPosition::START, |e| e.all_position());
            store.read_all(after, 100).await.unwrap();
            store.count_after(after, 1_000).await.unwrap();
            index.take_newly_stuck(Utc::now(), 3_600_000, 10).await.unwrap();
            // Counted once the backend has reported its scans.
            sqlx::query("SELECT pg_stat_force_next_flush()").execute(store.pool()).await.unwrap();
        }
    };
    let seq_scans = || async {
        let mut counts = Vec::new();
        for table in TABLES {
            let n: i64 = sqlx::query_scalar("SELECT seq_scan FROM pg_stat_user_tables WHERE relname = $1")
                .bind(table)
                .fetch_one(&pool)
                .await
                .unwrap();
            counts.push((table, n));
        }
        counts
    };

    // A new deployment: small tables, with the statistics of small tables.
    hot_paths(0).await;
    sqlx::query(&format!("ANALYZE {}", TABLES.join(", "))).execute(&pool).await.unwrap();
    hot_paths(1).await;
    // The tables grow to 100,000 rows each, with no ANALYZE.
    sagaflow_tests::hot_tables::grow(&pool, 0, 100_000).await;
    let before = seq_scans().await;
    hot_paths(2).await;
    let after = seq_scans().await;
    let scanned: Vec<_> = before.iter().zip(&after).filter(|(b, a)| a.1 > b.1).map(|(b, a)| (b.0, a.1 - b.1)).collect();
    assert!(scanned.is_empty(), "hot statements scanned whole tables of 100,000 rows: {scanned:?}");
}

/// A page of `$all` or of the outbox, read from a checkpoint in the log's order, costs its own
/// rows however far behind the reader is, not a sort of the whole unread tail. (Both reads once
/// ordered by their output column `transaction_id`, a cast that no index orders.)
#[sqlx::test(migrator = "MIGRATOR")]
async fn a_page_of_all_or_of_the_outbox_costs_its_own_rows_however_long_the_unread_tail(pool: PgPool) {
    use std::time::Duration;

    use event_store::postgres::PgEventStore;
    use event_store::{AllPosition, EventStore};

    sagaflow_tests::hot_tables::keep_autovacuum_off(&pool).await;
    let url = sagaflow_tests::process::database_url_of(&pool).await;
    let store = PgEventStore::connect_with(&url, 2).await.unwrap();
    for bulk in [
        "INSERT INTO events (event_id, stream_id, version, event_type, data)
           SELECT gen_random_uuid(), 'bulk-' || (g / 10), g % 10 + 1, 'Bulk', '{}' FROM generate_series(0, 49999) g",
        "INSERT INTO outbox (topic, msg_key, payload) SELECT 't', 'k' || g, '\\x7b7d' FROM generate_series(1, 50000) g",
    ] {
        sqlx::query(bulk).execute(&pool).await.unwrap();
    }
    let at = store.hold_outbox("relay", Duration::from_secs(30)).await.unwrap().expect("the only relay");
    let rows_read = |table: &'static str| {
        let pool = pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) FROM pg_stat_user_tables WHERE relname = $1",
            )
            .bind(table)
            .fetch_one(&pool)
            .await
            .unwrap();
            n
        }
    };

    let (events_before, outbox_before) = (rows_read("events").await, rows_read("outbox").await);
    for _ in 0..5 {
        let events = store.read_all(AllPosition::START, 10).await.unwrap();
        assert_eq!(events.iter().map(|e| e.version).collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        let page = store.read_outbox(at, 10).await.unwrap();
        let keys: Vec<String> = (1..=10).map(|k| format!("k{k}")).collect();
        assert_eq!(page.iter().map(|m| m.message.key.clone()).collect::<Vec<_>>(), keys);
        // Counted once the backend has reported its reads.
        sqlx::query("SELECT pg_stat_force_next_flush()").execute(store.pool()).await.unwrap();
    }
    let events_read = rows_read("events").await - events_before;
    let outbox_read = rows_read("outbox").await - outbox_before;
    assert!(
        events_read <= 5 * 20 && outbox_read <= 5 * 20,
        "five pages of 10 read {events_read} events and {outbox_read} outbox rows of 50,000-row tails"
    );
}
