//! Inventory per SKU: stock that is free, and quantities reserved per order until the
//! order is approved (settled) or rejected (released). Its state is bounded by the orders in
//! flight, not by the SKU's history.

use std::collections::BTreeMap;

use engine::Aggregate;
use serde::{Deserialize, Serialize};

use crate::recent_ids::RecentIds;

/// Stock of one SKU.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// Free to reserve.
    pub available: u64,
    /// Reserved per order id, until settled or released.
    pub reservations: BTreeMap<String, u64>,
    /// The latest orders whose reservation was released (or cancelled before it happened): a
    /// late reserve for them is refused, so compensation always wins.
    #[serde(default)]
    pub released: RecentIds,
}

impl Inventory {
    /// Total reserved quantity.
    pub fn reserved(&self) -> u64 {
        self.reservations.values().sum()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum InventoryEvent {
    StockSet {
        available: u64,
    },
    StockReserved {
        order_id: String,
        quantity: u64,
    },
    ReservationReleased {
        order_id: String,
        quantity: u64,
    },
    /// The order was approved: its stock is gone for good and the reservation is forgotten.
    ReservationSettled {
        order_id: String,
        quantity: u64,
    },
}

/// What can be asked of one SKU's stock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InventoryCommand {
    SetStock { available: u64 },
    Reserve { order_id: String, quantity: u64 },
    Release { order_id: String },
    Settle { order_id: String },
}

impl Aggregate for Inventory {
    const TYPE: &'static str = "inventory";
    type Event = InventoryEvent;
    type Command = InventoryCommand;
    type Error = String;

    fn apply(&mut self, event: &InventoryEvent) {
        match event {
            InventoryEvent::StockSet { available } => self.available = *available,
            InventoryEvent::StockReserved { order_id, quantity } => {
                self.available = self.available.saturating_sub(*quantity);
                self.reservations.insert(order_id.clone(), *quantity);
            }
            InventoryEvent::ReservationReleased { order_id, quantity } => {
                self.available += quantity;
                self.reservations.remove(order_id);
                self.released.insert(order_id);
            }
            InventoryEvent::ReservationSettled { order_id, .. } => {
                self.reservations.remove(order_id);
            }
        }
    }

    fn handle(&self, command: &InventoryCommand) -> Result<Vec<InventoryEvent>, String> {
        match command {
            InventoryCommand::SetStock { available } => Ok(vec![InventoryEvent::StockSet { available: *available }]),
            InventoryCommand::Reserve { order_id, quantity } => {
                if self.reservations.contains_key(order_id) {
                    return Ok(vec![]);
                }
                if self.released.contains(order_id) {
                    return Err(format!("the reservation for order {order_id} was already released"));
                }
                if *quantity > self.available {
                    return Err(format!("requested {quantity}, available {}", self.available));
                }
                Ok(vec![InventoryEvent::StockReserved { order_id: order_id.clone(), quantity: *quantity }])
            }
            InventoryCommand::Release { order_id } => {
                if self.released.contains(order_id) {
                    return Ok(vec![]);
                }
                let quantity = self.reservations.get(order_id).copied().unwrap_or(0);
                Ok(vec![InventoryEvent::ReservationReleased { order_id: order_id.clone(), quantity }])
            }
            InventoryCommand::Settle { order_id } => Ok(self
                .reservations
                .get(order_id)
                .map(|quantity| InventoryEvent::ReservationSettled { order_id: order_id.clone(), quantity: *quantity })
                .into_iter()
                .collect()),
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
    fn reserve_is_idempotent_and_release_returns_stock() {
        let mut inv = Inventory::default();
        run(&mut inv, InventoryCommand::SetStock { available: 10 }).unwrap();
        let reserve = InventoryCommand::Reserve { order_id: "o1".into(), quantity: 4 };
        assert_eq!(run(&mut inv, reserve.clone()), Ok(1));
        assert_eq!(run(&mut inv, reserve.clone()), Ok(0), "same order reserved once");
        assert_eq!((inv.available, inv.reserved()), (6, 4));
        assert!(run(&mut inv, InventoryCommand::Reserve { order_id: "o2".into(), quantity: 7 })
            .unwrap_err()
            .contains("available 6"));
        assert_eq!(run(&mut inv, InventoryCommand::Release { order_id: "o1".into() }), Ok(1));
        assert_eq!(run(&mut inv, InventoryCommand::Release { order_id: "o1".into() }), Ok(0));
        assert_eq!((inv.available, inv.reserved()), (10, 0));
        assert!(run(&mut inv, reserve).is_err(), "a late reserve after release is refused");
    }

    #[test]
    fn settling_keeps_the_stock_taken_and_forgets_the_reservation() {
        let mut inv = Inventory::default();
        run(&mut inv, InventoryCommand::SetStock { available: 10 }).unwrap();
        run(&mut inv, InventoryCommand::Reserve { order_id: "o1".into(), quantity: 4 }).unwrap();
        assert_eq!(run(&mut inv, InventoryCommand::Settle { order_id: "o1".into() }), Ok(1));
        assert_eq!(run(&mut inv, InventoryCommand::Settle { order_id: "o1".into() }), Ok(0), "settled once");
        assert_eq!((inv.available, inv.reserved()), (6, 0));
        assert!(inv.reservations.is_empty());
    }

    #[test]
    fn state_stays_bounded_over_a_long_history() {
        let mut inv = Inventory::default();
        run(&mut inv, InventoryCommand::SetStock { available: 1_000_000 }).unwrap();
        for i in 0..5_000 {
            let order_id = format!("o{i}");
            run(&mut inv, InventoryCommand::Reserve { order_id: order_id.clone(), quantity: 1 }).unwrap();
            let end =
                if i % 2 == 0 { InventoryCommand::Settle { order_id } } else { InventoryCommand::Release { order_id } };
            run(&mut inv, end).unwrap();
        }
        assert!(inv.reservations.is_empty());
        assert_eq!(inv.released.len(), crate::recent_ids::REMEMBERED);
        assert_eq!(inv.available, 1_000_000 - 2_500);
        assert!(run(&mut inv, InventoryCommand::Reserve { order_id: "o4999".into(), quantity: 1 }).is_err());
    }

    #[test]
    fn release_before_reserve_blocks_the_late_reserve() {
        let mut inv = Inventory::default();
        run(&mut inv, InventoryCommand::SetStock { available: 5 }).unwrap();
        assert_eq!(run(&mut inv, InventoryCommand::Release { order_id: "o".into() }), Ok(1));
        assert_eq!(inv.available, 5);
        assert!(run(&mut inv, InventoryCommand::Reserve { order_id: "o".into(), quantity: 1 }).is_err());
    }
}
