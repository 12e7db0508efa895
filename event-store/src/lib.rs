//! Sagaflow's event store: immutable event streams with optimistic concurrency,
//! one global order for subscribers, snapshots, timers and a transactional outbox.
//!
//! Everything above this crate is written against the [`EventStore`] trait; the
//! backends ([`postgres`], [`sqlite`], [`memory`]) hold only what differs.

pub mod caller;
pub mod error;
pub mod memory;
pub mod model;
pub mod postgres;
pub mod read;
pub mod saga_index;
pub mod signals;
mod sql;
pub mod sqlite;
pub mod store;
pub mod subscription;

pub use error::{Error, Result};
pub use model::{
    AllPosition, AppendResult, Commit, CommitResult, CommittedOutbox, DueTimer, ExpectedVersion, NewEvent,
    OutboxMessage, OutboxPosition, OutgoingMessage, ProcessedMessage, RecordedEvent, Snapshot, StreamAppend,
    TimerChange,
};
pub use saga_index::SagaIndex;
pub use signals::{CommitSignals, StreamWatch};
pub use store::{has_nul, EventStore, EventStoreExt};
pub use subscription::Subscription;
