//! Group commit on PostgreSQL: commits submitted together are written in few transactions,
//! and each keeps its own verdict.

use std::sync::Arc;

use event_store::postgres::PgEventStore;
use event_store::{Commit, Error, EventStore, ExpectedVersion, NewEvent, OutgoingMessage};
use sagaflow_tests::MIGRATOR;
use serde_json::json;
use sqlx::PgPool;

fn happened() -> Vec<NewEvent> {
    vec![NewEvent::new("Happened", json!({}))]
}

fn message(n: usize) -> OutgoingMessage {
    OutgoingMessage { topic: "t".into(), key: n.to_string(), payload: vec![], headers: Default::default() }
}

/// Many commits at once, some of them refused: the refused ones write nothing, every other one
/// is written, and the writes share transactions.
#[sqlx::test(migrator = "MIGRATOR")]
async fn commits_submitted_together_share_transactions_and_each_gets_its_own_verdict(pool: PgPool) {
    const COMMITS: usize = 300;
    let store = Arc::new(PgEventStore::from_pool(pool.clone()).await.unwrap());
    store.commit(Commit::default().processing("c", "seen-before")).await.unwrap();
    let commits = (0..COMMITS).map(|n| {
        let commit = match n % 3 {
            // Refused: the stream does not exist yet.
            1 => Commit::append(format!("s{n}"), ExpectedVersion::Exact(5), happened()),
            _ => Commit::append(format!("s{n}"), ExpectedVersion::NoStream, happened()),
        };
        // Refused: every 10th handles a message processed before.
        let id = if n % 10 == 0 { "seen-before".to_owned() } else { format!("m{n}") };
        let store = Arc::clone(&store);
        async move { store.commit(commit.with_message(message(n)).processing("c", id)).await }
    });
    let verdicts = futures::future::join_all(commits).await;
    for (n, verdict) in verdicts.iter().enumerate() {
        match (n % 3, n % 10, verdict) {
            (1, _, Err(Error::WrongExpectedVersion { .. })) => {}
            (_, 0, Err(Error::AlreadyProcessed { .. })) if n % 3 != 1 => {}
            (0 | 2, 1.., Ok(result)) => assert_eq!(result.appends[0].next_expected_version, 1, "commit {n}"),
            _ => panic!("commit {n}: unexpected verdict {verdict:?}"),
        }
        let written = store.stream_version(&format!("s{n}")).await.unwrap();
        assert_eq!(written.is_some(), verdict.is_ok(), "commit {n}: written only when accepted");
    }
    let accepted = verdicts.iter().filter(|v| v.is_ok()).count() as i64;
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(&pool).await.unwrap();
    assert_eq!(outbox, accepted, "a refused commit sends nothing");
    let processed: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_messages").fetch_one(&pool).await.unwrap();
    assert_eq!(processed, accepted + 1);
    let transactions: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT transaction_id) FROM events").fetch_one(&pool).await.unwrap();
    assert!(transactions * 4 < accepted, "{accepted} commits written in {transactions} transactions");
}

/// A writer in another transaction takes a stream that a commit of a group expects to be new:
/// that commit is refused, and the rest of its group is written.
#[sqlx::test(migrator = "MIGRATOR")]
async fn a_concurrent_writer_fails_only_the_commit_it_conflicts_with(pool: PgPool) {
    let store = Arc::new(PgEventStore::from_pool(pool.clone()).await.unwrap());
    let mut other = pool.begin().await.unwrap();
    store.commit_within(&mut other, &Commit::append("taken", ExpectedVersion::Any, happened())).await.unwrap();
    let commits = (0..40).map(|n| {
        let stream = if n == 20 { "taken".to_owned() } else { format!("free{n}") };
        let store = Arc::clone(&store);
        async move { store.commit(Commit::append(stream, ExpectedVersion::NoStream, happened())).await }
    });
    let all = tokio::spawn(futures::future::join_all(commits));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    other.commit().await.unwrap();
    let verdicts = all.await.unwrap();
    for (n, verdict) in verdicts.iter().enumerate() {
        if n == 20 {
            assert!(matches!(verdict, Err(Error::WrongExpectedVersion { .. })), "{verdict:?}");
        } else {
            assert!(verdict.is_ok(), "commit {n}: {verdict:?}");
        }
    }
    assert_eq!(store.stream_version("taken").await.unwrap(), Some(1), "the other writer's event stays alone");
}

/// Waiters in another process wake on commits, alone or in a group: each commit statement
/// carries the notice of the streams it wrote, with no transaction of its own.
#[sqlx::test(migrator = "MIGRATOR")]
async fn commits_alone_or_grouped_wake_the_waiters_of_another_process(pool: PgPool) {
    use std::time::Duration;

    let writer = Arc::new(PgEventStore::from_pool(pool.clone()).await.unwrap());
    let other = PgEventStore::from_pool(pool.clone()).await.unwrap();
    let mut alone = other.stream_changes("alone");
    alone.mark_seen();
    writer.commit(Commit::append("alone", ExpectedVersion::NoStream, happened())).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), alone.changed()).await.expect("woken by the commit's notice");

    let mut last = other.stream_changes("grouped-99");
    last.mark_seen();
    let commits = (0..100).map(|n| {
        let writer = Arc::clone(&writer);
        async move { writer.commit(Commit::append(format!("grouped-{n}"), ExpectedVersion::NoStream, happened())).await }
    });
    for verdict in futures::future::join_all(commits).await {
        verdict.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(5), last.changed()).await.expect("woken by the group's notice");
}
