use std::future::Future;
use std::pin::Pin;

use futures_core::Stream;

use crate::{
    AppendRequest, AppendResult, CategoryInfo, ListCategories, ListStreams, NewSnapshot,
    ReadRequest, RecordedEvent, Result, Snapshot, StreamInfo, SubscribeRequest, SubscriptionItem,
    Timestamp,
};

/// Events of a read, in order, fetched lazily, with the head of the log the read was served
/// at.
pub struct EventStream {
    head: Option<u64>,
    events: Pin<Box<dyn Stream<Item = Result<RecordedEvent>> + Send>>,
}

impl EventStream {
    pub fn new(
        head: Option<u64>,
        events: impl Stream<Item = Result<RecordedEvent>> + Send + 'static,
    ) -> Self {
        EventStream {
            head,
            events: Box::pin(events),
        }
    }

    /// The log's last position when the read was served (`None`: the log was empty). The
    /// read holds every event it selects up to there (and up to its `as_of`), so a decision
    /// that read its state here guards its append with the condition "nothing matching
    /// after this head", in one request.
    pub fn head(&self) -> Option<u64> {
        self.head
    }
}

impl Stream for EventStream {
    type Item = Result<RecordedEvent>;

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.get_mut().events.as_mut().poll_next(cx)
    }
}

/// Items of a subscription: history, a caught-up marker, then live events.
pub type SubscriptionStream = Pin<Box<dyn Stream<Item = Result<SubscriptionItem>> + Send>>;

/// An event store: the embedded engine, the network client and the PostgreSQL backend all
/// implement this and pass the same conformance suite (`testkit` feature).
pub trait EventStore: Send + Sync {
    /// Appends atomically, after checking every expected revision and the DCB condition.
    /// Returns once the events are durable.
    fn append(&self, request: AppendRequest) -> impl Future<Output = Result<AppendResult>> + Send;

    /// Reads events. The request is validated before the stream is returned.
    fn read(&self, request: ReadRequest) -> impl Future<Output = Result<EventStream>> + Send;

    /// Subscribes: history from the starting point, a [`SubscriptionItem::CaughtUp`] marker,
    /// then live events, with no gap and no duplicate.
    fn subscribe(
        &self,
        request: SubscribeRequest,
    ) -> impl Future<Output = Result<SubscriptionStream>> + Send;

    /// What the store knows of one stream; `None` when it has no event.
    fn stream_info(
        &self,
        stream_id: &str,
    ) -> impl Future<Output = Result<Option<StreamInfo>>> + Send;

    /// A page of streams in id order.
    fn list_streams(
        &self,
        request: ListStreams,
    ) -> impl Future<Output = Result<Vec<StreamInfo>>> + Send;

    /// A page of categories in name order.
    fn list_categories(
        &self,
        request: ListCategories,
    ) -> impl Future<Output = Result<Vec<CategoryInfo>>> + Send;

    /// The last position recorded at or before `at`: the head of the log at that moment.
    /// `None` when nothing had been written by then.
    fn position_at(&self, at: Timestamp) -> impl Future<Output = Result<Option<u64>>> + Send;

    /// The log's last position; `None` when the store is empty.
    fn head(&self) -> impl Future<Output = Result<Option<u64>>> + Send;

    /// Keeps a snapshot of a stream at one of its revisions (replacing one of the same
    /// revision), durably before it returns. Of a stream's snapshots the store keeps the
    /// [`SNAPSHOTS_PER_STREAM`](crate::SNAPSHOTS_PER_STREAM) of highest revision. Its data
    /// is bounded as an event's is; the stream must have reached its revision.
    fn put_snapshot(&self, snapshot: NewSnapshot) -> impl Future<Output = Result<()>> + Send;

    /// The stream's snapshot of the highest revision at or before `at_or_before` (`None`:
    /// the latest); `None` when it has none.
    fn get_snapshot(
        &self,
        stream_id: &str,
        at_or_before: Option<u64>,
    ) -> impl Future<Output = Result<Option<Snapshot>>> + Send;

    /// Deletes every snapshot of a stream, durably before it returns; returns how many there
    /// were.
    fn delete_snapshots(&self, stream_id: &str) -> impl Future<Output = Result<u64>> + Send;
}

/// A shared store is a store: code written against [`EventStore`] takes an `Arc` of the
/// engine or of a client as readily as the value.
impl<T: EventStore> EventStore for std::sync::Arc<T> {
    fn append(&self, request: AppendRequest) -> impl Future<Output = Result<AppendResult>> + Send {
        (**self).append(request)
    }

    fn read(&self, request: ReadRequest) -> impl Future<Output = Result<EventStream>> + Send {
        (**self).read(request)
    }

    fn subscribe(
        &self,
        request: SubscribeRequest,
    ) -> impl Future<Output = Result<SubscriptionStream>> + Send {
        (**self).subscribe(request)
    }

    fn stream_info(
        &self,
        stream_id: &str,
    ) -> impl Future<Output = Result<Option<StreamInfo>>> + Send {
        (**self).stream_info(stream_id)
    }

    fn list_streams(
        &self,
        request: ListStreams,
    ) -> impl Future<Output = Result<Vec<StreamInfo>>> + Send {
        (**self).list_streams(request)
    }

    fn list_categories(
        &self,
        request: ListCategories,
    ) -> impl Future<Output = Result<Vec<CategoryInfo>>> + Send {
        (**self).list_categories(request)
    }

    fn position_at(&self, at: Timestamp) -> impl Future<Output = Result<Option<u64>>> + Send {
        (**self).position_at(at)
    }

    fn head(&self) -> impl Future<Output = Result<Option<u64>>> + Send {
        (**self).head()
    }

    fn put_snapshot(&self, snapshot: NewSnapshot) -> impl Future<Output = Result<()>> + Send {
        (**self).put_snapshot(snapshot)
    }

    fn get_snapshot(
        &self,
        stream_id: &str,
        at_or_before: Option<u64>,
    ) -> impl Future<Output = Result<Option<Snapshot>>> + Send {
        (**self).get_snapshot(stream_id, at_or_before)
    }

    fn delete_snapshots(&self, stream_id: &str) -> impl Future<Output = Result<u64>> + Send {
        (**self).delete_snapshots(stream_id)
    }
}

/// Waits for the next item of a stream (no combinator crate needed).
pub async fn next_item<S: Stream + Unpin + ?Sized>(stream: &mut S) -> Option<S::Item> {
    std::future::poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)).await
}

/// Conveniences on top of [`EventStore`].
pub trait EventStoreExt: EventStore {
    /// Reads every event the request selects into memory.
    fn read_to_vec(
        &self,
        request: ReadRequest,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>>> + Send {
        async move {
            let mut stream = self.read(request).await?;
            let mut out = Vec::new();
            while let Some(e) = next_item(&mut stream).await {
                out.push(e?);
            }
            Ok(out)
        }
    }
}

impl<T: EventStore + ?Sized> EventStoreExt for T {}
