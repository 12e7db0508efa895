//! Group commit: how a batch of commits becomes one statement. Commits submitted while the
//! store is already writing as many groups as it writes at once wait, and are then written
//! together: one round trip, one transaction and one WAL flush for the group
//! (`group_commit.sql`), with a verdict per commit, so a conflict fails only its own commit.
//! A commit that finds no group in flight is written at once, alone: grouping costs no
//! latency when there is nothing to share.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, OnceLock};

use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::commit::{self, Columns, Outcome};
use super::notices::notice_of;
use crate::error::{Error, Result};
use crate::model::{Commit, CommitResult, TimerChange};

/// The group statement, with the append checks it shares with the one-commit statement.
fn group_commit_sql() -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    SQL.get_or_init(|| commit::with_append_checks(include_str!("group_commit.sql")))
}

/// The most commits written in one statement.
const MAX_GROUP: usize = 256;
/// Groups written at once, each on its own connection.
const GROUPS_IN_FLIGHT: usize = 2;

/// Hands commits to the group writer and waits for their verdicts.
pub(super) struct GroupCommitter {
    queue: mpsc::UnboundedSender<Pending>,
}

/// What every group's writer needs.
struct Writer {
    pool: PgPool,
    /// This process, in the notices its commits send.
    instance: String,
}

struct Pending {
    commit: Arc<Commit>,
    /// What the commit touches that another commit of its group must not.
    keys: Vec<String>,
    reply: oneshot::Sender<Result<CommitResult>>,
}

impl GroupCommitter {
    /// Starts the group writer on `pool`; it stops when `cancel` fires.
    pub(super) fn start(pool: PgPool, instance: String, cancel: CancellationToken) -> Self {
        let (queue, receiver) = mpsc::unbounded_channel();
        tokio::spawn(run(Arc::new(Writer { pool, instance }), receiver, cancel));
        Self { queue }
    }

    /// Writes `commit`, alone or with others; its own verdict either way.
    pub(super) async fn commit(&self, commit: Arc<Commit>) -> Result<CommitResult> {
        let (reply, verdict) = oneshot::channel();
        let keys = keys_of(&commit);
        self.queue.send(Pending { commit, keys, reply }).map_err(|_| closed())?;
        verdict.await.map_err(|_| closed())?
    }
}

fn closed() -> Error {
    Error::Invalid("the event store is shutting down".into())
}

/// The streams, processed message and timers a commit writes: two commits sharing one are
/// never in one group, where each would be checked without the other's write.
fn keys_of(commit: &Commit) -> Vec<String> {
    let streams = commit.appends.iter().map(|a| format!("s\0{}", a.stream_id));
    let processed = commit.processed.iter().map(|p| format!("p\0{}\0{}", p.consumer, p.message_id));
    let timers = commit.timers.iter().map(|t| match t {
        TimerChange::Set { key, .. } | TimerChange::Cancel { key } => format!("t\0{key}"),
    });
    streams.chain(processed).chain(timers).collect()
}

async fn run(writer: Arc<Writer>, mut queue: mpsc::UnboundedReceiver<Pending>, cancel: CancellationToken) {
    let mut waiting: VecDeque<Pending> = VecDeque::new();
    let mut busy: HashSet<String> = HashSet::new();
    let mut writing: JoinSet<Vec<String>> = JoinSet::new();
    loop {
        while let Ok(pending) = queue.try_recv() {
            waiting.push_back(pending);
        }
        if writing.len() < GROUPS_IN_FLIGHT {
            let group = take_group(&mut waiting, &busy);
            if !group.is_empty() {
                let keys: Vec<String> = group.iter().flat_map(|p| p.keys.iter().cloned()).collect();
                busy.extend(keys.iter().cloned());
                let writer = Arc::clone(&writer);
                writing.spawn(async move {
                    write_group(&writer, group).await;
                    keys
                });
                continue;
            }
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            Some(done) = writing.join_next(), if !writing.is_empty() => {
                if let Ok(keys) = done {
                    for key in keys {
                        busy.remove(&key);
                    }
                }
            }
            received = queue.recv() => match received {
                Some(pending) => waiting.push_back(pending),
                None if writing.is_empty() && waiting.is_empty() => break,
                None => {}
            },
        }
    }
    writing.abort_all();
}

/// The longest run of waiting commits, in order of arrival, that share no key with each other
/// nor with a group being written; the others keep their places.
fn take_group(waiting: &mut VecDeque<Pending>, busy: &HashSet<String>) -> Vec<Pending> {
    let mut group = Vec::new();
    let mut taken: HashSet<&str> = HashSet::new();
    let mut picked = Vec::new();
    for (i, pending) in waiting.iter().enumerate() {
        if group.len() + picked.len() >= MAX_GROUP {
            break;
        }
        let free = pending.keys.iter().all(|k| !busy.contains(k) && !taken.contains(k.as_str()));
        if free {
            taken.extend(pending.keys.iter().map(String::as_str));
            picked.push(i);
        } else {
            // A later commit of the same key must not overtake this one.
            taken.extend(pending.keys.iter().map(String::as_str));
        }
    }
    for i in picked.into_iter().rev() {
        if let Some(pending) = waiting.remove(i) {
            group.push(pending);
        }
    }
    group.reverse();
    group
}

/// Writes a group and answers each commit. A group the database refuses as a whole (a
/// concurrent writer in another process tripped a unique key, or the connection failed) is
/// written again one commit at a time, each with its own verdict.
async fn write_group(writer: &Writer, group: Vec<Pending>) {
    metrics::histogram!("sagaflow_group_commit_size").record(group.len() as f64);
    if group.len() > 1 {
        match write_together(writer, &group).await {
            Ok(verdicts) => {
                for (pending, verdict) in group.into_iter().zip(verdicts) {
                    let _ = pending.reply.send(verdict);
                }
                return;
            }
            Err(err) => {
                tracing::debug!(error = %err, commits = group.len(), "group refused as a whole; writing its commits alone")
            }
        }
    }
    let alone = group.into_iter().map(|pending| async move {
        let notice = notice_of(&writer.instance, pending.commit.appends.iter().map(|a| a.stream_id.as_str()));
        let verdict = commit::write(&writer.pool, &pending.commit, notice.as_deref()).await;
        let _ = pending.reply.send(verdict);
    });
    futures::future::join_all(alone).await;
}

/// One statement for the whole group; a verdict per commit, in the group's order.
async fn write_together(writer: &Writer, group: &[Pending]) -> Result<Vec<Result<CommitResult>>> {
    let mut columns = Columns::default();
    for pending in group {
        columns.add(&pending.commit);
    }
    let notice = notice_of(&writer.instance, columns.streams.iter().copied());
    let rows = sqlx::query(group_commit_sql())
        .bind(&columns.streams)
        .bind(&columns.expected)
        .bind(&columns.owner)
        .bind(&columns.ids)
        .bind(&columns.types)
        .bind(&columns.data)
        .bind(&columns.metadata)
        .bind(&columns.append_commit)
        .bind(&columns.processed_commit)
        .bind(&columns.consumers)
        .bind(&columns.message_ids)
        .bind(&columns.outbox_commit)
        .bind(&columns.topics)
        .bind(&columns.keys)
        .bind(&columns.payloads)
        .bind(&columns.headers)
        .bind(&columns.set_commit)
        .bind(&columns.set)
        .bind(&columns.due)
        .bind(&columns.cancel_commit)
        .bind(&columns.cancel)
        .bind(columns.commits)
        .bind(notice)
        .fetch_all(&writer.pool)
        .await?;
    // Rows come in commit order: each append's, then "processed" for a message seen before.
    let mut appends: Vec<Vec<&PgRow>> = vec![Vec::new(); group.len()];
    let mut seen = vec![false; group.len()];
    for row in &rows {
        let c = usize::try_from(row.try_get::<i32, _>("c")?).unwrap_or(0);
        let Some(n) = c.checked_sub(1).filter(|n| *n < group.len()) else {
            return Err(Error::Invalid(format!("the group statement answered for commit {c} of {}", group.len())));
        };
        match row.try_get::<Option<i64>, _>("i")? {
            Some(_) => appends[n].push(row),
            None => seen[n] = true,
        }
    }
    let mut verdicts = Vec::with_capacity(group.len());
    for ((pending, appends), seen) in group.iter().zip(&appends).zip(seen) {
        let verdict = match commit::verdicts(appends, &pending.commit)? {
            Outcome::Refused(err) => Err(err),
            Outcome::Written(_) if seen => Err(already_processed(&pending.commit)),
            Outcome::Written(result) => Ok(result),
            Outcome::LostRace => Err(Error::Invalid("a concurrent writer took the stream's next version".into())),
        };
        verdicts.push(verdict);
    }
    Ok(verdicts)
}

fn already_processed(commit: &Commit) -> Error {
    let (consumer, message_id) =
        commit.processed.as_ref().map(|p| (p.consumer.clone(), p.message_id.clone())).unwrap_or_default();
    Error::AlreadyProcessed { consumer, message_id }
}
