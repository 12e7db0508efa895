//! The built-in participants of the order-fulfilment saga. Each decides against the
//! current state of its aggregates and is idempotent per order.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use engine::envelope::Envelope;
use engine::participant::{CommandHandler, Effect};
use engine::repository::SavedAppend;
use engine::{Error, Repository, Result};
use event_store::EventStore;
use serde_json::{json, Value};

use crate::credit::{CreditCommand, CustomerCredit};
use crate::inventory::{Inventory, InventoryCommand};
use crate::order::{Order, OrderCommand};
use crate::order_input::OrderInput;
use crate::payment::{Payment, PaymentCommand, PaymentEvent};
use crate::reservation::{ReservationCommand, ReservationEvent, StockReservation};

/// Participant names, as used in the built-in definition and topic names.
pub const INVENTORY: &str = "inventory";
pub const ORDERS: &str = "orders";
pub const PAYMENTS: &str = "payments";

/// The streams of the shared aggregates `A` an order command writes: one per owner in the
/// command's payload (the order, or each of its items), named by the owner's `field`. Read from
/// the payload without decoding the whole order.
fn contended_streams<'a, A: engine::Aggregate>(
    owners: impl IntoIterator<Item = &'a Value>,
    field: &str,
) -> Vec<String> {
    owners.into_iter().filter_map(|owner| owner.get(field)?.as_str()).map(engine::aggregate::stream_id::<A>).collect()
}

/// The items of an order command's payload.
fn items(command: &Envelope) -> &[Value] {
    command.payload.get("items").and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

fn order_input(command: &Envelope) -> Result<OrderInput> {
    let input: OrderInput = serde_json::from_value(command.payload.clone())
        .map_err(|e| Error::Invalid(format!("{} payload is not an order: {e}", command.message_type)))?;
    let problems = input.problems();
    if problems.is_empty() {
        Ok(input)
    } else {
        Err(Error::Invalid(format!("{} payload is not a valid order: {}", command.message_type, problems.join("; "))))
    }
}

/// Aggregates whose current state each participant keeps in memory.
const CACHED_AGGREGATES: usize = 10_000;
/// A snapshot every this many events, for cold starts of long histories.
const SNAPSHOT_EVERY: u64 = 500;

/// A participant's repository of long-lived aggregates (stock, credit): written through its
/// cache, snapshotted for cold starts.
fn repository<A: engine::Aggregate>(store: Arc<dyn EventStore>) -> Repository<A> {
    Repository::new(store).with_write_through_cache(CACHED_AGGREGATES).with_snapshots_every(SNAPSHOT_EVERY)
}

/// A participant's repository of per-order aggregates (a handful of events each).
fn per_order<A: engine::Aggregate>(store: Arc<dyn EventStore>) -> Repository<A> {
    Repository::new(store).with_write_through_cache(CACHED_AGGREGATES).without_snapshots().assuming_new_on_a_miss()
}

fn unknown(participant: &str, command: &Envelope) -> Error {
    Error::Invalid(format!("participant '{participant}' does not handle '{}'", command.message_type))
}

/// Reserves and releases stock for orders: all items or none. The order's
/// [`StockReservation`] decides whether to (once per order; a release wins over a late
/// reserve) and is written in the same transaction as the SKUs' stock.
pub struct InventoryParticipant {
    stock: Repository<Inventory>,
    reservations: Repository<StockReservation>,
}

impl InventoryParticipant {
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Self { stock: repository(Arc::clone(&store)), reservations: per_order(store) }
    }
}

#[async_trait]
impl CommandHandler for InventoryParticipant {
    async fn decide(&self, command: &Envelope) -> Result<Effect> {
        let input = order_input(command)?;
        let mut per_sku: BTreeMap<String, u64> = BTreeMap::new();
        for line in &input.items {
            *per_sku.entry(line.sku.clone()).or_default() += u64::from(line.quantity);
        }
        let order_id = input.order_id.clone();
        let reservation = match command.message_type.as_str() {
            "ReserveInventory" => ReservationCommand::Reserve { items: per_sku.clone() },
            "ReleaseInventory" => ReservationCommand::Release,
            _ => return Err(unknown(INVENTORY, command)),
        };
        let decided = match self.reservations.decide(&order_id, &reservation).await {
            Ok(decided) => decided,
            Err(Error::Rejected(reason)) => return Ok(Effect::refused(reason)),
            Err(other) => return Err(other),
        };
        let mut appends: Vec<_> = decided.append()?.into_iter().collect();
        for event in &decided.events {
            match event {
                ReservationEvent::StockReservationMade { items } => {
                    for (sku, quantity) in items {
                        let take = InventoryCommand::Reserve { order_id: order_id.clone(), quantity: *quantity };
                        match self.stock.decide(sku, &take).await {
                            Ok(decided) => appends.extend(decided.append()?),
                            Err(Error::Rejected(reason)) => {
                                return Ok(Effect::refused(format!("insufficient stock for SKU {sku}: {reason}")))
                            }
                            Err(other) => return Err(other),
                        }
                    }
                }
                ReservationEvent::StockReservationReleased { items } => {
                    for (sku, quantity) in items {
                        let give_back = InventoryCommand::Release { order_id: order_id.clone(), quantity: *quantity };
                        appends.extend(self.stock.decide(sku, &give_back).await?.append()?);
                    }
                }
            }
        }
        let output = match reservation {
            ReservationCommand::Reserve { .. } => json!({ "reserved": per_sku }),
            ReservationCommand::Release => json!({}),
        };
        Ok(Effect::success(appends, output))
    }

    fn committed(&self, appends: &[SavedAppend]) {
        for append in appends {
            self.stock.saved(append);
            self.reservations.saved(append);
        }
    }

    fn conflicted(&self, stream: &str) {
        self.stock.forget(stream);
        self.reservations.forget(stream);
    }

    fn contended(&self, command: &Envelope) -> Vec<String> {
        contended_streams::<Inventory>(items(command), "sku")
    }
}

/// Creates, cancels and approves orders.
pub struct OrdersParticipant {
    repo: Repository<Order>,
}

impl OrdersParticipant {
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Self { repo: per_order(store) }
    }
}

#[async_trait]
impl CommandHandler for OrdersParticipant {
    async fn decide(&self, command: &Envelope) -> Result<Effect> {
        let input = order_input(command)?;
        let order_command = match command.message_type.as_str() {
            "CreateOrder" => OrderCommand::Create {
                customer_id: input.customer_id.clone(),
                items: input.items.clone(),
                total: input.total,
            },
            "CancelOrder" => OrderCommand::Cancel {
                reason: input.compensation_reason.clone().unwrap_or_else(|| "cancelled".to_owned()),
            },
            "ApproveOrder" => OrderCommand::Approve,
            _ => return Err(unknown(ORDERS, command)),
        };
        Ok(match self.repo.decide(&input.order_id, &order_command).await {
            Ok(decided) => {
                Effect::success(decided.append()?.into_iter().collect(), Value::Object(serde_json::Map::new()))
            }
            Err(Error::Rejected(reason)) => Effect::refused(reason),
            Err(other) => return Err(other),
        })
    }

    fn committed(&self, appends: &[SavedAppend]) {
        for append in appends {
            self.repo.saved(append);
        }
    }

    fn conflicted(&self, stream: &str) {
        self.repo.forget(stream);
    }
}

/// Takes payment by reserving customer credit, and refunds it. The order's [`Payment`]
/// decides whether to (once per order; a refund wins over a late payment) and is written in
/// the same transaction as the account.
pub struct PaymentsParticipant {
    accounts: Repository<CustomerCredit>,
    payments: Repository<Payment>,
}

impl PaymentsParticipant {
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Self { accounts: repository(Arc::clone(&store)), payments: per_order(store) }
    }
}

#[async_trait]
impl CommandHandler for PaymentsParticipant {
    async fn decide(&self, command: &Envelope) -> Result<Effect> {
        let input = order_input(command)?;
        let customer_id = input.customer_id.clone();
        let payment = match command.message_type.as_str() {
            "ProcessPayment" => PaymentCommand::Take { customer_id: customer_id.clone(), amount: input.total },
            "RefundPayment" => PaymentCommand::Refund { customer_id: customer_id.clone() },
            _ => return Err(unknown(PAYMENTS, command)),
        };
        let decided = match self.payments.decide(&input.order_id, &payment).await {
            Ok(decided) => decided,
            Err(Error::Rejected(reason)) => return Ok(Effect::refused(format!("payment declined: {reason}"))),
            Err(other) => return Err(other),
        };
        let mut appends: Vec<_> = decided.append()?.into_iter().collect();
        for event in &decided.events {
            let (account, credit) = match event {
                PaymentEvent::PaymentTaken { customer_id, amount } => {
                    (customer_id, CreditCommand::Reserve { order_id: input.order_id.clone(), amount: *amount })
                }
                PaymentEvent::PaymentRefunded { amount, .. } if amount.is_zero() => continue,
                PaymentEvent::PaymentRefunded { customer_id, amount } => {
                    (customer_id, CreditCommand::Refund { order_id: input.order_id.clone(), amount: *amount })
                }
            };
            match self.accounts.decide(account, &credit).await {
                Ok(decided) => appends.extend(decided.append()?),
                Err(Error::Rejected(reason)) => return Ok(Effect::refused(format!("payment declined: {reason}"))),
                Err(other) => return Err(other),
            }
        }
        Ok(Effect::success(appends, json!({ "paid": input.total })))
    }

    fn committed(&self, appends: &[SavedAppend]) {
        for append in appends {
            self.accounts.saved(append);
            self.payments.saved(append);
        }
    }

    fn conflicted(&self, stream: &str) {
        self.accounts.forget(stream);
        self.payments.forget(stream);
    }

    fn contended(&self, command: &Envelope) -> Vec<String> {
        contended_streams::<CustomerCredit>([&command.payload], "customer_id")
    }
}

/// The built-in participants, by name.
pub fn builtin(store: &Arc<dyn EventStore>) -> Vec<(&'static str, Arc<dyn CommandHandler>)> {
    vec![
        (INVENTORY, Arc::new(InventoryParticipant::new(Arc::clone(store))) as Arc<dyn CommandHandler>),
        (ORDERS, Arc::new(OrdersParticipant::new(Arc::clone(store)))),
        (PAYMENTS, Arc::new(PaymentsParticipant::new(Arc::clone(store)))),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::envelope::MessageKind;
    use event_store::memory::MemoryEventStore;

    fn command(message_type: &str, payload: Value) -> Envelope {
        Envelope {
            message_id: "m".into(),
            saga_id: uuid::Uuid::now_v7(),
            kind: MessageKind::Command,
            step: "s".into(),
            message_type: message_type.into(),
            attempt: 1,
            in_reply_to: None,
            reply_to: None,
            payload,
            outcome: None,
            sent_at: chrono::Utc::now(),
        }
    }

    #[tokio::test]
    async fn a_forged_negative_total_cannot_mint_credit() {
        let store: Arc<dyn EventStore> = Arc::new(MemoryEventStore::new());
        Repository::<CustomerCredit>::new(Arc::clone(&store))
            .execute("c", &CreditCommand::SetLimit { limit: rust_decimal::Decimal::from(10) })
            .await
            .unwrap();
        let forged = json!({"order_id": "o", "customer_id": "c", "items": [{"sku": "A", "quantity": 1, "unit_price": "1.00"}], "total": "-1000000"});
        let err =
            PaymentsParticipant::new(Arc::clone(&store)).decide(&command("ProcessPayment", forged)).await.unwrap_err();
        assert!(err.to_string().contains("not the sum"), "{err}");
        let credit = Repository::<CustomerCredit>::new(store).load("c").await.unwrap().state;
        assert_eq!(credit.available(), rust_decimal::Decimal::from(10));
    }

    /// The turns a command takes must cover every shared aggregate its decision writes, or two
    /// commands on one SKU or account would still race on its expected version.
    #[tokio::test]
    async fn the_turns_a_command_takes_cover_the_shared_aggregates_it_writes() {
        let store: Arc<dyn EventStore> = Arc::new(MemoryEventStore::new());
        for sku in ["A", "B"] {
            Repository::<Inventory>::new(Arc::clone(&store))
                .execute(sku, &InventoryCommand::SetStock { available: 10 })
                .await
                .unwrap();
        }
        Repository::<CustomerCredit>::new(Arc::clone(&store))
            .execute("c", &CreditCommand::SetLimit { limit: rust_decimal::Decimal::from(100) })
            .await
            .unwrap();
        let order = json!({"order_id": "o", "customer_id": "c", "items": [
            {"sku": "A", "quantity": 1, "unit_price": "1.00"},
            {"sku": "B", "quantity": 2, "unit_price": "2.00"}], "total": "5.00"});
        let handlers: [(Arc<dyn CommandHandler>, &str, &str); 2] = [
            (Arc::new(InventoryParticipant::new(Arc::clone(&store))), "ReserveInventory", "inventory-"),
            (Arc::new(PaymentsParticipant::new(Arc::clone(&store))), "ProcessPayment", "customer-"),
        ];
        for (handler, command_type, shared_prefix) in handlers {
            let command = command(command_type, order.clone());
            let effect = handler.decide(&command).await.unwrap();
            assert!(effect.result.is_ok(), "{command_type}: {:?}", effect.result);
            let mut written: Vec<String> =
                effect.appends.iter().map(|a| a.stream_id.clone()).filter(|s| s.starts_with(shared_prefix)).collect();
            written.sort();
            let mut turns = handler.contended(&command);
            turns.sort();
            assert!(!written.is_empty(), "{command_type} writes no shared aggregate");
            assert_eq!(turns, written, "{command_type}");
        }
    }

    #[tokio::test]
    async fn unknown_commands_are_refused_not_crashed_on() {
        let store: Arc<dyn EventStore> = Arc::new(MemoryEventStore::new());
        let input = json!({"order_id": "o", "customer_id": "c", "items": [{"sku": "A", "quantity": 1, "unit_price": "1.00"}], "total": "1.00"});
        let err = OrdersParticipant::new(store).decide(&command("Teleport", input)).await.unwrap_err();
        assert!(err.to_string().contains("does not handle 'Teleport'"), "{err}");
    }
}
