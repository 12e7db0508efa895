//! Inventory per SKU: stock that is free and stock reserved by orders. Which order reserved
//! what is kept per order ([`crate::reservation`]), so a SKU's state is two counters however
//! long its history.

use engine::Aggregate;
use serde::{Deserialize, Serialize};

/// Stock of one SKU.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    /// Free to reserve.
    pub available: u64,
    /// Taken by orders (approved, or still in flight) and not released.
    pub reserved_total: u64,
}

impl Inventory {
    /// Total reserved quantity.
    pub fn reserved(&self) -> u64 {
        self.reserved_total
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum InventoryEvent {
    StockSet { available: u64 },
    StockReserved { order_id: String, quantity: u64 },
    ReservationReleased { order_id: String, quantity: u64 },
}

/// What can be asked of one SKU's stock. Whether an order may reserve or release is decided
/// by its [`crate::reservation::StockReservation`]; the SKU only counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InventoryCommand {
    SetStock { available: u64 },
    Reserve { order_id: String, quantity: u64 },
    Release { order_id: String, quantity: u64 },
}

impl Aggregate for Inventory {
    const TYPE: &'static str = "inventory";
    type Event = InventoryEvent;
    type Command = InventoryCommand;
    type Error = String;

    fn apply(&mut self, event: &InventoryEvent) {
        match event {
            InventoryEvent::StockSet { available } => self.available = *available,
            InventoryEvent::StockReserved { quantity, .. } => {
                self.available = self.available.saturating_sub(*quantity);
                self.reserved_total = self.reserved_total.saturating_add(*quantity);
            }
            InventoryEvent::ReservationReleased { quantity, .. } => {
                self.available = self.available.saturating_add(*quantity);
                self.reserved_total = self.reserved_total.saturating_sub(*quantity);
            }
        }
    }

    fn handle(&self, command: &InventoryCommand) -> Result<Vec<InventoryEvent>, String> {
        match command {
            InventoryCommand::SetStock { available } => Ok(vec![InventoryEvent::StockSet { available: *available }]),
            InventoryCommand::Reserve { order_id, quantity } => {
                if *quantity > self.available {
                    return Err(format!("requested {quantity}, available {}", self.available));
                }
                Ok(vec![InventoryEvent::StockReserved { order_id: order_id.clone(), quantity: *quantity }])
            }
            InventoryCommand::Release { order_id, quantity } => {
                Ok(vec![InventoryEvent::ReservationReleased { order_id: order_id.clone(), quantity: *quantity }])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(inv: &mut Inventory, cmd: InventoryCommand) -> Result<usize, String> {
        let events = inv.handle(&cmd)?;
        events.iter().for_each(|e| inv.apply(e));
        Ok(events.len())
    }

    #[test]
    fn reserving_and_releasing_move_stock_between_the_counters() {
        let mut inv = Inventory::default();
        run(&mut inv, InventoryCommand::SetStock { available: 10 }).unwrap();
        run(&mut inv, InventoryCommand::Reserve { order_id: "o1".into(), quantity: 4 }).unwrap();
        assert_eq!((inv.available, inv.reserved()), (6, 4));
        assert!(run(&mut inv, InventoryCommand::Reserve { order_id: "o2".into(), quantity: 7 })
            .unwrap_err()
            .contains("available 6"));
        run(&mut inv, InventoryCommand::Release { order_id: "o1".into(), quantity: 4 }).unwrap();
        assert_eq!((inv.available, inv.reserved()), (10, 0));
    }

    #[test]
    fn state_stays_two_counters_over_a_long_history() {
        let mut inv = Inventory::default();
        run(&mut inv, InventoryCommand::SetStock { available: 1_000_000 }).unwrap();
        for i in 0..10_000 {
            let order_id = format!("o{i}");
            run(&mut inv, InventoryCommand::Reserve { order_id: order_id.clone(), quantity: 1 }).unwrap();
            if i % 2 == 1 {
                run(&mut inv, InventoryCommand::Release { order_id, quantity: 1 }).unwrap();
            }
        }
        assert_eq!((inv.available, inv.reserved()), (1_000_000 - 5_000, 5_000));
        assert!(serde_json::to_string(&inv).unwrap().len() < 64, "nothing grows with history");
    }

    #[test]
    fn a_snapshot_of_the_old_shape_is_not_read_as_this_one() {
        let old = r#"{"available": 5, "reservations": {"o1": 2}, "released": []}"#;
        assert!(serde_json::from_str::<Inventory>(old).is_err(), "the repository then replays the history instead");
    }
}
