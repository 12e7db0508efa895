//! `/streams/{id}/events`: reading any stream, and appending to user streams with an
//! expected version.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use event_store::{EventStoreExt, ExpectedVersion, NewEvent, RecordedEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};
use crate::extract::{AppJson, AppPath, AppQuery};
use crate::state::AppState;

/// A stored event.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EventResponse {
    pub event_id: Uuid,
    pub stream_id: String,
    pub version: u64,
    pub global_position: u64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub data: Value,
    pub metadata: Value,
    pub recorded_at: DateTime<Utc>,
}

impl From<RecordedEvent> for EventResponse {
    fn from(e: RecordedEvent) -> Self {
        Self {
            event_id: e.event_id,
            stream_id: e.stream_id,
            version: e.version,
            global_position: e.global_position,
            event_type: e.event_type,
            data: e.data,
            metadata: e.metadata,
            recorded_at: e.recorded_at,
        }
    }
}

/// Paging of a stream read.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ReadQuery {
    /// First version to return (default 1).
    pub from_version: Option<u64>,
    /// At most this many events (default 100, at most 1000).
    pub limit: Option<usize>,
}

/// Events of a stream, in version order.
#[utoipa::path(get, path = "/streams/{id}/events", tag = "streams", params(("id" = String, Path), ReadQuery),
    responses((status = 200, body = Vec<EventResponse>), (status = 400), (status = 404)))]
pub async fn read(
    State(state): State<AppState>,
    AppPath(id): AppPath<String>,
    AppQuery(query): AppQuery<ReadQuery>,
) -> ApiResult<Json<Vec<EventResponse>>> {
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::BadRequest("limit must be between 1 and 1000".into()));
    }
    if state.store.stream_version(&id).await?.is_none() {
        return Err(ApiError::NotFound(format!("no stream '{id}'")));
    }
    let events = state.store.read_stream(&id, query.from_version.unwrap_or(1).max(1), limit).await?;
    Ok(Json(events.into_iter().map(EventResponse::from).collect()))
}

/// `"no_stream"`, `"any"`, or a version number.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ExpectedVersionInput {
    Exact(u64),
    Named(NamedExpectation),
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NamedExpectation {
    NoStream,
    Any,
}

/// An event to append.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventInput {
    /// Supply it to make retries idempotent.
    pub event_id: Option<Uuid>,
    #[serde(rename = "type")]
    pub event_type: String,
    pub data: Value,
    pub metadata: Option<Value>,
}

/// An append request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppendRequest {
    pub expected_version: ExpectedVersionInput,
    pub events: Vec<EventInput>,
}

/// Where the stream stands after an append.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AppendResponse {
    pub next_expected_version: u64,
}

/// Streams Sagaflow writes itself; appending to them from outside is refused.
const MANAGED_PREFIXES: [&str; 6] = ["saga-", "definition-", "order-", "inventory-", "customer-", "idempotency-"];
const MAX_EVENTS: usize = 100;

/// Appends events if the stream is at the expected version.
#[utoipa::path(post, path = "/streams/{id}/events", tag = "streams", params(("id" = String, Path)), request_body = AppendRequest,
    responses((status = 201, body = AppendResponse), (status = 400), (status = 403), (status = 409, description = "wrong expected version; `actual_version` tells the current one"), (status = 422)))]
pub async fn append(
    State(state): State<AppState>,
    AppPath(id): AppPath<String>,
    AppJson(request): AppJson<AppendRequest>,
) -> ApiResult<(StatusCode, Json<AppendResponse>)> {
    if let Some(prefix) = MANAGED_PREFIXES.iter().find(|p| id.starts_with(*p)) {
        return Err(ApiError::Forbidden(format!("streams starting with '{prefix}' are written by Sagaflow only")));
    }
    let mut problems = Vec::new();
    if id.is_empty() || id.len() > 200 {
        problems.push("the stream id must be 1-200 characters".to_owned());
    }
    if request.events.is_empty() || request.events.len() > MAX_EVENTS {
        problems.push(format!("events must hold 1-{MAX_EVENTS} events"));
    }
    for (i, e) in request.events.iter().enumerate() {
        if e.event_type.is_empty() || e.event_type.len() > 200 {
            problems.push(format!("events[{i}].type must be 1-200 characters"));
        }
        if e.metadata.as_ref().is_some_and(|m| !m.is_object()) {
            problems.push(format!("events[{i}].metadata must be an object"));
        }
    }
    if !problems.is_empty() {
        return Err(ApiError::invalid(problems.join("; "), problems));
    }
    let expected = match request.expected_version {
        ExpectedVersionInput::Exact(v) => ExpectedVersion::Exact(v),
        ExpectedVersionInput::Named(NamedExpectation::NoStream) => ExpectedVersion::NoStream,
        ExpectedVersionInput::Named(NamedExpectation::Any) => ExpectedVersion::Any,
    };
    let events = request
        .events
        .into_iter()
        .map(|e| {
            let mut event = NewEvent::new(e.event_type, e.data);
            if let Some(id) = e.event_id {
                event = event.with_id(id);
            }
            if let Some(metadata) = e.metadata {
                event = event.with_metadata(metadata);
            }
            event
        })
        .collect();
    let result = state.store.append(&id, expected, events).await?;
    Ok((StatusCode::CREATED, Json(AppendResponse { next_expected_version: result.next_expected_version })))
}
