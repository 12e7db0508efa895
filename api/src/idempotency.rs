//! `Idempotency-Key`: the first request under a key records its fingerprint and response in
//! a stream of its own, in the transaction of its effect; a retry gets that response back.

use axum::http::HeaderMap;
use event_store::{Commit, EventStore, ExpectedVersion, NewEvent};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ApiResult};

const HEADER: &str = "idempotency-key";

/// What the first request under a key left: its fingerprint and its response.
#[derive(Debug, Serialize, Deserialize)]
pub struct Record<T> {
    pub fingerprint: String,
    pub response: T,
}

/// The request's `Idempotency-Key`, if it has one.
pub fn key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(value) = headers.get(HEADER) else { return Ok(None) };
    let key = value.to_str().map_err(|_| ApiError::BadRequest("Idempotency-Key must be visible ASCII".into()))?;
    if key.is_empty() || key.len() > 200 || !key.chars().all(|c| c.is_ascii_graphic()) {
        return Err(ApiError::BadRequest("Idempotency-Key must be 1-200 visible ASCII characters".into()));
    }
    Ok(Some(key.to_owned()))
}

/// The record of the first request under this key's stream, if there was one.
pub async fn stored<T: DeserializeOwned>(store: &dyn EventStore, stream: &str) -> ApiResult<Option<Record<T>>> {
    let events = store.read_stream(stream, 1, 1).await?;
    Ok(events.first().and_then(|e| serde_json::from_value(e.data.clone()).ok()))
}

/// The claim of a key: commits only if no request took the key first.
pub fn claim<T: Serialize>(stream: &str, record: &Record<T>) -> ApiResult<Commit> {
    let data = serde_json::to_value(record).map_err(engine::Error::Encode)?;
    Ok(Commit::append(stream.to_owned(), ExpectedVersion::NoStream, vec![NewEvent::new("RequestAccepted", data)]))
}

/// Whether `err` says a concurrent request took the key's stream first.
pub fn lost_race(err: &engine::Error, stream: &str) -> bool {
    matches!(err, engine::Error::Store(event_store::Error::WrongExpectedVersion { stream: s, .. }) if s == stream)
}
