//! `/sagas`: starting sagas of any registered definition, and following them.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use engine::coordinator::SagaView;
use engine::saga::{SagaStatus, StepStatus};
use event_store::saga_index::{SagaCursor, SagaQuery, StuckFilter};
use event_store::EventStoreExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::streams::EventResponse;
use crate::error::{ApiError, ApiResult};
use crate::extract::{AppJson, AppPath, AppQuery};
use crate::limits::long_poll_place;
use crate::state::AppState;
use crate::wait::{until_saga_terminal, WaitQuery};

/// Which definition to run, with what input.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartSaga {
    pub definition: String,
    /// Latest when omitted.
    pub version: Option<u32>,
    #[serde(default)]
    pub input: Value,
}

/// A started saga.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Started {
    pub saga_id: Uuid,
}

/// Name and version of a saga's definition.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DefinitionRef {
    pub name: String,
    pub version: u32,
}

/// One step's progress.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StepResponse {
    pub name: String,
    pub status: StepStatus,
    pub attempts: u32,
    pub compensation_attempts: u32,
}

/// A saga as folded from its stream.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SagaResponse {
    pub saga_id: Uuid,
    pub definition: DefinitionRef,
    pub status: SagaStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub steps: Vec<StepResponse>,
    pub context: Value,
    pub version: u64,
}

/// The response shape of a folded saga.
pub fn saga_response(saga_id: Uuid, view: SagaView) -> SagaResponse {
    let state = view.state;
    let definition = state
        .definition
        .as_ref()
        .map(|d| DefinitionRef { name: d.name.clone(), version: d.version })
        .unwrap_or(DefinitionRef { name: String::new(), version: 0 });
    SagaResponse {
        saga_id,
        definition,
        status: state.status,
        reason: state.reason,
        steps: state
            .steps
            .into_iter()
            .map(|s| StepResponse {
                name: s.name,
                status: s.status,
                attempts: s.attempts,
                compensation_attempts: s.compensation_attempts,
            })
            .collect(),
        context: state.context,
        version: view.version,
    }
}

/// Starts a saga of a registered definition.
#[utoipa::path(post, path = "/sagas", tag = "sagas", request_body = StartSaga,
    responses((status = 202, body = Started, headers(("Location" = String))), (status = 400), (status = 404), (status = 422)))]
pub async fn start(State(state): State<AppState>, AppJson(request): AppJson<StartSaga>) -> ApiResult<Response> {
    if request.definition == ::sagas::definitions::ORDER_FULFILMENT {
        return Err(ApiError::invalid("orders are submitted with POST /orders, which validates them", vec![]));
    }
    if serde_json::to_vec(&request.input).map(|b| b.len()).unwrap_or(0) > 256 * 1024 {
        return Err(ApiError::invalid("input must be at most 256 KiB of JSON", vec![]));
    }
    let saga_id = state.coordinator.start(&request.definition, request.version, request.input, None).await?;
    let location = format!("/sagas/{saga_id}");
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(Started { saga_id })).into_response())
}

fn parse_id(id: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(id).map_err(|_| ApiError::NotFound(format!("no saga '{id}'")))
}

/// A saga's status, steps and context; `?wait=<seconds>` holds the request until it is terminal.
#[utoipa::path(get, path = "/sagas/{id}", tag = "sagas", params(("id" = String, Path), WaitQuery),
    responses((status = 200, body = SagaResponse), (status = 400), (status = 404)))]
pub async fn get_saga(
    State(state): State<AppState>,
    AppPath(id): AppPath<String>,
    AppQuery(query): AppQuery<WaitQuery>,
) -> ApiResult<Json<SagaResponse>> {
    let wait = query.duration(&state.limits)?;
    let saga_id = parse_id(&id)?;
    let mut view =
        state.coordinator.load(saga_id).await?.ok_or_else(|| ApiError::NotFound(format!("no saga '{id}'")))?;
    if !view.state.status.is_terminal() && !wait.is_zero() {
        let _place = long_poll_place(&state, wait)?;
        until_saga_terminal(state.store.as_ref(), &state.coordinator, saga_id, &mut view, wait).await?;
    }
    Ok(Json(saga_response(saga_id, view)))
}

/// The saga's own event stream: its audit log.
#[utoipa::path(get, path = "/sagas/{id}/events", tag = "sagas", params(("id" = String, Path)),
    responses((status = 200, body = Vec<EventResponse>), (status = 404)))]
pub async fn events(
    State(state): State<AppState>,
    AppPath(id): AppPath<String>,
) -> ApiResult<Json<Vec<EventResponse>>> {
    let saga_id = parse_id(&id)?;
    let events = state.store.read_stream_to_end(&engine::coordinator::saga_stream(saga_id), 1).await?;
    if events.is_empty() {
        return Err(ApiError::NotFound(format!("no saga '{id}'")));
    }
    Ok(Json(events.into_iter().map(EventResponse::from).collect()))
}

/// The saga drawn on a time axis: each step's attempts as bars by outcome, retry backoffs,
/// compensations, operator actions and the terminal state.
#[utoipa::path(get, path = "/sagas/{id}/timeline.svg", tag = "sagas", params(("id" = String, Path)),
    responses((status = 200, content_type = "image/svg+xml", body = String), (status = 404)))]
pub async fn timeline(State(state): State<AppState>, AppPath(id): AppPath<String>) -> ApiResult<Response> {
    let saga_id = parse_id(&id)?;
    let events = state.store.read_stream_to_end(&engine::coordinator::saga_stream(saga_id), 1).await?;
    if events.is_empty() {
        return Err(ApiError::NotFound(format!("no saga '{id}'")));
    }
    let svg = crate::timeline::render(&events)?;
    // The picture changes as the saga moves on: never serve a stale one.
    Ok(([(header::CONTENT_TYPE, "image/svg+xml"), (header::CACHE_CONTROL, "no-store")], svg).into_response())
}

/// Filters and paging of the saga list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    pub status: Option<SagaStatus>,
    pub definition: Option<String>,
    /// Only sagas stuck (`true`) or not stuck (`false`): no progress for longer than the
    /// definition's threshold, or the engine's default, while running, compensating or failed.
    pub stuck: Option<bool>,
    /// Started at or after this time (RFC 3339).
    pub started_from: Option<DateTime<Utc>>,
    /// Started before this time (RFC 3339).
    pub started_to: Option<DateTime<Utc>>,
    /// `asc` (oldest first, the default) or `desc`.
    #[param(inline)]
    pub order: Option<ListOrder>,
    /// Continue where the previous page ended (its `next_cursor`).
    pub cursor: Option<String>,
    /// Page size (default 50, at most 500).
    pub limit: Option<usize>,
}

/// The order of a saga list, by start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ListOrder {
    Asc,
    Desc,
}

/// One saga in a list, from the saga index.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SagaSummary {
    pub saga_id: Uuid,
    pub definition: DefinitionRef,
    pub status: SagaStatus,
    pub current_step: Option<String>,
    pub started_at: DateTime<Utc>,
    pub last_progress_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub stuck: bool,
}

/// One page of sagas.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SagaPage {
    pub sagas: Vec<SagaSummary>,
    /// Pass as `cursor` for the next page; absent on the last one.
    pub next_cursor: Option<String>,
}

/// The response header that tells how many events the saga index has yet to take in.
pub const INDEX_LAG_HEADER: &str = "sagaflow-index-lag";

/// Lists sagas from the saga index by start time, filtered by status, definition, stuck and
/// start time, a page at a time. The index follows the event store: header
/// `Sagaflow-Index-Lag` tells how many events it has yet to take in.
#[utoipa::path(get, path = "/sagas", tag = "sagas", params(ListQuery),
    responses((status = 200, body = SagaPage, headers(("Sagaflow-Index-Lag" = u64))), (status = 400)))]
pub async fn list(State(state): State<AppState>, AppQuery(query): AppQuery<ListQuery>) -> ApiResult<Response> {
    let limit = crate::routes::page_limit(query.limit)?;
    let after = match query.cursor.as_deref() {
        Some(text) => Some(
            SagaCursor::decode(text)
                .ok_or_else(|| ApiError::BadRequest("cursor is not one this API gave out".into()))?,
        ),
        None => None,
    };
    if let (Some(from), Some(to)) = (query.started_from, query.started_to) {
        if from >= to {
            return Err(ApiError::BadRequest("started_from must be before started_to".into()));
        }
    }
    let now = Utc::now();
    let default_after_ms = engine::stuck_sagas::millis(state.stuck_after);
    let index_query = SagaQuery {
        status: query.status.map(|s| s.as_str().to_owned()),
        definition: query.definition,
        stuck: query.stuck.map(|stuck| StuckFilter { stuck, now, default_after_ms }),
        started_from: query.started_from,
        started_to: query.started_to,
        after,
        descending: query.order == Some(ListOrder::Desc),
        limit: limit + 1,
    };
    // The lag is counted before the page is read, so that a lag of 0 means the page holds
    // every commit made before the request.
    let lag = state.projection.lag().await;
    let mut rows = state.projection.index().query(&index_query).await?;
    let next_cursor = (rows.len() > limit).then(|| {
        rows.truncate(limit);
        rows.last().map(|r| SagaCursor::after(r).encode())
    });
    let sagas = rows
        .into_iter()
        .map(|row| SagaSummary {
            stuck: row.is_stuck(now, default_after_ms),
            saga_id: row.saga_id,
            definition: DefinitionRef { name: row.definition, version: row.definition_version },
            status: SagaStatus::parse(&row.status).unwrap_or_default(),
            current_step: row.current_step,
            started_at: row.started_at,
            last_progress_at: row.last_progress_at,
            finished_at: row.finished_at,
        })
        .collect();
    let page = SagaPage { sagas, next_cursor: next_cursor.flatten() };
    let mut response = Json(page).into_response();
    // The page stands without the lag: when it cannot be counted, the header is left out.
    match lag {
        Ok(lag) => {
            if let Ok(value) = header::HeaderValue::from_str(&lag.to_string()) {
                response.headers_mut().insert(INDEX_LAG_HEADER, value);
            }
        }
        Err(err) => tracing::warn!(error = %err, "cannot count the saga index's lag"),
    }
    Ok(response)
}
