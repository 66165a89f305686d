//! Annal's network API: the protobuf messages and gRPC service of package `annal.v1`
//! (`proto/annal/v1/annal.proto`), and their conversions to and from `annal-core` types.
//!
//! Conversions go two ways with different failure modes:
//! - from a client's message into a core request ([`append_request`], [`read_request`],
//!   [`subscribe_request`]): a malformed field is the caller's mistake, reported as
//!   [`Error::InvalidArgument`] naming the field (`streams[0].events[2].id`);
//! - from a server's message into a core result ([`recorded_event`] and friends): a malformed
//!   field means the server misbehaved, reported as [`Error::Internal`].
//!
//! Errors travel as a [`tonic::Status`] whose code says what kind of failure it is and whose
//! details carry an [`ErrorDetail`], so that [`error_from_status`] rebuilds the exact [`Error`]
//! the store returned ([`status_from_error`] is the other half).

use std::collections::BTreeMap;

use annal_core as core;
use annal_core::{Error, Result, Timestamp, Uuid};
use prost::Message;

/// The response header (gRPC metadata) of a read that gives the log's last position when the
/// read was served; absent when the log was empty.
pub const HEAD_HEADER: &str = "annal-head";

#[allow(clippy::all, missing_docs)]
mod generated {
    tonic::include_proto!("annal.v1");
}

pub use batch::ReadResponse;
pub use generated::*;

pub mod append;
mod batch;
pub mod packed;

/// The gRPC service name, as it appears in request paths (`/annal.v1.EventStore/Append`).
pub const SERVICE: &str = "annal.v1.EventStore";

/// An admin call of consumer groups: the RPC a client makes, and the one the server serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupCall {
    Create,
    Change,
    Delete,
    Get,
    List,
    Parked,
    Replay,
    Discard,
}

/// The consumer group RPCs; they change groups, never the log.
pub const GROUP_METHODS: &[&str] = &[
    "CreateGroup",
    "ChangeGroup",
    "DeleteGroup",
    "GetGroup",
    "ListGroups",
    "ListParked",
    "ReplayParked",
    "DiscardParked",
    "Consume",
];

/// The RPCs that change the store; every other RPC only reads.
pub const WRITE_METHODS: &[&str] = &[
    "Append",
    "PutSnapshot",
    "DeleteSnapshots",
    "CreateGroup",
    "ChangeGroup",
    "DeleteGroup",
    "ReplayParked",
    "DiscardParked",
    "Consume",
];

fn uuid_field(bytes: &[u8], field: impl FnOnce() -> String) -> Result<Uuid> {
    Uuid::from_slice(bytes).map_err(|_| {
        Error::invalid(
            field(),
            format!("must be 16 bytes (a UUID), got {}", bytes.len()),
        )
    })
}

fn optional_uuid(bytes: &[u8], field: impl FnOnce() -> String) -> Result<Option<Uuid>> {
    if bytes.is_empty() {
        Ok(None)
    } else {
        uuid_field(bytes, field).map(Some)
    }
}

fn uuid_bytes(id: Option<Uuid>) -> Vec<u8> {
    id.map_or_else(Vec::new, |u| u.as_bytes().to_vec())
}

/// Turns a core `InvalidArgument` from a client message into a server-side one, for messages
/// the server sent.
fn from_server(e: Error) -> Error {
    match e {
        Error::InvalidArgument { field, problem } => {
            Error::Internal(format!("the server sent an invalid {field}: {problem}"))
        }
        other => other,
    }
}

// ---- metadata and events --------------------------------------------------------------------

impl From<core::Metadata> for Metadata {
    fn from(m: core::Metadata) -> Self {
        Metadata {
            correlation_id: uuid_bytes(m.correlation_id),
            causation_id: uuid_bytes(m.causation_id),
            actor: m.actor.map(String::from),
            extra: m.extra.into_iter().collect(),
        }
    }
}

/// Metadata; `field` names it in errors (called only when there is one).
fn metadata(m: Option<Metadata>, field: impl Fn() -> String) -> Result<core::Metadata> {
    let Some(m) = m else {
        return Ok(core::Metadata::default());
    };
    Ok(core::Metadata {
        correlation_id: optional_uuid(&m.correlation_id, || format!("{}.correlation_id", field()))?,
        causation_id: optional_uuid(&m.causation_id, || format!("{}.causation_id", field()))?,
        actor: m.actor.map(core::Text::from),
        extra: m.extra.into_iter().collect::<BTreeMap<_, _>>(),
    })
}

impl From<core::NewEvent> for NewEvent {
    fn from(e: core::NewEvent) -> Self {
        NewEvent {
            id: e.id.as_bytes().to_vec(),
            event_type: e.event_type.into(),
            schema_version: Some(e.schema_version),
            content_type: Some(e.content_type.into()),
            metadata: (!e.metadata.is_empty()).then(|| e.metadata.into()),
            data: e.data,
            tags: e.tags.into_iter().map(String::from).collect(),
        }
    }
}

/// An event of a client's request; `field` names it in errors (called only when there is
/// one, so valid requests format nothing).
/// Names that repeat between the events of one request share one `Text` through `names`.
fn new_event(
    e: NewEvent,
    field: impl Fn() -> String,
    names: &mut core::TextCache,
) -> Result<core::NewEvent> {
    let id = if e.id.is_empty() {
        Uuid::new_v4()
    } else {
        uuid_field(&e.id, || format!("{}.id", field()))?
    };
    Ok(core::NewEvent {
        id,
        event_type: names.string(e.event_type),
        schema_version: e.schema_version.unwrap_or(1),
        content_type: e
            .content_type
            .map_or_else(core::default_content_type, |c| names.string(c)),
        metadata: metadata(e.metadata, || format!("{}.metadata", field()))?,
        data: e.data,
        tags: e.tags.into_iter().map(|t| names.string(t)).collect(),
    })
}

impl From<core::RecordedEvent> for RecordedEvent {
    fn from(e: core::RecordedEvent) -> Self {
        RecordedEvent {
            id: e.id.as_bytes().to_vec(),
            stream_id: e.stream_id.into(),
            revision: e.revision,
            position: e.position,
            recorded_at_us: e.recorded_at.as_micros(),
            event_type: e.event_type.into(),
            schema_version: e.schema_version,
            content_type: e.content_type.into(),
            metadata: (!e.metadata.is_empty()).then(|| e.metadata.into()),
            data: e.data,
            tags: e.tags.into_iter().map(String::from).collect(),
        }
    }
}

/// An event the server sent.
pub fn recorded_event(e: RecordedEvent) -> Result<core::RecordedEvent> {
    Ok(core::RecordedEvent {
        id: uuid_field(&e.id, || "event id".into()).map_err(from_server)?,
        stream_id: e.stream_id.into(),
        revision: e.revision,
        position: e.position,
        recorded_at: Timestamp(e.recorded_at_us),
        event_type: e.event_type.into(),
        schema_version: e.schema_version,
        content_type: e.content_type.into(),
        metadata: metadata(e.metadata, || "event metadata".into()).map_err(from_server)?,
        data: e.data,
        tags: e.tags.into_iter().map(core::Text::from).collect(),
    })
}

// ---- append ---------------------------------------------------------------------------------

impl From<core::ExpectedRevision> for ExpectedRevision {
    fn from(r: core::ExpectedRevision) -> Self {
        use expected_revision::Kind;
        let kind = match r {
            core::ExpectedRevision::Any => Kind::Any(Empty {}),
            core::ExpectedRevision::NoStream => Kind::NoStream(Empty {}),
            core::ExpectedRevision::StreamExists => Kind::StreamExists(Empty {}),
            core::ExpectedRevision::Exact(n) => Kind::Exact(n),
        };
        ExpectedRevision { kind: Some(kind) }
    }
}

/// An expected revision; absent means any.
pub fn expected_revision(r: Option<ExpectedRevision>) -> core::ExpectedRevision {
    use expected_revision::Kind;
    match r.and_then(|r| r.kind) {
        None | Some(Kind::Any(_)) => core::ExpectedRevision::Any,
        Some(Kind::NoStream(_)) => core::ExpectedRevision::NoStream,
        Some(Kind::StreamExists(_)) => core::ExpectedRevision::StreamExists,
        Some(Kind::Exact(n)) => core::ExpectedRevision::Exact(n),
    }
}

impl From<core::Query> for Query {
    fn from(q: core::Query) -> Self {
        Query {
            items: q
                .items
                .into_iter()
                .map(|i| QueryItem {
                    types: i.types,
                    tags: i.tags,
                })
                .collect(),
        }
    }
}

impl From<Query> for core::Query {
    fn from(q: Query) -> Self {
        core::Query {
            items: q
                .items
                .into_iter()
                .map(|i| core::QueryItem {
                    types: i.types,
                    tags: i.tags,
                })
                .collect(),
        }
    }
}

impl From<core::AppendRequest> for AppendRequest {
    fn from(r: core::AppendRequest) -> Self {
        AppendRequest {
            streams: r
                .streams
                .into_iter()
                .map(|s| StreamAppend {
                    stream_id: s.stream_id.into(),
                    expected: Some(s.expected.into()),
                    events: s.events.into_iter().map(Into::into).collect(),
                })
                .collect(),
            condition: r.condition.map(|c| AppendCondition {
                query: Some(c.query.into()),
                after: c.after,
            }),
        }
    }
}

/// A client's append request. Events without an id get a random one.
pub fn append_request(r: AppendRequest) -> Result<core::AppendRequest> {
    let mut streams = Vec::with_capacity(r.streams.len());
    let mut names = core::TextCache::default();
    for (i, s) in r.streams.into_iter().enumerate() {
        let mut events = Vec::with_capacity(s.events.len());
        for (j, e) in s.events.into_iter().enumerate() {
            events.push(new_event(
                e,
                || format!("streams[{i}].events[{j}]"),
                &mut names,
            )?);
        }
        streams.push(core::StreamAppend {
            stream_id: s.stream_id.into(),
            expected: expected_revision(s.expected),
            events,
        });
    }
    let condition = match r.condition {
        None => None,
        Some(c) => Some(core::AppendCondition {
            query: c
                .query
                .ok_or_else(|| Error::invalid("condition.query", "is missing"))?
                .into(),
            after: c.after,
        }),
    };
    Ok(core::AppendRequest { streams, condition })
}

impl From<core::AppendResult> for AppendResponse {
    fn from(r: core::AppendResult) -> Self {
        AppendResponse {
            streams: r
                .streams
                .into_iter()
                .map(|s| StreamAppendResult {
                    stream_id: s.stream_id.into(),
                    revision: s.revision,
                    first_position: s.first_position,
                    last_position: s.last_position,
                })
                .collect(),
            first_position: r.first_position,
            last_position: r.last_position,
            recorded_at_us: r.recorded_at.as_micros(),
        }
    }
}

impl From<AppendResponse> for core::AppendResult {
    fn from(r: AppendResponse) -> Self {
        core::AppendResult {
            streams: r
                .streams
                .into_iter()
                .map(|s| core::StreamAppendResult {
                    stream_id: s.stream_id.into(),
                    revision: s.revision,
                    first_position: s.first_position,
                    last_position: s.last_position,
                })
                .collect(),
            first_position: r.first_position,
            last_position: r.last_position,
            recorded_at: Timestamp(r.recorded_at_us),
        }
    }
}

// ---- reads and subscriptions ----------------------------------------------------------------

impl From<core::Source> for Source {
    fn from(s: core::Source) -> Self {
        use source::Kind;
        let kind = match s {
            core::Source::All => Kind::All(Empty {}),
            core::Source::Stream(id) => Kind::Stream(id),
            core::Source::Category(c) => Kind::Category(c),
            core::Source::EventTypes(types) => Kind::EventTypes(EventTypes { types }),
            core::Source::Query(q) => Kind::Query(q.into()),
            core::Source::Correlation(c) => Kind::Correlation(c.as_bytes().to_vec()),
            core::Source::Actor(a) => Kind::Actor(a),
            core::Source::Select(s) => Kind::Select(Selection {
                category: s.category,
                stream_prefix: s.stream_prefix,
                query: s.query.map(Into::into),
            }),
        };
        Source { kind: Some(kind) }
    }
}

/// A client's source; it must be given.
pub fn source(s: Option<Source>) -> Result<core::Source> {
    use source::Kind;
    Ok(
        match s
            .and_then(|s| s.kind)
            .ok_or_else(|| Error::invalid("source", "is missing"))?
        {
            Kind::All(_) => core::Source::All,
            Kind::Stream(id) => core::Source::Stream(id),
            Kind::Category(c) => core::Source::Category(c),
            Kind::EventTypes(t) => core::Source::EventTypes(t.types),
            Kind::Query(q) => core::Source::Query(q.into()),
            Kind::Correlation(c) => {
                core::Source::Correlation(core::Uuid::from_slice(&c).map_err(|_| {
                    Error::invalid("correlation id", format!("is {} bytes, not 16", c.len()))
                })?)
            }
            Kind::Actor(a) => core::Source::Actor(a),
            Kind::Select(s) => core::Source::Select(core::Selection {
                category: s.category,
                stream_prefix: s.stream_prefix,
                query: s.query.map(Into::into),
            }),
        },
    )
}

impl From<core::ReadRequest> for ReadRequest {
    fn from(r: core::ReadRequest) -> Self {
        ReadRequest {
            source: Some(r.source.into()),
            start: r.from,
            direction: match r.direction {
                core::Direction::Forward => Direction::Forward,
                core::Direction::Backward => Direction::Backward,
            } as i32,
            limit: r.limit,
            as_of: r.as_of.map(|a| match a {
                core::AsOf::Position(p) => read_request::AsOf::AsOfPosition(p),
                core::AsOf::Time(t) => read_request::AsOf::AsOfTimeUs(t.as_micros()),
            }),
            packed: false,
        }
    }
}

/// A client's read request.
pub fn read_request(r: ReadRequest) -> Result<core::ReadRequest> {
    let direction = match Direction::try_from(r.direction) {
        Ok(Direction::Forward) => core::Direction::Forward,
        Ok(Direction::Backward) => core::Direction::Backward,
        Err(_) => {
            return Err(Error::invalid(
                "direction",
                format!("{} is neither FORWARD (0) nor BACKWARD (1)", r.direction),
            ))
        }
    };
    Ok(core::ReadRequest {
        source: source(r.source)?,
        from: r.start,
        direction,
        limit: r.limit,
        as_of: r.as_of.map(|a| match a {
            read_request::AsOf::AsOfPosition(p) => core::AsOf::Position(p),
            read_request::AsOf::AsOfTimeUs(t) => core::AsOf::Time(Timestamp(t)),
        }),
    })
}

impl SubscribeRequest {
    /// A subscription request with the server's default heartbeat.
    pub fn from_core(r: core::SubscribeRequest) -> Self {
        use subscribe_request::Start;
        SubscribeRequest {
            source: Some(r.source.into()),
            start: Some(match r.from {
                core::SubscribeFrom::Start => Start::Beginning(Empty {}),
                core::SubscribeFrom::After(p) => Start::After(p),
                core::SubscribeFrom::Now => Start::Now(Empty {}),
            }),
            heartbeat_ms: 0,
            packed: false,
        }
    }
}

/// A client's subscription request.
pub fn subscribe_request(r: SubscribeRequest) -> Result<core::SubscribeRequest> {
    use subscribe_request::Start;
    Ok(core::SubscribeRequest {
        source: source(r.source)?,
        from: match r.start {
            None | Some(Start::Beginning(_)) => core::SubscribeFrom::Start,
            Some(Start::After(p)) => core::SubscribeFrom::After(p),
            Some(Start::Now(_)) => core::SubscribeFrom::Now,
        },
    })
}

// ---- stream and category info ---------------------------------------------------------------

impl From<core::StreamInfo> for StreamInfo {
    fn from(s: core::StreamInfo) -> Self {
        StreamInfo {
            stream_id: s.stream_id,
            revision: s.revision,
            first_position: s.first_position,
            last_position: s.last_position,
            count: s.count,
            created_at_us: s.created_at.as_micros(),
            last_written_at_us: s.last_written_at.as_micros(),
        }
    }
}

impl From<StreamInfo> for core::StreamInfo {
    fn from(s: StreamInfo) -> Self {
        core::StreamInfo {
            stream_id: s.stream_id,
            revision: s.revision,
            first_position: s.first_position,
            last_position: s.last_position,
            count: s.count,
            created_at: Timestamp(s.created_at_us),
            last_written_at: Timestamp(s.last_written_at_us),
        }
    }
}

impl From<core::CategoryInfo> for CategoryInfo {
    fn from(c: core::CategoryInfo) -> Self {
        CategoryInfo {
            category: c.category,
            stream_count: c.stream_count,
            event_count: c.event_count,
        }
    }
}

impl From<CategoryInfo> for core::CategoryInfo {
    fn from(c: CategoryInfo) -> Self {
        core::CategoryInfo {
            category: c.category,
            stream_count: c.stream_count,
            event_count: c.event_count,
        }
    }
}

// ---- snapshots ------------------------------------------------------------------------------

impl From<core::NewSnapshot> for PutSnapshotRequest {
    fn from(s: core::NewSnapshot) -> Self {
        PutSnapshotRequest {
            stream_id: s.stream_id,
            revision: s.revision,
            schema_version: s.schema_version,
            data: s.data,
        }
    }
}

impl From<PutSnapshotRequest> for core::NewSnapshot {
    fn from(s: PutSnapshotRequest) -> Self {
        core::NewSnapshot {
            stream_id: s.stream_id,
            revision: s.revision,
            schema_version: s.schema_version,
            data: s.data,
        }
    }
}

impl From<core::Snapshot> for Snapshot {
    fn from(s: core::Snapshot) -> Self {
        Snapshot {
            stream_id: s.stream_id,
            revision: s.revision,
            schema_version: s.schema_version,
            data: s.data,
            taken_at_us: s.taken_at.as_micros(),
        }
    }
}

impl From<Snapshot> for core::Snapshot {
    fn from(s: Snapshot) -> Self {
        core::Snapshot {
            stream_id: s.stream_id,
            revision: s.revision,
            schema_version: s.schema_version,
            data: s.data,
            taken_at: Timestamp(s.taken_at_us),
        }
    }
}

/// A page size: 0 means no limit; anything beyond `usize` is no limit too.
pub fn page_limit(limit: u64) -> usize {
    usize::try_from(limit).unwrap_or(usize::MAX)
}

// ---- errors ---------------------------------------------------------------------------------

/// The gRPC code an error maps to.
pub fn code_of(e: &Error) -> tonic::Code {
    use tonic::Code;
    match e {
        Error::WrongExpectedRevision { .. }
        | Error::ConditionFailed { .. }
        | Error::Poisoned { .. } => Code::FailedPrecondition,
        Error::EventIdConflict { .. } => Code::AlreadyExists,
        Error::InvalidArgument { .. } => Code::InvalidArgument,
        Error::TooLarge { .. } => Code::OutOfRange,
        Error::DiskFull { .. } => Code::ResourceExhausted,
        Error::Corruption { .. } => Code::DataLoss,
        Error::UnsupportedFormat { .. } => Code::FailedPrecondition,
        Error::Closed | Error::Unavailable(_) => Code::Unavailable,
        Error::Unauthenticated(_) => Code::Unauthenticated,
        Error::PermissionDenied(_) => Code::PermissionDenied,
        Error::NotFound(_) => Code::NotFound,
        Error::Io { .. } | Error::Internal(_) => Code::Internal,
    }
}

/// The error as a status: its code, its message, and an [`ErrorDetail`] to rebuild it from.
///
/// The caller decides what a client may see: the server replaces I/O and internal errors with
/// a plain [`Error::Internal`] (and logs the original) before calling this.
pub fn status_from_error(e: &Error) -> tonic::Status {
    use error_detail::Kind;
    let kind = match e.clone() {
        Error::WrongExpectedRevision {
            stream,
            expected,
            actual,
        } => Kind::WrongExpectedRevision(WrongExpectedRevision {
            stream,
            expected: Some(expected.into()),
            actual,
        }),
        Error::ConditionFailed { position, after } => {
            Kind::ConditionFailed(ConditionFailed { position, after })
        }
        Error::EventIdConflict {
            event_id,
            stream,
            position,
            problem,
        } => Kind::EventIdConflict(EventIdConflict {
            event_id: event_id.as_bytes().to_vec(),
            stream,
            position,
            problem,
        }),
        Error::InvalidArgument { field, problem } => {
            Kind::InvalidArgument(InvalidArgument { field, problem })
        }
        Error::TooLarge { what, size, limit } => Kind::TooLarge(TooLarge {
            what,
            size: size as u64,
            limit: limit as u64,
        }),
        Error::Poisoned { cause } => Kind::Poisoned(cause),
        Error::DiskFull { message } => Kind::DiskFull(message),
        Error::Io { op, error } => Kind::Io(IoError {
            op,
            message: error.to_string(),
            kind: format!("{:?}", error.kind()),
        }),
        Error::Corruption {
            file,
            offset,
            problem,
        } => Kind::Corruption(Corruption {
            file,
            offset,
            problem,
        }),
        Error::UnsupportedFormat {
            path,
            found,
            supported,
        } => Kind::UnsupportedFormat(UnsupportedFormat {
            path,
            found,
            supported,
        }),
        Error::Closed => Kind::Closed(Empty {}),
        Error::NotFound(what) => Kind::NotFound(what),
        Error::Unavailable(what) => Kind::Unavailable(what),
        Error::Internal(what) => Kind::Internal(what),
        Error::Unauthenticated(what) => Kind::Unauthenticated(what),
        Error::PermissionDenied(what) => Kind::PermissionDenied(what),
    };
    let detail = ErrorDetail { kind: Some(kind) };
    tonic::Status::with_details(code_of(e), e.to_string(), detail.encode_to_vec().into())
}

/// The `std::io::ErrorKind` of its `Debug` name; `Other` for a name this build does not
/// know.
fn io_error_kind(name: &str) -> std::io::ErrorKind {
    use std::io::ErrorKind as K;
    [
        K::NotFound,
        K::PermissionDenied,
        K::ConnectionRefused,
        K::ConnectionReset,
        K::ConnectionAborted,
        K::NotConnected,
        K::AddrInUse,
        K::AddrNotAvailable,
        K::BrokenPipe,
        K::AlreadyExists,
        K::WouldBlock,
        K::InvalidInput,
        K::InvalidData,
        K::TimedOut,
        K::WriteZero,
        K::Interrupted,
        K::Unsupported,
        K::UnexpectedEof,
        K::OutOfMemory,
        K::StorageFull,
        K::ReadOnlyFilesystem,
        K::IsADirectory,
        K::NotADirectory,
        K::DirectoryNotEmpty,
        K::FileTooLarge,
        K::ResourceBusy,
        K::QuotaExceeded,
        K::Deadlock,
        K::InvalidFilename,
        K::ArgumentListTooLong,
        K::CrossesDevices,
        K::TooManyLinks,
        K::NotSeekable,
        K::StaleNetworkFileHandle,
        K::ExecutableFileBusy,
        K::HostUnreachable,
        K::NetworkUnreachable,
        K::NetworkDown,
    ]
    .into_iter()
    .find(|k| format!("{k:?}") == name)
    .unwrap_or(K::Other)
}

/// An error's message followed by its sources', each that says something new.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        // Layers often repeat the message of the layer below.
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

/// The error a status stands for: exact when it carries an [`ErrorDetail`], otherwise the
/// closest variant for its code; a status made on this side for a failed connection is
/// [`Error::Unavailable`].
pub fn error_from_status(status: &tonic::Status) -> Error {
    use error_detail::Kind;
    use tonic::Code;
    if let Ok(ErrorDetail { kind: Some(kind) }) = ErrorDetail::decode(status.details()) {
        let rebuilt = match kind {
            Kind::WrongExpectedRevision(w) => Some(Error::WrongExpectedRevision {
                stream: w.stream,
                expected: expected_revision(w.expected),
                actual: w.actual,
            }),
            Kind::ConditionFailed(c) => Some(Error::ConditionFailed {
                position: c.position,
                after: c.after,
            }),
            Kind::EventIdConflict(c) => {
                Uuid::from_slice(&c.event_id)
                    .ok()
                    .map(|event_id| Error::EventIdConflict {
                        event_id,
                        stream: c.stream,
                        position: c.position,
                        problem: c.problem,
                    })
            }
            Kind::InvalidArgument(i) => Some(Error::InvalidArgument {
                field: i.field,
                problem: i.problem,
            }),
            Kind::TooLarge(t) => Some(Error::TooLarge {
                what: t.what,
                size: usize::try_from(t.size).unwrap_or(usize::MAX),
                limit: usize::try_from(t.limit).unwrap_or(usize::MAX),
            }),
            Kind::Poisoned(cause) => Some(Error::Poisoned { cause }),
            Kind::DiskFull(message) => Some(Error::DiskFull { message }),
            Kind::Io(i) => Some(Error::Io {
                op: i.op,
                error: annal_core::IoError::new(std::io::Error::new(
                    io_error_kind(&i.kind),
                    i.message,
                )),
            }),
            Kind::Corruption(c) => Some(Error::Corruption {
                file: c.file,
                offset: c.offset,
                problem: c.problem,
            }),
            Kind::UnsupportedFormat(u) => Some(Error::UnsupportedFormat {
                path: u.path,
                found: u.found,
                supported: u.supported,
            }),
            Kind::Closed(_) => Some(Error::Closed),
            Kind::NotFound(w) => Some(Error::NotFound(w)),
            Kind::Unavailable(w) => Some(Error::Unavailable(w)),
            Kind::Internal(w) => Some(Error::Internal(w)),
            Kind::Unauthenticated(w) => Some(Error::Unauthenticated(w)),
            Kind::PermissionDenied(w) => Some(Error::PermissionDenied(w)),
        };
        if let Some(e) = rebuilt {
            return e;
        }
    }
    // A status made on this side for a connection that failed carries the failure as its
    // source; a server's never does.
    if std::error::Error::source(status).is_some() {
        return Error::Unavailable(format!(
            "the connection to the server failed: {}",
            error_chain(status)
        ));
    }
    let message = status.message().to_string();
    match status.code() {
        Code::InvalidArgument => Error::invalid("request", message),
        Code::NotFound => Error::NotFound(message),
        Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded => {
            Error::Unavailable(if message.is_empty() {
                format!("the server is unreachable ({:?})", status.code())
            } else {
                message
            })
        }
        Code::Unauthenticated => Error::Unauthenticated(message),
        Code::PermissionDenied => Error::PermissionDenied(message),
        Code::ResourceExhausted => Error::Unavailable(format!("server busy: {message}")),
        _ => Error::Internal(if message.is_empty() {
            format!("the server answered {:?}", status.code())
        } else {
            message
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `name(e)`, the name of `e`'s variant, by a match with no wildcard arm, and `ALL`, the
    /// names of every variant: a new variant does not compile until it is listed here, and
    /// then `every_error_survives_the_wire` fails until it has an example.
    macro_rules! variants {
        ($($variant:ident $pattern:tt),* $(,)?) => {
            fn name(e: &Error) -> &'static str {
                match e {
                    $(variants!(@pattern $variant $pattern) => stringify!($variant),)*
                }
            }
            const ALL: &[&str] = &[$(stringify!($variant)),*];
        };
        (@pattern $variant:ident {}) => { Error::$variant { .. } };
        (@pattern $variant:ident ()) => { Error::$variant(..) };
        (@pattern $variant:ident unit) => { Error::$variant };
    }

    variants!(
        WrongExpectedRevision {},
        ConditionFailed {},
        EventIdConflict {},
        InvalidArgument {},
        TooLarge {},
        Poisoned {},
        DiskFull {},
        Io {},
        Corruption {},
        UnsupportedFormat {},
        Closed unit,
        NotFound (),
        Unavailable (),
        Unauthenticated (),
        PermissionDenied (),
        Internal (),
    );

    /// At least one error of every variant.
    fn examples() -> Vec<Error> {
        vec![
            Error::WrongExpectedRevision {
                stream: "account-1".into(),
                expected: core::ExpectedRevision::Exact(3),
                actual: Some(5),
            },
            Error::WrongExpectedRevision {
                stream: "a".into(),
                expected: core::ExpectedRevision::NoStream,
                actual: None,
            },
            Error::ConditionFailed {
                position: 7,
                after: Some(2),
            },
            Error::ConditionFailed {
                position: 0,
                after: None,
            },
            Error::EventIdConflict {
                event_id: Uuid::new_v4(),
                stream: "s".into(),
                position: 9,
                problem: "different data".into(),
            },
            Error::invalid("stream id", "must not be empty"),
            Error::TooLarge {
                what: "event".into(),
                size: 20,
                limit: 10,
            },
            Error::Poisoned {
                cause: "fsync failed".into(),
            },
            Error::DiskFull {
                message: "no space".into(),
            },
            Error::io(
                "opening segments/0.seg",
                std::io::Error::from(std::io::ErrorKind::PermissionDenied),
            ),
            Error::io("reading x", std::io::Error::other("something odd")),
            Error::Corruption {
                file: "segments/0".into(),
                offset: 42,
                problem: "bad crc".into(),
            },
            Error::UnsupportedFormat {
                path: "index/run-1.idx".into(),
                found: 3,
                supported: 2,
            },
            Error::Closed,
            Error::NotFound("stream x".into()),
            Error::Unavailable("shutting down".into()),
            Error::Unauthenticated("no token".into()),
            Error::PermissionDenied("read-only token".into()),
            Error::Internal("see the server log".into()),
        ]
    }

    #[test]
    fn every_error_survives_the_wire() {
        let mut seen = std::collections::BTreeSet::new();
        for e in examples() {
            seen.insert(name(&e));
            let back = error_from_status(&status_from_error(&e));
            assert_eq!(back, e);
            if let (Error::Io { error: a, .. }, Error::Io { error: b, .. }) = (&back, &e) {
                assert_eq!(a.kind(), b.kind());
            }
        }
        let missing: Vec<_> = ALL.iter().filter(|n| !seen.contains(*n)).collect();
        assert!(missing.is_empty(), "no example of {missing:?}");
    }

    #[test]
    fn codes_follow_the_kind_of_failure() {
        let conflict = status_from_error(&Error::WrongExpectedRevision {
            stream: "s".into(),
            expected: core::ExpectedRevision::Exact(1),
            actual: None,
        });
        assert_eq!(conflict.code(), tonic::Code::FailedPrecondition);
        assert!(conflict.message().contains("'s'"), "{}", conflict.message());
        assert_eq!(
            status_from_error(&Error::invalid("x", "y")).code(),
            tonic::Code::InvalidArgument
        );
        // A status from something other than an Annal server still maps sensibly.
        let plain = tonic::Status::unavailable("connection refused");
        assert!(
            matches!(error_from_status(&plain), Error::Unavailable(m) if m.contains("refused"))
        );
    }

    #[test]
    fn malformed_client_fields_are_named() {
        let req = AppendRequest {
            streams: vec![StreamAppend {
                stream_id: "s".into(),
                expected: None,
                events: vec![
                    NewEvent {
                        event_type: "A".into(),
                        ..Default::default()
                    },
                    NewEvent {
                        id: vec![1, 2, 3],
                        event_type: "B".into(),
                        ..Default::default()
                    },
                ],
            }],
            condition: None,
        };
        match append_request(req) {
            Err(Error::InvalidArgument { field, problem }) => {
                assert_eq!(field, "streams[0].events[1].id");
                assert!(problem.contains("got 3"), "{problem}");
            }
            other => panic!("expected an invalid argument, got {other:?}"),
        }
        assert!(matches!(
            read_request(ReadRequest::default()),
            Err(Error::InvalidArgument { field, .. }) if field == "source"
        ));
    }

    #[test]
    fn absent_fields_take_their_defaults() {
        let req = append_request(AppendRequest {
            streams: vec![StreamAppend {
                stream_id: "s".into(),
                expected: None,
                events: vec![NewEvent {
                    event_type: "A".into(),
                    ..Default::default()
                }],
            }],
            condition: None,
        })
        .unwrap();
        let e = &req.streams[0].events[0];
        assert_eq!(req.streams[0].expected, core::ExpectedRevision::Any);
        assert_eq!(e.schema_version, 1);
        assert_eq!(e.content_type, core::DEFAULT_CONTENT_TYPE);
        assert!(!e.id.is_nil());
    }

    proptest::proptest! {
        #[test]
        fn events_round_trip(
            stream in "[a-z]{1,8}-[0-9]{1,4}",
            revision in 0u64..1 << 40,
            position in 0u64..1 << 40,
            at in proptest::num::i64::ANY,
            data in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
            tags in proptest::collection::vec("[a-z:0-9]{1,6}", 0..4),
            actor in proptest::option::of("[a-z]{1,8}"),
            correlated in proptest::bool::ANY,
        ) {
            let e = core::RecordedEvent {
                id: Uuid::new_v4(),
                stream_id: stream.into(),
                revision,
                position,
                recorded_at: Timestamp(at),
                event_type: "T".into(),
                schema_version: 3,
                content_type: "application/octet-stream".into(),
                metadata: core::Metadata {
                    correlation_id: correlated.then(Uuid::new_v4),
                    causation_id: None,
                    actor: actor.map(core::Text::from),
                    extra: [("k".to_string(), "v".to_string())].into_iter().collect(),
                },
                data: data.into(),
                tags: tags.into_iter().map(core::Text::from).collect(),
            };
            let wire = RecordedEvent::from(e.clone()).encode_to_vec();
            let back = recorded_event(RecordedEvent::decode(wire.as_slice()).unwrap()).unwrap();
            proptest::prop_assert_eq!(back, e);
        }
    }
}
