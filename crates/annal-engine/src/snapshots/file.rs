//! The snapshot file: a header, then groups, each the records one sync made durable, each
//! record a snapshot put or a stream's snapshots deleted (docs/file-format.md).
//!
//! ```text
//! header  "ANSN" | version u32
//! group   length u32 | crc32c(file offset u64, sequence, records) u32 | sequence u64 | records
//! record  body length u32 | crc32c(body) u32 | body
//! body    kind u8 (1 put, 2 delete) | stream id length u16 | stream id
//!         put only: revision u64 | schema version u32 | taken at i64 (µs) | data
//! ```
//!
//! Integers are little-endian. A group is written whole and synced before the next is
//! written, and groups count up from 1 in a file: only the last group can be torn, and an
//! intact group after a bad one means damage to acknowledged data. A group's checksum
//! covers its offset in the file too, so the bytes of a record (framed alike) or of a
//! group copied elsewhere never pass for a group.

use std::io;

use annal_core::{Bytes, Snapshot, Timestamp};

pub use crate::io::journal::{end_group, start_group, GROUP_HEADER_LEN};
use crate::io::File;

pub const MAGIC: &[u8; 4] = b"ANSN";
pub const VERSION: u32 = 3;
pub const HEADER_LEN: u64 = 8;
/// Length and CRC before each record's body.
pub const FRAME_LEN: usize = 8;
const PUT: u8 = 1;
const DELETE: u8 = 2;
/// Kind, stream id length, revision, schema version, taken at.
const PUT_FIXED: usize = 1 + 2 + 8 + 4 + 8;

/// The file's header.
pub fn header() -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..4].copy_from_slice(MAGIC);
    h[4..].copy_from_slice(&VERSION.to_le_bytes());
    h
}

/// The problem with a header, if any: `Err(Some(version))` for another format version.
pub fn check_header(bytes: &[u8]) -> Result<(), Option<u32>> {
    if bytes.len() < HEADER_LEN as usize || &bytes[..4] != MAGIC {
        return Err(None);
    }
    match u32::from_le_bytes(bytes[4..8].try_into().unwrap_or_default()) {
        VERSION => Ok(()),
        v => Err(Some(v)),
    }
}

fn frame(out: &mut [u8], body_start: usize) {
    let body = &out[body_start + FRAME_LEN..];
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    let crc = crc32c::crc32c(body);
    out[body_start..body_start + 4].copy_from_slice(&len.to_le_bytes());
    out[body_start + 4..body_start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Appends a put record to `out`; returns its length.
pub fn encode_put(out: &mut Vec<u8>, s: &Snapshot) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_LEN]);
    out.push(PUT);
    out.extend_from_slice(&(s.stream_id.len() as u16).to_le_bytes());
    out.extend_from_slice(s.stream_id.as_bytes());
    out.extend_from_slice(&s.revision.to_le_bytes());
    out.extend_from_slice(&s.schema_version.to_le_bytes());
    out.extend_from_slice(&s.taken_at.as_micros().to_le_bytes());
    out.extend_from_slice(&s.data);
    frame(out, start);
    out.len() - start
}

/// Appends a delete record to `out`; returns its length.
pub fn encode_delete(out: &mut Vec<u8>, stream_id: &str) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_LEN]);
    out.push(DELETE);
    out.extend_from_slice(&(stream_id.len() as u16).to_le_bytes());
    out.extend_from_slice(stream_id.as_bytes());
    frame(out, start);
    out.len() - start
}

/// What a record says.
#[derive(Debug, PartialEq, Eq)]
pub enum Record {
    Put(Snapshot),
    Delete(String),
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Decodes a record's body (CRC already checked); `None` when it is malformed.
pub fn decode_body(body: Bytes) -> Option<Record> {
    let kind = *body.first()?;
    let n = usize::from(u16_at(&body, 1)?);
    let stream_id = std::str::from_utf8(body.get(3..3 + n)?).ok()?.to_string();
    match kind {
        PUT if body.len() >= PUT_FIXED + n => {
            let at = 3 + n;
            Some(Record::Put(Snapshot {
                stream_id,
                revision: u64_at(&body, at)?,
                schema_version: u32_at(&body, at + 8)?,
                taken_at: Timestamp(u64_at(&body, at + 12)? as i64),
                data: body.slice(PUT_FIXED + n..),
            }))
        }
        DELETE if body.len() == 3 + n => Some(Record::Delete(stream_id)),
        _ => None,
    }
}

/// The records of an intact group (its `records` bytes): each with its offset among them
/// and its length; `None` when one of them is malformed (the group's checksum matched, so
/// that is not a torn write).
pub fn group_records(records: &Bytes) -> Option<Vec<(Record, usize, usize)>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < records.len() {
        let len = u32::from_le_bytes(records.get(at..at + 4)?.try_into().ok()?) as usize;
        let crc = u32::from_le_bytes(records.get(at + 4..at + 8)?.try_into().ok()?);
        let body = records.get(at + FRAME_LEN..at + FRAME_LEN + len)?;
        if len == 0 || crc32c::crc32c(body) != crc {
            return None;
        }
        let record = decode_body(records.slice(at + FRAME_LEN..at + FRAME_LEN + len))?;
        out.push((record, at, FRAME_LEN + len));
        at += FRAME_LEN + len;
    }
    Some(out)
}

/// Why a record cannot be read.
#[derive(Debug)]
pub enum Bad {
    /// Fewer bytes than its frame says, a length of zero, or a CRC that does not match.
    Damaged(String),
    /// The CRC matches but the body makes no sense.
    Malformed,
    Io(io::Error),
}

/// Reads the record at `offset` of a file `file_len` long; returns it and its length.
pub fn read_record(file: &dyn File, offset: u64, file_len: u64) -> Result<(Record, u64), Bad> {
    let mut frame = [0u8; FRAME_LEN];
    if offset + FRAME_LEN as u64 > file_len {
        return Err(Bad::Damaged(format!(
            "{} bytes where a record's frame needs {FRAME_LEN}",
            file_len - offset
        )));
    }
    file.read_exact_at(&mut frame, offset).map_err(Bad::Io)?;
    let len = u64::from(u32::from_le_bytes(
        frame[..4].try_into().unwrap_or_default(),
    ));
    let crc = u32::from_le_bytes(frame[4..].try_into().unwrap_or_default());
    let body_at = offset + FRAME_LEN as u64;
    if len == 0 || body_at + len > file_len {
        return Err(Bad::Damaged(format!(
            "a record of {len} bytes with {} bytes left in the file",
            file_len - body_at
        )));
    }
    let mut body = vec![0u8; len as usize];
    file.read_exact_at(&mut body, body_at).map_err(Bad::Io)?;
    if crc32c::crc32c(&body) != crc {
        return Err(Bad::Damaged(format!(
            "a record of {len} bytes whose checksum does not match"
        )));
    }
    let record = decode_body(Bytes::from(body)).ok_or(Bad::Malformed)?;
    Ok((record, FRAME_LEN as u64 + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(data: &[u8]) -> Snapshot {
        Snapshot {
            stream_id: "account-7".into(),
            revision: 41,
            schema_version: 3,
            data: Bytes::copy_from_slice(data),
            taken_at: Timestamp(1_700_000_000_000_000),
        }
    }

    #[test]
    fn records_decode_to_what_was_encoded() {
        let mut out = Vec::new();
        let put = snapshot(b"{\"balance\":10}");
        let a = encode_put(&mut out, &put);
        let b = encode_delete(&mut out, "account-7");
        let c = encode_put(&mut out, &snapshot(b""));
        assert_eq!(a + b + c, out.len());
        for (at, want) in [
            (0, Record::Put(put)),
            (a, Record::Delete("account-7".into())),
            (a + b, Record::Put(snapshot(b""))),
        ] {
            let len = u32::from_le_bytes(out[at..at + 4].try_into().unwrap()) as usize;
            let body = Bytes::copy_from_slice(&out[at + FRAME_LEN..at + FRAME_LEN + len]);
            assert_eq!(decode_body(body), Some(want));
        }
    }

    #[test]
    fn a_cut_body_is_malformed_not_a_shorter_snapshot() {
        let mut out = Vec::new();
        encode_delete(&mut out, "s");
        let body = Bytes::copy_from_slice(&out[FRAME_LEN..out.len() - 1]);
        assert_eq!(decode_body(body), None);
        assert_eq!(check_header(&header()), Ok(()));
        let mut other = header();
        other[4] = 9;
        assert_eq!(check_header(&other), Err(Some(9)));
        assert_eq!(check_header(b"ANSX\x01\0\0\0"), Err(None));
    }

    /// A torn last group whose records are intact (framed like groups, with matching
    /// checksums) is a torn write, not damage: no record passes for a later group.
    #[test]
    fn the_records_of_a_torn_group_do_not_pass_for_later_groups() {
        use crate::io::journal::{intact_group_after, read_group};
        use crate::io::sim::SimFs;
        use crate::io::Fs;
        let put = |stream: &str, revision: u64| Snapshot {
            stream_id: stream.into(),
            revision,
            schema_version: 1,
            data: Bytes::from_static(b"{}"),
            taken_at: Timestamp(0),
        };
        let mut out = header().to_vec();
        let g = start_group(&mut out, 1);
        encode_put(&mut out, &put("a", 0));
        end_group(&mut out, g, 0);
        let torn_at = out.len();
        let g = start_group(&mut out, 2);
        for r in 0..4 {
            encode_put(&mut out, &put("a", r));
        }
        end_group(&mut out, g, 0);
        // The second group's checksum no longer matches: a write torn before its sync.
        out[torn_at + 4] ^= 0xff;
        let fs = SimFs::new();
        let file = fs.create(std::path::Path::new("/s/f")).unwrap();
        file.write_all_at(&out, 0).unwrap();
        let len = out.len() as u64;
        let first = read_group(&*file, HEADER_LEN, len).unwrap().unwrap();
        assert_eq!(
            (first.sequence, HEADER_LEN + first.len),
            (1, torn_at as u64)
        );
        assert!(read_group(&*file, torn_at as u64, len).unwrap().is_none());
        assert_eq!(
            intact_group_after(&*file, torn_at as u64, len, 1).unwrap(),
            None
        );
        // The same group intact after it is damage to acknowledged data; copied to another
        // offset, it is not a group there.
        let mut more = out.clone();
        let g = start_group(&mut more, 2);
        encode_put(&mut more, &put("a", 9));
        end_group(&mut more, g, 0);
        file.write_all_at(&more, 0).unwrap();
        let len = more.len() as u64;
        assert_eq!(
            intact_group_after(&*file, torn_at as u64, len, 1).unwrap(),
            Some(out.len() as u64)
        );
        let copy = more[out.len()..].to_vec();
        file.write_all_at(&copy, len + 3).unwrap();
        assert!(read_group(&*file, len + 3, len + 3 + copy.len() as u64)
            .unwrap()
            .is_none());
    }
}
