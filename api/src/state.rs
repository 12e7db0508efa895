//! What every handler can reach.

use std::sync::Arc;
use std::time::Duration;

use engine::coordinator::Coordinator;
use engine::saga_index_projection::SagaIndexProjection;
use engine::transport::{ConsumerStatus, Transport};
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
    /// The saga index, for lists and filters.
    pub projection: SagaIndexProjection,
    /// How long a saga may go without progress before it counts as stuck, unless its
    /// definition says otherwise.
    pub stuck_after: Duration,
    /// This process's consumers, for readiness.
    pub consumers: Arc<[Arc<ConsumerStatus>]>,
    pub limits: crate::limits::Limits,
    /// How bearer tokens are verified; `None`: requests are not authenticated.
    pub auth: Option<Arc<crate::auth::AuthConfig>>,
}
