//! Annal's API: the event data model, the [`EventStore`] trait every backend implements, and the
//! error type they all return.
//!
//! This crate has no runtime and no I/O. The embedded engine (`annal-engine`), the network client
//! and the PostgreSQL backend all implement [`EventStore`] and pass the same conformance suite,
//! which lives here behind the `testkit` feature.

mod error;
mod event;
mod query;
mod request;
mod snapshot;
mod store;
mod text;
mod time;
pub mod validate;

#[cfg(feature = "testkit")]
pub mod testkit;

pub use bytes::Bytes;
pub use error::{Error, IoError};
pub use event::{
    category_of, default_content_type, Metadata, NewEvent, RecordedEvent, DEFAULT_CONTENT_TYPE,
};
pub use query::{Query, QueryItem};
pub use request::{
    AppendCondition, AppendRequest, AppendResult, AsOf, CategoryInfo, Direction, ExpectedRevision,
    ListCategories, ListStreams, ReadRequest, Selection, Source, StreamAppend, StreamAppendResult,
    StreamInfo, SubscribeFrom, SubscribeRequest, SubscriptionItem, NO_STREAM,
};
pub use snapshot::{keep_snapshot, latest_snapshot, NewSnapshot, Snapshot, SNAPSHOTS_PER_STREAM};
pub use store::{next_item, EventStore, EventStoreExt, EventStream, SubscriptionStream};
pub use text::{Text, TextCache};
pub use time::{Timestamp, TimestampError};
pub use uuid::Uuid;

/// A shorthand for results whose error is Annal's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
