//! Customer credit: a limit, and the credit taken by orders' payments. Which order paid what
//! is kept per order ([`crate::payment`]), so an account's state stays small however long
//! its history.

use engine::Aggregate;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// One customer's credit account.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomerCredit {
    /// `None`: the customer has no credit account.
    pub limit: Option<Decimal>,
    /// Taken by payments (of approved orders, or of orders still in flight) and not refunded.
    pub reserved_total: Decimal,
}

impl CustomerCredit {
    /// Credit not taken by any order.
    pub fn available(&self) -> Decimal {
        self.limit.unwrap_or_default().saturating_sub(self.reserved_total)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum CreditEvent {
    CreditLimitSet { limit: Decimal },
    CreditReserved { order_id: String, amount: Decimal },
    CreditRefunded { order_id: String, amount: Decimal },
}

/// What can be asked of an account. Whether an order may pay or be refunded is decided by
/// its [`crate::payment::Payment`]; the account only counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreditCommand {
    SetLimit { limit: Decimal },
    Reserve { order_id: String, amount: Decimal },
    Refund { order_id: String, amount: Decimal },
}

impl Aggregate for CustomerCredit {
    const TYPE: &'static str = "customer";
    type Event = CreditEvent;
    type Command = CreditCommand;
    type Error = String;

    fn apply(&mut self, event: &CreditEvent) {
        match event {
            CreditEvent::CreditLimitSet { limit } => self.limit = Some(*limit),
            CreditEvent::CreditReserved { amount, .. } => {
                self.reserved_total = self.reserved_total.saturating_add(*amount);
            }
            CreditEvent::CreditRefunded { amount, .. } => {
                self.reserved_total = self.reserved_total.saturating_sub(*amount);
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
                if self.limit.is_none() {
                    return Err("the customer has no credit account".into());
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
            CreditCommand::Refund { order_id, amount } => {
                Ok(vec![CreditEvent::CreditRefunded { order_id: order_id.clone(), amount: *amount }])
            }
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
    fn payment_takes_credit_and_refund_gives_it_back() {
        let mut c = CustomerCredit::default();
        let pay = CreditCommand::Reserve { order_id: "o1".into(), amount: d("30.10") };
        assert!(run(&mut c, &pay).unwrap_err().contains("no credit account"));
        run(&mut c, &CreditCommand::SetLimit { limit: d("50.00") }).unwrap();
        assert_eq!(run(&mut c, &pay), Ok(1));
        assert_eq!(c.available(), d("19.90"));
        let too_much = CreditCommand::Reserve { order_id: "o2".into(), amount: d("19.91") };
        assert!(run(&mut c, &too_much).unwrap_err().contains("exceeds available 19.90"));
        assert_eq!(run(&mut c, &CreditCommand::Refund { order_id: "o1".into(), amount: d("30.10") }), Ok(1));
        assert_eq!(c.available(), d("50.00"));
    }

    #[test]
    fn state_stays_small_over_a_long_history() {
        let mut c = CustomerCredit::default();
        run(&mut c, &CreditCommand::SetLimit { limit: d("1000.00") }).unwrap();
        for i in 0..10_000 {
            let order_id = format!("o{i}");
            run(&mut c, &CreditCommand::Reserve { order_id: order_id.clone(), amount: d("0.01") }).unwrap();
            if i % 2 == 1 {
                run(&mut c, &CreditCommand::Refund { order_id, amount: d("0.01") }).unwrap();
            }
        }
        assert_eq!(c.available(), d("950.00"));
        assert!(serde_json::to_string(&c).unwrap().len() < 64, "nothing grows with history");
    }
}
