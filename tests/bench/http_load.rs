//! Order sagas over HTTP against the real `sagaflow` binary: an open-loop load generator
//! POSTs orders at a fixed rate and follows each with `GET /orders/{id}?wait=30` to its
//! terminal state. The figure is POST → terminal latency; a rate is sustained when every
//! order finished APPROVED and p99 stayed under the bound.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Client;
use serde_json::json;
use tokio::sync::Mutex;

use crate::cpu::CpuMeter;
use crate::stats::Figure;

/// Distinct SKUs and customers the orders spread over.
const SKUS: usize = 50;
const CUSTOMERS: usize = 50;

/// What PostgreSQL counted in the engine's database.
pub struct PgCounters {
    transactions: i64,
    /// Per statement: its text, calls and total execution ms (`pg_stat_statements`).
    statements: Option<Vec<(String, i64, f64)>>,
}

impl PgCounters {
    /// Per saga between `self` and `later`: transactions, statements, and when `top` > 0 the
    /// `top` statements by calls with their calls and execution ms.
    fn per_saga(&self, later: &Self, sagas: usize, top: usize) -> String {
        let sagas = sagas.max(1) as f64;
        let mut out =
            format!("PostgreSQL transactions per saga {:.1}", (later.transactions - self.transactions) as f64 / sagas);
        let (Some(before), Some(after)) = (&self.statements, &later.statements) else { return out };
        let before: std::collections::HashMap<&str, (i64, f64)> =
            before.iter().map(|(q, c, t)| (q.as_str(), (*c, *t))).collect();
        let mut delta: Vec<(&str, f64, f64)> = after
            .iter()
            .map(|(q, c, t)| {
                let (c0, t0) = before.get(q.as_str()).copied().unwrap_or_default();
                (q.as_str(), (c - c0) as f64 / sagas, (t - t0) / sagas)
            })
            .filter(|(_, calls, _)| *calls > 0.0)
            .collect();
        out.push_str(&format!(", statements {:.1}", delta.iter().map(|d| d.1).sum::<f64>()));
        delta.sort_by(|a, b| b.1.total_cmp(&a.1));
        for (query, calls, ms) in delta.into_iter().take(top) {
            let query: String = query.split_whitespace().collect::<Vec<_>>().join(" ").chars().take(110).collect();
            out.push_str(&format!("\n      {calls:>6.2} calls {ms:>6.3} ms  {query}"));
        }
        out
    }
}

/// How the engine stores and transports.
pub enum Backend {
    Embedded { data_dir: PathBuf },
    PostgresKafka { database_url: String, bootstrap: String },
}

/// A `sagaflow serve` child process.
pub struct Engine {
    child: Child,
    pub base: String,
    /// The engine's database, when it runs on PostgreSQL.
    database_url: Option<String>,
}

impl Engine {
    pub async fn start(binary: &Path, backend: &Backend, log: &Path) -> Self {
        Self::start_with(binary, backend, log, &[]).await
    }

    /// [`Self::start`] with more environment variables.
    pub async fn start_with(binary: &Path, backend: &Backend, log: &Path, env: &[(&str, String)]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut command = Command::new(binary);
        command
            .arg("serve")
            .env_remove("DATABASE_URL")
            .env_remove("KAFKA_BOOTSTRAP_SERVERS")
            .env("SAGAFLOW_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("SAGAFLOW_TOPIC_PREFIX", format!("bench{}", uuid::Uuid::now_v7().simple()))
            .env("RUST_LOG", std::env::var("BENCH_ENGINE_LOG").unwrap_or_else(|_| "warn".into()))
            .env("NO_COLOR", "1")
            .envs(env.iter().map(|(k, v)| (k, v)));
        match backend {
            Backend::Embedded { data_dir } => {
                command.env("SAGAFLOW_DATA_DIR", data_dir);
            }
            Backend::PostgresKafka { database_url, bootstrap } => {
                command
                    .env("DATABASE_URL", database_url)
                    .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
                    .env("SAGAFLOW_KAFKA_FETCH_WAIT", crate::fetch_wait());
            }
        }
        let out = std::fs::File::create(log).unwrap();
        let err = out.try_clone().unwrap();
        let child = command.stdin(Stdio::null()).stdout(out).stderr(err).spawn().expect("the sagaflow binary starts");
        let database_url = match backend {
            Backend::PostgresKafka { database_url, .. } => Some(database_url.clone()),
            Backend::Embedded { .. } => None,
        };
        let engine = Self { child, base: format!("http://127.0.0.1:{port}"), database_url };
        let client = Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = client.get(format!("{}/health/ready", engine.base)).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            assert!(Instant::now() < deadline, "engine not ready; see {}", log.display());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        engine
    }

    /// Transactions committed and rolled back in the engine's database so far (PostgreSQL's
    /// statistics, which backends report within a second or so of going idle), and statements
    /// run, when `pg_stat_statements` is loaded.
    pub async fn pg_counters(&self) -> Option<PgCounters> {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(self.database_url.as_deref()?).await.ok()?;
        let transactions = sqlx::query_scalar(
            "SELECT (xact_commit + xact_rollback)::int8 FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(&mut conn)
        .await
        .ok()?;
        let _ = sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements").execute(&mut conn).await;
        let statements = sqlx::query_as(
            "SELECT query, calls::int8, total_exec_time FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
              WHERE d.datname = current_database()",
        )
        .fetch_all(&mut conn)
        .await
        .ok();
        Some(PgCounters { transactions, statements })
    }

    /// SQL statements and write transactions the embedded store has run so far
    /// (`sagaflow_sqlite_*_total` of `/metrics`), and bytes the engine process has written to
    /// disk (`/proc/<pid>/io`).
    pub async fn embedded_counters(&self, client: &Client) -> Option<(f64, f64, f64)> {
        if self.database_url.is_some() {
            return None;
        }
        let text = client.get(format!("{}/metrics", self.base)).send().await.ok()?.text().await.ok()?;
        let counter = |name: &str| -> Option<f64> {
            text.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().last()?.parse().ok())
        };
        let statements = counter("sagaflow_sqlite_statements_total")?;
        let transactions = counter("sagaflow_sqlite_write_transactions_total").unwrap_or(0.0);
        let written = std::fs::read_to_string(format!("/proc/{}/io", self.pid()))
            .ok()
            .and_then(|io| io.lines().find(|l| l.starts_with("write_bytes:"))?.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0.0);
        Some((statements, transactions, written))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The engine's peak resident memory so far.
    pub fn peak_rss_mib(&self) -> f64 {
        crate::peak_rss_mib_of(self.pid())
    }

    /// Stocks the SKUs and opens the customers' credit.
    pub async fn prepare(&self, client: &Client) {
        for s in 0..SKUS {
            let response = client
                .put(format!("{}/inventory/SKU-{s}", self.base))
                .json(&json!({ "available": 1_000_000_000u64 }))
                .send()
                .await
                .unwrap();
            assert!(response.status().is_success(), "stocking: {}", response.status());
        }
        for c in 0..CUSTOMERS {
            let response = client
                .put(format!("{}/customers/c-{c}/credit", self.base))
                .json(&json!({ "limit": "1000000000000" }))
                .send()
                .await
                .unwrap();
            assert!(response.status().is_success(), "credit: {}", response.status());
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One rate's outcome.
pub struct RateRun {
    pub rate: u32,
    /// Orders finished per second of the run, with POST → terminal latencies.
    pub figure: Figure,
    pub submitted: usize,
    pub approved: usize,
    pub failed: usize,
    pub cpu: String,
    /// PostgreSQL transactions (and statements) per finished saga, on PostgreSQL.
    pub postgres: Option<String>,
}

impl RateRun {
    pub fn sustained(&self, p99_bound_ms: f64) -> bool {
        self.failed == 0 && self.approved == self.submitted && self.figure.p99_ms() < p99_bound_ms
    }
}

/// Offers `rate` orders/s for `duration`, each followed to its end.
pub async fn offer(engine: &Engine, client: &Client, rate: u32, duration: Duration, cpu: &mut CpuMeter) -> RateRun {
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let outcomes = Arc::new(Mutex::new((0_usize, 0_usize)));
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let total = (f64::from(rate) * duration.as_secs_f64()) as usize;
    let mut tasks = Vec::with_capacity(total);
    let counters_before = engine.pg_counters().await;
    let embedded_before = engine.embedded_counters(client).await;
    cpu.start();
    let started = Instant::now();
    for i in 0..total {
        ticker.tick().await;
        let (client, base) = (client.clone(), engine.base.clone());
        let (latencies, outcomes) = (Arc::clone(&latencies), Arc::clone(&outcomes));
        tasks.push(tokio::spawn(async move {
            let begun = Instant::now();
            let order = json!({
                "customer_id": format!("c-{}", i % CUSTOMERS),
                "items": [{ "sku": format!("SKU-{}", (i * 7) % SKUS), "quantity": 1, "unit_price": "1.99" }],
            });
            let approved = async {
                let submitted = client.post(format!("{base}/orders")).json(&order).send().await.ok()?;
                if !submitted.status().is_success() {
                    return None;
                }
                let submitted: serde_json::Value = submitted.json().await.ok()?;
                let id = submitted["order_id"].as_str()?.to_owned();
                loop {
                    let view: serde_json::Value =
                        client.get(format!("{base}/orders/{id}?wait=30")).send().await.ok()?.json().await.ok()?;
                    match view["status"].as_str()? {
                        "PENDING" | "OUTCOME_UNKNOWN" => continue,
                        status => return Some(status == "APPROVED"),
                    }
                }
            }
            .await;
            let elapsed = begun.elapsed();
            let mut outcome = outcomes.lock().await;
            if approved == Some(true) {
                outcome.0 += 1;
                latencies.lock().await.push(elapsed);
            } else {
                outcome.1 += 1;
            }
        }));
    }
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(40), task).await;
    }
    let elapsed = started.elapsed();
    let (approved, failed) = *outcomes.lock().await;
    let cpu = cpu.stop_per(elapsed, approved);
    let top = std::env::var("BENCH_PG_TOP").ok().and_then(|t| t.parse().ok()).unwrap_or(0);
    let postgres = match (counters_before, engine.pg_counters().await) {
        (Some(before), Some(after)) => Some(before.per_saga(&after, approved, top)),
        _ => match (embedded_before, engine.embedded_counters(client).await) {
            (Some((s0, t0, w0)), Some((s1, t1, w1))) => {
                let sagas = approved.max(1) as f64;
                Some(format!(
                    "SQLite statements per saga {:.1}, write transactions (fsyncs) per saga {:.1}, disk written per saga {:.1} KiB",
                    (s1 - s0) / sagas,
                    (t1 - t0) / sagas,
                    (w1 - w0) / sagas / 1024.0
                ))
            }
            _ => None,
        },
    };
    let latencies = std::mem::take(&mut *latencies.lock().await);
    RateRun {
        rate,
        figure: Figure::rate(approved, elapsed, latencies),
        submitted: total,
        approved,
        failed,
        cpu,
        postgres,
    }
}

/// Offers rising rates until one is not sustained; returns every run (the last one failed,
/// unless `rates` ran out).
pub async fn ladder(
    backend: &Backend,
    binary: &Path,
    rates: &[u32],
    duration: Duration,
    log: &Path,
) -> (Vec<RateRun>, f64) {
    let engine = Engine::start(binary, backend, log).await;
    let client = Client::builder().pool_max_idle_per_host(1024).build().unwrap();
    engine.prepare(&client).await;
    // Warm up: a few sagas, so topics, groups and connections exist.
    let mut cpu = CpuMeter::new(Some(engine.pid()));
    offer(&engine, &client, 20, Duration::from_secs(2), &mut cpu).await;
    let mut runs = Vec::new();
    for &rate in rates {
        let run = offer(&engine, &client, rate, duration, &mut cpu).await;
        let sustained = run.sustained(crate::P99_BOUND_MS);
        println!(
            "  offered {rate:>5}/s: finished {} (p50 {:.1} ms, p99 {:.1} ms), {} of {} approved, {} not{}; cpu (ms per saga): {}{}",
            crate::stats::thousands(run.figure.per_s),
            run.figure.p50_ms(),
            run.figure.p99_ms(),
            run.approved,
            run.submitted,
            run.failed,
            if sustained { "" } else { "  <- not sustained" },
            run.cpu,
            run.postgres.as_deref().map_or_else(String::new, |p| format!("; {p}"))
        );
        runs.push(run);
        if !sustained {
            break;
        }
    }
    let rss = engine.peak_rss_mib();
    (runs, rss)
}
