//! The OpenAPI document, generated from the handlers' annotations.

use utoipa::OpenApi;

use crate::routes::{
    aggregates, customers, definitions, health, inventory, orders, participants, saga_actions, sagas, streams,
};

/// Sagaflow's OpenAPI document, served at `/openapi.json`.
#[derive(OpenApi)]
#[openapi(
    info(title = "Sagaflow", description = "Event-sourced saga orchestration: orders, sagas, definitions, streams."),
    paths(
        inventory::set_stock,
        inventory::get_stock,
        customers::set_credit,
        customers::get_credit,
        orders::submit,
        orders::get_order,
        definitions::register,
        definitions::list,
        definitions::latest,
        definitions::version,
        definitions::diff,
        sagas::start,
        sagas::list,
        sagas::get_saga,
        sagas::events,
        sagas::timeline,
        saga_actions::retry,
        saga_actions::abort,
        saga_actions::resolve,
        participants::list,
        aggregates::get_aggregate,
        streams::read,
        streams::append,
        health::live,
        health::ready,
        health::metrics,
        openapi_json,
    )
)]
pub struct ApiDoc;

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "health", responses((status = 200, content_type = "application/json")))]
#[allow(dead_code)]
fn openapi_json() {}
