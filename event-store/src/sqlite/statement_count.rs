//! Counts the SQL statements the embedded store runs (transaction control included) and its
//! write transactions (one fsync each): the figures the bench prints per saga, and
//! `sagaflow_sqlite_statements_total` / `sagaflow_sqlite_write_transactions_total` in the
//! metrics.

use std::sync::atomic::{AtomicU64, Ordering};

/// Statements run so far by one store.
#[derive(Debug, Default)]
pub struct StatementCount {
    statements: AtomicU64,
    write_transactions: AtomicU64,
}

impl StatementCount {
    pub(crate) fn add(&self, statements: u64) {
        self.statements.fetch_add(statements, Ordering::Relaxed);
        metrics::counter!("sagaflow_sqlite_statements_total").increment(statements);
    }

    pub(crate) fn add_write_transaction(&self) {
        self.write_transactions.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("sagaflow_sqlite_write_transactions_total").increment(1);
    }

    /// Statements run since the store opened.
    pub fn get(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }

    /// Write transactions (each one fsync) since the store opened.
    pub fn write_transactions(&self) -> u64 {
        self.write_transactions.load(Ordering::Relaxed)
    }
}
