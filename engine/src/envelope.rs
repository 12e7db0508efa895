//! The JSON envelope of every command and reply on the wire (see `docs/wire-protocol.md`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use event_store::OutgoingMessage;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// Header carrying the message id.
pub const HEADER_MESSAGE_ID: &str = "message_id";
/// Header carrying the content type (`application/json`).
pub const HEADER_CONTENT_TYPE: &str = "content-type";
/// W3C trace context header.
pub const HEADER_TRACEPARENT: &str = "traceparent";
/// Dead-letter headers.
pub const HEADER_DLQ_REASON: &str = "dead-letter-reason";
pub const HEADER_DLQ_SOURCE: &str = "dead-letter-source";

/// Command or reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    Command,
    Reply,
}

/// What a participant reports for a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Failure {
        reason: String,
        /// Whether trying again might succeed; a business refusal is not retryable.
        #[serde(default)]
        retryable: bool,
    },
}

/// One message on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub message_id: String,
    pub saga_id: Uuid,
    pub kind: MessageKind,
    pub step: String,
    /// Command type (`ReserveInventory`) or, for a reply, the type of the command answered.
    #[serde(rename = "type")]
    pub message_type: String,
    #[serde(default = "first_attempt")]
    pub attempt: u32,
    /// Reply only: the `message_id` of the command answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_reply_to: Option<String>,
    /// Command only: the topic to send the reply to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// Command: the saga context. Reply: the step's output (merged into the context on success).
    #[serde(default)]
    pub payload: Value,
    /// Reply only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    #[serde(default = "Utc::now")]
    pub sent_at: DateTime<Utc>,
}

/// Longest `message_id` accepted (it becomes part of the deduplication record).
pub const MAX_MESSAGE_ID_LEN: usize = 512;

/// A legal Kafka topic name: 1-249 of ASCII letters, digits, '.', '_' and '-'.
pub fn valid_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn first_attempt() -> u32 {
    1
}

impl Envelope {
    /// Parses and checks a message body. This is the edge for wire messages: whatever
    /// passes can be stored and answered (no NUL anywhere, a usable reply topic).
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        let envelope: Self = serde_json::from_slice(body).map_err(|e| format!("not a valid envelope: {e}"))?;
        if envelope.message_id.is_empty() || envelope.message_id.len() > MAX_MESSAGE_ID_LEN {
            return Err(format!("message_id must be 1..={MAX_MESSAGE_ID_LEN} bytes"));
        }
        let strings = [Some(&envelope.message_id), Some(&envelope.step), Some(&envelope.message_type)]
            .into_iter()
            .chain([envelope.in_reply_to.as_ref(), envelope.reply_to.as_ref()]);
        let reason = match &envelope.outcome {
            Some(Outcome::Failure { reason, .. }) => reason.contains('\0'),
            _ => false,
        };
        if strings.flatten().any(|s| s.contains('\0')) || reason || event_store::has_nul(&envelope.payload) {
            return Err("the envelope contains a NUL character (U+0000), which cannot be stored".into());
        }
        if let Some(topic) = &envelope.reply_to {
            if !valid_topic(topic) {
                return Err(format!("reply_to '{topic}' is not a valid topic name"));
            }
        }
        if envelope.kind == MessageKind::Reply && (envelope.in_reply_to.is_none() || envelope.outcome.is_none()) {
            return Err("a reply needs in_reply_to and outcome".into());
        }
        Ok(envelope)
    }

    /// The reply to this command.
    pub fn reply(&self, outcome: Outcome, output: Value) -> Self {
        Self {
            message_id: format!("{}/reply", self.message_id),
            saga_id: self.saga_id,
            kind: MessageKind::Reply,
            step: self.step.clone(),
            message_type: self.message_type.clone(),
            attempt: self.attempt,
            in_reply_to: Some(self.message_id.clone()),
            reply_to: None,
            payload: output,
            outcome: Some(outcome),
            sent_at: Utc::now(),
        }
    }

    /// The message to hand to the transport: keyed by saga id, with the standard headers.
    pub fn to_message(&self, topic: &str, traceparent: Option<&str>) -> OutgoingMessage {
        let mut headers = BTreeMap::from([
            (HEADER_MESSAGE_ID.to_owned(), self.message_id.clone()),
            (HEADER_CONTENT_TYPE.to_owned(), "application/json".to_owned()),
        ]);
        let trace = traceparent.map_or_else(|| traceparent_for(self.saga_id), str::to_owned);
        headers.insert(HEADER_TRACEPARENT.to_owned(), trace);
        OutgoingMessage {
            topic: topic.to_owned(),
            key: self.saga_id.to_string(),
            payload: serde_json::to_vec(self).unwrap_or_default(),
            headers,
        }
    }
}

/// A W3C `traceparent` whose trace id is the saga id, so one saga is one trace.
pub fn traceparent_for(saga_id: Uuid) -> String {
    let span: u64 = rand::random::<u64>() | 1;
    format!("00-{}-{span:016x}-01", saga_id.simple())
}

/// A new span of the same trace (for a reply to a command carrying `parent`).
pub fn child_traceparent(parent: Option<&str>, saga_id: Uuid) -> String {
    let trace_id = parent
        .and_then(|p| p.split('-').nth(1))
        .filter(|t| t.len() == 32 && t.chars().all(|c| c.is_ascii_hexdigit()))
        .map_or_else(|| saga_id.simple().to_string(), str::to_owned);
    let span: u64 = rand::random::<u64>() | 1;
    format!("00-{trace_id}-{span:016x}-01")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reply_round_trips_and_points_at_its_command() {
        let command = Envelope {
            message_id: "m1".into(),
            saga_id: Uuid::now_v7(),
            kind: MessageKind::Command,
            step: "s".into(),
            message_type: "Do".into(),
            attempt: 2,
            in_reply_to: None,
            reply_to: Some("sagaflow.replies".into()),
            payload: json!({"a": 1}),
            outcome: None,
            sent_at: Utc::now(),
        };
        let reply = command.reply(Outcome::Failure { reason: "no".into(), retryable: false }, json!({}));
        let message = reply.to_message("sagaflow.replies", None);
        assert_eq!(message.key, command.saga_id.to_string());
        assert_eq!(message.headers[HEADER_MESSAGE_ID], "m1/reply");
        assert!(message.headers[HEADER_TRACEPARENT].contains(&command.saga_id.simple().to_string()));
        let parsed = Envelope::parse(&message.payload).unwrap();
        assert_eq!(parsed.in_reply_to.as_deref(), Some("m1"));
        assert_eq!(parsed, reply);
    }

    #[test]
    fn minimal_foreign_reply_parses_and_broken_ones_do_not() {
        let saga = Uuid::now_v7();
        let body = json!({"message_id": "r", "saga_id": saga, "kind": "reply", "step": "s", "type": "Do",
                          "in_reply_to": "m", "outcome": {"status": "success"}});
        let parsed = Envelope::parse(body.to_string().as_bytes()).unwrap();
        assert_eq!((parsed.attempt, parsed.payload.clone()), (1, Value::Null));
        assert!(Envelope::parse(b"not json").is_err());
        let no_outcome =
            json!({"message_id": "r", "saga_id": saga, "kind": "reply", "step": "s", "type": "Do", "in_reply_to": "m"});
        assert!(Envelope::parse(no_outcome.to_string().as_bytes()).unwrap_err().contains("outcome"));
    }

    #[test]
    fn envelopes_that_cannot_be_stored_are_refused_at_the_edge() {
        let saga = Uuid::now_v7();
        let reply = |field: &str, value: Value| {
            let mut body = json!({"message_id": "r", "saga_id": saga, "kind": "reply", "step": "s", "type": "Do",
                                  "in_reply_to": "m", "outcome": {"status": "failure", "reason": "no"}});
            body[field] = value;
            Envelope::parse(body.to_string().as_bytes())
        };
        assert!(reply("step", json!("s")).is_ok());
        for (field, value) in [
            ("message_id", json!("r\u{0}")),
            ("in_reply_to", json!("m\u{0}")),
            ("payload", json!({"note": "a\u{0}b"})),
            ("payload", json!({"k\u{0}": 1})),
            ("outcome", json!({"status": "failure", "reason": "x\u{0}"})),
            ("reply_to", json!("no spaces allowed")),
            ("message_id", json!("x".repeat(MAX_MESSAGE_ID_LEN + 1))),
        ] {
            let parsed = reply(field, value.clone());
            assert!(parsed.is_err(), "{field} = {value} must be refused");
        }
    }

    #[test]
    fn child_trace_keeps_the_trace_id() {
        let saga = Uuid::now_v7();
        let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let child = child_traceparent(Some(parent), saga);
        assert!(child.starts_with("00-0af7651916cd43dd8448eb211c80319c-"));
        assert_ne!(child, parent);
        assert!(child_traceparent(Some("garbage"), saga).contains(&saga.simple().to_string()));
    }
}
