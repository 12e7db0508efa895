//! One module per resource.

pub mod aggregates;
pub mod customers;
pub mod definitions;
pub mod health;
pub mod inventory;
pub mod orders;
pub mod participants;
pub mod saga_actions;
pub mod sagas;
pub mod streams;

use crate::error::ApiError;

/// Checks an id taken from a path.
pub(crate) fn check_id(what: &str, id: &str) -> Result<(), ApiError> {
    if ::sagas::order_input::valid_id(id) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!("{what} must be 1-100 characters of letters, digits, '-', '_' or '.'")))
    }
}

/// A page size from `?limit=`: 50 when absent, 1 to 500.
pub(crate) fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit.unwrap_or(50) {
        limit @ 1..=500 => Ok(limit),
        _ => Err(ApiError::BadRequest("limit must be between 1 and 500".into())),
    }
}
