//! `GET /aggregates/{type}/{id}`: any aggregate replayed from its history, now, as of a
//! version, or as of a point in time.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use engine::{Aggregate, Repository};
use sagas::credit::CustomerCredit;
use sagas::inventory::Inventory;
use sagas::order::Order;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};
use crate::extract::{AppPath, AppQuery};
use crate::state::AppState;

/// Which point of the history to replay to.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ReplayQuery {
    /// Replay up to this stream version.
    pub version: Option<u64>,
    /// Replay every event recorded at or before this instant (RFC 3339).
    pub at: Option<DateTime<Utc>>,
}

/// An aggregate's state as replayed.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AggregateResponse {
    #[serde(rename = "type")]
    pub aggregate_type: String,
    pub id: String,
    pub version: u64,
    pub state: Value,
}

enum Point {
    Now,
    Version(u64),
    At(DateTime<Utc>),
}

async fn replay<A: Aggregate>(state: &AppState, id: &str, point: &Point) -> ApiResult<(u64, Value)> {
    let repo = Repository::<A>::new(state.store.clone());
    let loaded = match point {
        Point::Now => repo.load(id).await?,
        Point::Version(v) => repo.load_at_version(id, *v).await?,
        Point::At(at) => repo.load_at_time(id, *at).await?,
    };
    let value = serde_json::to_value(&loaded.state).map_err(engine::Error::Encode)?;
    Ok((loaded.version, value))
}

async fn replay_saga(state: &AppState, id: &str, point: &Point) -> ApiResult<(u64, Value)> {
    let saga_id = Uuid::parse_str(id).map_err(|_| ApiError::NotFound(format!("no saga '{id}'")))?;
    let view = state
        .coordinator
        .load_while(saga_id, |event| match point {
            Point::Now => true,
            Point::Version(v) => event.version <= *v,
            Point::At(at) => event.recorded_at <= *at,
        })
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no saga '{id}'")))?;
    Ok((view.version, serde_json::to_value(&view.state).map_err(engine::Error::Encode)?))
}

/// An aggregate (`order`, `inventory`, `customer` or `saga`) replayed from its events.
#[utoipa::path(get, path = "/aggregates/{type}/{id}", tag = "aggregates",
    params(("type" = String, Path, description = "order, inventory, customer or saga"), ("id" = String, Path), ReplayQuery),
    responses((status = 200, body = AggregateResponse), (status = 400), (status = 404)))]
pub async fn get_aggregate(
    State(state): State<AppState>,
    AppPath((aggregate_type, id)): AppPath<(String, String)>,
    AppQuery(query): AppQuery<ReplayQuery>,
) -> ApiResult<Json<AggregateResponse>> {
    let point = match (query.version, query.at) {
        (Some(_), Some(_)) => return Err(ApiError::BadRequest("give either version or at, not both".into())),
        (Some(v), None) => Point::Version(v),
        (None, Some(at)) => Point::At(at),
        (None, None) => Point::Now,
    };
    let (version, value) = match aggregate_type.as_str() {
        "order" => replay::<Order>(&state, &id, &point).await?,
        "inventory" => replay::<Inventory>(&state, &id, &point).await?,
        "customer" => replay::<CustomerCredit>(&state, &id, &point).await?,
        "saga" => replay_saga(&state, &id, &point).await?,
        other => {
            return Err(ApiError::NotFound(format!(
                "no aggregate type '{other}' (known: order, inventory, customer, saga)"
            )))
        }
    };
    let stream = if aggregate_type == "saga" { format!("saga-{id}") } else { format!("{aggregate_type}-{id}") };
    if state.store.stream_version(&stream).await?.is_none() {
        return Err(ApiError::NotFound(format!("no {aggregate_type} '{id}'")));
    }
    Ok(Json(AggregateResponse { aggregate_type, id, version, state: value }))
}
