//! What the payment step did for one order: the credit it took, and whether it was refunded.
//! Kept in a stream per order (`payment-{order_id}`) rather than in the customer's account,
//! so the account's state stays small while payments stay idempotent and a refund always
//! wins over a late payment.

use engine::Aggregate;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// One order's payment.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payment {
    #[default]
    None,
    /// Paid from `customer_id`'s credit.
    Paid { customer_id: String, amount: Decimal },
    /// Refunded (or refunded before paying, which refuses a late payment).
    Refunded,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum PaymentEvent {
    PaymentTaken {
        customer_id: String,
        amount: Decimal,
    },
    /// `amount` is what goes back to the customer: zero when nothing was paid.
    PaymentRefunded {
        customer_id: String,
        amount: Decimal,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentCommand {
    Take { customer_id: String, amount: Decimal },
    Refund { customer_id: String },
}

impl Aggregate for Payment {
    const TYPE: &'static str = "payment";
    type Event = PaymentEvent;
    type Command = PaymentCommand;
    type Error = String;

    fn apply(&mut self, event: &PaymentEvent) {
        *self = match event {
            PaymentEvent::PaymentTaken { customer_id, amount } => {
                Self::Paid { customer_id: customer_id.clone(), amount: *amount }
            }
            PaymentEvent::PaymentRefunded { .. } => Self::Refunded,
        };
    }

    fn handle(&self, command: &PaymentCommand) -> Result<Vec<PaymentEvent>, String> {
        match (self, command) {
            (Self::None, PaymentCommand::Take { customer_id, amount }) => {
                Ok(vec![PaymentEvent::PaymentTaken { customer_id: customer_id.clone(), amount: *amount }])
            }
            (Self::Paid { .. }, PaymentCommand::Take { .. }) | (Self::Refunded, PaymentCommand::Refund { .. }) => {
                Ok(vec![])
            }
            (Self::Refunded, PaymentCommand::Take { .. }) => Err("this order was already refunded".into()),
            (Self::None, PaymentCommand::Refund { customer_id }) => {
                Ok(vec![PaymentEvent::PaymentRefunded { customer_id: customer_id.clone(), amount: Decimal::ZERO }])
            }
            (Self::Paid { customer_id, amount }, PaymentCommand::Refund { .. }) => {
                Ok(vec![PaymentEvent::PaymentRefunded { customer_id: customer_id.clone(), amount: *amount }])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(p: &mut Payment, cmd: &PaymentCommand) -> Result<usize, String> {
        let events = p.handle(cmd)?;
        events.iter().for_each(|e| p.apply(e));
        Ok(events.len())
    }

    #[test]
    fn paid_once_refunded_once_and_a_late_payment_is_refused() {
        let take = PaymentCommand::Take { customer_id: "c".into(), amount: Decimal::from(3) };
        let refund = PaymentCommand::Refund { customer_id: "c".into() };
        let mut p = Payment::default();
        assert_eq!(run(&mut p, &take), Ok(1));
        assert_eq!(run(&mut p, &take), Ok(0), "paid once");
        let refunded = p.handle(&refund).unwrap();
        assert_eq!(refunded, [PaymentEvent::PaymentRefunded { customer_id: "c".into(), amount: Decimal::from(3) }]);
        refunded.iter().for_each(|e| p.apply(e));
        assert_eq!(run(&mut p, &refund), Ok(0), "refunded once");
        assert!(run(&mut p, &take).is_err(), "a late payment after the refund is refused");
        let mut early = Payment::default();
        assert_eq!(
            early.handle(&refund).unwrap(),
            [PaymentEvent::PaymentRefunded { customer_id: "c".into(), amount: Decimal::ZERO }]
        );
        run(&mut early, &refund).unwrap();
        assert!(run(&mut early, &take).is_err(), "a refund before paying blocks the late payment");
    }
}
