//! Sending a message that cannot be processed to the dead-letter topic, with the reason.

use event_store::{Commit, EventStore, OutgoingMessage};

use crate::envelope::{HEADER_DLQ_REASON, HEADER_DLQ_SOURCE, HEADER_MESSAGE_ID};
use crate::error::Result;
use crate::topics::Topics;
use crate::transport::Delivery;

/// An exact copy of `delivery` bound for the dead-letter topic, the reason and the source
/// position added to its headers.
/// The payload is copied byte for byte; the key and headers, which the outbox stores as
/// text, have any NUL spelled out as `\u0000`, so the copy itself can always be stored.
pub fn dead_letter_copy(topics: &Topics, delivery: &Delivery, reason: &str) -> OutgoingMessage {
    let mut headers: std::collections::BTreeMap<String, String> =
        delivery.headers.iter().map(|(k, v)| (storable(k), storable(v))).collect();
    headers.insert(HEADER_DLQ_REASON.to_owned(), storable(reason));
    headers.insert(HEADER_DLQ_SOURCE.to_owned(), storable(&delivery.position()));
    OutgoingMessage {
        topic: topics.dead_letter(),
        key: storable(delivery.key.as_deref().unwrap_or_default()),
        payload: delivery.payload.clone(),
        headers,
    }
}

/// `text` with every NUL spelled out as `\u0000`, so that any store can keep it.
pub(crate) fn storable(text: &str) -> String {
    text.replace('\0', "\\u0000")
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn a_copy_of_a_message_with_nul_in_key_and_headers_is_storable() {
        let delivery = Delivery {
            topic: "t".into(),
            partition: 0,
            offset: 7,
            key: Some("k\0".into()),
            payload: b"\0raw".to_vec(),
            headers: BTreeMap::from([("h\0".to_owned(), "v\0".to_owned())]),
        };
        let copy = dead_letter_copy(&Topics::new("p"), &delivery, "bad\0");
        assert_eq!(copy.key, "k\\u0000");
        assert_eq!(copy.headers["h\\u0000"], "v\\u0000");
        assert_eq!(copy.headers[HEADER_DLQ_REASON], "bad\\u0000");
        assert_eq!(copy.payload, delivery.payload, "the payload is copied as it came");
    }
}
