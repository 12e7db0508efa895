//! Liveness, readiness (the store and the transport answer) and Prometheus metrics.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::state::AppState;

/// One dependency's health.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Check {
    pub name: String,
    pub backend: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Health report.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
    pub checks: Vec<Check>,
}

/// The process is up.
#[utoipa::path(get, path = "/health/live", tag = "health", responses((status = 200, body = Health)))]
pub async fn live() -> Json<Health> {
    Json(Health { status: "up".into(), checks: vec![] })
}

/// The store and the transport answer, and every consumer of this process has its assignment;
/// 503 with details when one does not.
#[utoipa::path(get, path = "/health/ready", tag = "health",
    responses((status = 200, body = Health), (status = 503, body = Health)))]
pub async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let limit = Duration::from_secs(5);
    let store = match tokio::time::timeout(limit, state.store.ping()).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some("no answer within 5 s".into()),
    };
    let transport = match tokio::time::timeout(limit, state.transport.ping()).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some("no answer within 5 s".into()),
    };
    let mut checks = vec![
        Check { name: "event-store".into(), backend: state.store.backend().into(), ok: store.is_none(), error: store },
        Check {
            name: "transport".into(),
            backend: state.transport.name().into(),
            ok: transport.is_none(),
            error: transport,
        },
    ];
    // A consumer is ready once its group has given it an assignment (an empty one counts:
    // the group has more members than partitions).
    checks.extend(state.consumers.iter().map(|c| Check {
        name: format!("consumer {}", c.group),
        backend: format!("{} partition(s)", c.partitions()),
        ok: c.joined(),
        error: (!c.joined()).then(|| "its group has not assigned it partitions yet".to_owned()),
    }));
    let ok = checks.iter().all(|c| c.ok);
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(Health { status: if ok { "ready".into() } else { "not ready".into() }, checks }))
}

/// Prometheus text exposition. The outbox backlog and the saga index's lag are measured
/// here, at scrape time, rather than on every batch.
#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    if let Ok(pending) = state.store.outbox_pending().await {
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!("sagaflow_outbox_pending").set(pending as f64);
    }
    if let Ok(lag) = state.projection.lag().await {
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!("sagaflow_saga_index_lag_events").set(lag as f64);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}
