//! What follows the end of the log: preallocated zeros, the torn bytes of an unfinished
//! write, or (an intact record after them) damage inside the log.

use annal_core::{Error, Result};

use super::format::{
    decode_batch_header, frame_crc, frame_header, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use super::Segment;

/// What follows the end of the log in the last segment.
#[derive(Debug, PartialEq, Eq)]
pub enum Tail {
    /// Nothing, or zeros only: space preallocated for records to come.
    Clear,
    /// Bytes of records that were never made durable (or zeros where one was cut off): a
    /// torn tail, cut off before new records are written.
    Torn,
    /// An intact record at this file offset proves that what ends the log was synced:
    /// damage inside the log.
    Damage(u64),
}

/// Classifies what lies in `seg` from `file_offset` (where reading found the end of the
/// log, or a record it could not read) to the end of the file. `expected` is the position
/// the next record would start at.
pub fn tail_after(seg: &Segment, file_offset: u64, expected: u64) -> Result<Tail> {
    let io = |e: std::io::Error| Error::io(format!("reading {}", seg.path.display()), e);
    let len = seg.file.len().map_err(io)?;
    // Zeros only, the usual case, are read a piece at a time; anything else is searched
    // whole for an intact record.
    let mut piece = vec![0u8; (1 << 20).min(len.saturating_sub(file_offset)) as usize];
    let mut at = file_offset;
    while at < len {
        let n = piece.len().min((len - at) as usize);
        seg.file.read_exact_at(&mut piece[..n], at).map_err(io)?;
        if piece[..n].iter().any(|&b| b != 0) {
            return Ok(match intact_record_after(seg, file_offset, expected)? {
                Some(later) => Tail::Damage(later),
                None => Tail::Torn,
            });
        }
        at += n as u64;
    }
    Ok(Tail::Clear)
}

/// Looks for an intact record after a damaged one at `file_offset` of `seg` that proves the
/// damaged bytes had been synced: one whose frame checks, whose batch starts after position
/// `expected`, and whose watermark (the offset the log was durable up to when it was
/// written) lies beyond the damage. A power loss only damages bytes that were never synced,
/// in any order; finding such a record means the damage is corruption inside the log.
/// Returns its file offset.
pub fn intact_record_after(seg: &Segment, file_offset: u64, expected: u64) -> Result<Option<u64>> {
    let len = seg
        .file
        .len()
        .map_err(|e| Error::io(format!("reading {}", seg.path.display()), e))?;
    if len <= file_offset + 1 {
        return Ok(None);
    }
    let damaged_at = seg.base_offset + file_offset - SEGMENT_HEADER_LEN;
    let mut rest = vec![0u8; (len - file_offset) as usize];
    seg.file
        .read_exact_at(&mut rest, file_offset)
        .map_err(|e| Error::io(format!("reading {}", seg.path.display()), e))?;
    let mut at = 1;
    while at < rest.len().saturating_sub(FRAME_HEADER_LEN) {
        let mut h = [0u8; FRAME_HEADER_LEN];
        h.copy_from_slice(&rest[at..at + FRAME_HEADER_LEN]);
        let (n, crc) = frame_header(&h);
        let end = at + FRAME_HEADER_LEN + n as usize;
        if n == 0 {
            // A frame's length is not zero: skip a run of zeros (preallocated space) to
            // the first place whose length field can hold a non-zero byte.
            let next = rest[at..].iter().position(|&b| b != 0);
            at = next.map_or(rest.len(), |i| (at + i).saturating_sub(3).max(at + 1));
            continue;
        }
        let start = at;
        at += 1;
        if end > rest.len() {
            continue;
        }
        let payload = &rest[start + FRAME_HEADER_LEN..end];
        if frame_crc(n, payload) != crc {
            continue;
        }
        if let Ok(b) = decode_batch_header(payload) {
            if b.first_position > expected && b.synced_up_to > damaged_at {
                return Ok(Some(file_offset + start as u64));
            }
        }
    }
    Ok(None)
}
