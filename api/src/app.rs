//! The router: used by the binary and by the tests alike.

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use axum::{middleware, Json, Router};
use utoipa::OpenApi;

use crate::error::ApiError;
use crate::openapi::ApiDoc;
use crate::routes::{
    aggregates, customers, definitions, health, inventory, orders, participants, saga_actions, sagas, streams,
};
use crate::state::AppState;

/// What a process serves on its HTTP address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// The API (the `api` role); health is always served.
    pub api: bool,
    /// `/metrics`, unless it has its own address ([`metrics_router`]).
    pub metrics: bool,
}

/// Every route of the API.
pub fn router(state: AppState) -> Router {
    build(state, Layout { api: true, metrics: true })
}

/// The routes `layout` asks for.
pub fn build(state: AppState, layout: Layout) -> Router {
    let mut routes = operations(layout.metrics);
    if layout.api {
        routes = routes.merge(api_routes());
    }
    finish(routes, &state).with_state(state)
}

/// `/metrics` alone, for its own address (`--metrics-addr`).
pub fn metrics_router(state: AppState) -> Router {
    finish(Router::new().route("/metrics", get(health::metrics)), &state).with_state(state)
}

fn api_routes() -> Router<AppState> {
    Router::new()
        .route("/inventory/{sku}", put(inventory::set_stock).get(inventory::get_stock))
        .route("/customers/{id}/credit", put(customers::set_credit).get(customers::get_credit))
        .route("/orders", post(orders::submit))
        .route("/orders/{id}", get(orders::get_order))
        .route("/saga-definitions", post(definitions::register).get(definitions::list))
        .route("/saga-definitions/{name}", get(definitions::latest))
        .route("/saga-definitions/{name}/versions/{version}", get(definitions::version))
        .route("/saga-definitions/{name}/diff", get(definitions::diff))
        .route("/sagas", post(sagas::start).get(sagas::list))
        .route("/sagas/{id}", get(sagas::get_saga))
        .route("/sagas/{id}/events", get(sagas::events))
        .route("/sagas/{id}/timeline.svg", get(sagas::timeline))
        .route("/sagas/{id}/retry", post(saga_actions::retry))
        .route("/sagas/{id}/abort", post(saga_actions::abort))
        .route("/sagas/{id}/steps/{step}/resolve", post(saga_actions::resolve))
        .route("/participants", get(participants::list))
        .route("/aggregates/{type}/{id}", get(aggregates::get_aggregate))
        .route("/streams/{id}/events", get(streams::read).post(streams::append))
        .route("/ui", get(crate::console::index))
        .route("/ui/", get(crate::console::index))
        .route("/ui/app.js", get(crate::console::script))
        .route("/ui/style.css", get(crate::console::style))
        .route("/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
}

fn operations(metrics: bool) -> Router<AppState> {
    let health = Router::new().route("/health/live", get(health::live)).route("/health/ready", get(health::ready));
    if metrics {
        health.route("/metrics", get(health::metrics))
    } else {
        health
    }
}

/// The fallbacks and layers every router shares.
fn finish(router: Router<AppState>, state: &AppState) -> Router<AppState> {
    router
        .fallback(|| async { ApiError::NoRoute("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed("method not allowed on this route".into()) })
        .layer(middleware::from_fn_with_state(state.limits.clone(), crate::limits::rate_limit))
        .layer(middleware::from_fn_with_state(state.auth.clone(), crate::auth::authenticate))
        .layer(middleware::from_fn(crate::extract::reject_control_characters))
        .layer(middleware::from_fn(crate::metrics::track))
        .layer(DefaultBodyLimit::max(state.limits.body_bytes))
        .layer(middleware::from_fn_with_state(state.limits.clone(), crate::limits::request_timeout))
        .layer(
            tower_http::trace::TraceLayer::new_for_http()
                .make_span_with(crate::telemetry::http_span)
                .on_response(crate::telemetry::record_status),
        )
        .layer(middleware::from_fn_with_state(state.limits.linger.clone(), crate::lingering::linger))
}
