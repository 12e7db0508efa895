//! How a group of commits becomes one SQLite transaction. Every check is made in memory:
//! stream versions are held by the writer, and event ids and processed messages are probed once
//! for the whole group. Each commit gets its own verdict, a failed one writes nothing, and what
//! the accepted commits write goes in with one statement per table, its rows passed as one
//! JSON array. A group costs a fixed number of statements however many commits it holds.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, TransactionBehavior};
use serde::Serialize;
use uuid::Uuid;

use super::writer_state::WriterState;
use crate::error::{Error, Result};
use crate::model::{
    i64_of, u64_of, AppendResult, Commit, CommitResult, CommittedOutbox, OutboxMessage, OutgoingMessage, StreamAppend,
    TimerChange,
};

/// Each commit's verdict, in the group's order.
pub(super) struct Written {
    pub verdicts: Vec<Result<CommitResult>>,
}

/// Writes `group` in one transaction. `Err` means the transaction failed as a whole and wrote
/// nothing; the writer's memory is then read again.
pub(super) fn write_group(connection: &mut Connection, state: &mut WriterState, group: &[&Commit]) -> Result<Written> {
    let written = write(connection, state, group);
    if written.is_err() {
        state.reload(connection)?;
    }
    written
}

fn write(connection: &mut Connection, state: &mut WriterState, group: &[&Commit]) -> Result<Written> {
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
fn load_versions(connection: &Connection, state: &mut WriterState, group: &[&Commit]) -> Result<u64> {
    let unknown: HashSet<&str> =
        appends(group).map(|a| a.stream_id.as_str()).filter(|s| state.version(s).is_none()).collect();
    if unknown.is_empty() {
        return Ok(0);
    }
    let ids = serde_json::to_string(&unknown).unwrap_or_default();
    let mut statement = connection.prepare_cached(
        "SELECT stream_id, version FROM streams WHERE stream_id IN (SELECT value FROM json_each(?1))",
    )?;
    let found: HashMap<String, i64> =
        statement.query_map([ids], |row| Ok((row.get(0)?, row.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
    state.know(unknown.iter().map(|stream| (*stream, found.get(*stream).map_or(0, |v| u64_of(*v)))));
    Ok(1)
}

/// The group's event ids already stored: id → (stream, position).
type Stored = HashMap<Uuid, (String, u64)>;

fn stored_event_ids(connection: &Connection, group: &[&Commit]) -> Result<(Stored, u64)> {
    let ids: Vec<String> = appends(group).flat_map(|a| a.events.iter().map(|e| e.event_id.to_string())).collect();
    if ids.is_empty() {
        return Ok((Stored::new(), 0));
    }
    let mut statement = connection.prepare_cached(
        "SELECT event_id, stream_id, global_position FROM events WHERE event_id IN (SELECT value FROM json_each(?1))",
    )?;
    let rows = statement.query_map([serde_json::to_string(&ids).unwrap_or_default()], |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?, row.get::<_, i64>(2)?))
    })?;
    let mut stored = Stored::new();
    for row in rows {
        let (id, stream, position) = row?;
        let id = Uuid::parse_str(&id).map_err(|e| Error::Invalid(format!("stored event id is corrupt: {e}")))?;
        stored.insert(id, (stream, u64_of(position)));
    }
    Ok((stored, 1))
}

/// The group's processed messages already recorded, as (consumer, message id).
type Processed = HashSet<(String, String)>;

fn processed_before(connection: &Connection, group: &[&Commit]) -> Result<(Processed, u64)> {
    let keys: Vec<(&str, &str)> = group
        .iter()
        .filter_map(|c| c.processed.as_ref())
        .map(|p| (p.consumer.as_str(), p.message_id.as_str()))
        .collect();
    if keys.is_empty() {
        return Ok((Processed::new(), 0));
    }
    let mut statement = connection.prepare_cached(
        "SELECT consumer, message_id FROM processed_messages
         WHERE (consumer, message_id) IN (SELECT value->>0, value->>1 FROM json_each(?1))",
    )?;
    let found = statement
        .query_map([serde_json::to_string(&keys).unwrap_or_default()], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<rusqlite::Result<Processed>>()?;
    Ok((found, 1))
}

fn appends<'a>(group: &'a [&'a Commit]) -> impl Iterator<Item = &'a StreamAppend> {
    group.iter().flat_map(|c| c.appends.iter())
}

/// An event row: position, id, stream, version, type, data, metadata.
type EventRow<'a> = (i64, String, &'a str, i64, &'a str, &'a serde_json::Value, &'a serde_json::Value);

/// What the accepted commits of a group write, gathered so that each table takes one statement.
struct Plan<'a> {
    now: DateTime<Utc>,
    /// Streams written → their new version.
    versions: HashMap<&'a str, u64>,
    events: Vec<EventRow<'a>>,
    /// Event ids written by earlier commits of the group → (stream, position).
    new_ids: HashMap<Uuid, (&'a str, u64)>,
    processed: Vec<(&'a str, &'a str)>,
    outbox: Vec<(i64, &'a OutgoingMessage)>,
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
        commit: &'a Commit,
        state: &WriterState,
        stored: &Stored,
        processed: &Processed,
    ) -> Result<CommitResult> {
        let mut results = Vec::with_capacity(commit.appends.len());
        let mut events = Vec::new();
        let mut versions = Vec::new();
        let mut position = self.last_position;
        for append in &commit.appends {
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
            for event in &append.events {
                version += 1;
                position += 1;
                positions.push(u64_of(position));
                events.push((
                    position,
                    event.event_id.to_string(),
                    append.stream_id.as_str(),
                    i64_of(version),
                    event.event_type.as_str(),
                    &event.data,
                    &event.metadata,
                ));
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
        for row in &events {
            if let Ok(id) = Uuid::parse_str(&row.1) {
                self.new_ids.insert(id, (row.2, u64_of(row.0)));
            }
        }
        self.events.extend(events);
        self.versions.extend(versions);
        for message in &commit.outbox {
            self.last_outbox_id += 1;
            self.outbox.push((self.last_outbox_id, message));
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
        let mut run = |sql: &str, rows: String, with_now: bool| -> Result<()> {
            let mut statement = connection.prepare_cached(sql)?;
            if with_now {
                statement.execute(params![rows, now])?;
            } else {
                statement.execute([rows])?;
            }
            statements += 1;
            Ok(())
        };
        if !self.versions.is_empty() {
            // Before the events: they reference their stream's row.
            run(
                "INSERT INTO streams (stream_id, version) SELECT value->>0, value->>1 FROM json_each(?1) WHERE true
                 ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version",
                json(&self.versions.iter().collect::<Vec<_>>()),
                false,
            )?;
        }
        if !self.events.is_empty() {
            run(
                "INSERT INTO events (global_position, event_id, stream_id, version, event_type, data, metadata, recorded_at)
                 SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->5, value->6, ?2 FROM json_each(?1)",
                json(&self.events),
                true,
            )?;
        }
        if !self.processed.is_empty() {
            run(
                "INSERT INTO processed_messages (consumer, message_id, processed_at)
                 SELECT value->>0, value->>1, ?2 FROM json_each(?1)",
                json(&self.processed),
                true,
            )?;
        }
        if !self.outbox.is_empty() {
            let rows: Vec<_> =
                self.outbox.iter().map(|(id, m)| (id, &m.topic, &m.key, hex::encode(&m.payload), &m.headers)).collect();
            run(
                "INSERT INTO outbox (id, topic, msg_key, payload, headers, created_at)
                 SELECT value->>0, value->>1, value->>2, unhex(value->>3), value->4, ?2 FROM json_each(?1)",
                json(&rows),
                true,
            )?;
        }
        let set: Vec<(&str, i64)> = self.timers.iter().filter_map(|(key, due)| due.map(|due| (*key, due))).collect();
        if !set.is_empty() {
            run(
                "INSERT INTO timers (timer_key, due_at) SELECT value->>0, value->>1 FROM json_each(?1) WHERE true
                 ON CONFLICT (timer_key) DO UPDATE SET due_at = excluded.due_at",
                json(&set),
                false,
            )?;
        }
        let cancelled: Vec<&str> = self.timers.iter().filter(|(_, due)| due.is_none()).map(|(key, _)| *key).collect();
        if !cancelled.is_empty() {
            run("DELETE FROM timers WHERE timer_key IN (SELECT value FROM json_each(?1))", json(&cancelled), false)?;
        }
        Ok(statements)
    }

    /// The group's outbox messages as a relay reads them.
    fn committed_outbox(&self) -> Vec<OutboxMessage> {
        let created_at = DateTime::from_timestamp_micros(self.now.timestamp_micros()).unwrap_or(self.now);
        self.outbox
            .iter()
            .map(|(id, message)| OutboxMessage {
                id: u64_of(*id),
                transaction_id: u64_of(*id),
                message: (*message).clone(),
                created_at,
            })
            .collect()
    }
}

fn json<T: Serialize + ?Sized>(rows: &T) -> String {
    serde_json::to_string(rows).unwrap_or_default()
}
