//! A read as a `Stream` of events, for `EventStore::read`.

use std::pin::Pin;
use std::task::{Context, Poll};

use annal_core::{RecordedEvent, Result};
use futures_core::Stream;

use super::Cursor;

/// A read as a stream of events.
pub(crate) struct ReadStream {
    pub cursor: Cursor,
    pub done: bool,
}

impl Stream for ReadStream {
    type Item = Result<RecordedEvent>;

    fn poll_next(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match this.cursor.next_event() {
            Ok(Some(e)) => Poll::Ready(Some(Ok(e))),
            Ok(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Err(e) => {
                this.done = true;
                Poll::Ready(Some(Err(e)))
            }
        }
    }
}
