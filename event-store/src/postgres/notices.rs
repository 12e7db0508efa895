//! Commit notices between processes: each commit statement carries a NOTIFY of the streams
//! it wrote, and a listener wakes local waiters for other processes' commits.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::signals::CommitSignals;

pub(super) const NOTIFY_CHANNEL: &str = "sagaflow_commits";
/// NOTIFY payloads must stay under 8,000 bytes; beyond this a notice says "anything".
const MAX_NOTICE_BYTES: usize = 7_000;
/// The notice entry that means "any stream may have changed".
const ANY_STREAM: &str = "*";

/// The notice a commit statement sends (`pg_notify`, delivered when its transaction
/// commits, so it costs no transaction of its own): `instance`, then one stream per line, or
/// `*` when they would not fit. `None` when no stream was written.
pub(super) fn notice_of<'a>(instance: &str, streams: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let mut unique: BTreeSet<&str> = BTreeSet::new();
    let mut bytes = 0;
    let mut any = false;
    for stream in streams {
        if any {
            continue;
        }
        if bytes + stream.len() + 1 > MAX_NOTICE_BYTES || stream.contains('\n') || stream == ANY_STREAM {
            any = true;
        } else if unique.insert(stream) {
            bytes += stream.len() + 1;
        }
    }
    if unique.is_empty() && !any {
        return None;
    }
    let mut notice = instance.to_owned();
    if any {
        notice.push('\n');
        notice.push_str(ANY_STREAM);
        return Some(notice);
    }
    for stream in unique {
        notice.push('\n');
        notice.push_str(stream);
    }
    Some(notice)
}

/// Tells this process's notices from others'.
pub(super) fn new_instance() -> String {
    Uuid::new_v4().simple().to_string()
}

pub(super) async fn listen_for_commits(
    mut listener: PgListener,
    signals: Arc<CommitSignals>,
    instance: String,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            received = listener.recv() => match received {
                Ok(notice) => {
                    let mut lines = notice.payload().split('\n');
                    if lines.next() == Some(instance.as_str()) {
                        continue;
                    }
                    let streams: Vec<&str> = lines.collect();
                    if streams.contains(&ANY_STREAM) {
                        signals.wake_all();
                    } else {
                        signals.committed(streams);
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "commit listener lost its connection; retrying");
                    // Wake waiters: they re-read and lose nothing while we reconnect.
                    signals.wake_all();
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
        }
    }
}
