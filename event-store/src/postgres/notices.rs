//! Commit notices between processes: one task announces this process's commits with few,
//! coalesced NOTIFYs, and a listener wakes local waiters for other processes' commits.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::model::Commit;
use crate::signals::CommitSignals;

pub(super) const NOTIFY_CHANNEL: &str = "sagaflow_commits";
/// NOTIFY payloads must stay under 8,000 bytes; beyond this a notice says "anything".
const MAX_NOTICE_BYTES: usize = 7_000;
/// The notice entry that means "any stream may have changed".
const ANY_STREAM: &str = "*";

/// Tells other processes about this process's commits: one task, one NOTIFY at a time,
/// carrying every stream committed since the last one. Commits never wait for it.
pub(super) struct Announcer {
    /// Tells this process's own notices from others'.
    pub(super) instance: String,
    pending: Mutex<Pending>,
    ready: Notify,
}

#[derive(Default)]
struct Pending {
    any: bool,
    streams: BTreeSet<String>,
    bytes: usize,
}

impl Announcer {
    pub(super) fn new() -> Self {
        Self { instance: Uuid::new_v4().simple().to_string(), pending: Mutex::default(), ready: Notify::new() }
    }

    pub(super) fn announce(&self, commit: &Commit) {
        {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            pending.any = true;
            for append in &commit.appends {
                let stream = &append.stream_id;
                if pending.bytes + stream.len() + 1 > MAX_NOTICE_BYTES || stream.contains('\n') || stream == ANY_STREAM
                {
                    pending.streams.clear();
                    pending.streams.insert(ANY_STREAM.to_owned());
                    pending.bytes = MAX_NOTICE_BYTES;
                } else if !pending.streams.contains(ANY_STREAM) && pending.streams.insert(stream.clone()) {
                    pending.bytes += stream.len() + 1;
                }
            }
        }
        self.ready.notify_one();
    }

    /// The next notice: this instance, then one stream per line (or `*`).
    fn take(&self) -> Option<String> {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        pending.any.then(|| {
            let mut notice = self.instance.clone();
            for stream in pending.streams {
                notice.push('\n');
                notice.push_str(&stream);
            }
            notice
        })
    }

    pub(super) async fn run(self: Arc<Self>, pool: PgPool, cancel: CancellationToken) {
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = self.ready.notified() => {}
            }
            let Some(notice) = self.take() else { continue };
            let sent = sqlx::query("SELECT pg_notify($1, $2)").bind(NOTIFY_CHANNEL).bind(&notice).execute(&pool).await;
            if let Err(err) = sent {
                // Other processes' waiters fall back to their polls.
                tracing::warn!(error = %err, "cannot announce commits to other processes");
            }
        }
    }
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
