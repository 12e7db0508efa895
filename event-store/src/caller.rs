//! Who caused a commit: the API's authentication runs each request within [`scope`], and
//! every event the request appends gets the caller in its metadata (`"caller": "<sub>"`).

use std::future::Future;

use crate::model::Commit;

tokio::task_local! {
    static CALLER: String;
}

/// Runs `work` on behalf of `caller`.
pub async fn scope<F: Future>(caller: String, work: F) -> F::Output {
    CALLER.scope(caller, work).await
}

/// The caller of the work running now, if any.
pub fn current() -> Option<String> {
    CALLER.try_with(Clone::clone).ok()
}

/// `commit` with the current caller in each event's metadata (kept when one is there already).
pub(crate) fn stamped(mut commit: Commit) -> Commit {
    // Outside a scope there is no caller, and nothing to do.
    let _outside = CALLER.try_with(|caller| {
        for event in commit.appends.iter_mut().flat_map(|a| a.events.iter_mut()) {
            if event.metadata.is_null() {
                event.metadata = serde_json::Value::Object(serde_json::Map::new());
            }
            if let serde_json::Value::Object(metadata) = &mut event.metadata {
                metadata.entry("caller").or_insert_with(|| serde_json::Value::String(caller.clone()));
            }
        }
    });
    commit
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ExpectedVersion, NewEvent};

    #[tokio::test]
    async fn events_appended_within_a_scope_name_their_caller() {
        let commit = || Commit::append("s", ExpectedVersion::Any, vec![NewEvent::new("E", serde_json::json!({}))]);
        let outside = stamped(commit());
        assert!(outside.appends[0].events[0].metadata.get("caller").is_none());
        let inside = scope("alice".into(), async { stamped(commit()) }).await;
        assert_eq!(inside.appends[0].events[0].metadata["caller"], "alice");
    }
}
