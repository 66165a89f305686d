//! Packed run blocks: each entry is a flags byte and LEB128 varints of its differences from
//! the entry before it in its block, so checkpoints and merges write, checksum and read a
//! fraction of the bytes of fixed-width entries.
//!
//! | flag | bit | meaning                                               |
//! |------|-----|-------------------------------------------------------|
//! | `SAME_KEY`    | 0 | the key is the previous entry's; only the seq's delta follows |
//! | `VALUE_IS_SEQ`| 1 | the value equals the seq and is not written        |
//! | `VALUE_DELTA` | 2 | the value is the previous entry's value plus a varint |
//!
//! Without `SAME_KEY`, the key's delta from the previous entry (the key itself for a block's
//! first entry) and the seq follow; without either value flag, the value itself follows.

use super::key::Entry;

/// Flags of a packed entry: the key is the previous entry's.
const SAME_KEY: u8 = 1;
/// The value equals the seq (category, type and tag entries).
const VALUE_IS_SEQ: u8 = 2;
/// The value is the previous entry's value plus a varint.
const VALUE_DELTA: u8 = 4;

/// The most bytes a packed entry takes: flags and three 10-byte varints.
pub const PACKED_MAX: usize = 31;

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

/// Packs an entry after `prev`, the entry before it in its block (`None` for the first),
/// into the start of `out`; returns how many bytes it took. Entries must not decrease.
pub fn pack_entry(out: &mut [u8; PACKED_MAX], prev: Option<Entry>, e: Entry) -> usize {
    let mut n = 1;
    let same = prev.is_some_and(|p| p.key == e.key);
    // The value varint to write, if any, and its flag.
    let (value_flag, value) = match prev {
        _ if e.value == e.seq => (VALUE_IS_SEQ, None),
        Some(p) if e.value >= p.value => (VALUE_DELTA, Some(e.value - p.value)),
        _ => (0, Some(e.value)),
    };
    out[0] = if same { SAME_KEY } else { 0 } | value_flag;
    match prev {
        Some(p) if same => put_varint(out, &mut n, e.seq - p.seq),
        Some(p) => {
            put_varint(out, &mut n, e.key - p.key);
            put_varint(out, &mut n, e.seq);
        }
        None => {
            put_varint(out, &mut n, e.key);
            put_varint(out, &mut n, e.seq);
        }
    }
    if let Some(v) = value {
        put_varint(out, &mut n, v);
    }
    n
}

/// Unpacks the `n` entries of a packed block; `None` when the bytes are not `n` entries
/// exactly.
pub fn unpack_block(b: &[u8], n: usize, out: &mut Vec<Entry>) -> Option<()> {
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
            Some(p) if flags & SAME_KEY != 0 => {
                (p.key, p.seq.checked_add(get_varint(b, &mut at)?)?)
            }
            Some(p) => (
                p.key.checked_add(get_varint(b, &mut at)?)?,
                get_varint(b, &mut at)?,
            ),
            None if flags & SAME_KEY != 0 => return None,
            None => (get_varint(b, &mut at)?, get_varint(b, &mut at)?),
        };
        let value = if flags & VALUE_IS_SEQ != 0 {
            seq
        } else if flags & VALUE_DELTA != 0 {
            prev?.value.checked_add(get_varint(b, &mut at)?)?
        } else {
            get_varint(b, &mut at)?
        };
        let e = Entry { key, seq, value };
        out.push(e);
        prev = Some(e);
    }
    (at == b.len()).then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// A block packed from sorted entries unpacks to exactly those entries.
        #[test]
        fn packed_blocks_give_back_their_entries(
            mut raw in proptest::collection::vec(
                (0u64..6, proptest::prelude::any::<u64>(), proptest::prelude::any::<u64>(), 0u8..4),
                0..300,
            ),
        ) {
            let mut entries: Vec<Entry> = raw
                .drain(..)
                .map(|(k, seq, val, shape)| {
                    let key = (k << 58) | (k * 0x0123_4567);
                    match shape {
                        0 => Entry::new(key, seq, seq),
                        1 => Entry::new(key, seq % 1000, val % 1000),
                        2 => Entry::new(u64::MAX - k, seq, val),
                        _ => Entry::new(key, seq, val),
                    }
                })
                .collect();
            entries.sort();
            let mut bytes = Vec::new();
            let mut prev = None;
            for &e in &entries {
                let mut slot = [0u8; PACKED_MAX];
                let n = pack_entry(&mut slot, prev, e);
                bytes.extend_from_slice(&slot[..n]);
                prev = Some(e);
            }
            let mut back = Vec::new();
            proptest::prop_assert!(unpack_block(&bytes, entries.len(), &mut back).is_some());
            proptest::prop_assert_eq!(back, entries);
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
}
