//! Counts the SQL statements the embedded store runs (transaction control included): the
//! figure the bench prints per saga, and `sagaflow_sqlite_statements_total` in the metrics.

use std::sync::atomic::{AtomicU64, Ordering};

/// Statements run so far by one store.
#[derive(Debug, Default)]
pub struct StatementCount(AtomicU64);

impl StatementCount {
    pub(crate) fn add(&self, statements: u64) {
        self.0.fetch_add(statements, Ordering::Relaxed);
        metrics::counter!("sagaflow_sqlite_statements_total").increment(statements);
    }

    /// Statements run since the store opened.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}
