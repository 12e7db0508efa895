//! Writing one commit as one SQL statement (`commit.sql`): its parts bound as arrays, so a
//! commit is one round trip whatever its size, and mapping what the statement reports (or
//! the unique key a concurrent writer tripped) to the store's typed errors.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgDatabaseError, PgRow};
use sqlx::{Postgres, Row};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::model::{i64_of, u64_of, AppendResult, Commit, CommitResult, ExpectedVersion, TimerChange};

const COMMIT_SQL: &str = include_str!("commit.sql");
/// The checks every append gets, in both the one-commit and the group statement.
const APPEND_CHECKS: &str = include_str!("append_checks.sql");
/// Where a statement takes [`APPEND_CHECKS`].
const APPEND_CHECKS_AT: &str = "-- include: append_checks";

/// `sql` with the shared append checks in place.
pub(super) fn with_append_checks(sql: &str) -> String {
    sql.replace(APPEND_CHECKS_AT, APPEND_CHECKS)
}

/// The parts of `commit.sql` a commit may leave out, as bits of a variant's index.
const OPTIONAL: [&str; 5] = ["events", "processed", "outbox", "timers_set", "timers_cancelled"];

/// The commit statement with only the parts a commit needs: `parts` has bit `i` set for
/// `OPTIONAL[i]`. Built once per variant.
fn statement(parts: usize) -> &'static str {
    static VARIANTS: OnceLock<Vec<String>> = OnceLock::new();
    let variants = VARIANTS.get_or_init(|| {
        let sql = with_append_checks(COMMIT_SQL);
        let mut sections: HashMap<&str, String> = HashMap::new();
        let mut current = "preamble";
        for line in sql.lines() {
            match line.strip_prefix("-- part: ") {
                Some(name) => current = name.trim(),
                None => sections.entry(current).or_default().push_str(&format!("{line}\n")),
            }
        }
        (0..1 << OPTIONAL.len())
            .map(|mask: usize| {
                let mut sql = sections.get("head").cloned().unwrap_or_default();
                for (bit, part) in OPTIONAL.iter().enumerate() {
                    if mask & (1 << bit) != 0 {
                        sql.push_str(sections.get(part).map_or("", String::as_str));
                    }
                }
                let positions = if mask & 1 != 0 {
                    "ARRAY(SELECT r.global_position FROM inserted r WHERE r.stream_id = v.stream ORDER BY r.version)"
                } else {
                    "'{}'::bigint[]"
                };
                sql.push_str(
                    &sections.get("tail").cloned().unwrap_or_default().replace("{inserted_positions}", positions),
                );
                sql
            })
            .collect()
    });
    variants.get(parts).map_or("", String::as_str)
}

/// How often a commit whose `Any` append lost a race for the stream's next version is
/// run again.
const ANY_RETRIES: usize = 10;

/// Commits' rows as the statements bind them, one array per column; the `*_commit` arrays
/// say which commit (1-based) each row belongs to, for a group of commits in one statement.
#[derive(Default)]
pub(super) struct Columns<'a> {
    pub(super) commits: i32,
    pub(super) streams: Vec<&'a str>,
    pub(super) expected: Vec<i64>,
    pub(super) append_commit: Vec<i32>,
    /// The append (1-based) of each event.
    pub(super) owner: Vec<i32>,
    pub(super) ids: Vec<Uuid>,
    pub(super) types: Vec<&'a str>,
    pub(super) data: Vec<&'a serde_json::Value>,
    pub(super) metadata: Vec<&'a serde_json::Value>,
    pub(super) processed_commit: Vec<i32>,
    pub(super) consumers: Vec<&'a str>,
    pub(super) message_ids: Vec<&'a str>,
    pub(super) outbox_commit: Vec<i32>,
    pub(super) topics: Vec<&'a str>,
    pub(super) keys: Vec<&'a str>,
    pub(super) payloads: Vec<&'a [u8]>,
    pub(super) headers: Vec<serde_json::Value>,
    pub(super) set_commit: Vec<i32>,
    pub(super) set: Vec<&'a str>,
    pub(super) due: Vec<DateTime<Utc>>,
    pub(super) cancel_commit: Vec<i32>,
    pub(super) cancel: Vec<&'a str>,
}

impl<'a> Columns<'a> {
    /// Adds the rows of the next commit.
    pub(super) fn add(&mut self, commit: &'a Commit) {
        self.commits += 1;
        let c = self.commits;
        for append in &commit.appends {
            self.streams.push(&append.stream_id);
            self.expected.push(match append.expected {
                ExpectedVersion::Any => -1_i64,
                ExpectedVersion::NoStream => 0,
                ExpectedVersion::Exact(v) => i64_of(v),
            });
            self.append_commit.push(c);
            let owner = i32::try_from(self.streams.len()).unwrap_or(i32::MAX);
            for event in &append.events {
                self.owner.push(owner);
                self.ids.push(event.event_id);
                self.types.push(&event.event_type);
                self.data.push(&event.data);
                self.metadata.push(&event.metadata);
            }
        }
        if let Some(processed) = &commit.processed {
            self.processed_commit.push(c);
            self.consumers.push(&processed.consumer);
            self.message_ids.push(&processed.message_id);
        }
        for message in &commit.outbox {
            self.outbox_commit.push(c);
            self.topics.push(&message.topic);
            self.keys.push(&message.key);
            self.payloads.push(&message.payload);
            self.headers.push(serde_json::to_value(&message.headers).unwrap_or_default());
        }
        // The last change per timer key wins, as if applied in order.
        let mut timers: BTreeMap<&str, Option<DateTime<Utc>>> = BTreeMap::new();
        for change in &commit.timers {
            match change {
                TimerChange::Set { key, due_at } => timers.insert(key, Some(*due_at)),
                TimerChange::Cancel { key } => timers.insert(key, None),
            };
        }
        for (key, due) in timers {
            match due {
                Some(due) => {
                    self.set_commit.push(c);
                    self.set.push(key);
                    self.due.push(due);
                }
                None => {
                    self.cancel_commit.push(c);
                    self.cancel.push(key);
                }
            }
        }
    }
}

/// What went wrong, in the statement's words.
pub(super) enum Outcome {
    Written(CommitResult),
    Refused(Error),
    /// A concurrent writer took the next version of a stream appended to with `Any`.
    LostRace,
}

/// Writes `commit` on `executor`, running it again when an `Any` append lost a race (only
/// outside an explicit transaction: inside one, the race fails the transaction).
/// `notice`, when given, is sent to other processes when the commit's transaction commits.
pub(super) async fn write<'c, E>(executor: E, commit: &Commit, notice: Option<&str>) -> Result<CommitResult>
where
    E: sqlx::Executor<'c, Database = Postgres> + Copy,
{
    for _ in 0..ANY_RETRIES {
        match write_once(executor, commit, notice).await? {
            Outcome::Written(result) => return Ok(result),
            Outcome::Refused(err) => return Err(err),
            Outcome::LostRace => continue,
        }
    }
    Err(Error::Invalid("appends with any version kept losing races for the stream's next version".into()))
}

/// Writes `commit` once inside a caller's transaction.
pub(super) async fn write_in<'c, E>(executor: E, commit: &Commit) -> Result<CommitResult>
where
    E: sqlx::Executor<'c, Database = Postgres>,
{
    match write_once(executor, commit, None).await? {
        Outcome::Written(result) => Ok(result),
        Outcome::Refused(err) => Err(err),
        Outcome::LostRace => Err(Error::Invalid("a concurrent writer took the stream's next version".into())),
    }
}

async fn write_once<'c, E>(executor: E, commit: &Commit, notice: Option<&str>) -> Result<Outcome>
where
    E: sqlx::Executor<'c, Database = Postgres>,
{
    let mut columns = Columns::default();
    columns.add(commit);
    let Columns {
        streams,
        expected,
        owner,
        ids,
        types,
        data,
        metadata,
        topics,
        keys,
        payloads,
        headers,
        set,
        due,
        cancel,
        ..
    } = columns;
    let parts = usize::from(!ids.is_empty())
        | usize::from(commit.processed.is_some()) << 1
        | usize::from(!topics.is_empty()) << 2
        | usize::from(!set.is_empty()) << 3
        | usize::from(!cancel.is_empty()) << 4;
    let rows = sqlx::query(statement(parts))
        .bind(&streams)
        .bind(&expected)
        .bind(&owner)
        .bind(&ids)
        .bind(&types)
        .bind(&data)
        .bind(&metadata)
        .bind(commit.processed.as_ref().map(|p| p.consumer.as_str()))
        .bind(commit.processed.as_ref().map(|p| p.message_id.as_str()))
        .bind(&topics)
        .bind(&keys)
        .bind(&payloads)
        .bind(&headers)
        .bind(&set)
        .bind(&due)
        .bind(&cancel)
        .bind(notice)
        .fetch_all(executor)
        .await;
    match rows {
        Ok(rows) => verdicts(&rows.iter().collect::<Vec<_>>(), commit),
        Err(err) => refusal(err, commit),
    }
}

/// The statement's verdict per append: the first refusal (in request order), or where
/// every append landed. `rows` are the commit's append rows, in order.
pub(super) fn verdicts(rows: &[&PgRow], commit: &Commit) -> Result<Outcome> {
    let mut appends = Vec::with_capacity(rows.len());
    for (row, append) in rows.iter().zip(&commit.appends) {
        let at_version = u64_of(row.try_get("at_version")?);
        let failure: Option<String> = row.try_get("failure")?;
        let stream = append.stream_id.clone();
        match failure.as_deref() {
            None => {}
            Some("duplicate") => {
                let id: Option<String> = row.try_get("stored_elsewhere")?;
                let event_id = id.and_then(|id| Uuid::parse_str(&id).ok()).unwrap_or_default();
                return Ok(Outcome::Refused(Error::DuplicateEventId { event_id }));
            }
            Some("partial") => return Ok(Outcome::Refused(Error::PartialIdempotentAppend { stream })),
            Some(_) => {
                let actual = (at_version > 0).then_some(at_version);
                return Ok(Outcome::Refused(Error::WrongExpectedVersion { stream, expected: append.expected, actual }));
            }
        }
        let already_stored: bool = row.try_get("already_stored")?;
        let positions: Vec<i64> = row.try_get("positions")?;
        let written = if already_stored { 0 } else { u64_of(row.try_get("n_new")?) };
        appends.push(AppendResult {
            stream_id: stream,
            next_expected_version: at_version + written,
            positions: positions.into_iter().map(u64_of).collect(),
            already_stored,
        });
    }
    Ok(Outcome::Written(CommitResult { appends }))
}

/// Maps a unique key a concurrent writer tripped to the refusal it means.
fn refusal(err: sqlx::Error, commit: &Commit) -> Result<Outcome> {
    let sqlx::Error::Database(db) = &err else { return Err(Error::Database(err)) };
    if !db.is_unique_violation() {
        return Err(Error::Database(err));
    }
    // DETAIL: Key (stream_id, version)=(<stream>, <version>) already exists.
    let detail = db.try_downcast_ref::<PgDatabaseError>().and_then(PgDatabaseError::detail).unwrap_or_default();
    let key = detail.split_once(")=(").and_then(|(_, rest)| rest.rsplit_once(") already exists")).map(|(k, _)| k);
    Ok(match db.constraint() {
        Some("processed_messages_pkey") => match &commit.processed {
            Some(p) => Outcome::Refused(Error::AlreadyProcessed {
                consumer: p.consumer.clone(),
                message_id: p.message_id.clone(),
            }),
            None => return Err(Error::Database(err)),
        },
        Some("events_event_id_key") => {
            let event_id = key.and_then(|k| Uuid::parse_str(k).ok()).unwrap_or_default();
            Outcome::Refused(Error::DuplicateEventId { event_id })
        }
        Some("events_stream_version_key") => {
            let (stream, taken) = key.and_then(|k| k.rsplit_once(", ")).unwrap_or_default();
            let append = commit.appends.iter().find(|a| a.stream_id == stream);
            match append.map(|a| a.expected) {
                Some(ExpectedVersion::Any) => Outcome::LostRace,
                expected => Outcome::Refused(Error::WrongExpectedVersion {
                    stream: stream.to_owned(),
                    expected: expected.unwrap_or(ExpectedVersion::Any),
                    actual: taken.parse::<u64>().ok(),
                }),
            }
        }
        _ => return Err(Error::Database(err)),
    })
}
