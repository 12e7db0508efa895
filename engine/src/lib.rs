//! Sagaflow's engine: event-sourced aggregates, saga definitions, the saga state
//! machine, the coordinator that drives it, and the transports it speaks over.

pub mod aggregate;
pub mod codec;
pub mod definition;
pub mod error;
pub mod repository;
pub mod saga;

pub use aggregate::Aggregate;
pub use error::{Error, Result};
pub use repository::{Loaded, Repository};
