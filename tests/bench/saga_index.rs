//! The saga index at scale: a million sagas, then filtered pages over HTTP (`GET /sagas`), the
//! same through the index alone, and the raw limit (the equivalent hand-written SELECT).

use std::sync::Arc;
use std::time::{Duration, Instant};

use api::server::{self, EngineOptions, Roles};
use chrono::{DateTime, Utc};
use engine::topics::Topics;
use engine::transport::in_process::InProcessTransport;
use event_store::saga_index::{SagaCursor, SagaQuery, SagaRow, StuckFilter};
use event_store::{AllPosition, EventStore};
use rand::Rng;
use sqlx::PgPool;

use crate::stats::{percentile, thousands};

const DEFINITIONS: [&str; 5] = ["order-fulfilment", "ship-parcel", "refund", "signup", "invoice"];
const SPAN_DAYS: i64 = 30;
const PAGE: usize = 50;

fn status_of(roll: f64) -> &'static str {
    match roll {
        r if r < 0.90 => "COMPLETED",
        r if r < 0.96 => "COMPENSATED",
        r if r < 0.98 => "FAILED",
        r if r < 0.995 => "RUNNING",
        _ => "COMPENSATING",
    }
}

/// Fills the index with `count` sagas started over 30 days up to `now`.
async fn fill(store: &Arc<dyn EventStore>, count: u64, now: DateTime<Utc>) -> Duration {
    let index = store.saga_index();
    let started = Instant::now();
    let mut rng = rand::rng();
    let mut from = AllPosition::START;
    let span_us = SPAN_DAYS * 24 * 3600 * 1_000_000;
    for batch in 0..count.div_ceil(10_000) {
        let rows: Vec<SagaRow> = (0..10_000.min(count - batch * 10_000))
            .map(|_| {
                let at = now - chrono::Duration::microseconds(rng.random_range(0..span_us));
                let status = status_of(rng.random());
                let open = matches!(status, "RUNNING" | "COMPENSATING" | "FAILED");
                let progress = at + chrono::Duration::milliseconds(rng.random_range(10..5_000));
                SagaRow {
                    saga_id: uuid::Uuid::now_v7(),
                    definition: DEFINITIONS[rng.random_range(0..DEFINITIONS.len())].to_owned(),
                    definition_version: 1,
                    status: status.to_owned(),
                    current_step: Some("reserve-inventory".to_owned()),
                    started_at: at,
                    last_progress_at: progress,
                    finished_at: (!open).then_some(progress),
                    waiting_until: None,
                    stuck_after_ms: None,
                }
            })
            .collect();
        let to = AllPosition { transaction_id: 1, global_position: batch + 1 };
        index.write(&rows, from, to).await.unwrap();
        from = to;
    }
    started.elapsed()
}

struct Case {
    name: &'static str,
    query: SagaQuery,
    http: String,
    raw: String,
}

fn cases(now: DateTime<Utc>, cursor: SagaCursor) -> Vec<Case> {
    let day_from = now - chrono::Duration::days(12);
    let day_to = day_from + chrono::Duration::days(1);
    let stuck = StuckFilter { stuck: true, now, default_after_ms: 15 * 60 * 1000 };
    let base = SagaQuery { limit: PAGE + 1, descending: true, ..SagaQuery::default() };
    let cols = "saga_id, definition, status, current_step, started_us, progress_us, finished_us";
    let enc = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true).replace('+', "%2B");
    vec![
        Case {
            name: "status=FAILED, newest first",
            query: SagaQuery { status: Some("FAILED".into()), ..base.clone() },
            http: format!("/sagas?status=FAILED&order=desc&limit={PAGE}"),
            raw: format!("SELECT {cols} FROM saga_index WHERE status = 'FAILED' ORDER BY started_us DESC, saga_id DESC LIMIT {}", PAGE + 1),
        },
        Case {
            name: "definition + COMPLETED, a page deep in the list",
            query: SagaQuery {
                status: Some("COMPLETED".into()),
                definition: Some("refund".into()),
                after: Some(cursor),
                ..base.clone()
            },
            http: format!("/sagas?status=COMPLETED&definition=refund&order=desc&limit={PAGE}&cursor={}", cursor.encode()),
            raw: format!(
                "SELECT {cols} FROM saga_index WHERE status = 'COMPLETED' AND definition = 'refund' AND (started_us, saga_id) < ({}, '{}') ORDER BY started_us DESC, saga_id DESC LIMIT {}",
                cursor.started_at.timestamp_micros(), cursor.saga_id, PAGE + 1
            ),
        },
        Case {
            name: "stuck=true",
            query: SagaQuery { stuck: Some(stuck), ..base.clone() },
            http: format!("/sagas?stuck=true&order=desc&limit={PAGE}"),
            raw: format!(
                "SELECT {cols} FROM saga_index WHERE status IN ('RUNNING', 'COMPENSATING', 'FAILED') AND CASE WHEN waiting_until_us > progress_us THEN waiting_until_us ELSE progress_us END + COALESCE(stuck_after_ms * 1000, 900000000) <= {} ORDER BY started_us DESC, saga_id DESC LIMIT {}",
                now.timestamp_micros(), PAGE + 1
            ),
        },
        Case {
            name: "one day's sagas, oldest first",
            query: SagaQuery { started_from: Some(day_from), started_to: Some(day_to), descending: false, ..base.clone() },
            http: format!("/sagas?started_from={}&started_to={}&limit={PAGE}", enc(day_from), enc(day_to)),
            raw: format!(
                "SELECT {cols} FROM saga_index WHERE started_us >= {} AND started_us < {} ORDER BY started_us, saga_id LIMIT {}",
                day_from.timestamp_micros(), day_to.timestamp_micros(), PAGE + 1
            ),
        },
    ]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn timed<F, Fut>(runs: usize, mut f: F) -> (f64, f64)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..5 {
        f().await;
    }
    let mut all = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        f().await;
        all.push(started.elapsed());
    }
    all.sort_unstable();
    (ms(percentile(&all, 0.50)), ms(percentile(&all, 0.99)))
}

pub async fn saga_index(store: Arc<dyn EventStore>, pool: PgPool, count: u64) {
    let now = Utc::now();
    let filled = fill(&store, count, now).await;
    sqlx::query("ANALYZE saga_index").execute(&pool).await.unwrap();
    println!(
        "\nSaga index: {} sagas written in {:.1} s ({}/s); filtered pages of {PAGE}, 200 each, p50 / p99 ms",
        thousands(count as f64),
        filled.as_secs_f64(),
        thousands(count as f64 / filled.as_secs_f64())
    );
    // A cursor a third of the way down the newest-first list of one definition.
    let deep = SagaQuery {
        status: Some("COMPLETED".into()),
        definition: Some("refund".into()),
        descending: true,
        limit: 1,
        started_to: Some(now - chrono::Duration::days(SPAN_DAYS / 3)),
        ..SagaQuery::default()
    };
    let cursor = SagaCursor::after(&store.saga_index().query(&deep).await.unwrap()[0]);

    let engine = server::start(
        Arc::clone(&store),
        Arc::new(InProcessTransport::new()),
        Topics::new("bench-index"),
        Roles { api: true, coordinator: false, participants: false },
        EngineOptions::new("bench-index."),
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = api::router(engine.state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client = reqwest::Client::new();
    let index = store.saga_index();

    println!("| page | over HTTP | index alone | raw SELECT | HTTP/raw p99 |");
    println!("|---|---|---|---|---|");
    for case in cases(now, cursor) {
        let (http50, http99) = timed(200, || async {
            let response = client.get(format!("{base}{}", case.http)).send().await.unwrap();
            assert_eq!(response.status(), 200, "{}", case.http);
            let page: serde_json::Value = response.json().await.unwrap();
            assert!(!page["sagas"].as_array().unwrap().is_empty(), "{}: an empty page measures nothing", case.name);
        })
        .await;
        let (ours50, ours99) = timed(200, || async {
            index.query(&case.query).await.unwrap();
        })
        .await;
        let (raw50, raw99) = timed(200, || async {
            sqlx::query(&case.raw).fetch_all(&pool).await.unwrap();
        })
        .await;
        println!(
            "| {} | {http50:.2} / {http99:.2} | {ours50:.2} / {ours99:.2} | {raw50:.2} / {raw99:.2} | {:.1} |",
            case.name,
            http99 / raw99.max(1e-9)
        );
    }
    engine.runtime.shutdown().await;
}
