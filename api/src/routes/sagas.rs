//! `/sagas`: starting sagas of any registered definition, and following them.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use engine::coordinator::SagaView;
use engine::saga::{SagaStatus, StepStatus};
use event_store::EventStoreExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::streams::EventResponse;
use crate::error::{ApiError, ApiResult};
use crate::extract::{AppJson, AppPath, AppQuery};
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
    let wait = query.duration()?;
    let saga_id = parse_id(&id)?;
    let mut view =
        state.coordinator.load(saga_id).await?.ok_or_else(|| ApiError::NotFound(format!("no saga '{id}'")))?;
    if !view.state.status.is_terminal() && !wait.is_zero() {
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
    Ok(([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response())
}

/// Filters and paging of the saga list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    pub status: Option<SagaStatus>,
    pub definition: Option<String>,
    /// Continue after this saga id (the previous page's `next_after`).
    pub after: Option<Uuid>,
    /// Page size (default 50, at most 500).
    pub limit: Option<usize>,
}

/// One page of sagas.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SagaPage {
    pub sagas: Vec<SagaResponse>,
    /// Pass as `after` for the next page; absent on the last one.
    pub next_after: Option<Uuid>,
}

/// Lists sagas, oldest first, optionally filtered by status and definition name.
#[utoipa::path(get, path = "/sagas", tag = "sagas", params(ListQuery),
    responses((status = 200, body = SagaPage), (status = 400)))]
pub async fn list(State(state): State<AppState>, AppQuery(query): AppQuery<ListQuery>) -> ApiResult<Json<SagaPage>> {
    let limit = query.limit.unwrap_or(50);
    if limit == 0 || limit > 500 {
        return Err(ApiError::BadRequest("limit must be between 1 and 500".into()));
    }
    let mut sagas = Vec::new();
    let mut after = query.after;
    loop {
        let ids = state.coordinator.list(after, 200).await?;
        for id in &ids {
            let Some(view) = state.coordinator.load(*id).await? else { continue };
            let status_ok = query.status.is_none_or(|s| s == view.state.status);
            let name_ok =
                query.definition.as_deref().is_none_or(|n| view.state.definition.as_ref().is_some_and(|d| d.name == n));
            if status_ok && name_ok {
                sagas.push(saga_response(*id, view));
                if sagas.len() == limit {
                    // More may follow: the next page continues after this saga.
                    return Ok(Json(SagaPage { sagas, next_after: Some(*id) }));
                }
            }
        }
        if ids.len() < 200 {
            return Ok(Json(SagaPage { sagas, next_after: None }));
        }
        after = ids.last().copied();
    }
}
