//! Turns on shared aggregates within one process: a participant decides and commits the
//! commands that touch one hot aggregate (a SKU, a customer's account) one after another, so
//! that they never conflict with each other on its expected version. A conflict would throw
//! the cached state away and read the aggregate's history again; under load on a few hot
//! aggregates that read, not the decision, was most of the work. Writers in other processes
//! still meet the expected version.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{Mutex as Turn, OwnedMutexGuard};

/// The turns of one participant, by aggregate stream.
#[derive(Default)]
pub struct AggregateTurns {
    turns: Mutex<HashMap<String, Arc<Turn<()>>>>,
}

/// Held while a command on its aggregates is decided and committed.
pub struct Held<'a> {
    turns: &'a AggregateTurns,
    guards: Vec<OwnedMutexGuard<()>>,
    keys: Vec<String>,
}

impl AggregateTurns {
    /// Waits for the turn on every one of `keys` (taken in sorted order, so two commands on
    /// the same aggregates never wait on each other in a circle).
    pub async fn take(&self, mut keys: Vec<String>) -> Held<'_> {
        keys.sort_unstable();
        keys.dedup();
        let mut guards = Vec::with_capacity(keys.len());
        for key in &keys {
            let turn = {
                let mut turns = self.turns.lock().unwrap_or_else(PoisonError::into_inner);
                Arc::clone(turns.entry(key.clone()).or_default())
            };
            guards.push(turn.lock_owned().await);
        }
        Held { turns: self, guards, keys }
    }

    /// Aggregates with a turn held or awaited.
    pub fn len(&self) -> usize {
        self.turns.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Whether no turn is held or awaited.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.guards.clear();
        let mut turns = self.turns.turns.lock().unwrap_or_else(PoisonError::into_inner);
        for key in &self.keys {
            // Nobody holds or awaits it any more: forget it.
            if turns.get(key).is_some_and(|turn| Arc::strong_count(turn) == 1) {
                turns.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_second_command_on_an_aggregate_waits_for_the_first_and_others_do_not() {
        let turns = Arc::new(AggregateTurns::default());
        let first = turns.take(vec!["credit-a".into(), "inventory-x".into()]).await;
        let waiting = {
            let turns = Arc::clone(&turns);
            tokio::spawn(async move {
                let _held = turns.take(vec!["inventory-x".into()]).await;
            })
        };
        // Another aggregate is free meanwhile.
        tokio::time::timeout(Duration::from_secs(1), turns.take(vec!["credit-b".into()])).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "the second command on inventory-x must wait");
        drop(first);
        tokio::time::timeout(Duration::from_secs(1), waiting).await.unwrap().unwrap();
        assert!(turns.is_empty(), "turns nobody holds are forgotten");
    }
}
