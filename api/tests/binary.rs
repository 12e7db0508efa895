//! The `sagaflow` binary on its embedded default: no setup, says so in its first log line,
//! stops gracefully on SIGTERM, and keeps every order, saga and event across a restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct Sagaflow {
    child: Child,
    base: String,
    first_line: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start(data_dir: &Path) -> Sagaflow {
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sagaflow"))
        .arg("serve")
        .env_remove("DATABASE_URL")
        .env_remove("KAFKA_BOOTSTRAP_SERVERS")
        .env("SAGAFLOW_DATA_DIR", data_dir)
        .env("SAGAFLOW_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("sagaflow binary starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first_line = lines.next().expect("a first log line").unwrap();
    std::thread::spawn(move || lines.for_each(|l| println!("sagaflow: {}", l.unwrap_or_default())));
    Sagaflow { child, base: format!("http://127.0.0.1:{port}"), first_line }
}

async fn wait_until_live(client: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.get(format!("{base}/health/live")).send().await.is_err() {
        assert!(Instant::now() < deadline, "sagaflow did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn stop(mut s: Sagaflow) {
    let status = Command::new("kill").arg("-TERM").arg(s.child.id().to_string()).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(exit) = s.child.try_wait().unwrap() {
            assert!(exit.success(), "graceful stop exits 0, got {exit}");
            return;
        }
        assert!(Instant::now() < deadline, "sagaflow did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn call(client: &reqwest::Client, method: reqwest::Method, url: String, body: Option<Value>) -> Value {
    let mut request = client.request(method, url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_default_needs_no_setup_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let first = start(dir.path());
    assert!(first.first_line.contains("sagaflow starting embedded"), "first line: {}", first.first_line);
    wait_until_live(&client, &first.base).await;
    let base = first.base.clone();
    use reqwest::Method;
    call(&client, Method::PUT, format!("{base}/inventory/A"), Some(json!({"available": 10}))).await;
    call(&client, Method::PUT, format!("{base}/customers/c-1/credit"), Some(json!({"limit": "500.00"}))).await;
    let order = json!({"customer_id": "c-1", "items": [{"sku": "A", "quantity": 2, "unit_price": "10.50"}]});
    let placed = call(&client, Method::POST, format!("{base}/orders"), Some(order.clone())).await;
    let id = placed["order_id"].as_str().unwrap().to_owned();
    let view = call(&client, Method::GET, format!("{base}/orders/{id}?wait=30"), None).await;
    assert_eq!(view["status"], "APPROVED");
    let events = call(&client, Method::GET, format!("{base}/sagas/{id}/events"), None).await;
    stop(first);

    let second = start(dir.path());
    wait_until_live(&client, &second.base).await;
    let base = second.base.clone();
    assert_eq!(call(&client, Method::GET, format!("{base}/orders/{id}"), None).await, view, "the order survived");
    assert_eq!(
        call(&client, Method::GET, format!("{base}/sagas/{id}/events"), None).await,
        events,
        "its saga's events too"
    );
    let stock = call(&client, Method::GET, format!("{base}/inventory/A"), None).await;
    assert_eq!((stock["available"].clone(), stock["reserved"].clone()), (json!(8), json!(2)));
    // And it goes on working.
    let again = call(&client, Method::POST, format!("{base}/orders"), Some(order)).await;
    let view =
        call(&client, Method::GET, format!("{base}/orders/{}?wait=30", again["order_id"].as_str().unwrap()), None)
            .await;
    assert_eq!(view["status"], "APPROVED");
    stop(second);
}

#[test]
fn embedded_mode_refuses_split_roles() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_sagaflow"))
        .args(["serve", "--roles", "api"])
        .env_remove("DATABASE_URL")
        .env_remove("KAFKA_BOOTSTRAP_SERVERS")
        .env("SAGAFLOW_DATA_DIR", dir.path())
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("in-process transport needs every role"));
}
