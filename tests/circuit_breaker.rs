//! A participant outside Sagaflow stops answering and later recovers. Its circuit opens on
//! the timeouts; while it is open, sagas hold their commands (spending no attempts) or, when
//! their definition says so, fail fast and compensate; a probe during the outage fails and
//! opens it again; after recovery the next probe closes it and wakes every held saga.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Method;
use sagaflow_tests::external::{self, success};
use sagaflow_tests::process::{database_url_of, EngineProcess, EngineSpec};
use sagaflow_tests::{eventually, kafka_bootstrap, unique_prefix, MIGRATOR};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn circuit(&self) -> String {
        let (_, body) = self.call(Method::GET, "/participants", None).await;
        let flaky = body["participants"].as_array().and_then(|all| all.iter().find(|p| p["participant"] == "flaky"));
        flaky.map_or_else(|| "unknown".into(), |p| p["state"].as_str().unwrap_or_default().to_owned())
    }

    async fn start(&self, definition: &str) -> String {
        let (status, started) =
            self.call(Method::POST, "/sagas", Some(json!({ "definition": definition, "input": {} }))).await;
        assert_eq!(status, 202, "{started}");
        started["saga_id"].as_str().unwrap().to_owned()
    }

    /// The types of the saga's events.
    async fn history(&self, saga: &str) -> Vec<String> {
        let (_, events) = self.call(Method::GET, &format!("/sagas/{saga}/events"), None).await;
        events.as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap().to_owned()).collect()
    }
}

fn count(history: &[String], kind: &str) -> usize {
    history.iter().filter(|t| *t == kind).count()
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_open_circuit_spends_no_attempts_and_every_saga_finishes_after_recovery(pool: PgPool) {
    let prefix = unique_prefix();
    let logs = tempfile::tempdir().unwrap();
    let mut spec = EngineSpec::new(database_url_of(&pool).await, kafka_bootstrap(), &prefix, logs.path(), "breaker");
    spec.env.push(("SAGAFLOW_CIRCUIT_BREAKER".into(), "flaky:min_calls=3,failure_rate=0.5,cool_down=6s".into()));
    let mut engine = EngineProcess::start(spec);
    engine.ready(Duration::from_secs(60)).await;
    let api = Api { base: engine.base.clone(), http: reqwest::Client::new() };
    let step = json!({ "name": "call", "participant": "flaky", "command": "Call", "compensation": "Undo",
        "timeout_ms": 2000, "retry": { "max_attempts": 3, "initial_backoff_ms": 100 } });
    for (name, on_open) in [("patient", "hold"), ("hasty", "fail")] {
        let definition = json!({ "name": name, "steps": [step], "on_open_circuit": on_open });
        assert_eq!(api.call(Method::POST, "/saga-definitions", Some(definition)).await.0, 201);
    }

    // The participant is down: it takes commands and never answers.
    let answering = Arc::new(AtomicBool::new(false));
    let unanswered = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = CancellationToken::new();
    let (up, dropped) = (Arc::clone(&answering), Arc::clone(&unanswered));
    let participant = tokio::spawn(external::serve(prefix.clone(), "flaky".into(), stop.clone(), move |command| {
        if up.load(Ordering::SeqCst) {
            return success(json!({}));
        }
        dropped.lock().unwrap().push(command.body["saga_id"].as_str().unwrap_or_default().to_owned());
        None
    }));
    let early: Vec<String> = futures::future::join_all((0..3).map(|_| api.start("patient"))).await;
    eventually("the circuit to open on three timeouts", Duration::from_secs(30), || async {
        (api.circuit().await == "open").then_some(())
    })
    .await;

    // While it is open, new sagas hold their first command, or fail fast when they chose to.
    let held: Vec<String> = futures::future::join_all((0..10).map(|_| api.start("patient"))).await;
    let hasty = api.start("hasty").await;
    let (_, failed) = api.call(Method::GET, &format!("/sagas/{hasty}?wait=10"), None).await;
    assert_eq!(failed["status"], "COMPENSATED", "{failed}");
    assert!(failed["reason"].as_str().unwrap().contains("circuit is open"), "{failed}");
    for saga in &held {
        let history = api.history(saga).await;
        assert_eq!((count(&history, "StepHeld"), count(&history, "StepCommandSent")), (1, 0), "{saga}: {history:?}");
    }
    // The cool-down (6 s) passes with the participant still down: a probe goes out, times out
    // (2 s) and opens the circuit again for 6 s. The participant recovers meanwhile.
    tokio::time::sleep(Duration::from_millis(9_500)).await;
    answering.store(true, Ordering::SeqCst);

    // The next probe closes the circuit and wakes the held sagas at once: the ones that asked
    // while it was out were told to wait until its deadline, 6 s on.
    eventually("the circuit to close", Duration::from_secs(30), || async {
        (api.circuit().await == "closed").then_some(())
    })
    .await;
    for saga in &held {
        let (_, view) = api.call(Method::GET, &format!("/sagas/{saga}?wait=4"), None).await;
        assert_eq!(view["status"], "COMPLETED", "{saga} is woken when the circuit closes: {view}");
    }
    for saga in &early {
        let (_, view) = api.call(Method::GET, &format!("/sagas/{saga}?wait=30"), None).await;
        assert_eq!(view["status"], "COMPLETED", "{saga} finishes after recovery: {view}");
    }
    let histories = futures::future::join_all(held.iter().map(|s| api.history(s))).await;
    let timed_out: usize = histories.iter().map(|h| count(h, "StepTimedOut")).sum();
    let probes = unanswered.lock().unwrap().iter().filter(|s| held.contains(s)).count();
    assert!(probes <= 2, "only probes reached the participant from sagas started while open: {probes}");
    assert_eq!(timed_out, probes, "the held sagas spent attempts only on probes");
    for history in &histories {
        // Waiting on writes no event: one hold, and one more after a failed probe's retry.
        assert!(count(history, "StepHeld") <= 1 + count(history, "StepTimedOut"), "{history:?}");
    }
    for saga in &early {
        let history = api.history(saga).await;
        assert!(count(&history, "StepTimedOut") < 3, "{saga} kept attempts left: {history:?}");
    }
    let metrics = api.http.get(format!("{}/metrics", api.base)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("sagaflow_circuit_state{participant=\"flaky\"} 0"), "{metrics}");
    stop.cancel();
    participant.await.unwrap();
    engine.terminate(Duration::from_secs(15));
}
