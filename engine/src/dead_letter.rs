//! Sending a message that cannot be processed to the dead-letter topic, with the reason.

use event_store::{Commit, EventStore, OutgoingMessage};

use crate::envelope::{HEADER_DLQ_REASON, HEADER_DLQ_SOURCE, HEADER_MESSAGE_ID};
use crate::error::Result;
use crate::topics::Topics;
use crate::transport::Delivery;

/// An exact copy of `delivery` bound for the dead-letter topic, the reason and the source
/// position added to its headers.
pub fn dead_letter_copy(topics: &Topics, delivery: &Delivery, reason: &str) -> OutgoingMessage {
    let mut headers = delivery.headers.clone();
    headers.insert(HEADER_DLQ_REASON.to_owned(), reason.to_owned());
    headers.insert(HEADER_DLQ_SOURCE.to_owned(), delivery.position());
    OutgoingMessage {
        topic: topics.dead_letter(),
        key: delivery.key.clone().unwrap_or_default(),
        payload: delivery.payload.clone(),
        headers,
    }
}

/// Records the copy in the outbox (so it is published like any other message); once this
/// returns, the consumer may commit the offset and go on.
pub async fn send_to_dead_letter(
    store: &dyn EventStore,
    topics: &Topics,
    consumer: &str,
    delivery: &Delivery,
    reason: &str,
) -> Result<()> {
    tracing::warn!(%consumer, position = %delivery.position(), message_id = ?delivery.headers.get(HEADER_MESSAGE_ID), %reason, "dead-lettering message");
    store.commit(Commit::default().with_message(dead_letter_copy(topics, delivery, reason))).await?;
    Ok(())
}
