//! Reading long histories as async streams, page by page: the one paging loop every reader
//! of a whole stream goes through.

use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};

use crate::error::{Error, Result};
use crate::model::RecordedEvent;
use crate::store::EventStore;

/// A stream's events from `from_version` on, fetched `page` at a time. Lazy: a reader that
/// stops early fetches no further page.
pub fn stream_events<'a, S: EventStore + ?Sized>(
    store: &'a S,
    stream_id: &'a str,
    from_version: u64,
    page: usize,
) -> BoxStream<'a, Result<RecordedEvent>> {
    let page = page.max(1);
    stream::try_unfold(Some(from_version.max(1)), move |next| async move {
        let Some(next) = next else { return Ok::<_, Error>(None) };
        let events = store.read_stream(stream_id, next, page).await?;
        let following = if events.len() < page { None } else { events.last().map(|e| e.version + 1) };
        Ok(Some((stream::iter(events.into_iter().map(Ok::<_, Error>)), following)))
    })
    .try_flatten()
    .boxed()
}
