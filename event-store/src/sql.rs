//! What the SQL backends share: limits and the commit wrapper that
//! validates, times and announces every commit.

use std::future::Future;

use crate::error::Result;
use crate::model::{Commit, CommitResult};
use crate::signals::CommitSignals;

/// A `LIMIT` value.
pub(crate) fn limit_of(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// Runs `write` (the backend's transaction) for a prepared `commit`
/// ([`crate::store::prepare_commit`]), records its latency and wakes local subscribers.
pub(crate) async fn run_commit<F>(
    backend: &'static str,
    signals: &CommitSignals,
    commit: &Commit,
    write: F,
) -> Result<CommitResult>
where
    F: Future<Output = Result<CommitResult>>,
{
    let started = std::time::Instant::now();
    let result = write.await?;
    metrics::histogram!("sagaflow_append_duration_seconds", "backend" => backend)
        .record(started.elapsed().as_secs_f64());
    signals.committed(commit.appends.iter().map(|a| a.stream_id.as_str()));
    Ok(result)
}
