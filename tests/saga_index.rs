//! The saga index on the real databases: rebuilt from history by `sagaflow index rebuild`,
//! and kept right by projections racing in several processes.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use api::server::{self, EngineOptions, Roles};
use engine::saga_index_projection::SagaIndexProjection;
use engine::topics::Topics;
use engine::transport::in_process::InProcessTransport;
use engine::Repository;
use event_store::saga_index::{SagaQuery, SagaRow};
use event_store::sqlite::SqliteEventStore;
use event_store::{AllPosition, EventStore};
use rust_decimal::Decimal;
use sagaflow_tests::process::{database_url_of, sagaflow_binary};
use sagaflow_tests::{eventually, pg_store, MIGRATOR};
use sagas::credit::{CreditCommand, CustomerCredit};
use sagas::inventory::{Inventory, InventoryCommand};
use sagas::order_input::{NewOrder, OrderLine};
use sqlx::PgPool;

fn everything() -> SagaQuery {
    SagaQuery { limit: 1_000, ..SagaQuery::default() }
}

/// Runs eight orders (two of them short of stock) to their end on `store`, and returns the
/// index rows once the index has them all.
async fn run_orders(store: &Arc<dyn EventStore>) -> Vec<SagaRow> {
    Repository::<Inventory>::new(Arc::clone(store))
        .execute("A", &InventoryCommand::SetStock { available: 6 })
        .await
        .unwrap();
    Repository::<CustomerCredit>::new(Arc::clone(store))
        .execute("c", &CreditCommand::SetLimit { limit: Decimal::from(1_000) })
        .await
        .unwrap();
    let engine = server::start(
        Arc::clone(store),
        Arc::new(InProcessTransport::new()),
        Topics::new(sagaflow_tests::unique_prefix()),
        Roles::ALL,
        EngineOptions::new("index."),
    )
    .await
    .unwrap();
    let mut ids = Vec::new();
    for _ in 0..8 {
        let order = NewOrder {
            customer_id: "c".into(),
            items: vec![OrderLine { sku: "A".into(), quantity: 1, unit_price: Decimal::ONE }],
        };
        ids.push(engine.state.orders.submit(order).await.unwrap().order_id);
    }
    for id in &ids {
        let orders = Arc::clone(&engine.state.orders);
        eventually("the order to finish", Duration::from_secs(60), || async {
            orders.view(id).await.unwrap().filter(|v| v.status.is_terminal())
        })
        .await;
    }
    let projection = engine.state.projection.clone();
    let rows = eventually("the index to hold every saga's end", Duration::from_secs(30), || async {
        let rows = projection.index().query(&everything()).await.unwrap();
        (projection.lag().await.unwrap() == 0 && rows.len() == 8 && rows.iter().all(|r| r.finished_at.is_some()))
            .then_some(rows)
    })
    .await;
    engine.runtime.shutdown().await;
    let statuses: Vec<&str> = rows.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == "COMPLETED").count(), 6, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == "COMPENSATED").count(), 2, "{statuses:?}");
    rows
}

/// Empties the index, rebuilds it with the binary, and checks it holds `rows` again.
async fn rebuild_with_the_binary(store: &Arc<dyn EventStore>, rows: &[SagaRow], configure: impl Fn(&mut Command)) {
    let index = store.saga_index();
    index.reset().await.unwrap();
    assert!(index.query(&everything()).await.unwrap().is_empty());
    let mut command = Command::new(sagaflow_binary());
    command.args(["index", "rebuild"]).env_remove("DATABASE_URL").env_remove("SAGAFLOW_DATA_DIR");
    configure(&mut command);
    let output = command.output().unwrap();
    let log = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "rebuild failed: {log}");
    assert!(log.contains("saga index rebuilt"), "{log}");
    assert_eq!(index.query(&everything()).await.unwrap(), rows, "the rebuilt index is the one kept live");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_index_is_rebuilt_from_history_by_the_binary() {
    sagaflow_tests::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> = Arc::new(SqliteEventStore::open(dir.path()).await.unwrap());
    let rows = run_orders(&store).await;
    rebuild_with_the_binary(&store, &rows, |c| {
        c.arg("--data-dir").arg(dir.path());
    })
    .await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn postgres_index_is_rebuilt_from_history_by_the_binary(pool: PgPool) {
    sagaflow_tests::init_tracing();
    let url = database_url_of(&pool).await;
    let store = pg_store(pool).await;
    let rows = run_orders(&store).await;
    rebuild_with_the_binary(&store, &rows, |c| {
        c.env("DATABASE_URL", &url);
    })
    .await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn racing_projections_build_the_same_index_as_one(pool: PgPool) {
    sagaflow_tests::init_tracing();
    let store = pg_store(pool).await;
    let rows = run_orders(&store).await;
    store.saga_index().reset().await.unwrap();
    // Three projections (as in three processes) take turns on one checkpoint; each batch is
    // written once, by whichever gets there first.
    let racers: Vec<_> = (0..3)
        .map(|_| {
            let projection = SagaIndexProjection::new(Arc::clone(&store)).with_batch(3);
            tokio::spawn(async move { projection.catch_up().await.unwrap() })
        })
        .collect();
    for racer in racers {
        racer.await.unwrap();
    }
    assert_eq!(store.saga_index().query(&everything()).await.unwrap(), rows);
    // A writer that read the checkpoint before another moved it writes nothing.
    let index = store.saga_index();
    let now = index.checkpoint().await.unwrap();
    let stale = index.write(&rows[..1], AllPosition::START, now).await;
    assert!(matches!(stale, Err(event_store::Error::CheckpointMoved)), "{stale:?}");
    assert_eq!(index.checkpoint().await.unwrap(), now);
}
