//! What authentication and the write rate limit cost per request: the embedded engine served
//! three ways (edges off as on loopback, HS256 bearer tokens, tokens and a rate limit too high
//! to refuse anything), each under the same closed-loop load of cheap reads and appends over
//! HTTP, in rounds, each row beside its round's edges-off row; and, in this process, what one
//! token check costs per algorithm, which is all that authentication adds to a request.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::auth::AuthConfig;
use jsonwebtoken::Algorithm;
use reqwest::{Client, StatusCode};
use sagaflow_tests::tokens::{self, fixture};
use serde_json::json;

use crate::cpu::cpu_seconds_of;
use crate::http_load::{Backend, Engine};
use crate::stats::{for_duration, Figure};

const SECRET: &str = "bench-secret-of-at-least-32-bytes!!";
const CLIENTS: usize = 16;

/// One way of serving, and the token its callers send.
struct Setup {
    label: &'static str,
    env: Vec<(&'static str, String)>,
    token: Option<String>,
}

/// Claims of an admin, valid for an hour.
fn claims() -> serde_json::Value {
    json!({ "sub": "bench", "roles": ["admin"], "exp": chrono::Utc::now().timestamp() + 3600 })
}

fn token() -> String {
    tokens::hs256(SECRET.as_bytes(), &claims())
}

fn setups() -> Vec<Setup> {
    let auth = ("SAGAFLOW_AUTH_HS256_SECRET", SECRET.to_owned());
    vec![
        Setup { label: "edges off", env: vec![], token: None },
        Setup { label: "HS256 tokens", env: vec![auth.clone()], token: Some(token()) },
        Setup {
            label: "tokens + rate limit",
            env: vec![
                auth,
                ("SAGAFLOW_RATE_LIMIT_WRITES", "1000000".to_owned()),
                ("SAGAFLOW_RATE_LIMIT_BURST", "1000000".to_owned()),
            ],
            token: Some(token()),
        },
    ]
}

/// What one workload gave: the rate, and the engine's CPU per request.
struct Measured {
    figure: Figure,
    cpu_us: f64,
}

/// `CLIENTS` callers each sending `request` back to back, after a warm-up; every answer must
/// be `expect`.
async fn load<F>(engine: &Engine, duration: Duration, expect: StatusCode, request: F) -> Measured
where
    F: Fn(usize, usize) -> reqwest::RequestBuilder + Send + Sync + 'static,
{
    let request = Arc::new(request);
    let run = |duration: Duration| {
        let request = Arc::clone(&request);
        for_duration(CLIENTS, Duration::ZERO, duration, move |w, i| {
            let request = Arc::clone(&request);
            async move {
                let status = request(w, i).send().await.unwrap().status();
                assert_eq!(status, expect);
                1
            }
        })
    };
    run(Duration::from_millis(500)).await;
    let before = cpu_seconds_of(engine.pid());
    let figure = run(duration).await;
    let used = cpu_seconds_of(engine.pid()) - before;
    Measured { cpu_us: used / figure.latencies.len().max(1) as f64 * 1e6, figure }
}

fn authorized(builder: reqwest::RequestBuilder, token: Option<&String>) -> reqwest::RequestBuilder {
    match token {
        Some(t) => builder.bearer_auth(t),
        None => builder,
    }
}

/// Reads of a 20-event stream, then single-event appends, against `engine`.
async fn workloads(engine: &Engine, token: Option<&String>, duration: Duration) -> (Measured, Measured) {
    let client = Client::new();
    let events: Vec<_> = (0..20).map(|i| json!({ "type": "Noted", "data": { "i": i } })).collect();
    let seeded = authorized(client.post(format!("{}/streams/bench-read/events", engine.base)), token)
        .json(&json!({ "expected_version": "no_stream", "events": events }))
        .send()
        .await
        .unwrap();
    assert_eq!(seeded.status(), StatusCode::CREATED);
    let (base, t, c) = (engine.base.clone(), token.cloned(), client.clone());
    let read = load(engine, duration, StatusCode::OK, move |_, _| {
        authorized(c.get(format!("{base}/streams/bench-read/events?limit=20")), t.as_ref())
    })
    .await;
    let (base, t, c) = (engine.base.clone(), token.cloned(), client);
    let append = load(engine, duration, StatusCode::CREATED, move |w, _| {
        authorized(c.post(format!("{base}/streams/bench-append-{w}/events")), t.as_ref())
            .json(&json!({ "expected_version": "any", "events": [{ "type": "Noted", "data": {} }] }))
    })
    .await;
    (read, append)
}

/// Microseconds one `verify` of a valid token takes, in this process, per algorithm.
fn token_checks() -> Vec<(&'static str, f64)> {
    let checks = [
        ("HS256", AuthConfig::hs256(SECRET.as_bytes()), token()),
        (
            "RS256",
            AuthConfig::public_key(&fixture("rsa-public.pem"), Algorithm::RS256).unwrap(),
            tokens::signed(Algorithm::RS256, "rsa-private.pem", None, &claims()),
        ),
        (
            "ES256",
            AuthConfig::public_key(&fixture("ec-public.pem"), Algorithm::ES256).unwrap(),
            tokens::signed(Algorithm::ES256, "ec-private.pem", None, &claims()),
        ),
    ];
    checks
        .into_iter()
        .map(|(name, config, token)| {
            const CALLS: u32 = 2_000;
            let started = Instant::now();
            for _ in 0..CALLS {
                assert_eq!(config.verify(&token).unwrap().sub, "bench");
            }
            (name, started.elapsed().as_secs_f64() * 1e6 / f64::from(CALLS))
        })
        .collect()
}

/// Runs the section: `BENCH_EDGES_ROUNDS` (default 2) rounds of every setup in turn, each
/// row beside the round's own "edges off".
pub async fn edges(binary: &Path, logs: &Path, seconds: u64) {
    let duration = Duration::from_secs(seconds);
    let rounds = crate::env_u64("BENCH_EDGES_ROUNDS", 2);
    println!("\nAuthentication and rate limit per request (embedded engine, {CLIENTS} clients, {seconds} s each)");
    println!(
        "{:<20} | {:^25} {:>7} | {:^25} {:>7} | of off: read append, cpu read append",
        "setup", "GET 20 events", "cpu µs", "POST 1 event", "cpu µs"
    );
    let checks: Vec<String> = token_checks().iter().map(|(name, us)| format!("{name} {us:.1} µs")).collect();
    println!("one token check, in process: {}", checks.join(", "));
    for _ in 0..rounds {
        let mut off: Option<(Measured, Measured)> = None;
        for setup in setups() {
            let data = tempfile::tempdir().unwrap();
            let backend = Backend::Embedded { data_dir: data.path().to_path_buf() };
            let engine = Engine::start_with(binary, &backend, &logs.join("edges.log"), &setup.env).await;
            let (read, append) = workloads(&engine, setup.token.as_ref(), duration).await;
            let base = off.as_ref().map_or((&read, &append), |(r, a)| (r, a));
            println!(
                "{:<20} | {} {:>7.0} | {} {:>7.0} | {:>5.2} {:>5.2}, {:>5.2} {:>5.2}",
                setup.label,
                read.figure.cell(),
                read.cpu_us,
                append.figure.cell(),
                append.cpu_us,
                read.figure.per_s / base.0.figure.per_s.max(1e-9),
                append.figure.per_s / base.1.figure.per_s.max(1e-9),
                read.cpu_us / base.0.cpu_us.max(1e-9),
                append.cpu_us / base.1.cpu_us.max(1e-9),
            );
            if off.is_none() {
                off = Some((read, append));
            }
        }
    }
}
