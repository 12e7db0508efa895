//! The Order aggregate: created with items and a total, then approved or cancelled.

use engine::Aggregate;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::order_input::OrderLine;

/// Where an order stands, as the aggregate knows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    #[default]
    None,
    Created,
    Approved,
    /// Cancelled by the saga's compensation (the order ends rejected), or cancelled before
    /// it was created, which blocks a late create.
    Cancelled,
}

/// One order.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub status: OrderStatus,
    pub customer_id: String,
    pub items: Vec<OrderLine>,
    pub total: Decimal,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum OrderEvent {
    OrderCreated { customer_id: String, items: Vec<OrderLine>, total: Decimal },
    OrderApproved {},
    OrderCancelled { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderCommand {
    Create { customer_id: String, items: Vec<OrderLine>, total: Decimal },
    Approve,
    Cancel { reason: String },
}

impl Aggregate for Order {
    const TYPE: &'static str = "order";
    type Event = OrderEvent;
    type Command = OrderCommand;
    type Error = String;

    fn apply(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::OrderCreated { customer_id, items, total } => {
                self.status = OrderStatus::Created;
                self.customer_id.clone_from(customer_id);
                self.items.clone_from(items);
                self.total = *total;
            }
            OrderEvent::OrderApproved {} => self.status = OrderStatus::Approved,
            OrderEvent::OrderCancelled { reason } => {
                self.status = OrderStatus::Cancelled;
                self.reason = Some(reason.clone());
            }
        }
    }

    fn handle(&self, command: &OrderCommand) -> Result<Vec<OrderEvent>, String> {
        match (command, self.status) {
            (OrderCommand::Create { customer_id, items, total }, OrderStatus::None) => {
                Ok(vec![OrderEvent::OrderCreated {
                    customer_id: customer_id.clone(),
                    items: items.clone(),
                    total: *total,
                }])
            }
            (OrderCommand::Create { .. }, OrderStatus::Cancelled) => Err("the order was already cancelled".into()),
            (OrderCommand::Create { .. }, _) => Ok(vec![]),
            (OrderCommand::Approve, OrderStatus::Created) => Ok(vec![OrderEvent::OrderApproved {}]),
            (OrderCommand::Approve, OrderStatus::Approved) => Ok(vec![]),
            (OrderCommand::Approve, status) => Err(format!("cannot approve an order in status {status:?}")),
            (OrderCommand::Cancel { reason }, OrderStatus::None | OrderStatus::Created) => {
                Ok(vec![OrderEvent::OrderCancelled { reason: reason.clone() }])
            }
            (OrderCommand::Cancel { .. }, OrderStatus::Cancelled) => Ok(vec![]),
            (OrderCommand::Cancel { .. }, OrderStatus::Approved) => Err("cannot cancel an approved order".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(order: &mut Order, cmd: &OrderCommand) -> Result<usize, String> {
        let events = order.handle(cmd)?;
        events.iter().for_each(|e| order.apply(e));
        Ok(events.len())
    }

    fn create() -> OrderCommand {
        OrderCommand::Create { customer_id: "c".into(), items: vec![], total: Decimal::ONE }
    }

    #[test]
    fn lifecycle_is_idempotent_and_one_way() {
        let mut order = Order::default();
        assert_eq!(run(&mut order, &create()), Ok(1));
        assert_eq!(run(&mut order, &create()), Ok(0));
        assert_eq!(run(&mut order, &OrderCommand::Approve), Ok(1));
        assert_eq!(run(&mut order, &OrderCommand::Approve), Ok(0));
        assert!(run(&mut order, &OrderCommand::Cancel { reason: "x".into() }).is_err());
        assert_eq!(order.status, OrderStatus::Approved);
    }

    #[test]
    fn cancel_before_create_blocks_a_late_create() {
        let mut order = Order::default();
        assert_eq!(run(&mut order, &OrderCommand::Cancel { reason: "declined".into() }), Ok(1));
        assert!(run(&mut order, &create()).is_err());
        assert!(run(&mut order, &OrderCommand::Approve).is_err());
        assert_eq!(order.reason.as_deref(), Some("declined"));
    }
}
