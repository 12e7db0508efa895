//! The order-fulfilment saga end to end over real PostgreSQL and a real Kafka-protocol broker.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use engine::definition::{RetryPolicy, SagaDefinition, StepDefinition};
use engine::envelope::{Envelope, MessageKind, HEADER_DLQ_REASON, HEADER_DLQ_SOURCE};
use engine::saga::SagaStatus;
use engine::Repository;
use event_store::{EventStoreExt, OutgoingMessage};
use rust_decimal::Decimal;
use sagaflow_tests::{eventually, OrderHarness, MIGRATOR};
use sagas::credit::{CreditCommand, CustomerCredit};
use sagas::inventory::{Inventory, InventoryCommand};
use sagas::order::{Order, OrderStatus};
use sagas::order_input::{NewOrder, OrderLine};
use sagas::order_view::{OrderView, OrderViewStatus};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(90);

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn line(sku: &str, quantity: u32, price: &str) -> OrderLine {
    OrderLine { sku: sku.into(), quantity, unit_price: d(price) }
}

async fn stock(h: &OrderHarness, sku: &str, available: u64) {
    Repository::<Inventory>::new(Arc::clone(&h.store))
        .execute(sku, &InventoryCommand::SetStock { available })
        .await
        .unwrap();
}

async fn credit(h: &OrderHarness, customer: &str, limit: &str) {
    Repository::<CustomerCredit>::new(Arc::clone(&h.store))
        .execute(customer, &CreditCommand::SetLimit { limit: d(limit) })
        .await
        .unwrap();
}

async fn inventory(h: &OrderHarness, sku: &str) -> Inventory {
    Repository::<Inventory>::new(Arc::clone(&h.store)).load(sku).await.unwrap().state
}

async fn customer(h: &OrderHarness, id: &str) -> CustomerCredit {
    Repository::<CustomerCredit>::new(Arc::clone(&h.store)).load(id).await.unwrap().state
}

async fn until_terminal(h: &OrderHarness, order_id: &str) -> OrderView {
    eventually("the order to finish", WAIT, || async {
        // The test shares a five-connection pool with every role it runs: a read that finds
        // it busy is tried again, as the engine's own loops do.
        match h.orders.view(order_id).await {
            Ok(view) => view.filter(|v| v.status.is_terminal()),
            Err(err) if err.is_transient() => {
                tracing::warn!(error = %err, "reading the order failed; trying again");
                None
            }
            Err(err) => panic!("reading order {order_id}: {err}"),
        }
    })
    .await
}

async fn saga_event_types(h: &OrderHarness, saga_id: Uuid) -> Vec<String> {
    // The saga's own stream, as recorded.
    let events = h.store.read_stream_to_end(&format!("saga-{saga_id}"), 1).await.unwrap();
    events.into_iter().map(|e| format!("{}{}", e.event_type, step_suffix(&e.data))).collect()
}

fn step_suffix(data: &serde_json::Value) -> String {
    data.get("step").and_then(|s| s.as_str()).map(|s| format!("({s})")).unwrap_or_default()
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn happy_order_is_approved_and_its_saga_stream_shows_every_step(pool: PgPool) {
    let h = OrderHarness::new(pool).await;
    let runtime = h.start_all().await;
    stock(&h, "A", 10).await;
    stock(&h, "B", 5).await;
    credit(&h, "c-1", "500.00").await;

    let order = NewOrder { customer_id: "c-1".into(), items: vec![line("A", 2, "10.50"), line("B", 1, "3.25")] };
    let submitted = h.orders.submit(order).await.unwrap();
    let pending = h.orders.view(&submitted.order_id).await.unwrap().expect("visible at once");
    assert_eq!(pending.total, d("24.25"));

    let view = until_terminal(&h, &submitted.order_id).await;
    assert_eq!(view.status, OrderViewStatus::Approved, "{view:?}");
    assert_eq!(
        saga_event_types(&h, submitted.saga_id).await,
        [
            "SagaStarted",
            "StepCommandSent(reserve-inventory)",
            "StepSucceeded(reserve-inventory)",
            "StepCommandSent(create-order)",
            "StepSucceeded(create-order)",
            "StepCommandSent(process-payment)",
            "StepSucceeded(process-payment)",
            "StepCommandSent(approve-order)",
            "StepSucceeded(approve-order)",
            "SagaCompleted",
        ]
    );
    let a = inventory(&h, "A").await;
    assert_eq!((a.available, a.reserved()), (8, 2));
    assert_eq!(customer(&h, "c-1").await.available(), d("475.75"));
    let order = Repository::<Order>::new(Arc::clone(&h.store)).load(&submitted.order_id).await.unwrap();
    assert_eq!(order.state.status, OrderStatus::Approved);
    runtime.shutdown().await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn short_stock_order_is_rejected_before_anything_else_runs(pool: PgPool) {
    let h = OrderHarness::new(pool).await;
    let runtime = h.start_all().await;
    stock(&h, "A", 1).await;
    credit(&h, "c-1", "500.00").await;
    let submitted =
        h.orders.submit(NewOrder { customer_id: "c-1".into(), items: vec![line("A", 2, "1.00")] }).await.unwrap();
    let view = until_terminal(&h, &submitted.order_id).await;
    assert_eq!(view.status, OrderViewStatus::Rejected);
    let reason = view.reason.unwrap();
    assert!(reason.contains("insufficient stock for SKU A"), "{reason}");
    assert_eq!(
        saga_event_types(&h, submitted.saga_id).await,
        [
            "SagaStarted",
            "StepCommandSent(reserve-inventory)",
            "StepFailed(reserve-inventory)",
            "CompensationStarted",
            "SagaCompensated"
        ]
    );
    assert_eq!(
        h.store.stream_version(&format!("order-{}", submitted.order_id)).await.unwrap(),
        None,
        "no order created"
    );
    assert_eq!(customer(&h, "c-1").await.available(), d("500.00"));
    assert_eq!(inventory(&h, "A").await.available, 1);
    runtime.shutdown().await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn declined_payment_cancels_the_order_then_releases_stock(pool: PgPool) {
    let h = OrderHarness::new(pool).await;
    let runtime = h.start_all().await;
    stock(&h, "A", 10).await;
    credit(&h, "poor", "5.00").await;
    let submitted =
        h.orders.submit(NewOrder { customer_id: "poor".into(), items: vec![line("A", 3, "7.00")] }).await.unwrap();
    let view = until_terminal(&h, &submitted.order_id).await;
    assert_eq!(view.status, OrderViewStatus::Rejected);
    let reason = view.reason.unwrap();
    assert!(reason.contains("payment declined") && reason.contains("21.00"), "{reason}");
    assert_eq!(
        saga_event_types(&h, submitted.saga_id).await,
        [
            "SagaStarted",
            "StepCommandSent(reserve-inventory)",
            "StepSucceeded(reserve-inventory)",
            "StepCommandSent(create-order)",
            "StepSucceeded(create-order)",
            "StepCommandSent(process-payment)",
            "StepFailed(process-payment)",
            "CompensationStarted",
            "CompensationSent(create-order)",
            "StepCompensated(create-order)",
            "CompensationSent(reserve-inventory)",
            "StepCompensated(reserve-inventory)",
            "SagaCompensated",
        ]
    );
    let a = inventory(&h, "A").await;
    assert_eq!((a.available, a.reserved()), (10, 0), "stock released");
    let order = Repository::<Order>::new(Arc::clone(&h.store)).load(&submitted.order_id).await.unwrap();
    assert_eq!(order.state.status, OrderStatus::Cancelled);
    assert_eq!(customer(&h, "poor").await.available(), d("5.00"));
    runtime.shutdown().await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn killed_coordinator_loses_no_saga_and_runs_no_step_twice(pool: PgPool) {
    let h = OrderHarness::new(pool).await;
    let participants = h.start(false, true, 0).await;
    stock(&h, "A", 1000).await;
    credit(&h, "c-1", "100000.00").await;
    let first = h.start(true, false, 0).await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        let order = NewOrder { customer_id: "c-1".into(), items: vec![line("A", 1, "2.00")] };
        ids.push(h.orders.submit(order).await.unwrap().order_id);
    }
    // Let some sagas get under way, then crash the coordinator (no graceful flush).
    eventually("some progress", WAIT, || async {
        let a = Repository::<Inventory>::new(Arc::clone(&h.store)).load("A").await.ok()?.state;
        (a.reserved() > 0).then_some(())
    })
    .await;
    first.abort();
    // A new coordinator in the same consumer group resumes from the committed offsets;
    // replies whose effect was durable but whose offset was not committed come again and
    // must be dropped.
    let second = h.start(true, false, 0).await;
    for id in &ids {
        let view = until_terminal(&h, id).await;
        assert_eq!(view.status, OrderViewStatus::Approved, "{view:?}");
    }
    let a = inventory(&h, "A").await;
    assert_eq!((a.available, a.reserved()), (980, 20), "each order reserved exactly once");
    assert_eq!(customer(&h, "c-1").await.available(), d("99960.00"), "each order paid exactly once");
    for id in &ids {
        let types = saga_event_types(&h, Uuid::parse_str(id).unwrap()).await;
        assert_eq!(types.iter().filter(|t| t.starts_with("StepSucceeded")).count(), 4, "{types:?}");
        let order_events = h.store.read_stream_to_end(&format!("order-{id}"), 1).await.unwrap();
        assert_eq!(order_events.iter().filter(|e| e.event_type == "OrderCreated").count(), 1);
    }
    second.shutdown().await;
    participants.shutdown().await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn participant_that_receives_the_same_command_twice_applies_it_once(pool: PgPool) {
    let h = OrderHarness::new(pool).await;
    stock(&h, "A", 10).await;
    let runtime = h.start(false, true, 0).await;
    let order_id = Uuid::now_v7();
    let command = Envelope {
        message_id: format!("{order_id}/reserve-inventory/do/1"),
        saga_id: order_id,
        kind: MessageKind::Command,
        step: "reserve-inventory".into(),
        message_type: "ReserveInventory".into(),
        attempt: 1,
        in_reply_to: None,
        reply_to: Some(h.topics.replies()),
        payload: json!({"order_id": order_id.to_string(), "customer_id": "c", "items": [{"sku": "A", "quantity": 4, "unit_price": "1.00"}], "total": "4.00"}),
        outcome: None,
        sent_at: chrono::Utc::now(),
    };
    let message = command.to_message(&h.topics.commands("inventory"), None);
    h.transport.publish(&[message.clone(), message]).await.unwrap();
    let mut replies = h.transport.subscribe(&format!("{}.reader", h.prefix), &[h.topics.replies()]).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(30), replies.recv()).await.expect("a reply").unwrap();
    let reply = Envelope::parse(&reply.payload).unwrap();
    assert_eq!(reply.in_reply_to.as_deref(), Some(command.message_id.as_str()));
    assert!(
        tokio::time::timeout(Duration::from_secs(3), replies.recv()).await.is_err(),
        "the duplicate is dropped without a second reply"
    );
    let a = inventory(&h, "A").await;
    assert_eq!((a.available, a.reserved()), (6, 4));
    let events = h.store.read_stream_to_end("inventory-A", 1).await.unwrap();
    assert_eq!(events.iter().filter(|e| e.event_type == "StockReserved").count(), 1);
    runtime.shutdown().await;
}

/// Reads `count` messages from `topic` with a plain consumer in a fresh group.
async fn read_topic(
    h: &OrderHarness,
    topic: &str,
    count: usize,
    timeout: Duration,
) -> Vec<(BTreeMap<String, String>, Vec<u8>)> {
    let mut consumer =
        h.transport.subscribe(&format!("{}.reader.{}", h.prefix, Uuid::now_v7()), &[topic.to_owned()]).await.unwrap();
    let mut out = Vec::new();
    while out.len() < count {
        let d = tokio::time::timeout(timeout, consumer.recv()).await.expect("message on topic").unwrap();
        out.push((d.headers, d.payload));
    }
    out
}

/// A warehouse that never answers `Notify` but does answer its compensation.
async fn silent_warehouse(h: &OrderHarness, stop: tokio_util::sync::CancellationToken) {
    let mut commands =
        h.transport.subscribe(&format!("{}.warehouse", h.prefix), &[h.topics.commands("warehouse")]).await.unwrap();
    loop {
        let delivery = tokio::select! {
            () = stop.cancelled() => return,
            d = commands.recv() => d.unwrap(),
        };
        let command = Envelope::parse(&delivery.payload).unwrap();
        if command.message_type == "CancelNotify" {
            let reply = command.reply(engine::envelope::Outcome::Success, json!({}));
            h.transport.publish(&[reply.to_message(&h.topics.replies(), None)]).await.unwrap();
        }
        commands.commit(&delivery).await.unwrap();
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn unanswered_step_times_out_is_retried_then_compensated(pool: PgPool) {
    let h = Arc::new(OrderHarness::new(pool).await);
    let runtime = h.start_all().await;
    stock(&h, "A", 10).await;
    let silent = StepDefinition {
        name: "notify-warehouse".into(),
        participant: "warehouse".into(),
        command: "Notify".into(),
        compensation: Some("CancelNotify".into()),
        timeout_ms: 400,
        retry: RetryPolicy { max_attempts: 2, initial_backoff_ms: 100, max_backoff_ms: 200, multiplier: 2 },
    };
    let mut steps = sagas::order_fulfilment().steps;
    steps.truncate(1);
    steps.push(silent);
    let definition = SagaDefinition {
        stuck_after_ms: None,
        on_open_circuit: Default::default(),
        name: "reserve-then-notify".into(),
        version: 0,
        steps,
    };
    h.coordinator.registry().register(definition).await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let warehouse = tokio::spawn({
        let (h, stop) = (Arc::clone(&h), stop.clone());
        async move { silent_warehouse(&h, stop).await }
    });
    let order_id = Uuid::now_v7();
    let input = json!({"order_id": order_id.to_string(), "customer_id": "c", "items": [{"sku": "A", "quantity": 3, "unit_price": "1.00"}], "total": "3.00"});
    let saga_id = h.coordinator.start("reserve-then-notify", None, input, Some(order_id)).await.unwrap();
    let state = eventually("the saga to finish", WAIT, || async {
        h.coordinator.load(saga_id).await.unwrap().map(|v| v.state).filter(|s| s.status.is_terminal())
    })
    .await;
    assert_eq!(state.status, SagaStatus::Compensated);
    assert_eq!(state.reason.as_deref(), Some("step 'notify-warehouse' timed out after 2 attempt(s)"));
    assert_eq!(
        saga_event_types(&h, saga_id).await,
        [
            "SagaStarted",
            "StepCommandSent(reserve-inventory)",
            "StepSucceeded(reserve-inventory)",
            "StepCommandSent(notify-warehouse)",
            "StepTimedOut(notify-warehouse)",
            "StepRetryScheduled(notify-warehouse)",
            "StepCommandSent(notify-warehouse)",
            "StepTimedOut(notify-warehouse)",
            "CompensationStarted",
            // The timed-out step may have taken effect late: it is undone first.
            "CompensationSent(notify-warehouse)",
            "StepCompensated(notify-warehouse)",
            "CompensationSent(reserve-inventory)",
            "StepCompensated(reserve-inventory)",
            "SagaCompensated",
        ]
    );
    assert_eq!(inventory(&h, "A").await.available, 10);
    stop.cancel();
    warehouse.await.unwrap();
    runtime.shutdown().await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn poison_reply_goes_to_dead_letter_and_consumption_goes_on(pool: PgPool) {
    let h = OrderHarness::new(pool).await;
    let runtime = h.start_all().await;
    stock(&h, "A", 10).await;
    credit(&h, "c-1", "100.00").await;
    let poison = OutgoingMessage {
        topic: h.topics.replies(),
        key: "x".into(),
        payload: b"{not json".to_vec(),
        headers: BTreeMap::from([("message_id".to_owned(), "poison-1".to_owned())]),
    };
    let orphan = Envelope {
        message_id: "orphan-1".into(),
        saga_id: Uuid::now_v7(),
        kind: MessageKind::Reply,
        step: "s".into(),
        message_type: "Do".into(),
        attempt: 1,
        in_reply_to: Some("nothing".into()),
        reply_to: None,
        payload: json!({}),
        outcome: Some(engine::envelope::Outcome::Success),
        sent_at: chrono::Utc::now(),
    }
    .to_message(&h.topics.replies(), None);
    h.transport.publish(&[poison, orphan]).await.unwrap();
    let submitted =
        h.orders.submit(NewOrder { customer_id: "c-1".into(), items: vec![line("A", 1, "1.00")] }).await.unwrap();
    assert_eq!(until_terminal(&h, &submitted.order_id).await.status, OrderViewStatus::Approved);
    let dead = read_topic(&h, &h.topics.dead_letter(), 2, Duration::from_secs(30)).await;
    // Partitions do not keep a global order: find each by its content.
    let reason_of = |payload_start: &[u8]| {
        let (headers, _) = dead.iter().find(|(_, p)| p.starts_with(payload_start)).expect("dead-lettered");
        headers[HEADER_DLQ_REASON].clone()
    };
    assert!(reason_of(b"{not json").contains("not a valid envelope"));
    assert!(reason_of(b"{\"message_id\":\"orphan-1\"").contains("no saga with id"));
    runtime.shutdown().await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn messages_that_cannot_be_stored_are_dead_lettered_and_every_saga_goes_on(pool: PgPool) {
    let h = OrderHarness::new(pool).await;
    let runtime = h.start_all().await;
    stock(&h, "A", 10).await;
    credit(&h, "c-1", "100.00").await;
    let order = || NewOrder { customer_id: "c-1".into(), items: vec![line("A", 1, "1.00")] };
    let first = h.orders.submit(order()).await.unwrap();
    assert_eq!(until_terminal(&h, &first.order_id).await.status, OrderViewStatus::Approved);
    // Valid JSON, for a saga that exists, but with a NUL PostgreSQL cannot store.
    let reply_with_nul = Envelope {
        message_id: "nul\u{0}reply".into(),
        saga_id: first.saga_id,
        kind: MessageKind::Reply,
        step: "reserve-inventory".into(),
        message_type: "ReserveInventory".into(),
        attempt: 1,
        in_reply_to: Some("in\u{0}reply".into()),
        reply_to: None,
        payload: json!({"note": "a\u{0}b"}),
        outcome: Some(engine::envelope::Outcome::Failure { reason: "r\u{0}".into(), retryable: false }),
        sent_at: chrono::Utc::now(),
    }
    .to_message(&h.topics.replies(), None);
    // On every command topic: a command with a NUL, a command whose message_id is too long
    // to be a deduplication key, and bytes that are no JSON at all.
    let mut poison = Vec::new();
    for participant in [sagas::participants::INVENTORY, sagas::participants::ORDERS, sagas::participants::PAYMENTS] {
        let command = |message_id: String, note: &str| OutgoingMessage {
            topic: h.topics.commands(participant),
            key: first.saga_id.to_string(),
            payload: serde_json::to_vec(&json!({"message_id": message_id, "saga_id": first.saga_id,
                "kind": "command", "step": "reserve-inventory", "type": "ReserveInventory", "payload": {"note": note}}))
            .unwrap(),
            headers: BTreeMap::new(),
        };
        poison.push(command(format!("cmd-{participant}\u{0}"), "n"));
        poison.push(command(format!("cmd-{participant}-ok"), "a\u{0}b"));
        poison.push(command("x".repeat(engine::envelope::MAX_MESSAGE_ID_LEN + 1), "n"));
        poison.push(OutgoingMessage {
            topic: h.topics.commands(participant),
            key: String::new(),
            payload: vec![0xff, 0x00, 0x7b],
            headers: BTreeMap::new(),
        });
    }
    // A NUL in the key and a header: the dead-letter copy must still be storable.
    let garbage_with_nul_key = OutgoingMessage {
        topic: h.topics.replies(),
        key: "k\u{0}".into(),
        payload: b"{not json".to_vec(),
        headers: BTreeMap::from([("h".to_owned(), "v\u{0}".to_owned())]),
    };
    poison.extend([reply_with_nul, garbage_with_nul_key]);
    let poisoned = poison.len();
    h.transport.publish(&poison).await.unwrap();

    let later: Vec<_> = futures::future::join_all((0..4).map(|_| h.orders.submit(order()))).await;
    for submitted in later {
        let id = submitted.unwrap().order_id;
        let view = eventually("an order submitted after the poison to finish", Duration::from_secs(40), || async {
            h.orders.view(&id).await.unwrap().filter(|v| v.status.is_terminal())
        })
        .await;
        assert_eq!(view.status, OrderViewStatus::Approved);
    }
    let dead = read_topic(&h, &h.topics.dead_letter(), poisoned, Duration::from_secs(30)).await;
    for (headers, _) in &dead {
        assert!(!headers[HEADER_DLQ_REASON].is_empty(), "every dead letter says why: {headers:?}");
    }
    let sources: std::collections::BTreeSet<String> = dead
        .iter()
        .filter_map(|(h, _)| h[HEADER_DLQ_SOURCE].rsplit_once(':')?.0.rsplit_once(':').map(|(t, _)| t.to_owned()))
        .collect();
    assert_eq!(sources.len(), 4, "from the replies topic and each command topic: {sources:?}");
    assert!(dead.iter().filter(|(h, _)| h[HEADER_DLQ_REASON].contains("NUL")).count() >= 7, "{dead:?}");
    runtime.shutdown().await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn money_and_stock_are_conserved_across_hundreds_of_concurrent_orders(pool: PgPool) {
    let h = OrderHarness::new(pool).await;
    let runtime = h.start_all().await;
    let skus = ["S0", "S1", "S2", "S3", "S4"];
    let initial_stock = 60_u64;
    for sku in skus {
        stock(&h, sku, initial_stock).await;
    }
    let customers: Vec<(String, Decimal)> = (0..8).map(|i| (format!("c{i}"), Decimal::from(40 + 15 * i))).collect();
    for (id, limit) in &customers {
        credit(&h, id, &limit.to_string()).await;
    }
    // "nobody" has no credit account: its orders are declined.
    let mut submissions = Vec::new();
    for i in 0..300_usize {
        let customer = if i % 25 == 0 { "nobody".to_owned() } else { customers[i % customers.len()].0.clone() };
        let mut items = vec![line(skus[i % 5], 1 + (i % 3) as u32, "1.25")];
        if i % 4 == 0 {
            items.push(line(skus[(i + 2) % 5], 2, "3.10"));
        }
        let orders = &h.orders;
        submissions.push(async move { orders.submit(NewOrder { customer_id: customer, items }).await.unwrap() });
    }
    let submitted = futures::future::join_all(submissions).await;
    let mut views = Vec::new();
    for s in &submitted {
        views.push(until_terminal(&h, &s.order_id).await);
    }
    let approved: Vec<&OrderView> = views.iter().filter(|v| v.status == OrderViewStatus::Approved).collect();
    let rejected = views.len() - approved.len();
    assert!(
        !approved.is_empty() && rejected > 0,
        "a mix of outcomes: {} approved, {rejected} rejected",
        approved.len()
    );
    for sku in skus {
        let inv = inventory(&h, sku).await;
        let approved_qty: u64 =
            approved.iter().flat_map(|v| v.items.iter()).filter(|l| l.sku == sku).map(|l| u64::from(l.quantity)).sum();
        assert_eq!(inv.reserved(), approved_qty, "{sku}: reserved only for approved orders");
        assert_eq!(inv.available + approved_qty, initial_stock, "{sku}: stock conserved");
    }
    for (id, limit) in &customers {
        let credit = customer(&h, id).await;
        let approved_total: Decimal = approved.iter().filter(|v| &v.customer_id == id).map(|v| v.total).sum();
        assert_eq!(credit.available() + approved_total, *limit, "{id}: credit conserved");
    }
    assert_eq!(customer(&h, "nobody").await.limit, None);
    assert!(views.iter().filter(|v| v.customer_id == "nobody").all(|v| v.status == OrderViewStatus::Rejected));
    runtime.shutdown().await;
}
