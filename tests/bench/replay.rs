//! Replaying a long aggregate: load and fold 100,000 events, without and with a snapshot,
//! beside the raw limit (one SELECT of the same rows, decoded as JSON).

use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::{Aggregate, Repository};
use event_store::{EventStore, EventStoreExt, ExpectedVersion, NewEvent, Snapshot};
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Row};

/// A running total: the smallest aggregate, so the figure is the store and the fold.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Tally {
    total: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum TallyEvent {
    Counted { n: i64 },
}

impl Aggregate for Tally {
    const TYPE: &'static str = "tally";
    type Event = TallyEvent;
    type Command = ();
    type Error = String;

    fn apply(&mut self, TallyEvent::Counted { n }: &TallyEvent) {
        self.total += n;
    }

    fn handle(&self, (): &()) -> Result<Vec<TallyEvent>, String> {
        Ok(Vec::new())
    }
}

/// Milliseconds to load the aggregate: full replay, from a snapshot, and the raw SELECT.
pub struct ReplayFigures {
    pub events: u64,
    pub full_ms: f64,
    pub snapshot_ms: f64,
    pub raw_ms: f64,
}

pub async fn replay(store: Arc<dyn EventStore>, pool: PgPool, events: u64) -> ReplayFigures {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let stream = format!("tally-{id}");
    for chunk in 0..events.div_ceil(1000) {
        let batch = (0..1000.min(events - chunk * 1000))
            .map(|_| NewEvent::new("Counted", serde_json::json!({ "n": 1 })))
            .collect();
        store.append(&stream, ExpectedVersion::Any, batch).await.unwrap();
    }
    let repo = Repository::<Tally>::new(Arc::clone(&store));
    let mut full = Duration::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        let loaded = repo.load(&id).await.unwrap();
        full = full.min(started.elapsed());
        assert_eq!((loaded.version, loaded.state.total), (events, events as i64));
    }
    let state = serde_json::to_value(Tally { total: events as i64 }).unwrap();
    store
        .save_snapshot(Snapshot { stream_id: stream.clone(), version: events, state, taken_at: chrono::Utc::now() })
        .await
        .unwrap();
    let mut snapshot = Duration::MAX;
    for _ in 0..5 {
        let started = Instant::now();
        let loaded = repo.load(&id).await.unwrap();
        snapshot = snapshot.min(started.elapsed());
        assert_eq!(loaded.version, events);
    }
    let mut raw = Duration::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        let rows = sqlx::query("SELECT data FROM events WHERE stream_id = $1 ORDER BY version")
            .bind(&stream)
            .fetch_all(&pool)
            .await
            .unwrap();
        let total: i64 = rows.iter().map(|r| r.get::<serde_json::Value, _>("data")["n"].as_i64().unwrap_or(0)).sum();
        raw = raw.min(started.elapsed());
        assert_eq!(total, events as i64);
    }
    ReplayFigures {
        events,
        full_ms: full.as_secs_f64() * 1e3,
        snapshot_ms: snapshot.as_secs_f64() * 1e3,
        raw_ms: raw.as_secs_f64() * 1e3,
    }
}
