//! Retention on tables of millions of rows, beside the raw limit (one plain DELETE per table).

use std::sync::Arc;
use std::time::{Duration, Instant};

use event_store::{EventStore, EventStoreExt, ExpectedVersion, NewEvent};
use serde_json::json;
use sqlx::{Connection, Executor, PgConnection};

use crate::fresh_postgres;
use crate::stats::percentile;
use sagaflow_tests::hot_tables::PUBLISH_ALL;

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
pub async fn retention(url: &str, rows: i64) {
    let (store, db, _) = fresh_postgres(url).await.expect("a bench database on DATABASE_URL");
    let base = url.rsplit_once('/').map_or(url, |(b, _)| b);
    let mut conn = PgConnection::connect(&format!("{base}/{db}")).await.unwrap();
    let fill = format!(
        "INSERT INTO outbox (topic, msg_key, payload, created_at)
         SELECT 'bench', g::text, convert_to(repeat('x', 200), 'UTF8'), now() - interval '2 days'
         FROM generate_series(1, {rows}) g;
         {PUBLISH_ALL};
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
            "DELETE FROM outbox WHERE created_at < now() - interval '1 day';
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
