//! Every route of the REST API over real HTTP, against the embedded backend (SQLite and
//! the in-process transport) and against PostgreSQL and the Kafka-protocol broker.

use reqwest::Method;
use sagaflow_tests::http::TestServer;
use sagaflow_tests::MIGRATOR;
use serde_json::{json, Value};
use sqlx::PgPool;

mod routes {
    use super::*;

    fn problem_type(body: &Value) -> &str {
        body["type"].as_str().unwrap_or_default()
    }

    async fn stock_and_credit(s: &TestServer, sku: &str, available: u64, customer: &str, limit: &str) {
        let (status, _) =
            s.call(Method::PUT, &format!("/inventory/{sku}"), Some(json!({ "available": available }))).await;
        assert_eq!(status, 200);
        let (status, _) =
            s.call(Method::PUT, &format!("/customers/{customer}/credit"), Some(json!({ "limit": limit }))).await;
        assert_eq!(status, 200);
    }

    /// A page of the saga list, once the saga index has taken in every commit made so far.
    async fn saga_list(s: &TestServer, query: &str) -> Value {
        for _ in 0..300 {
            let response = s.send(Method::GET, &format!("/sagas{query}"), None).await;
            assert_eq!(response.status().as_u16(), 200, "GET /sagas{query}");
            let lag: u64 = response.headers()["sagaflow-index-lag"].to_str().unwrap().parse().unwrap();
            let page: Value = response.json().await.unwrap();
            if lag == 0 {
                return page;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the saga index never caught up");
    }

    fn order(customer: &str, sku: &str, quantity: u32, price: &str) -> Value {
        json!({ "customer_id": customer, "items": [{ "sku": sku, "quantity": quantity, "unit_price": price }] })
    }

    pub async fn inventory_and_credit_are_set_and_shown(s: TestServer) {
        let (status, body) = s.call(Method::PUT, "/inventory/A", Some(json!({ "available": 10 }))).await;
        assert_eq!((status, body), (200, json!({ "sku": "A", "available": 10, "reserved": 0, "version": 1 })));
        let (status, body) = s.call(Method::GET, "/inventory/A", None).await;
        assert_eq!((status, body["available"].clone()), (200, json!(10)));
        let (status, body) = s.call(Method::GET, "/inventory/nope", None).await;
        assert_eq!((status, problem_type(&body)), (404, "urn:sagaflow:problem:not-found"));

        let (status, body) = s.call(Method::PUT, "/customers/c-1/credit", Some(json!({ "limit": "500.00" }))).await;
        assert_eq!(status, 200);
        assert_eq!((body["limit"].as_str(), body["available"].as_str()), (Some("500.00"), Some("500.00")));
        let (status, body) = s.call(Method::GET, "/customers/c-1/credit", None).await;
        assert_eq!((status, body["customer_id"].as_str()), (200, Some("c-1")));
        assert_eq!(s.call(Method::GET, "/customers/ghost/credit", None).await.0, 404);

        // Error cases: wrong types, money as a float, negative, too precise, malformed, no content type.
        let (status, body) = s.call(Method::PUT, "/inventory/A", Some(json!({ "available": "ten" }))).await;
        assert_eq!((status, problem_type(&body)), (422, "urn:sagaflow:problem:invalid"));
        assert_eq!(s.call(Method::PUT, "/customers/c-1/credit", Some(json!({ "limit": 5.5 }))).await.0, 422);
        let (status, body) = s.call(Method::PUT, "/customers/c-1/credit", Some(json!({ "limit": "-1.005" }))).await;
        assert_eq!(status, 422);
        assert_eq!(body["errors"].as_array().map(Vec::len), Some(2), "{body}");
        let (status, ct, body) = s.raw(Method::PUT, "/inventory/A", "application/json", "{\"available\":").await;
        assert_eq!((status, ct.as_str()), (400, "application/problem+json"));
        assert!(body["detail"].as_str().unwrap().contains("malformed JSON"));
        assert_eq!(s.raw(Method::PUT, "/inventory/A", "text/plain", "{}").await.0, 415);
        assert_eq!(s.call(Method::PUT, "/inventory/bad%20sku", Some(json!({ "available": 1 }))).await.0, 400);
        s.stop().await;
    }

    pub async fn orders_are_followed_with_wait_and_retried_idempotently(s: TestServer) {
        stock_and_credit(&s, "A", 10, "c-1", "100.00").await;
        let body = order("c-1", "A", 2, "10.50");
        let send = |body: Value, key: &'static str| {
            s.client.post(format!("{}/orders", s.base)).header("Idempotency-Key", key).json(&body).send()
        };
        let first = send(body.clone(), "key-1").await.unwrap();
        assert_eq!(first.status().as_u16(), 202);
        let location = first.headers()["location"].to_str().unwrap().to_owned();
        let first: Value = first.json().await.unwrap();
        assert_eq!(location, format!("/orders/{}", first["order_id"].as_str().unwrap()));
        assert_eq!(first["status"], "PENDING");
        // Readable at once, then held until terminal.
        let (status, _) = s.call(Method::GET, &location, None).await;
        assert_eq!(status, 200);
        let (status, view) = s.call(Method::GET, &format!("{location}?wait=30"), None).await;
        assert_eq!(status, 200);
        assert_eq!(view["status"], "APPROVED", "{view}");
        assert_eq!(view["total"], "21.00");
        assert_eq!(view["saga_id"], first["saga_id"]);

        // A retry returns the first answer and starts nothing new.
        let retry = send(body.clone(), "key-1").await.unwrap();
        assert_eq!(retry.status().as_u16(), 202);
        assert_eq!(retry.json::<Value>().await.unwrap(), first);
        let page = saga_list(&s, "?definition=order-fulfilment").await;
        assert_eq!(page["sagas"].as_array().unwrap().len(), 1);
        let (_, stock) = s.call(Method::GET, "/inventory/A", None).await;
        assert_eq!(stock["reserved"], 2);
        // Same key, another body: refused.
        let other = send(order("c-1", "A", 3, "10.50"), "key-1").await.unwrap();
        assert_eq!(other.status().as_u16(), 422);

        // Short stock: rejected with the reason.
        let (status, rejected) = s.call(Method::POST, "/orders", Some(order("c-1", "A", 99, "1.00"))).await;
        assert_eq!(status, 202);
        let (_, view) =
            s.call(Method::GET, &format!("/orders/{}?wait=30", rejected["order_id"].as_str().unwrap()), None).await;
        assert_eq!(view["status"], "REJECTED");
        assert!(view["reason"].as_str().unwrap().contains("insufficient stock"), "{view}");

        // Validation lists every problem.
        let bad = json!({ "customer_id": "c-1", "items": [{ "sku": "A", "quantity": 0, "unit_price": "1.001" }] });
        let (status, body) = s.call(Method::POST, "/orders", Some(bad)).await;
        assert_eq!(status, 422);
        assert_eq!(body["errors"].as_array().unwrap().len(), 2, "{body}");
        assert_eq!(s.call(Method::POST, "/orders", Some(json!({ "customer_id": "c-1", "items": [] }))).await.0, 422);
        assert_eq!(s.call(Method::POST, "/orders", Some(json!({ "customer_id": 7, "items": [] }))).await.0, 422);
        assert_eq!(s.call(Method::GET, "/orders/00000000-0000-0000-0000-000000000000", None).await.0, 404);
        assert_eq!(s.call(Method::GET, "/orders/not-a-uuid", None).await.0, 404);
        assert_eq!(s.call(Method::GET, &format!("{location}?wait=31"), None).await.0, 400);
        assert_eq!(s.call(Method::GET, &format!("{location}?wait=soon"), None).await.0, 400);
        s.stop().await;
    }

    pub async fn definitions_are_registered_versioned_and_started(s: TestServer) {
        let invalid = json!({ "name": "bad name", "steps": [
            { "name": "a", "participant": "inventory", "command": "ReserveInventory", "timeout_ms": 0 },
            { "name": "a", "participant": "inventory", "command": "" }
        ]});
        let (status, body) = s.call(Method::POST, "/saga-definitions", Some(invalid)).await;
        assert_eq!((status, problem_type(&body)), (422, "urn:sagaflow:problem:invalid-definition"));
        let errors: Vec<String> = serde_json::from_value(body["errors"].clone()).unwrap();
        assert_eq!(errors.len(), 4, "{errors:#?}");
        let (status, _) = s.call(Method::POST, "/saga-definitions", Some(json!({ "name": "x", "stepz": [] }))).await;
        assert_eq!(status, 422, "unknown fields are refused");

        let reserve_only = json!({ "name": "reserve-only", "steps": [
            { "name": "reserve", "participant": "inventory", "command": "ReserveInventory",
              "compensation": "ReleaseInventory", "timeout_ms": 5000, "retry": { "max_attempts": 2 } }
        ]});
        let (status, body) = s.call(Method::POST, "/saga-definitions", Some(reserve_only.clone())).await;
        assert_eq!((status, body), (201, json!({ "name": "reserve-only", "version": 1 })));
        let (status, body) = s.call(Method::POST, "/saga-definitions", Some(reserve_only)).await;
        assert_eq!((status, body["version"].clone()), (201, json!(2)));
        // Paged by name: order-fulfilment, then reserve-only.
        let (_, first) = s.call(Method::GET, "/saga-definitions?limit=1", None).await;
        assert_eq!(first["definitions"][0]["name"], "order-fulfilment", "{first}");
        let after = first["next_after"].as_str().unwrap();
        let (_, second) = s.call(Method::GET, &format!("/saga-definitions?limit=1&after={after}"), None).await;
        assert_eq!(
            (second["definitions"][0]["name"].as_str(), second["definitions"][0]["version"].as_u64()),
            (Some("reserve-only"), Some(2))
        );
        assert_eq!(second["next_after"], Value::Null, "the last page");
        assert_eq!(s.call(Method::GET, "/saga-definitions?limit=0", None).await.0, 400);
        let (status, latest) = s.call(Method::GET, "/saga-definitions/reserve-only", None).await;
        assert_eq!((status, latest["version"].clone()), (200, json!(2)));
        // A dry run validates and shows what version 3 would change, registering nothing.
        let mut next = latest.clone();
        next["steps"][0]["timeout_ms"] = json!(9_000);
        next["steps"].as_array_mut().unwrap().push(
            json!({ "name": "pay", "participant": "payments", "command": "ProcessPayment", "compensation": "RefundPayment" }),
        );
        let (status, dry) = s.call(Method::POST, "/saga-definitions?dry_run=true", Some(next)).await;
        assert_eq!(
            (status, dry["definition"]["version"].clone(), dry["previous_version"].clone()),
            (200, json!(3), json!(2)),
            "{dry}"
        );
        assert_eq!(dry["changes"]["added"], json!(["pay"]));
        assert_eq!(dry["changes"]["changed"][0]["fields"], json!(["timeout_ms"]), "{dry}");
        assert_eq!(
            s.call(Method::GET, "/saga-definitions/reserve-only/versions/3", None).await.0,
            404,
            "nothing registered"
        );
        // Two registered versions compared.
        let (status, diff) = s.call(Method::GET, "/saga-definitions/reserve-only/diff?from=1&to=2", None).await;
        assert_eq!((status, diff), (200, json!({ "added": [], "removed": [], "changed": [], "fields": [] })));
        assert_eq!(s.call(Method::GET, "/saga-definitions/reserve-only/diff?from=1&to=9", None).await.0, 404);
        let bad = json!({ "name": "reserve-only", "steps": [] });
        assert_eq!(s.call(Method::POST, "/saga-definitions?dry_run=true", Some(bad)).await.0, 422);
        assert_eq!(latest["steps"][0]["retry"]["initial_backoff_ms"], 200, "defaults filled in");
        assert_eq!(s.call(Method::GET, "/saga-definitions/reserve-only/versions/1", None).await.0, 200);
        assert_eq!(s.call(Method::GET, "/saga-definitions/reserve-only/versions/3", None).await.0, 404);
        assert_eq!(s.call(Method::GET, "/saga-definitions/nothing", None).await.0, 404);

        let (status, _) = s.call(Method::PUT, "/inventory/K", Some(json!({ "available": 5 }))).await;
        assert_eq!(status, 200);
        let input = json!({ "order_id": "o-k", "customer_id": "c", "items": [{ "sku": "K", "quantity": 2, "unit_price": "1.00" }], "total": "2.00" });
        let (status, started) = s
            .call(Method::POST, "/sagas", Some(json!({ "definition": "reserve-only", "version": 1, "input": input })))
            .await;
        assert_eq!(status, 202);
        let id = started["saga_id"].as_str().unwrap().to_owned();
        let (status, saga) = s.call(Method::GET, &format!("/sagas/{id}?wait=30"), None).await;
        assert_eq!(status, 200);
        assert_eq!(saga["status"], "COMPLETED", "{saga}");
        assert_eq!(saga["definition"], json!({ "name": "reserve-only", "version": 1 }));
        assert_eq!(saga["steps"][0]["status"], "SUCCEEDED");
        assert_eq!(saga["steps"][0]["attempts"], 1);
        assert_eq!(saga["context"]["reserved"], json!({ "K": 2 }), "step output merged into the context");
        let (status, events) = s.call(Method::GET, &format!("/sagas/{id}/events"), None).await;
        assert_eq!(status, 200);
        let types: Vec<&str> = events.as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["SagaStarted", "StepCommandSent", "StepSucceeded", "SagaCompleted"]);
        let page = saga_list(&s, "?status=COMPLETED&definition=reserve-only").await;
        assert_eq!(page["sagas"][0]["saga_id"].as_str(), Some(id.as_str()));
        let page = saga_list(&s, "?status=FAILED").await;
        assert_eq!(page["sagas"], json!([]));
        assert_eq!(s.call(Method::GET, "/sagas?status=SLEEPING", None).await.0, 400);

        assert_eq!(s.call(Method::POST, "/sagas", Some(json!({ "definition": "nothing", "input": {} }))).await.0, 404);
        let forged = json!({ "definition": "order-fulfilment", "input": { "total": "-1000000" } });
        assert_eq!(s.call(Method::POST, "/sagas", Some(forged)).await.0, 422, "orders go through POST /orders");
        assert_eq!(s.call(Method::POST, "/sagas", Some(json!({ "input": {} }))).await.0, 422);
        assert_eq!(s.call(Method::GET, "/sagas/01a2a2a2-0000-7000-8000-000000000000", None).await.0, 404);
        assert_eq!(s.call(Method::GET, "/sagas/01a2a2a2-0000-7000-8000-000000000000/events", None).await.0, 404);
        s.stop().await;
    }

    pub async fn aggregates_are_replayed_from_history(s: TestServer) {
        for available in [3, 7, 11] {
            s.call(Method::PUT, "/inventory/H", Some(json!({ "available": available }))).await;
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let (_, events) = s.call(Method::GET, "/streams/inventory-H/events", None).await;
        let second_at = events[1]["recorded_at"].as_str().unwrap().to_owned();
        let (status, v1) = s.call(Method::GET, "/aggregates/inventory/H?version=1", None).await;
        assert_eq!(status, 200);
        assert_eq!((v1["version"].clone(), v1["state"]["available"].clone()), (json!(1), json!(3)));
        let (_, at) =
            s.call(Method::GET, &format!("/aggregates/inventory/H?at={}", second_at.replace('+', "%2B")), None).await;
        assert_eq!((at["version"].clone(), at["state"]["available"].clone()), (json!(2), json!(7)));
        let (_, now) = s.call(Method::GET, "/aggregates/inventory/H", None).await;
        let (_, resource) = s.call(Method::GET, "/inventory/H", None).await;
        assert_eq!(now["state"]["available"], resource["available"]);
        assert_eq!(now["version"], resource["version"]);
        assert_eq!(now["type"], "inventory");

        stock_and_credit(&s, "R", 5, "c-r", "50.00").await;
        let (_, placed) = s.call(Method::POST, "/orders", Some(order("c-r", "R", 1, "2.00"))).await;
        let id = placed["order_id"].as_str().unwrap();
        s.call(Method::GET, &format!("/orders/{id}?wait=30"), None).await;
        let (status, agg) = s.call(Method::GET, &format!("/aggregates/order/{id}"), None).await;
        assert_eq!((status, agg["state"]["status"].clone()), (200, json!("APPROVED")));
        let (_, created) = s.call(Method::GET, &format!("/aggregates/order/{id}?version=1"), None).await;
        assert_eq!(created["state"]["status"], "CREATED");
        let (_, saga) = s.call(Method::GET, &format!("/aggregates/saga/{id}?version=1"), None).await;
        assert_eq!(saga["state"]["status"], "RUNNING");
        let (_, customer) = s.call(Method::GET, "/aggregates/customer/c-r", None).await;
        assert_eq!(customer["state"]["limit"], "50.00");

        assert_eq!(s.call(Method::GET, "/aggregates/widget/x", None).await.0, 404);
        assert_eq!(s.call(Method::GET, "/aggregates/inventory/none", None).await.0, 404);
        assert_eq!(s.call(Method::GET, "/aggregates/inventory/H?version=1&at=2020-01-01T00:00:00Z", None).await.0, 400);
        assert_eq!(s.call(Method::GET, "/aggregates/inventory/H?at=yesterday", None).await.0, 400);
        s.stop().await;
    }

    pub async fn streams_are_appended_with_expected_versions_and_read(s: TestServer) {
        let events = json!([{ "type": "Opened", "data": { "n": 1 } },
                            { "event_id": "0190a5b2-0000-7000-8000-00000000abcd", "type": "Noted", "data": { "n": 2 }, "metadata": { "correlation_id": "x" } }]);
        let (status, body) = s
            .call(
                Method::POST,
                "/streams/ledger-1/events",
                Some(json!({ "expected_version": "no_stream", "events": events })),
            )
            .await;
        assert_eq!((status, body), (201, json!({ "next_expected_version": 2 })));
        let conflict = json!({ "expected_version": 1, "events": [{ "type": "Late", "data": {} }] });
        let (status, body) = s.call(Method::POST, "/streams/ledger-1/events", Some(conflict)).await;
        assert_eq!(
            (status, problem_type(&body), body["actual_version"].clone()),
            (409, "urn:sagaflow:problem:wrong-expected-version", json!(2))
        );
        let ok = json!({ "expected_version": 2, "events": [{ "type": "Closed", "data": {} }] });
        assert_eq!(s.call(Method::POST, "/streams/ledger-1/events", Some(ok)).await.0, 201);
        let any = json!({ "expected_version": "any", "events": [{ "type": "Audited", "data": {} }] });
        assert_eq!(s.call(Method::POST, "/streams/ledger-1/events", Some(any)).await.1["next_expected_version"], 4);
        // Re-sending an event id already stored is a no-op.
        let again = json!({ "expected_version": "no_stream", "events": [{ "event_id": "0190a5b2-0000-7000-8000-00000000abcd", "type": "Noted", "data": { "n": 2 } }] });
        let (status, body) = s.call(Method::POST, "/streams/ledger-1/events", Some(again)).await;
        assert_eq!((status, body["next_expected_version"].clone()), (201, json!(4)));

        let (status, page) = s.call(Method::GET, "/streams/ledger-1/events?from_version=2&limit=2", None).await;
        assert_eq!(status, 200);
        let page = page.as_array().unwrap();
        assert_eq!(page.len(), 2);
        assert_eq!((page[0]["version"].clone(), page[0]["type"].clone()), (json!(2), json!("Noted")));
        assert_eq!(page[0]["metadata"]["correlation_id"], "x");
        assert!(page[0]["global_position"].as_u64().unwrap() < page[1]["global_position"].as_u64().unwrap());
        assert!(page[0]["recorded_at"].is_string());

        assert_eq!(s.call(Method::GET, "/streams/nothing/events", None).await.0, 404);
        assert_eq!(s.call(Method::GET, "/streams/ledger-1/events?limit=0", None).await.0, 400);
        let managed = json!({ "expected_version": "any", "events": [{ "type": "Hack", "data": {} }] });
        assert_eq!(s.call(Method::POST, "/streams/saga-123/events", Some(managed)).await.0, 403);
        let bogus = json!({ "expected_version": "bogus", "events": [{ "type": "X", "data": {} }] });
        assert_eq!(s.call(Method::POST, "/streams/ledger-2/events", Some(bogus)).await.0, 422);
        let empty = json!({ "expected_version": "any", "events": [] });
        assert_eq!(s.call(Method::POST, "/streams/ledger-2/events", Some(empty)).await.0, 422);
        let nul = json!({ "expected_version": "any", "events": [{ "type": "X", "data": { "s": "a\u{0}b" } }] });
        let (status, body) = s.call(Method::POST, "/streams/ledger-2/events", Some(nul)).await;
        assert_eq!(status, 422, "{body}");
        let id = "0190a5b2-0000-7000-8000-00000000eeee";
        let twice = json!({ "expected_version": "any", "events": [{ "event_id": id, "type": "X", "data": {} }, { "event_id": id, "type": "X", "data": {} }] });
        assert_eq!(s.call(Method::POST, "/streams/ledger-2/events", Some(twice)).await.0, 422);
        let huge = json!({ "expected_version": "any", "events": [{ "type": "X", "data": { "s": "x".repeat(2 * 1024 * 1024) } }] });
        // Answered without a reset although the client writes the whole body first.
        let response = s.client.post(format!("{}/streams/ledger-2/events", s.base)).json(&huge).send().await.unwrap();
        let (status, body) = (response.status().as_u16(), response.json::<Value>().await.unwrap_or(Value::Null));
        assert_eq!((status, problem_type(&body)), (413, "urn:sagaflow:problem:payload-too-large"));
        assert_eq!(s.call(Method::GET, "/streams/ledger-2/events", None).await.0, 404, "nothing was written");
        s.stop().await;
    }

    pub async fn nul_in_path_query_or_body_gets_a_4xx_problem(s: TestServer) {
        stock_and_credit(&s, "A", 10, "c-1", "100.00").await;
        // In a path or a query: 400, whatever the route (no store ever sees it).
        for (method, path) in [
            (Method::GET, "/orders/abc%00def"),
            (Method::GET, "/streams/x%00y/events"),
            (Method::GET, "/customers/c%00/credit"),
            (Method::GET, "/aggregates/order/o%00"),
            (Method::GET, "/saga-definitions/n%00"),
            (Method::GET, "/sagas?definition=x%00"),
            (Method::GET, "/streams/ledger/events?limit=1%00"),
            (Method::GET, "/orders/tab%09"),
            (Method::PUT, "/inventory/A%00"),
            (Method::PUT, "/inventory/A?note=%00"),
        ] {
            let response = s.send(method.clone(), path, Some(json!({ "available": 1 }))).await;
            let status = response.status().as_u16();
            let ct = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
            let body: Value = response.json().await.unwrap_or(Value::Null);
            assert_eq!((status, ct.as_deref()), (400, Some("application/problem+json")), "{method} {path}: {body}");
            assert!(body["detail"].as_str().unwrap().contains("control character"), "{method} {path}: {body}");
        }
        // An escaped percent sign is no NUL.
        assert_eq!(s.call(Method::GET, "/streams/x%2500/events", None).await.0, 404);

        // In a JSON body, keys included: 422 naming the problem and where it is.
        let cases = [
            (Method::PUT, "/inventory/A", json!({ "available": 1, "k\u{0}": 1 }), "a key of / holds a NUL character"),
            (Method::PUT, "/customers/c-1/credit", json!({ "limit": "5\u{0}" }), "/limit holds a NUL character"),
            (Method::POST, "/orders", order("c\u{0}", "A", 1, "1.00"), "/customer_id holds a NUL character"),
            (
                Method::POST,
                "/sagas",
                json!({ "definition": "x", "input": { "deep": [{ "k\u{0}": "v" }] } }),
                "a key of /input/deep/0 holds a NUL character",
            ),
            (
                Method::POST,
                "/streams/ledger-n/events",
                json!({ "expected_version": "any", "events": [{ "type": "X", "data": { "s": "a\u{0}b" } }] }),
                "/events/0/data/s holds a NUL character",
            ),
        ];
        for (method, path, body, place) in cases {
            let response = s.send(method.clone(), path, Some(body)).await;
            let status = response.status().as_u16();
            let ct = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
            let body: Value = response.json().await.unwrap_or(Value::Null);
            assert_eq!((status, ct.as_deref()), (422, Some("application/problem+json")), "{method} {path}: {body}");
            assert!(body["detail"].as_str().unwrap().contains("NUL"), "{method} {path}: {body}");
            assert_eq!(body["errors"], json!([place]), "{method} {path}");
        }
        // Nothing was written.
        assert_eq!(s.call(Method::GET, "/streams/ledger-n/events", None).await.0, 404);
        let (_, credit) = s.call(Method::GET, "/customers/c-1/credit", None).await;
        assert_eq!(credit["version"], 1);
        s.stop().await;
    }

    pub async fn idempotent_retry_with_an_equal_decimal_spelling_is_the_same_request(s: TestServer) {
        stock_and_credit(&s, "A", 10, "c-1", "100.00").await;
        let send = |price: &'static str| {
            s.client
                .post(format!("{}/orders", s.base))
                .header("Idempotency-Key", "decimal-key")
                .json(&order("c-1", "A", 2, price))
                .send()
        };
        let first = send("10.50").await.unwrap();
        assert_eq!(first.status().as_u16(), 202);
        let first: Value = first.json().await.unwrap();
        for spelling in ["10.5", "10.500", "10.50"] {
            let retry = send(spelling).await.unwrap();
            assert_eq!(retry.status().as_u16(), 202, "{spelling}");
            assert_eq!(retry.json::<Value>().await.unwrap(), first, "{spelling}");
        }
        let page = saga_list(&s, "?definition=order-fulfilment").await;
        assert_eq!(page["sagas"].as_array().unwrap().len(), 1, "one order was started");
        // Another price is another request.
        let other = send("10.05").await.unwrap();
        assert_eq!(other.status().as_u16(), 422);
        s.stop().await;
    }

    /// An operator action over HTTP, as `ops@example`.
    async fn act(s: &TestServer, path: &str, body: Value, key: Option<&str>) -> (u16, Value) {
        let mut request =
            s.client.post(format!("{}{path}", s.base)).header("Sagaflow-Actor", "ops@example").json(&body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn event_types(s: &TestServer, id: &str) -> Vec<String> {
        let (_, events) = s.call(Method::GET, &format!("/sagas/{id}/events"), None).await;
        events.as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap().to_owned()).collect()
    }

    async fn until_status(s: &TestServer, id: &str, status: &str) -> Value {
        let mut saga = Value::Null;
        for _ in 0..300 {
            saga = s.call(Method::GET, &format!("/sagas/{id}"), None).await.1;
            if saga["status"] == status {
                return saga;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("saga {id} never became {status}: {saga}\n{:?}", event_types(s, id).await);
    }

    pub async fn operators_retry_resolve_and_abort_sagas(s: TestServer) {
        assert_eq!(s.call(Method::PUT, "/inventory/OP", Some(json!({ "available": 10 }))).await.0, 200);
        // Nobody consumes the warehouse's commands: its pivot "ship" never answers, times out,
        // and leaves the saga FAILED with an unknown outcome.
        let step = |name: &str, participant: &str, command: &str, compensation: Option<&str>, timeout_ms: u64| {
            json!({ "name": name, "participant": participant, "command": command, "compensation": compensation,
                    "timeout_ms": timeout_ms, "retry": { "max_attempts": 1 } })
        };
        let reserve = step("reserve", "inventory", "ReserveInventory", Some("ReleaseInventory"), 10_000);
        let definition =
            json!({ "name": "reserve-then-ship", "steps": [reserve, step("ship", "warehouse", "Ship", None, 300)] });
        assert_eq!(s.call(Method::POST, "/saga-definitions", Some(definition)).await.0, 201);
        let start = |order: &str| {
            let input = json!({ "order_id": order, "customer_id": "c", "items": [{ "sku": "OP", "quantity": 2, "unit_price": "1.00" }], "total": "2.00" });
            json!({ "definition": "reserve-then-ship", "input": input })
        };
        let (_, started) = s.call(Method::POST, "/sagas", Some(start("op-1"))).await;
        let id = started["saga_id"].as_str().unwrap().to_owned();
        let failed = until_status(&s, &id, "FAILED").await;
        assert!(failed["reason"].as_str().unwrap().contains("outcome is unknown"), "{failed}");

        // Wrong input: 422; wrong state or step: 409; each a problem document.
        let (status, body) = s.call(Method::POST, &format!("/sagas/{id}/retry"), Some(json!({ "reason": "x" }))).await;
        assert_eq!((status, problem_type(&body)), (422, "urn:sagaflow:problem:invalid"), "no actor: {body}");
        let (status, _) = act(&s, &format!("/sagas/{id}/retry"), json!({ "reason": "" }), None).await;
        assert_eq!(status, 422, "a reason is required");
        let (status, body) = act(&s, &format!("/sagas/{id}/abort"), json!({ "reason": "stop" }), None).await;
        assert_eq!((status, problem_type(&body)), (409, "urn:sagaflow:problem:saga-state"), "{body}");
        let resolve_reserve = json!({ "outcome": "succeeded", "reason": "r" });
        let (status, _) = act(&s, &format!("/sagas/{id}/steps/reserve/resolve"), resolve_reserve, None).await;
        assert_eq!(status, 409, "the saga is on 'ship', not 'reserve'");
        let stale = json!({ "reason": "r", "expected_version": 1 });
        let (status, body) = act(&s, &format!("/sagas/{id}/retry"), stale, None).await;
        assert_eq!(status, 409, "the saga changed since version 1: {body}");

        // Retry: a second attempt of the pivot, applied once under one Idempotency-Key.
        let retry = json!({ "reason": "carrier back up" });
        let (status, saga) = act(&s, &format!("/sagas/{id}/retry"), retry.clone(), Some("retry-1")).await;
        assert_eq!((status, saga["status"].clone()), (200, json!("RUNNING")), "{saga}");
        assert_eq!(saga["steps"][1]["attempts"], 2);
        assert_eq!(act(&s, &format!("/sagas/{id}/retry"), retry, Some("retry-1")).await.0, 200);
        until_status(&s, &id, "FAILED").await;
        let types = event_types(&s, &id).await;
        assert_eq!(types.iter().filter(|t| *t == "OperatorRetried").count(), 1, "applied once: {types:?}");

        // Resolve the pivot as compensated: the reservation under it is released.
        let resolved = json!({ "outcome": "compensated", "reason": "the carrier never got it" });
        let (status, saga) = act(&s, &format!("/sagas/{id}/steps/ship/resolve"), resolved, None).await;
        assert_eq!(status, 200, "{saga}");
        until_status(&s, &id, "COMPENSATED").await;
        let (_, stock) = s.call(Method::GET, "/inventory/OP", None).await;
        assert_eq!((stock["available"].clone(), stock["reserved"].clone()), (json!(10), json!(0)), "{stock}");
        let (_, events) = s.call(Method::GET, &format!("/sagas/{id}/events"), None).await;
        let by_operator: Vec<&Value> =
            events.as_array().unwrap().iter().filter(|e| e["type"].as_str().unwrap().starts_with("Operator")).collect();
        assert_eq!(by_operator.len(), 2);
        assert_eq!(by_operator[1]["data"]["actor"], "ops@example");
        assert_eq!(by_operator[1]["data"]["reason"], "the carrier never got it");
        let (status, _) = act(&s, &format!("/sagas/{id}/retry"), json!({ "reason": "again" }), None).await;
        assert_eq!(status, 409, "a compensated saga is not retried");
        let picture = s.send(Method::GET, &format!("/sagas/{id}/timeline.svg"), None).await;
        assert_eq!(picture.headers()["content-type"], "image/svg+xml");
        let svg = picture.text().await.unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("COMPENSATED"), "{svg}");
        assert_eq!(svg.matches(r#"class="operator""#).count(), 2, "the retry and the resolution: {svg}");
        assert_eq!(svg.matches(r#"class="attempt timed-out""#).count(), 2, "both attempts of ship: {svg}");
        assert_eq!(s.call(Method::GET, &format!("/sagas/{}/timeline.svg", uuid::Uuid::nil()), None).await.0, 404);

        // Resolve an unknown pivot as succeeded: the saga completes with the output merged.
        let (_, started) = s.call(Method::POST, "/sagas", Some(start("op-2"))).await;
        let id2 = started["saga_id"].as_str().unwrap().to_owned();
        until_status(&s, &id2, "FAILED").await;
        let resolved = json!({ "outcome": "succeeded", "output": { "tracking": "T-1" }, "reason": "shipped by hand" });
        let (status, saga) = act(&s, &format!("/sagas/{id2}/steps/ship/resolve"), resolved, None).await;
        assert_eq!((status, saga["status"].clone()), (200, json!("COMPLETED")), "{saga}");
        assert_eq!(saga["context"]["tracking"], "T-1");

        // Abort a running saga: the step in flight may still land, so it is compensated first;
        // its compensation never answers either, and the operator settles it by hand.
        let definition = json!({ "name": "reserve-then-hold", "steps": [reserve,
            step("hold", "warehouse", "Hold", Some("Unhold"), 60_000), step("ship", "warehouse", "Ship", None, 300)] });
        assert_eq!(s.call(Method::POST, "/saga-definitions", Some(definition)).await.0, 201);
        let mut body = start("op-3");
        body["definition"] = json!("reserve-then-hold");
        let (_, started) = s.call(Method::POST, "/sagas", Some(body)).await;
        let id3 = started["saga_id"].as_str().unwrap().to_owned();
        for _ in 0..300 {
            let (_, saga) = s.call(Method::GET, &format!("/sagas/{id3}"), None).await;
            if saga["steps"][1]["status"] == "RUNNING" {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let (status, saga) =
            act(&s, &format!("/sagas/{id3}/abort"), json!({ "reason": "customer called" }), None).await;
        assert_eq!((status, saga["status"].clone()), (200, json!("COMPENSATING")), "{saga}");
        assert_eq!(saga["steps"][1]["status"], "COMPENSATING", "{saga}");
        let (status, _) = act(&s, &format!("/sagas/{id3}/abort"), json!({ "reason": "again" }), None).await;
        assert_eq!(status, 409, "already compensating");
        let undone = json!({ "outcome": "succeeded", "reason": "r" });
        let (status, _) = act(&s, &format!("/sagas/{id3}/steps/hold/resolve"), undone, None).await;
        assert_eq!(status, 422, "a step being compensated is resolved as compensated");
        let undone = json!({ "outcome": "compensated", "reason": "the warehouse confirmed nothing was held" });
        let (status, _) = act(&s, &format!("/sagas/{id3}/steps/hold/resolve"), undone, None).await;
        assert_eq!(status, 200);
        let done = until_status(&s, &id3, "COMPENSATED").await;
        assert!(done["reason"].as_str().unwrap().contains("aborted by ops@example at step 'hold'"), "{done}");
        let (_, stock) = s.call(Method::GET, "/inventory/OP", None).await;
        assert_eq!(stock["reserved"], json!(2), "only op-2's reservation (completed) remains: {stock}");
        s.stop().await;
    }

    /// Sagas of definitions whose participant never answers, with a one-second stuck threshold:
    /// those whose pivot timed out (FAILED, waiting for an operator) are stuck a second later;
    /// those still within a long step deadline are not.
    pub async fn the_saga_index_lists_filters_pages_and_finds_stuck_sagas(s: TestServer) {
        let silent = json!({ "name": "silent", "stuck_after_ms": 1000, "steps": [
            { "name": "wait", "participant": "nobody", "command": "Hello", "timeout_ms": 200, "retry": { "max_attempts": 1 } }
        ]});
        assert_eq!(s.call(Method::POST, "/saga-definitions", Some(silent)).await.0, 201);
        let patient = json!({ "name": "patient", "stuck_after_ms": 1000, "steps": [
            { "name": "wait", "participant": "nobody", "command": "Hello", "timeout_ms": 600000 }
        ]});
        assert_eq!(s.call(Method::POST, "/saga-definitions", Some(patient)).await.0, 201);
        let mut ids = Vec::new();
        for n in 0..5 {
            let start = json!({ "definition": "silent", "input": { "n": n } });
            let (status, started) = s.call(Method::POST, "/sagas", Some(start)).await;
            assert_eq!(status, 202);
            ids.push(started["saga_id"].as_str().unwrap().to_owned());
        }
        let (status, waiting) =
            s.call(Method::POST, "/sagas", Some(json!({ "definition": "patient", "input": {} }))).await;
        assert_eq!(status, 202);
        // Oldest first, two at a time, over three pages.
        let mut seen = Vec::new();
        let mut query = "?definition=silent&limit=2".to_owned();
        loop {
            let page = saga_list(&s, &query).await;
            for saga in page["sagas"].as_array().unwrap() {
                assert_eq!(saga["definition"], json!({ "name": "silent", "version": 1 }));
                assert_eq!(saga["current_step"], "wait");
                seen.push(saga["saga_id"].as_str().unwrap().to_owned());
            }
            match page["next_cursor"].as_str() {
                Some(cursor) => query = format!("?definition=silent&limit=2&cursor={cursor}"),
                None => break,
            }
        }
        assert_eq!(seen, ids, "every saga once, in start order");
        let newest = saga_list(&s, "?definition=silent&order=desc&limit=1").await;
        assert_eq!(newest["sagas"][0]["saga_id"].as_str(), ids.last().map(String::as_str));
        // A time range that ends before the first start holds none of them.
        let first = saga_list(&s, "?definition=silent&limit=1").await;
        let started = first["sagas"][0]["started_at"].as_str().unwrap().to_owned();
        let to = urlencode(&started);
        let before = saga_list(&s, &format!("?definition=silent&started_to={to}")).await;
        assert_eq!(before["sagas"], json!([]));
        let from_first = saga_list(&s, &format!("?definition=silent&started_from={to}")).await;
        assert_eq!(from_first["sagas"].as_array().unwrap().len(), 5);

        // Their pivot times out: FAILED, and a second later stuck, in the list and the gauge.
        let mut stuck = Value::Null;
        for _ in 0..100 {
            stuck = saga_list(&s, "?stuck=true").await;
            if stuck["sagas"].as_array().unwrap().len() == 5 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let stuck_sagas = stuck["sagas"].as_array().unwrap();
        assert_eq!(stuck_sagas.len(), 5, "{stuck}");
        assert!(stuck_sagas.iter().all(|s| s["status"] == "FAILED" && s["stuck"] == true), "{stuck}");
        assert_eq!(saga_list(&s, "?stuck=false&definition=silent").await["sagas"], json!([]));
        // The patient saga has been idle as long, but its step's deadline is ten minutes away.
        let patient = saga_list(&s, "?definition=patient").await;
        assert_eq!(patient["sagas"][0]["saga_id"], waiting["saga_id"]);
        assert_eq!(
            (patient["sagas"][0]["status"].as_str(), patient["sagas"][0]["stuck"].as_bool()),
            (Some("RUNNING"), Some(false))
        );
        let mut gauge = String::new();
        for _ in 0..100 {
            let metrics = s.send(Method::GET, "/metrics", None).await.text().await.unwrap();
            gauge = metrics
                .lines()
                .find(|l| l.starts_with("sagaflow_sagas_stuck{definition=\"silent\"}"))
                .unwrap_or("")
                .to_owned();
            if gauge.ends_with(" 5") {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(gauge.ends_with(" 5"), "gauge: '{gauge}'");
        assert!(s
            .send(Method::GET, "/metrics", None)
            .await
            .text()
            .await
            .unwrap()
            .contains("sagaflow_saga_index_lag_events"));

        // Settled by hand, they complete and are no longer stuck.
        for id in &ids {
            let body = json!({ "outcome": "succeeded", "reason": "said hello by phone" });
            let (status, body) = act(&s, &format!("/sagas/{id}/steps/wait/resolve"), body, None).await;
            assert_eq!(status, 200, "{body}");
        }
        for id in &ids {
            until_status(&s, id, "COMPLETED").await;
        }
        let done = saga_list(&s, "?status=COMPLETED&definition=silent").await;
        assert_eq!(done["sagas"].as_array().unwrap().len(), 5);
        assert!(done["sagas"][0]["finished_at"].is_string());
        assert_eq!(saga_list(&s, "?stuck=true").await["sagas"], json!([]));

        for bad in [
            "?cursor=nonsense",
            "?limit=501",
            "?started_from=yesterday",
            "?order=sideways",
            "?started_from=2026-01-02T00:00:00Z&started_to=2026-01-01T00:00:00Z",
        ] {
            let (status, body) = s.call(Method::GET, &format!("/sagas{bad}"), None).await;
            assert_eq!(status, 400, "{bad}: {body}");
        }
        s.stop().await;
    }

    fn urlencode(text: &str) -> String {
        text.replace(':', "%3A").replace('+', "%2B")
    }

    pub async fn the_console_is_served_from_the_binary(s: TestServer) {
        for (path, kind, needle) in [
            ("/ui", "text/html", "/ui/app.js"),
            ("/ui/app.js", "text/javascript", "timeline.svg"),
            ("/ui/style.css", "text/css", "badge"),
        ] {
            let response = s.send(Method::GET, path, None).await;
            assert_eq!(response.status().as_u16(), 200, "{path}");
            let ct = response.headers()["content-type"].to_str().unwrap().to_owned();
            assert!(ct.starts_with(kind), "{path}: {ct}");
            assert!(response.text().await.unwrap().contains(needle), "{path} lacks {needle}");
        }
        s.stop().await;
    }

    pub async fn health_metrics_and_openapi_cover_every_route(s: TestServer) {
        assert_eq!(s.call(Method::GET, "/health/live", None).await.0, 200);
        // Ready once every consumer has its partitions (at once in-process; after the group's
        // first rebalance over Kafka): the store, the transport, and the coordinator's and the
        // three participants' consumers.
        let mut ready = Value::Null;
        for _ in 0..300 {
            let (status, body) = s.call(Method::GET, "/health/ready", None).await;
            ready = body;
            if status == 200 {
                break;
            }
            assert_eq!(status, 503, "{ready}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(ready["status"], "ready", "{ready}");
        let names: Vec<&str> =
            ready["checks"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names.len(), 6, "{names:?}");
        assert_eq!(&names[..2], ["event-store", "transport"]);
        assert!(names[2..].iter().all(|n| n.starts_with("consumer ")), "{names:?}");

        stock_and_credit(&s, "M", 5, "c-m", "10.00").await;
        let (_, placed) = s.call(Method::POST, "/orders", Some(order("c-m", "M", 1, "1.00"))).await;
        s.call(Method::GET, &format!("/orders/{}?wait=30", placed["order_id"].as_str().unwrap()), None).await;
        // Every participant the order's commands went to, each circuit closed.
        let (_, circuits) = s.call(Method::GET, "/participants", None).await;
        let states: Vec<(String, String)> = circuits["participants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["participant"].as_str().unwrap().into(), p["state"].as_str().unwrap().into()))
            .collect();
        let closed = |p: &str| (p.to_owned(), "closed".to_owned());
        assert_eq!(states, [closed("inventory"), closed("orders"), closed("payments")], "{circuits}");
        let metrics = s.send(Method::GET, "/metrics", None).await.text().await.unwrap();
        for name in [
            "http_request_duration_seconds",
            "sagaflow_sagas_started_total",
            "sagaflow_sagas_completed_total",
            "sagaflow_step_duration_seconds",
            "sagaflow_outbox_pending",
            "sagaflow_append_duration_seconds",
        ] {
            assert!(metrics.contains(name), "/metrics lacks {name}");
        }

        // Every documented operation is routed, and every route is documented.
        let (status, doc) = s.call(Method::GET, "/openapi.json", None).await;
        assert_eq!(status, 200);
        let mut operations = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                operations += 1;
                let concrete = path
                    .replace("{sku}", "Z")
                    .replace("{id}", "z")
                    .replace("{name}", "z")
                    .replace("{step}", "z")
                    .replace("{version}", "1")
                    .replace("{type}", "inventory");
                let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                let (status, body) = s.call(method.clone(), &concrete, Some(json!({}))).await;
                assert_ne!(status, 405, "{method} {path} is documented but not routed");
                assert_ne!(problem_type(&body), "urn:sagaflow:problem:no-such-route", "{method} {path} is not routed");
            }
        }
        assert_eq!(operations, 27, "the API has 27 operations");
        let (status, body) = s.call(Method::GET, "/nowhere", None).await;
        assert_eq!((status, problem_type(&body)), (404, "urn:sagaflow:problem:no-such-route"));
        let (status, body) = s.call(Method::DELETE, "/orders", None).await;
        assert_eq!((status, problem_type(&body)), (405, "urn:sagaflow:problem:method-not-allowed"));
        s.stop().await;
    }
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    routes::$name(TestServer::embedded().await).await;
                }
            )*
        }
        mod postgres_kafka {
            use super::*;
            $(
                #[sqlx::test(migrator = "MIGRATOR")]
                async fn $name(pool: PgPool) {
                    routes::$name(TestServer::postgres_kafka(pool).await).await;
                }
            )*
        }
    };
}

on_both_backends!(
    inventory_and_credit_are_set_and_shown,
    orders_are_followed_with_wait_and_retried_idempotently,
    definitions_are_registered_versioned_and_started,
    aggregates_are_replayed_from_history,
    streams_are_appended_with_expected_versions_and_read,
    health_metrics_and_openapi_cover_every_route,
    nul_in_path_query_or_body_gets_a_4xx_problem,
    idempotent_retry_with_an_equal_decimal_spelling_is_the_same_request,
    operators_retry_resolve_and_abort_sagas,
    the_saga_index_lists_filters_pages_and_finds_stuck_sagas,
    the_console_is_served_from_the_binary,
);

/// Limits protect the process: long polls past their bound, and bodies past theirs, are
/// refused with problem+json; a long poll ends before the request timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_and_bodies_past_their_bounds_are_refused() {
    use std::time::{Duration, Instant};
    let s = TestServer::embedded_with(|o| o.limits = api::limits::Limits::new(1, Duration::from_secs(3), 4096)).await;
    let patient = json!({ "name": "patient", "steps": [
        { "name": "wait", "participant": "nobody", "command": "Hello", "timeout_ms": 600000 }
    ]});
    assert_eq!(s.call(Method::POST, "/saga-definitions", Some(patient)).await.0, 201);
    let (_, started) = s.call(Method::POST, "/sagas", Some(json!({ "definition": "patient", "input": {} }))).await;
    let path = format!("/sagas/{}?wait=30", started["saga_id"].as_str().unwrap());
    let first = {
        let (client, url) = (s.client.clone(), format!("{}{path}", s.base));
        tokio::spawn(async move {
            let asked = Instant::now();
            let response = client.get(url).send().await.unwrap();
            (response.status().as_u16(), asked.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = s.send(Method::GET, &path, None).await;
    assert_eq!(second.status().as_u16(), 503, "one long poll at a time");
    assert_eq!(second.headers()["retry-after"], "1");
    assert_eq!(second.headers()["content-type"], "application/problem+json");
    let body: Value = second.json().await.unwrap();
    assert_eq!(body["type"], "urn:sagaflow:problem:busy");
    // Without waiting, it answers at once.
    let (status, saga) = s.call(Method::GET, path.split('?').next().unwrap(), None).await;
    assert_eq!((status, saga["status"].as_str()), (200, Some("RUNNING")));
    // The long poll ends a second before the 3 s request timeout, with the saga as it is.
    let (status, took) = first.await.unwrap();
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(3), "the wait ends before the request timeout: {took:?}");
    let big = json!({ "name": "x".repeat(5000), "steps": [] });
    let (status, body) = s.call(Method::POST, "/saga-definitions", Some(big)).await;
    assert_eq!((status, body["type"].as_str()), (413, Some("urn:sagaflow:problem:payload-too-large")));
    s.stop().await;
}

/// Writes past a caller's rate get 429 with `Retry-After`; reads are not counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_past_a_callers_rate_are_refused_with_retry_after() {
    use std::num::NonZeroU32;
    let one = NonZeroU32::new(1).unwrap();
    let s = TestServer::embedded_with(|o| {
        o.limits =
            api::limits::Limits::default().with_writes(api::limits::WriteLimit::new(one, NonZeroU32::new(2).unwrap()))
    })
    .await;
    let stock = || Some(json!({ "available": 5 }));
    assert_eq!(s.call(Method::PUT, "/inventory/R", stock()).await.0, 200);
    assert_eq!(s.call(Method::PUT, "/inventory/R", stock()).await.0, 200, "a burst of two");
    let refused = s.send(Method::PUT, "/inventory/R", stock()).await;
    assert_eq!(refused.status().as_u16(), 429);
    let retry_after: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert_eq!(refused.headers()["content-type"], "application/problem+json");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["type"], "urn:sagaflow:problem:rate-limited");
    for _ in 0..5 {
        assert_eq!(s.call(Method::GET, "/inventory/R", None).await.0, 200, "reads are not limited");
    }
    let metrics = s.send(Method::GET, "/metrics", None).await.text().await.unwrap();
    assert!(metrics.contains("sagaflow_rate_limited_total"), "counted");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(s.call(Method::PUT, "/inventory/R", stock()).await.0, 200, "the bucket refills");
    s.stop().await;
}

/// A client that writes its whole body before it reads the answer (Python's `urllib` does)
/// gets the 413 for a body past the limit, not a reset while it is still writing: the server
/// reads and discards the rest of the body, within bounds, before it closes the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_gets_its_413_even_when_the_client_writes_it_whole_first() {
    use std::io::{Read, Write};

    let s = TestServer::embedded().await;
    let items: Vec<Value> =
        (0..100_000).map(|i| json!({ "sku": format!("SKU-{i}"), "quantity": 1, "unit_price": "1.00" })).collect();
    let order = json!({ "customer_id": "c-1", "items": items }).to_string();
    assert!(order.len() > 4 * 1024 * 1024, "about 5 MB, well past the 1 MiB limit");
    let address = s.base.trim_start_matches("http://").to_owned();
    let answers = tokio::task::spawn_blocking(move || {
        (0..8)
            .map(|_| {
                let mut socket = std::net::TcpStream::connect(&address)?;
                let head = format!(
                    "POST /orders HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n",
                    order.len()
                );
                // The whole request first, as a simple client does, then the answer.
                socket.write_all(head.as_bytes())?;
                socket.write_all(order.as_bytes())?;
                let mut answer = String::new();
                socket.read_to_string(&mut answer)?;
                Ok(answer)
            })
            .collect::<Vec<std::io::Result<String>>>()
    })
    .await
    .unwrap();
    for answer in answers {
        let answer = answer.expect("the whole request written and the answer read, with no reset");
        assert!(answer.starts_with("HTTP/1.1 413"), "{}", answer.lines().next().unwrap_or_default());
        assert!(answer.contains("application/problem+json"), "{answer}");
        assert!(answer.contains("urn:sagaflow:problem:payload-too-large"), "{answer}");
    }
    s.stop().await;
}
