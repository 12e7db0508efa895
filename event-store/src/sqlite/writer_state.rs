//! What the writer thread keeps between groups: the streams' versions and the last positions
//! used, so that a commit is checked and numbered without a statement of its own.

use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::Connection;

use super::committed::Tap;
use super::statement_count::StatementCount;
use crate::error::Result;

/// Stream versions kept at most; past it the writer forgets them all and reads again the
/// ones it needs (one statement per group).
const MAX_VERSIONS: usize = 100_000;

/// The writer thread's memory of the database, exact while it is the only writer.
pub(crate) struct WriterState {
    /// Stream → version as stored (0: no events).
    versions: HashMap<String, u64>,
    /// The last `$all` position and outbox id given out.
    pub(super) last_position: i64,
    pub(super) last_outbox_id: i64,
    pub(crate) statements: Arc<StatementCount>,
    pub(super) tap: Tap,
}

impl WriterState {
    /// Reads the last positions used.
    pub(super) fn load(connection: &Connection, statements: Arc<StatementCount>, tap: Tap) -> Result<Self> {
        let mut state = Self { versions: HashMap::new(), last_position: 0, last_outbox_id: 0, statements, tap };
        state.reload(connection)?;
        Ok(state)
    }

    /// Forgets what it knew and reads the last positions again: after a transaction failed,
    /// or another connection wrote.
    pub(super) fn reload(&mut self, connection: &Connection) -> Result<()> {
        self.versions.clear();
        // AUTOINCREMENT keeps the highest id ever used (rows deleted by retention included).
        let last = |table: &str| -> Result<i64> {
            Ok(connection.query_row(
                &format!(
                    "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = '{table}'), 0),
                                coalesce((SELECT max(rowid) FROM {table}), 0))"
                ),
                [],
                |row| row.get(0),
            )?)
        };
        self.last_position = last("events")?;
        self.last_outbox_id = last("outbox")?;
        self.statements.add(2);
        Ok(())
    }

    /// The stored version of `stream`, when known here.
    pub(super) fn version(&self, stream: &str) -> Option<u64> {
        self.versions.get(stream).copied()
    }

    /// Records stored versions (read, or just written).
    pub(super) fn know<'a>(&mut self, versions: impl IntoIterator<Item = (&'a str, u64)>) {
        if self.versions.len() > MAX_VERSIONS {
            self.versions.clear();
        }
        for (stream, version) in versions {
            match self.versions.get_mut(stream) {
                Some(known) => *known = version,
                None => {
                    self.versions.insert(stream.to_owned(), version);
                }
            }
        }
    }
}
