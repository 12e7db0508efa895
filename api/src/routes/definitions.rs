//! `/saga-definitions`: registering saga definitions at run time, and reading them.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use engine::definition::SagaDefinition;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ApiResult;
use crate::extract::{AppJson, AppPath};
use crate::state::AppState;

/// A registered definition's name and version.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Registered {
    pub name: String,
    pub version: u32,
}

/// Registers a definition; registering a name again makes its next version.
#[utoipa::path(post, path = "/saga-definitions", tag = "saga-definitions", request_body = SagaDefinition,
    responses((status = 201, body = Registered), (status = 400), (status = 422, description = "every problem listed in `errors`")))]
pub async fn register(
    State(state): State<AppState>,
    AppJson(definition): AppJson<SagaDefinition>,
) -> ApiResult<(StatusCode, Json<Registered>)> {
    let registered = state.coordinator.registry().register(definition).await?;
    tracing::info!(name = %registered.name, version = registered.version, "saga definition registered");
    // Participants outside this process consume their command topics: create them now.
    let topics: Vec<String> =
        registered.participants().iter().map(|p| state.coordinator.topics().commands(p)).collect();
    if let Err(err) = state.transport.ensure_topics(&topics).await {
        tracing::warn!(error = %err, ?topics, "cannot create command topics yet; the relay creates them on first publish");
    }
    Ok((StatusCode::CREATED, Json(Registered { name: registered.name.clone(), version: registered.version })))
}

/// The latest version of every definition.
#[utoipa::path(get, path = "/saga-definitions", tag = "saga-definitions",
    responses((status = 200, body = Vec<SagaDefinition>)))]
pub async fn list(State(state): State<AppState>) -> ApiResult<Json<Vec<SagaDefinition>>> {
    let all = state.coordinator.registry().list().await?;
    Ok(Json(all.iter().map(|d| (**d).clone()).collect()))
}

/// The latest version of a definition.
#[utoipa::path(get, path = "/saga-definitions/{name}", tag = "saga-definitions", params(("name" = String, Path)),
    responses((status = 200, body = SagaDefinition), (status = 404)))]
pub async fn latest(State(state): State<AppState>, AppPath(name): AppPath<String>) -> ApiResult<Json<SagaDefinition>> {
    Ok(Json((*state.coordinator.registry().get(&name, None).await?).clone()))
}

/// One version of a definition.
#[utoipa::path(get, path = "/saga-definitions/{name}/versions/{version}", tag = "saga-definitions",
    params(("name" = String, Path), ("version" = u32, Path)),
    responses((status = 200, body = SagaDefinition), (status = 404)))]
pub async fn version(
    State(state): State<AppState>,
    AppPath((name, version)): AppPath<(String, u32)>,
) -> ApiResult<Json<SagaDefinition>> {
    Ok(Json((*state.coordinator.registry().get(&name, Some(version)).await?).clone()))
}
