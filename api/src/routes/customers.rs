//! `PUT/GET /customers/{id}/credit`: customer credit accounts.

use axum::extract::State;
use axum::Json;
use engine::{Loaded, Repository};
use rust_decimal::Decimal;
use sagas::credit::{CreditCommand, CustomerCredit};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::check_id;
use crate::error::{ApiError, ApiResult};
use crate::extract::{AppJson, AppPath};
use crate::state::AppState;

/// A new credit limit.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetCredit {
    /// Money as a decimal string, at most 2 decimal places.
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String, example = "500.00")]
    pub limit: Decimal,
}

/// A customer's credit.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreditResponse {
    pub customer_id: String,
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String, example = "500.00")]
    pub limit: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String, example = "475.75")]
    pub available: Decimal,
    pub version: u64,
}

fn response(loaded: &Loaded<CustomerCredit>) -> CreditResponse {
    CreditResponse {
        customer_id: loaded.id.clone(),
        limit: loaded.state.limit.unwrap_or_default(),
        available: loaded.state.available(),
        version: loaded.version,
    }
}

/// Sets a customer's credit limit (opening the account).
#[utoipa::path(put, path = "/customers/{id}/credit", tag = "customers", request_body = SetCredit,
    params(("id" = String, Path)),
    responses((status = 200, body = CreditResponse), (status = 400), (status = 422)))]
pub async fn set_credit(
    State(state): State<AppState>,
    AppPath(id): AppPath<String>,
    AppJson(body): AppJson<SetCredit>,
) -> ApiResult<Json<CreditResponse>> {
    check_id("customer id", &id)?;
    let mut problems = Vec::new();
    if body.limit.is_sign_negative() {
        problems.push("limit must not be negative".to_owned());
    }
    if body.limit.normalize().scale() > 2 {
        problems.push("limit may have at most 2 decimal places".to_owned());
    }
    if body.limit > Decimal::from(1_000_000_000_000_u64) {
        problems.push("limit must be at most 1000000000000".to_owned());
    }
    if !problems.is_empty() {
        return Err(ApiError::invalid(problems.join("; "), problems));
    }
    let repo = Repository::<CustomerCredit>::new(state.store);
    let done = repo.execute(&id, &CreditCommand::SetLimit { limit: body.limit }).await?;
    Ok(Json(response(&done.loaded)))
}

/// A customer's credit.
#[utoipa::path(get, path = "/customers/{id}/credit", tag = "customers", params(("id" = String, Path)),
    responses((status = 200, body = CreditResponse), (status = 404)))]
pub async fn get_credit(
    State(state): State<AppState>,
    AppPath(id): AppPath<String>,
) -> ApiResult<Json<CreditResponse>> {
    check_id("customer id", &id)?;
    let loaded = Repository::<CustomerCredit>::new(state.store).load(&id).await?;
    if loaded.state.limit.is_none() {
        return Err(ApiError::NotFound(format!("customer '{id}' has no credit account")));
    }
    Ok(Json(response(&loaded)))
}
