//! A participant outside Sagaflow joins a saga registered over HTTP. It is a plain Kafka
//! client written from `docs/wire-protocol.md` alone (`tests/support/external.rs`): raw
//! rdkafka and JSON, no Sagaflow types.

use reqwest::Method;
use sagaflow_tests::external::{self, success, Answer, Received};
use sagaflow_tests::http::TestServer;
use sagaflow_tests::MIGRATOR;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Serves `ScheduleShipment`: ships anywhere but "nowhere".
fn ship(command: &Received) -> Answer {
    assert_eq!(command.body["kind"], "command");
    let payload = &command.body["payload"];
    if payload["destination"] == "nowhere" {
        return Some((
            json!({ "status": "failure", "reason": "cannot ship to nowhere", "retryable": false }),
            Value::Null,
        ));
    }
    let order_id = payload["order_id"].as_str().unwrap_or_default();
    success(json!({ "tracking_number": format!("TRK-{order_id}") }))
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn external_participant_completes_a_saga_and_its_failure_is_compensated(pool: PgPool) {
    let s = TestServer::postgres_kafka(pool).await;
    assert_eq!(s.call(Method::PUT, "/inventory/S", Some(json!({ "available": 5 }))).await.0, 200);
    let definition = json!({ "name": "reserve-and-ship", "steps": [
        { "name": "reserve-inventory", "participant": "inventory", "command": "ReserveInventory",
          "compensation": "ReleaseInventory", "timeout_ms": 10000 },
        { "name": "ship", "participant": "shipping", "command": "ScheduleShipment",
          "timeout_ms": 15000, "retry": { "max_attempts": 1 } }
    ]});
    let (status, _) = s.call(Method::POST, "/saga-definitions", Some(definition)).await;
    assert_eq!(status, 201, "registering creates the shipping command topic");
    let stop = CancellationToken::new();
    let participant = tokio::spawn(external::serve(s.prefix.clone(), "shipping".into(), stop.clone(), ship));

    let input = |order: &str, destination: &str| {
        json!({ "definition": "reserve-and-ship", "input": {
            "order_id": order, "customer_id": "c", "destination": destination,
            "items": [{ "sku": "S", "quantity": 2, "unit_price": "1.00" }], "total": "2.00" } })
    };
    let (status, started) = s.call(Method::POST, "/sagas", Some(input("o-1", "Oslo"))).await;
    assert_eq!(status, 202);
    let (_, saga) =
        s.call(Method::GET, &format!("/sagas/{}?wait=30", started["saga_id"].as_str().unwrap()), None).await;
    assert_eq!(saga["status"], "COMPLETED", "{saga}");
    assert_eq!(saga["context"]["tracking_number"], "TRK-o-1");

    let (_, started) = s.call(Method::POST, "/sagas", Some(input("o-2", "nowhere"))).await;
    let id = started["saga_id"].as_str().unwrap().to_owned();
    let (_, saga) = s.call(Method::GET, &format!("/sagas/{id}?wait=30"), None).await;
    assert_eq!(saga["status"], "COMPENSATED", "{saga}");
    assert_eq!(saga["reason"], "step 'ship' failed: cannot ship to nowhere");
    let (_, events) = s.call(Method::GET, &format!("/sagas/{id}/events"), None).await;
    let types: Vec<String> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| format!("{}({})", e["type"].as_str().unwrap(), e["data"]["step"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(
        types,
        [
            "SagaStarted()",
            "StepCommandSent(reserve-inventory)",
            "StepSucceeded(reserve-inventory)",
            "StepCommandSent(ship)",
            "StepFailed(ship)",
            "CompensationStarted()",
            "CompensationSent(reserve-inventory)",
            "StepCompensated(reserve-inventory)",
            "SagaCompensated()",
        ]
    );
    let (_, stock) = s.call(Method::GET, "/inventory/S", None).await;
    assert_eq!((stock["available"].clone(), stock["reserved"].clone()), (json!(3), json!(2)), "o-2 released, o-1 kept");
    stop.cancel();
    participant.await.unwrap();
    s.stop().await;
}
