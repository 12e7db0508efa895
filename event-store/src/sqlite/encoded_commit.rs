//! A commit with its columns encoded as they are stored, on the committing task: the writer
//! thread is the embedded store's serial stage, and it only binds what is encoded here.

use crate::model::Commit;

/// A commit and the stored form of its events and outbox headers.
pub(crate) struct EncodedCommit {
    pub(super) commit: Commit,
    /// Per append, per event, in the commit's order.
    pub(super) events: Vec<Vec<EncodedEvent>>,
    /// Per outbox message, in the commit's order.
    pub(super) headers: Vec<String>,
}

/// An event's columns as stored.
pub(super) struct EncodedEvent {
    pub(super) id: String,
    pub(super) data: String,
    pub(super) metadata: String,
}

impl EncodedCommit {
    pub(super) fn new(commit: Commit) -> Self {
        let events = commit
            .appends
            .iter()
            .map(|append| {
                append
                    .events
                    .iter()
                    .map(|event| EncodedEvent {
                        id: event.event_id.to_string(),
                        data: event.data.to_string(),
                        metadata: event.metadata.to_string(),
                    })
                    .collect()
            })
            .collect();
        let headers =
            commit.outbox.iter().map(|m| serde_json::to_string(&m.headers).unwrap_or_else(|_| "{}".into())).collect();
        Self { commit, events, headers }
    }
}
