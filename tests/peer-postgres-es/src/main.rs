//! Benchmark of the peer event store **postgres-es** (the PostgreSQL repository of `cqrs-es`),
//! printing one JSON object per (workload, writers) on stdout so Sagaflow's bench can run it as
//! a subprocess and set its figures beside Sagaflow's own. Everything else goes to stderr.
//!
//! ```text
//! DATABASE_URL=postgres://sagaflow:sagaflow@127.0.0.1:5432/sagaflow \
//!   cargo run --release --manifest-path tests/peer-postgres-es/Cargo.toml -- \
//!   [--writers 1,4,16,64] [--seconds 3] [--warmup-seconds 0.5]
//! ```
//!
//! It creates a fresh database `peer_bench_<random>` on the server of `DATABASE_URL`, creates
//! postgres-es's `events` and `snapshots` tables there (`sql/init.sql`), runs the workloads and
//! drops the database again (also on error, Ctrl-C or SIGTERM).
//!
//! API measured: `PostgresEventRepository` through cqrs-es's `PersistedEventRepository` trait
//! (`persist(&[SerializedEvent], None)` and `get_events`). That is the lowest level postgres-es
//! offers: below it there is only its private SQL. Above it sit `PersistedEventStore` and
//! `CqrsFramework`, which add aggregate loading, command handling, (de)serialization of domain
//! events and upcasting; they are left out so the figures are the store's cost, not the
//! framework's. The repository is generic over an `Aggregate` only to read `A::TYPE` (the
//! `aggregate_type` column), so a minimal aggregate type, [`BenchOrder`], is defined for that.

use std::convert::Infallible;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::{PersistedEventRepository, PersistenceError, SerializedEvent};
use cqrs_es::{Aggregate, DomainEvent};
use postgres_es::PostgresEventRepository;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

/// postgres-es's DDL (its repository's `db/init.sql`; see the header of that file).
const SCHEMA: &str = include_str!("../sql/init.sql");
/// The postgres-es version in Cargo.lock (set by build.rs).
const POSTGRES_ES_VERSION: &str = env!("POSTGRES_ES_VERSION");
/// The largest pool: PostgreSQL's default `max_connections` is 100.
const MAX_POOL: u32 = 64;
/// Aggregates of 20 events prepared for `read20`.
const READ_AGGREGATES: usize = 1000;
const READ_LEN: usize = 20;
const BATCH_LEN: usize = 10;

/// The minimal aggregate postgres-es's generic methods need: only `TYPE` is used by the
/// repository; `handle`/`apply` are never called here.
#[derive(Debug, Default, Serialize, Deserialize)]
struct BenchOrder;

/// The domain event type `Aggregate` requires; the bench writes `SerializedEvent`s directly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ItemAdded {
    sku: String,
    quantity: u32,
    order_id: String,
}

impl DomainEvent for ItemAdded {
    fn event_type(&self) -> String {
        "ItemAdded".to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

impl Aggregate for BenchOrder {
    const TYPE: &'static str = "BenchOrder";
    type Command = ();
    type Event = ItemAdded;
    type Error = Infallible;
    type Services = ();

    async fn handle(&mut self, _command: (), _services: &(), _sink: &EventSink<Self>) -> Result<(), Infallible> {
        Ok(())
    }

    fn apply(&mut self, _event: ItemAdded) {}
}

/// One event of `aggregate_id` at `sequence`, with the small JSON payload every workload uses.
fn event(aggregate_id: &str, sequence: usize) -> SerializedEvent {
    SerializedEvent::new(
        aggregate_id.to_owned(),
        sequence,
        BenchOrder::TYPE.to_owned(),
        "ItemAdded".to_owned(),
        "1.0".to_owned(),
        json!({"sku": "SKU-1", "quantity": 2, "order_id": aggregate_id}),
        json!({}),
    )
}

/// Events `first..first + len` of `aggregate_id`.
fn events(aggregate_id: &str, first: usize, len: usize) -> Vec<SerializedEvent> {
    (first..first + len).map(|sequence| event(aggregate_id, sequence)).collect()
}

fn new_aggregate_id() -> String {
    Uuid::new_v4().to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    /// One event per persist, each to a new aggregate (sequence 1).
    AppendNew,
    /// One event per persist to the writer's own aggregate at the next sequence (the
    /// optimistic-concurrency path: a taken sequence is a unique violation).
    AppendExisting,
    /// Ten events per persist, each batch to a new aggregate.
    AppendBatch10,
    /// `get_events` of a prepared 20-event aggregate.
    Read20,
}

impl Workload {
    const ALL: [Self; 4] = [Self::AppendNew, Self::AppendExisting, Self::AppendBatch10, Self::Read20];

    fn name(self) -> &'static str {
        match self {
            Self::AppendNew => "append_new",
            Self::AppendExisting => "append_existing",
            Self::AppendBatch10 => "append_batch10",
            Self::Read20 => "read20",
        }
    }
}

/// What one writer task carries from its warm-up into its measured run.
struct Writer {
    /// `append_existing`: the writer's aggregate and the last sequence it holds.
    owned: Option<(String, usize)>,
    /// `read20`: the index in the prepared aggregates to read next.
    read_cursor: usize,
}

/// Shared by all writer tasks of one (workload, writers) run.
struct Shared {
    repo: PostgresEventRepository,
    workload: Workload,
    read_ids: Arc<Vec<String>>,
}

/// One operation (one persist or one read call); returns the events it wrote or read and its
/// latency. Events are built before the clock starts, so the latency is the repository call.
async fn one_op(shared: &Shared, writer: &mut Writer) -> anyhow::Result<(usize, Duration)> {
    let repo = &shared.repo;
    match shared.workload {
        Workload::AppendNew | Workload::AppendBatch10 => {
            let len = if shared.workload == Workload::AppendNew { 1 } else { BATCH_LEN };
            let batch = events(&new_aggregate_id(), 1, len);
            let start = Instant::now();
            repo.persist::<BenchOrder>(&batch, None).await.context("persist to a new aggregate")?;
            Ok((len, start.elapsed()))
        }
        Workload::AppendExisting => {
            let (id, version) = writer.owned.as_mut().context("append_existing writer without an aggregate")?;
            let batch = [event(id, *version + 1)];
            let start = Instant::now();
            repo.persist::<BenchOrder>(&batch, None).await.context("persist to an existing aggregate")?;
            let elapsed = start.elapsed();
            *version += 1;
            Ok((1, elapsed))
        }
        Workload::Read20 => {
            let id = &shared.read_ids[writer.read_cursor];
            writer.read_cursor = (writer.read_cursor + 1) % shared.read_ids.len();
            let start = Instant::now();
            let read = repo.get_events::<BenchOrder>(id).await.context("get_events")?;
            let elapsed = start.elapsed();
            ensure!(read.len() == READ_LEN, "read {} events of {id}, expected {READ_LEN}", read.len());
            Ok((read.len(), elapsed))
        }
    }
}

/// The outcome of one phase (warm-up or measured) over all writers.
struct Phase {
    writers: Vec<Writer>,
    events: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

/// Runs every writer concurrently, each doing operations back to back until `duration` has
/// passed; the last operation of each may end a little after it, and `elapsed` covers it.
async fn run_phase(shared: &Arc<Shared>, writers: Vec<Writer>, duration: Duration) -> anyhow::Result<Phase> {
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = writers
        .into_iter()
        .map(|mut writer| {
            let shared = Arc::clone(shared);
            tokio::spawn(async move {
                let mut events = 0;
                let mut latencies = Vec::with_capacity(4096);
                while Instant::now() < deadline {
                    let (n, latency) = one_op(&shared, &mut writer).await?;
                    events += n;
                    latencies.push(latency);
                }
                anyhow::Ok((writer, events, latencies))
            })
        })
        .collect();
    let mut phase = Phase { writers: Vec::new(), events: 0, elapsed: Duration::ZERO, latencies: Vec::new() };
    for task in tasks {
        let (writer, events, latencies) = task.await.context("writer task panicked")??;
        phase.writers.push(writer);
        phase.events += events;
        phase.latencies.extend(latencies);
    }
    phase.elapsed = start.elapsed();
    Ok(phase)
}

/// Nearest-rank percentile of sorted latencies, as Sagaflow's bench computes it.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index]
}

fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// One output line; the field order is the one Sagaflow's bench documents.
#[derive(Debug, Serialize)]
struct Figures {
    peer: &'static str,
    version: &'static str,
    workload: &'static str,
    writers: usize,
    events: usize,
    seconds: f64,
    events_per_s: f64,
    /// Latency of one operation (one persist or one `get_events` call), milliseconds.
    p50_ms: f64,
    p99_ms: f64,
}

/// One (workload, writers) run: a fresh pool sized to the writers, a warm-up (which also opens
/// the pool's connections and prepares the statements), then the measured phase.
async fn measure(
    options: &PgConnectOptions,
    workload: Workload,
    writers: usize,
    read_ids: &Arc<Vec<String>>,
    args: &Args,
) -> anyhow::Result<Figures> {
    let pool_size = u32::try_from(writers).unwrap_or(MAX_POOL).min(MAX_POOL);
    let pool = PgPoolOptions::new()
        .max_connections(pool_size)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options.clone())
        .await
        .context("connect the writers' pool")?;
    let shared =
        Arc::new(Shared { repo: PostgresEventRepository::new(pool.clone()), workload, read_ids: read_ids.clone() });

    let mut states = Vec::with_capacity(writers);
    for w in 0..writers {
        let owned = if workload == Workload::AppendExisting {
            // The writer's aggregate starts with one event (outside the timing), so every
            // measured append continues an existing aggregate.
            let id = new_aggregate_id();
            shared.repo.persist::<BenchOrder>(&events(&id, 1, 1), None).await.context("create an aggregate")?;
            Some((id, 1))
        } else {
            None
        };
        states.push(Writer { owned, read_cursor: w * read_ids.len() / writers });
    }

    let warm = run_phase(&shared, states, args.warmup).await?;
    let phase = run_phase(&shared, warm.writers, args.duration).await?;
    pool.close().await;

    let mut latencies = phase.latencies;
    latencies.sort_unstable();
    let seconds = phase.elapsed.as_secs_f64();
    let ms = |d: Duration| round(d.as_secs_f64() * 1e3, 3);
    let figures = Figures {
        peer: "postgres-es",
        version: POSTGRES_ES_VERSION,
        workload: workload.name(),
        writers,
        events: phase.events,
        seconds: round(seconds, 3),
        events_per_s: round(phase.events as f64 / seconds, 1),
        p50_ms: ms(percentile(&latencies, 0.50)),
        p99_ms: ms(percentile(&latencies, 0.99)),
    };
    eprintln!(
        "{:<16} writers {writers:>3}: {} ops, {} events in {seconds:.2} s ({} warm-up events)",
        workload.name(),
        latencies.len(),
        phase.events,
        warm.events
    );
    Ok(figures)
}

/// Writes the `read20` aggregates, `READ_AGGREGATES` of `READ_LEN` events each, with a few
/// concurrent persists.
async fn prepare_reads(repo: &Arc<PostgresEventRepository>) -> anyhow::Result<Vec<String>> {
    const TASKS: usize = 8;
    let ids: Vec<String> = (0..READ_AGGREGATES).map(|_| new_aggregate_id()).collect();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let repo = Arc::clone(repo);
            let mine: Vec<String> = ids.iter().skip(t).step_by(TASKS).cloned().collect();
            tokio::spawn(async move {
                for id in mine {
                    repo.persist::<BenchOrder>(&events(&id, 1, READ_LEN), None).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await.context("preparing task panicked")?.context("prepare read20 aggregates")?;
    }
    Ok(ids)
}

/// Checks, and logs to stderr, how postgres-es treats the expected version: a sequence that is
/// already taken must be refused as an optimistic-lock conflict; a gap is only reported.
async fn probe_expected_version(repo: &PostgresEventRepository) -> anyhow::Result<()> {
    let id = new_aggregate_id();
    repo.persist::<BenchOrder>(&events(&id, 1, 2), None).await.context("probe: first persist")?;
    match repo.persist::<BenchOrder>(&events(&id, 2, 1), None).await {
        Err(PersistenceError::OptimisticLockError) => {
            eprintln!("probe: persisting a taken sequence -> OptimisticLockError (unique key violation)");
        }
        Err(other) => bail!("probe: a taken sequence gave {other:?}, not OptimisticLockError"),
        Ok(()) => bail!("probe: a taken sequence was accepted"),
    }
    match repo.persist::<BenchOrder>(&events(&id, 5, 1), None).await {
        Ok(()) => eprintln!("probe: persisting sequence 5 after 2 (a gap) -> accepted, no contiguity check"),
        Err(e) => eprintln!("probe: persisting sequence 5 after 2 (a gap) -> refused: {e}"),
    }
    Ok(())
}

/// Creates the schema, probes the concurrency semantics, prepares the reads and measures every
/// (workload, writers) pair, printing each result line as soon as it is known.
async fn run(options: &PgConnectOptions, args: &Args) -> anyhow::Result<()> {
    let setup = PgPoolOptions::new().max_connections(8).connect_with(options.clone()).await.context("connect")?;
    sqlx::raw_sql(SCHEMA).execute(&setup).await.context("create postgres-es's tables")?;
    let repo = Arc::new(PostgresEventRepository::new(setup.clone()));
    probe_expected_version(&repo).await?;
    let started = Instant::now();
    let read_ids = Arc::new(prepare_reads(&repo).await?);
    eprintln!(
        "prepared {READ_AGGREGATES} aggregates of {READ_LEN} events for read20 in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    setup.close().await;

    for workload in Workload::ALL {
        for &writers in &args.writers {
            let figures = measure(options, workload, writers, &read_ids, args).await?;
            println!("{}", serde_json::to_string(&figures).context("serialize the figures")?);
        }
    }
    Ok(())
}

struct Args {
    writers: Vec<usize>,
    duration: Duration,
    warmup: Duration,
}

const USAGE: &str = "usage: peer-postgres-es [--writers 1,4,16,64] [--seconds 3] [--warmup-seconds 0.5]
DATABASE_URL names the PostgreSQL server; a fresh database is created on it and dropped after.";

fn parse_seconds(flag: &str, value: &str) -> anyhow::Result<Duration> {
    let seconds: f64 = value.parse().with_context(|| format!("{flag} {value:?} is not a number"))?;
    ensure!(seconds.is_finite() && seconds >= 0.0, "{flag} must be a non-negative number of seconds");
    Ok(Duration::from_secs_f64(seconds))
}

fn parse_args(mut argv: impl Iterator<Item = String>) -> anyhow::Result<Args> {
    let mut args =
        Args { writers: vec![1, 4, 16, 64], duration: Duration::from_secs(3), warmup: Duration::from_millis(500) };
    while let Some(arg) = argv.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
            None => (arg, None),
        };
        if flag == "--help" || flag == "-h" {
            eprintln!("{USAGE}");
            std::process::exit(0);
        }
        ensure!(
            matches!(flag.as_str(), "--writers" | "--seconds" | "--warmup-seconds"),
            "unknown argument {flag:?}\n{USAGE}"
        );
        let value = match inline {
            Some(value) => value,
            None => argv.next().with_context(|| format!("{flag} needs a value\n{USAGE}"))?,
        };
        match flag.as_str() {
            "--writers" => {
                args.writers = value
                    .split(',')
                    .map(|w| w.trim().parse::<usize>().with_context(|| format!("bad writer count {w:?}")))
                    .collect::<anyhow::Result<_>>()?;
                ensure!(args.writers.iter().all(|&w| w > 0), "writer counts must be positive");
            }
            "--seconds" => args.duration = parse_seconds("--seconds", &value)?,
            "--warmup-seconds" => args.warmup = parse_seconds("--warmup-seconds", &value)?,
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    ensure!(args.duration > Duration::ZERO, "--seconds must be positive");
    Ok(args)
}

/// Resolves when the process is asked to stop (Ctrl-C, or SIGTERM from a parent bench).
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args(std::env::args().skip(1))?;
    let url = std::env::var("DATABASE_URL").context("DATABASE_URL must name the PostgreSQL server")?;
    let server = PgConnectOptions::from_str(&url).context("parse DATABASE_URL")?;

    let database = format!("peer_bench_{}", Uuid::new_v4().simple());
    let mut admin = PgConnection::connect_with(&server).await.context("connect to DATABASE_URL")?;
    sqlx::raw_sql(&format!("CREATE DATABASE {database}")).execute(&mut admin).await.context("create the database")?;
    admin.close().await.context("close the admin connection")?;
    eprintln!("postgres-es {POSTGRES_ES_VERSION}: database {database}");

    let options = server.clone().database(&database);
    let outcome = tokio::select! {
        outcome = run(&options, &args) => outcome,
        () = stop_signal() => Err(anyhow::anyhow!("interrupted")),
    };

    // Dropped whatever the outcome; FORCE ends connections a cancelled run may have left.
    let mut admin = PgConnection::connect_with(&server).await.context("reconnect to drop the database")?;
    sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .context("drop the database")?;
    admin.close().await.context("close the admin connection")?;
    eprintln!("dropped database {database}");
    outcome
}
