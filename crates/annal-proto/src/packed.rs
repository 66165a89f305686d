//! The packed encoding of event batches: what a client that asks for `packed` gets in
//! `ReadResponse.packed` instead of `repeated RecordedEvent`. It carries the same fields,
//! laid out so that both ends move bytes instead of walking protobuf tags and varints; the
//! Rust client always asks for it.
//!
//! A batch is events one after another, each (little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 8 | position |
//! | 8 | revision |
//! | 8 | recorded at, microseconds since the Unix epoch (signed) |
//! | 4 | schema version |
//! | 16 | event id |
//! | 1 | flags: 1 correlation id, 2 causation id, 4 actor |
//! | 16 | correlation id, when flag 1 |
//! | 16 | causation id, when flag 2 |
//! | str | stream id |
//! | str | event type |
//! | str | content type |
//! | str | actor, when flag 4 |
//! | 4 + n str | tag count, then each tag |
//! | 4 + 2n str | metadata pair count, then each key and value |
//! | 4 + n | data length, then the data |
//!
//! where `str` is a 4-byte length and that many bytes of UTF-8.

use annal_core::{Bytes, Error, Metadata, RecordedEvent, Result, Text, TextCache, Timestamp, Uuid};
use bytes::BufMut;

const CORRELATION: u8 = 1;
const CAUSATION: u8 = 2;
const ACTOR: u8 = 4;

fn put_str(out: &mut impl BufMut, s: &str) {
    out.put_u32_le(s.len() as u32);
    out.put_slice(s.as_bytes());
}

/// One event's fields, borrowed, as a batch carries them: taken from an owned event, or from
/// a view of a stored one (so that a server can pack events straight out of its log).
pub struct Parts<'a, T, X> {
    pub position: u64,
    pub revision: u64,
    pub recorded_at: Timestamp,
    pub schema_version: u32,
    pub id: Uuid,
    pub correlation_id: Option<Uuid>,
    pub causation_id: Option<Uuid>,
    pub actor: Option<&'a str>,
    pub stream_id: &'a str,
    pub event_type: &'a str,
    pub content_type: &'a str,
    pub tags: T,
    /// Extra metadata (key, value) pairs.
    pub extra: X,
    pub data: &'a [u8],
}

impl<'a, T, X> Parts<'a, T, X>
where
    T: ExactSizeIterator<Item = &'a str> + Clone,
    X: ExactSizeIterator<Item = (&'a str, &'a str)> + Clone,
{
    /// The bytes the event takes in a batch.
    pub fn encoded_len(&self) -> usize {
        // Fixed fields 45, three string lengths 12, three counts 12.
        69 + 16
            * (usize::from(self.correlation_id.is_some())
                + usize::from(self.causation_id.is_some()))
            + self.stream_id.len()
            + self.event_type.len()
            + self.content_type.len()
            + self.actor.map_or(0, |a| 4 + a.len())
            + self.tags.clone().map(|t| 4 + t.len()).sum::<usize>()
            + self
                .extra
                .clone()
                .map(|(k, v)| 8 + k.len() + v.len())
                .sum::<usize>()
            + self.data.len()
    }

    /// Writes the event to `out`.
    pub fn encode(self, out: &mut impl BufMut) {
        out.put_u64_le(self.position);
        out.put_u64_le(self.revision);
        out.put_i64_le(self.recorded_at.as_micros());
        out.put_u32_le(self.schema_version);
        out.put_slice(self.id.as_bytes());
        let flags = if self.correlation_id.is_some() {
            CORRELATION
        } else {
            0
        } | if self.causation_id.is_some() {
            CAUSATION
        } else {
            0
        } | if self.actor.is_some() { ACTOR } else { 0 };
        out.put_u8(flags);
        if let Some(c) = self.correlation_id {
            out.put_slice(c.as_bytes());
        }
        if let Some(c) = self.causation_id {
            out.put_slice(c.as_bytes());
        }
        put_str(out, self.stream_id);
        put_str(out, self.event_type);
        put_str(out, self.content_type);
        if let Some(a) = self.actor {
            put_str(out, a);
        }
        out.put_u32_le(self.tags.len() as u32);
        for t in self.tags {
            put_str(out, t);
        }
        out.put_u32_le(self.extra.len() as u32);
        for (k, v) in self.extra {
            put_str(out, k);
            put_str(out, v);
        }
        out.put_u32_le(self.data.len() as u32);
        out.put_slice(self.data);
    }
}

type OwnedParts<'a> = Parts<
    'a,
    std::iter::Map<std::slice::Iter<'a, Text>, fn(&Text) -> &str>,
    std::iter::Map<
        std::collections::btree_map::Iter<'a, String, String>,
        fn((&'a String, &'a String)) -> (&'a str, &'a str),
    >,
>;

/// The parts of an owned event.
pub fn parts(e: &RecordedEvent) -> OwnedParts<'_> {
    let m = &e.metadata;
    Parts {
        position: e.position,
        revision: e.revision,
        recorded_at: e.recorded_at,
        schema_version: e.schema_version,
        id: e.id,
        correlation_id: m.correlation_id,
        causation_id: m.causation_id,
        actor: m.actor.as_deref(),
        stream_id: &e.stream_id,
        event_type: &e.event_type,
        content_type: &e.content_type,
        tags: e.tags.iter().map(Text::as_str as fn(&Text) -> &str),
        extra: m.extra.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        data: &e.data,
    }
}

/// The bytes `e` takes in a batch.
pub fn encoded_len(e: &RecordedEvent) -> usize {
    parts(e).encoded_len()
}

/// Appends the events to `out`.
pub fn encode(events: &[RecordedEvent], out: &mut Vec<u8>) {
    out.reserve(events.iter().map(encoded_len).sum());
    encode_into(events, out);
}

/// Writes the events to `out`.
pub fn encode_into(events: &[RecordedEvent], out: &mut impl BufMut) {
    for e in events {
        parts(e).encode(out);
    }
}

/// Reads a batch; any malformed byte is an error, never a panic.
struct Reader<'a> {
    buf: &'a Bytes,
    at: usize,
    names: TextCache,
}

impl Reader<'_> {
    fn bad(&self, what: &str) -> Error {
        Error::Internal(format!(
            "the server sent a malformed packed batch: {what} at byte {}",
            self.at
        ))
    }

    fn take(&mut self, n: usize, what: &str) -> Result<std::ops::Range<usize>> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| self.bad(what))?;
        let range = self.at..end;
        self.at = end;
        Ok(range)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let range = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(&self.buf[range]);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        self.array::<4>(what).map(u32::from_le_bytes)
    }

    fn len(&mut self, what: &str) -> Result<usize> {
        let n = self.u32(what)? as usize;
        // A count can never exceed the bytes left; checking here keeps allocations bounded.
        if n > self.buf.len() - self.at {
            return Err(self.bad(what));
        }
        Ok(n)
    }

    /// A string: the one `prev` holds (the field of the event before, which a batch repeats
    /// often) when the bytes are the same, without checking them again; otherwise one of
    /// the batch's names.
    fn text_like(&mut self, what: &str, prev: Option<&Text>) -> Result<Text> {
        let n = self.len(what)?;
        let range = self.take(n, what)?;
        let bytes = &self.buf[range];
        if let Some(prev) = prev.filter(|p| p.as_bytes() == bytes) {
            return Ok(prev.clone());
        }
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(self.names.text(s)),
            Err(_) => Err(self.bad(what)),
        }
    }

    fn text(&mut self, what: &str) -> Result<Text> {
        self.text_like(what, None)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.len(what)?;
        let range = self.take(n, what)?;
        match std::str::from_utf8(&self.buf[range]) {
            Ok(s) => Ok(s.to_string()),
            Err(_) => Err(self.bad(what)),
        }
    }
}

/// The events of a batch; their data are slices of `buf`, and their names shared.
pub fn decode(buf: &Bytes) -> Result<Vec<RecordedEvent>> {
    let mut r = Reader {
        buf,
        at: 0,
        names: TextCache::default(),
    };
    let mut out = Vec::new();
    while r.at < buf.len() {
        let position = u64::from_le_bytes(r.array("position")?);
        let revision = u64::from_le_bytes(r.array("revision")?);
        let recorded_at = Timestamp(i64::from_le_bytes(r.array("recorded at")?));
        let schema_version = r.u32("schema version")?;
        let id = Uuid::from_bytes(r.array("event id")?);
        let flags = r.array::<1>("flags")?[0];
        if flags & !(CORRELATION | CAUSATION | ACTOR) != 0 {
            return Err(r.bad("unknown flags"));
        }
        let correlation_id = if flags & CORRELATION != 0 {
            Some(Uuid::from_bytes(r.array("correlation id")?))
        } else {
            None
        };
        let causation_id = if flags & CAUSATION != 0 {
            Some(Uuid::from_bytes(r.array("causation id")?))
        } else {
            None
        };
        let prev: Option<&RecordedEvent> = out.last();
        let stream_id = r.text_like("stream id", prev.map(|e| &e.stream_id))?;
        let event_type = r.text_like("event type", prev.map(|e| &e.event_type))?;
        let content_type = r.text_like("content type", prev.map(|e| &e.content_type))?;
        let actor = if flags & ACTOR != 0 {
            Some(r.text("actor")?)
        } else {
            None
        };
        let n = r.len("tag count")?;
        let mut tags = Vec::with_capacity(n);
        for _ in 0..n {
            tags.push(r.text("tag")?);
        }
        let n = r.len("metadata count")?;
        let mut extra = std::collections::BTreeMap::new();
        for _ in 0..n {
            let k = r.string("metadata key")?;
            let v = r.string("metadata value")?;
            extra.insert(k, v);
        }
        let n = r.len("data length")?;
        let data = buf.slice(r.take(n, "data")?);
        out.push(RecordedEvent {
            id,
            stream_id,
            revision,
            position,
            recorded_at,
            event_type,
            schema_version,
            content_type,
            metadata: Metadata {
                correlation_id,
                causation_id,
                actor,
                extra,
            },
            data,
            tags,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn event(
        i: u64,
        actor: Option<String>,
        tags: Vec<String>,
        data: Vec<u8>,
        linked: bool,
    ) -> RecordedEvent {
        RecordedEvent {
            id: Uuid::from_u128(u128::from(i) * 7919 + 1),
            stream_id: format!("account-{i}").into(),
            revision: i / 3,
            position: i,
            recorded_at: Timestamp(1_795_000_000_000_000 - i as i64 * 1000),
            event_type: "Deposited".into(),
            schema_version: 2,
            content_type: "application/json".into(),
            metadata: Metadata {
                correlation_id: linked.then(|| Uuid::from_u128(42)),
                causation_id: linked.then(|| Uuid::from_u128(43)),
                actor: actor.map(Text::from),
                extra: [("k".to_string(), format!("v{i}"))].into_iter().collect(),
            },
            data: data.into(),
            tags: tags.into_iter().map(Text::from).collect(),
        }
    }

    proptest! {
        #[test]
        fn batches_round_trip(
            specs in proptest::collection::vec(
                (
                    proptest::option::of("[a-zé]{0,8}"),
                    proptest::collection::vec("[a-z:0-9]{1,6}", 0..4),
                    proptest::collection::vec(any::<u8>(), 0..40),
                    any::<bool>(),
                ),
                0..20,
            )
        ) {
            let events: Vec<_> = specs
                .into_iter()
                .enumerate()
                .map(|(i, (a, t, d, l))| event(i as u64, a, t, d, l))
                .collect();
            let mut buf = Vec::new();
            encode(&events, &mut buf);
            prop_assert_eq!(buf.len(), events.iter().map(encoded_len).sum::<usize>());
            prop_assert_eq!(decode(&Bytes::from(buf)).unwrap(), events);
        }

        #[test]
        fn damaged_batches_are_errors_not_panics(
            cut in 0usize..400,
            flip in 0usize..400,
        ) {
            let events: Vec<_> = (0..3)
                .map(|i| event(i, Some("ada".into()), vec!["t:1".into()], vec![1, 2, 3], true))
                .collect();
            let mut buf = Vec::new();
            encode(&events, &mut buf);
            let cut = cut.min(buf.len());
            let _ = decode(&Bytes::copy_from_slice(&buf[..cut]));
            if flip < buf.len() {
                buf[flip] ^= 0xa5;
            }
            let _ = decode(&Bytes::from(buf));
        }
    }

    #[test]
    fn a_truncated_batch_names_what_is_missing() {
        let mut buf = Vec::new();
        encode(&[event(1, None, vec![], b"{}".to_vec(), false)], &mut buf);
        let e = decode(&Bytes::copy_from_slice(&buf[..buf.len() - 1])).unwrap_err();
        assert!(e.to_string().contains("data"), "{e}");
        assert!(decode(&Bytes::new()).unwrap().is_empty());
    }
}
