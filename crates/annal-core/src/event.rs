use std::collections::BTreeMap;

use bytes::Bytes;
use uuid::Uuid;

use crate::{Text, Timestamp};

/// The content type events get when none is given.
pub const DEFAULT_CONTENT_TYPE: &str = "application/json";

/// Who and why: the audit trail that travels with every event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Metadata {
    /// Groups every event caused by one original request.
    pub correlation_id: Option<Uuid>,
    /// The id of the event or command that directly caused this one.
    pub causation_id: Option<Uuid>,
    /// Who did it (a user, a service).
    pub actor: Option<Text>,
    /// Free-form key/values.
    pub extra: BTreeMap<String, String>,
}

impl Metadata {
    /// True when no field is set.
    pub fn is_empty(&self) -> bool {
        self.correlation_id.is_none()
            && self.causation_id.is_none()
            && self.actor.is_none()
            && self.extra.is_empty()
    }
}

/// An event to append. The store assigns stream, revision, position and time.
///
/// Names are [`Text`] and the payload [`Bytes`]: shared buffers, so that a request decoded
/// from the network keeps each event's data where it arrived instead of copying it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// Unique across the store; the idempotency key of retries.
    pub id: Uuid,
    /// What happened, e.g. `MoneyDeposited`.
    pub event_type: Text,
    /// Version of the event's schema, for upcasting (default 1).
    pub schema_version: u32,
    /// Content type of `data` (default `application/json`).
    pub content_type: Text,
    pub metadata: Metadata,
    /// The payload; opaque to the store.
    pub data: Bytes,
    /// Tags for Dynamic Consistency Boundary queries, e.g. `account:42`.
    pub tags: Vec<Text>,
}

impl NewEvent {
    /// A JSON event with a fresh random id, schema version 1 and no tags or metadata.
    pub fn new(event_type: impl Into<Text>, data: impl Into<Bytes>) -> Self {
        NewEvent {
            id: Uuid::new_v4(),
            event_type: event_type.into(),
            schema_version: 1,
            content_type: default_content_type(),
            metadata: Metadata::default(),
            data: data.into(),
            tags: Vec::new(),
        }
    }

    /// Sets the event id.
    pub fn with_id(mut self, id: Uuid) -> Self {
        self.id = id;
        self
    }

    /// Adds a tag.
    pub fn with_tag(mut self, tag: impl Into<Text>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Sets the metadata.
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// Sets the schema version.
    pub fn with_schema_version(mut self, version: u32) -> Self {
        self.schema_version = version;
        self
    }

    /// Sets the content type.
    pub fn with_content_type(mut self, content_type: impl Into<Text>) -> Self {
        self.content_type = content_type.into();
        self
    }

    /// The bytes this event occupies in a request, for size limits.
    pub fn size(&self) -> usize {
        self.event_type.len()
            + self.content_type.len()
            + self.data.len()
            + self.tags.iter().map(|t| t.len()).sum::<usize>()
            + self.metadata.actor.as_ref().map_or(0, |a| a.len())
            + self
                .metadata
                .extra
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
            + 64
    }
}

/// An event as stored.
///
/// Its names and payload are shared buffers: the events read from one record of the log
/// share that record's bytes and their stream's id, so reading allocates nothing per field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    pub id: Uuid,
    pub stream_id: Text,
    /// 0, 1, 2, ... gapless within the stream.
    pub revision: u64,
    /// 0, 1, 2, ... gapless across the whole log.
    pub position: u64,
    /// When the store wrote it; never decreases along the log.
    pub recorded_at: Timestamp,
    pub event_type: Text,
    pub schema_version: u32,
    pub content_type: Text,
    pub metadata: Metadata,
    pub data: Bytes,
    pub tags: Vec<Text>,
}

impl RecordedEvent {
    /// The stream's category: the part of the stream id before the first `-`.
    pub fn category(&self) -> &str {
        category_of(&self.stream_id)
    }

    /// The event's stream; `None` for an event of no stream (its `stream_id` is empty).
    pub fn in_stream(&self) -> Option<&str> {
        (!self.stream_id.is_empty()).then_some(&*self.stream_id)
    }

    /// True when this stored event is the same event as `e` (all that the writer supplied).
    pub fn same_as(&self, e: &NewEvent) -> bool {
        self.id == e.id
            && self.event_type == e.event_type
            && self.schema_version == e.schema_version
            && self.content_type == e.content_type
            && self.metadata == e.metadata
            && self.data == e.data
            && self.tags == e.tags
    }
}

/// The default content type as [`Text`], shared by every event that takes it.
pub fn default_content_type() -> Text {
    static DEFAULT: std::sync::OnceLock<Text> = std::sync::OnceLock::new();
    DEFAULT
        .get_or_init(|| Text::from(DEFAULT_CONTENT_TYPE))
        .clone()
}

/// The category of a stream: the prefix before the first `-` (the whole id when it has none).
pub fn category_of(stream_id: &str) -> &str {
    stream_id.split_once('-').map_or(stream_id, |(c, _)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn category_is_prefix_before_first_dash() {
        assert_eq!(category_of("account-42"), "account");
        assert_eq!(category_of("order-7-line-3"), "order");
        assert_eq!(category_of("singleton"), "singleton");
        assert_eq!(category_of("-x"), "");
    }
}
