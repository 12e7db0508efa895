//! What one saga's statements cost as the tables grow under connections that planned them
//! while the tables were small: the store as it opens its connections, beside a pool that
//! caches generic plans with nothing else set (the store before the fix of the plans made on
//! small tables). Both run on one database holding 0, 100,000 and 1,000,000 events (and as
//! many outbox, timer, processed-message and saga-index rows), with autovacuum kept off those
//! tables, as on a new deployment before autovacuum gets to them.

use std::time::{Duration, Instant};

use chrono::Utc;
use event_store::postgres::PgEventStore;
use event_store::saga_index::SagaRow;
use event_store::{Commit, EventStore, ExpectedVersion, NewEvent, OutgoingMessage, TimerChange};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use uuid::Uuid;

use crate::stats::thousands;

use sagaflow_tests::hot_tables::HOT_TABLES as TABLES;
/// Sagas' statements per measurement.
const SAGAS: usize = 200;

/// Per saga: time on one connection, buffer hits and rows returned (from `pg_stat_database`),
/// and sequential scans of the hot tables.
#[derive(Debug, Clone, Copy, Default)]
struct Cost {
    ms: f64,
    hits: f64,
    rows: f64,
    seq_scans: f64,
}

impl Cost {
    fn cell(&self) -> String {
        format!("{:>7.2} {:>8} {:>9} {:>6.2}", self.ms, thousands(self.hits), thousands(self.rows), self.seq_scans)
    }
}

/// The statements of one order saga as the engine issues them: its start, three steps each
/// answered by a participant (aggregate read, append with the reply and the processed
/// command), three decisions on the replies, the relay's claims and marks, the timers, a
/// saga-index row and the reads that follow the saga.
async fn one_saga(store: &PgEventStore, n: usize, round: &str) {
    let saga = Uuid::now_v7();
    let stream = format!("saga-{saga}");
    let message = |key: &str| OutgoingMessage {
        topic: "bench.commands".into(),
        key: key.to_owned(),
        payload: vec![b'x'; 400],
        headers: Default::default(),
    };
    let event =
        |kind: &str| NewEvent::new(kind, serde_json::json!({ "saga": saga, "step": kind, "pad": "x".repeat(200) }));
    let start = Commit::append(&stream, ExpectedVersion::NoStream, vec![event("SagaStarted"), event("StepStarted")])
        .with_message(message(&stream))
        .with_timer(TimerChange::Set { key: saga.to_string(), due_at: Utc::now() + chrono::Duration::seconds(30) });
    store.commit(start).await.unwrap();
    let mut version = 2;
    for step in 0..3 {
        let aggregate = format!("agg-{round}-{}-{step}", n % 50);
        let current = store.stream_version(&aggregate).await.unwrap();
        store.read_stream(&aggregate, current.unwrap_or(1).saturating_sub(5).max(1), 10).await.unwrap();
        let effect = Commit::append(&aggregate, ExpectedVersion::from_current(current), vec![event("Reserved")])
            .with_message(message(&stream))
            .processing(format!("participant-{step}"), format!("cmd-{saga}-{step}"));
        store.commit(effect).await.unwrap();
        let lease = Duration::from_secs(30);
        let at = store.hold_outbox("bench-relay", lease).await.unwrap().expect("one relay here");
        if let Some(last) = store.read_outbox(at, 10).await.unwrap().last() {
            store.advance_outbox("bench-relay", last.position(), lease).await.unwrap();
        }
        let mut decision = Commit::append(
            &stream,
            ExpectedVersion::Exact(version),
            vec![event("StepSucceeded"), event("StepStarted")],
        )
        .processing("coordinator", format!("reply-{saga}-{step}"))
        .with_timer(TimerChange::Set { key: saga.to_string(), due_at: Utc::now() + chrono::Duration::seconds(30) });
        if step < 2 {
            decision = decision.with_message(message(&stream));
        }
        store.commit(decision).await.unwrap();
        version += 2;
    }
    let done = Commit::append(&stream, ExpectedVersion::Exact(version), vec![event("SagaCompleted")])
        .with_timer(TimerChange::Cancel { key: saga.to_string() });
    store.commit(done).await.unwrap();
    store.read_stream(&stream, 1, 100).await.unwrap();
    store.due_timers(Utc::now(), 10).await.unwrap();
    let index = store.saga_index();
    let from = index.checkpoint().await.unwrap();
    let to = event_store::AllPosition { global_position: from.global_position + 1, ..from };
    let now = Utc::now();
    let row = SagaRow {
        saga_id: saga,
        definition: "bench".into(),
        definition_version: 1,
        status: "COMPLETED".into(),
        current_step: None,
        started_at: now,
        last_progress_at: now,
        finished_at: Some(now),
        waiting_until: None,
        stuck_after_ms: None,
    };
    index.write(&[row], from, to).await.unwrap();
    index.rows(&[saga]).await.unwrap();
}

async fn counters(admin: &PgPool) -> (f64, f64, f64) {
    let (hits, rows): (i64, i64) =
        sqlx::query_as("SELECT blks_hit, tup_returned FROM pg_stat_database WHERE datname = current_database()")
            .fetch_one(admin)
            .await
            .unwrap();
    let scans: i64 = sqlx::query_scalar("SELECT sum(seq_scan)::int8 FROM pg_stat_user_tables WHERE relname = ANY($1)")
        .bind(TABLES.as_slice())
        .fetch_one(admin)
        .await
        .unwrap();
    (hits as f64, rows as f64, scans as f64)
}

/// Runs [`SAGAS`] sagas' statements on `store` (one connection) and what they cost each.
async fn measure(store: &PgEventStore, admin: &PgPool, round: &str) -> Cost {
    let flush = || async { sqlx::query("SELECT pg_stat_force_next_flush()").execute(store.pool()).await.unwrap() };
    flush().await;
    let (hits, rows, scans) = counters(admin).await;
    let started = Instant::now();
    for n in 0..SAGAS {
        one_saga(store, n, round).await;
    }
    let elapsed = started.elapsed();
    flush().await;
    let (hits_after, rows_after, scans_after) = counters(admin).await;
    let per = SAGAS as f64;
    Cost {
        ms: elapsed.as_secs_f64() * 1e3 / per,
        hits: (hits_after - hits) / per,
        rows: (rows_after - rows) / per,
        seq_scans: (scans_after - scans) / per,
    }
}

/// Grows every hot table to `rows` rows in bulk (no ANALYZE).
async fn grow_to(admin: &PgPool, rows: i64) {
    let have: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(admin).await.unwrap();
    let (from, to) = (have, rows);
    if to <= from {
        return;
    }
    sagaflow_tests::hot_tables::grow(admin, from, to).await;
}

/// Prints the cost per saga at 0, 100,000 and 1,000,000 rows, ours beside generic plans alone.
pub async fn table_growth(db_url: &str) {
    let admin = PgPoolOptions::new().max_connections(1).connect(db_url).await.unwrap();
    // Two connections each: the commit listener holds one, the statements run on the other.
    let ours = PgEventStore::connect_with(db_url, 2).await.unwrap();
    sagaflow_tests::hot_tables::keep_autovacuum_off(&admin).await;
    let generic_only: PgConnectOptions =
        db_url.parse::<PgConnectOptions>().unwrap().options([("plan_cache_mode", "force_generic_plan")]);
    let pool = PgPoolOptions::new().max_connections(2).connect_with(generic_only).await.unwrap();
    let plain = PgEventStore::from_pool(pool).await.unwrap();
    // A new deployment: the first sagas plan every statement on small tables, which autovacuum
    // (or an ANALYZE) then describes as small.
    let stores: [(&str, &PgEventStore); 2] = [("ours", &ours), ("generic plans alone", &plain)];
    for (label, store) in &stores {
        for n in 0..20 {
            one_saga(store, n, &format!("warm-{label}")).await;
        }
    }
    sqlx::query(&format!("ANALYZE {}", TABLES.join(", "))).execute(&admin).await.unwrap();
    println!(
        "\nOne saga's statements as the tables grow, on connections that planned them on small tables \
         (per saga: ms on one connection, buffer hits, rows returned, sequential scans of the hot tables)"
    );
    println!("{:>10} | {:^34} | {:^34}", "events", "ours", "generic plans alone (before)");
    let mut first: Option<(Cost, Cost)> = None;
    for rows in [0_i64, 100_000, 1_000_000] {
        grow_to(&admin, rows).await;
        let mut costs = [Cost::default(); 2];
        for (i, (label, store)) in stores.iter().enumerate() {
            costs[i] = measure(store, &admin, &format!("{label}-{rows}")).await;
        }
        println!("{:>10} | {} | {}", thousands(rows as f64), costs[0].cell(), costs[1].cell());
        let (base_ours, base_plain) = *first.get_or_insert((costs[0], costs[1]));
        if rows == 1_000_000 {
            println!(
                "1,000,000 / 0 events: ours {:.2}× the time, {:.2}× the buffer hits; generic plans alone {:.2}× the time, {:.2}× the buffer hits",
                costs[0].ms / base_ours.ms.max(1e-9),
                costs[0].hits / base_ours.hits.max(1e-9),
                costs[1].ms / base_plain.ms.max(1e-9),
                costs[1].hits / base_plain.hits.max(1e-9),
            );
        }
    }
}
