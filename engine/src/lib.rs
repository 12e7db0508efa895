//! Sagaflow's engine: event-sourced aggregates, saga definitions, the saga state
//! machine, the coordinator that drives it, and the transports it speaks over.

pub mod aggregate;
pub mod aggregate_turns;
pub mod circuit_breaker;
pub mod codec;
pub mod commit_delivery;
pub mod consumer_loop;
pub mod coordinator;
pub mod dead_letter;
pub mod definition;
pub mod definition_diff;
pub mod definition_registry;
pub mod envelope;
pub mod error;
pub mod operator_actions;
pub mod participant;
pub mod relay;
pub mod repository;
pub mod retention;
pub mod runtime;
pub mod saga;
pub mod saga_index_projection;
pub mod stuck_sagas;
pub mod timeouts;
pub mod topics;
pub mod trace_context;
pub mod transport;

pub use aggregate::Aggregate;
pub use error::{Error, Result};
pub use repository::{Decided, Loaded, Repository};
