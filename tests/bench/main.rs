//! `cargo run --release -p sagaflow-tests --bin bench [section …]` prints Sagaflow's figures,
//! each beside the limit of this machine measured in the same run, and the ratios:
//! - `appends`: event-store appends and reads at 1, 4, 16 and 64 writers, ours against the
//!   raw limit (plain INSERTs/SELECTs over sqlx) and the peer postgres-es;
//! - `replay`: loading a 100,000-event aggregate, with and without a snapshot;
//! - `broker`: the Kafka-protocol broker alone (rdkafka, no engine);
//! - `sagas`: order sagas over HTTP against the real binary, PostgreSQL + Kafka and
//!   embedded: one saga alone, then rising fixed rates until p99 POST → terminal ≥ 250 ms;
//! - `retention`: batched deletes on millions of rows;
//! - `growth`: one saga's statements on a database of 0, 100,000 and 1,000,000 events, on
//!   connections that planned them while the tables were small;
//! - `index`: filtered pages of a saga index of 1,000,000 sagas (`BENCH_INDEX_SAGAS`);
//! - `edges`: reads and appends over HTTP with authentication and the rate limit on, beside
//!   the same with them off.
//!
//! No section named: all of them. Needs `DATABASE_URL` and `KAFKA_BOOTSTRAP_SERVERS`
//! (`eval "$(scripts/services.sh)"`). `BENCH_SECONDS` (default 3) is the time of each
//! append workload, `BENCH_HTTP_SECONDS` (default 60) of each offered rate, and
//! `BENCH_RATES` the rates offered (default 100,200,400,700,1000,1400); `BENCH_KEEP_DB` keeps
//! the bench databases for a look afterwards; `BENCH_WRITERS` (default 1,4,16,64) the writer counts;
//! `BENCH_OURS_ONLY` skips the raw limit and the peer (for profiling ours); `BENCH_BACKENDS`
//! (`postgres` or `embedded`) runs the saga figures of one backend only; `BENCH_PG_TOP=n`
//! prints, per offered rate, the n statements run most per saga (`pg_stat_statements`);
//! `BENCH_SAGAFLOW_BINARY` runs the saga figures against another build of `sagaflow`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::cast_precision_loss)]
#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

mod appends;
mod broker;
mod cpu;
mod edges;
mod http_load;
mod replay;
mod retention;
mod saga_index;
mod stats;
mod table_growth;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_store::postgres::PgEventStore;
use event_store::EventStore;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, Executor, PgConnection};

use crate::stats::{thousands, Figure};

/// The engine's Kafka fetch wait in the bench (`BENCH_FETCH_WAIT`, default 5ms): nisshi
/// answers a fetch only when the wait is over, so this bounds every hop.
pub fn fetch_wait() -> String {
    std::env::var("BENCH_FETCH_WAIT").unwrap_or_else(|_| "5ms".into())
}
/// A rate is sustained while p99 POST → terminal stays under this.
pub const P99_BOUND_MS: f64 = 250.0;
const WRITERS: [usize; 4] = [1, 4, 16, 64];

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Peak resident memory of a process, from `/proc/<pid>/status`.
pub fn peak_rss_mib_of(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A new database on the server of `url`, migrated; the store, its name and its URL.
pub async fn fresh_postgres(url: &str) -> Option<(Arc<dyn EventStore>, String, String)> {
    let (db, db_url) = empty_database(url).await?;
    // As many connections as the most writers, like the raw limit and the peer get.
    let store = PgEventStore::connect_with(&db_url, 64).await.ok()?;
    Some((Arc::new(store), db, db_url))
}

/// A new database with nothing in it (an engine started on it migrates it): its name and URL.
async fn empty_database(url: &str) -> Option<(String, String)> {
    let mut admin = PgConnection::connect(url).await.ok()?;
    let db = format!("sagaflow_bench_{}", uuid::Uuid::now_v7().simple());
    admin.execute(format!("CREATE DATABASE {db}").as_str()).await.ok()?;
    let base = url.rsplit_once('/').map_or(url, |(b, _)| b);
    Some((db.clone(), format!("{base}/{db}")))
}

async fn drop_database(url: &str, db: &str) {
    if std::env::var_os("BENCH_KEEP_DB").is_some() {
        println!("(kept database {db})");
        return;
    }
    if let Ok(mut admin) = PgConnection::connect(url).await {
        let _ = admin.execute(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)").as_str()).await;
    }
}

/// Builds a binary with cargo (release) and returns its path.
fn build(args: &[&str], binary: PathBuf) -> Option<PathBuf> {
    // The toolchain's own rustc: through rustup's proxy, a dependency's rust-toolchain file
    // (sqlx ships one) would pick a toolchain that may not be installed.
    let cargo = Path::new(env!("CARGO"));
    let mut command = std::process::Command::new(cargo);
    if let Some(rustc) = cargo.parent().map(|bin| bin.join("rustc")).filter(|r| r.exists()) {
        command.env("RUSTC", rustc);
    }
    let status = command.args(["build", "--release", "--quiet"]).args(args).status();
    (status.is_ok_and(|s| s.success()) && binary.exists()).then_some(binary)
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn ratio(ours: &Figure, other: Option<&Figure>) -> String {
    other.filter(|o| o.per_s > 0.0).map_or_else(|| "    -".to_owned(), |o| format!("{:>5.2}", ours.per_s / o.per_s))
}

async fn appends_section(url: &str, seconds: u64) {
    let (store, db, db_url) = fresh_postgres(url).await.expect("a bench database on DATABASE_URL");
    let pool = PgPoolOptions::new().max_connections(64).connect(&db_url).await.unwrap();
    let peer = build(
        &["--manifest-path", "tests/peer-postgres-es/Cargo.toml", "--target-dir", "target/peer"],
        workspace().join("target/peer/release/peer-postgres-es"),
    );
    if peer.is_none() {
        println!("(the peer postgres-es could not be built: its column is empty)");
    }
    let duration = Duration::from_secs(seconds);
    println!("\nEvent store on PostgreSQL: events/s, p50 and p99 ms per call ({seconds} s per cell)");
    println!(
        "{:<16} {:>7} | {:^25} | {:^25} | {:^25} | ours/raw ours/peer",
        "workload", "writers", "ours", "raw limit (sqlx)", "postgres-es"
    );
    let mut rows = Vec::new();
    let writer_counts: Vec<usize> = std::env::var("BENCH_WRITERS")
        .map_or_else(|_| WRITERS.to_vec(), |v| v.split(',').filter_map(|w| w.trim().parse().ok()).collect());
    for writers in writer_counts {
        let ours_only = std::env::var_os("BENCH_OURS_ONLY").is_some();
        let peer_figures = match peer.as_deref() {
            Some(p) if !ours_only => appends::peer(p, url, writers, duration),
            _ => std::collections::HashMap::new(),
        };
        for workload in appends::WORKLOADS {
            let raw = if ours_only {
                Figure::default()
            } else {
                appends::raw(pool.clone(), workload, writers, duration).await
            };
            let ours = appends::ours(Arc::clone(&store), workload, writers, duration).await;
            let peer = peer_figures.get(workload);
            println!(
                "{workload:<16} {writers:>7} | {} | {} | {} | {}    {}",
                ours.cell(),
                raw.cell(),
                peer.map_or_else(|| format!("{:^25}", "-"), Figure::cell),
                ratio(&ours, Some(&raw)),
                ratio(&ours, peer)
            );
            rows.push((workload, writers, ours.per_s / raw.per_s.max(1e-9)));
        }
    }
    let worst = rows.iter().map(|r| r.2).fold(f64::MAX, f64::min);
    println!("lowest ours/raw: {worst:.2}");
    pool.close().await;
    drop(store);
    drop_database(url, &db).await;
}

async fn index_section(url: &str) {
    let (store, db, db_url) = fresh_postgres(url).await.expect("a bench database on DATABASE_URL");
    let pool = PgPoolOptions::new().max_connections(2).connect(&db_url).await.unwrap();
    saga_index::saga_index(store, pool.clone(), env_u64("BENCH_INDEX_SAGAS", 1_000_000)).await;
    pool.close().await;
    drop_database(url, &db).await;
}

async fn growth_section(url: &str) {
    let (store, db, db_url) = fresh_postgres(url).await.expect("a bench database on DATABASE_URL");
    drop(store);
    table_growth::table_growth(&db_url).await;
    drop_database(url, &db).await;
}

async fn replay_section(url: &str) {
    let (store, db, db_url) = fresh_postgres(url).await.expect("a bench database on DATABASE_URL");
    let pool = PgPoolOptions::new().max_connections(2).connect(&db_url).await.unwrap();
    let figures = replay::replay(store, pool.clone(), 100_000).await;
    println!(
        "\nReplay of a {}-event aggregate: {:.1} ms full, {:.2} ms from a snapshot; raw SELECT + JSON decode {:.1} ms (ours/raw time {:.2})",
        thousands(figures.events as f64),
        figures.full_ms,
        figures.snapshot_ms,
        figures.raw_ms,
        figures.full_ms / figures.raw_ms.max(1e-9)
    );
    pool.close().await;
    drop_database(url, &db).await;
}

async fn broker_section(bootstrap: &str) -> f64 {
    let mut cpu = cpu::CpuMeter::new(None);
    let figures = broker::raw_limit(bootstrap, 40_000, 600, &mut cpu).await;
    println!(
        "\nBroker alone (rdkafka, 600-byte messages, 6 partitions): {} msgs/s produced and consumed ({} order sagas/s at 8 messages each); cpu: {}",
        thousands(figures.throughput.per_s),
        thousands(figures.throughput.per_s / 8.0),
        figures.cpu
    );
    println!(
        "Broker hop, one message at a time (produce → consumed): p50 {:.1} ms, p99 {:.1} ms",
        figures.hop.p50_ms(),
        figures.hop.p99_ms()
    );
    println!(
        "Broker, batches of 200 each acknowledged before the next (the relay's pattern): {} msgs/s, p50 {:.1} ms per batch",
        thousands(figures.batches.per_s),
        figures.batches.p50_ms()
    );
    figures.throughput.per_s / 8.0
}

async fn alone(engine: &http_load::Engine, label: &str) {
    let client = reqwest::Client::new();
    let mut latencies = Vec::new();
    let started = Instant::now();
    // The first saga also waits for the consumer groups to form: not counted.
    for i in 0..51 {
        let begun = Instant::now();
        let order = serde_json::json!({
            "customer_id": format!("c-{}", i % 50),
            "items": [{ "sku": format!("SKU-{}", i % 50), "quantity": 1, "unit_price": "1.99" }],
        });
        let submitted: serde_json::Value =
            client.post(format!("{}/orders", engine.base)).json(&order).send().await.unwrap().json().await.unwrap();
        let id = submitted["order_id"].as_str().unwrap().to_owned();
        let view: serde_json::Value =
            client.get(format!("{}/orders/{id}?wait=30", engine.base)).send().await.unwrap().json().await.unwrap();
        assert_eq!(view["status"], "APPROVED");
        if i > 0 {
            latencies.push(begun.elapsed());
        }
        // An idle engine between sagas.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let figure = Figure::rate(50, started.elapsed(), latencies);
    println!("{label}: one saga alone, POST → APPROVED: p50 {:.1} ms, p99 {:.1} ms", figure.p50_ms(), figure.p99_ms());
}

/// The `sagaflow` binary, built for release.
fn sagaflow_binary() -> PathBuf {
    // Another build of the engine (say, the one before a change), measured by this bench.
    if let Some(other) = std::env::var_os("BENCH_SAGAFLOW_BINARY") {
        return PathBuf::from(other);
    }
    build(&["-p", "sagaflow-api", "--bin", "sagaflow"], workspace().join("target/release/sagaflow"))
        .expect("the sagaflow binary builds")
}

/// Where the engines the bench starts write their logs.
fn bench_logs() -> PathBuf {
    let logs = workspace().join("target/tmp/bench");
    std::fs::create_dir_all(&logs).unwrap();
    logs
}

async fn sagas_section(url: &str, bootstrap: &str, broker_bound: Option<f64>) {
    let binary = sagaflow_binary();
    let seconds = env_u64("BENCH_HTTP_SECONDS", 60);
    let rates: Vec<u32> = std::env::var("BENCH_RATES")
        .unwrap_or_else(|_| "100,200,400,700,1000,1400".into())
        .split(',')
        .filter_map(|r| r.trim().parse().ok())
        .collect();
    let logs = bench_logs();
    println!("\nOrder sagas over HTTP (POST /orders, then GET ?wait=30 to the end; {seconds} s per rate, p99 bound {P99_BOUND_MS} ms)");
    if let Some(bound) = broker_bound {
        println!("(the broker alone bounds PostgreSQL + Kafka at about {}/s)", thousands(bound));
    }
    // Empty: the engine migrates it, whichever build it is (`BENCH_SAGAFLOW_BINARY`).
    let (db, db_url) = empty_database(url).await.expect("a bench database on DATABASE_URL");
    let data = tempfile::tempdir().unwrap();
    let backends = [
        (
            "PostgreSQL + Kafka",
            http_load::Backend::PostgresKafka { database_url: db_url, bootstrap: bootstrap.to_owned() },
        ),
        ("embedded (SQLite, in-process)", http_load::Backend::Embedded { data_dir: data.path().to_path_buf() }),
    ];
    let only = std::env::var("BENCH_BACKENDS").unwrap_or_default();
    for (label, backend) in backends.iter().filter(|(label, _)| only.is_empty() || label.to_lowercase().contains(&only))
    {
        println!("{label}:");
        {
            let engine = http_load::Engine::start(&binary, backend, &logs.join("alone.log")).await;
            engine.prepare(&reqwest::Client::new()).await;
            alone(&engine, label).await;
            let mut cpu = cpu::CpuMeter::new(Some(engine.pid()));
            cpu.start();
            tokio::time::sleep(Duration::from_secs(5)).await;
            println!("{label}: idle for 5 s, cpu: {}", cpu.stop(Duration::from_secs(5)));
        }
        {
            // The same with every span exported over OTLP, to a receiver in the bench.
            let (endpoint, exports) = sagaflow_tests::otlp::receiver().await;
            let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint), ("OTEL_BSP_SCHEDULE_DELAY", "200".to_owned())];
            let engine = http_load::Engine::start_with(&binary, backend, &logs.join("traced.log"), &env).await;
            engine.prepare(&reqwest::Client::new()).await;
            alone(&engine, &format!("{label}, spans exported")).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let exports = exports.lock().unwrap();
            println!(
                "{label}, spans exported: {} spans in {} OTLP exports, {} KiB",
                exports.spans.len(),
                exports.requests,
                exports.bytes / 1024
            );
        }
        let log = logs.join(format!("{}.log", label.split_whitespace().next().unwrap_or("engine")));
        let (runs, rss) = http_load::ladder(backend, &binary, &rates, Duration::from_secs(seconds), &log).await;
        let best = runs.iter().filter(|r| r.sustained(P99_BOUND_MS)).map(|r| r.rate).max();
        println!(
            "{label}: highest rate sustained with p99 < {P99_BOUND_MS} ms: {}; engine peak RSS {rss:.0} MiB",
            best.map_or_else(|| "none of those offered".to_owned(), |r| format!("{r}/s"))
        );
    }
    drop_database(url, &db).await;
}

#[tokio::main]
async fn main() {
    println!(
        "sagaflow bench ({} build, {} cores)",
        if cfg!(debug_assertions) { "debug" } else { "release" },
        std::thread::available_parallelism().map_or(1, usize::from)
    );
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL (eval \"$(scripts/services.sh)\")");
    let bootstrap = std::env::var("KAFKA_BOOTSTRAP_SERVERS").expect("KAFKA_BOOTSTRAP_SERVERS");
    let mut sections: Vec<String> = std::env::args().skip(1).collect();
    if sections.is_empty() {
        sections = ["appends", "replay", "broker", "sagas", "retention", "index", "growth", "edges"]
            .map(String::from)
            .to_vec();
    }
    let mut broker_bound = None;
    for section in &sections {
        match section.as_str() {
            "appends" => appends_section(&url, env_u64("BENCH_SECONDS", 3)).await,
            "replay" => replay_section(&url).await,
            "broker" => broker_bound = Some(broker_section(&bootstrap).await),
            "sagas" => sagas_section(&url, &bootstrap, broker_bound).await,
            "retention" => retention::retention(&url, 2_000_000).await,
            "index" => index_section(&url).await,
            "growth" => growth_section(&url).await,
            "edges" => edges::edges(&sagaflow_binary(), &bench_logs(), env_u64("BENCH_SECONDS", 3)).await,
            other => {
                eprintln!("unknown section '{other}' (appends, replay, broker, sagas, retention, index, growth, edges)")
            }
        }
    }
    println!("bench peak RSS {:.1} MiB", peak_rss_mib_of(std::process::id()));
}
