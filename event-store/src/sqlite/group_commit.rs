//! How a group of commits becomes one SQLite transaction. Every check is made in memory:
//! stream versions are held by the writer, and event ids and processed messages are probed once
//! for the whole group. Each commit gets its own verdict, a failed one writes nothing, and what
//! the accepted commits write goes in with one statement per table, its rows' values bound
//! ([`super::bound_rows`]). A group costs a fixed number of statements for up to 32 rows a table.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use rusqlite::{Connection, TransactionBehavior};
use uuid::Uuid;

use super::bound_rows;
use super::encoded_commit::EncodedCommit;
use super::writer_state::WriterState;
use crate::error::{Error, Result};
use crate::model::{
    i64_of, u64_of, AppendResult, CommitResult, CommittedOutbox, OutboxMessage, OutgoingMessage, StreamAppend,
    TimerChange,
};

/// The versions of a group's streams (one column a row: the stream).
const STREAM_VERSIONS: &str = "SELECT stream_id, version FROM streams WHERE stream_id IN ({rows})";
/// The group's event ids already stored (one column a row: the id).
const STORED_EVENT_IDS: &str = "SELECT event_id, stream_id, global_position FROM events WHERE event_id IN ({rows})";
/// The group's messages already processed (two columns a row: message id, consumer).
const PROCESSED_BEFORE: &str =
    "SELECT consumer, message_id FROM processed_messages WHERE (message_id, consumer) IN (VALUES {rows})";

/// Each commit's verdict, in the group's order.
pub(super) struct Written {
    pub verdicts: Vec<Result<CommitResult>>,
}

/// Writes `group` in one transaction. `Err` means the transaction failed as a whole and wrote
/// nothing; the writer's memory is then read again.
pub(super) fn write_group(
    connection: &mut Connection,
    state: &mut WriterState,
    group: &[&EncodedCommit],
) -> Result<Written> {
    let written = write(connection, state, group);
    if written.is_err() {
        state.reload(connection)?;
    }
    written
}

fn write(connection: &mut Connection, state: &mut WriterState, group: &[&EncodedCommit]) -> Result<Written> {
    let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut statements = 2; // BEGIN, COMMIT
    statements += load_versions(&tx, state, group)?;
    let (stored, probed) = stored_event_ids(&tx, group)?;
    let (processed, probed_processed) = processed_before(&tx, group)?;
    statements += probed + probed_processed;

    let now = Utc::now();
    let mut plan = Plan::new(state, now);
    let verdicts: Vec<Result<CommitResult>> =
        group.iter().map(|commit| plan.take(commit, state, &stored, &processed)).collect();
    statements += plan.write(&tx)?;
    tx.commit()?;
    state.statements.add(statements);

    let after = state.last_outbox_id;
    state.last_position = plan.last_position;
    state.last_outbox_id = plan.last_outbox_id;
    state.know(plan.versions.iter().map(|(stream, version)| (*stream, *version)));
    if !plan.outbox.is_empty() && state.tap.is_open() {
        state.tap.send(CommittedOutbox { after: u64_of(after), messages: plan.committed_outbox() });
    }
    Ok(Written { verdicts })
}

/// Reads the versions of the group's streams the writer does not know; returns the statements run.
fn load_versions(connection: &Connection, state: &mut WriterState, group: &[&EncodedCommit]) -> Result<u64> {
    let unknown: Vec<&str> = appends(group)
        .map(|a| a.stream_id.as_str())
        .filter(|s| state.version(s).is_none())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    if unknown.is_empty() {
        return Ok(0);
    }
    let (found, statements) = bound_rows::query(
        connection,
        STREAM_VERSIONS,
        &unknown,
        |stream| [stream],
        |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?)),
    )?;
    let found: HashMap<String, i64> = found.into_iter().collect();
    state.know(unknown.iter().map(|stream| (*stream, found.get(*stream).map_or(0, |v| u64_of(*v)))));
    Ok(statements)
}

/// The group's event ids already stored: id → (stream, position).
type Stored = HashMap<Uuid, (String, u64)>;

fn stored_event_ids(connection: &Connection, group: &[&EncodedCommit]) -> Result<(Stored, u64)> {
    let ids: Vec<&str> = group.iter().flat_map(|c| c.events.iter().flatten().map(|e| e.id.as_str())).collect();
    if ids.is_empty() {
        return Ok((Stored::new(), 0));
    }
    let (rows, statements) = bound_rows::query(
        connection,
        STORED_EVENT_IDS,
        &ids,
        |id| [id],
        |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?, row.get::<_, i64>(2)?)),
    )?;
    let mut stored = Stored::new();
    for (id, stream, position) in rows {
        let id = Uuid::parse_str(&id).map_err(|e| Error::Invalid(format!("stored event id is corrupt: {e}")))?;
        stored.insert(id, (stream, u64_of(position)));
    }
    Ok((stored, statements))
}

/// The group's processed messages already recorded, as (consumer, message id).
type Processed = HashSet<(String, String)>;

fn processed_before(connection: &Connection, group: &[&EncodedCommit]) -> Result<(Processed, u64)> {
    let keys: Vec<(&str, &str)> = group
        .iter()
        .filter_map(|c| c.commit.processed.as_ref())
        .map(|p| (p.consumer.as_str(), p.message_id.as_str()))
        .collect();
    if keys.is_empty() {
        return Ok((Processed::new(), 0));
    }
    let (found, statements) = bound_rows::query(
        connection,
        PROCESSED_BEFORE,
        &keys,
        |(consumer, message_id)| [message_id, consumer],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    Ok((found.into_iter().collect(), statements))
}

fn appends<'a>(group: &'a [&'a EncodedCommit]) -> impl Iterator<Item = &'a StreamAppend> {
    group.iter().flat_map(|c| c.commit.appends.iter())
}

/// An event row: position, id, stream, version, type, data, metadata.
type EventRow<'a> = (i64, &'a str, &'a str, i64, &'a str, &'a str, &'a str);

/// What the accepted commits of a group write, gathered so that each table takes one statement.
struct Plan<'a> {
    now: DateTime<Utc>,
    /// Streams written → their new version.
    versions: HashMap<&'a str, u64>,
    events: Vec<EventRow<'a>>,
    /// Event ids written by earlier commits of the group → (stream, position).
    new_ids: HashMap<Uuid, (&'a str, u64)>,
    processed: Vec<(&'a str, &'a str)>,
    /// Each message with its id and its headers as stored.
    outbox: Vec<(i64, &'a OutgoingMessage, &'a str)>,
    /// Each timer's last change in the group: its due time, or `None` when cancelled.
    timers: BTreeMap<&'a str, Option<i64>>,
    last_position: i64,
    last_outbox_id: i64,
}

impl<'a> Plan<'a> {
    fn new(state: &WriterState, now: DateTime<Utc>) -> Self {
        Self {
            now,
            versions: HashMap::new(),
            events: Vec::new(),
            new_ids: HashMap::new(),
            processed: Vec::new(),
            outbox: Vec::new(),
            timers: BTreeMap::new(),
            last_position: state.last_position,
            last_outbox_id: state.last_outbox_id,
        }
    }

    /// Checks one commit against the database and the commits before it in the group, and
    /// takes in what it writes when it passes: its verdict.
    fn take(
        &mut self,
        encoded: &'a EncodedCommit,
        state: &WriterState,
        stored: &Stored,
        processed: &Processed,
    ) -> Result<CommitResult> {
        let commit = &encoded.commit;
        let mut results = Vec::with_capacity(commit.appends.len());
        let mut events = Vec::new();
        let mut versions = Vec::new();
        let mut new_ids = Vec::new();
        let mut position = self.last_position;
        for (append, encoded_events) in commit.appends.iter().zip(&encoded.events) {
            let current = self
                .versions
                .get(append.stream_id.as_str())
                .copied()
                .or_else(|| state.version(&append.stream_id))
                .unwrap_or(0);
            let mut already = Vec::new();
            for event in &append.events {
                let found = self
                    .new_ids
                    .get(&event.event_id)
                    .map(|(stream, at)| (*stream, *at))
                    .or_else(|| stored.get(&event.event_id).map(|(stream, at)| (stream.as_str(), *at)));
                match found {
                    Some((stream, at)) if stream == append.stream_id => already.push(at),
                    Some(_) => return Err(Error::DuplicateEventId { event_id: event.event_id }),
                    None => {}
                }
            }
            if !append.events.is_empty() && already.len() == append.events.len() {
                results.push(AppendResult {
                    stream_id: append.stream_id.clone(),
                    next_expected_version: current,
                    positions: already,
                    already_stored: true,
                });
                continue;
            }
            if !already.is_empty() {
                return Err(Error::PartialIdempotentAppend { stream: append.stream_id.clone() });
            }
            let actual = (current > 0).then_some(current);
            if !append.expected.matches(actual) {
                return Err(Error::WrongExpectedVersion {
                    stream: append.stream_id.clone(),
                    expected: append.expected,
                    actual,
                });
            }
            let mut version = current;
            let mut positions = Vec::with_capacity(append.events.len());
            for (event, stored) in append.events.iter().zip(encoded_events) {
                version += 1;
                position += 1;
                positions.push(u64_of(position));
                events.push((
                    position,
                    stored.id.as_str(),
                    append.stream_id.as_str(),
                    i64_of(version),
                    event.event_type.as_str(),
                    stored.data.as_str(),
                    stored.metadata.as_str(),
                ));
                new_ids.push(event.event_id);
            }
            if !append.events.is_empty() {
                versions.push((append.stream_id.as_str(), version));
            }
            results.push(AppendResult {
                stream_id: append.stream_id.clone(),
                next_expected_version: version,
                positions,
                already_stored: false,
            });
        }
        if let Some(message) = &commit.processed {
            let key = (message.consumer.as_str(), message.message_id.as_str());
            let seen = processed.contains(&(key.0.to_owned(), key.1.to_owned())) || self.processed.contains(&key);
            if seen {
                return Err(Error::AlreadyProcessed {
                    consumer: message.consumer.clone(),
                    message_id: message.message_id.clone(),
                });
            }
            self.processed.push(key);
        }
        // Accepted: take it in.
        self.last_position = position;
        for (id, row) in new_ids.into_iter().zip(&events) {
            self.new_ids.insert(id, (row.2, u64_of(row.0)));
        }
        self.events.extend(events);
        self.versions.extend(versions);
        for (message, headers) in commit.outbox.iter().zip(&encoded.headers) {
            self.last_outbox_id += 1;
            self.outbox.push((self.last_outbox_id, message, headers.as_str()));
        }
        for timer in &commit.timers {
            match timer {
                TimerChange::Set { key, due_at } => self.timers.insert(key, Some(due_at.timestamp_micros())),
                TimerChange::Cancel { key } => self.timers.insert(key, None),
            };
        }
        Ok(CommitResult { appends: results })
    }

    /// Writes what the accepted commits write; returns the statements run.
    fn write(&self, connection: &Connection) -> Result<u64> {
        let now = self.now.timestamp_micros();
        let mut statements = 0;
        if !self.versions.is_empty() {
            // Before the events: they reference their stream's row.
            let versions: Vec<(&str, i64)> = self.versions.iter().map(|(s, v)| (*s, i64_of(*v))).collect();
            statements += bound_rows::execute(
                connection,
                "INSERT INTO streams (stream_id, version) VALUES {rows}
                 ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version",
                &versions,
                |(stream, version)| [stream, version],
            )?;
        }
        statements += bound_rows::execute(
            connection,
            "INSERT INTO events (global_position, event_id, stream_id, version, event_type, data, metadata, recorded_at)
             VALUES {rows}",
            &self.events,
            |(position, id, stream, version, event_type, data, metadata)| {
                [position, id, stream, version, event_type, data, metadata, &now]
            },
        )?;
        statements += bound_rows::execute(
            connection,
            "INSERT INTO processed_messages (consumer, message_id, processed_at) VALUES {rows}",
            &self.processed,
            |(consumer, message_id)| [consumer, message_id, &now],
        )?;
        statements += bound_rows::execute(
            connection,
            "INSERT INTO outbox (id, topic, msg_key, payload, headers, created_at) VALUES {rows}",
            &self.outbox,
            |(id, message, headers)| [id, &message.topic, &message.key, &message.payload, headers, &now],
        )?;
        let set: Vec<(&str, i64)> = self.timers.iter().filter_map(|(key, due)| due.map(|due| (*key, due))).collect();
        statements += bound_rows::execute(
            connection,
            "INSERT INTO timers (timer_key, due_at) VALUES {rows}
             ON CONFLICT (timer_key) DO UPDATE SET due_at = excluded.due_at",
            &set,
            |(key, due)| [key, due],
        )?;
        let cancelled: Vec<&str> = self.timers.iter().filter(|(_, due)| due.is_none()).map(|(key, _)| *key).collect();
        statements +=
            bound_rows::execute(connection, "DELETE FROM timers WHERE timer_key IN ({rows})", &cancelled, |key| [key])?;
        Ok(statements)
    }

    /// The group's outbox messages as a relay reads them.
    fn committed_outbox(&self) -> Vec<OutboxMessage> {
        let created_at = DateTime::from_timestamp_micros(self.now.timestamp_micros()).unwrap_or(self.now);
        self.outbox
            .iter()
            .map(|(id, message, _)| OutboxMessage {
                id: u64_of(*id),
                transaction_id: u64_of(*id),
                message: (*message).clone(),
                created_at,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each probe of the group commit, as run for three rows, with the columns a row has.
    const PROBES: [(&str, usize); 3] = [(STREAM_VERSIONS, 1), (STORED_EVENT_IDS, 1), (PROCESSED_BEFORE, 2)];

    #[test]
    fn every_probe_of_a_group_searches_an_index_and_scans_no_table() {
        let connection = Connection::open_in_memory().unwrap();
        for migration in crate::sqlite::MIGRATOR.iter() {
            connection.execute_batch(&migration.sql).unwrap();
        }
        for (probe, columns) in PROBES {
            let sql = bound_rows::with_rows(probe, columns, 3);
            let mut plan = connection.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let mut rows = plan.raw_query();
            let mut steps: Vec<String> = Vec::new();
            while let Some(row) = rows.next().unwrap() {
                steps.push(row.get(3).unwrap());
            }
            let scans_a_table = steps.iter().any(|step| {
                ["streams", "events", "processed_messages"]
                    .iter()
                    .any(|table| step.starts_with(&format!("SCAN {table}")))
            });
            assert!(steps.iter().any(|step| step.starts_with("SEARCH")) && !scans_a_table, "{sql}\n{steps:#?}");
        }
    }
}
