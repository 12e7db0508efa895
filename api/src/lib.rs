//! The Sagaflow REST API (axum) and the composition of a running engine.

pub mod app;
pub mod auth;
pub mod console;
pub mod error;
pub mod extract;
pub mod idempotency;
pub mod limits;
pub mod lingering;
pub mod metrics;
pub mod openapi;
pub mod routes;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod timeline;
pub mod wait;

pub use app::router;
pub use state::AppState;
