//! Fault injection against real processes: the `sagaflow` binary over PostgreSQL and the
//! Kafka-protocol broker, killed, frozen and restarted during a stream of orders. Every
//! test is bounded in time, talks to loopback only, and ends by checking what must hold
//! whatever happened: every order ended, stock and credit conserved, no effect applied
//! twice, every saga stream well-formed, nothing FAILED.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use rust_decimal::Decimal;
use sagaflow_tests::process::{database_url_of, free_port, BrokerProcess, EngineProcess, EngineSpec, PostgresCluster};
use sagaflow_tests::shop::{Attempts, Placed, Shop};
use sagaflow_tests::{kafka_bootstrap, unique_prefix, MIGRATOR};
use sqlx::PgPool;

fn log_dir(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("faults").join(format!("{test}-{}", unique_prefix()));
    std::fs::create_dir_all(&dir).expect("log directory");
    dir
}

fn spec(database_url: String, kafka: String, prefix: &str, name: &str, logs: &Path) -> EngineSpec {
    EngineSpec::new(database_url, kafka, prefix, logs, name)
}

/// Starts one engine with every role, and a shop of `(skus, stock each, customers, credit
/// limit each)` stocked up through it.
async fn one_engine(
    database_url: String,
    kafka: String,
    logs: &Path,
    (skus, stock, customers, limit): (usize, u64, usize, u64),
) -> (EngineProcess, Arc<Shop>) {
    let mut engine = EngineProcess::start(spec(database_url, kafka, &unique_prefix(), "engine", logs));
    engine.ready(Duration::from_secs(60)).await;
    let shop = Arc::new(Shop::new(vec![engine.base.clone()], skus, stock, customers, Decimal::from(limit)));
    shop.stock_up().await;
    (engine, shop)
}

/// Places orders `range` from a background task, `per_second` at most, each retried with
/// its key until accepted.
fn place_in_background(
    shop: Arc<Shop>,
    range: std::ops::Range<usize>,
    per_second: u32,
) -> tokio::task::JoinHandle<Vec<(Placed, Attempts)>> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second);
        let mut pending = Vec::new();
        for n in range {
            tick.tick().await;
            let shop = Arc::clone(&shop);
            pending.push(tokio::spawn(async move { shop.place(n, Duration::from_secs(120)).await }));
        }
        let mut placed = Vec::new();
        for task in pending {
            placed.push(task.await.expect("placing an order"));
        }
        placed
    })
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn engine_sigkilled_five_times_and_restarted_in_the_same_groups_loses_nothing(pool: PgPool) {
    let logs = log_dir("sigkill");
    let (mut engine, shop) =
        one_engine(database_url_of(&pool).await, kafka_bootstrap(), &logs, (3, 180, 4, 1_100)).await;

    // 300 orders over ~35 s; a kill at a random moment 3-7 s after each restart is ready.
    let orders = 300;
    let placing = place_in_background(Arc::clone(&shop), 0..orders, 9);
    for kill in 1..=5 {
        let after = Duration::from_millis(rand::rng().random_range(3_000..7_000));
        tokio::time::sleep(after).await;
        engine.kill();
        tracing::info!(kill, "engine SIGKILLed");
        engine.restart();
        engine.ready(Duration::from_secs(60)).await;
    }
    let placed: Vec<Placed> = placing.await.expect("placing").into_iter().map(|(p, _)| p).collect();
    let views = shop.settle(&placed, Duration::from_secs(180)).await;
    let (approved, rejected) = shop.check_invariants(&placed, &views).await;
    assert!(approved > 0 && rejected > 0, "both outcomes exercised: {approved} approved, {rejected} rejected");
    eprintln!("sigkill x5: {orders} orders, {approved} approved, {rejected} rejected; logs in {}", logs.display());
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_survivor_of_two_engines_takes_over_partitions_and_the_outbox(pool: PgPool) {
    let logs = log_dir("two-engines");
    let prefix = unique_prefix();
    let url = database_url_of(&pool).await;
    let mut survivor = EngineProcess::start(spec(url.clone(), kafka_bootstrap(), &prefix, "survivor", &logs));
    let mut victim = EngineProcess::start(spec(url, kafka_bootstrap(), &prefix, "victim", &logs));
    survivor.ready(Duration::from_secs(60)).await;
    victim.ready(Duration::from_secs(60)).await;
    let shop = Arc::new(Shop::new(vec![survivor.base.clone(), victim.base.clone()], 2, 300, 2, Decimal::from(10_000)));
    shop.stock_up().await;

    let started = Instant::now();
    let placing = place_in_background(Arc::clone(&shop), 0..200, 40);
    tokio::time::sleep(Duration::from_millis(rand::rng().random_range(1_500..3_000))).await;
    victim.kill();
    let placed: Vec<Placed> = placing.await.expect("placing").into_iter().map(|(p, _)| p).collect();
    let views = shop.settle(&placed, Duration::from_secs(120)).await;
    let (approved, rejected) = shop.check_invariants(&placed, &views).await;
    assert_eq!((approved, rejected), (200, 0), "stock and credit suffice for every order");
    eprintln!("two engines, one killed: 200 orders approved in {:?}", started.elapsed());
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_frozen_broker_then_an_emptied_one_delay_sagas_but_lose_none(pool: PgPool) {
    let logs = log_dir("broker");
    let mut broker = BrokerProcess::start(&logs);
    let (_engine, shop) =
        one_engine(database_url_of(&pool).await, broker.bootstrap(), &logs, (2, 1_000, 2, 100_000)).await;

    // Freeze during load: orders are still accepted (they queue in the outbox).
    let before = place_in_background(Arc::clone(&shop), 0..60, 30);
    tokio::time::sleep(Duration::from_secs(1)).await;
    broker.freeze();
    let frozen_at = Instant::now();
    let mut during = Vec::new();
    for n in 60..100 {
        let asked = Instant::now();
        let (placed, attempts) = shop.place(n, Duration::from_secs(10)).await;
        assert!(asked.elapsed() < Duration::from_secs(5), "order {n} took {:?} to be accepted", asked.elapsed());
        assert_eq!((attempts.unreachable, attempts.unavailable), (0, 0), "accepted at once while the broker is frozen");
        during.push(placed);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(frozen_at.elapsed())).await;
    broker.thaw();
    let mut placed: Vec<Placed> = before.await.expect("placing").into_iter().map(|(p, _)| p).collect();
    placed.extend(during);
    // Steps whose 3 attempts all timed out during the freeze are compensated (REJECTED):
    // that is a finished saga too; what matters is that each one ended and nothing leaked.
    let views = shop.settle(&placed, Duration::from_secs(150)).await;
    let (approved, rejected) = shop.check_invariants(&placed, &views).await;
    eprintln!("broker frozen 20 s: {approved} approved, {rejected} rejected (retries exhausted)");
    assert!(approved > 0);

    // Kill the broker and start it again empty: topics and group offsets are gone.
    broker.restart_empty();
    let after: Vec<Placed> = place_in_background(Arc::clone(&shop), 100..140, 20)
        .await
        .expect("placing")
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    placed.extend(after);
    let views = shop.settle(&placed, Duration::from_secs(150)).await;
    let (approved_after, rejected_after) = shop.check_invariants(&placed, &views).await;
    eprintln!("broker restarted empty: {approved_after} approved, {rejected_after} rejected in all");
    assert!(approved_after > approved, "orders placed after the restart were approved too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_gets_503s_and_the_engine_reconnects_by_itself() {
    sagaflow_tests::init_tracing();
    let logs = log_dir("postgres");
    let postgres = PostgresCluster::start();
    let (_engine, shop) = one_engine(postgres.url(), kafka_bootstrap(), &logs, (2, 1_000, 2, 100_000)).await;

    let placing = place_in_background(Arc::clone(&shop), 0..120, 20);
    tokio::time::sleep(Duration::from_secs(2)).await;
    postgres.stop();
    tokio::time::sleep(Duration::from_secs(6)).await;
    postgres.start_again();
    let placed = placing.await.expect("placing");
    let unavailable: u32 = placed.iter().map(|(_, a)| a.unavailable).sum();
    assert!(unavailable > 0, "requests during the outage got 503 problem+json");
    let placed: Vec<Placed> = placed.into_iter().map(|(p, _)| p).collect();
    let views = shop.settle(&placed, Duration::from_secs(120)).await;
    let (approved, _) = shop.check_invariants(&placed, &views).await;
    assert_eq!(approved, 120, "nothing accepted was lost");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn sigterm_stops_within_15_seconds_with_the_broker_gone(pool: PgPool) {
    let logs = log_dir("sigterm");
    let broker = BrokerProcess::start(&logs);
    let (mut engine, shop) =
        one_engine(database_url_of(&pool).await, broker.bootstrap(), &logs, (1, 100, 1, 1_000)).await;
    drop(broker);
    for n in 0..5 {
        shop.place(n, Duration::from_secs(10)).await;
    }
    let stopped = engine.terminate(Duration::from_secs(30));
    let (status, took) = stopped.expect("the engine stopped on SIGTERM");
    assert!(took < Duration::from_secs(15), "stopping took {took:?}");
    assert!(status.success(), "a graceful stop exits 0: {status}");
    let pending: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox o, outbox_relay r
          WHERE r.name = 'outbox' AND (o.transaction_id, o.id) > (r.transaction_id::text::xid8, r.id)",
    )
    .fetch_one(&pool)
    .await
    .expect("count");
    assert!(pending >= 5, "what was not published stays in the outbox ({pending})");
}

/// Three processes, one role each: every one answers its probes and is scraped, the workers
/// serve nothing else, and orders go through all three.
#[sqlx::test(migrator = "MIGRATOR")]
async fn every_process_serves_health_and_metrics_whatever_its_roles(pool: PgPool) {
    let logs = log_dir("roles");
    let prefix = unique_prefix();
    let url = database_url_of(&pool).await;
    // (role, consumers it runs: the coordinator's replies; inventory, orders, payments)
    let roles = [("api", 0), ("coordinator", 1), ("participants", 3)];
    // The API process serves its metrics on an address of their own.
    let metrics_port = free_port();
    let mut processes: Vec<EngineProcess> = roles
        .iter()
        .map(|(role, _)| {
            let mut spec =
                EngineSpec { roles: (*role).into(), ..spec(url.clone(), kafka_bootstrap(), &prefix, role, &logs) };
            if *role == "api" {
                spec.env.push(("SAGAFLOW_METRICS_ADDR".into(), format!("127.0.0.1:{metrics_port}")));
            }
            EngineProcess::start(spec)
        })
        .collect();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    for (process, (role, consumers)) in processes.iter_mut().zip(roles) {
        // Ready: the store and the transport answer, and each consumer has its assignment.
        process.ready(Duration::from_secs(60)).await;
        let live = client.get(format!("{}/health/live", process.base)).send().await.unwrap();
        assert_eq!(live.status(), 200, "{role}");
        let ready: serde_json::Value =
            client.get(format!("{}/health/ready", process.base)).send().await.unwrap().json().await.unwrap();
        let checks = ready["checks"].as_array().unwrap();
        let consumer_checks = checks.iter().filter(|c| c["name"].as_str().unwrap().starts_with("consumer ")).count();
        assert_eq!(consumer_checks, consumers, "{role}: {ready}");
        let scraped = if role == "api" { format!("http://127.0.0.1:{metrics_port}") } else { process.base.clone() };
        if role == "api" {
            let moved = client.get(format!("{}/metrics", process.base)).send().await.unwrap();
            assert_eq!(moved.status(), 404, "metrics moved to their own address");
        }
        let metrics = client.get(format!("{scraped}/metrics")).send().await.unwrap();
        assert_eq!(metrics.status(), 200, "{role}");
        assert!(metrics.text().await.unwrap().contains("http_request_duration_seconds"), "{role}");
        let api = client.get(format!("{}/saga-definitions", process.base)).send().await.unwrap().status();
        assert_eq!(api.as_u16(), if role == "api" { 200 } else { 404 }, "{role} serves the API only with the api role");
    }
    let shop = Arc::new(Shop::new(vec![processes[0].base.clone()], 1, 100, 1, Decimal::from(10_000)));
    shop.stock_up().await;
    let placed: Vec<Placed> =
        place_in_background(Arc::clone(&shop), 0..5, 10).await.expect("placing").into_iter().map(|(p, _)| p).collect();
    let views = shop.settle(&placed, Duration::from_secs(60)).await;
    assert_eq!(shop.check_invariants(&placed, &views).await, (5, 0), "every order approved across the three processes");
}
