//! The embedded mode (SQLite + in-process transport) after a crash: nothing that was in
//! flight is lost, so no saga has to wait for a timeout to recover.

use std::sync::Arc;
use std::time::Duration;

use api::server::{self, EngineOptions, Roles};
use engine::coordinator::saga_stream;
use engine::topics::Topics;
use engine::transport::in_process::InProcessTransport;
use engine::Repository;
use event_store::sqlite::SqliteEventStore;
use event_store::{EventStore, EventStoreExt};
use rust_decimal::Decimal;
use sagaflow_tests::eventually;
use sagas::credit::{CreditCommand, CustomerCredit};
use sagas::inventory::{Inventory, InventoryCommand};
use sagas::order_input::{NewOrder, OrderLine};
use sagas::order_view::OrderViewStatus;

async fn engine_on(store: &Arc<dyn EventStore>) -> server::Engine {
    server::start(
        Arc::clone(store),
        Arc::new(InProcessTransport::new()),
        Topics::default(),
        Roles::ALL,
        EngineOptions::new("sagaflow."),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_crash_loses_no_message_in_flight() {
    sagaflow_tests::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> = Arc::new(SqliteEventStore::open(dir.path()).await.unwrap());
    Repository::<Inventory>::new(Arc::clone(&store))
        .execute("A", &InventoryCommand::SetStock { available: 1000 })
        .await
        .unwrap();
    Repository::<CustomerCredit>::new(Arc::clone(&store))
        .execute("c", &CreditCommand::SetLimit { limit: Decimal::from(100_000) })
        .await
        .unwrap();

    let first = engine_on(&store).await;
    let mut ids = Vec::new();
    for _ in 0..40 {
        let order = NewOrder {
            customer_id: "c".into(),
            items: vec![OrderLine { sku: "A".into(), quantity: 1, unit_price: Decimal::ONE }],
        };
        ids.push(first.state.orders.submit(order).await.unwrap().order_id);
    }
    let orders = Arc::clone(&first.state.orders);
    eventually("a first approved order", Duration::from_secs(30), || async {
        orders.view(&ids[0]).await.unwrap().filter(|v| v.status.is_terminal())
    })
    .await;
    // Crash: every task dropped wherever it is, messages in the in-process queues lost.
    let server::Engine { state, runtime } = first;
    runtime.abort();
    let mut in_flight = 0;
    for id in &ids {
        in_flight += usize::from(!state.orders.view(id).await.unwrap().unwrap().status.is_terminal());
    }
    assert!(in_flight > 0, "the crash must catch sagas mid-way for this test to prove anything");
    println!("{in_flight} of {} sagas were in flight at the crash", ids.len());
    drop(state);

    let second = engine_on(&store).await;
    for id in &ids {
        let orders = Arc::clone(&second.state.orders);
        let view = eventually("the order to finish", Duration::from_secs(60), || async {
            orders.view(id).await.unwrap().filter(|v| v.status.is_terminal())
        })
        .await;
        assert_eq!(view.status, OrderViewStatus::Approved);
        let events = store.read_stream_to_end(&saga_stream(view.saga_id), 1).await.unwrap();
        assert!(
            events.iter().all(|e| e.event_type != "StepTimedOut"),
            "saga {id} waited for a timeout: a message was lost in the crash"
        );
    }
    let stock = Repository::<Inventory>::new(Arc::clone(&store)).load("A").await.unwrap().state;
    assert_eq!((stock.available, stock.reserved()), (960, 40), "each order reserved exactly once");
    second.runtime.shutdown().await;
}
