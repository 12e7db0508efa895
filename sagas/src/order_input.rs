//! What a customer submits, validated, and the saga input built from it.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Limits on a submitted order.
pub const MAX_ITEMS: usize = 100;
pub const MAX_QUANTITY: u32 = 1_000_000;
pub const MAX_ID_LEN: usize = 100;

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderLine {
    pub sku: String,
    pub quantity: u32,
    /// Money: a decimal string in JSON (a JSON number is refused: floats lose cents).
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String, example = "10.50")]
    pub unit_price: Decimal,
}

/// An order as submitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOrder {
    pub customer_id: String,
    pub items: Vec<OrderLine>,
}

/// The order-fulfilment saga's input: the order with its id and total.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderInput {
    pub order_id: String,
    pub customer_id: String,
    pub items: Vec<OrderLine>,
    pub total: Decimal,
    /// Set on compensation commands: why the saga is being undone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation_reason: Option<String>,
}

/// Whether `s` is a usable id: 1-100 letters, digits, '-', '_' or '.'.
pub fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl NewOrder {
    /// Every problem with the order; empty when it is valid.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !valid_id(&self.customer_id) {
            problems.push(format!("customer_id must be 1-{MAX_ID_LEN} characters of letters, digits, '-', '_' or '.'"));
        }
        if self.items.is_empty() {
            problems.push("an order needs at least one item".to_owned());
        }
        if self.items.len() > MAX_ITEMS {
            problems.push(format!("an order may have at most {MAX_ITEMS} items"));
        }
        for (i, line) in self.items.iter().enumerate() {
            if !valid_id(&line.sku) {
                problems.push(format!(
                    "items[{i}].sku must be 1-{MAX_ID_LEN} characters of letters, digits, '-', '_' or '.'"
                ));
            }
            if line.quantity == 0 || line.quantity > MAX_QUANTITY {
                problems.push(format!("items[{i}].quantity must be between 1 and {MAX_QUANTITY}"));
            }
            if line.unit_price.is_sign_negative() {
                problems.push(format!("items[{i}].unit_price must not be negative"));
            }
            if line.unit_price.normalize().scale() > 2 {
                problems.push(format!("items[{i}].unit_price may have at most 2 decimal places"));
            }
            if line.unit_price > Decimal::from(1_000_000_000_u64) {
                problems.push(format!("items[{i}].unit_price must be at most 1000000000"));
            }
        }
        problems
    }

    /// The order total.
    pub fn total(&self) -> Decimal {
        self.items.iter().map(|l| l.unit_price * Decimal::from(l.quantity)).sum()
    }

    /// The saga input for this order under `order_id`.
    pub fn into_input(self, order_id: String) -> OrderInput {
        let total = self.total();
        OrderInput { order_id, customer_id: self.customer_id, items: self.items, total, compensation_reason: None }
    }
}

impl OrderInput {
    /// Every problem with an order as a participant receives it: the same rules as a
    /// submitted order, and a total that is the sum of its lines.
    pub fn problems(&self) -> Vec<String> {
        let order = NewOrder { customer_id: self.customer_id.clone(), items: self.items.clone() };
        let mut problems = order.problems();
        if !valid_id(&self.order_id) {
            problems.push("order_id must be a valid id".to_owned());
        }
        if problems.is_empty() && order.total() != self.total {
            problems.push(format!("total {} is not the sum of the lines ({})", self.total, order.total()));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn line(sku: &str, quantity: u32, price: &str) -> OrderLine {
        OrderLine { sku: sku.into(), quantity, unit_price: Decimal::from_str(price).unwrap() }
    }

    #[test]
    fn total_is_exact_decimal_arithmetic() {
        let order = NewOrder { customer_id: "c-1".into(), items: vec![line("A", 3, "0.10"), line("B", 1, "0.20")] };
        assert!(order.problems().is_empty());
        assert_eq!(order.total(), Decimal::from_str("0.50").unwrap());
    }

    #[test]
    fn a_forged_total_is_refused() {
        let order = NewOrder { customer_id: "c".into(), items: vec![line("A", 1, "2.00")] };
        let mut input = order.into_input("o-1".into());
        assert!(input.problems().is_empty());
        input.total = Decimal::from_str("-1000000").unwrap();
        assert!(input.problems()[0].contains("not the sum"));
    }

    #[test]
    fn every_problem_is_reported() {
        let order = NewOrder { customer_id: "".into(), items: vec![line("A", 0, "-1"), line("B", 1, "0.001")] };
        let problems = order.problems();
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(NewOrder { customer_id: "c".into(), items: vec![] }.problems()[0].contains("at least one item"));
    }
}
