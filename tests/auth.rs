//! Authentication and roles over real HTTP: bearer JWTs (HS256, RS256, ES256, JWKS), the role
//! each route needs, the caller recorded in the events it causes, and the refusal to serve a
//! non-loopback address without a key.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use api::auth::AuthConfig;
use jsonwebtoken::Algorithm;
use reqwest::Method;
use sagaflow_tests::http::TestServer;
use sagaflow_tests::process::{free_port, sagaflow_binary};
use sagaflow_tests::tokens::{self, fixture};
use serde_json::{json, Value};

const SECRET: &[u8] = b"test-secret-of-sufficient-length";

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Claims for `sub` with `roles`, valid for an hour, from the expected issuer and audience.
fn claims(sub: &str, roles: &[&str]) -> Value {
    json!({ "sub": sub, "roles": roles, "iss": "https://id.example", "aud": "sagaflow", "exp": now() + 3600 })
}

fn hs256(claims: &Value) -> String {
    tokens::hs256(SECRET, claims)
}

async fn call(s: &TestServer, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let response = s.send_as(method, path, token, body).await;
    let status = response.status().as_u16();
    if status == 401 {
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
    }
    if status >= 400 {
        assert_eq!(response.headers()["content-type"], "application/problem+json", "{path}");
    }
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_verified_and_each_route_needs_its_role() {
    let auth = AuthConfig::hs256(SECRET).with_issuer("https://id.example").with_audience("sagaflow");
    let s = TestServer::embedded_with(|o| o.auth = Some(Arc::new(auth))).await;
    let admin = hs256(&claims("root", &["admin"]));
    let shop = hs256(&claims("shop-frontend", &["orders"]));
    let viewer = hs256(&claims("dashboard", &["viewer"]));
    let operator = hs256(&claims("ops-1", &["operator"]));

    // Open without a token: health, metrics, the console.
    for path in ["/health/live", "/health/ready", "/metrics", "/ui"] {
        let status = s.client.get(format!("{}{path}", s.base)).send().await.unwrap().status();
        assert_eq!(status, 200, "{path}");
    }
    // No token, or a token that fails any check: 401, saying no more than that.
    let mut expired = claims("root", &["admin"]);
    expired["exp"] = json!(now() - 120);
    let mut early = claims("root", &["admin"]);
    early["nbf"] = json!(now() + 600);
    let mut stranger = claims("root", &["admin"]);
    stranger["iss"] = json!("https://elsewhere.example");
    let mut other_audience = claims("root", &["admin"]);
    other_audience["aud"] = json!("another-service");
    let forged = tokens::hs256(b"not-the-secret", &claims("root", &["admin"]));
    let refused = [
        None,
        Some(hs256(&expired)),
        Some(hs256(&early)),
        Some(hs256(&stranger)),
        Some(hs256(&other_audience)),
        Some(forged),
        Some("garbage".to_owned()),
    ];
    for token in &refused {
        let (status, body) = call(&s, Method::GET, "/sagas", token.as_deref(), None).await;
        assert_eq!((status, body["detail"].as_str()), (401, Some("a valid bearer token is required")), "{token:?}");
    }

    // admin sets stock and credit; the orders role may not.
    let (status, _) = call(&s, Method::PUT, "/inventory/A", Some(&shop), Some(json!({ "available": 10 }))).await;
    assert_eq!(status, 403);
    assert_eq!(call(&s, Method::PUT, "/inventory/A", Some(&admin), Some(json!({ "available": 10 }))).await.0, 200);
    let credit = json!({ "limit": "100.00" });
    assert_eq!(call(&s, Method::PUT, "/customers/c-1/credit", Some(&admin), Some(credit)).await.0, 200);
    // orders submits and reads orders, and nothing else.
    let order = json!({ "customer_id": "c-1", "items": [{ "sku": "A", "quantity": 1, "unit_price": "1.00" }] });
    let (status, submitted) = call(&s, Method::POST, "/orders", Some(&shop), Some(order.clone())).await;
    assert_eq!(status, 202);
    let id = submitted["order_id"].as_str().unwrap().to_owned();
    let (status, view) = call(&s, Method::GET, &format!("/orders/{id}?wait=30"), Some(&shop), None).await;
    assert_eq!((status, view["status"].as_str()), (200, Some("APPROVED")));
    assert_eq!(call(&s, Method::POST, "/orders", Some(&viewer), Some(order)).await.0, 403);
    assert_eq!(call(&s, Method::GET, "/sagas", Some(&shop), None).await.0, 403);
    // viewer reads sagas and streams; the caller is in the metadata of what the order caused.
    let (status, events) = call(&s, Method::GET, &format!("/sagas/{id}/events"), Some(&viewer), None).await;
    assert_eq!(status, 200);
    assert_eq!(events[0]["type"], "SagaStarted");
    assert_eq!(events[0]["metadata"]["caller"], "shop-frontend", "{}", events[0]);
    let (_, stock) = call(&s, Method::GET, "/streams/inventory-A/events", Some(&viewer), None).await;
    assert_eq!(stock[0]["metadata"]["caller"], "root");

    // operator acts, as its sub, with no header; viewer may not.
    let patient = json!({ "name": "patient", "steps": [
        { "name": "wait", "participant": "nobody", "command": "Hello", "timeout_ms": 600000 }
    ]});
    assert_eq!(call(&s, Method::POST, "/saga-definitions", Some(&operator), Some(patient.clone())).await.0, 403);
    assert_eq!(call(&s, Method::POST, "/saga-definitions", Some(&admin), Some(patient)).await.0, 201);
    let start = json!({ "definition": "patient", "input": {} });
    assert_eq!(call(&s, Method::POST, "/sagas", Some(&viewer), Some(start.clone())).await.0, 403);
    let (status, started) = call(&s, Method::POST, "/sagas", Some(&admin), Some(start)).await;
    assert_eq!(status, 202);
    let saga = started["saga_id"].as_str().unwrap().to_owned();
    let resolve = json!({ "outcome": "succeeded", "reason": "done by hand" });
    let path = format!("/sagas/{saga}/steps/wait/resolve");
    assert_eq!(call(&s, Method::POST, &path, Some(&viewer), Some(resolve.clone())).await.0, 403);
    let (status, body) = call(&s, Method::POST, &path, Some(&operator), Some(resolve)).await;
    assert_eq!(status, 200, "{body}");
    let (_, events) = call(&s, Method::GET, &format!("/sagas/{saga}/events"), Some(&operator), None).await;
    let resolved = events.as_array().unwrap().iter().find(|e| e["type"] == "OperatorResolved").unwrap();
    assert_eq!(
        (resolved["data"]["actor"].as_str(), resolved["metadata"]["caller"].as_str()),
        (Some("ops-1"), Some("ops-1"))
    );
    s.stop().await;
}

#[test]
fn rs256_es256_and_jwks_keys_verify_their_own_tokens_only() {
    let sign = |algorithm: Algorithm, pem: &str, kid: Option<&str>| {
        tokens::signed(algorithm, pem, kid, &json!({ "sub": "svc", "roles": ["viewer"], "exp": now() + 60 }))
    };
    let rsa = AuthConfig::public_key(&fixture("rsa-public.pem"), Algorithm::RS256).unwrap();
    let ec = AuthConfig::public_key(&fixture("ec-public.pem"), Algorithm::ES256).unwrap();
    let jwks = AuthConfig::jwks(&fixture("jwks.json")).unwrap();
    let rs_token = sign(Algorithm::RS256, "rsa-private.pem", Some("rsa-1"));
    let es_token = sign(Algorithm::ES256, "ec-private.pem", Some("ec-1"));
    assert_eq!(rsa.verify(&rs_token).unwrap().sub, "svc");
    assert_eq!(ec.verify(&es_token).unwrap().sub, "svc");
    assert!(rsa.verify(&es_token).is_err() && ec.verify(&rs_token).is_err());
    assert!(jwks.verify(&rs_token).is_ok() && jwks.verify(&es_token).is_ok());
    let wrong_kid = sign(Algorithm::RS256, "rsa-private.pem", Some("ec-1"));
    assert!(jwks.verify(&wrong_kid).is_err(), "the key of another kid does not verify it");
    assert!(jwks.verify(&sign(Algorithm::RS256, "rsa-private.pem", None)).is_err(), "a JWKS token names its kid");
    // An HS256 token forged with the public key as its secret is refused.
    let public = std::fs::read(fixture("rsa-public.pem")).unwrap();
    let confused = tokens::hs256(&public, &json!({ "sub": "svc", "exp": now() + 60 }));
    assert!(rsa.verify(&confused).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_loopback_address_without_a_key_is_refused_at_start() {
    let data = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let mut command = Command::new(sagaflow_binary());
        command
            .arg("serve")
            .args(extra)
            .env_remove("DATABASE_URL")
            .env_remove("KAFKA_BOOTSTRAP_SERVERS")
            .env("SAGAFLOW_DATA_DIR", data.path())
            .env("NO_COLOR", "1");
        command
    };
    let port = free_port();
    let refused = run(&["--http-addr", &format!("0.0.0.0:{port}")]).output().unwrap();
    assert!(!refused.status.success());
    let log = String::from_utf8_lossy(&refused.stdout).into_owned() + &String::from_utf8_lossy(&refused.stderr);
    assert!(log.contains("refusing to serve 0.0.0.0"), "{log}");
    assert!(log.contains("--insecure-no-auth"), "{log}");
    // Said explicitly, it serves.
    let mut open = run(&["--http-addr", &format!("0.0.0.0:{port}"), "--insecure-no-auth"]).spawn().unwrap();
    let client = reqwest::Client::new();
    let mut live = false;
    for _ in 0..100 {
        if client.get(format!("http://127.0.0.1:{port}/health/live")).send().await.is_ok_and(|r| r.status() == 200) {
            live = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = open.kill();
    let _ = open.wait();
    assert!(live, "with --insecure-no-auth the engine serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_callers_are_rate_limited_each_by_their_sub() {
    use std::num::NonZeroU32;
    let one = NonZeroU32::new(1).unwrap();
    let s = TestServer::embedded_with(|o| {
        o.auth = Some(Arc::new(AuthConfig::hs256(SECRET)));
        o.limits = api::limits::Limits::default().with_writes(api::limits::WriteLimit::new(one, one));
    })
    .await;
    let (alice, bob) = (hs256(&claims("alice", &["admin"])), hs256(&claims("bob", &["admin"])));
    let body = || Some(json!({ "available": 1 }));
    assert_eq!(call(&s, Method::PUT, "/inventory/A", Some(&alice), body()).await.0, 200);
    assert_eq!(call(&s, Method::PUT, "/inventory/A", Some(&alice), body()).await.0, 429);
    // Same address, another caller: a bucket of its own.
    assert_eq!(call(&s, Method::PUT, "/inventory/A", Some(&bob), body()).await.0, 200);
    s.stop().await;
}
