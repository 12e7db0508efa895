//! What the inventory step did for one order: its reservation per SKU, and whether it was
//! released. Kept in a stream per order (`stock-reservation-{order_id}`) rather than in each
//! SKU, so a SKU's state stays small while reserves stay idempotent and a release always
//! wins over a late reserve.

use std::collections::BTreeMap;

use engine::Aggregate;
use serde::{Deserialize, Serialize};

/// One order's reservation.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StockReservation {
    #[default]
    None,
    /// Quantities reserved per SKU.
    Reserved(BTreeMap<String, u64>),
    /// Released (or cancelled before anything was reserved, which refuses a late reserve).
    Released,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum ReservationEvent {
    StockReservationMade { items: BTreeMap<String, u64> },
    StockReservationReleased { items: BTreeMap<String, u64> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReservationCommand {
    Reserve { items: BTreeMap<String, u64> },
    Release,
}

impl Aggregate for StockReservation {
    const TYPE: &'static str = "stock-reservation";
    type Event = ReservationEvent;
    type Command = ReservationCommand;
    type Error = String;

    fn apply(&mut self, event: &ReservationEvent) {
        *self = match event {
            ReservationEvent::StockReservationMade { items } => Self::Reserved(items.clone()),
            ReservationEvent::StockReservationReleased { .. } => Self::Released,
        };
    }

    fn handle(&self, command: &ReservationCommand) -> Result<Vec<ReservationEvent>, String> {
        match (self, command) {
            (Self::None, ReservationCommand::Reserve { items }) => {
                Ok(vec![ReservationEvent::StockReservationMade { items: items.clone() }])
            }
            (Self::Reserved(_), ReservationCommand::Reserve { .. }) | (Self::Released, ReservationCommand::Release) => {
                Ok(vec![])
            }
            (Self::Released, ReservationCommand::Reserve { .. }) => {
                Err("the reservation for this order was already released".into())
            }
            (Self::None, ReservationCommand::Release) => {
                Ok(vec![ReservationEvent::StockReservationReleased { items: BTreeMap::new() }])
            }
            (Self::Reserved(items), ReservationCommand::Release) => {
                Ok(vec![ReservationEvent::StockReservationReleased { items: items.clone() }])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(r: &mut StockReservation, cmd: &ReservationCommand) -> Result<usize, String> {
        let events = r.handle(cmd)?;
        events.iter().for_each(|e| r.apply(e));
        Ok(events.len())
    }

    #[test]
    fn reserve_once_release_once_and_a_late_reserve_is_refused() {
        let items = BTreeMap::from([("A".to_owned(), 2)]);
        let reserve = ReservationCommand::Reserve { items: items.clone() };
        let mut r = StockReservation::default();
        assert_eq!(run(&mut r, &reserve), Ok(1));
        assert_eq!(run(&mut r, &reserve), Ok(0), "reserved once");
        let released = r.handle(&ReservationCommand::Release).unwrap();
        assert_eq!(released, [ReservationEvent::StockReservationReleased { items }], "gives back what it took");
        released.iter().for_each(|e| r.apply(e));
        assert_eq!(run(&mut r, &ReservationCommand::Release), Ok(0), "released once");
        assert!(run(&mut r, &reserve).is_err(), "a late reserve after release is refused");
    }

    #[test]
    fn release_before_reserve_gives_nothing_back_and_blocks_the_late_reserve() {
        let mut r = StockReservation::default();
        let released = r.handle(&ReservationCommand::Release).unwrap();
        assert_eq!(released, [ReservationEvent::StockReservationReleased { items: BTreeMap::new() }]);
        released.iter().for_each(|e| r.apply(e));
        let reserve = ReservationCommand::Reserve { items: BTreeMap::from([("A".to_owned(), 1)]) };
        assert!(run(&mut r, &reserve).is_err());
    }
}
