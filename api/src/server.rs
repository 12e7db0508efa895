//! Composition: a store, a transport and the roles to run become a running engine.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use engine::circuit_breaker::{BreakerSetting, CircuitBreakers};
use engine::coordinator::Coordinator;
use engine::definition_registry::DefinitionRegistry;
use engine::retention::Retention;
use engine::runtime::{Runtime, RuntimeConfig};
use engine::saga_index_projection::SagaIndexProjection;
use engine::stuck_sagas::DEFAULT_STUCK_AFTER;
use engine::topics::Topics;
use engine::transport::in_process::InProcessTransport;
use engine::transport::kafka::{KafkaConfig, KafkaTransport};
use engine::transport::Transport;
use event_store::postgres::PgEventStore;
use event_store::sqlite::SqliteEventStore;
use event_store::EventStore;
use sagas::order_view::OrderService;

use crate::limits::Limits;
use crate::state::AppState;

/// Which roles this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub api: bool,
    pub coordinator: bool,
    pub participants: bool,
}

impl Roles {
    /// Every role.
    pub const ALL: Self = Self { api: true, coordinator: true, participants: true };

    /// Parses `api,coordinator,participants` (any subset, at least one).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut roles = Self { api: false, coordinator: false, participants: false };
        for role in text.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            match role {
                "api" => roles.api = true,
                "coordinator" => roles.coordinator = true,
                "participants" => roles.participants = true,
                other => return Err(format!("unknown role '{other}' (known: api, coordinator, participants)")),
            }
        }
        if roles == (Self { api: false, coordinator: false, participants: false }) {
            return Err("give at least one role".into());
        }
        Ok(roles)
    }
}

/// Where events are stored.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    Postgres(String),
    Sqlite(PathBuf),
}

/// How messages travel.
#[derive(Debug, Clone)]
pub enum TransportConfig {
    Kafka(KafkaConfig),
    InProcess,
}

/// Opens the configured store.
pub async fn open_store(config: &StoreConfig) -> Result<Arc<dyn EventStore>, StartError> {
    Ok(match config {
        StoreConfig::Postgres(url) => Arc::new(PgEventStore::connect(url).await?),
        StoreConfig::Sqlite(dir) => Arc::new(SqliteEventStore::open(dir).await?),
    })
}

/// Creates the configured transport.
pub fn open_transport(config: &TransportConfig) -> Result<Arc<dyn Transport>, StartError> {
    Ok(match config {
        TransportConfig::Kafka(config) => Arc::new(KafkaTransport::new(config.clone())?),
        TransportConfig::InProcess => Arc::new(InProcessTransport::new()),
    })
}

/// Anything that can stop the engine from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] event_store::Error),
    #[error(transparent)]
    Engine(#[from] engine::Error),
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A running engine: the API state and the background roles.
pub struct Engine {
    pub state: AppState,
    pub runtime: Runtime,
}

/// How a started engine places itself and what it keeps.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Prefix of the consumer group ids (`<prefix>coordinator`, `<prefix>participant.<name>`).
    pub group_prefix: String,
    /// Retention of published outbox rows and deduplication records.
    pub retention: Retention,
    /// How long a saga may go without progress before it counts as stuck, unless its
    /// definition says otherwise.
    pub stuck_after: Duration,
    /// Long polls, request time and body size.
    pub limits: Limits,
    /// Bearer-token authentication; `None` leaves the API open (loopback use).
    pub auth: Option<Arc<crate::auth::AuthConfig>>,
    /// The participants' circuit breakers: defaults, then per-participant settings.
    pub circuit_breakers: Vec<BreakerSetting>,
}

impl EngineOptions {
    /// `group_prefix` with the default retention.
    pub fn new(group_prefix: impl Into<String>) -> Self {
        Self {
            group_prefix: group_prefix.into(),
            retention: Retention::default(),
            stuck_after: DEFAULT_STUCK_AFTER,
            limits: Limits::default(),
            auth: None,
            circuit_breakers: Vec::new(),
        }
    }
}

/// Registers the built-in definition and starts the roles over `store` and `transport`.
pub async fn start(
    store: Arc<dyn EventStore>,
    transport: Arc<dyn Transport>,
    topics: Topics,
    roles: Roles,
    options: EngineOptions,
) -> Result<Engine, StartError> {
    let registry = Arc::new(DefinitionRegistry::new(Arc::clone(&store)));
    registry.ensure(sagas::order_fulfilment()).await?;
    let breakers = CircuitBreakers::new(&options.circuit_breakers).map_err(StartError::Config)?;
    let coordinator =
        Arc::new(Coordinator::new(Arc::clone(&store), registry, topics).with_circuit_breakers(Arc::new(breakers)));
    let participants = if roles.participants {
        sagas::participants::builtin(&store).into_iter().map(|(name, handler)| (name.to_owned(), handler)).collect()
    } else {
        Vec::new()
    };
    let config = RuntimeConfig {
        coordinator: roles.coordinator,
        // Every process writes to the outbox (sagas started, replies): every one relays.
        relay: true,
        participants,
        group_prefix: options.group_prefix,
        timer_poll: Duration::from_millis(100),
        // The in-process transport means one process owns the store: its relay keeps one id,
        // so after a crash the next start takes over the claims at once.
        relay_id: (transport.name() == "in-process").then(|| "embedded".to_owned()),
        retention: Some(options.retention),
        // The API lists sagas from the index: a process serving it keeps the index.
        saga_index: roles.api.then_some(options.stuck_after),
        ..RuntimeConfig::default()
    };
    let runtime = Runtime::start(Arc::clone(&store), Arc::clone(&transport), Arc::clone(&coordinator), config).await?;
    let orders = Arc::new(OrderService::new(Arc::clone(&coordinator), Arc::clone(&store)));
    let projection = SagaIndexProjection::new(Arc::clone(&store));
    let state = AppState {
        store,
        transport,
        coordinator,
        orders,
        metrics: crate::metrics::recorder(),
        projection,
        stuck_after: options.stuck_after,
        consumers: runtime.consumers().into(),
        limits: options.limits,
        auth: options.auth,
    };
    Ok(Engine { state, runtime })
}
