//! Operator actions on one saga: `POST /sagas/{id}/retry`, `/abort` and
//! `/steps/{step}/resolve`. Each is recorded in the saga's stream with the acting user
//! (header `Sagaflow-Actor`) and the required reason.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use engine::operator_actions::{Actor, OperatorAction};
use engine::saga::Resolution;
use event_store::Commit;
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::sagas::{saga_response, SagaResponse};
use crate::error::{ApiError, ApiResult};
use crate::extract::{AppJson, AppPath};
use crate::idempotency;
use crate::state::AppState;

/// Who acts, when requests are not authenticated: the caller names itself.
const ACTOR_HEADER: &str = "sagaflow-actor";
const MAX_REASON: usize = 2_000;

/// Why the operator acts; `expected_version` refuses the action if the saga changed since.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    pub reason: String,
    pub expected_version: Option<u64>,
}

/// How the operator settled a step, and why.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    pub outcome: Resolution,
    /// For a success: merged into the saga's context.
    #[serde(default)]
    pub output: Value,
    pub reason: String,
    pub expected_version: Option<u64>,
}

/// Who acts: the authenticated caller's `sub`, or without authentication the header.
fn actor(headers: &HeaderMap, reason: &str) -> ApiResult<Actor> {
    if reason.trim().is_empty() || reason.len() > MAX_REASON {
        return Err(ApiError::invalid(format!("reason must be 1-{MAX_REASON} characters"), vec![]));
    }
    if let Some(sub) = event_store::caller::current() {
        return Ok(Actor { name: sub, reason: reason.to_owned() });
    }
    let name = headers
        .get(ACTOR_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 200)
        .ok_or_else(|| {
            ApiError::invalid(
                "operator actions need a Sagaflow-Actor header naming who acts (1-200 characters)",
                vec![],
            )
        })?;
    Ok(Actor { name: name.to_owned(), reason: reason.to_owned() })
}

async fn act(
    state: &AppState,
    headers: &HeaderMap,
    id: &str,
    action: OperatorAction,
    reason: &str,
    expected_version: Option<u64>,
) -> ApiResult<Json<SagaResponse>> {
    let saga_id = Uuid::parse_str(id).map_err(|_| ApiError::NotFound(format!("no saga '{id}'")))?;
    let actor = actor(headers, reason)?;
    let Some(key) = idempotency::key(headers)? else {
        let view = state.coordinator.act(saga_id, &action, &actor, expected_version, Commit::default()).await?;
        return Ok(Json(saga_response(saga_id, view)));
    };
    let stream = format!("idempotency-saga-actions-{key}");
    let fingerprint = format!("{saga_id} {action:?} {} {expected_version:?}", actor.reason);
    if let Some(record) = idempotency::stored(state.store.as_ref(), &stream).await? {
        return replay(state, saga_id, &record, &fingerprint).await;
    }
    let record = idempotency::Record { fingerprint: fingerprint.clone(), response: Value::Null };
    let claim = idempotency::claim(&stream, &record)?;
    match state.coordinator.act(saga_id, &action, &actor, expected_version, claim).await {
        Ok(view) => Ok(Json(saga_response(saga_id, view))),
        Err(e) if idempotency::lost_race(&e, &stream) => {
            let record = idempotency::stored(state.store.as_ref(), &stream)
                .await?
                .ok_or_else(|| ApiError::Unavailable("retry".into()))?;
            replay(state, saga_id, &record, &fingerprint).await
        }
        Err(e) => Err(e.into()),
    }
}

/// A retry of an applied action answers with the saga as it is now.
async fn replay(
    state: &AppState,
    saga_id: Uuid,
    record: &idempotency::Record<Value>,
    fingerprint: &str,
) -> ApiResult<Json<SagaResponse>> {
    if record.fingerprint != fingerprint {
        return Err(ApiError::invalid("this Idempotency-Key was already used with a different request", vec![]));
    }
    let view =
        state.coordinator.load(saga_id).await?.ok_or_else(|| ApiError::NotFound(format!("no saga '{saga_id}'")))?;
    Ok(Json(saga_response(saga_id, view)))
}

/// Retries a FAILED saga from the step it failed on: a new attempt of that step, or of its
/// compensation when compensation gave up. 409 unless the saga is FAILED.
#[utoipa::path(post, path = "/sagas/{id}/retry", tag = "operators", request_body = ActionRequest,
    params(("id" = String, Path), ("Sagaflow-Actor" = String, Header, description = "who acts"),
        ("Idempotency-Key" = Option<String>, Header, description = "makes retries safe")),
    responses((status = 200, body = SagaResponse), (status = 400), (status = 404), (status = 409), (status = 422)))]
pub async fn retry(
    State(state): State<AppState>,
    headers: HeaderMap,
    AppPath(id): AppPath<String>,
    AppJson(request): AppJson<ActionRequest>,
) -> ApiResult<Json<SagaResponse>> {
    act(&state, &headers, &id, OperatorAction::Retry, &request.reason, request.expected_version).await
}

/// Aborts a RUNNING saga: compensates now, in reverse order, as if its current step had
/// failed. 409 once the pivot was sent.
#[utoipa::path(post, path = "/sagas/{id}/abort", tag = "operators", request_body = ActionRequest,
    params(("id" = String, Path), ("Sagaflow-Actor" = String, Header, description = "who acts"),
        ("Idempotency-Key" = Option<String>, Header, description = "makes retries safe")),
    responses((status = 200, body = SagaResponse), (status = 400), (status = 404), (status = 409), (status = 422)))]
pub async fn abort(
    State(state): State<AppState>,
    headers: HeaderMap,
    AppPath(id): AppPath<String>,
    AppJson(request): AppJson<ActionRequest>,
) -> ApiResult<Json<SagaResponse>> {
    act(&state, &headers, &id, OperatorAction::Abort, &request.reason, request.expected_version).await
}

/// Settles the outcome of the step the saga is on (say, a pivot whose outcome is unknown),
/// as succeeded (with an output merged into the context) or compensated; the saga goes on
/// from there.
#[utoipa::path(post, path = "/sagas/{id}/steps/{step}/resolve", tag = "operators", request_body = ResolveRequest,
    params(("id" = String, Path), ("step" = String, Path), ("Sagaflow-Actor" = String, Header, description = "who acts"),
        ("Idempotency-Key" = Option<String>, Header, description = "makes retries safe")),
    responses((status = 200, body = SagaResponse), (status = 400), (status = 404), (status = 409), (status = 422)))]
pub async fn resolve(
    State(state): State<AppState>,
    headers: HeaderMap,
    AppPath((id, step)): AppPath<(String, String)>,
    AppJson(request): AppJson<ResolveRequest>,
) -> ApiResult<Json<SagaResponse>> {
    let action = OperatorAction::Resolve { step, outcome: request.outcome, output: request.output };
    act(&state, &headers, &id, action, &request.reason, request.expected_version).await
}
