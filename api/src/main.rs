//! `sagaflow serve`: the API, the coordinator, the outbox relay and the built-in
//! participants in one process, or any subset of them.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use api::auth::AuthConfig;
use api::server::{self, Roles, StartError, StoreConfig, TransportConfig};
use clap::{Args, Parser, Subcommand};
use engine::circuit_breaker::BreakerSetting;
use engine::topics::Topics;
use engine::transport::kafka::KafkaConfig;
use jsonwebtoken::Algorithm;
use tokio_util::sync::CancellationToken;

/// mimalloc instead of the system allocator: the engine allocates per message (envelopes,
/// JSON, events), and under load glibc's malloc and free were ~19 % of its CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "sagaflow", version, about = "Event-sourced saga orchestration")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the engine. With neither DATABASE_URL nor KAFKA_BOOTSTRAP_SERVERS it runs
    /// embedded: a SQLite store in the data directory and an in-process transport.
    Serve(Box<ServeArgs>),
    /// The saga index (the read model behind `GET /sagas`).
    Index {
        #[command(subcommand)]
        command: IndexCommand,
    },
}

#[derive(Subcommand)]
enum IndexCommand {
    /// Empties the saga index and builds it again from every saga's history. Engines may
    /// keep running: their projections go on from the rebuild's checkpoint.
    Rebuild(StoreArgs),
}

/// Bearer-token authentication. On whenever a key is given; required (unless
/// `--insecure-no-auth`) when the HTTP address is not loopback.
#[derive(Args)]
struct AuthArgs {
    /// HS256: the shared secret tokens are signed with.
    #[arg(long, env = "SAGAFLOW_AUTH_HS256_SECRET", hide_env_values = true)]
    auth_hs256_secret: Option<String>,
    /// RS256 or ES256: a PEM file with the public key tokens are checked with.
    #[arg(long, env = "SAGAFLOW_AUTH_PUBLIC_KEY")]
    auth_public_key: Option<PathBuf>,
    /// The algorithm of `--auth-public-key`: RS256 or ES256.
    #[arg(long, env = "SAGAFLOW_AUTH_ALGORITHM", default_value = "RS256")]
    auth_algorithm: String,
    /// A JWKS file: tokens are checked with the key their `kid` names.
    #[arg(long, env = "SAGAFLOW_AUTH_JWKS")]
    auth_jwks: Option<PathBuf>,
    /// Require this `iss`.
    #[arg(long, env = "SAGAFLOW_AUTH_ISSUER")]
    auth_issuer: Option<String>,
    /// Require this `aud`.
    #[arg(long, env = "SAGAFLOW_AUTH_AUDIENCE")]
    auth_audience: Option<String>,
    /// The claim holding the caller's roles (a dotted path, e.g. `realm_access.roles`).
    #[arg(long, env = "SAGAFLOW_AUTH_ROLES_CLAIM", default_value = "roles")]
    auth_roles_claim: String,
    /// Serve without authentication on a non-loopback address (never in production).
    #[arg(long, env = "SAGAFLOW_INSECURE_NO_AUTH")]
    insecure_no_auth: bool,
}

impl AuthArgs {
    /// The configured verification, refusing an open API on a non-loopback address.
    fn config(&self, addr: SocketAddr) -> Result<Option<Arc<AuthConfig>>, StartError> {
        let config = match (&self.auth_hs256_secret, &self.auth_public_key, &self.auth_jwks) {
            (None, None, None) => None,
            (Some(secret), None, None) => Some(AuthConfig::hs256(secret.as_bytes())),
            (None, Some(pem), None) => {
                let algorithm: Algorithm = self.auth_algorithm.parse().map_err(|_| {
                    StartError::Config(format!("--auth-algorithm {}: use RS256 or ES256", self.auth_algorithm))
                })?;
                Some(AuthConfig::public_key(pem, algorithm).map_err(|e| StartError::Config(e.to_string()))?)
            }
            (None, None, Some(jwks)) => Some(AuthConfig::jwks(jwks).map_err(|e| StartError::Config(e.to_string()))?),
            _ => {
                return Err(StartError::Config(
                    "give one of --auth-hs256-secret, --auth-public-key and --auth-jwks".into(),
                ))
            }
        };
        let Some(mut config) = config else {
            if addr.ip().is_loopback() || self.insecure_no_auth {
                return Ok(None);
            }
            return Err(StartError::Config(format!(
                "refusing to serve {addr} without authentication: it is not a loopback address. Give a key \
                 (--auth-hs256-secret, --auth-public-key or --auth-jwks), or --insecure-no-auth to serve it open"
            )));
        };
        if let Some(issuer) = &self.auth_issuer {
            config = config.with_issuer(issuer.clone());
        }
        if let Some(audience) = &self.auth_audience {
            config = config.with_audience(audience.clone());
        }
        Ok(Some(Arc::new(config.with_roles_claim(self.auth_roles_claim.clone()))))
    }
}

#[derive(Args)]
struct StoreArgs {
    /// PostgreSQL event store (postgres://…); embedded SQLite when absent.
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    /// Where the embedded store keeps its data.
    #[arg(long, env = "SAGAFLOW_DATA_DIR", default_value = "./sagaflow-data")]
    data_dir: PathBuf,
}

impl StoreArgs {
    /// PostgreSQL when a URL is given, else the embedded store in the data directory.
    fn config(&self) -> StoreConfig {
        match &self.database_url {
            Some(url) => StoreConfig::Postgres(url.clone()),
            None => StoreConfig::Sqlite(self.data_dir.clone()),
        }
    }
}

#[derive(Args)]
struct ServeArgs {
    /// Roles to run: any of api, coordinator, participants.
    #[arg(long, env = "SAGAFLOW_ROLES", default_value = "api,coordinator,participants")]
    roles: String,
    /// Address of the HTTP API.
    #[arg(long, env = "SAGAFLOW_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    http_addr: SocketAddr,
    /// Serve `/metrics` on this address only (not on the HTTP address), for scrapers on
    /// another network than the API's callers.
    #[arg(long, env = "SAGAFLOW_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
    #[command(flatten)]
    store: StoreArgs,
    /// Kafka brokers (host:port,…); in-process transport when absent.
    #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS")]
    kafka_bootstrap_servers: Option<String>,
    /// Prefix of every Kafka topic.
    #[arg(long, env = "SAGAFLOW_TOPIC_PREFIX", default_value = "sagaflow")]
    topic_prefix: String,
    /// Kafka consumer-group session timeout: how soon a crashed member's partitions pass to
    /// the others (the broker's group.min.session.timeout.ms bounds it, 6 s by default).
    #[arg(long, env = "SAGAFLOW_KAFKA_SESSION_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    kafka_session_timeout: Duration,
    /// The longest a Kafka fetch waits at the broker for new messages. Apache Kafka answers
    /// as soon as a message arrives, so a long wait costs no latency; a broker that answers
    /// only when the wait is over (the development broker nisshi) adds about half of it to
    /// every hop, and a short one makes it poll more.
    #[arg(long, env = "SAGAFLOW_KAFKA_FETCH_WAIT", default_value = "100ms", value_parser = humantime::parse_duration)]
    kafka_fetch_wait: Duration,
    /// How long published outbox rows are kept (e.g. 24h, 30m).
    #[arg(long, env = "SAGAFLOW_OUTBOX_RETENTION", default_value = "24h", value_parser = humantime::parse_duration)]
    outbox_retention: Duration,
    /// How long a saga may go without progress before it counts as stuck (a definition's
    /// `stuck_after_ms` wins).
    #[arg(long, env = "SAGAFLOW_STUCK_AFTER", default_value = "15m", value_parser = stuck_after)]
    stuck_after: Duration,
    /// Long polls (`?wait=`) served at once; past it, 503 with `Retry-After`.
    #[arg(long, env = "SAGAFLOW_MAX_LONG_POLLS", default_value_t = 1_000)]
    max_long_polls: usize,
    /// The longest a request may take (503 past it); a long poll ends a second before.
    #[arg(long, env = "SAGAFLOW_REQUEST_TIMEOUT", default_value = "40s", value_parser = humantime::parse_duration)]
    request_timeout: Duration,
    /// Writes (POST, PUT) per second per caller (by token `sub`, else peer address); 429 with
    /// `Retry-After` past it. Default: 100 when the HTTP address is not loopback, else off.
    #[arg(long, env = "SAGAFLOW_RATE_LIMIT_WRITES")]
    rate_limit_writes: Option<u32>,
    /// The burst a caller may write at once before its rate applies.
    #[arg(long, env = "SAGAFLOW_RATE_LIMIT_BURST", default_value_t = 200)]
    rate_limit_burst: u32,
    /// The largest request body, in bytes (413 past it).
    #[arg(long, env = "SAGAFLOW_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    max_body_bytes: usize,
    #[command(flatten)]
    auth: AuthArgs,
    /// How long processed-message (deduplication) records are kept; keep it longer than the
    /// topics' retention, so a message redelivered from Kafka is still recognised.
    #[arg(long, env = "SAGAFLOW_DEDUP_WINDOW", default_value = "8d", value_parser = humantime::parse_duration)]
    dedup_window: Duration,
    /// Circuit breakers, repeatable: `key=value,…` sets the defaults, `participant:key=value,…`
    /// one participant. Keys: failure_rate (0.5), min_calls (5), window (30s), cool_down (15s).
    /// In the variable, settings are separated by ';'.
    #[arg(long = "circuit-breaker", env = "SAGAFLOW_CIRCUIT_BREAKER", value_delimiter = ';')]
    circuit_breaker: Vec<BreakerSetting>,
}

/// A stuck threshold: 1 s to 30 days, as a definition's `stuck_after_ms`.
fn stuck_after(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if d < Duration::from_secs(1) || d > Duration::from_secs(30 * 24 * 3600) {
        return Err("must be between 1s and 30d".into());
    }
    Ok(d)
}

fn main() -> ExitCode {
    let command = Cli::parse().command;
    let telemetry = api::telemetry::Telemetry::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = match command {
        Command::Serve(args) => runtime.block_on(serve(*args)),
        Command::Index { command: IndexCommand::Rebuild(args) } => runtime.block_on(rebuild_index(args)),
    };
    // Tasks aborted at shutdown may be stuck in a blocking call: do not wait for them long.
    runtime.shutdown_timeout(Duration::from_secs(1));
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "sagaflow stopped with an error");
            ExitCode::FAILURE
        }
    }
}

async fn rebuild_index(args: StoreArgs) -> Result<(), StartError> {
    let store = server::open_store(&args.config()).await?;
    let started = std::time::Instant::now();
    let projection = engine::saga_index_projection::SagaIndexProjection::new(store);
    let events = projection.rebuild().await?;
    tracing::info!(events, elapsed = ?started.elapsed(), "saga index rebuilt from {events} events");
    Ok(())
}

async fn serve(args: ServeArgs) -> Result<(), StartError> {
    let roles = Roles::parse(&args.roles).map_err(StartError::Config)?;
    // Before anything is opened: an API that would be open to the network is refused first.
    let auth = args.auth.config(args.http_addr)?;
    let store_config = args.store.config();
    let transport_config = match &args.kafka_bootstrap_servers {
        Some(servers) => {
            let mut kafka = KafkaConfig::new(servers.clone());
            kafka.session_timeout_ms = u32::try_from(args.kafka_session_timeout.as_millis()).unwrap_or(u32::MAX);
            kafka.fetch_wait_max_ms = u32::try_from(args.kafka_fetch_wait.as_millis()).unwrap_or(u32::MAX).max(1);
            TransportConfig::Kafka(kafka)
        }
        None => TransportConfig::InProcess,
    };
    match (&store_config, &transport_config) {
        (StoreConfig::Sqlite(dir), TransportConfig::InProcess) => tracing::info!(
            data_dir = %dir.display(),
            "sagaflow starting embedded: SQLite store in {}, in-process transport (set DATABASE_URL and KAFKA_BOOTSTRAP_SERVERS for PostgreSQL and Kafka)",
            dir.display()
        ),
        (StoreConfig::Postgres(_), TransportConfig::Kafka(kafka)) => {
            tracing::info!(servers = %kafka.bootstrap_servers, "sagaflow starting on PostgreSQL and Kafka");
        }
        _ => {
            tracing::info!(store = ?store_config_name(&store_config), transport = ?transport_config_name(&transport_config), "sagaflow starting")
        }
    }
    if matches!(transport_config, TransportConfig::InProcess) && roles != Roles::ALL {
        return Err(StartError::Config(
            "the in-process transport needs every role in one process; set KAFKA_BOOTSTRAP_SERVERS to split roles"
                .into(),
        ));
    }
    let store = server::open_store(&store_config).await?;
    let transport = server::open_transport(&transport_config)?;
    let topics = Topics::new(args.topic_prefix.clone());
    let mut options = server::EngineOptions::new(format!("{}.", args.topic_prefix));
    options.retention.outbox = args.outbox_retention;
    options.retention.dedup_window = args.dedup_window;
    options.stuck_after = args.stuck_after;
    options.circuit_breakers = args.circuit_breaker;
    options.auth = auth;
    let off_loopback = !args.http_addr.ip().is_loopback();
    if options.auth.is_none() && off_loopback {
        tracing::warn!(addr = %args.http_addr, "serving without authentication (--insecure-no-auth)");
    }
    options.limits = api::limits::Limits::new(args.max_long_polls, args.request_timeout, args.max_body_bytes);
    let rate = args.rate_limit_writes.or(off_loopback.then_some(100));
    if let Some(rate) = rate {
        let per_second =
            NonZeroU32::new(rate).ok_or_else(|| StartError::Config("--rate-limit-writes must be above 0".into()))?;
        let burst = NonZeroU32::new(args.rate_limit_burst)
            .ok_or_else(|| StartError::Config("--rate-limit-burst must be above 0".into()))?;
        options.limits = options.limits.with_writes(api::limits::WriteLimit::new(per_second, burst));
    }
    let engine = server::start(store, transport, topics, roles, options).await?;

    let shutdown = CancellationToken::new();
    tokio::spawn(wait_for_signal(shutdown.clone()));
    {
        // Every process serves health and metrics; only the `api` role serves the API.
        let listener = tokio::net::TcpListener::bind(args.http_addr).await?;
        let layout = api::app::Layout { api: roles.api, metrics: args.metrics_addr.is_none() };
        if roles.api {
            tracing::info!(addr = %args.http_addr, "HTTP API listening");
        } else {
            tracing::info!(addr = %args.http_addr, "health listening (no api role)");
        }
        let app = api::app::build(engine.state.clone(), layout);
        if let Some(addr) = args.metrics_addr {
            let metrics = tokio::net::TcpListener::bind(addr).await?;
            tracing::info!(%addr, "metrics listening");
            let app = api::app::metrics_router(engine.state.clone());
            let stop = shutdown.clone().cancelled_owned();
            tokio::spawn(async move {
                let served = axum::serve(metrics, app.into_make_service_with_connect_info::<SocketAddr>())
                    .with_graceful_shutdown(stop)
                    .await;
                if let Err(err) = served {
                    tracing::error!(error = %err, "the metrics listener stopped");
                }
            });
        }
        let server = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(shutdown.clone().cancelled_owned());
        // Long polls (`?wait=`) could hold a graceful stop for their whole wait: give
        // in-flight requests a bounded time, then close them.
        let drained = async {
            shutdown.cancelled().await;
            tokio::time::sleep(HTTP_DRAIN).await;
        };
        tokio::select! {
            served = server => served?,
            () = drained => tracing::warn!("requests still in flight after {HTTP_DRAIN:?}; closing them"),
        }
    }
    tracing::info!("shutting down: stopping consumers, flushing the outbox");
    engine.runtime.shutdown_within(ROLES_STOP).await;
    // Kafka clients may block in their destructors while the broker is unreachable; all that
    // must survive is durable already, so they are let go on a thread nobody waits for.
    let state = engine.state;
    if let Err(err) = std::thread::Builder::new().name("release".into()).spawn(move || drop(state)) {
        tracing::warn!(error = %err, "cannot release clients on their own thread");
    }
    tracing::info!("stopped");
    Ok(())
}

/// How long in-flight HTTP requests may run on after a shutdown signal.
const HTTP_DRAIN: Duration = Duration::from_secs(4);
/// How long the background roles get to stop (the relay flushes for at most 5 s of it).
/// With `HTTP_DRAIN`, a stop takes at most ~12 s whatever state the broker is in.
const ROLES_STOP: Duration = Duration::from_secs(8);

fn store_config_name(config: &StoreConfig) -> &'static str {
    match config {
        StoreConfig::Postgres(_) => "postgres",
        StoreConfig::Sqlite(_) => "sqlite",
    }
}

fn transport_config_name(config: &TransportConfig) -> &'static str {
    match config {
        TransportConfig::Kafka(_) => "kafka",
        TransportConfig::InProcess => "in-process",
    }
}

async fn wait_for_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM");
                let _ = ctrl_c.await;
                shutdown.cancel();
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown signal received");
    shutdown.cancel();
}
