//! Event-store appends and reads at several writer counts, side by side with the raw limit
//! (equivalent plain INSERTs and SELECTs over sqlx, no engine code) and the peer postgres-es.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use event_store::{EventStore, EventStoreExt, ExpectedVersion, NewEvent};
use serde_json::json;
use sqlx::{Executor, PgPool};

use crate::stats::{for_duration, Figure};

/// The workloads, in the peer's names.
pub const WORKLOADS: [&str; 4] = ["append_new", "append_existing", "append_batch10", "read20"];

/// A table shaped like `events` with its unique keys, for the raw limit.
const RAW_TABLE: &str = "CREATE TABLE IF NOT EXISTS raw_events (
    global_position BIGSERIAL PRIMARY KEY, event_id UUID NOT NULL UNIQUE, stream_id TEXT NOT NULL,
    version BIGINT NOT NULL, event_type TEXT NOT NULL, data JSONB NOT NULL,
    metadata JSONB NOT NULL DEFAULT '{}', recorded_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (stream_id, version))";

fn payload(w: usize, i: usize) -> serde_json::Value {
    json!({ "sku": "SKU-1", "quantity": 2, "order_id": format!("{w}-{i}") })
}

/// Where each run's streams live, so runs never collide.
fn run_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// Streams of 20 events each, prepared for the read workload.
const READ_STREAMS: usize = 500;

/// Ours: the event store's trait, as the engine uses it.
pub async fn ours(store: Arc<dyn EventStore>, workload: &str, writers: usize, duration: Duration) -> Figure {
    let run = run_id();
    let warmup = Duration::from_millis(500);
    match workload {
        "append_new" => {
            for_duration(writers, warmup, duration, move |w, i| {
                let (store, stream) = (Arc::clone(&store), format!("new-{run}-{w}-{i}"));
                async move {
                    let event = NewEvent::new("StockReserved", payload(w, i));
                    store.append(&stream, ExpectedVersion::NoStream, vec![event]).await.unwrap();
                    1
                }
            })
            .await
        }
        "append_existing" => {
            for w in 0..writers {
                let event = NewEvent::new("StockSet", payload(w, 0));
                store.append(&format!("existing-{run}-{w}"), ExpectedVersion::NoStream, vec![event]).await.unwrap();
            }
            for_duration(writers, warmup, duration, move |w, i| {
                let (store, stream) = (Arc::clone(&store), format!("existing-{run}-{w}"));
                async move {
                    // Each writer owns its stream: version i + 1 is the current one.
                    let event = NewEvent::new("StockReserved", payload(w, i));
                    store.append(&stream, ExpectedVersion::Exact(i as u64 + 1), vec![event]).await.unwrap();
                    1
                }
            })
            .await
        }
        "append_batch10" => {
            for_duration(writers, warmup, duration, move |w, i| {
                let (store, stream) = (Arc::clone(&store), format!("batch-{run}-{w}-{i}"));
                async move {
                    let events = (0..10).map(|k| NewEvent::new("StockReserved", payload(w, i * 10 + k))).collect();
                    store.append(&stream, ExpectedVersion::NoStream, events).await.unwrap();
                    10
                }
            })
            .await
        }
        "read20" => {
            for s in 0..READ_STREAMS {
                let events = (0..20).map(|k| NewEvent::new("StockReserved", payload(s, k))).collect();
                store.append(&format!("read-{run}-{s}"), ExpectedVersion::NoStream, events).await.unwrap();
            }
            for_duration(writers, warmup, duration, move |w, i| {
                let (store, stream) = (Arc::clone(&store), format!("read-{run}-{}", (w * 7919 + i) % READ_STREAMS));
                async move { store.read_stream(&stream, 1, 20).await.unwrap().len() }
            })
            .await
        }
        other => panic!("unknown workload {other}"),
    }
}

/// The raw limit: the same rows written and read with plain SQL, each statement its own
/// transaction (a 10-event batch is one multi-row INSERT).
pub async fn raw(pool: PgPool, workload: &str, writers: usize, duration: Duration) -> Figure {
    pool.execute(RAW_TABLE).await.unwrap();
    let run = run_id();
    let warmup = Duration::from_millis(500);
    let insert = "INSERT INTO raw_events (event_id, stream_id, version, event_type, data)
                  SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::int8[], $4::text[], $5::jsonb[])
                  RETURNING global_position";
    let rows = move |pool: PgPool, stream: String, first_version: i64, n: usize, w: usize, i: usize| async move {
        let ids: Vec<uuid::Uuid> = (0..n).map(|_| uuid::Uuid::now_v7()).collect();
        let streams = vec![stream; n];
        let versions: Vec<i64> = (0..n as i64).map(|k| first_version + k).collect();
        let types = vec!["StockReserved".to_owned(); n];
        let data: Vec<serde_json::Value> = (0..n).map(|k| payload(w, i * n + k)).collect();
        sqlx::query(insert)
            .bind(ids)
            .bind(streams)
            .bind(versions)
            .bind(types)
            .bind(data)
            .fetch_all(&pool)
            .await
            .unwrap()
            .len()
    };
    match workload {
        "append_new" => {
            for_duration(writers, warmup, duration, move |w, i| {
                rows(pool.clone(), format!("new-{run}-{w}-{i}"), 1, 1, w, i)
            })
            .await
        }
        "append_existing" => {
            for w in 0..writers {
                rows(pool.clone(), format!("existing-{run}-{w}"), 1, 1, w, 0).await;
            }
            for_duration(writers, warmup, duration, move |w, i| {
                rows(pool.clone(), format!("existing-{run}-{w}"), i as i64 + 2, 1, w, i)
            })
            .await
        }
        "append_batch10" => {
            for_duration(writers, warmup, duration, move |w, i| {
                rows(pool.clone(), format!("batch-{run}-{w}-{i}"), 1, 10, w, i)
            })
            .await
        }
        "read20" => {
            for s in 0..READ_STREAMS {
                rows(pool.clone(), format!("read-{run}-{s}"), 1, 20, s, 0).await;
            }
            for_duration(writers, warmup, duration, move |w, i| {
                let (pool, stream) = (pool.clone(), format!("read-{run}-{}", (w * 7919 + i) % READ_STREAMS));
                async move {
                    sqlx::query(
                        "SELECT global_position, event_id, stream_id, version, event_type, data, metadata, recorded_at
                         FROM raw_events WHERE stream_id = $1 AND version >= 1 ORDER BY version LIMIT 20",
                    )
                    .bind(stream)
                    .fetch_all(&pool)
                    .await
                    .unwrap()
                    .len()
                }
            })
            .await
        }
        other => panic!("unknown workload {other}"),
    }
}

/// The peer's figures for one writer count, by workload: runs the peer bench binary
/// (`tests/peer-postgres-es`, built beforehand) against the same server.
pub fn peer(binary: &std::path::Path, url: &str, writers: usize, duration: Duration) -> HashMap<String, Figure> {
    let output = std::process::Command::new(binary)
        .args(["--writers", &writers.to_string(), "--seconds", &duration.as_secs_f64().to_string()])
        .env("DATABASE_URL", url)
        .stderr(std::process::Stdio::inherit())
        .output();
    let Ok(output) = output else { return HashMap::new() };
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|v| {
            let ms = |key: &str| Duration::from_secs_f64(v[key].as_f64().unwrap_or(0.0) / 1e3);
            // The peer reports p50 and p99 only; they stand in for its distribution.
            let figure =
                Figure { per_s: v["events_per_s"].as_f64()?, latencies: peer_latencies(ms("p50_ms"), ms("p99_ms")) };
            Some((v["workload"].as_str()?.to_owned(), figure))
        })
        .collect()
}

/// A sorted latency list whose p50 and p99 are the given ones.
fn peer_latencies(p50: Duration, p99: Duration) -> Vec<Duration> {
    let mut latencies = vec![p50; 99];
    latencies.push(p99);
    latencies[98] = p99;
    latencies.sort();
    latencies
}
