//! The JSON shapes of the HTTP API, and their conversions to and from `annal-core` types.
//!
//! Event data whose content type is JSON (`application/json` or `...+json`) appears as JSON
//! under `data`; any other content type appears base64-encoded under `data_base64`. The same
//! rendering serves `annal dump --json` and the CLI's `--json` output.

use std::collections::BTreeMap;

use annal_core::{
    AppendRequest, AppendResult, AsOf, CategoryInfo, Direction, Error, ExpectedRevision, Metadata,
    NewEvent, Query, QueryItem, ReadRequest, RecordedEvent, Source, StreamAppend, StreamInfo,
    SubscribeFrom, SubscribeRequest, Timestamp, Uuid,
};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;

/// No control characters (what `annal_core::validate` refuses in names).
pub const NO_CONTROL: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$";
/// No control characters and no white space (tags).
pub const NO_CONTROL_OR_SPACE: &str = "^[^\\s\\u0000-\\u001F\\u007F-\\u009F]+$";

/// Schemas for strings with the limits `annal_core::validate` enforces; they only describe.
macro_rules! text_schema {
    ($name:ident, $doc:literal, $max:expr, $pattern:expr) => {
        #[doc = $doc]
        #[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .description(Some($doc))
                    .min_length(Some(1))
                    .max_length(Some($max))
                    .pattern(Some($pattern))
                    .into()
            }
        }

        impl ToSchema for $name {}
    };
}

text_schema!(
    StreamId,
    "A stream id: 1 to 512 bytes of UTF-8 without control characters; the category is the part before the first '-'.",
    annal_core::validate::MAX_STREAM_ID_LEN,
    NO_CONTROL
);
text_schema!(
    Name,
    "A name (event type, category, content type, actor, metadata key): 1 to 256 bytes without control characters.",
    annal_core::validate::MAX_NAME_LEN,
    NO_CONTROL
);
text_schema!(
    Tag,
    "A tag such as account:42: 1 to 256 bytes without control characters or white space.",
    annal_core::validate::MAX_NAME_LEN,
    NO_CONTROL_OR_SPACE
);

/// Deserializes a struct only from a JSON object. (Derived `Deserialize` also takes an array
/// of the fields in order, so `"metadata": [null, null]` would pass as empty metadata.) The
/// fields are read by the same deserializer, so raw JSON values keep working.
pub fn object<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    d.deserialize_map(ObjectVisitor(std::marker::PhantomData))
}

struct ObjectVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for ObjectVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
    }
}

struct ObjectSeed<T>(std::marker::PhantomData<T>);

impl<'de, T: Deserialize<'de>> serde::de::DeserializeSeed<'de> for ObjectSeed<T> {
    type Value = T;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        object(d)
    }
}

/// [`object`] for an optional field (null or absent is `None`).
pub fn object_opt<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct V<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
        type Value = Option<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object or null")
        }
        fn visit_none<E>(self) -> Result<Option<T>, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Option<T>, E> {
            Ok(None)
        }
        fn visit_some<D2: serde::Deserializer<'de>>(self, d: D2) -> Result<Option<T>, D2::Error> {
            object(d).map(Some)
        }
    }
    d.deserialize_option(V(std::marker::PhantomData))
}

/// [`object`] for every element of a list.
pub fn objects<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct V<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for V<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list of objects")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
            while let Some(item) = seq.next_element_seed(ObjectSeed(std::marker::PhantomData))? {
                out.push(item);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(V(std::marker::PhantomData))
}

/// One or more event types.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct TypeList(pub Vec<String>);

impl utoipa::PartialSchema for TypeList {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ArrayBuilder::new()
            .items(Name::schema())
            .min_items(Some(1))
            .description(Some(
                "One or more event types; an event of any of them matches.",
            ))
            .into()
    }
}

impl ToSchema for TypeList {}

/// How deep event data may nest, as serde_json's own parser allows.
pub const MAX_DEPTH: usize = 128;

/// What would keep a JSON parser from reading `text`, though its syntax is valid JSON:
/// nesting deeper than [`MAX_DEPTH`], a number beyond the range of a double (`1e999999`),
/// or a `\u` escape that is half of a UTF-16 pair (`"\ud800"`). `None` when there is
/// nothing. `text` must be valid JSON (serde_json has read it).
pub fn trouble(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let hex = |at: usize| -> Option<u32> {
        let digits = std::str::from_utf8(b.get(at..at + 4)?).ok()?;
        u32::from_str_radix(digits, 16).ok()
    };
    let (mut depth, mut i) = (0usize, 0usize);
    while i < b.len() {
        match b[i] {
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Some(format!("nests deeper than {MAX_DEPTH} levels"));
                }
                i += 1;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] != b'\\' {
                        i += 1;
                        continue;
                    }
                    if b.get(i + 1) != Some(&b'u') {
                        i += 2;
                        continue;
                    }
                    let unit = hex(i + 2)?;
                    i += 6;
                    let low = || {
                        b.get(i..i + 2) == Some(b"\\u")
                            && hex(i + 2).is_some_and(|l| (0xDC00..0xE000).contains(&l))
                    };
                    if (0xD800..0xDC00).contains(&unit) && low() {
                        i += 6;
                    } else if (0xD800..0xE000).contains(&unit) {
                        return Some(format!(
                            "holds \\u{unit:04x}, half of a UTF-16 pair, which is no character"
                        ));
                    }
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < b.len() && matches!(b[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                {
                    i += 1;
                }
                let number = &text[start..i];
                if !number.parse::<f64>().is_ok_and(f64::is_finite) {
                    let shown: String = number.chars().take(24).collect();
                    return Some(format!(
                        "holds the number {shown}, beyond the range of a double"
                    ));
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// True when the content type says the data is JSON.
pub fn is_json(content_type: &str) -> bool {
    let base = content_type.split(';').next().unwrap_or("").trim();
    base == "application/json" || base.ends_with("+json")
}

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Who and why: the audit trail of an event.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MetadataJson {
    /// A UUID grouping every event caused by one original request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = "uuid")]
    pub correlation_id: Option<String>,
    /// The UUID of the event or command that caused this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = "uuid")]
    pub causation_id: Option<String>,
    /// Who did it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Name>)]
    pub actor: Option<String>,
    /// Free-form key/values (at most 256).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, String>,
}

/// Serializes texts as a JSON array of strings.
fn texts<S: serde::Serializer>(texts: &&[annal_core::Text], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(texts.iter().map(annal_core::Text::as_str))
}

impl From<&Metadata> for MetadataJson {
    fn from(m: &Metadata) -> Self {
        MetadataJson {
            correlation_id: m.correlation_id.map(|u| u.to_string()),
            causation_id: m.causation_id.map(|u| u.to_string()),
            actor: m.actor.as_ref().map(|a| a.to_string()),
            extra: m.extra.clone(),
        }
    }
}

fn parse_uuid(text: &str, field: impl FnOnce() -> String) -> Result<Uuid, Error> {
    text.parse()
        .map_err(|_| Error::invalid(field(), format!("'{text}' is not a UUID")))
}

impl MetadataJson {
    fn into_core(self, field: impl Fn() -> String) -> Result<Metadata, Error> {
        Ok(Metadata {
            correlation_id: self
                .correlation_id
                .map(|u| parse_uuid(&u, || format!("{}.correlation_id", field())))
                .transpose()?,
            causation_id: self
                .causation_id
                .map(|u| parse_uuid(&u, || format!("{}.causation_id", field())))
                .transpose()?,
            actor: self.actor.map(annal_core::Text::from),
            extra: self.extra,
        })
    }
}

/// An event as stored.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventJson<'a> {
    /// Global log position (gapless across the log).
    pub position: u64,
    /// Empty for an event of no stream.
    pub stream_id: &'a str,
    /// Revision within the stream (gapless per stream); for an event of no stream, its
    /// place among the events of no stream of its append.
    pub revision: u64,
    pub id: String,
    /// When the store wrote it, RFC 3339 with microseconds, UTC.
    #[schema(format = DateTime)]
    pub recorded_at: String,
    /// The same instant, microseconds since the Unix epoch.
    pub recorded_at_us: i64,
    pub event_type: &'a str,
    pub schema_version: u32,
    pub content_type: &'a str,
    pub metadata: MetadataJson,
    #[serde(serialize_with = "texts")]
    #[schema(value_type = Vec<String>)]
    pub tags: &'a [annal_core::Text],
    /// The data, when its content type is JSON: any JSON value.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Value>)]
    pub data: Option<&'a RawValue>,
    /// The data, base64-encoded, when its content type is not JSON (or it is not valid JSON).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
}

impl<'a> EventJson<'a> {
    pub fn new(e: &'a RecordedEvent) -> Self {
        // Data that a JSON parser could not read whole is given as base64, so that one
        // event never breaks a page of them.
        let raw = if is_json(&e.content_type) {
            as_json(&e.data)
        } else {
            None
        };
        EventJson {
            position: e.position,
            stream_id: &e.stream_id,
            revision: e.revision,
            id: e.id.to_string(),
            recorded_at: e.recorded_at.to_string(),
            recorded_at_us: e.recorded_at.as_micros(),
            event_type: &e.event_type,
            schema_version: e.schema_version,
            content_type: &e.content_type,
            metadata: (&e.metadata).into(),
            tags: &e.tags,
            data_base64: raw.is_none().then(|| base64(&e.data)),
            data: raw,
        }
    }
}

/// Bytes as JSON, when they are JSON that any parser reads whole, with nothing around it
/// (white space around a JSON text would not come back as it was stored).
fn as_json(bytes: &[u8]) -> Option<&RawValue> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| serde_json::from_str::<&RawValue>(s).ok())
        .filter(|raw| raw.get().len() == bytes.len() && trouble(raw.get()).is_none())
}

/// The data of a request given as JSON (`data`) or base64 (`data_base64`), and whether it
/// was JSON; `None` when neither is given. `field` names where they are in errors (empty at
/// the top of the body).
fn data_of(
    json: Option<Box<RawValue>>,
    b64: Option<String>,
    field: &dyn Fn() -> String,
) -> Result<Option<(annal_core::Bytes, bool)>, Error> {
    let at = |name: &str| match field() {
        f if f.is_empty() => name.to_string(),
        f => format!("{f}.{name}"),
    };
    match (json, b64) {
        (Some(_), Some(_)) => Err(Error::invalid(
            match field() {
                f if f.is_empty() => "body".to_string(),
                f => f,
            },
            "has both data and data_base64; give one",
        )),
        (Some(raw), None) => {
            if let Some(problem) = trouble(raw.get()) {
                return Err(Error::invalid(at("data"), problem));
            }
            // The parser's own copy of the text becomes the data, not copied again.
            let text: Box<str> = raw.into();
            Ok(Some((String::from(text).into_bytes().into(), true)))
        }
        (None, Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map(|d| Some((d.into(), false)))
            .map_err(|e| Error::invalid(at("data_base64"), format!("is not base64: {e}"))),
        (None, None) => Ok(None),
    }
}

/// An event to append.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEventJson {
    /// A UUID (not the nil one), the idempotency key of retries; the server assigns a random
    /// one when absent. Ids are unique within a request.
    #[serde(default)]
    #[schema(format = "uuid")]
    pub id: Option<String>,
    #[schema(value_type = Name)]
    pub event_type: String,
    /// Default 1.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub schema_version: Option<u32>,
    /// Default `application/json` with `data`, `application/octet-stream` with `data_base64`.
    #[serde(default)]
    #[schema(value_type = Option<Name>)]
    pub content_type: Option<String>,
    #[serde(default, deserialize_with = "object_opt")]
    pub metadata: Option<MetadataJson>,
    /// The data as JSON (for a JSON content type); give this or `data_base64`, not both.
    #[serde(default)]
    #[schema(value_type = Option<Value>)]
    pub data: Option<Box<RawValue>>,
    /// The data, base64-encoded (for any content type).
    #[serde(default)]
    #[schema(format = Byte)]
    pub data_base64: Option<String>,
    /// At most 100.
    #[serde(default)]
    #[schema(value_type = Vec<Tag>, max_items = 100)]
    pub tags: Vec<String>,
}

impl NewEventJson {
    /// The core event; `field` names this event in errors (called only when there is one).
    pub fn into_core(self, field: impl Fn() -> String) -> Result<NewEvent, Error> {
        let (data, default_type) = match data_of(self.data, self.data_base64, &field)? {
            Some((data, true)) => (data, annal_core::DEFAULT_CONTENT_TYPE),
            Some((data, false)) => (data, "application/octet-stream"),
            None => (annal_core::Bytes::new(), annal_core::DEFAULT_CONTENT_TYPE),
        };
        let content_type = self
            .content_type
            .unwrap_or_else(|| default_type.to_string());
        Ok(NewEvent {
            id: match self.id {
                Some(id) => parse_uuid(&id, || format!("{}.id", field()))?,
                None => Uuid::new_v4(),
            },
            event_type: self.event_type.into(),
            schema_version: self.schema_version.unwrap_or(1),
            content_type: content_type.into(),
            metadata: self
                .metadata
                .map(|m| m.into_core(|| format!("{}.metadata", field())))
                .transpose()?
                .unwrap_or_default(),
            data,
            tags: self.tags.into_iter().map(annal_core::Text::from).collect(),
        })
    }
}

/// An expected revision: `"any"`, `"no_stream"`, `"stream_exists"`, or the exact revision.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(untagged)]
pub enum ExpectedJson {
    Exact(u64),
    Named(ExpectedName),
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExpectedName {
    Any,
    NoStream,
    StreamExists,
}

impl From<ExpectedJson> for ExpectedRevision {
    fn from(e: ExpectedJson) -> Self {
        match e {
            ExpectedJson::Exact(n) => ExpectedRevision::Exact(n),
            ExpectedJson::Named(ExpectedName::Any) => ExpectedRevision::Any,
            ExpectedJson::Named(ExpectedName::NoStream) => ExpectedRevision::NoStream,
            ExpectedJson::Named(ExpectedName::StreamExists) => ExpectedRevision::StreamExists,
        }
    }
}

impl From<ExpectedRevision> for ExpectedJson {
    fn from(e: ExpectedRevision) -> Self {
        match e {
            ExpectedRevision::Exact(n) => ExpectedJson::Exact(n),
            ExpectedRevision::Any => ExpectedJson::Named(ExpectedName::Any),
            ExpectedRevision::NoStream => ExpectedJson::Named(ExpectedName::NoStream),
            ExpectedRevision::StreamExists => ExpectedJson::Named(ExpectedName::StreamExists),
        }
    }
}

/// Events for one stream (`POST /v1/streams/{stream_id}`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamAppendJson {
    /// Default `any`.
    #[serde(default)]
    pub expected_revision: Option<ExpectedJson>,
    #[schema(min_items = 1, max_items = 100000)]
    #[serde(deserialize_with = "objects")]
    pub events: Vec<NewEventJson>,
}

/// One stream's part of a multi-stream append.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamBatchJson {
    /// Each stream at most once per request.
    #[schema(value_type = StreamId)]
    pub stream_id: String,
    #[serde(default)]
    pub expected_revision: Option<ExpectedJson>,
    #[schema(min_items = 1, max_items = 100000)]
    #[serde(deserialize_with = "objects")]
    pub events: Vec<NewEventJson>,
}

/// One alternative of a query: any of `types` (any type when empty) with all of `tags`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryItemJson {
    #[serde(default)]
    #[schema(value_type = Vec<Name>)]
    pub types: Vec<String>,
    #[serde(default)]
    #[schema(value_type = Vec<Tag>)]
    pub tags: Vec<String>,
}

/// An OR of items; a query with no items is rejected.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryJson {
    #[schema(min_items = 1)]
    #[serde(deserialize_with = "objects")]
    pub items: Vec<QueryItemJson>,
}

impl From<QueryJson> for Query {
    fn from(q: QueryJson) -> Self {
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

/// A Dynamic Consistency Boundary condition: fail if an event matching `query` exists after
/// position `after` (anywhere when absent).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConditionJson {
    #[serde(deserialize_with = "object")]
    pub query: QueryJson,
    #[serde(default)]
    pub after: Option<u64>,
}

/// An atomic append to one or more streams, and of events that belong to no stream
/// (`POST /v1/append`); at least one of the two.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppendJson {
    #[schema(max_items = 1000)]
    #[serde(default, deserialize_with = "objects")]
    pub streams: Vec<StreamBatchJson>,
    /// Events of no stream, as Dynamic Consistency Boundary decisions write them: found by
    /// tag, type and the whole log, guarded by `condition`. They come after the streams'
    /// events; the result's `streams` has no entry for them.
    #[schema(max_items = 100000)]
    #[serde(default, deserialize_with = "objects")]
    pub events: Vec<NewEventJson>,
    #[serde(default, deserialize_with = "object_opt")]
    pub condition: Option<ConditionJson>,
}

fn events(list: Vec<NewEventJson>, prefix: &str) -> Result<Vec<NewEvent>, Error> {
    list.into_iter()
        .enumerate()
        .map(|(i, e)| e.into_core(|| format!("{prefix}events[{i}]")))
        .collect()
}

impl StreamAppendJson {
    pub fn into_core(self, stream_id: String) -> Result<AppendRequest, Error> {
        Ok(AppendRequest {
            streams: vec![StreamAppend {
                stream_id: stream_id.into(),
                expected: self
                    .expected_revision
                    .map_or(ExpectedRevision::Any, Into::into),
                events: events(self.events, "")?,
            }],
            condition: None,
        })
    }
}

impl AppendJson {
    pub fn into_core(self) -> Result<AppendRequest, Error> {
        let mut streams = Vec::with_capacity(self.streams.len() + 1);
        for (i, s) in self.streams.into_iter().enumerate() {
            if s.stream_id.is_empty() {
                return Err(Error::invalid(
                    format!("streams[{i}].stream_id"),
                    "must not be empty (events of no stream go in `events`)",
                ));
            }
            streams.push(StreamAppend {
                stream_id: s.stream_id.into(),
                expected: s
                    .expected_revision
                    .map_or(ExpectedRevision::Any, Into::into),
                events: events(s.events, &format!("streams[{i}]."))?,
            });
        }
        if !self.events.is_empty() {
            streams.push(StreamAppend::no_stream(events(self.events, "")?));
        }
        Ok(AppendRequest {
            streams,
            condition: self.condition.map(|c| annal_core::AppendCondition {
                query: c.query.into(),
                after: c.after,
            }),
        })
    }
}

/// Where one stream's batch landed.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamResultJson {
    #[schema(value_type = StreamId)]
    pub stream_id: String,
    /// The stream's revision after the append.
    pub revision: u64,
    pub first_position: u64,
    pub last_position: u64,
}

/// The outcome of an append.
#[derive(Debug, Serialize, ToSchema)]
pub struct AppendResultJson {
    pub streams: Vec<StreamResultJson>,
    pub first_position: u64,
    pub last_position: u64,
    #[schema(format = DateTime)]
    pub recorded_at: String,
}

impl From<AppendResult> for AppendResultJson {
    fn from(r: AppendResult) -> Self {
        AppendResultJson {
            // Events of no stream have no entry: the append's positions cover them.
            streams: r
                .streams
                .into_iter()
                .filter(|s| !s.stream_id.is_empty())
                .map(|s| StreamResultJson {
                    stream_id: s.stream_id.into(),
                    revision: s.revision,
                    first_position: s.first_position,
                    last_position: s.last_position,
                })
                .collect(),
            first_position: r.first_position,
            last_position: r.last_position,
            recorded_at: r.recorded_at.to_string(),
        }
    }
}

/// A UUID in its hyphenated text form (`0195f3a4-0000-7000-8000-0000000000aa`) only, as the
/// API's schemas give it; `None` for anything else.
pub fn hyphenated_uuid(text: &str) -> Option<Uuid> {
    text.parse().ok().filter(|_| text.len() == 36)
}

/// A UUID in its text form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UuidText(pub Uuid);

impl<'de> Deserialize<'de> for UuidText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        // Only the hyphenated form, as the schema says.
        hyphenated_uuid(&text).map(UuidText).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "'{text}' is not a UUID like 0195f3a4-0000-7000-8000-0000000000aa"
            ))
        })
    }
}

impl Serialize for UuidText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl utoipa::PartialSchema for UuidText {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::Custom("uuid".into())))
            .pattern(Some(
                "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
            ))
            .into()
    }
}

impl ToSchema for UuidText {}

/// What a read or subscription draws from: `"all"`, or an object with exactly one of
/// `stream`, `category`, `event_types`, `query`, `correlation`, `actor`, `select`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SourceJson {
    All,
    Stream(StreamId),
    Category(StreamId),
    EventTypes(TypeList),
    Query(#[serde(deserialize_with = "object")] QueryJson),
    /// Every event of one business transaction.
    Correlation(UuidText),
    /// Every event of one actor.
    Actor(Name),
    /// Filters combined: events that pass every one given.
    Select(#[serde(deserialize_with = "object")] SelectionJson),
}

/// Filters that combine; at least one is given.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SelectionJson {
    /// Only streams of this category.
    #[serde(default)]
    pub category: Option<StreamId>,
    /// Only streams whose id starts with this.
    #[serde(default)]
    pub stream_prefix: Option<StreamId>,
    /// Only events this query matches.
    #[serde(default, deserialize_with = "object_opt")]
    pub query: Option<QueryJson>,
}

impl From<SourceJson> for Source {
    fn from(s: SourceJson) -> Self {
        match s {
            SourceJson::All => Source::All,
            SourceJson::Stream(id) => Source::Stream(id.0),
            SourceJson::Category(c) => Source::Category(c.0),
            SourceJson::EventTypes(t) => Source::EventTypes(t.0),
            SourceJson::Query(q) => Source::Query(q.into()),
            SourceJson::Correlation(c) => Source::Correlation(c.0),
            SourceJson::Actor(a) => Source::Actor(a.0),
            SourceJson::Select(s) => Source::Select(annal_core::Selection {
                category: s.category.map(|c| c.0),
                stream_prefix: s.stream_prefix.map(|p| p.0),
                query: s.query.map(Into::into),
            }),
        }
    }
}

/// Which way a read goes.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DirectionJson {
    #[default]
    Forward,
    Backward,
}

/// A read (`POST /v1/read`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadJson {
    pub source: SourceJson,
    /// Inclusive: a revision for a stream source, a position otherwise.
    #[serde(default)]
    pub from: Option<u64>,
    #[serde(default)]
    pub direction: DirectionJson,
    /// At most this many events (default 1000).
    #[serde(default)]
    pub limit: Option<u64>,
    /// Time travel: a position (`"1234"`) or an RFC 3339 instant.
    #[serde(default)]
    #[schema(
        pattern = "^([0-9]{1,19}|[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt ]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,9})?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9]))$"
    )]
    pub as_of: Option<String>,
    /// An RFC 3339 instant: only events recorded at or after it (a forward read of anything
    /// but one stream; with `from`, the later of the two).
    #[serde(default)]
    #[schema(
        pattern = "^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt ]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,9})?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
    )]
    pub since: Option<String>,
}

/// The default page size of HTTP reads.
pub const DEFAULT_HTTP_LIMIT: u64 = 1000;

/// Parses an `as_of` value: a position or an RFC 3339 instant.
pub fn as_of(text: &str) -> Result<AsOf, Error> {
    if let Ok(p) = text.parse::<u64>() {
        return Ok(AsOf::Position(p));
    }
    text.parse::<Timestamp>().map(AsOf::Time).map_err(|_| {
        Error::invalid(
            "as_of",
            format!(
                "'{text}' is neither a position nor an RFC 3339 time like 2026-11-23T19:10:27Z"
            ),
        )
    })
}

impl ReadJson {
    pub fn into_core(self) -> Result<ReadRequest, Error> {
        Ok(ReadRequest {
            source: self.source.into(),
            from: self.from,
            direction: match self.direction {
                DirectionJson::Forward => Direction::Forward,
                DirectionJson::Backward => Direction::Backward,
            },
            limit: Some(self.limit.unwrap_or(DEFAULT_HTTP_LIMIT)),
            as_of: self.as_of.as_deref().map(as_of).transpose()?,
        })
    }
}

/// Where a subscription starts: `"start"`, `"now"`, or a position to start after.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(untagged)]
pub enum FromJson {
    After(u64),
    Named(FromName),
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FromName {
    Start,
    Now,
}

/// Parses a subscription start from a query parameter: `start`, `now` or a position.
pub fn subscribe_from(text: &str) -> Result<SubscribeFrom, Error> {
    match text {
        "start" => Ok(SubscribeFrom::Start),
        "now" => Ok(SubscribeFrom::Now),
        other => other.parse().map(SubscribeFrom::After).map_err(|_| {
            Error::invalid(
                "after",
                format!("'{other}' is neither 'start', 'now' nor a position"),
            )
        }),
    }
}

/// A subscription (`POST /v1/subscribe`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscribeJson {
    pub source: SourceJson,
    /// Default `"start"`; a position means "after this position".
    #[serde(default)]
    pub from: Option<FromJson>,
    /// Milliseconds between heartbeats (default: the server's setting).
    #[serde(default)]
    pub heartbeat_ms: Option<u32>,
}

impl SubscribeJson {
    pub fn into_core(self) -> SubscribeRequest {
        SubscribeRequest {
            source: self.source.into(),
            from: match self.from {
                None | Some(FromJson::Named(FromName::Start)) => SubscribeFrom::Start,
                Some(FromJson::Named(FromName::Now)) => SubscribeFrom::Now,
                Some(FromJson::After(p)) => SubscribeFrom::After(p),
            },
        }
    }
}

/// What the store knows of a stream.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamInfoJson {
    pub stream_id: String,
    pub revision: u64,
    pub first_position: u64,
    pub last_position: u64,
    pub count: u64,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub last_written_at: String,
}

impl From<StreamInfo> for StreamInfoJson {
    fn from(s: StreamInfo) -> Self {
        StreamInfoJson {
            stream_id: s.stream_id,
            revision: s.revision,
            first_position: s.first_position,
            last_position: s.last_position,
            count: s.count,
            created_at: s.created_at.to_string(),
            last_written_at: s.last_written_at.to_string(),
        }
    }
}

/// A page of streams.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamsJson {
    pub streams: Vec<StreamInfoJson>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

/// What the store knows of a category.
#[derive(Debug, Serialize, ToSchema)]
pub struct CategoryJson {
    pub category: String,
    pub stream_count: u64,
    pub event_count: u64,
}

impl From<CategoryInfo> for CategoryJson {
    fn from(c: CategoryInfo) -> Self {
        CategoryJson {
            category: c.category,
            stream_count: c.stream_count,
            event_count: c.event_count,
        }
    }
}

/// A page of categories.
#[derive(Debug, Serialize, ToSchema)]
pub struct CategoriesJson {
    pub categories: Vec<CategoryJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

/// A page of events (the body of every read).
#[derive(Debug, Serialize, ToSchema)]
pub struct EventsPage<'a> {
    pub events: Vec<EventJson<'a>>,
    /// The log's last position when the read was served; absent when the log was empty. A
    /// decision that read its state here appends with a condition `after` this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head: Option<u64>,
    /// The `from` of the next page; absent when the read ended before its limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<u64>,
}

/// The server and its store.
#[derive(Debug, Serialize, ToSchema)]
pub struct InfoJson {
    pub version: String,
    /// The log's last position; absent when it is empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head: Option<u64>,
    pub uptime_secs: u64,
    pub max_event_bytes: u64,
    pub max_append_bytes: u64,
    /// Why the store refuses writes, when it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poisoned: Option<String>,
}

/// The answer of `/v1/position-at`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PositionJson {
    /// The last position recorded at or before the time; absent when nothing was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
}

/// An error: a machine-readable code, a message for people, and the values involved.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorJson {
    pub error: ErrorBody,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// `wrong_expected_revision`, `condition_failed`, `event_id_conflict`, `invalid_argument`,
    /// `too_large`, `not_found`, `unauthenticated`, `forbidden`, `unavailable`, `poisoned`,
    /// `disk_full`, `corruption`, `internal`, ...
    pub code: String,
    pub message: String,
    /// The field that was wrong (`invalid_argument`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// The expected revision (`wrong_expected_revision`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    /// The stream's actual revision, absent when it does not exist (`wrong_expected_revision`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual: Option<u64>,
    /// The position involved (`condition_failed`, `event_id_conflict`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
}

impl ErrorJson {
    /// A body of this code and message.
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        ErrorJson {
            error: ErrorBody {
                code: code.into(),
                message: message.into(),
                field: None,
                stream: None,
                expected: None,
                actual: None,
                position: None,
            },
        }
    }

    /// The HTTP status and body for an error (internal details already removed).
    pub fn from_error(e: &Error) -> (u16, ErrorJson) {
        let message = e.to_string();
        let (status, code) = match e {
            Error::WrongExpectedRevision { .. } => (409, "wrong_expected_revision"),
            Error::ConditionFailed { .. } => (409, "condition_failed"),
            Error::EventIdConflict { .. } => (409, "event_id_conflict"),
            Error::InvalidArgument { .. } => (400, "invalid_argument"),
            Error::TooLarge { .. } => (413, "too_large"),
            Error::NotFound(_) => (404, "not_found"),
            Error::Poisoned { .. } => (503, "poisoned"),
            Error::DiskFull { .. } => (503, "disk_full"),
            Error::Closed => (503, "closed"),
            Error::Unavailable(_) => (503, "unavailable"),
            Error::Unauthenticated(_) => (401, "unauthenticated"),
            Error::PermissionDenied(_) => (403, "forbidden"),
            Error::Corruption { .. } => (500, "corruption"),
            Error::UnsupportedFormat { .. } => (500, "unsupported_format"),
            Error::Io { .. } | Error::Internal(_) => (500, "internal"),
        };
        let mut body = ErrorJson::new(code, message);
        match e {
            Error::WrongExpectedRevision {
                stream,
                expected,
                actual,
            } => {
                body.error.stream = Some(stream.clone());
                body.error.expected = Some(expected.to_string());
                body.error.actual = *actual;
            }
            Error::ConditionFailed { position, .. } => body.error.position = Some(*position),
            Error::EventIdConflict {
                stream, position, ..
            } => {
                body.error.stream = Some(stream.clone());
                body.error.position = Some(*position);
            }
            Error::InvalidArgument { field, .. } => body.error.field = Some(field.clone()),
            _ => {}
        }
        (status, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event_value(e: &RecordedEvent) -> serde_json::Value {
        serde_json::to_value(EventJson::new(e)).unwrap()
    }

    #[test]
    fn json_that_parsers_cannot_read_whole_is_named() {
        for fine in [
            "1",
            "-0.5e-400",
            "1.7976931348623157e308",
            r#""\ud83d\ude00 \\u0041 \\ud800 as text \"""#,
            r#"{"a":[1,{"b":null}]}"#,
        ] {
            assert_eq!(trouble(fine), None, "{fine}");
        }
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        let nested = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert_eq!(trouble(&nested), None);
        for (bad, says) in [
            (deep.as_str(), "nests deeper than 128 levels"),
            ("[1e999999]", "the number 1e999999, beyond"),
            ("-1e400", "the number -1e400, beyond"),
            (r#"["\ud800"]"#, "\\ud800, half of a UTF-16 pair"),
            (r#""\ud800\u0041""#, "\\ud800, half"),
            (r#""\udfff""#, "\\udfff, half"),
        ] {
            let got = trouble(bad).unwrap_or_default();
            assert!(got.contains(says), "{bad}: {got}");
        }
    }

    #[test]
    fn json_data_stays_json_and_other_data_is_base64() {
        let mut e = RecordedEvent {
            id: Uuid::nil(),
            stream_id: "s-1".into(),
            revision: 0,
            position: 7,
            recorded_at: Timestamp(1_795_000_000_123_456),
            event_type: "T".into(),
            schema_version: 1,
            content_type: "application/json".into(),
            metadata: Metadata::default(),
            data: br#"{"a": [1, 2]}"#.to_vec().into(),
            tags: vec!["x:1".into()],
        };
        let v = event_value(&e);
        assert_eq!(v["data"]["a"][1], 2);
        assert!(v.get("data_base64").is_none());
        assert_eq!(v["recorded_at"], "2026-11-18T11:06:40.123456Z");
        e.content_type = "application/octet-stream".into();
        e.data = vec![0xff, 0, 1].into();
        let v = event_value(&e);
        assert_eq!(v["data_base64"], "/wAB");
        assert!(v.get("data").is_none());
        // JSON content that is not JSON is still delivered, as base64.
        e.content_type = "application/json".into();
        e.data = b"not json".to_vec().into();
        assert_eq!(event_value(&e)["data_base64"], base64(b"not json"));
    }

    #[test]
    fn new_events_take_json_or_base64() {
        let e: NewEventJson =
            serde_json::from_str(r#"{"event_type":"A","data":{"k": 1},"tags":["t"]}"#).unwrap();
        let e = e.into_core(|| "events[0]".into()).unwrap();
        assert_eq!(&e.data[..], br#"{"k": 1}"#);
        assert_eq!(e.content_type, "application/json");
        let e: NewEventJson =
            serde_json::from_str(r#"{"event_type":"A","data_base64":"/wAB"}"#).unwrap();
        let e = e.into_core(|| "events[0]".into()).unwrap();
        assert_eq!(e.data, vec![0xff, 0, 1]);
        assert_eq!(e.content_type, "application/octet-stream");
        let both: NewEventJson =
            serde_json::from_str(r#"{"event_type":"A","data":1,"data_base64":"AA=="}"#).unwrap();
        assert!(matches!(
            both.into_core(|| "events[3]".into()),
            Err(Error::InvalidArgument { field, .. }) if field == "events[3]"
        ));
        let bad_id: NewEventJson =
            serde_json::from_str(r#"{"event_type":"A","id":"nope"}"#).unwrap();
        assert!(matches!(
            bad_id.into_core(|| "events[0]".into()),
            Err(Error::InvalidArgument { field, .. }) if field == "events[0].id"
        ));
    }

    #[test]
    fn structs_come_only_from_objects() {
        let ok: NewEventJson = object(&mut serde_json::Deserializer::from_str(
            r#"{"event_type":"A","metadata":{"actor":"x"},"data":{"raw": [1]}}"#,
        ))
        .unwrap();
        assert_eq!(ok.data.unwrap().get(), r#"{"raw": [1]}"#);
        for bad in [r#"{"event_type":"A","metadata":[null,null]}"#, r#"["A"]"#] {
            let r: Result<NewEventJson, _> = object(&mut serde_json::Deserializer::from_str(bad));
            assert!(r.is_err(), "{bad} was accepted");
        }
        let r: Result<AppendJson, _> = object(&mut serde_json::Deserializer::from_str(
            r#"{"streams":[["s",null,[]]]}"#,
        ));
        assert!(r.is_err(), "a stream batch given as an array was accepted");
    }

    #[test]
    fn expected_revision_reads_names_and_numbers() {
        for (text, want) in [
            ("\"any\"", ExpectedRevision::Any),
            ("\"no_stream\"", ExpectedRevision::NoStream),
            ("\"stream_exists\"", ExpectedRevision::StreamExists),
            ("4", ExpectedRevision::Exact(4)),
        ] {
            let e: ExpectedJson = serde_json::from_str(text).unwrap();
            assert_eq!(ExpectedRevision::from(e), want);
        }
        assert!(serde_json::from_str::<ExpectedJson>("\"sometimes\"").is_err());
    }

    #[test]
    fn as_of_is_a_position_or_a_time() {
        assert_eq!(as_of("12").unwrap(), AsOf::Position(12));
        assert!(matches!(
            as_of("2026-11-23T19:10:27Z").unwrap(),
            AsOf::Time(_)
        ));
        assert!(as_of("yesterday").is_err());
    }
}

/// A snapshot to keep (`POST /v1/streams/{stream_id}/snapshots`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSnapshotJson {
    /// The revision of the last event the state folds in; the stream must have reached it.
    pub revision: u64,
    /// The version of the state's encoding; default 1.
    #[serde(default)]
    pub schema_version: Option<u32>,
    /// The state as JSON; give this or `data_base64`, not both.
    #[serde(default)]
    #[schema(value_type = Option<Value>)]
    pub data: Option<Box<RawValue>>,
    /// The state, base64-encoded.
    #[serde(default)]
    #[schema(format = Byte)]
    pub data_base64: Option<String>,
}

impl NewSnapshotJson {
    pub fn into_core(self, stream_id: String) -> Result<annal_core::NewSnapshot, Error> {
        let Some((data, _)) = data_of(self.data, self.data_base64, &|| String::new())? else {
            return Err(Error::invalid("body", "has neither data nor data_base64"));
        };
        Ok(annal_core::NewSnapshot {
            stream_id,
            revision: self.revision,
            schema_version: self.schema_version.unwrap_or(1),
            data,
        })
    }
}

/// A kept snapshot.
#[derive(Debug, Serialize, ToSchema)]
pub struct SnapshotJson<'a> {
    pub stream_id: &'a str,
    pub revision: u64,
    pub schema_version: u32,
    /// When the store took it, RFC 3339.
    pub taken_at: String,
    pub taken_at_us: i64,
    /// The state, when it is JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Value>)]
    pub data: Option<&'a RawValue>,
    /// The state, base64-encoded, when it is not JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
}

impl<'a> SnapshotJson<'a> {
    pub fn new(s: &'a annal_core::Snapshot) -> Self {
        let raw = as_json(&s.data);
        SnapshotJson {
            stream_id: &s.stream_id,
            revision: s.revision,
            schema_version: s.schema_version,
            taken_at: s.taken_at.to_string(),
            taken_at_us: s.taken_at.as_micros(),
            data_base64: raw.is_none().then(|| base64(&s.data)),
            data: raw,
        }
    }
}

/// What a delete of a stream's snapshots did.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeletedJson {
    /// How many snapshots there were.
    pub deleted: u64,
}
