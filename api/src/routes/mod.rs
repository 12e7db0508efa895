//! One module per resource.

pub mod aggregates;
pub mod customers;
pub mod definitions;
pub mod health;
pub mod inventory;
pub mod orders;
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
