use std::fmt;

use crate::{NewEvent, Query, RecordedEvent, Text, Timestamp, Uuid};

/// What the writer expects of a stream before its batch is appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExpectedRevision {
    /// No check.
    #[default]
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must have at least one event.
    StreamExists,
    /// The stream's last revision must be exactly this.
    Exact(u64),
}

impl fmt::Display for ExpectedRevision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedRevision::Any => f.write_str("any"),
            ExpectedRevision::NoStream => f.write_str("no stream"),
            ExpectedRevision::StreamExists => f.write_str("stream exists"),
            ExpectedRevision::Exact(n) => write!(f, "revision {n}"),
        }
    }
}

impl ExpectedRevision {
    /// True when a stream whose last revision is `actual` (None: no stream) satisfies this.
    pub fn accepts(self, actual: Option<u64>) -> bool {
        match self {
            ExpectedRevision::Any => true,
            ExpectedRevision::NoStream => actual.is_none(),
            ExpectedRevision::StreamExists => actual.is_some(),
            ExpectedRevision::Exact(n) => actual == Some(n),
        }
    }
}

/// The stream id of events that belong to no stream ([`StreamAppend::no_stream`]).
pub const NO_STREAM: &str = "";

/// A batch of events for one stream, with its concurrency check.
///
/// A batch whose stream id is empty ([`NO_STREAM`]) holds events that belong to no stream,
/// as Dynamic Consistency Boundary decisions write them: they are found by tag, type and
/// the whole log, create no stream, and cost no per-stream memory. Their expected revision
/// is [`ExpectedRevision::Any`] (a condition guards them instead), and an event's revision
/// is its place among them in its request (0, 1, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAppend {
    pub stream_id: Text,
    pub expected: ExpectedRevision,
    pub events: Vec<NewEvent>,
}

impl StreamAppend {
    pub fn new(
        stream_id: impl Into<Text>,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Self {
        StreamAppend {
            stream_id: stream_id.into(),
            expected,
            events,
        }
    }

    /// A batch of events that belong to no stream.
    pub fn no_stream(events: Vec<NewEvent>) -> Self {
        StreamAppend::new(NO_STREAM, ExpectedRevision::Any, events)
    }
}

/// A Dynamic Consistency Boundary condition: the append fails when any event matching `query`
/// exists with a position after `after` (anywhere in the log when `after` is `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendCondition {
    pub query: Query,
    pub after: Option<u64>,
}

/// One atomic append: batches to one or more streams, all written or none.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AppendRequest {
    pub streams: Vec<StreamAppend>,
    pub condition: Option<AppendCondition>,
}

impl AppendRequest {
    /// A batch to one stream.
    pub fn stream(
        stream_id: impl Into<Text>,
        expected: ExpectedRevision,
        events: Vec<NewEvent>,
    ) -> Self {
        AppendRequest {
            streams: vec![StreamAppend::new(stream_id, expected, events)],
            condition: None,
        }
    }

    /// Events that belong to no stream, found by their tags and types (guard them with
    /// [`with_condition`](Self::with_condition)).
    pub fn no_stream(events: Vec<NewEvent>) -> Self {
        AppendRequest {
            streams: vec![StreamAppend::no_stream(events)],
            condition: None,
        }
    }

    /// Adds a batch to another stream.
    pub fn and(mut self, append: StreamAppend) -> Self {
        self.streams.push(append);
        self
    }

    /// Adds a DCB condition.
    pub fn with_condition(mut self, query: Query, after: Option<u64>) -> Self {
        self.condition = Some(AppendCondition { query, after });
        self
    }

    /// How many events the request carries.
    pub fn event_count(&self) -> usize {
        self.streams.iter().map(|s| s.events.len()).sum()
    }
}

/// Where one stream's batch landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAppendResult {
    pub stream_id: Text,
    /// The stream's revision after the append (its last event's revision).
    pub revision: u64,
    pub first_position: u64,
    pub last_position: u64,
}

/// The outcome of a successful append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendResult {
    /// One entry per [`StreamAppend`], in request order.
    pub streams: Vec<StreamAppendResult>,
    pub first_position: u64,
    pub last_position: u64,
    pub recorded_at: Timestamp,
}

impl AppendResult {
    /// The new revision of the first (usually only) stream.
    pub fn revision(&self) -> u64 {
        self.streams.first().map_or(0, |s| s.revision)
    }
}

/// Which way a read goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    #[default]
    Forward,
    Backward,
}

/// Where time travel stops a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    /// Only events at or before this position.
    Position(u64),
    /// Only events recorded at or before this instant.
    Time(Timestamp),
}

/// What a read or a subscription draws from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The whole log.
    All,
    /// One stream; `from` counts stream revisions.
    Stream(String),
    /// Every stream of a category (the stream id's prefix before the first `-`).
    Category(String),
    /// Events of any of these types.
    EventTypes(Vec<String>),
    /// Events matching a tag/type query.
    Query(Query),
    /// Every event of one business transaction: those whose metadata carry this correlation
    /// id, across all streams, in log order.
    Correlation(Uuid),
    /// Every event whose metadata name this actor.
    Actor(String),
    /// Filters combined: events that pass every one given.
    Select(Selection),
}

/// Filters that combine: an event is selected when it passes every filter that is given
/// (at least one must be). Events of no stream have no category or stream id, so a
/// selection with `category` or `stream_prefix` never selects them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selection {
    /// Only streams of this category.
    pub category: Option<String>,
    /// Only streams whose id starts with this.
    pub stream_prefix: Option<String>,
    /// Only events this type/tag query matches.
    pub query: Option<Query>,
}

impl Selection {
    /// The plainest source that selects the same events: the whole log when no filter is
    /// given, a category, event types or a query when only it is, else the selection.
    pub fn into_source(self) -> Source {
        match (self.category, self.stream_prefix, self.query) {
            (None, None, None) => Source::All,
            (Some(c), None, None) => Source::Category(c),
            (None, None, Some(mut q))
                if q.items.len() == 1
                    && q.items[0].tags.is_empty()
                    && !q.items[0].types.is_empty() =>
            {
                Source::EventTypes(q.items.remove(0).types)
            }
            (None, None, Some(q)) => Source::Query(q),
            (category, stream_prefix, query) => Source::Select(Selection {
                category,
                stream_prefix,
                query,
            }),
        }
    }

    /// True when an event of this stream, type and tags passes every filter.
    pub fn matches<T: AsRef<str>>(&self, stream_id: &str, event_type: &str, tags: &[T]) -> bool {
        let in_stream = !stream_id.is_empty();
        self.category
            .as_ref()
            .is_none_or(|c| in_stream && crate::category_of(stream_id) == c)
            && self
                .stream_prefix
                .as_ref()
                .is_none_or(|p| in_stream && stream_id.starts_with(p.as_str()))
            && self
                .query
                .as_ref()
                .is_none_or(|q| q.matches(event_type, tags))
    }
}

/// A read. `from` is inclusive: a stream revision for [`Source::Stream`], a log position
/// otherwise; `None` starts at the beginning (forward) or the end (backward).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    pub source: Source,
    pub from: Option<u64>,
    pub direction: Direction,
    pub limit: Option<u64>,
    pub as_of: Option<AsOf>,
}

impl ReadRequest {
    /// One stream, forward from its first event.
    pub fn stream(stream_id: impl Into<String>) -> Self {
        Self::source(Source::Stream(stream_id.into()))
    }

    /// The whole log, forward from position 0.
    pub fn all() -> Self {
        Self::source(Source::All)
    }

    /// Every stream of a category, forward.
    pub fn category(category: impl Into<String>) -> Self {
        Self::source(Source::Category(category.into()))
    }

    /// Events of these types, forward.
    pub fn event_types<I: IntoIterator<Item = S>, S: Into<String>>(types: I) -> Self {
        Self::source(Source::EventTypes(
            types.into_iter().map(Into::into).collect(),
        ))
    }

    /// Events matching a query, forward.
    pub fn query(query: Query) -> Self {
        Self::source(Source::Query(query))
    }

    /// Every event of one business transaction, forward.
    pub fn correlation(correlation_id: Uuid) -> Self {
        Self::source(Source::Correlation(correlation_id))
    }

    /// Every event of one actor, forward.
    pub fn actor(actor: impl Into<String>) -> Self {
        Self::source(Source::Actor(actor.into()))
    }

    /// Events that pass every filter of a selection, forward.
    pub fn select(selection: Selection) -> Self {
        Self::source(Source::Select(selection))
    }

    /// A forward read of a source from its beginning.
    pub fn source(source: Source) -> Self {
        ReadRequest {
            source,
            from: None,
            direction: Direction::Forward,
            limit: None,
            as_of: None,
        }
    }

    pub fn from(mut self, from: u64) -> Self {
        self.from = Some(from);
        self
    }

    pub fn backward(mut self) -> Self {
        self.direction = Direction::Backward;
        self
    }

    pub fn limit(mut self, limit: u64) -> Self {
        self.limit = Some(limit);
        self
    }

    pub fn as_of(mut self, as_of: AsOf) -> Self {
        self.as_of = Some(as_of);
        self
    }
}

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SubscribeFrom {
    /// From the first event of the log.
    #[default]
    Start,
    /// After this position (a checkpoint: the last position already processed).
    After(u64),
    /// Only events appended from now on.
    Now,
}

/// A subscription: catch up through history, then live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeRequest {
    /// Any [`Source`]; positions are log positions whatever the source.
    pub source: Source,
    pub from: SubscribeFrom,
}

impl SubscribeRequest {
    pub fn new(source: Source, from: SubscribeFrom) -> Self {
        SubscribeRequest { source, from }
    }
}

/// What a subscription delivers.
// Nearly every item is an event, so boxing it to shrink the rare marker would only add an
// allocation per event.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionItem {
    Event(RecordedEvent),
    /// History is delivered up to `position` (the log's last position then); live events
    /// follow. Sent once per subscription.
    CaughtUp {
        position: Option<u64>,
    },
    /// Every event at or before `position` that the subscription selects has been delivered.
    /// A filtered subscriber stores it as its resume point (`SubscribeFrom::After`) so that
    /// restarting does not re-scan the events it skipped. Sent, after the caught-up marker,
    /// when the subscription has passed events it does not deliver and waits for more.
    Checkpoint {
        position: u64,
    },
}

/// What the store knows of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    pub stream_id: String,
    /// The last event's revision.
    pub revision: u64,
    pub first_position: u64,
    pub last_position: u64,
    /// How many events the stream holds (revision + 1).
    pub count: u64,
    pub created_at: Timestamp,
    pub last_written_at: Timestamp,
}

/// A page of the stream listing, in stream id order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListStreams {
    /// Only streams whose id starts with this.
    pub prefix: Option<String>,
    /// Start after this stream id (the last one of the previous page).
    pub after: Option<String>,
    pub limit: usize,
}

/// A page of the category listing, in name order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListCategories {
    pub after: Option<String>,
    pub limit: usize,
}

/// What the store knows of a category.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CategoryInfo {
    pub category: String,
    pub stream_count: u64,
    pub event_count: u64,
}
