//! The order domain: inventory, orders and customer credit as event-sourced aggregates,
//! the participants that serve the order-fulfilment saga, and a view of each order.

pub mod credit;
pub mod definitions;
pub mod inventory;
pub mod order;
pub mod order_input;
pub mod order_view;
pub mod participants;
pub mod payment;
pub mod reservation;

pub use definitions::order_fulfilment;
