//! The built-in saga definitions.

use engine::definition::{RetryPolicy, SagaDefinition, StepDefinition};

use crate::participants::{INVENTORY, ORDERS, PAYMENTS};

/// Name of the built-in order saga.
pub const ORDER_FULFILMENT: &str = "order-fulfilment";

fn step(name: &str, participant: &str, command: &str, compensation: Option<&str>) -> StepDefinition {
    StepDefinition {
        name: name.into(),
        participant: participant.into(),
        command: command.into(),
        compensation: compensation.map(Into::into),
        timeout_ms: 10_000,
        retry: RetryPolicy { max_attempts: 3, initial_backoff_ms: 200, max_backoff_ms: 5_000, multiplier: 2 },
    }
}

/// reserve-inventory → create-order → process-payment, each with its compensation, then
/// approve-order: the pivot, which completes the saga by approving the order.
pub fn order_fulfilment() -> SagaDefinition {
    SagaDefinition {
        stuck_after_ms: None,
        on_open_circuit: Default::default(),
        name: ORDER_FULFILMENT.into(),
        version: 0,
        steps: vec![
            step("reserve-inventory", INVENTORY, "ReserveInventory", Some("ReleaseInventory")),
            step("create-order", ORDERS, "CreateOrder", Some("CancelOrder")),
            step("process-payment", PAYMENTS, "ProcessPayment", Some("RefundPayment")),
            step("approve-order", ORDERS, "ApproveOrder", None),
        ],
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn order_fulfilment_is_valid() {
        super::order_fulfilment().validate().unwrap();
    }
}
