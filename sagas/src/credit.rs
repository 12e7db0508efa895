//! Customer credit: a limit, credit spent by approved orders, and credit reserved per order
//! until the order is approved (captured) or rejected (refunded). Its state is bounded by the
//! orders in flight, not by the customer's history.

use std::collections::BTreeMap;

use engine::Aggregate;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::recent_ids::RecentIds;

/// One customer's credit account.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerCredit {
    /// `None`: the customer has no credit account.
    pub limit: Option<Decimal>,
    /// Credit taken by approved orders.
    #[serde(default)]
    pub spent: Decimal,
    /// Credit reserved per order id, until captured or refunded.
    pub reservations: BTreeMap<String, Decimal>,
    /// The latest orders refunded (or refunded before paying, which blocks a late payment).
    #[serde(default)]
    pub refunded: RecentIds,
}

impl CustomerCredit {
    /// Credit not reserved by any order.
    pub fn available(&self) -> Decimal {
        let reserved = self.reservations.values().fold(Decimal::ZERO, |sum, a| sum.saturating_add(*a));
        self.limit.unwrap_or_default().saturating_sub(self.spent).saturating_sub(reserved)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum CreditEvent {
    CreditLimitSet {
        limit: Decimal,
    },
    CreditReserved {
        order_id: String,
        amount: Decimal,
    },
    CreditRefunded {
        order_id: String,
        amount: Decimal,
    },
    /// The order was approved: its reserved credit is spent.
    CreditCaptured {
        order_id: String,
        amount: Decimal,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreditCommand {
    SetLimit { limit: Decimal },
    Reserve { order_id: String, amount: Decimal },
    Refund { order_id: String },
    Capture { order_id: String },
}

impl Aggregate for CustomerCredit {
    const TYPE: &'static str = "customer";
    type Event = CreditEvent;
    type Command = CreditCommand;
    type Error = String;

    fn apply(&mut self, event: &CreditEvent) {
        match event {
            CreditEvent::CreditLimitSet { limit } => self.limit = Some(*limit),
            CreditEvent::CreditReserved { order_id, amount } => {
                self.reservations.insert(order_id.clone(), *amount);
            }
            CreditEvent::CreditRefunded { order_id, .. } => {
                self.reservations.remove(order_id);
                self.refunded.insert(order_id);
            }
            CreditEvent::CreditCaptured { order_id, amount } => {
                self.reservations.remove(order_id);
                self.spent = self.spent.saturating_add(*amount);
            }
        }
    }

    fn handle(&self, command: &CreditCommand) -> Result<Vec<CreditEvent>, String> {
        match command {
            CreditCommand::SetLimit { limit } if limit.is_sign_negative() => {
                Err("the limit must not be negative".into())
            }
            CreditCommand::SetLimit { limit } => Ok(vec![CreditEvent::CreditLimitSet { limit: *limit }]),
            CreditCommand::Reserve { order_id, amount } => {
                if self.reservations.contains_key(order_id) {
                    return Ok(vec![]);
                }
                if self.limit.is_none() {
                    return Err("the customer has no credit account".into());
                }
                if self.refunded.contains(order_id) {
                    return Err(format!("order {order_id} was already refunded"));
                }
                if amount.is_sign_negative() {
                    return Err("a payment cannot be negative".into());
                }
                if *amount > self.available() {
                    return Err(format!(
                        "insufficient credit: order total {amount} exceeds available {}",
                        self.available()
                    ));
                }
                Ok(vec![CreditEvent::CreditReserved { order_id: order_id.clone(), amount: *amount }])
            }
            CreditCommand::Refund { order_id } => {
                if self.refunded.contains(order_id) {
                    return Ok(vec![]);
                }
                let amount = self.reservations.get(order_id).copied().unwrap_or_default();
                Ok(vec![CreditEvent::CreditRefunded { order_id: order_id.clone(), amount }])
            }
            CreditCommand::Capture { order_id } => Ok(self
                .reservations
                .get(order_id)
                .map(|amount| CreditEvent::CreditCaptured { order_id: order_id.clone(), amount: *amount })
                .into_iter()
                .collect()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn run(c: &mut CustomerCredit, cmd: &CreditCommand) -> Result<usize, String> {
        let events = c.handle(cmd)?;
        events.iter().for_each(|e| c.apply(e));
        Ok(events.len())
    }

    #[test]
    fn payment_reserves_credit_once_and_refund_gives_it_back() {
        let mut c = CustomerCredit::default();
        let pay = CreditCommand::Reserve { order_id: "o1".into(), amount: d("30.10") };
        assert!(run(&mut c, &pay).unwrap_err().contains("no credit account"));
        run(&mut c, &CreditCommand::SetLimit { limit: d("50.00") }).unwrap();
        assert_eq!(run(&mut c, &pay), Ok(1));
        assert_eq!(run(&mut c, &pay), Ok(0));
        assert_eq!(c.available(), d("19.90"));
        let too_much = CreditCommand::Reserve { order_id: "o2".into(), amount: d("19.91") };
        assert!(run(&mut c, &too_much).unwrap_err().contains("exceeds available 19.90"));
        assert_eq!(run(&mut c, &CreditCommand::Refund { order_id: "o1".into() }), Ok(1));
        assert_eq!(run(&mut c, &CreditCommand::Refund { order_id: "o1".into() }), Ok(0));
        assert_eq!(c.available(), d("50.00"));
        assert!(run(&mut c, &pay).is_err(), "a late payment after the refund is refused");
    }

    #[test]
    fn capture_spends_the_reserved_credit_and_forgets_the_order() {
        let mut c = CustomerCredit::default();
        run(&mut c, &CreditCommand::SetLimit { limit: d("100.00") }).unwrap();
        for i in 0..3_000 {
            let order_id = format!("o{i}");
            run(&mut c, &CreditCommand::Reserve { order_id: order_id.clone(), amount: d("0.01") }).unwrap();
            let end = if i % 2 == 0 { CreditCommand::Capture { order_id } } else { CreditCommand::Refund { order_id } };
            assert_eq!(run(&mut c, &end), Ok(1));
        }
        assert_eq!(run(&mut c, &CreditCommand::Capture { order_id: "o0".into() }), Ok(0), "captured once");
        assert!(c.reservations.is_empty());
        assert_eq!(c.refunded.len(), crate::recent_ids::REMEMBERED);
        assert_eq!((c.spent, c.available()), (d("15.00"), d("85.00")));
    }
}
