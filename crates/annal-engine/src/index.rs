//! The indexes: one log-structured table of `(key, seq, value)` entries that serves every
//! lookup the engine makes.
//!
//! A key is a kind in the top byte and a 56-bit hash of a name below it:
//!
//! | kind     | name        | seq               | value                       |
//! |----------|-------------|-------------------|-----------------------------|
//! | stream   | stream id   | revision          | position                    |
//! | category | category    | position          | position                    |
//! | type     | event type  | position          | position                    |
//! | tag      | tag         | position          | position                    |
//! | id       | event id    | 0                 | position                    |
//! | batch    | (none)      | first position    | log offset of the record    |
//! | time     | (none)      | recorded at (µs)  | last position of the batch  |
//!
//! Hashes can collide, so every reader checks the event it loads against what it asked for.
//! New entries go to an in-memory table; a checkpoint writes it out as a sorted, immutable
//! run file, and runs of similar size are merged so that there are only a few of them. Only a
//! sparse fence (the first entry of every block) of each run stays in memory.
//!
//! A run file (`index/run-<id>.idx`), version 2 (docs/file-format.md has every detail):
//!
//! | offset | size     | field                                         |
//! |--------|----------|-----------------------------------------------|
//! | 0      | 8        | magic `ANNALIDX`                              |
//! | 8      | 4        | run format version (u32): 2; 1 is still read  |
//! | 12     | 4        | entries per block (u32)                       |
//! | 16     | 8        | entry count n (u64)                           |
//! | 24     | 8        | id filter size w, in 64-bit words (u64)       |
//! | 32     | 4        | CRC32C of every section after the blocks      |
//! | 36     | 8        | d: bytes of the blocks (version 1: zero)      |
//! | 44     | 4        | CRC32C of bytes 0..44                         |
//! | 48     | d        | blocks of 256 entries, packed                 |
//! | ...    | 24 f     | fences: the first entry of each block         |
//! | ...    | 8 f      | where each block starts, from offset 48       |
//! | ...    | 4 f      | CRC32C of each block's bytes                  |
//! | ...    | 8 w      | id filter: a Bloom filter of the event id keys |
//!
//! A packed entry is a flags byte and varints against the entry before it in its block: the
//! key's delta (or nothing when it is the same key), the seq (or its delta), the value (or
//! its delta, or nothing when it equals the seq). That takes about 5 bytes instead of 24, so
//! checkpoints and merges write, checksum and read a fifth as many bytes. Version 1 runs
//! hold 24-byte entries and no block table, and are still read.
//!
//! The id filter lets the idempotency check skip runs that cannot hold an id without reading
//! them. It has 14 bits per event id. In version 2 it is blocked: an id sets 7 bits inside one
//! 512-bit block (one cache line), so a lookup touches one line of memory instead of up to
//! seven, and no division is made (about 0.2% false positives). Version 1 runs, whose filter
//! spreads the 7 bits over the whole filter, are still read with their own probes; a merge
//! rewrites them as version 2. Readers take the filter's size from the header, so runs with
//! another number of bits per id (10, in early version 1 runs) are read the same way.

use std::path::Path;
use std::sync::{Arc, RwLock};

use annal_core::{Direction, Error, Result};
use tracing::debug;

use crate::idfilter::IdFilter;
use crate::io::{FileRef, Fs};
use crate::memtable::MemTable;

pub const KIND_STREAM: u8 = 1;
pub const KIND_CATEGORY: u8 = 2;
pub const KIND_TYPE: u8 = 3;
pub const KIND_TAG: u8 = 4;
pub const KIND_ID: u8 = 5;
pub const KIND_BATCH: u8 = 6;
pub const KIND_TIME: u8 = 7;

const MAGIC: &[u8; 8] = b"ANNALIDX";
/// The version of the runs this build writes: 2, with packed blocks and a blocked id filter.
/// A build that knows only version 1 refuses these runs instead of misreading them.
const RUN_VERSION: u32 = 2;
/// The oldest run version this build reads (1: 24-byte entries, an unblocked id filter).
const RUN_VERSION_UNBLOCKED: u32 = 1;
const HEADER_LEN: u64 = 48;
const ENTRY_LEN: usize = 24;
/// Entries per block: a lookup reads one block per run (about 1.2 KiB packed).
pub const BLOCK: usize = 256;

/// `(key, seq, value)`.
pub type Entry = (u64, u64, u64);

/// The key of a name of a kind.
pub fn key(kind: u8, name: &[u8]) -> u64 {
    (u64::from(kind) << 56) | (xxhash_rust::xxh3::xxh3_64(name) & ((1 << 56) - 1))
}

/// The key of a kind that has no name (batch, time).
pub fn fixed_key(kind: u8) -> u64 {
    u64::from(kind) << 56
}

/// Adds the entries of one event.
pub fn event_entries(
    out: &mut Vec<Entry>,
    stream: &str,
    revision: u64,
    position: u64,
    event_type: &str,
    tags: &[String],
    id: &annal_core::Uuid,
) {
    keyed_event_entries(
        out,
        stream_keys(stream),
        revision,
        position,
        key(KIND_TYPE, event_type.as_bytes()),
        tags,
        id,
    );
}

/// The keys of a stream and of its category.
pub fn stream_keys(stream: &str) -> (u64, u64) {
    let category = annal_core::category_of(stream);
    (
        key(KIND_STREAM, stream.as_bytes()),
        key(KIND_CATEGORY, category.as_bytes()),
    )
}

/// Adds the entries of one event, given the keys of its stream and category
/// ([`stream_keys`]) and of its type.
pub fn keyed_event_entries(
    out: &mut Vec<Entry>,
    (stream_key, category_key): (u64, u64),
    revision: u64,
    position: u64,
    type_key: u64,
    tags: &[String],
    id: &annal_core::Uuid,
) {
    out.push((stream_key, revision, position));
    out.push((category_key, position, position));
    out.push((type_key, position, position));
    for (i, t) in tags.iter().enumerate() {
        // A tag named twice on one event is indexed once.
        if !tags[..i].contains(t) {
            out.push((key(KIND_TAG, t.as_bytes()), position, position));
        }
    }
    out.push((key(KIND_ID, id.as_bytes()), 0, position));
}

/// The key of `name` of `kind`, hashed only when `name` differs from the one before it.
fn cached_key<'a>(last: &mut Option<(&'a str, u64)>, kind: u8, name: &'a str) -> u64 {
    match *last {
        Some((n, k)) if n == name => k,
        _ => {
            let k = key(kind, name.as_bytes());
            *last = Some((name, k));
            k
        }
    }
}

/// Adds the entries of consecutive events of one stream, given the keys of the stream and
/// its category ([`stream_keys`]) and of each event's id (`id_keys`, in event order).
///
/// The same entries as [`keyed_event_entries`] for each event, in another order: grouped by
/// key (every stream entry, then every category entry, then type, tag and id entries), so
/// that the memtable looks a key up once per run of it ([`MemTable::insert_all`]) instead
/// of once per entry. Each key's entries come in order of position, except a tag that
/// events name at different places in their lists (the memtable puts those in place).
pub fn stream_entries(
    out: &mut Vec<Entry>,
    (stream_key, category_key): (u64, u64),
    first_revision: u64,
    first_position: u64,
    events: &[annal_core::NewEvent],
    id_keys: &[u64],
) {
    let n = events.len() as u64;
    let positions = first_position..first_position + n;
    out.reserve(events.len() * 5);
    out.extend((0..n).map(|i| (stream_key, first_revision + i, first_position + i)));
    out.extend(positions.clone().map(|p| (category_key, p, p)));
    let mut last = None;
    for (e, p) in events.iter().zip(positions.clone()) {
        out.push((cached_key(&mut last, KIND_TYPE, &e.event_type), p, p));
    }
    // The first tag of every event, then the second, ...: events mostly carry the same tags
    // in the same order, so each pass is a run of one key.
    let slots = events.iter().map(|e| e.tags.len()).max().unwrap_or(0);
    for j in 0..slots {
        let mut last = None;
        for (e, p) in events.iter().zip(positions.clone()) {
            let Some(t) = e.tags.get(j) else { continue };
            // A tag named twice on one event is indexed once.
            if !e.tags[..j].contains(t) {
                out.push((cached_key(&mut last, KIND_TAG, t), p, p));
            }
        }
    }
    out.extend(id_keys.iter().zip(positions).map(|(k, p)| (*k, 0, p)));
}

/// Adds every entry of one decoded batch record (its batch and time entries, and each
/// event's).
pub fn decoded_batch_entries(
    out: &mut Vec<Entry>,
    events: &[annal_core::RecordedEvent],
    log_offset: u64,
) {
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        return;
    };
    batch_entries(
        out,
        first.position,
        last.position,
        first.recorded_at.0,
        log_offset,
    );
    for e in events {
        event_entries(
            out,
            &e.stream_id,
            e.revision,
            e.position,
            &e.event_type,
            &e.tags,
            &e.id,
        );
    }
}

/// Adds the entries of one batch record.
pub fn batch_entries(
    out: &mut Vec<Entry>,
    first_position: u64,
    last_position: u64,
    recorded_at: i64,
    log_offset: u64,
) {
    out.push((fixed_key(KIND_BATCH), first_position, log_offset));
    out.push((
        fixed_key(KIND_TIME),
        recorded_at.max(0) as u64,
        last_position,
    ));
}

fn corrupt(path: &Path, offset: u64, problem: impl Into<String>) -> Error {
    Error::Corruption {
        file: path.display().to_string(),
        offset,
        problem: problem.into(),
    }
}

fn decode_entries(bytes: &[u8], out: &mut Vec<Entry>) {
    for c in bytes.chunks_exact(ENTRY_LEN) {
        let mut k = [0u8; 8];
        let mut s = [0u8; 8];
        let mut v = [0u8; 8];
        k.copy_from_slice(&c[0..8]);
        s.copy_from_slice(&c[8..16]);
        v.copy_from_slice(&c[16..24]);
        out.push((
            u64::from_le_bytes(k),
            u64::from_le_bytes(s),
            u64::from_le_bytes(v),
        ));
    }
}

/// Probes per key of the id filter.
const FILTER_PROBES: u64 = 7;
/// Filter bits per event id. At 10 (about 0.8% false positives, so about 3% of new ids
/// read a block from one of four runs) the block reads showed in the writer's profile of
/// batched appends; 14 makes them about six times rarer for 0.5 byte more memory per event.
pub(crate) const FILTER_BITS_PER_KEY: u64 = 14;

/// 64-bit words per block of a blocked filter: 512 bits, one cache line.
pub(crate) const BLOCK_WORDS: usize = 8;

/// The probes of a version 1 (unblocked) filter of `bits` bits.
fn unblocked_probes(key: u64, bits: u64) -> impl Iterator<Item = u64> {
    let h1 = key.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let h2 = (key ^ (key >> 31)).wrapping_mul(0xBF58_476D_1CE4_E5B9) | 1;
    (0..FILTER_PROBES).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) % bits)
}

/// The block of a blocked filter of `blocks` blocks that a key sets its bits in, and the
/// seven bit numbers (0..512) within it, 9 bits of a second hash each.
fn blocked_probes(key: u64, blocks: usize) -> (usize, u64) {
    let h1 = mix(key);
    let block = ((u128::from(h1) * blocks as u128) >> 64) as usize;
    (block, mix(key ^ 0x5851_F42D_4C95_7F2D))
}

/// The splitmix64 finalizer: every bit of the key moves every bit of the result.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Bit `i` (0..7) of a key's block, from its second hash.
fn blocked_bit(h2: u64, i: u64) -> (usize, u64) {
    let bit = (h2 >> (9 * i)) & 511;
    ((bit / 64) as usize, 1 << (bit % 64))
}

/// The bits of a key in a blocked filter of `blocks` blocks, as (word number, mask): seven
/// bits, all in the key's block.
pub(crate) fn blocked_bits(key: u64, blocks: usize) -> impl Iterator<Item = (usize, u64)> {
    let (block, h2) = blocked_probes(key, blocks);
    (0..FILTER_PROBES).map(move |i| {
        let (w, m) = blocked_bit(h2, i);
        (block * BLOCK_WORDS + w, m)
    })
}

/// The bits of a key in a blocked filter of `blocks` blocks as the first word of its block
/// and one mask per word of the block: the same bits as [`blocked_bits`], gathered so that
/// each word is written once.
pub(crate) fn blocked_masks(key: u64, blocks: usize) -> (usize, [u64; BLOCK_WORDS]) {
    let (block, h2) = blocked_probes(key, blocks);
    let mut masks = [0u64; BLOCK_WORDS];
    for i in 0..FILTER_PROBES {
        let (w, m) = blocked_bit(h2, i);
        masks[w] |= m;
    }
    (block * BLOCK_WORDS, masks)
}

/// The first word of the block a key's bits are in: read ahead of testing many keys, so
/// that their cache misses overlap instead of coming one after the other.
pub(crate) fn blocked_first_word(key: u64, blocks: usize) -> usize {
    blocked_probes(key, blocks).0 * BLOCK_WORDS
}

/// A run's blocked Bloom filter over its event id keys, built as they are written.
struct RunFilter {
    words: Vec<u64>,
    blocks: usize,
    added: u64,
}

impl RunFilter {
    /// An empty filter for `ids` ids.
    fn with_capacity(ids: u64) -> RunFilter {
        let blocks = (ids * FILTER_BITS_PER_KEY)
            .div_ceil(64 * BLOCK_WORDS as u64)
            .max(1) as usize;
        RunFilter {
            words: vec![0u64; blocks * BLOCK_WORDS],
            blocks,
            added: 0,
        }
    }

    fn add_all(&mut self, keys: &[u64]) {
        for &k in keys {
            let (first, masks) = blocked_masks(k, self.blocks);
            for (w, m) in self.words[first..first + BLOCK_WORDS].iter_mut().zip(masks) {
                *w |= m;
            }
        }
        self.added += keys.len() as u64;
    }
}

/// True when the id is an event id key of the kind, and in no other way.
fn is_id_key(key: u64) -> bool {
    key >> 56 == u64::from(KIND_ID)
}

/// An immutable sorted run on disk.
pub struct Run {
    pub id: u64,
    pub count: u64,
    file: FileRef,
    path: std::path::PathBuf,
    fences: Vec<Entry>,
    /// Where each block starts, in bytes after the header, and where the last one ends.
    starts: Vec<u64>,
    block_crcs: Vec<u32>,
    filter: Vec<u64>,
    /// Version 2: blocks are packed and the filter is blocked. Version 1: blocks are arrays
    /// of 24-byte entries and the filter is not blocked.
    blocked: bool,
}

/// Flags of a packed entry: the key is the previous entry's.
const SAME_KEY: u8 = 1;
/// The value equals the seq (category, type and tag entries).
const VALUE_IS_SEQ: u8 = 2;
/// The value is the previous entry's value plus a varint.
const VALUE_DELTA: u8 = 4;

/// Puts `v` as a LEB128 varint at `out[*n..]` (at most 10 bytes).
fn put_varint(out: &mut [u8; PACKED_MAX], n: &mut usize, mut v: u64) {
    while v >= 0x80 {
        out[*n] = v as u8 | 0x80;
        *n += 1;
        v >>= 7;
    }
    out[*n] = v as u8;
    *n += 1;
}

/// Reads a LEB128 varint at `b[*at..]` and moves `at` past it; `None` when it runs past
/// the end or does not fit 64 bits. The one-byte case, most of a packed block's, is inlined.
#[inline]
fn get_varint(b: &[u8], at: &mut usize) -> Option<u64> {
    let first = *b.get(*at)?;
    if first < 0x80 {
        *at += 1;
        return Some(u64::from(first));
    }
    get_long_varint(b, at)
}

/// `get_varint` of a varint of two bytes or more.
#[inline(never)]
fn get_long_varint(b: &[u8], at: &mut usize) -> Option<u64> {
    let first = b[*at];
    *at += 1;
    let mut v = u64::from(first & 0x7f);
    let mut shift = 7;
    loop {
        let byte = *b.get(*at)?;
        *at += 1;
        if shift == 63 && byte > 1 {
            return None;
        }
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(v);
        }
        shift += 7;
        if shift > 63 {
            return None;
        }
    }
}

/// The most bytes a packed entry takes: flags and three 10-byte varints.
const PACKED_MAX: usize = 31;

/// Packs an entry after `prev`, the entry before it in its block (`None` for the first),
/// into the start of `out`; returns how many bytes it took. Entries must not decrease.
fn pack_entry(out: &mut [u8; PACKED_MAX], prev: Option<Entry>, e: Entry) -> usize {
    let mut n = 1;
    let same = prev.is_some_and(|p| p.0 == e.0);
    // The value varint to write, if any, and its flag.
    let (value_flag, value) = match prev {
        _ if e.2 == e.1 => (VALUE_IS_SEQ, None),
        Some(p) if e.2 >= p.2 => (VALUE_DELTA, Some(e.2 - p.2)),
        _ => (0, Some(e.2)),
    };
    out[0] = if same { SAME_KEY } else { 0 } | value_flag;
    match prev {
        Some(p) if same => put_varint(out, &mut n, e.1 - p.1),
        Some(p) => {
            put_varint(out, &mut n, e.0 - p.0);
            put_varint(out, &mut n, e.1);
        }
        None => {
            put_varint(out, &mut n, e.0);
            put_varint(out, &mut n, e.1);
        }
    }
    if let Some(v) = value {
        put_varint(out, &mut n, v);
    }
    n
}

/// Unpacks the `n` entries of a packed block; `None` when the bytes are not `n` entries
/// exactly.
fn unpack_block(b: &[u8], n: usize, out: &mut Vec<Entry>) -> Option<()> {
    let mut at = 0;
    let mut prev: Option<Entry> = None;
    for _ in 0..n {
        let flags = *b.get(at)?;
        at += 1;
        if flags & !(SAME_KEY | VALUE_IS_SEQ | VALUE_DELTA) != 0
            || flags & (VALUE_IS_SEQ | VALUE_DELTA) == VALUE_IS_SEQ | VALUE_DELTA
        {
            return None;
        }
        let (key, seq) = match prev {
            Some(p) if flags & SAME_KEY != 0 => (p.0, p.1.checked_add(get_varint(b, &mut at)?)?),
            Some(p) => (
                p.0.checked_add(get_varint(b, &mut at)?)?,
                get_varint(b, &mut at)?,
            ),
            None if flags & SAME_KEY != 0 => return None,
            None => (get_varint(b, &mut at)?, get_varint(b, &mut at)?),
        };
        let value = if flags & VALUE_IS_SEQ != 0 {
            seq
        } else if flags & VALUE_DELTA != 0 {
            prev?.2.checked_add(get_varint(b, &mut at)?)?
        } else {
            get_varint(b, &mut at)?
        };
        let e = (key, seq, value);
        out.push(e);
        prev = Some(e);
    }
    (at == b.len()).then_some(())
}

impl Run {
    #[cfg(test)]
    /// Writes a run of sorted entries and makes it durable.
    pub fn write(
        fs: &dyn Fs,
        path: &Path,
        id: u64,
        entries: impl Iterator<Item = Result<Entry>>,
    ) -> Result<Run> {
        let entries: Vec<_> = entries.collect();
        let mut id_keys: Vec<u64> = entries
            .iter()
            .filter_map(|e| e.as_ref().ok().map(|e| e.0).filter(|&k| is_id_key(k)))
            .collect();
        id_keys.dedup();
        let ids = id_keys.len();
        Run::write_adding_ids(fs, path, id, entries.into_iter(), ids as u64, None)
    }

    /// `write`, adding the run's event id keys to `ids` as well. Its filter is sized for
    /// `expected_ids` event ids, and built as they go by: more make it answer "maybe" more
    /// often, never wrongly.
    pub fn write_adding_ids(
        fs: &dyn Fs,
        path: &Path,
        id: u64,
        entries: impl Iterator<Item = Result<Entry>>,
        expected_ids: u64,
        ids: Option<&IdFilter>,
    ) -> Result<Run> {
        /// Bytes of blocks gathered before they are written out.
        const FLUSH: usize = 1 << 20;
        /// Id keys gathered before they go into the filters.
        const ID_CHUNK: usize = 1024;
        let io = |op: &str, e: std::io::Error| Error::io(format!("{op} {}", path.display()), &e);
        let file = fs.create(path).map_err(|e| io("creating", e))?;
        // Entries are packed in place: `buf[..at]` holds the blocks not yet written, and
        // the buffer always has room for one more packed entry past `at`.
        let mut buf = vec![0u8; FLUSH + BLOCK * PACKED_MAX];
        let mut at = 0;
        // Bytes of blocks written out of `buf` so far.
        let mut flushed = 0u64;
        let mut count = 0u64;
        let mut fences = Vec::new();
        let mut starts = Vec::new();
        let mut block_crcs = Vec::new();
        // Where the current block starts in `buf`, and the entry before in it.
        let mut block_start = 0;
        let mut prev: Option<Entry> = None;
        let mut last: Option<Entry> = None;
        let mut filter = RunFilter::with_capacity(expected_ids);
        let mut id_keys = Vec::with_capacity(ID_CHUNK);
        let mut last_id = None;
        let mut add_ids = |keys: &mut Vec<u64>| {
            filter.add_all(keys);
            if let Some(ids) = ids {
                ids.add_all(keys);
            }
            keys.clear();
        };
        for e in entries {
            let e = e?;
            if let Some(last) = last.filter(|l| e < *l) {
                return Err(Error::Internal(format!(
                    "index run {} got entry {e:?} after {last:?}",
                    path.display()
                )));
            }
            last = Some(e);
            // An id key with entries at several positions goes into the filters once.
            if is_id_key(e.0) && last_id != Some(e.0) {
                last_id = Some(e.0);
                id_keys.push(e.0);
                if id_keys.len() == ID_CHUNK {
                    add_ids(&mut id_keys);
                }
            }
            if count.is_multiple_of(BLOCK as u64) {
                if count > 0 {
                    block_crcs.push(crc32c::crc32c(&buf[block_start..at]));
                    if at >= FLUSH {
                        file.write_all_at(&buf[..at], HEADER_LEN + flushed)
                            .map_err(|e| io("writing", e))?;
                        flushed += at as u64;
                        at = 0;
                    }
                }
                block_start = at;
                starts.push(flushed + block_start as u64);
                fences.push(e);
                prev = None;
            }
            let slot: &mut [u8; PACKED_MAX] = (&mut buf[at..at + PACKED_MAX])
                .try_into()
                .expect("a slot of PACKED_MAX bytes");
            at += pack_entry(slot, prev, e);
            prev = Some(e);
            count += 1;
        }
        add_ids(&mut id_keys);
        if count > 0 {
            block_crcs.push(crc32c::crc32c(&buf[block_start..at]));
        }
        buf.truncate(at);
        let data_len = flushed + buf.len() as u64;
        let fence_start = buf.len();
        for f in &fences {
            buf.extend_from_slice(&f.0.to_le_bytes());
            buf.extend_from_slice(&f.1.to_le_bytes());
            buf.extend_from_slice(&f.2.to_le_bytes());
        }
        for s in &starts {
            buf.extend_from_slice(&s.to_le_bytes());
        }
        for c in &block_crcs {
            buf.extend_from_slice(&c.to_le_bytes());
        }
        if filter.added > expected_ids {
            debug!(
                run = %path.display(),
                ids = filter.added,
                expected_ids,
                "an index run holds more event ids than its filter was sized for"
            );
        }
        let filter = filter.words;
        for w in &filter {
            buf.extend_from_slice(&w.to_le_bytes());
        }
        let tail_crc = crc32c::crc32c(&buf[fence_start..]);
        file.write_all_at(&buf, HEADER_LEN + flushed)
            .map_err(|e| io("writing", e))?;
        let mut header = [0u8; HEADER_LEN as usize];
        header[0..8].copy_from_slice(MAGIC);
        header[8..12].copy_from_slice(&RUN_VERSION.to_le_bytes());
        header[12..16].copy_from_slice(&(BLOCK as u32).to_le_bytes());
        header[16..24].copy_from_slice(&count.to_le_bytes());
        header[24..32].copy_from_slice(&(filter.len() as u64).to_le_bytes());
        header[32..36].copy_from_slice(&tail_crc.to_le_bytes());
        header[36..44].copy_from_slice(&data_len.to_le_bytes());
        let crc = crc32c::crc32c(&header[0..44]);
        header[44..48].copy_from_slice(&crc.to_le_bytes());
        file.write_all_at(&header, 0)
            .map_err(|e| io("writing", e))?;
        file.sync_data().map_err(|e| io("syncing", e))?;
        Ok(Run {
            id,
            count,
            file,
            path: path.to_path_buf(),
            fences,
            starts: {
                starts.push(data_len);
                starts
            },
            block_crcs,
            filter,
            blocked: true,
        })
    }

    /// Opens a run and loads its fences and id filter.
    pub fn open(fs: &dyn Fs, path: &Path, id: u64) -> Result<Run> {
        let file = fs
            .open(path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), &e))?;
        let mut header = [0u8; HEADER_LEN as usize];
        file.read_exact_at(&mut header, 0)
            .map_err(|_| corrupt(path, 0, "index run header is incomplete"))?;
        if &header[0..8] != MAGIC {
            return Err(corrupt(path, 0, "not an index run (bad magic)"));
        }
        if crc32c::crc32c(&header[0..44])
            != u32::from_le_bytes(header[44..48].try_into().unwrap_or_default())
        {
            return Err(corrupt(path, 0, "index run header checksum mismatch"));
        }
        let version = u32::from_le_bytes(header[8..12].try_into().unwrap_or_default());
        if !(RUN_VERSION_UNBLOCKED..=RUN_VERSION).contains(&version) {
            return Err(Error::UnsupportedFormat {
                path: path.display().to_string(),
                found: version,
                supported: RUN_VERSION,
            });
        }
        let blocked = version >= RUN_VERSION;
        let block = u32::from_le_bytes(header[12..16].try_into().unwrap_or_default()) as usize;
        if block != BLOCK {
            return Err(corrupt(
                path,
                12,
                format!("block size {block}, expected {BLOCK}"),
            ));
        }
        let count = u64::from_le_bytes(header[16..24].try_into().unwrap_or_default());
        let words = u64::from_le_bytes(header[24..32].try_into().unwrap_or_default());
        if blocked && !words.is_multiple_of(BLOCK_WORDS as u64) {
            return Err(corrupt(
                path,
                24,
                format!("filter of {words} words is not whole {BLOCK_WORDS}-word blocks"),
            ));
        }
        let fence_count = count.div_ceil(BLOCK as u64);
        let data_len = if blocked {
            u64::from_le_bytes(header[36..44].try_into().unwrap_or_default())
        } else {
            count
                .checked_mul(ENTRY_LEN as u64)
                .ok_or_else(|| corrupt(path, 16, format!("entry count {count} is impossible")))?
        };
        let fence_at = data_len
            .checked_add(HEADER_LEN)
            .ok_or_else(|| corrupt(path, 36, format!("data size {data_len} is impossible")))?;
        let file_len = file
            .len()
            .map_err(|e| Error::io(format!("reading {}", path.display()), &e))?;
        // Per block: a fence, a checksum and, in version 2, where it starts.
        let per_block = ENTRY_LEN as u64 + 4 + if blocked { 8 } else { 0 };
        let tail_len = words
            .checked_mul(8)
            .and_then(|w| w.checked_add(fence_count.checked_mul(per_block)?))
            .filter(|t| *t <= file_len)
            .ok_or_else(|| corrupt(path, 24, format!("filter size {words} is impossible")))?;
        if fence_at.checked_add(tail_len) != Some(file_len) {
            return Err(corrupt(
                path,
                0,
                format!(
                    "index run is {file_len} bytes, its header implies {}",
                    fence_at.saturating_add(tail_len)
                ),
            ));
        }
        let mut raw = vec![0u8; tail_len as usize];
        file.read_exact_at(&mut raw, fence_at)
            .map_err(|_| corrupt(path, fence_at, "index run is shorter than its header says"))?;
        if crc32c::crc32c(&raw) != u32::from_le_bytes(header[32..36].try_into().unwrap_or_default())
        {
            return Err(corrupt(
                path,
                fence_at,
                "index run fence, block checksum or filter section checksum mismatch",
            ));
        }
        let split = (fence_count as usize) * ENTRY_LEN;
        let mut fences = Vec::with_capacity(fence_count as usize);
        decode_entries(&raw[..split], &mut fences);
        let (starts, split) = if blocked {
            let end = split + (fence_count as usize) * 8;
            let mut starts: Vec<u64> = raw[split..end]
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
                .collect();
            starts.push(data_len);
            // Each block holds at least one entry, so starts rise strictly from 0.
            if starts.first().is_some_and(|s| *s != 0) || starts.windows(2).any(|w| w[0] >= w[1]) {
                return Err(corrupt(
                    path,
                    fence_at,
                    "index run block table is inconsistent",
                ));
            }
            (starts, end)
        } else {
            let starts = (0..=fence_count)
                .map(|i| (i * BLOCK as u64).min(count) * ENTRY_LEN as u64)
                .collect();
            (starts, split)
        };
        let crc_end = split + (fence_count as usize) * 4;
        let block_crcs = raw[split..crc_end]
            .chunks_exact(4)
            .map(|c| {
                let mut w = [0u8; 4];
                w.copy_from_slice(c);
                u32::from_le_bytes(w)
            })
            .collect();
        let filter = raw[crc_end..]
            .chunks_exact(8)
            .map(|c| {
                let mut w = [0u8; 8];
                w.copy_from_slice(c);
                u64::from_le_bytes(w)
            })
            .collect();
        Ok(Run {
            id,
            count,
            file,
            path: path.to_path_buf(),
            fences,
            starts,
            block_crcs,
            filter,
            blocked,
        })
    }

    /// False when the run certainly holds no entry of this event id key.
    pub fn may_hold_id(&self, key: u64) -> bool {
        if self.filter.is_empty() {
            return true;
        }
        if !self.blocked {
            let bits = self.filter.len() as u64 * 64;
            return unblocked_probes(key, bits)
                .all(|b| self.filter[(b / 64) as usize] & (1 << (b % 64)) != 0);
        }
        blocked_bits(key, self.filter.len() / BLOCK_WORDS).all(|(w, m)| self.filter[w] & m != 0)
    }

    /// `may_hold_id` for many keys: `out[i]` is set when the run may hold `keys[i]`. Every
    /// key's filter block is read before any is tested, so their cache misses overlap
    /// instead of coming one after the other.
    fn may_hold_ids(&self, keys: &[u64], out: &mut [bool]) {
        if self.blocked && !self.filter.is_empty() {
            let blocks = self.filter.len() / BLOCK_WORDS;
            let touched = keys.iter().fold(0u64, |acc, &k| {
                acc ^ self.filter[blocked_first_word(k, blocks)]
            });
            std::hint::black_box(touched);
        }
        for (&k, maybe) in keys.iter().zip(out) {
            *maybe = *maybe || self.may_hold_id(k);
        }
    }

    /// About how many event ids the run holds, from the size of its filter: no fewer than
    /// it holds when its filter was sized for them (a version 1 run's for 10 or 14 bits
    /// per id, so the estimate takes 10).
    pub fn estimated_ids(&self) -> u64 {
        let bits_per_id = if self.blocked {
            FILTER_BITS_PER_KEY
        } else {
            10
        };
        self.filter.len() as u64 * 64 / bits_per_id
    }

    /// Adds the run's event id keys to `ids`, read `READ_BLOCKS` blocks at a time (they
    /// are contiguous: kind 5 is the top byte of their keys).
    pub fn add_ids_to(&self, ids: &IdFilter) -> Result<()> {
        let first_id = (u64::from(KIND_ID) << 56, 0, 0);
        let mut b = self
            .fences
            .partition_point(|f| *f < first_id)
            .saturating_sub(1);
        let (mut raw, mut buf, mut keys) = (Vec::new(), Vec::new(), Vec::new());
        while b < self.blocks() {
            self.blocks_into(b, READ_BLOCKS, &mut raw, &mut buf)?;
            keys.clear();
            keys.extend(buf.iter().map(|e| e.0).filter(|&k| is_id_key(k)));
            ids.add_all(&keys);
            if buf
                .last()
                .is_some_and(|e| e.0 > first_id.0 && !is_id_key(e.0))
            {
                break;
            }
            b += READ_BLOCKS;
        }
        Ok(())
    }

    /// How many blocks the run has.
    pub fn blocks(&self) -> usize {
        self.fences.len()
    }

    /// The entries of block `i`.
    pub fn block(&self, i: usize) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        self.blocks_into(i, 1, &mut Vec::new(), &mut out)?;
        Ok(out)
    }

    /// Replaces `out` with the entries of blocks `first..first + n` (fewer at the run's end),
    /// read in one go through `raw` and each checked against its checksum.
    fn blocks_into(
        &self,
        first: usize,
        n: usize,
        raw: &mut Vec<u8>,
        out: &mut Vec<Entry>,
    ) -> Result<()> {
        out.clear();
        let last = (first + n).min(self.blocks());
        if first >= last {
            return Ok(());
        }
        let base = self.starts[first];
        raw.resize((self.starts[last] - base) as usize, 0);
        self.file
            .read_exact_at(raw, HEADER_LEN + base)
            .map_err(|e| Error::io(format!("reading {}", self.path.display()), &e))?;
        for i in first..last {
            let at = HEADER_LEN + self.starts[i];
            let bytes =
                &raw[(self.starts[i] - base) as usize..(self.starts[i + 1] - base) as usize];
            if self.block_crcs.get(i) != Some(&crc32c::crc32c(bytes)) {
                return Err(corrupt(
                    &self.path,
                    at,
                    format!("index block {i} checksum mismatch"),
                ));
            }
            let n = (self.count - (i * BLOCK) as u64).min(BLOCK as u64) as usize;
            if !self.blocked {
                decode_entries(bytes, out);
            } else if unpack_block(bytes, n, out).is_none() {
                return Err(corrupt(
                    &self.path,
                    at,
                    format!("index block {i} does not hold {n} packed entries"),
                ));
            }
        }
        Ok(())
    }

    /// Entries of `key` with `lo <= seq <= hi`, in `dir` order, at most `limit`.
    fn scan(
        &self,
        key: u64,
        lo: u64,
        hi: u64,
        dir: Direction,
        limit: usize,
        out: &mut Vec<(u64, u64)>,
    ) -> Result<()> {
        let mut taken = 0;
        match dir {
            Direction::Forward => {
                let target = (key, lo, 0);
                let first = self
                    .fences
                    .partition_point(|f| *f < target)
                    .saturating_sub(1);
                for b in first..self.blocks() {
                    for e in self.block(b)? {
                        if e < target {
                            continue;
                        }
                        if e.0 != key || e.1 > hi {
                            return Ok(());
                        }
                        out.push((e.1, e.2));
                        taken += 1;
                        if taken >= limit {
                            return Ok(());
                        }
                    }
                }
            }
            Direction::Backward => {
                let target = (key, hi, u64::MAX);
                let end = self.fences.partition_point(|f| *f <= target);
                for b in (0..end).rev() {
                    for e in self.block(b)?.into_iter().rev() {
                        if e > target {
                            continue;
                        }
                        if e.0 != key || e.1 < lo {
                            return Ok(());
                        }
                        out.push((e.1, e.2));
                        taken += 1;
                        if taken >= limit {
                            return Ok(());
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Every entry in order, read many blocks at a time.
    pub fn iter(&self) -> RunIter<'_> {
        RunIter {
            run: self,
            block: 0,
            raw: Vec::new(),
            buf: Vec::new(),
            at: 0,
        }
    }
}

/// Blocks a run iterator reads at once (about 80 KiB packed, 384 KiB of version 1 blocks).
const READ_BLOCKS: usize = 64;

/// Iterates a run's entries.
pub struct RunIter<'a> {
    run: &'a Run,
    /// The next block to read.
    block: usize,
    raw: Vec<u8>,
    /// The entries read, and the next one to hand out.
    buf: Vec<Entry>,
    at: usize,
}

impl RunIter<'_> {
    /// The next entry without taking it; `Ok(None)` at the end.
    fn peek(&mut self) -> Result<Option<Entry>> {
        if self.at == self.buf.len() {
            if self.block >= self.run.blocks() {
                return Ok(None);
            }
            self.run
                .blocks_into(self.block, READ_BLOCKS, &mut self.raw, &mut self.buf)?;
            self.block += READ_BLOCKS;
            self.at = 0;
        }
        Ok(self.buf.get(self.at).copied())
    }
}

impl Iterator for RunIter<'_> {
    type Item = Result<Entry>;
    fn next(&mut self) -> Option<Result<Entry>> {
        match self.peek() {
            Ok(Some(e)) => {
                self.at += 1;
                Some(Ok(e))
            }
            Ok(None) => None,
            Err(e) => {
                // Nothing more after an error.
                self.block = self.run.blocks();
                self.buf.clear();
                self.at = 0;
                Some(Err(e))
            }
        }
    }
}

/// The index: a memtable, frozen memtables waiting to be written out (oldest first), and
/// runs.
#[derive(Default)]
pub struct IndexState {
    pub mem: MemTable,
    pub frozen: Vec<Arc<MemTable>>,
    pub runs: Vec<Arc<Run>>,
    /// The filter over the event ids of many runs, once built.
    pub ids: Option<Arc<IdFilter>>,
    /// The runs (by id) whose every event id is in `ids`.
    pub covered: Vec<u64>,
}

/// The shared index, readable while the writer adds to it.
#[derive(Default)]
pub struct Index {
    pub state: RwLock<IndexState>,
}

impl Index {
    /// `(seq, value)` of entries of `key` with `lo <= seq <= hi`, in `dir` order, at most
    /// `limit`, merged from every part of the index.
    pub fn scan(
        &self,
        key: u64,
        lo: u64,
        hi: u64,
        dir: Direction,
        limit: usize,
    ) -> Result<Vec<(u64, u64)>> {
        if lo > hi || limit == 0 {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let runs: Vec<Arc<Run>> = {
            let s = self.state.read().unwrap_or_else(|e| e.into_inner());
            s.mem.scan(key, lo, hi, dir, limit, &mut out);
            for f in &s.frozen {
                f.scan(key, lo, hi, dir, limit, &mut out);
            }
            // An event id is looked up only in the runs whose Bloom filter may hold it, so
            // the lookup of a new id allocates nothing and reads nothing.
            s.runs
                .iter()
                .filter(|r| !is_id_key(key) || r.may_hold_id(key))
                .cloned()
                .collect()
        };
        for run in &runs {
            run.scan(key, lo, hi, dir, limit, &mut out)?;
        }
        match dir {
            Direction::Forward => out.sort_unstable(),
            Direction::Backward => out.sort_unstable_by(|a, b| b.cmp(a)),
        }
        out.dedup();
        out.truncate(limit);
        Ok(out)
    }

    /// For event id keys: `out[i]` is false when no part of the index holds `keys[i]` (the
    /// answer for a new id, found without reading a run), true when one may.
    /// A run the id filter covers is asked only about the keys the filter may hold.
    pub fn may_hold_ids(&self, keys: &[u64], out: &mut Vec<bool>, scratch: &mut Vec<bool>) {
        out.clear();
        out.resize(keys.len(), false);
        let s = self.state.read().unwrap_or_else(|e| e.into_inner());
        for (&k, maybe) in keys.iter().zip(out.iter_mut()) {
            *maybe = s.mem.holds_id(k) || s.frozen.iter().any(|f| f.holds_id(k));
        }
        let Some(ids) = &s.ids else {
            for run in &s.runs {
                run.may_hold_ids(keys, out);
            }
            return;
        };
        ids.may_hold_many(keys, scratch);
        let any = scratch.iter().any(|&m| m);
        for run in &s.runs {
            if !s.covered.contains(&run.id) {
                run.may_hold_ids(keys, out);
            } else if any {
                for ((&k, maybe), _) in keys
                    .iter()
                    .zip(out.iter_mut())
                    .zip(&*scratch)
                    .filter(|(_, &m)| m)
                {
                    *maybe = *maybe || run.may_hold_id(k);
                }
            }
        }
    }

    /// The id filter, when built.
    pub fn id_filter(&self) -> Option<Arc<IdFilter>> {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .ids
            .clone()
    }

    /// True when the id filter holds every event id of the run.
    pub fn is_covered(&self, run: u64) -> bool {
        let s = self.state.read().unwrap_or_else(|e| e.into_inner());
        s.ids.is_some() && s.covered.contains(&run)
    }

    /// Installs an id filter that holds every event id of the runs `covered`; `None` drops
    /// it (the runs' own filters answer alone).
    pub fn set_id_filter(&self, ids: Option<Arc<IdFilter>>, covered: Vec<u64>) {
        let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
        s.covered = if ids.is_some() { covered } else { Vec::new() };
        s.ids = ids;
    }

    /// The entry of `key` with the greatest seq at or below `seq`.
    pub fn floor(&self, key: u64, seq: u64) -> Result<Option<(u64, u64)>> {
        Ok(self
            .scan(key, 0, seq, Direction::Backward, 1)?
            .into_iter()
            .next())
    }

    /// Adds entries to the memtable; runs of entries of one key are looked up once.
    pub fn insert(&self, entries: &[Entry]) {
        let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
        s.mem.insert_all(entries);
    }

    /// How many entries wait in the memtable.
    pub fn mem_len(&self) -> usize {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .mem
            .len()
    }

    /// Freezes the memtable for writing out; returns it.
    pub fn freeze(&self) -> Arc<MemTable> {
        let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
        let next = s.mem.sized_like();
        let mem = Arc::new(std::mem::replace(&mut s.mem, next));
        s.frozen.push(mem.clone());
        mem
    }

    /// Replaces the oldest frozen memtable with the run written from it; `covered`: every
    /// event id of the run is in the id filter.
    pub fn install(&self, run: Arc<Run>, covered: bool) {
        let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
        if !s.frozen.is_empty() {
            s.frozen.remove(0);
        }
        if covered && s.ids.is_some() {
            s.covered.push(run.id);
        }
        s.runs.push(run);
    }

    /// The runs, oldest first.
    pub fn runs(&self) -> Vec<Arc<Run>> {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .runs
            .clone()
    }

    /// Replaces runs `from..` with `merged`; `covered` as for `install`.
    pub fn replace_tail(&self, from: usize, merged: Arc<Run>, covered: bool) {
        let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
        s.runs.truncate(from);
        let IndexState {
            runs, covered: c, ..
        } = &mut *s;
        c.retain(|id| runs.iter().any(|r| r.id == *id));
        if covered && s.ids.is_some() {
            s.covered.push(merged.id);
        }
        s.runs.push(merged);
    }
}

/// Merges sorted runs into one sorted stream of entries.
pub fn merge_runs(runs: &[Arc<Run>]) -> impl Iterator<Item = Result<Entry>> + '_ {
    let mut iters: Vec<_> = runs.iter().map(|r| r.iter()).collect();
    let mut failed = false;
    // The run the last entry came from, and the least entry the others have next: while
    // that run's next entry is below it, it comes next without asking the others. Runs
    // written by checkpoints hold one key's entries in runs of seqs, so most entries take
    // this path.
    let mut lead: Option<(usize, Option<Entry>)> = None;
    std::iter::from_fn(move || {
        if failed {
            return None;
        }
        if let Some((i, bound)) = lead {
            match iters[i].peek() {
                Ok(Some(e)) if bound.is_none_or(|b| e < b) => {
                    iters[i].at += 1;
                    return Some(Ok(e));
                }
                Ok(_) => {}
                Err(e) => {
                    failed = true;
                    return Some(Err(e));
                }
            }
        }
        // The least next entry (the first run's on a tie) and the least of the others.
        let mut best: Option<(usize, Entry)> = None;
        let mut others: Option<Entry> = None;
        for (i, it) in iters.iter_mut().enumerate() {
            match it.peek() {
                Ok(Some(e)) => match best {
                    Some((_, b)) if e >= b => {
                        if others.is_none_or(|o| e < o) {
                            others = Some(e);
                        }
                    }
                    _ => {
                        if let Some((_, b)) = best {
                            others = Some(b);
                        }
                        best = Some((i, e));
                    }
                },
                Ok(None) => {}
                Err(e) => {
                    failed = true;
                    return Some(Err(e));
                }
            }
        }
        let (i, e) = best?;
        iters[i].at += 1;
        lead = Some((i, others));
        Some(Ok(e))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::sim::SimFs;

    #[test]
    fn run_scans_agree_with_a_sorted_vec() {
        let fs = SimFs::new();
        let mut entries: Vec<Entry> = Vec::new();
        for k in 0..5u64 {
            for s in 0..(k * 300 + 7) {
                entries.push((k << 56, s * 2, s + 1000 * k));
            }
        }
        entries.sort();
        let path = Path::new("/x/run-1.idx");
        Run::write(&fs, path, 1, entries.iter().copied().map(Ok)).unwrap();
        let run = Run::open(&fs, path, 1).unwrap();
        assert_eq!(run.count, entries.len() as u64);
        for k in 0..5u64 {
            for (lo, hi, limit) in [
                (0, u64::MAX, 10_000),
                (5, 101, 7),
                (300, 900, 1000),
                (10_000, 20_000, 5),
            ] {
                for dir in [Direction::Forward, Direction::Backward] {
                    let mut got = Vec::new();
                    run.scan(k << 56, lo, hi, dir, limit, &mut got).unwrap();
                    let mut want: Vec<(u64, u64)> = entries
                        .iter()
                        .filter(|e| e.0 == k << 56 && e.1 >= lo && e.1 <= hi)
                        .map(|e| (e.1, e.2))
                        .collect();
                    if dir == Direction::Backward {
                        want.reverse();
                    }
                    want.truncate(limit);
                    assert_eq!(got, want, "k={k} lo={lo} hi={hi} dir={dir:?}");
                }
            }
        }
        let merged: Vec<Entry> = merge_runs(&[Arc::new(run)]).map(|e| e.unwrap()).collect();
        assert_eq!(merged, entries);
    }

    #[test]
    fn id_filter_has_no_false_negatives_and_few_false_positives() {
        let fs = SimFs::new();
        let mut entries: Vec<Entry> = (0..5000u64)
            .map(|i| (key(KIND_ID, &i.to_le_bytes()), 0, i))
            .chain((0..3000u64).map(|i| (key(KIND_STREAM, &i.to_le_bytes()), 0, i)))
            .collect();
        entries.sort();
        let path = Path::new("/x/run-3.idx");
        Run::write(&fs, path, 3, entries.iter().copied().map(Ok)).unwrap();
        let run = Run::open(&fs, path, 3).unwrap();
        assert!((0..5000u64).all(|i| run.may_hold_id(key(KIND_ID, &i.to_le_bytes()))));
        let false_positives = (5000..25_000u64)
            .filter(|i| run.may_hold_id(key(KIND_ID, &i.to_le_bytes())))
            .count();
        // About 0.2% at 14 bits per id in 512-bit blocks (10 unblocked bits gave about 0.8%).
        assert!(false_positives < 100, "{false_positives} of 20000");
    }

    #[test]
    fn filters_hold_every_id_whether_sized_for_them_or_for_fewer() {
        let fs = SimFs::new();
        // Ten ids have a second entry, at another position: they count once.
        let mut entries: Vec<Entry> = (0..5000u64)
            .map(|i| (key(KIND_ID, &i.to_le_bytes()), i, i))
            .chain((0..10u64).map(|i| (key(KIND_ID, &i.to_le_bytes()), 9000 + i, 9000 + i)))
            .chain((0..3000u64).map(|i| (key(KIND_TAG, &i.to_le_bytes()), i, i)))
            .collect();
        entries.sort();
        let id_keys: Vec<u64> = (0..5000u64)
            .map(|i| key(KIND_ID, &i.to_le_bytes()))
            .collect();
        for (n, expected_ids) in [(5, 5000u64), (6, 100)] {
            let ids = IdFilter::with_capacity(10_000);
            let path = std::path::PathBuf::from(format!("/x/run-{n}.idx"));
            let written = Run::write_adding_ids(
                &fs,
                &path,
                n,
                entries.iter().copied().map(Ok),
                expected_ids,
                Some(&ids),
            )
            .unwrap();
            let run = Run::open(&fs, &path, n).unwrap();
            // Sized for what it was told, to within one filter block (36 ids).
            assert!(
                (expected_ids..expected_ids + 37).contains(&run.estimated_ids()),
                "{} for {expected_ids}",
                run.estimated_ids()
            );
            assert_eq!(run.estimated_ids(), written.estimated_ids());
            assert_eq!(ids.added(), 5000);
            for &k in &id_keys {
                assert!(run.may_hold_id(k) && written.may_hold_id(k) && ids.may_hold(k));
            }
            let back: Vec<Entry> = merge_runs(&[Arc::new(run)]).map(|e| e.unwrap()).collect();
            assert_eq!(back, entries);
        }
    }

    /// A run file as version 1 wrote it: 24-byte entries, an unblocked filter of 14 bits per
    /// id, the reserved header bytes zero.
    fn version_1_file(entries: &[Entry]) -> Vec<u8> {
        let ids = entries.iter().filter(|e| is_id_key(e.0)).count() as u64;
        let words = (ids * 14).div_ceil(64).max(1);
        let mut filter = vec![0u64; words as usize];
        for e in entries.iter().filter(|e| is_id_key(e.0)) {
            for bit in unblocked_probes(e.0, words * 64) {
                filter[(bit / 64) as usize] |= 1 << (bit % 64);
            }
        }
        let raw = |e: &Entry| [e.0, e.1, e.2].map(u64::to_le_bytes).concat();
        let mut out = vec![0u8; HEADER_LEN as usize];
        for e in entries {
            out.extend_from_slice(&raw(e));
        }
        let fence_at = out.len();
        for block in entries.chunks(BLOCK) {
            out.extend_from_slice(&raw(&block[0]));
        }
        for block in entries.chunks(BLOCK) {
            let bytes: Vec<u8> = block.iter().flat_map(raw).collect();
            out.extend_from_slice(&crc32c::crc32c(&bytes).to_le_bytes());
        }
        for w in &filter {
            out.extend_from_slice(&w.to_le_bytes());
        }
        let tail_crc = crc32c::crc32c(&out[fence_at..]);
        out[0..8].copy_from_slice(MAGIC);
        out[8..12].copy_from_slice(&RUN_VERSION_UNBLOCKED.to_le_bytes());
        out[12..16].copy_from_slice(&(BLOCK as u32).to_le_bytes());
        out[16..24].copy_from_slice(&(entries.len() as u64).to_le_bytes());
        out[24..32].copy_from_slice(&words.to_le_bytes());
        out[32..36].copy_from_slice(&tail_crc.to_le_bytes());
        let crc = crc32c::crc32c(&out[0..44]);
        out[44..48].copy_from_slice(&crc.to_le_bytes());
        out
    }

    #[test]
    fn version_1_runs_are_read_with_their_own_filter_and_merged_into_version_2() {
        let fs = SimFs::new();
        let ids: Vec<u64> = (0..3000u64)
            .map(|i| key(KIND_ID, &i.to_le_bytes()))
            .collect();
        let mut entries: Vec<Entry> = ids.iter().map(|&k| (k, 0, k & 0xffff)).collect();
        entries.sort();
        // Other kinds too, so that blocks hold runs of one key.
        entries.extend((0..2000u64).map(|i| (key(KIND_STREAM, &(i % 7).to_le_bytes()), i, i)));
        entries.sort();
        let path = Path::new("/x/run-5.idx");
        fs.write_file(path, version_1_file(&entries));
        let old = Run::open(&fs, path, 5).unwrap();
        assert!(!old.blocked);
        // Sized as if for 10 bits per id, so never below the ids it holds.
        assert!(old.estimated_ids() >= 3000, "{}", old.estimated_ids());
        // The unblocked probes find every id; the blocked ones would miss most of them.
        assert!(ids.iter().all(|&k| old.may_hold_id(k)));
        let misread = Run {
            blocked: true,
            ..Run::open(&fs, path, 5).unwrap()
        };
        assert!(ids.iter().filter(|&&k| !misread.may_hold_id(k)).count() > 1000);
        let merged_path = Path::new("/x/run-6.idx");
        let old = Arc::new(old);
        Run::write(&fs, merged_path, 6, merge_runs(std::slice::from_ref(&old))).unwrap();
        let merged = Run::open(&fs, merged_path, 6).unwrap();
        assert!(merged.blocked);
        assert!(ids.iter().all(|&k| merged.may_hold_id(k)));
        let all: Vec<Entry> = merged.iter().map(|e| e.unwrap()).collect();
        assert_eq!(all, entries);
    }

    proptest::proptest! {
        /// Merging runs gives every entry of every run, in order, each as often as it was
        /// written, however the entries are spread over the runs.
        #[test]
        fn merged_runs_give_every_entry_in_order(
            spread in proptest::collection::vec(
                (0u64..4, 0u64..3000, 0u64..5, 0usize..5),
                0..3000,
            ),
            runs in 1usize..6,
        ) {
            let fs = SimFs::new();
            let mut all: Vec<Entry> = Vec::new();
            let mut parts: Vec<Vec<Entry>> = vec![Vec::new(); runs];
            for (k, seq, val, r) in spread {
                let e = (k << 56, seq, val);
                all.push(e);
                parts[r % runs].push(e);
            }
            all.sort();
            let mut written = Vec::new();
            for (n, mut part) in parts.into_iter().enumerate() {
                part.sort();
                let path = std::path::PathBuf::from(format!("/x/run-{n}.idx"));
                Run::write(&fs, &path, n as u64, part.into_iter().map(Ok)).unwrap();
                written.push(Arc::new(Run::open(&fs, &path, n as u64).unwrap()));
            }
            let merged: Vec<Entry> = merge_runs(&written).map(|e| e.unwrap()).collect();
            proptest::prop_assert_eq!(merged, all);
        }

        /// Packed blocks give back exactly the sorted entries written, whatever their values.
        #[test]
        fn packed_runs_give_back_their_entries(
            mut entries in proptest::collection::vec(
                (0u64..6, proptest::prelude::any::<u64>(), proptest::prelude::any::<u64>(), 0u8..4),
                0..1500,
            ),
        ) {
            let mut entries: Vec<Entry> = entries
                .drain(..)
                .map(|(k, seq, val, shape)| {
                    let key = (k << 58) | (k * 0x0123_4567);
                    match shape {
                        0 => (key, seq, seq),
                        1 => (key, seq % 1000, val % 1000),
                        2 => (u64::MAX - k, seq, val),
                        _ => (key, seq, val),
                    }
                })
                .collect();
            entries.sort();
            let fs = SimFs::new();
            let path = Path::new("/x/run-9.idx");
            Run::write(&fs, path, 9, entries.iter().copied().map(Ok)).unwrap();
            let run = Run::open(&fs, path, 9).unwrap();
            let back: Vec<Entry> = run.iter().map(|e| e.unwrap()).collect();
            proptest::prop_assert_eq!(back, entries);
        }

        /// The entries of a stream's events grouped by key are those of each event alone.
        #[test]
        fn stream_entries_are_each_events_entries_grouped_by_key(
            events in proptest::collection::vec(
                (0u8..3, proptest::collection::vec(0u8..4, 0..4)),
                1..30,
            ),
            first_revision in 0u64..1000,
            first_position in 0u64..1000,
        ) {
            let events: Vec<annal_core::NewEvent> = events
                .into_iter()
                .map(|(t, tags)| {
                    let mut e = annal_core::NewEvent::new(format!("T{t}"), b"{}".to_vec());
                    e.tags = tags.iter().map(|t| format!("tag:{t}")).collect();
                    e
                })
                .collect();
            let keys = stream_keys("account-7");
            let id_keys: Vec<u64> = events.iter().map(|e| key(KIND_ID, e.id.as_bytes())).collect();
            let mut grouped = Vec::new();
            stream_entries(&mut grouped, keys, first_revision, first_position, &events, &id_keys);
            let mut each = Vec::new();
            for (i, e) in events.iter().enumerate() {
                let i = i as u64;
                let type_key = key(KIND_TYPE, e.event_type.as_bytes());
                keyed_event_entries(
                    &mut each, keys, first_revision + i, first_position + i, type_key, &e.tags, &e.id,
                );
            }
            let mut sorted = grouped.clone();
            sorted.sort_unstable();
            each.sort_unstable();
            proptest::prop_assert_eq!(&sorted, &each);
            // The stream's and the category's entries are one run each, in order.
            let n = events.len();
            proptest::prop_assert!(grouped[..n].iter().all(|e| e.0 == keys.0));
            proptest::prop_assert!(grouped[n..2 * n].iter().all(|e| e.0 == keys.1));
            proptest::prop_assert!(grouped[..2 * n].windows(2).all(|w| w[0] < w[1] || w[0].0 != w[1].0));
        }

        /// Bytes that are not a packed block are refused, never a panic.
        #[test]
        fn unpacking_arbitrary_bytes_does_not_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            n in 0usize..40,
        ) {
            let mut out = Vec::new();
            if unpack_block(&bytes, n, &mut out).is_some() {
                proptest::prop_assert_eq!(out.len(), n);
            }
        }
    }

    #[test]
    fn entries_out_of_order_are_refused() {
        let fs = SimFs::new();
        let path = Path::new("/x/run-8.idx");
        let entries = [(1, 5, 5), (1, 4, 4)].map(Ok);
        let err = Run::write(&fs, path, 8, entries.into_iter()).err().unwrap();
        assert!(err.to_string().contains("after"), "{err}");
    }

    #[test]
    fn a_run_of_a_later_version_is_refused_by_name() {
        let fs = SimFs::new();
        let path = Path::new("/x/run-7.idx");
        Run::write(&fs, path, 7, (0..10u64).map(|i| Ok((1, i, i)))).unwrap();
        let mut bytes = fs.read_file(path).unwrap();
        bytes[8..12].copy_from_slice(&(RUN_VERSION + 1).to_le_bytes());
        let crc = crc32c::crc32c(&bytes[0..44]);
        bytes[44..48].copy_from_slice(&crc.to_le_bytes());
        fs.write_file(path, bytes);
        let Err(Error::UnsupportedFormat {
            found, supported, ..
        }) = Run::open(&fs, path, 7)
        else {
            panic!("a version {} run was opened", RUN_VERSION + 1);
        };
        assert_eq!((found, supported), (RUN_VERSION + 1, RUN_VERSION));
    }

    #[test]
    fn a_damaged_block_is_reported_when_read() {
        let fs = SimFs::new();
        let path = Path::new("/x/run-4.idx");
        let run = Run::write(&fs, path, 4, (0..1000u64).map(|i| Ok((1, i, i)))).unwrap();
        let mut bytes = fs.read_file(path).unwrap();
        bytes[(HEADER_LEN + run.starts[1] + 9) as usize] ^= 0x20;
        fs.write_file(path, bytes);
        let run = Run::open(&fs, path, 4).unwrap();
        assert!(run.block(0).is_ok());
        let err = run.block(1).unwrap_err();
        assert!(matches!(err, Error::Corruption { .. }), "{err}");
        assert!(
            err.to_string().contains("index block 1 checksum mismatch"),
            "{err}"
        );
    }

    #[test]
    fn damaged_run_is_reported() {
        let fs = SimFs::new();
        let path = Path::new("/x/run-2.idx");
        Run::write(&fs, path, 2, (0..1000u64).map(|i| Ok((1, i, i)))).unwrap();
        let mut bytes = fs.read_file(path).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 0xff;
        fs.write_file(path, bytes);
        assert!(matches!(
            Run::open(&fs, path, 2),
            Err(Error::Corruption { .. })
        ));
    }
}
