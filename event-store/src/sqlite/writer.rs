//! The one thread that writes the embedded database. Commits queue for it; each time it wakes
//! it takes every commit queued and writes them as one group, in one transaction with one
//! fsync ([`super::group_commit`]). Every other write (the relay's checkpoint, snapshots, the
//! saga index, retention) runs on the same thread between groups, so no writer ever waits on
//! SQLite's busy handler.

use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::encoded_commit::EncodedCommit;
use super::group_commit::{write_group, Written};
use super::writer_state::WriterState;
use crate::error::{Error, Result};
use crate::model::CommitResult;

/// At most this many commits share one transaction.
const MAX_GROUP: usize = 256;

/// A write other than a commit, run on the writer thread in its own transaction.
type Task = Box<dyn FnOnce(&mut Connection, &mut WriterState) + Send>;

enum Job {
    Commit { commit: Arc<EncodedCommit>, done: oneshot::Sender<Result<CommitResult>> },
    Task(Task),
}

/// The handle through which the store hands work to its writer thread. The thread ends when
/// the last handle is dropped.
#[derive(Clone)]
pub(crate) struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the writer thread on `connection`.
    pub(crate) fn start(connection: Connection, state: WriterState) -> Result<Self> {
        let (jobs, queue) = mpsc::channel();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || run(connection, state, &queue))
            .map_err(|e| Error::Invalid(format!("cannot start the SQLite writer thread: {e}")))?;
        Ok(Self { jobs })
    }

    /// Writes `commit` with whatever else is queued, and returns its own verdict.
    pub(crate) async fn commit(&self, commit: Arc<EncodedCommit>) -> Result<CommitResult> {
        let (done, verdict) = oneshot::channel();
        self.send(Job::Commit { commit, done })?;
        verdict.await.map_err(|_| gone())?
    }

    /// Runs `task` on the writer thread and returns what it returns.
    pub(crate) async fn run<T, F>(&self, task: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection, &mut WriterState) -> Result<T> + Send + 'static,
    {
        let (done, result) = oneshot::channel();
        self.send(Job::Task(Box::new(move |connection, state| {
            let _ = done.send(task(connection, state));
        })))?;
        result.await.map_err(|_| gone())?
    }

    fn send(&self, job: Job) -> Result<()> {
        self.jobs.send(job).map_err(|_| gone())
    }
}

fn gone() -> Error {
    Error::Invalid("the SQLite writer thread has stopped".into())
}

/// The writer thread: sleeps until work is queued, then writes all of it.
fn run(mut connection: Connection, mut state: WriterState, queue: &mpsc::Receiver<Job>) {
    let mut pace = Pace::default();
    while let Ok(first) = queue.recv() {
        let mut commits = Vec::new();
        let mut tasks = Vec::new();
        let mut job = Some(first);
        let deadline = pace.gather_until();
        while let Some(next) = job.take() {
            match next {
                Job::Commit { commit, done } => commits.push((commit, done)),
                Job::Task(task) => tasks.push(task),
            }
            if commits.len() < MAX_GROUP {
                job = match deadline.and_then(|d| d.checked_duration_since(Instant::now())) {
                    Some(left) => queue.recv_timeout(left).ok(),
                    None => queue.try_recv().ok(),
                };
            }
        }
        pace.wrote(commits.len());
        if !commits.is_empty() {
            state.statements.add_write_transaction();
            write_commits(&mut connection, &mut state, commits);
        }
        for task in tasks {
            state.statements.add_write_transaction();
            task(&mut connection, &mut state);
        }
    }
}

/// When the writer lets a group gather. A commit alone (nothing else is committing) is
/// written at once. Once groups show that commits run side by side, the writer writes at
/// most once per [`GROUP_INTERVAL`]: what arrives meanwhile shares the transaction and its
/// fsync, which is most of what a commit costs.
struct Pace {
    /// Moving share of recent groups that held more than one commit.
    shared: f32,
    last_write: Instant,
}

/// Under load, the shortest time between two group writes. 5 ms against 2 ms took the engine's
/// CPU per saga to ~0.85x and the fsyncs per saga at 200/s from 2.5 to 1.1, for ~27 ms more
/// latency per order saga (its eight commits each wait for the next write).
const GROUP_INTERVAL: Duration = Duration::from_millis(5);

impl Default for Pace {
    fn default() -> Self {
        Self { shared: 0.0, last_write: Instant::now() }
    }
}

impl Pace {
    fn gather_until(&self) -> Option<Instant> {
        (self.shared > 0.02).then_some(self.last_write + GROUP_INTERVAL)
    }

    fn wrote(&mut self, commits: usize) {
        self.shared = self.shared * 0.95 + if commits > 1 { 0.05 } else { 0.0 };
        self.last_write = Instant::now();
    }
}

/// Writes a group and answers each commit. When the group's transaction fails as a whole
/// (an I/O error, say), each commit is written again in a transaction of its own, so one bad
/// commit fails alone.
fn write_commits(
    connection: &mut Connection,
    state: &mut WriterState,
    commits: Vec<(Arc<EncodedCommit>, oneshot::Sender<Result<CommitResult>>)>,
) {
    let group: Vec<&EncodedCommit> = commits.iter().map(|(commit, _)| commit.as_ref()).collect();
    match write_group(connection, state, &group) {
        Ok(Written { verdicts }) => {
            for ((_, done), verdict) in commits.into_iter().zip(verdicts) {
                let _ = done.send(verdict);
            }
        }
        Err(err) if commits.len() > 1 => {
            tracing::warn!(error = %err, commits = commits.len(), "group commit failed; writing its commits one by one");
            for (commit, done) in commits {
                let verdict = write_group(connection, state, &[commit.as_ref()])
                    .and_then(|Written { mut verdicts }| verdicts.pop().unwrap_or_else(|| Err(gone())));
                let _ = done.send(verdict);
            }
        }
        Err(err) => {
            if let Some((_, done)) = commits.into_iter().next() {
                let _ = done.send(Err(err));
            }
        }
    }
}
