//! `/saga-definitions`: registering saga definitions at run time, and reading them.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use engine::definition::SagaDefinition;
use engine::definition_diff::DefinitionDiff;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ApiResult;
use crate::extract::{AppJson, AppPath, AppQuery};
use crate::state::AppState;

/// A registered definition's name and version.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Registered {
    pub name: String,
    pub version: u32,
}

/// `?dry_run=true`: validate only.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct RegisterQuery {
    /// Validate and show what would be registered, without registering.
    pub dry_run: Option<bool>,
}

/// What a registration would make: version N+1, and its differences from version N.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DryRun {
    pub definition: SagaDefinition,
    /// The version it would be compared with (`None`: the name is new).
    pub previous_version: Option<u32>,
    pub changes: DefinitionDiff,
}

/// Registers a definition; registering a name again makes its next version. With
/// `?dry_run=true` it only validates, and answers with what would become the next version and
/// its differences from the latest.
#[utoipa::path(post, path = "/saga-definitions", tag = "saga-definitions", request_body = SagaDefinition, params(RegisterQuery),
    responses((status = 201, body = Registered), (status = 200, body = DryRun, description = "dry run"), (status = 400),
        (status = 422, description = "every problem listed in `errors`")))]
pub async fn register(
    State(state): State<AppState>,
    AppQuery(query): AppQuery<RegisterQuery>,
    AppJson(definition): AppJson<SagaDefinition>,
) -> ApiResult<Response> {
    if query.dry_run.unwrap_or(false) {
        definition.validate()?;
        let latest = state.coordinator.registry().latest(&definition.name).await?;
        let changes = DefinitionDiff::between(latest.as_deref(), &definition);
        let previous_version = latest.as_ref().map(|d| d.version);
        let definition = SagaDefinition { version: previous_version.map_or(1, |v| v + 1), ..definition };
        return Ok(Json(DryRun { definition, previous_version, changes }).into_response());
    }
    let registered = state.coordinator.registry().register(definition).await?;
    tracing::info!(name = %registered.name, version = registered.version, "saga definition registered");
    // Participants outside this process consume their command topics: create them now.
    let topics: Vec<String> =
        registered.participants().iter().map(|p| state.coordinator.topics().commands(p)).collect();
    if let Err(err) = state.transport.ensure_topics(&topics).await {
        tracing::warn!(error = %err, ?topics, "cannot create command topics yet; the relay creates them on first publish");
    }
    let body = Registered { name: registered.name.clone(), version: registered.version };
    Ok((StatusCode::CREATED, Json(body)).into_response())
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
