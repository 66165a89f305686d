//! What the server serves: any [`EventStore`], through [`Backend`], the extension trait for
//! the fast paths the embedded engine offers (reads that hand out events as stored, its
//! health, closing it with a checkpoint). Each has a default that works for any store, so a
//! store without them is served by wrapping it in [`Plain`].
//!
//! Inside the server the store is an `Arc<dyn Served>`: the same operations with boxed
//! futures, so that handlers are compiled once whatever the backend.

use std::future::Future;
use std::pin::Pin;

use annal_core::{
    AppendRequest, AppendResult, CategoryInfo, EventStore, EventStream, ListCategories,
    ListStreams, NewSnapshot, ReadRequest, Result, Snapshot, StreamInfo, SubscribeRequest,
    SubscriptionStream, Timestamp,
};
use annal_engine::{Store, StoredRead};

/// The engine's fast paths, with defaults for any other store.
pub trait Backend: EventStore + 'static {
    /// `Err(why)` while the store refuses writes: `/ready` answers 503 with the reason, and
    /// the server's info shows it.
    fn health(&self) -> std::result::Result<(), String> {
        Ok(())
    }

    /// A read run on the calling thread that hands each event out as it is stored, without
    /// an owned copy (for packed batches). The request is checked now. `None`: the store
    /// has no such read, and the server reads through [`EventStore::read`].
    fn read_stored(&self, request: &ReadRequest) -> Option<Result<StoredRead>> {
        let _ = request;
        None
    }

    /// Closes the store once nothing else holds it, after serving. Dropping it by default.
    fn close(self) -> Result<()>
    where
        Self: Sized,
    {
        drop(self);
        Ok(())
    }
}

impl Backend for Store {
    fn health(&self) -> std::result::Result<(), String> {
        self.poison_cause().map_or(Ok(()), Err)
    }

    fn read_stored(&self, request: &ReadRequest) -> Option<Result<StoredRead>> {
        Some(Store::read_stored(self, request.clone()))
    }

    /// Stops the engine's threads after the appends already queued and writes a
    /// checkpoint, so that the next start replays nothing.
    fn close(self) -> Result<()> {
        Store::close(self)
    }
}

/// Any [`EventStore`], served without fast paths.
pub struct Plain<S>(pub S);

impl<S: EventStore> EventStore for Plain<S> {
    fn append(&self, request: AppendRequest) -> impl Future<Output = Result<AppendResult>> + Send {
        self.0.append(request)
    }
    fn read(&self, request: ReadRequest) -> impl Future<Output = Result<EventStream>> + Send {
        self.0.read(request)
    }
    fn subscribe(
        &self,
        request: SubscribeRequest,
    ) -> impl Future<Output = Result<SubscriptionStream>> + Send {
        self.0.subscribe(request)
    }
    fn stream_info(
        &self,
        stream_id: &str,
    ) -> impl Future<Output = Result<Option<StreamInfo>>> + Send {
        self.0.stream_info(stream_id)
    }
    fn list_streams(
        &self,
        request: ListStreams,
    ) -> impl Future<Output = Result<Vec<StreamInfo>>> + Send {
        self.0.list_streams(request)
    }
    fn list_categories(
        &self,
        request: ListCategories,
    ) -> impl Future<Output = Result<Vec<CategoryInfo>>> + Send {
        self.0.list_categories(request)
    }
    fn position_at(&self, at: Timestamp) -> impl Future<Output = Result<Option<u64>>> + Send {
        self.0.position_at(at)
    }
    fn head(&self) -> impl Future<Output = Result<Option<u64>>> + Send {
        self.0.head()
    }
    fn put_snapshot(&self, snapshot: NewSnapshot) -> impl Future<Output = Result<()>> + Send {
        self.0.put_snapshot(snapshot)
    }
    fn get_snapshot(
        &self,
        stream_id: &str,
        at_or_before: Option<u64>,
    ) -> impl Future<Output = Result<Option<Snapshot>>> + Send {
        self.0.get_snapshot(stream_id, at_or_before)
    }
    fn delete_snapshots(&self, stream_id: &str) -> impl Future<Output = Result<u64>> + Send {
        self.0.delete_snapshots(stream_id)
    }
}

impl<S: EventStore + 'static> Backend for Plain<S> {}

/// A boxed future, so that [`Served`] can be a trait object.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A [`Backend`] as a trait object: what the handlers call.
pub(crate) trait Served: Send + Sync {
    fn append(&self, request: AppendRequest) -> BoxFuture<'_, Result<AppendResult>>;
    fn read(&self, request: ReadRequest) -> BoxFuture<'_, Result<EventStream>>;
    fn subscribe(&self, request: SubscribeRequest) -> BoxFuture<'_, Result<SubscriptionStream>>;
    fn stream_info<'a>(&'a self, stream_id: &'a str) -> BoxFuture<'a, Result<Option<StreamInfo>>>;
    fn list_streams(&self, request: ListStreams) -> BoxFuture<'_, Result<Vec<StreamInfo>>>;
    fn list_categories(&self, request: ListCategories) -> BoxFuture<'_, Result<Vec<CategoryInfo>>>;
    fn position_at(&self, at: Timestamp) -> BoxFuture<'_, Result<Option<u64>>>;
    fn head(&self) -> BoxFuture<'_, Result<Option<u64>>>;
    fn put_snapshot(&self, snapshot: NewSnapshot) -> BoxFuture<'_, Result<()>>;
    fn get_snapshot<'a>(
        &'a self,
        stream_id: &'a str,
        at_or_before: Option<u64>,
    ) -> BoxFuture<'a, Result<Option<Snapshot>>>;
    fn delete_snapshots<'a>(&'a self, stream_id: &'a str) -> BoxFuture<'a, Result<u64>>;
    fn health(&self) -> std::result::Result<(), String>;
    fn read_stored(&self, request: &ReadRequest) -> Option<Result<StoredRead>>;
}

impl<S: Backend> Served for S {
    fn append(&self, request: AppendRequest) -> BoxFuture<'_, Result<AppendResult>> {
        Box::pin(EventStore::append(self, request))
    }
    fn read(&self, request: ReadRequest) -> BoxFuture<'_, Result<EventStream>> {
        Box::pin(EventStore::read(self, request))
    }
    fn subscribe(&self, request: SubscribeRequest) -> BoxFuture<'_, Result<SubscriptionStream>> {
        Box::pin(EventStore::subscribe(self, request))
    }
    fn stream_info<'a>(&'a self, stream_id: &'a str) -> BoxFuture<'a, Result<Option<StreamInfo>>> {
        Box::pin(EventStore::stream_info(self, stream_id))
    }
    fn list_streams(&self, request: ListStreams) -> BoxFuture<'_, Result<Vec<StreamInfo>>> {
        Box::pin(EventStore::list_streams(self, request))
    }
    fn list_categories(&self, request: ListCategories) -> BoxFuture<'_, Result<Vec<CategoryInfo>>> {
        Box::pin(EventStore::list_categories(self, request))
    }
    fn position_at(&self, at: Timestamp) -> BoxFuture<'_, Result<Option<u64>>> {
        Box::pin(EventStore::position_at(self, at))
    }
    fn head(&self) -> BoxFuture<'_, Result<Option<u64>>> {
        Box::pin(EventStore::head(self))
    }
    fn put_snapshot(&self, snapshot: NewSnapshot) -> BoxFuture<'_, Result<()>> {
        Box::pin(EventStore::put_snapshot(self, snapshot))
    }
    fn get_snapshot<'a>(
        &'a self,
        stream_id: &'a str,
        at_or_before: Option<u64>,
    ) -> BoxFuture<'a, Result<Option<Snapshot>>> {
        Box::pin(EventStore::get_snapshot(self, stream_id, at_or_before))
    }
    fn delete_snapshots<'a>(&'a self, stream_id: &'a str) -> BoxFuture<'a, Result<u64>> {
        Box::pin(EventStore::delete_snapshots(self, stream_id))
    }
    fn health(&self) -> std::result::Result<(), String> {
        Backend::health(self)
    }
    fn read_stored(&self, request: &ReadRequest) -> Option<Result<StoredRead>> {
        Backend::read_stored(self, request)
    }
}
