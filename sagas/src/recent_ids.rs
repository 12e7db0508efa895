//! A bounded memory of recent ids, for aggregates whose state must not grow with history.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// How many ids a [`RecentIds`] keeps: far more than the orders in flight on one aggregate,
/// which are all it has to remember.
pub const REMEMBERED: usize = 1_024;

/// The latest [`REMEMBERED`] ids, oldest first; older ones are forgotten.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RecentIds(VecDeque<String>);

impl RecentIds {
    /// Remembers `id`, forgetting the oldest ones beyond [`REMEMBERED`].
    pub fn insert(&mut self, id: &str) {
        if !self.contains(id) {
            self.0.push_back(id.to_owned());
        }
        while self.0.len() > REMEMBERED {
            self.0.pop_front();
        }
    }

    pub fn contains(&self, id: &str) -> bool {
        self.0.iter().any(|known| known == id)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_latest_ids_only() {
        let mut ids = RecentIds::default();
        for i in 0..REMEMBERED + 10 {
            ids.insert(&i.to_string());
        }
        ids.insert("5000");
        assert_eq!(ids.len(), REMEMBERED);
        assert!(!ids.contains("10"), "the oldest are forgotten");
        assert!(ids.contains("11") && ids.contains("5000"));
    }

    #[test]
    fn reads_the_set_it_replaces() {
        let ids: RecentIds = serde_json::from_str(r#"["o1","o2"]"#).unwrap();
        assert!(ids.contains("o1") && ids.contains("o2"));
    }
}
