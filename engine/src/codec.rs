//! Turning domain events into stored events and back.

use event_store::{NewEvent, RecordedEvent};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use crate::error::{Error, Result};

/// Splits an adjacently tagged event into its type and data.
pub fn encode<E: Serialize>(event: &E) -> Result<NewEvent> {
    let value = serde_json::to_value(event).map_err(Error::Encode)?;
    let Value::Object(mut map) = value else {
        return Err(Error::Encode(serde::ser::Error::custom("event must serialize to an object")));
    };
    let Some(Value::String(event_type)) = map.remove("type") else {
        return Err(Error::Encode(serde::ser::Error::custom("event must be tagged with \"type\"")));
    };
    let data = map.remove("data").unwrap_or(Value::Object(serde_json::Map::new()));
    Ok(NewEvent::new(event_type, data))
}

/// Rebuilds a domain event from a stored one.
pub fn decode<E: DeserializeOwned>(event: &RecordedEvent) -> Result<E> {
    serde_json::from_value(json!({ "type": event.event_type, "data": event.data })).map_err(|source| Error::Decode {
        stream: event.stream_id.clone(),
        version: event.version,
        source,
    })
}
