//! `cargo run --release -p sagaflow-tests --bin bench` prints Sagaflow's figures:
//! event-store append rates and latencies (PostgreSQL, SQLite), and end-to-end order sagas
//! per second with their latency, embedded and over PostgreSQL + Kafka. Needs
//! `DATABASE_URL` and `KAFKA_BOOTSTRAP_SERVERS` for the PostgreSQL/Kafka figures
//! (`eval "$(scripts/services.sh)"`); without them only the embedded figures are printed.
//! `bench retention` prints only the retention figures (batched deletes on millions of rows).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_precision_loss)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use api::server::{self, EngineOptions, Roles};
use engine::coordinator::saga_stream;
use engine::topics::Topics;
use engine::transport::in_process::InProcessTransport;
use engine::transport::Transport;
use event_store::postgres::PgEventStore;
use event_store::sqlite::SqliteEventStore;
use event_store::{EventStore, EventStoreExt, ExpectedVersion, NewEvent};
use rust_decimal::Decimal;
use sagas::order_input::{NewOrder, OrderLine};
use sagas::order_view::OrderViewStatus;
use serde_json::json;
use sqlx::{Connection, Executor, PgConnection};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn report(name: &str, count: usize, elapsed: Duration, mut latencies: Vec<Duration>) -> f64 {
    latencies.sort();
    println!(
        "{name:<44} {count:>6} in {:>7.2} s = {:>8.0}/s   p50 {:>7.2} ms   p99 {:>7.2} ms",
        elapsed.as_secs_f64(),
        count as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
    );
    count as f64 / elapsed.as_secs_f64()
}

/// Runs `writers` tasks that each call `one(writer, i)` `per_writer` times; reports and
/// returns the rate.
async fn run_writers<F, Fut>(label: &str, writers: usize, per_writer: usize, one: F) -> f64
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let one = Arc::new(one);
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let one = Arc::clone(&one);
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_writer);
                for i in 0..per_writer {
                    let begun = Instant::now();
                    one(w, i).await;
                    latencies.push(begun.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    report(label, writers * per_writer, start.elapsed(), latencies)
}

async fn appends(name: &str, store: Arc<dyn EventStore>, writers: usize, per_writer: usize) -> f64 {
    let stream_prefix = format!("bench-{name}-{writers}");
    run_writers(&format!("append, {name}, {writers} writer(s)"), writers, per_writer, move |w, i| {
        let (store, stream) = (Arc::clone(&store), format!("{stream_prefix}-{w}-{i}"));
        async move {
            let event = NewEvent::new("Benchmarked", json!({ "writer": w, "i": i }));
            store.append(&stream, ExpectedVersion::NoStream, vec![event]).await.unwrap();
        }
    })
    .await
}

/// The raw limit of a single-event append: one plain INSERT (its own transaction) into a
/// table shaped like `events`, over sqlx, with no engine code.
async fn raw_appends(pool: sqlx::PgPool, writers: usize, per_writer: usize) -> f64 {
    run_writers(&format!("append, raw INSERT, {writers} writer(s)"), writers, per_writer, move |w, i| {
        let pool = pool.clone();
        async move {
            sqlx::query(
                "INSERT INTO raw_events (event_id, stream_id, version, event_type, data)
                 VALUES ($1, $2, 1, 'Benchmarked', $3) RETURNING global_position",
            )
            .bind(uuid::Uuid::now_v7())
            .bind(format!("raw-{writers}-{w}-{i}"))
            .bind(json!({ "writer": w, "i": i }))
            .fetch_one(&pool)
            .await
            .unwrap();
        }
    })
    .await
}

async fn orders(name: &str, store: Arc<dyn EventStore>, transport: Arc<dyn Transport>, count: usize) {
    let prefix = format!("bench{}", uuid::Uuid::now_v7().simple());
    let engine = server::start(
        Arc::clone(&store),
        transport,
        Topics::new(prefix.clone()),
        Roles::ALL,
        EngineOptions::new(format!("{prefix}.")),
    )
    .await
    .unwrap();
    let state = engine.state.clone();
    let repo = engine::Repository::<sagas::inventory::Inventory>::new(Arc::clone(&store));
    repo.execute("B", &sagas::inventory::InventoryCommand::SetStock { available: 1_000_000 }).await.unwrap();
    let credit = engine::Repository::<sagas::credit::CustomerCredit>::new(Arc::clone(&store));
    credit
        .execute("bench", &sagas::credit::CreditCommand::SetLimit { limit: Decimal::from(1_000_000_000) })
        .await
        .unwrap();
    let start = Instant::now();
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        let order = NewOrder {
            customer_id: "bench".into(),
            items: vec![OrderLine { sku: "B".into(), quantity: 1, unit_price: Decimal::new(199, 2) }],
        };
        ids.push(state.orders.submit(order).await.unwrap());
    }
    let mut latencies = Vec::with_capacity(count);
    for submitted in &ids {
        loop {
            let view = state.orders.view(&submitted.order_id).await.unwrap().unwrap();
            if view.status.is_terminal() {
                assert_eq!(view.status, OrderViewStatus::Approved);
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let events = store.read_stream_to_end(&saga_stream(submitted.saga_id), 1).await.unwrap();
        let (first, last) = (events.first().unwrap(), events.last().unwrap());
        latencies.push((last.recorded_at - first.recorded_at).to_std().unwrap_or_default());
    }
    report(&format!("order sagas, burst of {count}, {name}"), count, start.elapsed(), latencies);

    // One order at a time: the latency of a saga on an idle engine.
    let start = Instant::now();
    let mut latencies = Vec::new();
    for _ in 0..20 {
        let begun = Instant::now();
        let order = NewOrder {
            customer_id: "bench".into(),
            items: vec![OrderLine { sku: "B".into(), quantity: 1, unit_price: Decimal::new(199, 2) }],
        };
        let submitted = state.orders.submit(order).await.unwrap();
        while !state.orders.view(&submitted.order_id).await.unwrap().unwrap().status.is_terminal() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        latencies.push(begun.elapsed());
    }
    report(&format!("order saga, one at a time, {name}"), 20, start.elapsed(), latencies);
    engine.runtime.shutdown().await;
}

async fn fresh_postgres(url: &str) -> Option<(Arc<dyn EventStore>, String)> {
    let mut admin = PgConnection::connect(url).await.ok()?;
    let db = format!("sagaflow_bench_{}", uuid::Uuid::now_v7().simple());
    admin.execute(format!("CREATE DATABASE {db}").as_str()).await.ok()?;
    let base = url.rsplit_once('/').map_or(url, |(b, _)| b);
    let store = PgEventStore::connect(&format!("{base}/{db}")).await.ok()?;
    Some((Arc::new(store), db))
}

/// Runs `work` while one writer keeps appending single events to `store`; returns what
/// `work` returned and the writer's latencies, sorted.
async fn with_writer<T>(store: &Arc<dyn EventStore>, work: impl std::future::Future<Output = T>) -> (T, Vec<Duration>) {
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = {
        let (store, stop) = (Arc::clone(store), stop.clone());
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            while !stop.is_cancelled() {
                let begun = Instant::now();
                let event = NewEvent::new("Benchmarked", json!({ "i": latencies.len() }));
                let stream = format!("retention-writer-{}", uuid::Uuid::now_v7());
                store.append(&stream, ExpectedVersion::NoStream, vec![event]).await.unwrap();
                latencies.push(begun.elapsed());
            }
            latencies
        })
    };
    let out = work.await;
    stop.cancel();
    let mut latencies = writer.await.unwrap();
    latencies.sort();
    (out, latencies)
}

fn writer_figures(latencies: &[Duration]) -> String {
    format!(
        "writer p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(latencies, 0.5).as_secs_f64() * 1e3,
        percentile(latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    )
}

/// Retention on tables of millions of rows: `rows` published outbox rows (200-byte payloads)
/// and `rows` processed-message records, all past retention, deleted by the engine (batches
/// of 5,000) and, after a refill, by the raw limit (one plain DELETE per table), each while a
/// writer keeps appending. Prints rows/s, the ratio ours/raw and the writer's latency.
async fn retention(url: &str, rows: i64) {
    let (store, db) = fresh_postgres(url).await.expect("a bench database on DATABASE_URL");
    let base = url.rsplit_once('/').map_or(url, |(b, _)| b);
    let mut conn = PgConnection::connect(&format!("{base}/{db}")).await.unwrap();
    let fill = format!(
        "INSERT INTO outbox (topic, msg_key, payload, published_at, created_at)
         SELECT 'bench', g::text, convert_to(repeat('x', 200), 'UTF8'), now() - interval '2 days', now() - interval '2 days'
         FROM generate_series(1, {rows}) g;
         INSERT INTO processed_messages (consumer, message_id, processed_at)
         SELECT 'bench', g::text, now() - interval '9 days' FROM generate_series(1, {rows}) g;
         ANALYZE outbox; ANALYZE processed_messages;"
    );
    let (_, alone) = with_writer(&store, tokio::time::sleep(Duration::from_secs(3))).await;
    println!("retention: {rows} outbox rows + {rows} processed records; writer alone: {}", writer_figures(&alone));

    conn.execute(fill.as_str()).await.unwrap();
    let policy = engine::retention::Retention::default();
    let never = tokio_util::sync::CancellationToken::new();
    let started = Instant::now();
    let (pruned, ours) = with_writer(&store, engine::retention::prune(store.as_ref(), &policy, &never)).await;
    let ours_took = started.elapsed();
    let pruned = pruned.unwrap();
    let deleted = (pruned.outbox + pruned.processed) as f64;

    conn.execute(fill.as_str()).await.unwrap();
    let raw = async {
        conn.execute(
            "DELETE FROM outbox WHERE published_at < now() - interval '1 day';
             DELETE FROM processed_messages WHERE processed_at < now() - interval '8 days';",
        )
        .await
        .unwrap()
    };
    let started = Instant::now();
    let (_, raw_latencies) = with_writer(&store, raw).await;
    let raw_took = started.elapsed();
    println!(
        "retention, ours (batches of {}): {deleted:.0} rows in {:.1} s = {:.0} rows/s; {}",
        policy.batch,
        ours_took.as_secs_f64(),
        deleted / ours_took.as_secs_f64(),
        writer_figures(&ours)
    );
    println!(
        "retention, raw (one DELETE per table): {:.0} rows in {:.1} s = {:.0} rows/s; {}",
        2.0 * rows as f64,
        raw_took.as_secs_f64(),
        2.0 * rows as f64 / raw_took.as_secs_f64(),
        writer_figures(&raw_latencies)
    );
    println!(
        "retention: ours/raw throughput {:.2}",
        (deleted / ours_took.as_secs_f64()) / (2.0 * rows as f64 / raw_took.as_secs_f64())
    );
    drop(conn);
    drop(store);
    if let Ok(mut admin) = PgConnection::connect(url).await {
        let _ = admin.execute(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)").as_str()).await;
    }
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        .map_or(0.0, |kb| kb / 1024.0)
}

#[tokio::main]
async fn main() {
    println!("sagaflow bench ({} build)", if cfg!(debug_assertions) { "debug" } else { "release" });
    if std::env::args().nth(1).as_deref() == Some("retention") {
        let url = std::env::var("DATABASE_URL").expect("DATABASE_URL for the retention figures");
        retention(&url, 2_000_000).await;
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sqlite: Arc<dyn EventStore> = Arc::new(SqliteEventStore::open(dir.path()).await.unwrap());
    appends("sqlite", Arc::clone(&sqlite), 1, 1000).await;
    appends("sqlite", Arc::clone(&sqlite), 8, 250).await;
    orders("embedded (sqlite, in-process)", sqlite, Arc::new(InProcessTransport::new()), 500).await;

    let (Ok(url), Ok(_)) = (std::env::var("DATABASE_URL"), std::env::var("KAFKA_BOOTSTRAP_SERVERS")) else {
        println!("DATABASE_URL / KAFKA_BOOTSTRAP_SERVERS not set: PostgreSQL and Kafka figures skipped");
        println!("peak RSS {:.1} MiB", peak_rss_mib());
        return;
    };
    let (pg, db) = fresh_postgres(&url).await.expect("a bench database on DATABASE_URL");
    let base = url.rsplit_once('/').map_or(url.as_str(), |(b, _)| b);
    let raw_pool = sqlx::PgPool::connect(&format!("{base}/{db}")).await.unwrap();
    raw_pool
        .execute(
            "CREATE TABLE raw_events (global_position BIGSERIAL PRIMARY KEY, event_id UUID NOT NULL UNIQUE,
               stream_id TEXT NOT NULL, version BIGINT NOT NULL, event_type TEXT NOT NULL, data JSONB NOT NULL,
               metadata JSONB NOT NULL DEFAULT '{}', recorded_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
               UNIQUE (stream_id, version))",
        )
        .await
        .unwrap();
    for (writers, per_writer) in [(1, 1000), (8, 250)] {
        let raw = raw_appends(raw_pool.clone(), writers, per_writer).await;
        let ours = appends("postgres", Arc::clone(&pg), writers, per_writer).await;
        println!("append, {writers} writer(s): ours/raw {:.2}", ours / raw);
    }
    raw_pool.close().await;
    orders("postgres + kafka", pg, sagaflow_tests::kafka_transport(), 500).await;
    println!("peak RSS {:.1} MiB", peak_rss_mib());
    retention(&url, 2_000_000).await;
    if let Ok(mut admin) = PgConnection::connect(&url).await {
        let _ = admin.execute(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)").as_str()).await;
    }
}
