//! `PUT/GET /inventory/{sku}`: stock per SKU.

use axum::extract::State;
use axum::Json;
use engine::{Loaded, Repository};
use sagas::inventory::{Inventory, InventoryCommand};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::check_id;
use crate::error::{ApiError, ApiResult};
use crate::extract::{AppJson, AppPath};
use crate::state::AppState;

/// New stock level.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetStock {
    /// Units free to reserve.
    pub available: u64,
}

/// A SKU's stock.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InventoryResponse {
    pub sku: String,
    pub available: u64,
    pub reserved: u64,
    pub version: u64,
}

fn response(loaded: &Loaded<Inventory>) -> InventoryResponse {
    InventoryResponse {
        sku: loaded.id.clone(),
        available: loaded.state.available,
        reserved: loaded.state.reserved(),
        version: loaded.version,
    }
}

const MAX_STOCK: u64 = 1_000_000_000_000;

/// Sets a SKU's free stock.
#[utoipa::path(put, path = "/inventory/{sku}", tag = "inventory", request_body = SetStock,
    params(("sku" = String, Path)),
    responses((status = 200, body = InventoryResponse), (status = 400), (status = 422)))]
pub async fn set_stock(
    State(state): State<AppState>,
    AppPath(sku): AppPath<String>,
    AppJson(body): AppJson<SetStock>,
) -> ApiResult<Json<InventoryResponse>> {
    check_id("sku", &sku)?;
    if body.available > MAX_STOCK {
        return Err(ApiError::invalid(format!("available must be at most {MAX_STOCK}"), vec![]));
    }
    let repo = Repository::<Inventory>::new(state.store);
    let done = repo.execute(&sku, &InventoryCommand::SetStock { available: body.available }).await?;
    Ok(Json(response(&done.loaded)))
}

/// A SKU's stock.
#[utoipa::path(get, path = "/inventory/{sku}", tag = "inventory", params(("sku" = String, Path)),
    responses((status = 200, body = InventoryResponse), (status = 404)))]
pub async fn get_stock(
    State(state): State<AppState>,
    AppPath(sku): AppPath<String>,
) -> ApiResult<Json<InventoryResponse>> {
    check_id("sku", &sku)?;
    let loaded = Repository::<Inventory>::new(state.store).load(&sku).await?;
    if loaded.version == 0 {
        return Err(ApiError::NotFound(format!("no inventory for SKU '{sku}'")));
    }
    Ok(Json(response(&loaded)))
}
