//! The event store's contract, run against every backend: each function takes a store
//! and a second handle on the same data (another process, where the backend allows).
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use engine::Repository;
use event_store::{
    AllPosition, Commit, Error, EventStore, EventStoreExt, ExpectedVersion, NewEvent, OutboxMessage, OutboxPosition,
    OutgoingMessage, Subscription, TimerChange,
};
use futures::TryStreamExt;
use serde_json::json;
use tokio::sync::Barrier;
use uuid::Uuid;

fn event(n: usize) -> NewEvent {
    NewEvent::new("Happened", json!({ "n": n }))
}

pub async fn racing_writers_get_exactly_one_winner_per_version(
    store: Arc<dyn EventStore>,
    _other: Arc<dyn EventStore>,
) {
    const WRITERS: usize = 12;
    const ROUNDS: u64 = 8;
    for round in 0..ROUNDS {
        let expected = if round == 0 { ExpectedVersion::NoStream } else { ExpectedVersion::Exact(round) };
        let barrier = Arc::new(Barrier::new(WRITERS));
        let tasks: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
                tokio::spawn(async move {
                    barrier.wait().await;
                    store.append("race", expected, vec![event(w)]).await
                })
            })
            .collect();
        let mut winners = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(result) => {
                    winners += 1;
                    assert_eq!(result.next_expected_version, round + 1);
                }
                Err(Error::WrongExpectedVersion { stream, expected: e, actual }) => {
                    assert_eq!((stream.as_str(), e), ("race", expected));
                    assert_eq!(actual, Some(round + 1), "a loser sees the winner's version");
                }
                Err(other) => panic!("unexpected error: {other}"),
            }
        }
        assert_eq!(winners, 1, "round {round}: exactly one writer wins");
    }
    let events = store.read_stream("race", 1, 100).await.unwrap();
    let versions: Vec<u64> = events.iter().map(|e| e.version).collect();
    assert_eq!(versions, (1..=ROUNDS).collect::<Vec<_>>(), "gap-free, no duplicates");
    assert_eq!(store.stream_version("race").await.unwrap(), Some(ROUNDS));
}

pub async fn stale_writer_gets_wrong_expected_version_and_writes_nothing(
    store: Arc<dyn EventStore>,
    _other: Arc<dyn EventStore>,
) {
    store.append("s", ExpectedVersion::NoStream, vec![event(1), event(2)]).await.unwrap();
    let outbox =
        OutgoingMessage { topic: "t".into(), key: "k".into(), payload: b"x".to_vec(), headers: BTreeMap::new() };
    let err = store
        .commit(
            Commit::append("other", ExpectedVersion::NoStream, vec![event(9)])
                .with_append("s", ExpectedVersion::Exact(1), vec![event(3)])
                .with_message(outbox),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::WrongExpectedVersion { ref stream, expected: ExpectedVersion::Exact(1), actual: Some(2) } if stream == "s"),
        "{err}"
    );
    assert_eq!(store.stream_version("other").await.unwrap(), None, "the whole commit is rolled back");
    assert_eq!(store.outbox_pending().await.unwrap(), 0);
    let err = store.append("s", ExpectedVersion::NoStream, vec![event(3)]).await.unwrap_err();
    assert!(matches!(err, Error::WrongExpectedVersion { actual: Some(2), .. }), "{err}");
    store.append("s", ExpectedVersion::Any, vec![event(3)]).await.unwrap();
    assert_eq!(store.stream_version("s").await.unwrap(), Some(3));
}

pub async fn reappending_a_stored_event_id_is_a_no_op_returning_the_original_position(
    store: Arc<dyn EventStore>,
    _other: Arc<dyn EventStore>,
) {
    let id = Uuid::now_v7();
    let first = store.append("s", ExpectedVersion::NoStream, vec![event(1).with_id(id)]).await.unwrap();
    store.append("s", ExpectedVersion::Exact(1), vec![event(2)]).await.unwrap();
    // A retry with the stale expectation is still recognised as the same write.
    let retry = store.append("s", ExpectedVersion::NoStream, vec![event(1).with_id(id)]).await.unwrap();
    assert!(retry.already_stored);
    assert_eq!(retry.positions, first.positions);
    assert_eq!(store.stream_version("s").await.unwrap(), Some(2));

    let err = store.append("s", ExpectedVersion::Any, vec![event(1).with_id(id), event(3)]).await.unwrap_err();
    assert!(matches!(err, Error::PartialIdempotentAppend { .. }), "{err}");
    let err = store.append("elsewhere", ExpectedVersion::Any, vec![event(1).with_id(id)]).await.unwrap_err();
    assert!(matches!(err, Error::DuplicateEventId { event_id } if event_id == id), "{err}");
    assert_eq!(store.stream_version("elsewhere").await.unwrap(), None);
}

pub async fn all_stream_order_with_concurrent_writers_never_lets_a_subscriber_skip(
    store: Arc<dyn EventStore>,
    _other: Arc<dyn EventStore>,
) {
    const WRITERS: usize = 32;
    const PER_WRITER: usize = 12;
    let mut subscription = Subscription::after(Arc::clone(&store), AllPosition::START);
    let (done_tx, mut done_rx) = tokio::sync::watch::channel(false);
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            tokio::select! {
                event = subscription.next() => {
                    let e = event.unwrap();
                    seen.push((e.all_position(), e.event_id));
                }
                // Every writer is done: drain what is left, then stop.
                _ = done_rx.changed() => {
                    while let Ok(Ok(e)) = tokio::time::timeout(Duration::from_millis(1500), subscription.next()).await {
                        seen.push((e.all_position(), e.event_id));
                    }
                    return seen;
                }
            }
        }
    });
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut written = 0;
                for i in 0..PER_WRITER {
                    // Writers pause at random, so commits interleave in every order; a third
                    // share one stream and queue on its lock; some appends carry several events.
                    tokio::time::sleep(Duration::from_millis(rand::random_range(0..15))).await;
                    let stream = if w % 3 == 0 { "shared".to_owned() } else { format!("own-{w}") };
                    let events: Vec<NewEvent> = (0..1 + i % 3).map(|k| event(i * 10 + k)).collect();
                    written += events.len();
                    store.append(&stream, ExpectedVersion::Any, events).await.unwrap();
                }
                written
            })
        })
        .collect();
    let mut total = 0;
    for w in writers {
        total += w.await.unwrap();
    }
    done_tx.send(true).unwrap();
    let seen = reader.await.unwrap();
    let all: Vec<(AllPosition, Uuid)> = store
        .read_all(AllPosition::START, total + 10)
        .await
        .unwrap()
        .iter()
        .map(|e| (e.all_position(), e.event_id))
        .collect();
    assert_eq!(all.len(), total);
    assert_eq!(seen, all, "the live subscriber saw every event exactly once, in the final $all order");
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "delivered in increasing $all position");
}

pub async fn catch_up_then_live_subscription_delivers_every_event_once_in_order(
    store: Arc<dyn EventStore>,
    other: Arc<dyn EventStore>,
) {
    for i in 0..25 {
        store.append(&format!("s-{}", i % 3), ExpectedVersion::Any, vec![event(i)]).await.unwrap();
    }
    let mut sub = Subscription::after(Arc::clone(&store), AllPosition::START);
    let mut got = Vec::new();
    for _ in 0..10 {
        got.push(sub.next().await.unwrap());
    }
    let checkpoint = sub.position();
    drop(sub);

    // Resume from the stored checkpoint; live events are written by a second store
    // instance (another process, as far as LISTEN/NOTIFY is concerned).
    let mut sub = Subscription::after(Arc::clone(&store), checkpoint);
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        for i in 25..40 {
            other.append("live", ExpectedVersion::Any, vec![event(i)]).await.unwrap();
        }
    });
    while got.len() < 40 {
        got.push(tokio::time::timeout(Duration::from_secs(10), sub.next()).await.expect("live event").unwrap());
    }
    writer.await.unwrap();
    let ns: Vec<u64> = got.iter().map(|e| e.data["n"].as_u64().unwrap()).collect();
    assert_eq!(ns, (0..40).collect::<Vec<_>>(), "every event once, in order");
    assert!(got.windows(2).all(|w| w[0].all_position() < w[1].all_position()));
    assert!(tokio::time::timeout(Duration::from_millis(300), sub.next()).await.is_err(), "nothing extra");
}

pub async fn long_streams_read_as_an_async_stream_in_pages(store: Arc<dyn EventStore>, _other: Arc<dyn EventStore>) {
    let events: Vec<NewEvent> = (0..120).map(event).collect();
    store.append("long", ExpectedVersion::NoStream, events).await.unwrap();
    let read: Vec<_> = event_store::read::stream_events(store.as_ref(), "long", 11, 25).try_collect().await.unwrap();
    assert_eq!(read.len(), 110);
    assert_eq!(read.first().unwrap().version, 11);
    assert_eq!(read.last().unwrap().version, 120);
}

mod snapshot_aggregate {
    use engine::Aggregate;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Tally {
        pub total: i64,
        pub history: Vec<i64>,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(tag = "type", content = "data")]
    pub enum TallyEvent {
        Counted { n: i64 },
    }

    impl Aggregate for Tally {
        const TYPE: &'static str = "tally";
        type Event = TallyEvent;
        type Command = i64;
        type Error = String;
        fn apply(&mut self, TallyEvent::Counted { n }: &TallyEvent) {
            self.total += n;
            self.history.push(*n);
        }
        fn handle(&self, n: &i64) -> Result<Vec<TallyEvent>, String> {
            Ok(vec![TallyEvent::Counted { n: *n }])
        }
    }
}

pub async fn snapshot_plus_tail_equals_full_replay(store: Arc<dyn EventStore>, _other: Arc<dyn EventStore>) {
    use snapshot_aggregate::Tally;
    let snapshotting = Repository::<Tally>::new(Arc::clone(&store)).with_snapshots_every(10);
    for n in 1..=27 {
        snapshotting.execute("t", &n).await.unwrap();
    }
    let snapshot = store.load_snapshot("tally-t", None).await.unwrap().expect("a snapshot");
    assert_eq!(snapshot.version, 20);
    let via_snapshot = snapshotting.load("t").await.unwrap();
    let full = Repository::<Tally>::new(Arc::clone(&store)).load_at_time("t", chrono::Utc::now()).await.unwrap();
    assert_eq!(via_snapshot.version, 27);
    assert_eq!(via_snapshot.state, full.state);
    assert_eq!(snapshotting.load_at_version("t", 15).await.unwrap().state.total, (1..=15).sum::<i64>());
}

fn numbered(n: usize) -> OutgoingMessage {
    OutgoingMessage {
        topic: "t".into(),
        key: format!("k{}", n % 7),
        payload: n.to_string().into_bytes(),
        headers: BTreeMap::from([("n".to_owned(), n.to_string())]),
    }
}

/// Reads `count` outbox messages after `from`, in batches of `batch`. On PostgreSQL a message
/// becomes readable only once every older transaction in the cluster has finished (other tests
/// run beside this one), so an empty page means "not yet" until the deadline.
async fn read_n(store: &dyn EventStore, from: OutboxPosition, batch: usize, count: usize) -> Vec<OutboxMessage> {
    let (mut after, mut read) = (from, Vec::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while read.len() < count && tokio::time::Instant::now() < deadline {
        let page = store.read_outbox(after, batch.min(count - read.len())).await.unwrap();
        match page.last() {
            Some(last) => after = last.position(),
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
        read.extend(page);
    }
    read
}

fn payloads(messages: &[OutboxMessage]) -> Vec<String> {
    messages.iter().map(|m| String::from_utf8(m.message.payload.clone()).unwrap()).collect()
}

pub async fn one_relay_at_a_time_reads_the_outbox_in_commit_order_from_its_checkpoint(
    store: Arc<dyn EventStore>,
    other: Arc<dyn EventStore>,
) {
    const MESSAGES: usize = 300;
    for n in 0..MESSAGES {
        let commit =
            Commit::append(format!("s{n}"), ExpectedVersion::NoStream, vec![event(n)]).with_message(numbered(n));
        store.commit(commit).await.unwrap();
    }
    let lease = Duration::from_millis(800);
    let start = store.hold_outbox("relay-a", lease).await.unwrap().expect("a free outbox is taken");
    assert_eq!(other.hold_outbox("relay-b", lease).await.unwrap(), None, "held by relay-a");
    assert_eq!(store.hold_outbox("relay-a", lease).await.unwrap(), Some(start), "its holder keeps it");

    // relay-a publishes 100, records it, then reads (and "publishes") 16 more and dies.
    let first = read_n(&*store, start, 16, MESSAGES).await;
    assert_eq!(payloads(&first), (0..MESSAGES).map(|n| n.to_string()).collect::<Vec<_>>(), "in commit order");
    assert!(first.windows(2).all(|w| w[0].position() < w[1].position()), "positions increase");
    assert!(store.advance_outbox("relay-a", first[99].position(), lease).await.unwrap());
    assert_eq!(store.outbox_pending().await.unwrap(), (MESSAGES - 100) as u64);

    // Within a lease relay-b takes over where relay-a recorded, not where it read up to.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let resumed = other.hold_outbox("relay-b", lease).await.unwrap().expect("an expired lease passes on");
    assert_eq!(resumed, first[99].position());
    let rest = read_n(&*other, resumed, 64, MESSAGES - 100).await;
    assert_eq!(payloads(&rest), payloads(&first[100..]));
    assert!(!store.advance_outbox("relay-a", first[115].position(), lease).await.unwrap(), "relay-a lost it");
    assert!(other.advance_outbox("relay-b", rest[rest.len() - 1].position(), lease).await.unwrap());
    assert!(other.advance_outbox("relay-b", first[10].position(), lease).await.unwrap(), "behind: only renews");
    assert_eq!(store.outbox_pending().await.unwrap(), 0);
    assert!(other.read_outbox(rest[rest.len() - 1].position(), 10).await.unwrap().is_empty());
}

/// Messages committed by many writers at once: a relay that reads ahead while they commit never
/// skips one that commits after a later one became readable (the transaction horizon).
pub async fn a_relay_reading_while_writers_commit_sees_every_message_once(
    store: Arc<dyn EventStore>,
    other: Arc<dyn EventStore>,
) {
    const WRITERS: usize = 8;
    const EACH: usize = 40;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = if w % 2 == 0 { Arc::clone(&store) } else { Arc::clone(&other) };
            tokio::spawn(async move {
                for i in 0..EACH {
                    let n = w * EACH + i;
                    let commit = Commit::append(format!("w{n}"), ExpectedVersion::NoStream, vec![event(n)])
                        .with_message(numbered(n));
                    store.commit(commit).await.unwrap();
                }
            })
        })
        .collect();
    let mut after = store.hold_outbox("reader", Duration::from_secs(30)).await.unwrap().unwrap();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < WRITERS * EACH && tokio::time::Instant::now() < deadline {
        let page = store.read_outbox(after, 7).await.unwrap();
        if let Some(last) = page.last() {
            assert!(last.position() > after);
            after = last.position();
        }
        seen.extend(payloads(&page));
    }
    for w in writers {
        w.await.unwrap();
    }
    seen.extend(payloads(&read_n(&*store, after, 1_000, WRITERS * EACH - seen.len()).await));
    assert_eq!(seen.len(), WRITERS * EACH, "no message read twice");
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), WRITERS * EACH, "none skipped");
}

pub async fn a_renewed_lease_outlives_its_first_term_and_a_dead_one_passes_on(
    store: Arc<dyn EventStore>,
    _other: Arc<dyn EventStore>,
) {
    store.commit(Commit::default().with_message(numbered(1))).await.unwrap();
    let lease = Duration::from_millis(2_000);
    let at = store.hold_outbox("live", lease).await.unwrap().unwrap();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(store.advance_outbox("live", at, lease).await.unwrap(), "renewed");
    }
    assert_eq!(store.hold_outbox("other", lease).await.unwrap(), None, "renewed past its first 2 s");
    // The live relay stops renewing (it crashed): within one lease, another takes over.
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    assert_eq!(store.hold_outbox("other", lease).await.unwrap(), Some(at), "nothing was recorded as published");
    assert!(!store.advance_outbox("live", at, lease).await.unwrap(), "a lost lease is not renewed");
    assert_eq!(store.outbox_pending().await.unwrap(), 1);
}

pub async fn retention_deletes_old_published_rows_and_dedup_records_in_batches(
    store: Arc<dyn EventStore>,
    _other: Arc<dyn EventStore>,
) {
    for n in 0..5 {
        store.commit(Commit::default().with_message(numbered(n)).processing("c", format!("old-{n}"))).await.unwrap();
    }
    let lease = Duration::from_secs(10);
    let start = store.hold_outbox("r", lease).await.unwrap().unwrap();
    let read = read_n(&*store, start, 3, 3).await;
    assert!(store.advance_outbox("r", read[2].position(), lease).await.unwrap());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let cut = chrono::Utc::now();
    store.commit(Commit::default().processing("c", "new")).await.unwrap();

    assert_eq!(store.delete_published_outbox(cut, 2).await.unwrap(), 2, "one batch");
    assert_eq!(store.delete_published_outbox(cut, 2).await.unwrap(), 1);
    assert_eq!(store.delete_published_outbox(cut, 2).await.unwrap(), 0);
    assert_eq!(store.outbox_pending().await.unwrap(), 2, "unpublished messages are kept");
    let unpublished = read_n(&*store, read[2].position(), 10, 2).await;
    assert_eq!(payloads(&unpublished), ["3", "4"]);

    // A row the broker refused for good is marked, not deleted: it is the only full copy.
    store.mark_dead_lettered(unpublished[0].id, "too large").await.unwrap();
    assert!(store.advance_outbox("r", unpublished[0].position(), lease).await.unwrap());
    assert_eq!(store.outbox_pending().await.unwrap(), 1);
    let later = chrono::Utc::now() + chrono::Duration::seconds(1);
    assert_eq!(store.delete_published_outbox(later, 10).await.unwrap(), 0, "a dead-lettered row is kept");
    // The kept row does not hold retention up: what follows it goes once published and old.
    assert!(store.advance_outbox("r", unpublished[1].position(), lease).await.unwrap());
    assert_eq!(store.delete_published_outbox(later, 10).await.unwrap(), 1, "the row after the refused one");
    assert_eq!(store.delete_published_outbox(later, 10).await.unwrap(), 0, "the refused row is still kept");

    assert_eq!(store.delete_processed_messages(cut, 10).await.unwrap(), 5);
    let redelivered_old = store.commit(Commit::default().processing("c", "old-0")).await;
    assert!(redelivered_old.is_ok(), "past the window the record is gone");
    let redelivered_new = store.commit(Commit::default().processing("c", "new")).await.unwrap_err();
    assert!(matches!(redelivered_new, Error::AlreadyProcessed { .. }), "inside the window it is kept");
}

pub async fn processed_message_record_makes_a_redelivered_effect_a_no_op(
    store: Arc<dyn EventStore>,
    _other: Arc<dyn EventStore>,
) {
    let effect = || Commit::append("account", ExpectedVersion::Any, vec![event(1)]).processing("payments", "msg-1");
    store.commit(effect()).await.unwrap();
    let err = store.commit(effect()).await.unwrap_err();
    assert!(matches!(err, Error::AlreadyProcessed { .. }), "{err}");
    assert_eq!(store.stream_version("account").await.unwrap(), Some(1));
}

pub async fn timers_are_stored_replaced_and_cancelled_with_commits(
    store: Arc<dyn EventStore>,
    _other: Arc<dyn EventStore>,
) {
    let now = chrono::Utc::now();
    let set =
        |key: &str, secs: i64| TimerChange::Set { key: key.into(), due_at: now + chrono::Duration::seconds(secs) };
    store
        .commit(Commit::default().with_timer(set("a", -5)).with_timer(set("b", -1)).with_timer(set("c", 60)))
        .await
        .unwrap();
    let due: Vec<String> = store.due_timers(now, 10).await.unwrap().into_iter().map(|t| t.key).collect();
    assert_eq!(due, vec!["a", "b"]);
    store
        .commit(Commit::default().with_timer(set("a", 30)).with_timer(TimerChange::Cancel { key: "b".into() }))
        .await
        .unwrap();
    assert!(store.due_timers(now, 10).await.unwrap().is_empty());
}

pub async fn streams_are_listed_by_prefix(store: Arc<dyn EventStore>, _other: Arc<dyn EventStore>) {
    for id in ["saga-1", "saga-2", "order-1", "saga-3"] {
        store.append(id, ExpectedVersion::NoStream, vec![event(0)]).await.unwrap();
    }
    assert_eq!(store.list_streams("saga-", None, 10).await.unwrap(), vec!["saga-1", "saga-2", "saga-3"]);
    assert_eq!(store.list_streams("saga-", Some("saga-1"), 1).await.unwrap(), vec!["saga-2"]);
}
