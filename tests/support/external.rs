//! A participant outside Sagaflow, as `docs/wire-protocol.md` describes one: raw rdkafka and
//! JSON. It copies the command's `traceparent` to its reply and nothing more.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::kafka_bootstrap;

/// A command as the participant got it.
#[derive(Debug, Clone)]
pub struct Received {
    pub body: Value,
    pub traceparent: Option<String>,
}

/// A reply's outcome and payload; `None` leaves the command unanswered.
pub type Answer = Option<(Value, Value)>;

/// Success with `payload`.
pub fn success(payload: Value) -> Answer {
    Some((json!({ "status": "success" }), payload))
}

/// Serves `<prefix>.commands.<participant>` until `stop`, answering each command as
/// `answer` says; a command's offset is committed once its reply is on the broker.
pub async fn serve(
    prefix: String,
    participant: String,
    stop: CancellationToken,
    mut answer: impl FnMut(&Received) -> Answer + Send,
) {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .set("group.id", format!("{prefix}.external-{participant}"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        // The development broker answers a fetch only when its wait is over.
        .set("fetch.wait.max.ms", "10")
        .create()
        .expect("consumer");
    consumer.subscribe(&[&format!("{prefix}.commands.{participant}")]).expect("subscribe");
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", kafka_bootstrap()).set("acks", "all").create().expect("producer");
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => return,
            m = consumer.recv() => m.expect("a command"),
        };
        let body: Value = serde_json::from_slice(message.payload().unwrap_or_default()).expect("a JSON command");
        let traceparent = message
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "traceparent"))
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned());
        let received = Received { body, traceparent };
        if let Some((outcome, payload)) = answer(&received) {
            let command = &received.body;
            let command_id = command["message_id"].as_str().unwrap_or_default();
            let reply_id = format!("{command_id}/reply");
            let reply = json!({
                "message_id": reply_id, "saga_id": command["saga_id"], "kind": "reply",
                "step": command["step"], "type": command["type"], "attempt": command["attempt"],
                "in_reply_to": command_id, "payload": payload, "outcome": outcome,
            });
            let mut headers = OwnedHeaders::new()
                .insert(Header { key: "message_id", value: Some(reply_id.as_str()) })
                .insert(Header { key: "content-type", value: Some("application/json") });
            if let Some(traceparent) = &received.traceparent {
                headers = headers.insert(Header { key: "traceparent", value: Some(traceparent.as_str()) });
            }
            let topic = command["reply_to"].as_str().unwrap_or_default();
            let (key, body) = (command["saga_id"].as_str().unwrap_or_default(), reply.to_string());
            let record = FutureRecord::to(topic).key(key).payload(&body).headers(headers);
            producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).expect("reply sent");
        }
        consumer.commit_message(&message, CommitMode::Async).expect("commit");
    }
}
