//! What the SQL backends share: the event columns, limits, and the commit wrapper that
//! validates, times and announces every commit.

use std::future::Future;

use tokio::sync::watch;

use crate::error::Result;
use crate::model::{Commit, CommitResult};
use crate::store::validate_commit;

/// Columns of an event row, in the order the row readers expect.
pub(crate) const EVENT_COLUMNS: &str =
    "global_position, event_id, stream_id, version, event_type, data, metadata, recorded_at";

/// A `LIMIT` value.
pub(crate) fn limit_of(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// Validates `commit`, runs `write` (the backend's transaction), records its latency and
/// wakes local subscribers.
pub(crate) async fn run_commit<F>(
    backend: &'static str,
    changes: &watch::Sender<u64>,
    commit: &Commit,
    write: F,
) -> Result<CommitResult>
where
    F: Future<Output = Result<CommitResult>>,
{
    validate_commit(commit)?;
    let started = std::time::Instant::now();
    let result = write.await?;
    metrics::histogram!("sagaflow_append_duration_seconds", "backend" => backend)
        .record(started.elapsed().as_secs_f64());
    changes.send_modify(|n| *n = n.wrapping_add(1));
    Ok(result)
}
