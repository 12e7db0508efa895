//! Reading long histories as async streams, page by page.

use std::sync::Arc;

use futures::stream::{self, Stream, StreamExt, TryStreamExt};

use crate::error::{Error, Result};
use crate::model::RecordedEvent;
use crate::store::EventStore;

/// A stream's events from `from_version` on, fetched `page` at a time.
pub fn stream_events(
    store: Arc<dyn EventStore>,
    stream_id: String,
    from_version: u64,
    page: usize,
) -> impl Stream<Item = Result<RecordedEvent>> {
    let page = page.max(1);
    stream::try_unfold(Some(from_version.max(1)), move |next| {
        let store = Arc::clone(&store);
        let stream_id = stream_id.clone();
        async move {
            let Some(next) = next else { return Ok::<_, Error>(None) };
            let events = store.read_stream(&stream_id, next, page).await?;
            let following = if events.len() < page { None } else { events.last().map(|e| e.version + 1) };
            Ok(Some((stream::iter(events.into_iter().map(Ok::<_, Error>)), following)))
        }
    })
    .try_flatten()
    .boxed()
}
