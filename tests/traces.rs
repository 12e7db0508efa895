//! One saga is one trace: the `sagaflow` binary exports its spans over OTLP to a receiver
//! in this test, and every hop (HTTP request, saga start, each publish, each participant,
//! each decision on a reply) is a child of the one before, also across an external
//! participant that only copies `traceparent` from command to reply.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sagaflow_tests::external::{self, success};
use sagaflow_tests::otlp::{self, Exports, ReceivedSpan};
use sagaflow_tests::process::{database_url_of, EngineProcess, EngineSpec};
use sagaflow_tests::{eventually, kafka_bootstrap, unique_prefix, MIGRATOR};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

type Spans = Arc<Mutex<Exports>>;

/// The spans of `trace_id` once there are at least `count`.
async fn trace(spans: &Spans, trace_id: &str, count: usize) -> Vec<ReceivedSpan> {
    eventually(&format!("{count} spans of trace {trace_id}"), Duration::from_secs(30), || async {
        let of_trace: Vec<_> = spans.lock().unwrap().spans.iter().filter(|s| s.trace_id == trace_id).cloned().collect();
        (of_trace.len() >= count).then_some(of_trace)
    })
    .await
}

/// Walks the trace from the span `root` names, each next span a child of the one before
/// with the name given; returns the spans walked.
fn chain<'a>(spans: &'a [ReceivedSpan], parent: &str, names: &[String]) -> Vec<&'a ReceivedSpan> {
    let mut parent = parent.to_owned();
    let mut walked = Vec::new();
    for name in names {
        let children: Vec<_> = spans.iter().filter(|s| s.parent == parent).map(|s| s.name.as_str()).collect();
        let next = spans.iter().find(|s| s.parent == parent && &s.name == name).unwrap_or_else(|| {
            panic!("no span '{name}' under {parent}; its children: {children:?}; walked: {walked:#?}")
        });
        parent = next.span_id.clone();
        walked.push(next);
    }
    walked
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_order_and_a_saga_through_an_external_participant_are_each_one_trace(pool: PgPool) {
    let (endpoint, spans) = otlp::receiver().await;
    let prefix = unique_prefix();
    let logs = tempfile::tempdir().unwrap();
    let mut spec = EngineSpec::new(database_url_of(&pool).await, kafka_bootstrap(), &prefix, logs.path(), "traced");
    spec.env.push(("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint));
    spec.env.push(("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()));
    let mut engine = EngineProcess::start(spec);
    engine.ready(Duration::from_secs(60)).await;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(40)).build().unwrap();
    let call = |method: reqwest::Method, path: &str, body: Value, traceparent: Option<&str>| {
        let mut request = http.request(method, format!("{}{path}", engine.base)).json(&body);
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    assert_eq!(call(reqwest::Method::PUT, "/inventory/S", json!({ "available": 10 }), None).await.0, 200);
    assert_eq!(call(reqwest::Method::PUT, "/customers/c/credit", json!({ "limit": "100.00" }), None).await.0, 200);

    // An order, in the trace of the caller's span.
    let (trace_id, caller) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let order = json!({ "customer_id": "c", "items": [{ "sku": "S", "quantity": 1, "unit_price": "2.00" }] });
    let (status, placed) =
        call(reqwest::Method::POST, "/orders", order, Some(&format!("00-{trace_id}-{caller}-01"))).await;
    assert_eq!(status, 202, "{placed}");
    let path = format!("/orders/{}?wait=30", placed["order_id"].as_str().unwrap());
    let (_, view) = call(reqwest::Method::GET, &path, Value::Null, None).await;
    assert_eq!(view["status"], "APPROVED", "{view}");

    let (commands, replies) = (|p: &str| format!("publish {prefix}.commands.{p}"), format!("publish {prefix}.replies"));
    let mut hops = names(&["POST", "saga start order-fulfilment"]);
    for (participant, command, step) in [
        ("inventory", "ReserveInventory", "reserve-inventory"),
        ("orders", "CreateOrder", "create-order"),
        ("payments", "ProcessPayment", "process-payment"),
        ("orders", "ApproveOrder", "approve-order"),
    ] {
        hops.extend([commands(participant), format!("{participant} {command}"), replies.clone()]);
        hops.push(format!("saga reply {step}"));
    }
    let order_trace = trace(&spans, trace_id, hops.len()).await;
    let walked = chain(&order_trace, caller, &hops);
    assert_eq!(walked.len(), 18);

    // A saga whose second step is served outside Sagaflow, in a new trace.
    let definition = json!({ "name": "reserve-and-ship", "steps": [
        { "name": "reserve-inventory", "participant": "inventory", "command": "ReserveInventory",
          "compensation": "ReleaseInventory", "timeout_ms": 10000 },
        { "name": "ship", "participant": "shipping", "command": "ScheduleShipment", "timeout_ms": 15000 }
    ]});
    assert_eq!(call(reqwest::Method::POST, "/saga-definitions", definition, None).await.0, 201);
    let (stop, seen) = (CancellationToken::new(), Arc::new(Mutex::new(Vec::new())));
    let got = Arc::clone(&seen);
    let participant = tokio::spawn(external::serve(prefix.clone(), "shipping".into(), stop.clone(), move |command| {
        got.lock().unwrap().push(command.traceparent.clone().expect("a command carries traceparent"));
        success(json!({ "tracking_number": "TRK-1" }))
    }));
    let input = json!({ "definition": "reserve-and-ship", "input": {
        "order_id": "o-1", "customer_id": "c", "items": [{ "sku": "S", "quantity": 1, "unit_price": "1.00" }], "total": "1.00" } });
    let (status, started) = call(reqwest::Method::POST, "/sagas", input, None).await;
    assert_eq!(status, 202, "{started}");
    let path = format!("/sagas/{}?wait=30", started["saga_id"].as_str().unwrap());
    let (_, saga) = call(reqwest::Method::GET, &path, Value::Null, None).await;
    assert_eq!(saga["status"], "COMPLETED", "{saga}");
    let copied = seen.lock().unwrap().first().cloned().expect("the participant got the command");
    let parts: Vec<&str> = copied.split('-').collect();
    let (ship_trace_id, publish_span) = (parts[1].to_owned(), parts[2].to_owned());
    assert_ne!(ship_trace_id, trace_id, "a request without traceparent starts a trace of its own");

    let hops = names(&["POST", "saga start reserve-and-ship"])
        .into_iter()
        .chain([commands("inventory"), "inventory ReserveInventory".into(), replies.clone()])
        .chain(["saga reply reserve-inventory".into(), commands("shipping"), "saga reply ship".into()])
        .collect::<Vec<_>>();
    let ship_trace = trace(&spans, &ship_trace_id, hops.len()).await;
    let root = ship_trace.iter().find(|s| s.name == "POST").expect("the request's span");
    assert!(ship_trace.iter().all(|s| s.parent.is_empty() == (s.span_id == root.span_id)), "one root: {ship_trace:#?}");
    let walked = chain(&ship_trace, &root.parent, &hops);
    let by_name: HashMap<&str, &ReceivedSpan> = walked.iter().map(|s| (s.name.as_str(), *s)).collect();
    assert_eq!(
        by_name[commands("shipping").as_str()].span_id,
        publish_span,
        "the participant got the publish span's context, and its reply was decided under it"
    );
    stop.cancel();
    participant.await.unwrap();
    let stopped = engine.terminate(Duration::from_secs(15));
    assert!(stopped.is_some_and(|(status, _)| status.success()), "a clean stop flushes the spans");
}
