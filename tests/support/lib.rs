//! Shared helpers of the integration tests.
//!
//! PostgreSQL tests use `#[sqlx::test]`, which gives every test a fresh database with the
//! migrations applied; it needs `DATABASE_URL`. Kafka tests need `KAFKA_BOOTSTRAP_SERVERS`.
//! `scripts/services.sh` starts both and prints them.

pub mod contract;
pub mod external;
pub mod hot_tables;
pub mod http;
pub mod otlp;
pub mod process;
pub mod shop;
pub mod tokens;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use engine::coordinator::Coordinator;
use engine::definition_registry::DefinitionRegistry;
use engine::runtime::{Runtime, RuntimeConfig};
use engine::topics::Topics;
use engine::transport::kafka::{KafkaConfig, KafkaTransport};
use engine::transport::Transport;
use event_store::postgres::PgEventStore;
use event_store::EventStore;
use sagas::order_view::OrderService;
use sqlx::PgPool;
use uuid::Uuid;

/// The migrations, for `#[sqlx::test(migrator = "MIGRATOR")]`.
pub use event_store::postgres::MIGRATOR;

/// An event store on a test database.
pub async fn pg_store(pool: PgPool) -> Arc<dyn EventStore> {
    Arc::new(PgEventStore::from_pool(pool).await.expect("event store on the test database"))
}

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// The broker to test against.
pub fn kafka_bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP_SERVERS")
        .expect("KAFKA_BOOTSTRAP_SERVERS must point at a Kafka-protocol broker (run scripts/test.sh)")
}

/// A Kafka transport with short sessions, for tests.
pub fn kafka_transport() -> Arc<dyn Transport> {
    let mut config = KafkaConfig::new(kafka_bootstrap());
    config.partitions = 3;
    config.session_timeout_ms = 6_000;
    config.assignment_warning_after = Duration::from_secs(15);
    // nisshi answers a fetch only when its wait is over: keep hops short.
    config.fetch_wait_max_ms = 10;
    Arc::new(KafkaTransport::new(config).expect("kafka transport"))
}

/// A fresh topic prefix and consumer-group prefix, so tests never share topics or groups.
pub fn unique_prefix() -> String {
    format!("t{}", Uuid::now_v7().simple())
}

/// The order domain running over PostgreSQL and Kafka.
pub struct OrderHarness {
    pub store: Arc<dyn EventStore>,
    pub transport: Arc<dyn Transport>,
    pub coordinator: Arc<Coordinator>,
    pub orders: OrderService,
    pub topics: Topics,
    pub prefix: String,
}

impl OrderHarness {
    /// Registers the built-in definition; starts nothing yet.
    pub async fn new(pool: PgPool) -> Self {
        init_tracing();
        let store = pg_store(pool).await;
        let prefix = unique_prefix();
        let topics = Topics::new(prefix.clone());
        let registry = Arc::new(DefinitionRegistry::new(Arc::clone(&store)));
        registry.ensure(sagas::order_fulfilment()).await.expect("register order-fulfilment");
        let coordinator = Arc::new(Coordinator::new(Arc::clone(&store), registry, topics.clone()));
        let orders = OrderService::new(Arc::clone(&coordinator), Arc::clone(&store));
        Self { store, transport: kafka_transport(), coordinator, orders, topics, prefix }
    }

    /// Starts an outbox relay, plus the coordinator when `coordinator` and the built-in
    /// participants when `participants`. `generation` picks the consumer groups.
    pub async fn start(&self, coordinator: bool, participants: bool, generation: u32) -> Runtime {
        let config = RuntimeConfig {
            coordinator,
            relay: true,
            participants: if participants {
                sagas::participants::builtin(&self.store).into_iter().map(|(n, h)| (n.to_owned(), h)).collect()
            } else {
                Vec::new()
            },
            group_prefix: format!("{}.g{generation}.", self.prefix),
            timer_poll: Duration::from_millis(50),
            relay_id: None,
            retention: None,
            ..RuntimeConfig::default()
        };
        Runtime::start(Arc::clone(&self.store), Arc::clone(&self.transport), Arc::clone(&self.coordinator), config)
            .await
            .expect("runtime starts")
    }

    /// Everything in one process.
    pub async fn start_all(&self) -> Runtime {
        self.start(true, true, 0).await
    }
}

/// Polls `check` until it returns `Some`, failing the test after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
