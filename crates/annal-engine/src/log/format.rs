//! The byte layout of segment files. Everything is little-endian. docs/file-format.md gives
//! the same tables with the reasoning.
//!
//! A segment file (`segments/<first position, 20 digits>.seg`) starts with a 64-byte header:
//!
//! | offset | size | field                                              |
//! |--------|------|----------------------------------------------------|
//! | 0      | 8    | magic `ANNALSEG`                                   |
//! | 8      | 4    | format version (u32, currently 1)                  |
//! | 12     | 4    | header length (u32, 64)                            |
//! | 16     | 8    | first position (u64)                               |
//! | 24     | 8    | base offset: log offset of the first record (u64)  |
//! | 32     | 8    | created at, microseconds since the epoch (i64)     |
//! | 40     | 20   | reserved, zero                                     |
//! | 60     | 4    | CRC32C of bytes 0..60                              |
//!
//! Records follow back to back. A record is one append request (a batch), written whole or
//! not at all:
//!
//! | offset | size | field                                              |
//! |--------|------|----------------------------------------------------|
//! | 0      | 4    | payload length n (u32)                             |
//! | 4      | 4    | CRC32C of the length field and the payload         |
//! | 8      | n    | payload                                            |
//!
//! The payload of a batch:
//!
//! | size      | field                                                       |
//! |-----------|-------------------------------------------------------------|
//! | 1         | kind: 1 = batch                                             |
//! | 8         | first position (u64)                                        |
//! | 8         | recorded at, microseconds (i64)                             |
//! | 8         | synced up to: the log offset below which the log was durable when this record was written |
//! | 4         | event count (u32)                                           |
//! | 2         | stream count (u16)                                          |
//! | per stream| str16 stream id, u64 first revision, u32 event count        |
//! | per event | the event, below; events in stream order, then batch order  |
//!
//! An event: 16-byte id, u32 schema version, str16 event type, str16 content type, u8 flags
//! (bit 0: correlation id follows, bit 1: causation id, bit 2: actor), [16-byte correlation
//! id], [16-byte causation id], [str16 actor], u16 count of extra metadata pairs then
//! (str16 key, str32 value) each, u16 tag count then str16 each, u32 data length then data.
//! `str16` is a u16 byte length then UTF-8 bytes; `str32` the same with a u32 length.
//!
//! The log offset of a record is the segment's base offset plus its offset in the file minus
//! the header length: offsets run on across segments without gaps.

use annal_core::{Bytes, Metadata, NewEvent, RecordedEvent, Text, TextCache, Timestamp, Uuid};

/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
pub const SEGMENT_MAGIC: &[u8; 8] = b"ANNALSEG";
pub const SEGMENT_HEADER_LEN: u64 = 64;
pub const FRAME_HEADER_LEN: usize = 8;
const KIND_BATCH: u8 = 1;
const BATCH_FIXED_LEN: usize = 1 + 8 + 8 + 8 + 4 + 2;

/// A decoding problem; the caller adds the file and offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

pub type DResult<T> = Result<T, DecodeError>;

/// A segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub version: u32,
    pub first_position: u64,
    pub base_offset: u64,
    pub created_at: i64,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN as usize] {
        let mut b = [0u8; SEGMENT_HEADER_LEN as usize];
        b[0..8].copy_from_slice(SEGMENT_MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&(SEGMENT_HEADER_LEN as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.first_position.to_le_bytes());
        b[24..32].copy_from_slice(&self.base_offset.to_le_bytes());
        b[32..40].copy_from_slice(&self.created_at.to_le_bytes());
        let crc = crc32c::crc32c(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes a header. A version other than ours is returned as is for the caller to
    /// refuse; the CRC is checked first so that garbage is not taken for a version.
    pub fn decode(b: &[u8]) -> DResult<SegmentHeader> {
        if b.len() < SEGMENT_HEADER_LEN as usize {
            return Err(DecodeError(format!(
                "segment header is {} bytes, expected {SEGMENT_HEADER_LEN}",
                b.len()
            )));
        }
        if &b[0..8] != SEGMENT_MAGIC {
            return Err(DecodeError("not an annal segment (bad magic)".into()));
        }
        let crc = u32::from_le_bytes(arr(&b[60..64]));
        if crc != crc32c::crc32c(&b[0..60]) {
            return Err(DecodeError("segment header checksum mismatch".into()));
        }
        Ok(SegmentHeader {
            version: u32::from_le_bytes(arr(&b[8..12])),
            first_position: u64::from_le_bytes(arr(&b[16..24])),
            base_offset: u64::from_le_bytes(arr(&b[24..32])),
            created_at: i64::from_le_bytes(arr(&b[32..40])),
        })
    }
}

fn arr<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&s[..N]);
    a
}

/// The checksum of a frame: the length field, then the payload.
pub fn frame_crc(len: u32, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&len.to_le_bytes()), payload)
}

/// Reads a frame header: (payload length, expected CRC).
pub fn frame_header(b: &[u8; FRAME_HEADER_LEN]) -> (u32, u32) {
    (
        u32::from_le_bytes(arr(&b[0..4])),
        u32::from_le_bytes(arr(&b[4..8])),
    )
}

/// One stream's part of a batch being encoded.
pub struct BatchStream<'a> {
    pub stream_id: &'a str,
    pub first_revision: u64,
    pub events: &'a [NewEvent],
}

/// Appends one framed batch record to `out`; returns the record's length.
pub fn encode_batch(
    out: &mut Vec<u8>,
    first_position: u64,
    recorded_at: Timestamp,
    synced_up_to: u64,
    streams: &[BatchStream<'_>],
) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
    out.push(KIND_BATCH);
    out.extend_from_slice(&first_position.to_le_bytes());
    out.extend_from_slice(&recorded_at.0.to_le_bytes());
    out.extend_from_slice(&synced_up_to.to_le_bytes());
    let count: usize = streams.iter().map(|s| s.events.len()).sum();
    out.extend_from_slice(&narrow::<u32>(count).to_le_bytes());
    out.extend_from_slice(&narrow::<u16>(streams.len()).to_le_bytes());
    for s in streams {
        put_str16(out, s.stream_id);
        out.extend_from_slice(&s.first_revision.to_le_bytes());
        out.extend_from_slice(&narrow::<u32>(s.events.len()).to_le_bytes());
    }
    for s in streams {
        for e in s.events {
            encode_event(out, e);
        }
    }
    let len: u32 = narrow(out.len() - start - FRAME_HEADER_LEN);
    let crc = frame_crc(len, &out[start + FRAME_HEADER_LEN..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    out.len() - start
}

/// A count or length that validation keeps within its field; never wrapped silently.
fn narrow<T: TryFrom<usize>>(n: usize) -> T {
    T::try_from(n)
        .ok()
        .expect("validation keeps counts and lengths within their fields")
}

fn put_str16(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&narrow::<u16>(s.len()).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_str32(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&narrow::<u32>(s.len()).to_le_bytes());
    out.extend_from_slice(s);
}

fn encode_event(out: &mut Vec<u8>, e: &NewEvent) {
    out.extend_from_slice(e.id.as_bytes());
    out.extend_from_slice(&e.schema_version.to_le_bytes());
    put_str16(out, &e.event_type);
    put_str16(out, &e.content_type);
    let m = &e.metadata;
    let flags = u8::from(m.correlation_id.is_some())
        | (u8::from(m.causation_id.is_some()) << 1)
        | (u8::from(m.actor.is_some()) << 2);
    out.push(flags);
    if let Some(id) = m.correlation_id {
        out.extend_from_slice(id.as_bytes());
    }
    if let Some(id) = m.causation_id {
        out.extend_from_slice(id.as_bytes());
    }
    if let Some(a) = &m.actor {
        put_str16(out, a);
    }
    out.extend_from_slice(&narrow::<u16>(m.extra.len()).to_le_bytes());
    for (k, v) in &m.extra {
        put_str16(out, k);
        put_str32(out, v.as_bytes());
    }
    out.extend_from_slice(&narrow::<u16>(e.tags.len()).to_le_bytes());
    for t in &e.tags {
        put_str16(out, t);
    }
    put_str32(out, &e.data);
}

/// A bounds-checked reader over a payload.
struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> DResult<&'a [u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| {
                DecodeError(format!(
                    "record ends early: needed {n} bytes at payload offset {}, {} left",
                    self.at,
                    self.b.len().saturating_sub(self.at)
                ))
            })?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> DResult<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> DResult<u16> {
        Ok(u16::from_le_bytes(arr(self.take(2)?)))
    }
    fn u32(&mut self) -> DResult<u32> {
        Ok(u32::from_le_bytes(arr(self.take(4)?)))
    }
    fn u64(&mut self) -> DResult<u64> {
        Ok(u64::from_le_bytes(arr(self.take(8)?)))
    }
    fn uuid(&mut self) -> DResult<Uuid> {
        Ok(Uuid::from_bytes(arr(self.take(16)?)))
    }
    fn text(&mut self, n: usize) -> DResult<&'a str> {
        std::str::from_utf8(self.take(n)?)
            .map_err(|_| DecodeError("text field is not UTF-8".into()))
    }
    fn str16(&mut self) -> DResult<&'a str> {
        let n = self.u16()? as usize;
        self.text(n)
    }
    fn str32(&mut self) -> DResult<&'a str> {
        let n = self.u32()? as usize;
        self.text(n)
    }
}

/// The fixed part of a batch, read without decoding its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchHeader {
    pub first_position: u64,
    pub recorded_at: Timestamp,
    /// The log offset below which the log was durable (synced) when this record was written.
    /// A power loss can damage only bytes at or above it; damage below the watermark of an
    /// intact later record is corruption, not a torn write.
    pub synced_up_to: u64,
    pub event_count: u32,
}

/// Reads a batch payload's fixed part.
pub fn decode_batch_header(payload: &[u8]) -> DResult<BatchHeader> {
    let mut c = Cursor { b: payload, at: 0 };
    let kind = c.u8()?;
    if kind != KIND_BATCH {
        return Err(DecodeError(format!("unknown record kind {kind}")));
    }
    Ok(BatchHeader {
        first_position: c.u64()?,
        recorded_at: Timestamp(c.u64()? as i64),
        synced_up_to: c.u64()?,
        event_count: c.u32()?,
    })
}

/// Decodes every event of a batch payload. The events share the payload's bytes (their
/// data is a slice of it) and their names: the events of one stream share its id, events of
/// one type their type.
pub fn decode_batch(payload: &Bytes) -> DResult<Vec<RecordedEvent>> {
    let mut out = Vec::new();
    decode_batch_into(payload, &mut EventNames::default(), &mut out)?;
    Ok(out)
}

/// Where decoded events go: a vector, or a reader's queue.
pub trait Events {
    /// How many events it holds.
    fn count(&self) -> usize;
    fn push(&mut self, e: RecordedEvent);
    fn truncate(&mut self, len: usize);
}

impl Events for Vec<RecordedEvent> {
    fn count(&self) -> usize {
        Vec::len(self)
    }
    fn push(&mut self, e: RecordedEvent) {
        Vec::push(self, e);
    }
    fn truncate(&mut self, len: usize) {
        Vec::truncate(self, len);
    }
}

impl Events for std::collections::VecDeque<RecordedEvent> {
    fn count(&self) -> usize {
        std::collections::VecDeque::len(self)
    }
    fn push(&mut self, e: RecordedEvent) {
        self.push_back(e);
    }
    fn truncate(&mut self, len: usize) {
        std::collections::VecDeque::truncate(self, len);
    }
}

/// The names of the events decoded last, so that a name that repeats (the stream id of a
/// stream's events, their type and content type, which every event stores again) is one
/// [`Text`], taken without checking its bytes again.
#[derive(Default)]
pub struct EventNames {
    stream: Option<Text>,
    event_type: Option<Text>,
    content_type: Option<Text>,
    /// Event types and content types met lately: a reader of interleaved types takes the
    /// process-wide interned name only for a type it has not met lately.
    types: TextCache,
    /// Tags and actors.
    others: TextCache,
}

/// The text `bytes` hold: the one in `last` when they are its bytes, else a new one (kept
/// in `last`) once they are checked to be UTF-8.
fn name(last: &mut Option<Text>, bytes: &[u8]) -> DResult<Text> {
    if let Some(t) = last.as_ref().filter(|t| t.as_bytes() == bytes) {
        return Ok(t.clone());
    }
    let s =
        std::str::from_utf8(bytes).map_err(|_| DecodeError("text field is not UTF-8".into()))?;
    let t = Text::new(s);
    *last = Some(t.clone());
    Ok(t)
}

/// The interned text `bytes` hold: the one in `last` when they are its bytes, else one
/// from `recent`, else the interned text once they are checked to be UTF-8.
fn type_name(last: &mut Option<Text>, recent: &mut TextCache, bytes: &[u8]) -> DResult<Text> {
    if let Some(t) = last.as_ref().filter(|t| t.as_bytes() == bytes) {
        return Ok(t.clone());
    }
    let t = match recent.find(bytes) {
        Some(t) => t,
        None => {
            let s = std::str::from_utf8(bytes)
                .map_err(|_| DecodeError("text field is not UTF-8".into()))?;
            recent.keep(Text::interned(s))
        }
    };
    *last = Some(t.clone());
    Ok(t)
}

/// Decodes every event of a batch payload into `out`, in one pass, as [`decode_batch`]
/// does. The whole record is checked: on any error, `out` is left as it was.
pub fn decode_batch_into(
    payload: &Bytes,
    names: &mut EventNames,
    out: &mut impl Events,
) -> DResult<()> {
    let before = out.count();
    let decoded = decode_events(payload, names, out);
    if decoded.is_err() {
        out.truncate(before);
    }
    decoded
}

fn decode_events(payload: &Bytes, names: &mut EventNames, out: &mut impl Events) -> DResult<()> {
    if payload.len() < BATCH_FIXED_LEN {
        return Err(DecodeError("batch record too short".into()));
    }
    let header = decode_batch_header(payload)?;
    let mut c = Cursor {
        b: payload,
        at: BATCH_FIXED_LEN - 2,
    };
    let stream_count = c.u16()? as usize;
    let mut streams = Vec::with_capacity(stream_count.min(1024));
    let mut total = 0u64;
    for _ in 0..stream_count {
        let n = c.u16()? as usize;
        let id = name(&mut names.stream, c.take(n)?)?;
        let first_revision = c.u64()?;
        let count = c.u32()?;
        total += u64::from(count);
        streams.push((id, first_revision, count));
    }
    if total != u64::from(header.event_count) {
        return Err(DecodeError(format!(
            "batch says {} events but its streams hold {total}",
            header.event_count
        )));
    }
    let mut position = header.first_position;
    for (stream_id, first_revision, count) in streams {
        for i in 0..u64::from(count) {
            let id = c.uuid()?;
            let schema_version = c.u32()?;
            let n = c.u16()? as usize;
            let event_type = type_name(&mut names.event_type, &mut names.types, c.take(n)?)?;
            let n = c.u16()? as usize;
            let content_type = type_name(&mut names.content_type, &mut names.types, c.take(n)?)?;
            let flags = c.u8()?;
            let correlation_id = if flags & 1 != 0 {
                Some(c.uuid()?)
            } else {
                None
            };
            let causation_id = if flags & 2 != 0 {
                Some(c.uuid()?)
            } else {
                None
            };
            let actor = if flags & 4 != 0 {
                Some(names.others.text(c.str16()?))
            } else {
                None
            };
            let pair_count = c.u16()?;
            let mut extra = std::collections::BTreeMap::new();
            for _ in 0..pair_count {
                let k = c.str16()?;
                let v = c.str32()?;
                extra.insert(k.to_owned(), v.to_owned());
            }
            let tag_count = c.u16()?;
            let mut tags = Vec::with_capacity(tag_count.into());
            for _ in 0..tag_count {
                tags.push(names.others.text(c.str16()?));
            }
            let data_len = c.u32()? as usize;
            let data_at = c.at;
            c.take(data_len)?;
            out.push(RecordedEvent {
                id,
                stream_id: stream_id.clone(),
                revision: first_revision
                    .checked_add(i)
                    .ok_or_else(|| DecodeError("revision overflows".into()))?,
                position,
                recorded_at: header.recorded_at,
                event_type,
                schema_version,
                content_type,
                metadata: Metadata {
                    correlation_id,
                    causation_id,
                    actor,
                    extra,
                },
                data: payload.slice(data_at..data_at + data_len),
                tags,
            });
            position = position
                .checked_add(1)
                .ok_or_else(|| DecodeError("position overflows".into()))?;
        }
    }
    if c.at != payload.len() {
        return Err(DecodeError(format!(
            "{} unexpected bytes after the last event",
            payload.len() - c.at
        )));
    }
    Ok(())
}

/// An event as it is stored: a view into a batch payload (or into a decoded event) that
/// reads its fields without copying or allocating.
#[derive(Debug, Clone)]
pub struct StoredEvent<'a> {
    pub id: Uuid,
    pub stream_id: &'a str,
    pub revision: u64,
    pub position: u64,
    pub recorded_at: Timestamp,
    pub event_type: &'a str,
    pub schema_version: u32,
    pub content_type: &'a str,
    pub correlation_id: Option<Uuid>,
    pub causation_id: Option<Uuid>,
    pub actor: Option<&'a str>,
    /// Extra metadata pairs, as stored (the writer stores them in key order).
    pub extra: Pairs<'a>,
    pub tags: Strs<'a>,
    pub data: &'a [u8],
}

impl StoredEvent<'_> {
    /// The event as a value of its own, its fields copied.
    pub fn to_event(&self) -> RecordedEvent {
        self.with_data(Bytes::copy_from_slice(self.data), &mut TextCache::default())
    }

    fn with_data(&self, data: Bytes, names: &mut TextCache) -> RecordedEvent {
        RecordedEvent {
            id: self.id,
            stream_id: names.text(self.stream_id),
            revision: self.revision,
            position: self.position,
            recorded_at: self.recorded_at,
            event_type: names.text(self.event_type),
            schema_version: self.schema_version,
            content_type: names.text(self.content_type),
            metadata: Metadata {
                correlation_id: self.correlation_id,
                causation_id: self.causation_id,
                actor: self.actor.map(|a| names.text(a)),
                extra: self
                    .extra
                    .clone()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            },
            data,
            tags: self.tags.clone().map(|t| names.text(t)).collect(),
        }
    }
}

impl<'a> From<&'a RecordedEvent> for StoredEvent<'a> {
    fn from(e: &'a RecordedEvent) -> Self {
        StoredEvent {
            id: e.id,
            stream_id: e.stream_id.as_str(),
            revision: e.revision,
            position: e.position,
            recorded_at: e.recorded_at,
            event_type: e.event_type.as_str(),
            schema_version: e.schema_version,
            content_type: e.content_type.as_str(),
            correlation_id: e.metadata.correlation_id,
            causation_id: e.metadata.causation_id,
            actor: e.metadata.actor.as_deref(),
            extra: Pairs(PairsInner::Owned(e.metadata.extra.iter())),
            tags: Strs(StrsInner::Owned(e.tags.iter())),
            data: &e.data,
        }
    }
}

/// The tags of a [`StoredEvent`].
#[derive(Debug, Clone)]
pub struct Strs<'a>(StrsInner<'a>);

#[derive(Debug, Clone)]
enum StrsInner<'a> {
    /// `left` str16 values, already checked when the batch was visited.
    Stored {
        left: usize,
        b: &'a [u8],
    },
    Owned(std::slice::Iter<'a, Text>),
}

/// Takes a checked str16 or str32 from the front of `b`.
fn checked_str<'a>(b: &mut &'a [u8], wide: bool) -> &'a str {
    let (n, skip) = if wide {
        (
            b.get(..4)
                .map_or(0, |l| u32::from_le_bytes(arr(l)) as usize),
            4,
        )
    } else {
        (
            b.get(..2)
                .map_or(0, |l| usize::from(u16::from_le_bytes(arr(l)))),
            2,
        )
    };
    let s = b.get(skip..skip + n).unwrap_or_default();
    *b = b.get(skip + n..).unwrap_or_default();
    std::str::from_utf8(s).unwrap_or_default()
}

impl<'a> Iterator for Strs<'a> {
    type Item = &'a str;
    fn next(&mut self) -> Option<&'a str> {
        match &mut self.0 {
            StrsInner::Stored { left: 0, .. } => None,
            StrsInner::Stored { left, b } => {
                *left -= 1;
                Some(checked_str(b, false))
            }
            StrsInner::Owned(it) => it.next().map(Text::as_str),
        }
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = match &self.0 {
            StrsInner::Stored { left, .. } => *left,
            StrsInner::Owned(it) => it.len(),
        };
        (n, Some(n))
    }
}

impl ExactSizeIterator for Strs<'_> {}

/// The extra metadata of a [`StoredEvent`]: (key, value) pairs.
#[derive(Debug, Clone)]
pub struct Pairs<'a>(PairsInner<'a>);

#[derive(Debug, Clone)]
enum PairsInner<'a> {
    /// `left` pairs of a str16 key and a str32 value, already checked.
    Stored {
        left: usize,
        b: &'a [u8],
    },
    Owned(std::collections::btree_map::Iter<'a, String, String>),
}

impl<'a> Iterator for Pairs<'a> {
    type Item = (&'a str, &'a str);
    fn next(&mut self) -> Option<(&'a str, &'a str)> {
        match &mut self.0 {
            PairsInner::Stored { left: 0, .. } => None,
            PairsInner::Stored { left, b } => {
                *left -= 1;
                let k = checked_str(b, false);
                Some((k, checked_str(b, true)))
            }
            PairsInner::Owned(it) => it.next().map(|(k, v)| (k.as_str(), v.as_str())),
        }
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = match &self.0 {
            PairsInner::Stored { left, .. } => *left,
            PairsInner::Owned(it) => it.len(),
        };
        (n, Some(n))
    }
}

impl ExactSizeIterator for Pairs<'_> {}

/// Gives `f` every event of a batch payload, in position order, as a view into the payload,
/// until `f` returns false. The whole record is checked first (lengths, UTF-8, counts, no
/// bytes left over), so a damaged record gives `f` nothing. `Ok(true)`: every event was
/// given.
pub fn visit_batch<'a>(
    payload: &'a [u8],
    mut f: impl FnMut(&StoredEvent<'a>) -> bool,
) -> DResult<bool> {
    let events = check_batch(payload)?;
    for e in &events {
        if !f(e) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Checks a whole batch payload and returns views of its events.
fn check_batch(payload: &[u8]) -> DResult<Vec<StoredEvent<'_>>> {
    if payload.len() < BATCH_FIXED_LEN {
        return Err(DecodeError("batch record too short".into()));
    }
    let header = decode_batch_header(payload)?;
    let mut c = Cursor {
        b: payload,
        at: BATCH_FIXED_LEN - 2,
    };
    let stream_count = c.u16()? as usize;
    let mut streams = Vec::with_capacity(stream_count.min(1024));
    let mut total = 0u64;
    for _ in 0..stream_count {
        let id = c.str16()?;
        let first_revision = c.u64()?;
        let count = c.u32()?;
        total += u64::from(count);
        streams.push((id, first_revision, count));
    }
    if total != u64::from(header.event_count) {
        return Err(DecodeError(format!(
            "batch says {} events but its streams hold {total}",
            header.event_count
        )));
    }
    let mut events = Vec::with_capacity((total as usize).min(65536));
    let mut position = header.first_position;
    for (stream_id, first_revision, count) in streams {
        for i in 0..u64::from(count) {
            let id = c.uuid()?;
            let schema_version = c.u32()?;
            let event_type = c.str16()?;
            let content_type = c.str16()?;
            let flags = c.u8()?;
            let correlation_id = if flags & 1 != 0 {
                Some(c.uuid()?)
            } else {
                None
            };
            let causation_id = if flags & 2 != 0 {
                Some(c.uuid()?)
            } else {
                None
            };
            let actor = if flags & 4 != 0 {
                Some(c.str16()?)
            } else {
                None
            };
            let pair_count = c.u16()?;
            let pairs_at = c.at;
            for _ in 0..pair_count {
                c.str16()?;
                c.str32()?;
            }
            let extra = Pairs(PairsInner::Stored {
                left: pair_count.into(),
                b: &payload[pairs_at..c.at],
            });
            let tag_count = c.u16()?;
            let tags_at = c.at;
            for _ in 0..tag_count {
                c.str16()?;
            }
            let tags = Strs(StrsInner::Stored {
                left: tag_count.into(),
                b: &payload[tags_at..c.at],
            });
            let data_len = c.u32()? as usize;
            let data = c.take(data_len)?;
            let event = StoredEvent {
                id,
                stream_id,
                revision: first_revision
                    .checked_add(i)
                    .ok_or_else(|| DecodeError("revision overflows".into()))?,
                position,
                recorded_at: header.recorded_at,
                event_type,
                schema_version,
                content_type,
                correlation_id,
                causation_id,
                actor,
                extra,
                tags,
                data,
            };
            events.push(event);
            position = position
                .checked_add(1)
                .ok_or_else(|| DecodeError("position overflows".into()))?;
        }
    }
    if c.at != payload.len() {
        return Err(DecodeError(format!(
            "{} unexpected bytes after the last event",
            payload.len() - c.at
        )));
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_event() -> impl Strategy<Value = NewEvent> {
        (
            "[A-Za-z]{1,20}",
            proptest::collection::vec(any::<u8>(), 0..200),
            proptest::collection::vec("[a-z:0-9]{1,12}", 0..4),
            proptest::option::of(any::<u128>()),
            proptest::option::of("[a-z]{1,10}"),
            proptest::collection::btree_map("[a-z]{1,5}", ".{0,10}", 0..3),
            1u32..5,
        )
            .prop_map(|(ty, data, tags, corr, actor, extra, v)| {
                let mut e = NewEvent::new(ty, data).with_schema_version(v);
                e.tags = tags.into_iter().map(Text::from).collect();
                e.metadata.correlation_id = corr.map(Uuid::from_u128);
                e.metadata.actor = actor.map(Text::from);
                e.metadata.extra = extra;
                e
            })
    }

    proptest! {
        #[test]
        fn batch_round_trips(
            a in proptest::collection::vec(arb_event(), 1..5),
            b in proptest::collection::vec(arb_event(), 0..5),
            pos in 0u64..1_000_000,
            rev in 0u64..1000,
        ) {
            let mut out = Vec::new();
            let mut streams = vec![BatchStream { stream_id: "s-1", first_revision: rev, events: &a }];
            if !b.is_empty() {
                streams.push(BatchStream { stream_id: "t-2", first_revision: 0, events: &b });
            }
            let n = encode_batch(&mut out, pos, Timestamp(42), 7, &streams);
            prop_assert_eq!(n, out.len());
            let (len, crc) = frame_header(&arr(&out[0..8]));
            prop_assert_eq!(len as usize, out.len() - 8);
            prop_assert_eq!(crc, frame_crc(len, &out[8..]));
            let events = decode_batch(&Bytes::copy_from_slice(&out[8..])).unwrap();
            prop_assert_eq!(events.len(), a.len() + b.len());
            for (i, (got, want)) in events.iter().zip(a.iter().chain(b.iter())).enumerate() {
                prop_assert!(got.same_as(want));
                prop_assert_eq!(got.position, pos + i as u64);
                prop_assert_eq!(got.recorded_at, Timestamp(42));
            }
            prop_assert_eq!(events[0].revision, rev);
            // The views give the same events, and a view of a decoded event gives it back.
            let mut viewed = Vec::new();
            let whole = visit_batch(&out[8..], |e| {
                viewed.push(e.to_event());
                true
            });
            prop_assert_eq!(whole, Ok(true));
            prop_assert_eq!(&viewed, &events);
            for e in &events {
                prop_assert_eq!(&StoredEvent::from(e).to_event(), e);
            }
            // A visitor that stops is given nothing more.
            let mut given = 0;
            let stopped = visit_batch(&out[8..], |_| {
                given += 1;
                false
            });
            prop_assert_eq!(stopped, Ok(false));
            prop_assert_eq!(given, 1);
        }

        #[test]
        fn truncated_payload_is_an_error_not_a_panic(cut in 0usize..400, flip in 0usize..400) {
            let events = vec![NewEvent::new("A", b"{\"x\":1}".to_vec()).with_tag("t:1")];
            let mut out = Vec::new();
            encode_batch(&mut out, 0, Timestamp(1), 0, &[BatchStream { stream_id: "s", first_revision: 0, events: &events }]);
            let payload = &out[8..];
            let cut = cut.min(payload.len());
            if cut < payload.len() {
                prop_assert!(decode_batch(&Bytes::copy_from_slice(&payload[..cut])).is_err());
            }
            let mut damaged = payload.to_vec();
            let i = flip % damaged.len();
            damaged[i] ^= 0x5a;
            let _ = decode_batch(&Bytes::from(damaged));
        }
    }

    #[test]
    fn decoded_events_share_the_record_and_their_names_and_a_damaged_one_adds_nothing() {
        let a: Vec<_> = (0..3)
            .map(|i| NewEvent::new("A", format!("{{\"i\":{i}}}")).with_tag("t:1"))
            .collect();
        let b = vec![NewEvent::new("A", "{}")];
        let mut out = Vec::new();
        encode_batch(
            &mut out,
            10,
            Timestamp(1),
            0,
            &[
                BatchStream {
                    stream_id: "s-1",
                    first_revision: 0,
                    events: &a,
                },
                BatchStream {
                    stream_id: "s-2",
                    first_revision: 4,
                    events: &b,
                },
            ],
        );
        let payload = Bytes::copy_from_slice(&out[8..]);
        let events = decode_batch(&payload).unwrap();
        assert_eq!(events.len(), 4);
        assert!(Text::ptr_eq(&events[0].stream_id, &events[2].stream_id));
        assert!(Text::ptr_eq(&events[0].event_type, &events[3].event_type));
        assert!(Text::ptr_eq(&events[1].tags[0], &events[2].tags[0]));
        assert_eq!(
            (events[3].stream_id.as_str(), events[3].revision),
            ("s-2", 4)
        );
        let range = payload.as_ptr_range();
        for e in &events {
            assert!(
                range.contains(&e.data.as_ptr()),
                "data is a slice of the record"
            );
        }
        // A damaged record leaves what was decoded before it as it was.
        let mut kept = events.clone();
        let damaged = payload.slice(..payload.len() - 1);
        let e = decode_batch_into(&damaged, &mut EventNames::default(), &mut kept);
        assert!(e.is_err());
        assert_eq!(kept, events);
    }

    #[test]
    fn a_damaged_record_gives_a_visitor_none_of_its_events() {
        let events: Vec<_> = (0..3)
            .map(|i| NewEvent::new("A", format!("{{\"i\":{i}}}").into_bytes()))
            .collect();
        let mut out = Vec::new();
        encode_batch(
            &mut out,
            0,
            Timestamp(1),
            0,
            &[BatchStream {
                stream_id: "s",
                first_revision: 0,
                events: &events,
            }],
        );
        let payload = &out[8..];
        for damaged in [&payload[..payload.len() - 3], &[payload, b"x"].concat()[..]] {
            let mut given = 0;
            assert!(visit_batch(damaged, |_| {
                given += 1;
                true
            })
            .is_err());
            assert_eq!(given, 0, "the first events of a damaged record were given");
        }
        assert_eq!(
            decode_batch(&Bytes::copy_from_slice(payload))
                .unwrap()
                .len(),
            3
        );
    }

    /// The worked example of docs/file-format.md, byte for byte.
    #[test]
    fn the_documented_example_is_what_the_code_writes() {
        let ts = Timestamp(1_700_000_000_000_000);
        let mut file = SegmentHeader {
            version: 1,
            first_position: 0,
            base_offset: 0,
            created_at: ts.0,
        }
        .encode()
        .to_vec();
        let event = NewEvent::new("Opened", b"{}".to_vec())
            .with_id(Uuid::from_u128(0x00112233_4455_6677_8899_aabbccddeeff))
            .with_tag("account:1");
        let events = [event];
        encode_batch(
            &mut file,
            0,
            ts,
            0,
            &[BatchStream {
                stream_id: "account-1",
                first_revision: 0,
                events: &events,
            }],
        );
        assert_eq!(file.len(), 194);
        assert_eq!(&file[0x3c..0x40], &[0x70, 0xd9, 0x69, 0x13]);
        assert_eq!(&file[0x40..0x48], &[0x7a, 0, 0, 0, 0x51, 0xb6, 0x91, 0x86]);
        assert_eq!(&file[0x67..0x72], b"\x09\x00account-1");
        assert_eq!(&file[0xbc..], b"\x02\x00\x00\x00{}");
    }

    #[test]
    fn header_round_trips_and_rejects_damage() {
        let h = SegmentHeader {
            version: 1,
            first_position: 7,
            base_offset: 99,
            created_at: 5,
        };
        let mut b = h.encode();
        assert_eq!(SegmentHeader::decode(&b).unwrap(), h);
        b[20] ^= 1;
        assert!(SegmentHeader::decode(&b).is_err());
    }
}
