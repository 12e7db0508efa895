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

/// Paging of the definition list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    /// Continue after this name (the previous page's `next_after`).
    pub after: Option<String>,
    /// Page size (default 50, at most 500).
    pub limit: Option<usize>,
}

/// One page of definitions, by name.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DefinitionPage {
    /// The latest version of each.
    pub definitions: Vec<SagaDefinition>,
    /// Pass as `after` for the next page; absent on the last one.
    pub next_after: Option<String>,
}

/// The latest version of each definition, a page at a time by name.
#[utoipa::path(get, path = "/saga-definitions", tag = "saga-definitions", params(ListQuery),
    responses((status = 200, body = DefinitionPage), (status = 400)))]
pub async fn list(
    State(state): State<AppState>,
    AppQuery(query): AppQuery<ListQuery>,
) -> ApiResult<Json<DefinitionPage>> {
    let limit = crate::routes::page_limit(query.limit)?;
    let mut page = state.coordinator.registry().page(query.after.as_deref(), limit + 1).await?;
    let next_after = (page.len() > limit).then(|| {
        page.truncate(limit);
        page.last().map(|d| d.name.clone())
    });
    Ok(Json(DefinitionPage {
        definitions: page.iter().map(|d| (**d).clone()).collect(),
        next_after: next_after.flatten(),
    }))
}

/// Which two versions to compare.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct DiffQuery {
    pub from: u32,
    pub to: u32,
}

/// What changed from one version of a definition to another.
#[utoipa::path(get, path = "/saga-definitions/{name}/diff", tag = "saga-definitions",
    params(("name" = String, Path), DiffQuery),
    responses((status = 200, body = DefinitionDiff), (status = 400), (status = 404)))]
pub async fn diff(
    State(state): State<AppState>,
    AppPath(name): AppPath<String>,
    AppQuery(query): AppQuery<DiffQuery>,
) -> ApiResult<Json<DefinitionDiff>> {
    let registry = state.coordinator.registry();
    let from = registry.get(&name, Some(query.from)).await?;
    let to = registry.get(&name, Some(query.to)).await?;
    Ok(Json(DefinitionDiff::between(Some(&from), &to)))
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
