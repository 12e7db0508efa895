//! `POST /orders`, `GET /orders/{id}`: submitting orders and following them.

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use engine::aggregate::stream_id;
use engine::coordinator::SagaView;
use event_store::Commit;
use sagas::definitions::ORDER_FULFILMENT;
use sagas::order::Order;
use sagas::order_input::NewOrder;
use sagas::order_view::{OrderView, OrderViewStatus};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};
use crate::extract::{AppJson, AppPath, AppQuery};
use crate::idempotency;
use crate::limits::long_poll_place;
use crate::state::AppState;
use crate::wait::{next_change, until_saga_terminal, WaitQuery};

/// The answer to a submitted order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SubmitResponse {
    pub order_id: String,
    pub saga_id: Uuid,
    pub status: OrderViewStatus,
}

type IdempotencyRecord = idempotency::Record<SubmitResponse>;

fn accepted(response: &SubmitResponse) -> Response {
    let location = format!("/orders/{}", response.order_id);
    (StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(response.clone())).into_response()
}

/// What identifies an order body under an `Idempotency-Key`: the order serialized (serde
/// fixes the field order) with every price normalized, so `"10.5"` and `"10.50"` are one
/// request.
fn fingerprint(order: &NewOrder) -> ApiResult<String> {
    let mut normalized = order.clone();
    for line in &mut normalized.items {
        line.unit_price = line.unit_price.normalize();
    }
    Ok(serde_json::to_string(&normalized).map_err(engine::Error::Encode)?)
}

/// Whether a stored fingerprint is the one of this request. Records stored before prices
/// were normalized hold the order as it was spelled; such a fingerprint is read back as an
/// order and normalized, so a retry matches whichever spelling either request used.
fn same_request(stored: &str, fingerprint_now: &str) -> bool {
    stored == fingerprint_now
        || serde_json::from_str::<NewOrder>(stored)
            .ok()
            .and_then(|order| fingerprint(&order).ok())
            .is_some_and(|normalized| normalized == fingerprint_now)
}

fn replay(record: IdempotencyRecord, fingerprint: &str) -> ApiResult<Response> {
    if same_request(&record.fingerprint, fingerprint) {
        Ok(accepted(&record.response))
    } else {
        Err(ApiError::invalid("this Idempotency-Key was already used with a different request body", vec![]))
    }
}

/// Submits an order: starts its order-fulfilment saga. With an `Idempotency-Key`, a retry
/// answers like the first request and starts nothing new.
#[utoipa::path(post, path = "/orders", tag = "orders", request_body = NewOrder,
    params(("Idempotency-Key" = Option<String>, Header, description = "makes retries safe")),
    responses((status = 202, body = SubmitResponse, headers(("Location" = String))), (status = 400), (status = 422)))]
pub async fn submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    AppJson(order): AppJson<NewOrder>,
) -> ApiResult<Response> {
    let saga_id = Uuid::now_v7();
    let response = SubmitResponse { order_id: saga_id.to_string(), saga_id, status: OrderViewStatus::Pending };
    let Some(key) = idempotency::key(&headers)? else {
        state.orders.submit_with(order, saga_id, Commit::default()).await?;
        return Ok(accepted(&response));
    };
    let stream = format!("idempotency-orders-{key}");
    let fingerprint = fingerprint(&order)?;
    if let Some(record) = idempotency::stored(state.store.as_ref(), &stream).await? {
        return replay(record, &fingerprint);
    }
    let claim = idempotency::claim(
        &stream,
        &IdempotencyRecord { fingerprint: fingerprint.clone(), response: response.clone() },
    )?;
    match state.orders.submit_with(order, saga_id, claim).await {
        Ok(_) => Ok(accepted(&response)),
        // A concurrent request with the same key won; nothing of ours was written.
        Err(e) if idempotency::lost_race(&e, &stream) => {
            let record = idempotency::stored(state.store.as_ref(), &stream)
                .await?
                .ok_or_else(|| ApiError::Unavailable("retry".into()))?;
            replay(record, &fingerprint)
        }
        Err(e) => Err(e.into()),
    }
}

/// An order with its status; `?wait=<seconds>` holds the request until it is terminal.
#[utoipa::path(get, path = "/orders/{id}", tag = "orders", params(("id" = String, Path), WaitQuery),
    responses((status = 200, body = OrderView), (status = 400), (status = 404)))]
pub async fn get_order(
    State(state): State<AppState>,
    AppPath(id): AppPath<String>,
    AppQuery(query): AppQuery<WaitQuery>,
) -> ApiResult<Json<OrderView>> {
    let wait = query.duration(&state.limits)?;
    let not_found = || ApiError::NotFound(format!("no order '{id}'"));
    // An order's id is its saga's id.
    let saga_id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let mut saga = match state.coordinator.in_memory(saga_id) {
        // Followed from memory: a saga still running here is pending, and is waited for.
        Some(running)
            if !wait.is_zero()
                && !running.state.status.is_terminal()
                && running.state.definition.as_ref().is_some_and(|d| d.name == ORDER_FULFILMENT) =>
        {
            SagaView::clone(&running)
        }
        _ => {
            let saga = state.coordinator.load(saga_id).await?.ok_or_else(not_found)?;
            let view = state.orders.view_of(&id, saga_id, &saga).await?.ok_or_else(not_found)?;
            if view.status.is_terminal() || wait.is_zero() {
                return Ok(Json(view));
            }
            saga
        }
    };
    let _place = long_poll_place(&state, wait)?;
    // An order is terminal only once its saga is: follow the saga from where it was read
    // (its new events only), then build the order's view from the saga as followed. A saga
    // that ended without a final answer (the approval's outcome is unknown) leaves the order
    // to a late approval, which lands on the order's own stream: follow that one then.
    let deadline = tokio::time::Instant::now() + wait;
    let mut order_changes = state.store.stream_changes(&stream_id::<Order>(&id));
    loop {
        order_changes.mark_seen();
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        until_saga_terminal(state.store.as_ref(), &state.coordinator, saga_id, &mut saga, left).await?;
        let view = state.orders.view_of(&id, saga_id, &saga).await?.ok_or_else(not_found)?;
        if view.status.is_terminal() || tokio::time::Instant::now() >= deadline {
            return Ok(Json(view));
        }
        next_change(&mut order_changes, deadline).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn order(price: &str) -> NewOrder {
        serde_json::from_value(
            json!({ "customer_id": "c-1", "items": [{ "sku": "A", "quantity": 2, "unit_price": price }] }),
        )
        .unwrap()
    }

    #[test]
    fn equal_prices_spelled_differently_are_one_request() {
        assert_eq!(fingerprint(&order("10.5")).unwrap(), fingerprint(&order("10.50")).unwrap());
        assert_ne!(fingerprint(&order("10.5")).unwrap(), fingerprint(&order("10.05")).unwrap());
    }

    #[test]
    fn a_fingerprint_stored_before_normalization_still_matches() {
        // What records stored by earlier versions hold: the order as it was spelled.
        let old = serde_json::to_string(&order("10.50")).unwrap();
        assert!(same_request(&old, &fingerprint(&order("10.50")).unwrap()));
        assert!(same_request(&old, &fingerprint(&order("10.500")).unwrap()));
        assert!(!same_request(&old, &fingerprint(&order("10.51")).unwrap()));
        assert!(!same_request("not an order", &fingerprint(&order("10.50")).unwrap()));
    }

    /// An order whose approval timed out (its saga FAILED, the outcome unknown) is not final:
    /// a long poll holds until the late approval lands, instead of answering at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_poll_on_an_unknown_outcome_waits_for_the_late_approval() {
        use engine::codec::encode;
        use engine::coordinator::{saga_stream, Coordinator};
        use engine::definition_registry::DefinitionRegistry;
        use engine::saga::SagaEvent;
        use engine::topics::Topics;
        use engine::transport::in_process::InProcessTransport;
        use engine::Repository;
        use event_store::memory::MemoryEventStore;
        use event_store::{EventStore, EventStoreExt, ExpectedVersion};
        use sagas::order::{Order, OrderCommand};
        use sagas::order_view::OrderService;
        use std::sync::Arc;

        let store: Arc<dyn EventStore> = Arc::new(MemoryEventStore::new());
        let registry = Arc::new(DefinitionRegistry::new(Arc::clone(&store)));
        registry.ensure(sagas::order_fulfilment()).await.unwrap();
        let coordinator = Arc::new(Coordinator::new(Arc::clone(&store), registry, Topics::new("t")));
        let orders = Arc::new(OrderService::new(Arc::clone(&coordinator), Arc::clone(&store)));
        let state = AppState {
            store: Arc::clone(&store),
            transport: Arc::new(InProcessTransport::new()),
            coordinator,
            orders: Arc::clone(&orders),
            metrics: crate::metrics::recorder(),
            projection: engine::saga_index_projection::SagaIndexProjection::new(Arc::clone(&store)),
            stuck_after: engine::stuck_sagas::DEFAULT_STUCK_AFTER,
            consumers: Arc::new([]),
            limits: crate::limits::Limits::default(),
            auth: None,
        };
        let submitted = orders.submit(order("2.00")).await.unwrap();
        let id = submitted.order_id.clone();
        let aggregates = Repository::<Order>::new(Arc::clone(&store));
        let create = OrderCommand::Create { customer_id: "c-1".into(), items: vec![], total: 4.into() };
        aggregates.execute(&id, &create).await.unwrap();
        let stream = saga_stream(submitted.saga_id);
        let message_id = format!("{}/approve-order/do/1", submitted.saga_id);
        let step = "approve-order".to_owned();
        let events = [
            SagaEvent::StepCommandSent {
                step: step.clone(),
                attempt: 1,
                message_id: message_id.clone(),
                deadline: chrono::Utc::now(),
            },
            SagaEvent::StepTimedOut { step, attempt: 1, message_id },
            SagaEvent::SagaFailed { reason: "pivot step 'approve-order' timed out".into() },
        ];
        let version = store.stream_version(&stream).await.unwrap();
        let events = events.iter().map(|e| encode(e).unwrap()).collect();
        store.append(&stream, ExpectedVersion::from_current(version), events).await.unwrap();

        let late = tokio::spawn({
            let id = id.clone();
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                aggregates.execute(&id, &OrderCommand::Approve).await.unwrap();
            }
        });
        let query = AppQuery(WaitQuery { wait: Some(10) });
        let Json(view) = get_order(State(state), AppPath(id), query).await.unwrap();
        late.await.unwrap();
        assert_eq!(view.status, OrderViewStatus::Approved, "{view:?}");
    }
}
