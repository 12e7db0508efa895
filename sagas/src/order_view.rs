//! The order as a customer sees it, from the moment it is submitted: built from the
//! saga's stream (the submitted order, and why it failed) and the Order aggregate's
//! stream (created, approved, cancelled).

use std::sync::Arc;

use engine::coordinator::{Coordinator, SagaView};
use engine::saga::{SagaState, SagaStatus, StepStatus};
use engine::{Error, Repository, Result};
use event_store::{Commit, EventStore};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::definitions::ORDER_FULFILMENT;
use crate::order::{Order, OrderStatus};
use crate::order_input::{NewOrder, OrderInput, OrderLine};

/// An order's status as shown to customers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderViewStatus {
    Pending,
    Approved,
    Rejected,
    /// The saga stopped without knowing whether the order was approved (its approval timed
    /// out, or a compensation kept failing): not a final answer, an operator must resolve it.
    OutcomeUnknown,
}

impl OrderViewStatus {
    /// Whether the order will not change any more.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Approved | Self::Rejected)
    }
}

/// An order as shown to customers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderView {
    pub order_id: String,
    pub customer_id: String,
    pub items: Vec<OrderLine>,
    #[schema(value_type = String, example = "24.25")]
    pub total: Decimal,
    pub status: OrderViewStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub saga_id: Uuid,
    /// Grows with every change to the order or its saga.
    pub version: u64,
}

/// A submitted order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubmittedOrder {
    pub order_id: String,
    pub saga_id: Uuid,
}

/// Submits and shows orders.
pub struct OrderService {
    coordinator: Arc<Coordinator>,
    orders: Repository<Order>,
}

impl OrderService {
    pub fn new(coordinator: Arc<Coordinator>, store: Arc<dyn EventStore>) -> Self {
        Self { coordinator, orders: Repository::new(store).without_snapshots() }
    }

    /// Starts the order-fulfilment saga for a valid order. The order's id is its saga's id.
    pub async fn submit(&self, order: NewOrder) -> Result<SubmittedOrder> {
        self.submit_with(order, Uuid::now_v7(), Commit::default()).await
    }

    /// Like [`OrderService::submit`] with a chosen id, adding `extra` to the same
    /// transaction (an idempotency record, say).
    pub async fn submit_with(&self, order: NewOrder, saga_id: Uuid, extra: Commit) -> Result<SubmittedOrder> {
        let problems = order.problems();
        if !problems.is_empty() {
            return Err(Error::InvalidInput { what: "order", problems });
        }
        let definition = self.coordinator.registry().get(ORDER_FULFILMENT, None).await?;
        let input = order.into_input(saga_id.to_string());
        let input = serde_json::to_value(input).map_err(Error::Encode)?;
        self.coordinator.start_with(&definition, input, saga_id, extra).await?;
        Ok(SubmittedOrder { order_id: saga_id.to_string(), saga_id })
    }

    /// The order's view, or `None` when no such order was submitted.
    pub async fn view(&self, order_id: &str) -> Result<Option<OrderView>> {
        let Ok(saga_id) = Uuid::parse_str(order_id) else { return Ok(None) };
        let Some(saga) = self.coordinator.load(saga_id).await? else { return Ok(None) };
        self.view_of(order_id, saga_id, &saga).await
    }

    /// The order's view from its saga as already folded (a caller that followed it).
    pub async fn view_of(&self, order_id: &str, saga_id: Uuid, saga: &SagaView) -> Result<Option<OrderView>> {
        if saga.state.definition.as_ref().is_none_or(|d| d.name != ORDER_FULFILMENT) {
            return Ok(None);
        }
        let input: OrderInput = serde_json::from_value(saga.state.input.clone())
            .map_err(|e| Error::Invalid(format!("saga {saga_id} input is not an order: {e}")))?;
        let order = self.orders.load(order_id).await?;
        // Terminal only once the saga is: a rejected order's stock is released by then.
        let (status, reason) = match (saga.state.status, order.state.status) {
            // Approval is the pivot: once the order is approved it stays approved.
            (SagaStatus::Completed | SagaStatus::Compensated | SagaStatus::Failed, OrderStatus::Approved) => {
                (OrderViewStatus::Approved, None)
            }
            (SagaStatus::Completed | SagaStatus::Compensated | SagaStatus::Failed, OrderStatus::Cancelled) => {
                (OrderViewStatus::Rejected, order.state.reason.clone())
            }
            // Created, neither approved nor cancelled, by a saga that failed after sending the
            // approval: a late approval may still land, so this is no final answer.
            (SagaStatus::Failed, OrderStatus::Created) if approval_may_land(&saga.state) => {
                (OrderViewStatus::OutcomeUnknown, saga.state.reason.clone())
            }
            (SagaStatus::Completed | SagaStatus::Compensated | SagaStatus::Failed, _) => {
                (OrderViewStatus::Rejected, saga.state.reason.clone())
            }
            _ => (OrderViewStatus::Pending, None),
        };
        Ok(Some(OrderView {
            order_id: input.order_id,
            customer_id: input.customer_id,
            items: input.items,
            total: input.total,
            status,
            reason,
            saga_id,
            version: saga.version + order.version,
        }))
    }
}

/// Whether the pivot (the approval) was sent and not definitely refused, so that it may
/// still take effect.
fn approval_may_land(saga: &SagaState) -> bool {
    let Some(pivot) = saga.definition.as_ref().and_then(|d| d.pivot()) else { return false };
    saga.steps
        .get(pivot)
        .is_some_and(|step| step.attempts > 0 && (step.status != StepStatus::Failed || step.possibly_applied))
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::codec::encode;
    use engine::definition_registry::DefinitionRegistry;
    use engine::saga::SagaEvent;
    use engine::topics::Topics;
    use event_store::memory::MemoryEventStore;
    use event_store::{EventStoreExt, ExpectedVersion};

    use crate::order::OrderCommand;

    fn order_of(price: &str) -> NewOrder {
        serde_json::from_value(serde_json::json!(
            {"customer_id": "c", "items": [{"sku": "A", "quantity": 1, "unit_price": price}]}))
        .unwrap()
    }

    #[tokio::test]
    async fn a_pivot_with_an_unknown_outcome_is_not_shown_as_a_final_rejection() {
        let store: Arc<dyn EventStore> = Arc::new(MemoryEventStore::new());
        let registry = Arc::new(DefinitionRegistry::new(Arc::clone(&store)));
        registry.ensure(crate::order_fulfilment()).await.unwrap();
        let coordinator = Arc::new(Coordinator::new(Arc::clone(&store), registry, Topics::new("t")));
        let service = OrderService::new(coordinator, Arc::clone(&store));
        let submitted = service.submit(order_of("2.00")).await.unwrap();
        let id = submitted.order_id.clone();
        let orders = Repository::<Order>::new(Arc::clone(&store));
        let create = OrderCommand::Create { customer_id: "c".into(), items: vec![], total: Decimal::from(2) };
        orders.execute(&id, &create).await.unwrap();
        // The pivot (approve-order) was sent and timed out: the saga fails with an unknown outcome.
        let stream = engine::coordinator::saga_stream(submitted.saga_id);
        let message_id = format!("{}/approve-order/do/1", submitted.saga_id);
        let pivot_sent = SagaEvent::StepCommandSent {
            step: "approve-order".into(),
            attempt: 1,
            message_id: message_id.clone(),
            deadline: chrono::Utc::now(),
        };
        let pivot_timed_out = SagaEvent::StepTimedOut { step: "approve-order".into(), attempt: 1, message_id };
        let failed = SagaEvent::SagaFailed { reason: "pivot step 'approve-order' timed out".into() };
        let version = store.stream_version(&stream).await.unwrap();
        let events = [pivot_sent, pivot_timed_out, failed].iter().map(|e| encode(e).unwrap()).collect();
        store.append(&stream, ExpectedVersion::from_current(version), events).await.unwrap();

        let view = service.view(&id).await.unwrap().unwrap();
        assert_eq!(view.status, OrderViewStatus::OutcomeUnknown);
        assert!(!view.status.is_terminal(), "an unknown outcome is no final answer");
        assert!(view.reason.unwrap().contains("timed out"));

        // The late approval lands: now, and only now, the answer is final.
        orders.execute(&id, &OrderCommand::Approve).await.unwrap();
        assert_eq!(service.view(&id).await.unwrap().unwrap().status, OrderViewStatus::Approved);

        // A saga that failed before it ever sent the approval (a compensation kept failing)
        // leaves nothing that could approve the order: that answer is final.
        let other = service.submit(order_of("3.00")).await.unwrap();
        let create = OrderCommand::Create { customer_id: "c".into(), items: vec![], total: Decimal::from(3) };
        orders.execute(&other.order_id, &create).await.unwrap();
        let stream = engine::coordinator::saga_stream(other.saga_id);
        let version = store.stream_version(&stream).await.unwrap();
        let failed = SagaEvent::SagaFailed { reason: "compensation of step 'process-payment' failed".into() };
        store.append(&stream, ExpectedVersion::from_current(version), vec![encode(&failed).unwrap()]).await.unwrap();
        let view = service.view(&other.order_id).await.unwrap().unwrap();
        assert_eq!(view.status, OrderViewStatus::Rejected);
        assert!(view.status.is_terminal());
    }
}
