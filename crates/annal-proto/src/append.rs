//! `annal.v1.AppendRequest` straight to and from `annal-core` types, for the framed protocol.
//!
//! An append is the one message whose size grows with the events it carries, so both ends
//! skip the generated structs for it: the client encodes a core request into the frame
//! ([`encode_append`], byte for byte what prost writes for the same request), and the server
//! decodes the frame into a core request ([`decode_append`]): each event's data is a slice of
//! the frame, and names that repeat between events share one text. Small parts (expected revision, metadata, condition) still go through the
//! generated messages, so every wire rule (unknown fields skipped, the last of a repeated
//! scalar wins, repeated messages merged) is prost's own.
//!
//! Errors come in the same order as decoding with prost and then converting with
//! [`crate::append_request`]: a malformed message first, then the first field that does not
//! make sense, named as there (`streams[0].events[2].id`).

use annal_core as core;
use annal_core::Error;
use prost::bytes::BufMut;
use prost::encoding::{
    bytes, check_wire_type, decode_key, decode_varint, encode_key, encode_varint,
    encoded_len_varint, merge_loop, message, skip_field, string, uint32, DecodeContext, WireType,
};
use prost::DecodeError;

use crate::{AppendCondition, ExpectedRevision, Metadata, NewEvent};

/// Why a payload is not an append request.
#[derive(Debug)]
pub enum DecodeAppendError {
    /// Not a well-formed `annal.v1.AppendRequest`.
    Malformed(DecodeError),
    /// Well-formed, with a field that makes no sense (an id that is not 16 bytes, ...).
    Invalid(Error),
}

/// The length of a length-delimited field of `len` bytes, key included (field numbers
/// below 16 take one byte).
fn delimited_len(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

fn put_delimited(tag: u32, bytes: &[u8], out: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(bytes.len() as u64, out);
    out.put_slice(bytes);
}

/// The parts of an event that are rare and small, as the generated message.
fn metadata_message(e: &core::NewEvent) -> Option<Metadata> {
    (!e.metadata.is_empty()).then(|| e.metadata.clone().into())
}

fn event_len(e: &core::NewEvent) -> usize {
    let mut n = delimited_len(16) // id
        + 1 + encoded_len_varint(u64::from(e.schema_version))
        + delimited_len(e.content_type.len());
    if !e.event_type.is_empty() {
        n += delimited_len(e.event_type.len());
    }
    if let Some(m) = metadata_message(e) {
        n += message::encoded_len(5, &m);
    }
    if !e.data.is_empty() {
        n += delimited_len(e.data.len());
    }
    n + e.tags.iter().map(|t| delimited_len(t.len())).sum::<usize>()
}

/// The encoded length of each stream and event of a request, in order: for each stream its
/// own length, then its events'.
fn lengths(r: &core::AppendRequest, out: &mut Vec<usize>) -> usize {
    let mut total = 0;
    for s in &r.streams {
        let at = out.len();
        out.push(0);
        let mut n = message::encoded_len(2, &ExpectedRevision::from(s.expected));
        if !s.stream_id.is_empty() {
            n += delimited_len(s.stream_id.len());
        }
        for e in &s.events {
            let len = event_len(e);
            out.push(len);
            n += delimited_len(len);
        }
        out[at] = n;
        total += delimited_len(n);
    }
    if let Some(c) = condition_message(r) {
        total += message::encoded_len(2, &c);
    }
    total
}

fn condition_message(r: &core::AppendRequest) -> Option<AppendCondition> {
    r.condition.as_ref().map(|c| AppendCondition {
        query: Some(c.query.clone().into()),
        after: c.after,
    })
}

/// Appends the protobuf encoding of `r` as an `annal.v1.AppendRequest` (the same bytes as
/// `AppendRequest::from(r.clone()).encode_to_vec()`); returns how many bytes it wrote.
pub fn encode_append(r: &core::AppendRequest, out: &mut Vec<u8>) -> usize {
    let mut lens = Vec::with_capacity(r.streams.len() + r.event_count());
    let total = lengths(r, &mut lens);
    out.reserve(total);
    let mut lens = lens.into_iter();
    for s in &r.streams {
        encode_key(1, WireType::LengthDelimited, out);
        encode_varint(lens.next().unwrap_or_default() as u64, out);
        if !s.stream_id.is_empty() {
            put_delimited(1, s.stream_id.as_bytes(), out);
        }
        message::encode(2, &ExpectedRevision::from(s.expected), out);
        for e in &s.events {
            encode_key(3, WireType::LengthDelimited, out);
            encode_varint(lens.next().unwrap_or_default() as u64, out);
            put_delimited(1, e.id.as_bytes(), out);
            if !e.event_type.is_empty() {
                put_delimited(2, e.event_type.as_bytes(), out);
            }
            encode_key(3, WireType::Varint, out);
            encode_varint(u64::from(e.schema_version), out);
            put_delimited(4, e.content_type.as_bytes(), out);
            if let Some(m) = metadata_message(e) {
                message::encode(5, &m, out);
            }
            if !e.data.is_empty() {
                put_delimited(6, &e.data, out);
            }
            for t in &e.tags {
                put_delimited(7, t.as_bytes(), out);
            }
        }
    }
    if let Some(c) = condition_message(r) {
        message::encode(2, &c, out);
    }
    total
}

/// The bytes of a length-delimited field.
fn delimited<'a>(wire_type: WireType, buf: &mut &'a [u8]) -> Result<&'a [u8], DecodeError> {
    let mut rest = *buf;
    if wire_type == WireType::LengthDelimited {
        if let Ok(len) = decode_varint(&mut rest) {
            if let Some((field, after)) = usize::try_from(len)
                .ok()
                .and_then(|len| rest.split_at_checked(len))
            {
                *buf = after;
                return Ok(field);
            }
        }
    }
    // Malformed: prost's own reading of it names the problem.
    let mut scratch = Vec::new();
    bytes::merge(wire_type, &mut scratch, buf, DecodeContext::default())?;
    Ok(&[])
}

#[derive(Default)]
struct StreamIn {
    stream_id: String,
    expected: Option<ExpectedRevision>,
    events: Vec<core::NewEvent>,
    /// Events read so far, the ones that made no sense included.
    seen: usize,
}

/// What decoding has met so far: the first field that makes no sense, kept until the whole
/// message is known to be well-formed; the names made so far; and the whole message, which
/// event data is sliced from.
struct Decoder<'a> {
    invalid: Option<Error>,
    stream: usize,
    names: core::TextCache,
    whole: &'a core::Bytes,
}

impl Decoder<'_> {
    fn invalid(&mut self, e: impl FnOnce() -> Error) {
        if self.invalid.is_none() {
            self.invalid = Some(e());
        }
    }

    /// The event as the core type; `None` (with the problem kept) when a field makes no
    /// sense.
    fn event(&mut self, e: NewEvent, index: usize) -> Option<core::NewEvent> {
        let stream = self.stream;
        let field = || format!("streams[{stream}].events[{index}]");
        match crate::new_event(e, field, &mut self.names) {
            Ok(e) => Some(e),
            Err(err) => {
                self.invalid(|| err);
                None
            }
        }
    }
}

/// Names the field a malformation was found in, as prost's generated code does.
fn at<T>(
    r: Result<T, DecodeError>,
    message: &'static str,
    field: &'static str,
) -> Result<T, DecodeError> {
    r.map_err(|mut e| {
        e.push(message, field);
        e
    })
}

fn merge_event(
    e: &mut NewEvent,
    buf: &mut &[u8],
    ctx: DecodeContext,
    whole: &core::Bytes,
) -> Result<(), DecodeError> {
    let (tag, wire_type) = decode_key(buf)?;
    const EVENT: &str = "NewEvent";
    match tag {
        1 => {
            let id = at(delimited(wire_type, buf), EVENT, "id")?;
            e.id.clear();
            e.id.extend_from_slice(id);
            Ok(())
        }
        2 => at(
            string::merge(wire_type, &mut e.event_type, buf, ctx),
            EVENT,
            "event_type",
        ),
        3 => at(
            uint32::merge(wire_type, e.schema_version.get_or_insert(0), buf, ctx),
            EVENT,
            "schema_version",
        ),
        4 => at(
            string::merge(
                wire_type,
                e.content_type.get_or_insert_with(String::new),
                buf,
                ctx,
            ),
            EVENT,
            "content_type",
        ),
        5 => at(
            message::merge(
                wire_type,
                e.metadata.get_or_insert_with(Metadata::default),
                buf,
                ctx,
            ),
            EVENT,
            "metadata",
        ),
        6 => {
            let data = at(delimited(wire_type, buf), EVENT, "data")?;
            e.data = whole.slice_ref(data);
            Ok(())
        }
        7 => at(
            string::merge_repeated(wire_type, &mut e.tags, buf, ctx),
            EVENT,
            "tags",
        ),
        _ => skip_field(wire_type, tag, buf, ctx),
    }
}

fn merge_stream(
    d: &mut Decoder<'_>,
    s: &mut StreamIn,
    buf: &mut &[u8],
    ctx: DecodeContext,
) -> Result<(), DecodeError> {
    let (tag, wire_type) = decode_key(buf)?;
    const STREAM: &str = "StreamAppend";
    match tag {
        1 => at(
            string::merge(wire_type, &mut s.stream_id, buf, ctx),
            STREAM,
            "stream_id",
        ),
        2 => at(
            message::merge(
                wire_type,
                s.expected.get_or_insert_with(ExpectedRevision::default),
                buf,
                ctx,
            ),
            STREAM,
            "expected",
        ),
        3 => {
            if s.events.capacity() == 0 {
                // Room for as many events as the rest of the stream holds if they are the
                // size of the first (at most 1,024 ahead of need), instead of growing the
                // vector event by event.
                let mut peek = *buf;
                if let Ok(first) = decode_varint(&mut peek) {
                    let each = usize::try_from(first)
                        .unwrap_or(usize::MAX)
                        .saturating_add(2);
                    s.events.reserve((buf.len() / each).clamp(1, 1024));
                }
            }
            let mut e = NewEvent::default();
            let whole = d.whole;
            at(
                check_wire_type(WireType::LengthDelimited, wire_type).and_then(|()| {
                    merge_loop(&mut e, buf, ctx, |e, buf, ctx| {
                        merge_event(e, buf, ctx, whole)
                    })
                }),
                STREAM,
                "events",
            )?;
            s.events.extend(d.event(e, s.seen));
            s.seen += 1;
            Ok(())
        }
        _ => skip_field(wire_type, tag, buf, ctx),
    }
}

/// Decodes an `annal.v1.AppendRequest` into a core request, as decoding it with prost and
/// converting it with [`crate::append_request`] would. Events without an id get a random one.
/// Each event's data is a slice of `whole`, not a copy.
pub fn decode_append(whole: &core::Bytes) -> Result<core::AppendRequest, DecodeAppendError> {
    let mut buf: &[u8] = whole;
    let ctx = DecodeContext::default();
    let mut d = Decoder {
        invalid: None,
        stream: 0,
        names: core::TextCache::default(),
        whole,
    };
    let mut streams = Vec::new();
    let mut condition: Option<AppendCondition> = None;
    let buf = &mut buf;
    while !buf.is_empty() {
        let (tag, wire_type) = decode_key(buf).map_err(DecodeAppendError::Malformed)?;
        let step = match tag {
            1 => at(
                check_wire_type(WireType::LengthDelimited, wire_type).and_then(|()| {
                    d.stream = streams.len();
                    let mut s = StreamIn::default();
                    merge_loop(&mut s, buf, ctx.clone(), |s, buf, ctx| {
                        merge_stream(&mut d, s, buf, ctx)
                    })?;
                    streams.push(core::StreamAppend {
                        stream_id: s.stream_id.into(),
                        expected: crate::expected_revision(s.expected),
                        events: s.events,
                    });
                    Ok(())
                }),
                "AppendRequest",
                "streams",
            ),
            2 => at(
                message::merge(
                    wire_type,
                    condition.get_or_insert_with(AppendCondition::default),
                    buf,
                    ctx.clone(),
                ),
                "AppendRequest",
                "condition",
            ),
            _ => skip_field(wire_type, tag, buf, ctx.clone()),
        };
        step.map_err(DecodeAppendError::Malformed)?;
    }
    if let Some(e) = d.invalid {
        return Err(DecodeAppendError::Invalid(e));
    }
    let condition = match condition {
        None => None,
        Some(c) => Some(core::AppendCondition {
            query: c
                .query
                .ok_or_else(|| {
                    DecodeAppendError::Invalid(Error::invalid("condition.query", "is missing"))
                })?
                .into(),
            after: c.after,
        }),
    };
    Ok(core::AppendRequest { streams, condition })
}

#[cfg(test)]
mod tests {
    use super::*;
    use annal_core::Uuid;
    use prost::Message;

    /// The reading this module replaces: prost's decoding, then the conversion.
    fn prost_reading(payload: &[u8]) -> Result<core::AppendRequest, DecodeAppendError> {
        let m = crate::AppendRequest::decode(payload).map_err(DecodeAppendError::Malformed)?;
        crate::append_request(m).map_err(DecodeAppendError::Invalid)
    }
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn name() -> impl Strategy<Value = String> {
        prop_oneof!["[a-z]{0,12}", "[a-zA-Z0-9:\\- ]{0,200}", ".{0,8}"]
    }

    fn metadata() -> impl Strategy<Value = core::Metadata> {
        (
            proptest::option::of(any::<u128>()),
            proptest::option::of(any::<u128>()),
            proptest::option::of(name()),
            // At most one pair: prost writes a map in hash order, so two encodings of more
            // pairs differ in order.
            proptest::collection::btree_map(name(), name(), 0..2),
        )
            .prop_map(|(c, k, actor, extra)| core::Metadata {
                correlation_id: c.map(Uuid::from_u128),
                causation_id: k.map(Uuid::from_u128),
                actor: actor.map(core::Text::from),
                extra: extra.into_iter().collect::<BTreeMap<_, _>>(),
            })
    }

    fn event() -> impl Strategy<Value = core::NewEvent> {
        (
            any::<u128>(),
            name(),
            0u32..5,
            prop_oneof![Just("application/json".to_string()), name()],
            prop_oneof![Just(core::Metadata::default()), metadata()],
            proptest::collection::vec(any::<u8>(), 0..300),
            proptest::collection::vec(name(), 0..4),
        )
            .prop_map(|(id, t, v, ct, m, data, tags)| core::NewEvent {
                id: Uuid::from_u128(id),
                event_type: t.into(),
                schema_version: v,
                content_type: ct.into(),
                metadata: m,
                data: data.into(),
                tags: tags.into_iter().map(core::Text::from).collect(),
            })
    }

    fn expected() -> impl Strategy<Value = core::ExpectedRevision> {
        prop_oneof![
            Just(core::ExpectedRevision::Any),
            Just(core::ExpectedRevision::NoStream),
            Just(core::ExpectedRevision::StreamExists),
            any::<u64>().prop_map(core::ExpectedRevision::Exact),
        ]
    }

    fn request() -> impl Strategy<Value = core::AppendRequest> {
        let stream = (name(), expected(), proptest::collection::vec(event(), 0..5)).prop_map(
            |(stream_id, expected, events)| core::StreamAppend {
                stream_id: stream_id.into(),
                expected,
                events,
            },
        );
        let condition = (
            proptest::collection::vec(
                (
                    proptest::collection::vec(name(), 0..2),
                    proptest::collection::vec(name(), 0..2),
                ),
                0..3,
            ),
            proptest::option::of(any::<u64>()),
        )
            .prop_map(|(items, after)| core::AppendCondition {
                query: core::Query {
                    items: items
                        .into_iter()
                        .map(|(types, tags)| core::QueryItem { types, tags })
                        .collect(),
                },
                after,
            });
        (
            proptest::collection::vec(stream, 0..4),
            proptest::option::of(condition),
        )
            .prop_map(|(streams, condition)| core::AppendRequest { streams, condition })
    }

    /// Events sent without an id get a random one on either side: those ids are left out
    /// of the comparison.
    fn same_but_random_ids(a: &core::AppendRequest, b: &core::AppendRequest) -> bool {
        let (mut a, mut b) = (a.clone(), b.clone());
        let ea = a.streams.iter_mut().flat_map(|s| s.events.iter_mut());
        let eb = b.streams.iter_mut().flat_map(|s| s.events.iter_mut());
        for (x, y) in ea.zip(eb) {
            if x.id != y.id && x.id.get_version_num() == 4 && y.id.get_version_num() == 4 {
                x.id = Uuid::nil();
                y.id = Uuid::nil();
            }
        }
        a == b
    }

    fn same(
        a: &Result<core::AppendRequest, DecodeAppendError>,
        b: &Result<core::AppendRequest, DecodeAppendError>,
    ) -> bool {
        match (a, b) {
            (Ok(a), Ok(b)) => same_but_random_ids(a, b),
            (Err(DecodeAppendError::Malformed(a)), Err(DecodeAppendError::Malformed(b))) => {
                a.to_string() == b.to_string()
            }
            (Err(DecodeAppendError::Invalid(a)), Err(DecodeAppendError::Invalid(b))) => a == b,
            _ => false,
        }
    }

    proptest! {
        /// The encoder writes what prost writes for the same request, and the decoder reads
        /// it back unchanged.
        #[test]
        fn encodes_as_prost_and_decodes_back(r in request()) {
            let mut out = vec![7u8];
            let n = encode_append(&r, &mut out);
            let theirs = crate::AppendRequest::from(r.clone()).encode_to_vec();
            prop_assert_eq!(n, theirs.len());
            prop_assert_eq!(&out[1..], &theirs[..]);
            let back = decode_append(&core::Bytes::from(theirs));
            prop_assert!(matches!(&back, Ok(b) if *b == r), "{:?}", back.err());
        }

        /// Whatever bytes arrive, the decoder agrees with prost followed by the conversion:
        /// the same request, the same malformation, or the same invalid field.
        #[test]
        fn agrees_with_prost_on_damaged_requests(
            r in request(),
            cuts in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            truncate in any::<Option<prop::sample::Index>>(),
        ) {
            let mut bytes = crate::AppendRequest::from(r).encode_to_vec();
            if bytes.is_empty() {
                return Ok(());
            }
            for (at, b) in cuts {
                let i = at.index(bytes.len());
                bytes[i] = b;
            }
            if let Some(t) = truncate {
                bytes.truncate(t.index(bytes.len()));
            }
            let ours = decode_append(&core::Bytes::from(bytes.clone()));
            let theirs = prost_reading(&bytes);
            prop_assert!(same(&ours, &theirs), "ours {:?}, prost {:?}", ours.as_ref().err(), theirs.as_ref().err());
        }

        #[test]
        fn agrees_with_prost_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let ours = decode_append(&core::Bytes::from(bytes.clone()));
            let theirs = prost_reading(&bytes);
            prop_assert!(same(&ours, &theirs), "ours {:?}, prost {:?}", ours.as_ref().err(), theirs.as_ref().err());
        }
    }

    #[test]
    fn a_bad_id_is_named_after_the_whole_message_is_read() {
        let mut r = crate::AppendRequest::from(core::AppendRequest::stream(
            "s",
            core::ExpectedRevision::Any,
            vec![
                core::NewEvent::new("A", b"{}".to_vec()),
                core::NewEvent::new("B", b"{}".to_vec()),
            ],
        ));
        r.streams[0].events[1].id = vec![1, 2, 3];
        let bytes = r.encode_to_vec();
        match decode_append(&core::Bytes::from(bytes.clone())) {
            Err(DecodeAppendError::Invalid(e)) => {
                let text = e.to_string();
                assert!(text.contains("streams[0].events[1].id"), "{text}");
                assert!(text.contains("got 3"), "{text}");
            }
            other => panic!("expected an invalid id, got {:?}", other.map(|_| ())),
        }
        // Cut short, the same message is malformed first.
        assert!(matches!(
            decode_append(&core::Bytes::copy_from_slice(&bytes[..bytes.len() - 1])),
            Err(DecodeAppendError::Malformed(_))
        ));
        // No id: a random one.
        r.streams[0].events[1].id.clear();
        let decoded = decode_append(&r.encode_to_vec().into()).expect("well-formed");
        assert_eq!(decoded.streams[0].events[1].id.get_version_num(), 4);
    }
}
