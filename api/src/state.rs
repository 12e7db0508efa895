//! What every handler can reach.

use std::sync::Arc;

use engine::coordinator::Coordinator;
use engine::transport::Transport;
use event_store::EventStore;
use metrics_exporter_prometheus::PrometheusHandle;
use sagas::order_view::OrderService;

/// Shared state of the API.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn EventStore>,
    pub transport: Arc<dyn Transport>,
    pub coordinator: Arc<Coordinator>,
    pub orders: Arc<OrderService>,
    pub metrics: PrometheusHandle,
}
