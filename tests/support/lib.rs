//! Shared helpers of the integration tests.
//!
//! PostgreSQL tests use `#[sqlx::test]`, which gives every test a fresh database with the
//! migrations applied; it needs `DATABASE_URL` (see `scripts/services.sh`).

use std::sync::Arc;

use event_store::postgres::PgEventStore;
use event_store::EventStore;
use sqlx::PgPool;

/// The migrations folder, for `#[sqlx::test(migrator = ...)]`.
pub use event_store::postgres::MIGRATOR;

/// An event store on a test database.
pub async fn pg_store(pool: PgPool) -> Arc<dyn EventStore> {
    Arc::new(PgEventStore::from_pool(pool).await.expect("event store on the test database"))
}
