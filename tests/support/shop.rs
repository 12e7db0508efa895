//! A client of the order shop over HTTP, as a user's service would be: it retries a POST
//! with its `Idempotency-Key` until some engine accepts it, follows every order to its end,
//! and then checks what must hold whatever faults happened in between.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::{Client, Method, StatusCode};
use rust_decimal::Decimal;
use serde_json::{json, Value};

/// One accepted order and what it asked for.
#[derive(Debug, Clone)]
pub struct Placed {
    pub n: usize,
    pub order_id: String,
    pub saga_id: String,
    pub sku: String,
    pub quantity: u64,
    pub customer: String,
    pub total: Decimal,
}

/// What a POST saw on its way to acceptance.
#[derive(Debug, Default, Clone)]
pub struct Attempts {
    /// Tries that failed to connect or timed out (engine down).
    pub unreachable: u32,
    /// 503 answers, each a problem+json body (asserted when received).
    pub unavailable: u32,
}

/// The shop: SKUs with their initial stock, customers with their credit limit.
pub struct Shop {
    client: Client,
    bases: Vec<String>,
    pub skus: Vec<(String, u64)>,
    pub customers: Vec<(String, Decimal)>,
}

fn price() -> Decimal {
    Decimal::new(1000, 2)
}

impl Shop {
    /// `skus` of `stock` each and `customers` with `limit` each, reached through `bases`.
    pub fn new(bases: Vec<String>, skus: usize, stock: u64, customers: usize, limit: Decimal) -> Self {
        let client = Client::builder().timeout(Duration::from_secs(40)).build().expect("http client");
        Self {
            client,
            bases,
            skus: (0..skus).map(|i| (format!("sku-{i}"), stock)).collect(),
            customers: (0..customers).map(|i| (format!("cust-{i}"), limit)).collect(),
        }
    }

    fn base(&self, attempt: usize) -> &str {
        &self.bases[attempt % self.bases.len()]
    }

    async fn put_until_ok(&self, path: &str, body: Value, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for attempt in 0.. {
            let url = format!("{}{path}", self.base(attempt));
            if let Ok(r) = self.client.put(url).json(&body).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "PUT {path} did not succeed within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Sets every SKU's stock and every customer's limit.
    pub async fn stock_up(&self) {
        for (sku, stock) in &self.skus {
            self.put_until_ok(&format!("/inventory/{sku}"), json!({ "available": stock }), Duration::from_secs(60))
                .await;
        }
        for (customer, limit) in &self.customers {
            self.put_until_ok(
                &format!("/customers/{customer}/credit"),
                json!({ "limit": limit.to_string() }),
                Duration::from_secs(60),
            )
            .await;
        }
    }

    /// Order `n`: a deterministic SKU, customer and quantity (1 to 3 at 10.00).
    fn order(&self, n: usize) -> (String, String, u64) {
        let sku = self.skus[n % self.skus.len()].0.clone();
        let customer = self.customers[(n / self.skus.len()) % self.customers.len()].0.clone();
        (sku, customer, (n % 3) as u64 + 1)
    }

    /// POSTs order `n` with its own `Idempotency-Key` until an engine accepts it (202),
    /// trying the engines in turn; fails the test after `timeout`.
    pub async fn place(&self, n: usize, timeout: Duration) -> (Placed, Attempts) {
        let (sku, customer, quantity) = self.order(n);
        let body = json!({ "customer_id": customer, "items": [{ "sku": sku, "quantity": quantity, "unit_price": price().to_string() }] });
        let mut seen = Attempts::default();
        let deadline = Instant::now() + timeout;
        for attempt in n.. {
            let url = format!("{}/orders", self.base(attempt));
            let sent = self
                .client
                .post(url)
                .timeout(Duration::from_secs(8))
                .header("Idempotency-Key", format!("fault-order-{n}"))
                .json(&body)
                .send()
                .await;
            match sent {
                Ok(r) if r.status() == StatusCode::ACCEPTED => {
                    let accepted: Value = r.json().await.expect("202 body");
                    let placed = Placed {
                        n,
                        order_id: accepted["order_id"].as_str().expect("order_id").to_owned(),
                        saga_id: accepted["saga_id"].as_str().expect("saga_id").to_owned(),
                        sku,
                        quantity,
                        customer,
                        total: price() * Decimal::from(quantity),
                    };
                    return (placed, seen);
                }
                Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE => {
                    let ct = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                    let problem: Value = r.json().await.unwrap_or(Value::Null);
                    assert_eq!(ct, "application/problem+json", "a 503 is problem+json: {problem}");
                    assert!(problem["detail"].as_str().is_some_and(|d| !d.is_empty()), "a 503 says why: {problem}");
                    seen.unavailable += 1;
                }
                Ok(r) => {
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    panic!("POST order {n}: unexpected {status}: {text}");
                }
                Err(_) => seen.unreachable += 1,
            }
            assert!(Instant::now() < deadline, "order {n} not accepted within {timeout:?} ({seen:?})");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        unreachable!("the loop returns or panics")
    }

    /// Follows every order (16 at a time, long-polling any engine) until it is APPROVED or
    /// REJECTED; fails the test, naming the orders still open, after `timeout`.
    pub async fn settle(&self, placed: &[Placed], timeout: Duration) -> HashMap<String, Value> {
        let deadline = Instant::now() + timeout;
        let views: Vec<(String, Option<Value>)> = futures::stream::iter(placed.iter().enumerate())
            .map(|(i, p)| async move {
                let mut last = None;
                for attempt in i.. {
                    if Instant::now() >= deadline {
                        break;
                    }
                    let url = format!("{}/orders/{}?wait=10", self.base(attempt), p.order_id);
                    if let Ok(r) = self.client.get(url).send().await {
                        if r.status().is_success() {
                            let view: Value = r.json().await.unwrap_or(Value::Null);
                            if matches!(view["status"].as_str(), Some("APPROVED" | "REJECTED")) {
                                return (p.order_id.clone(), Some(view));
                            }
                            last = Some(view);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                (p.order_id.clone(), last.map(|v| json!({ "not_terminal": v })))
            })
            .buffer_unordered(16)
            .collect()
            .await;
        let open: Vec<String> = views
            .iter()
            .filter(|(_, v)| v.as_ref().is_none_or(|v| v.get("not_terminal").is_some()))
            .map(|(id, v)| format!("{id}: {}", v.clone().unwrap_or(Value::Null)))
            .collect();
        assert!(
            open.is_empty(),
            "{} of {} orders did not finish within {timeout:?}: {:#?}",
            open.len(),
            placed.len(),
            &open[..open.len().min(5)]
        );
        views.into_iter().filter_map(|(id, v)| v.map(|v| (id, v))).collect()
    }

    async fn get(&self, path: &str) -> Value {
        for attempt in 0..50 {
            if let Ok(r) = self.client.request(Method::GET, format!("{}{path}", self.base(attempt))).send().await {
                if r.status().is_success() {
                    return r.json().await.expect("JSON body");
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("GET {path} kept failing");
    }

    async fn stream(&self, stream: &str) -> Vec<Value> {
        let mut events = Vec::new();
        loop {
            let page =
                self.get(&format!("/streams/{stream}/events?from_version={}&limit=1000", events.len() + 1)).await;
            let page = page.as_array().cloned().unwrap_or_default();
            let n = page.len();
            events.extend(page);
            if n < 1000 {
                return events;
            }
        }
    }

    /// What must hold after any faults: every order ended, stock and credit are conserved
    /// (free + reserved by approved orders = initial), no reservation was applied twice,
    /// and every saga stream is well-formed with nothing FAILED. Returns (approved, rejected).
    pub async fn check_invariants(&self, placed: &[Placed], views: &HashMap<String, Value>) -> (usize, usize) {
        let approved: Vec<&Placed> = placed.iter().filter(|p| views[&p.order_id]["status"] == "APPROVED").collect();
        for (sku, initial) in &self.skus {
            let stock = self.get(&format!("/inventory/{sku}")).await;
            let reserved: u64 = approved.iter().filter(|p| &p.sku == sku).map(|p| p.quantity).sum();
            assert_eq!(stock["reserved"], json!(reserved), "{sku}: reserved = what approved orders took: {stock}");
            assert_eq!(stock["available"], json!(initial - reserved), "{sku}: stock conserved: {stock}");
            let mut reservations: BTreeMap<String, u32> = BTreeMap::new();
            for event in self.stream(&format!("inventory-{sku}")).await {
                if event["type"] == "StockReserved" {
                    let order = event["data"]["order_id"].as_str().unwrap_or_default().to_owned();
                    *reservations.entry(order).or_default() += 1;
                }
            }
            assert!(reservations.values().all(|n| *n == 1), "{sku}: a reservation applied twice: {reservations:?}");
        }
        for (customer, limit) in &self.customers {
            let credit = self.get(&format!("/customers/{customer}/credit")).await;
            let spent: Decimal = approved.iter().filter(|p| &p.customer == customer).map(|p| p.total).sum();
            let available: Decimal = credit["available"].as_str().and_then(|s| s.parse().ok()).expect("available");
            assert_eq!(available, limit - spent, "{customer}: credit conserved: {credit}");
        }
        for p in placed {
            let events = self.get(&format!("/sagas/{}/events", p.saga_id)).await;
            let types: Vec<&str> =
                events.as_array().expect("events").iter().filter_map(|e| e["type"].as_str()).collect();
            let terminal: Vec<usize> = types
                .iter()
                .enumerate()
                .filter(|(_, t)| matches!(**t, "SagaCompleted" | "SagaCompensated" | "SagaFailed"))
                .map(|(i, _)| i)
                .collect();
            assert_eq!(types.first(), Some(&"SagaStarted"), "order {}: {types:?}", p.n);
            assert_eq!(terminal.len(), 1, "order {}: one terminal event: {types:?}", p.n);
            // Replies that arrive after the end are recorded as ignored, and nothing else is.
            assert!(
                types[terminal[0] + 1..].iter().all(|t| *t == "ReplyIgnored"),
                "order {}: nothing decided after the end: {types:?}",
                p.n
            );
            let expected_end =
                if views[&p.order_id]["status"] == "APPROVED" { "SagaCompleted" } else { "SagaCompensated" };
            assert_eq!(types[terminal[0]], expected_end, "order {}: nothing FAILED: {types:?}", p.n);
        }
        (approved.len(), placed.len() - approved.len())
    }
}
