//! Reading the log in order through a buffer that grows to a large size, as recovery,
//! `annal check` and whole-log reads do.

use std::sync::Arc;

use annal_core::{Bytes, Error, Result};
use bytes::BytesMut;

use super::format::{frame_crc, frame_header, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN};
use super::Segment;

/// The size of a refill from which a reader reads in bulk ([`SeqReader::bulk`]).
pub const BULK: usize = 256 << 10;

/// What a sequential read found at the next record.
pub enum Next {
    /// A record: its log offset and payload (a slice of the reader's buffer, which the
    /// events decoded from it may share).
    Record(u64, Bytes),
    /// The end of the log.
    End,
    /// A record that is cut short or fails its checksum, at this file offset of segment
    /// number `segment`.
    Torn {
        segment: usize,
        file_offset: u64,
        problem: String,
    },
}

/// Reads records in order through a large buffer. Records are handed out as slices of it,
/// so a refill reads into the memory of the buffer before the last once nothing holds a
/// record of it any more (and into new memory while something does): the events of the last
/// buffer's records are often still being read. Memory taken back needs no zeroing.
pub struct SeqReader {
    segments: Vec<Arc<Segment>>,
    seg: usize,
    /// File offset of the next record in the current segment.
    at: u64,
    chunk: Bytes,
    /// The chunk before `chunk`.
    previous: Bytes,
    /// Memory that refills read into (all of it initialized).
    spare: BytesMut,
    chunk_at: u64,
    chunk_size: usize,
    /// How many bytes the last refill asked for.
    read_size: usize,
    /// The current segment's length when last looked at.
    seg_len: u64,
    /// The log offset past which nothing is read (see [`SeqReader::bound`]).
    end: Option<u64>,
}

impl SeqReader {
    /// Starts at a log offset (which must be a record boundary or the end of the log).
    pub fn new(segments: Vec<Arc<Segment>>, log_offset: u64) -> SeqReader {
        let i = segments.partition_point(|s| s.base_offset <= log_offset);
        let seg = i.saturating_sub(1);
        let at = segments
            .get(seg)
            .map_or(SEGMENT_HEADER_LEN, |s| s.file_offset(log_offset));
        SeqReader {
            segments,
            seg,
            at,
            chunk: Bytes::new(),
            previous: Bytes::new(),
            spare: BytesMut::new(),
            chunk_at: 0,
            chunk_size: 16 << 10,
            read_size: 0,
            seg_len: 0,
            end: None,
        }
    }

    /// Reads no byte at or past this log offset: the end of what is synced, for a reader that
    /// follows the log. What lies beyond in the file (records not synced yet, preallocated
    /// zeros) is never read, so a reader near the end of the log holds only what it uses.
    pub fn bound(&mut self, log_end: u64) {
        self.end = Some(log_end);
    }

    /// The file offset of the current segment that reading stops at, if any.
    fn file_end(&self) -> Option<u64> {
        let end = self.end?;
        let seg = self.segments.get(self.seg)?;
        if end < seg.base_offset {
            return Some(SEGMENT_HEADER_LEN);
        }
        let next = self.segments.get(self.seg + 1).map(|s| s.base_offset);
        next.is_none_or(|n| end < n).then(|| seg.file_offset(end))
    }

    /// The log offset of the next record.
    pub fn log_offset(&self) -> u64 {
        self.segments
            .get(self.seg)
            .map_or(0, |s| s.base_offset + self.at - SEGMENT_HEADER_LEN)
    }

    /// A `Corruption` error naming the file and file offset of a log offset.
    pub fn corruption_at(&self, log_offset: u64, problem: impl Into<String>) -> Error {
        super::corruption_at(&self.segments, log_offset, problem)
    }

    /// The `Corruption` error of a record `next_record` found torn.
    pub fn torn_at(&self, segment: usize, file_offset: u64, problem: String) -> Error {
        Error::Corruption {
            file: self
                .segments
                .get(segment)
                .map_or_else(|| "segments".into(), |s| s.path.display().to_string()),
            offset: file_offset,
            problem,
        }
    }

    /// True when the reader reads in bulk: its last refill read at least [`BULK`] bytes, as
    /// long sequential reads soon do (a refill reads twice as much as the one before, up to
    /// 1 MiB). The records handed out then sit in a large buffer that their events may share
    /// at little cost, as the read goes on to use most of it.
    pub fn bulk(&self) -> bool {
        self.read_size >= BULK
    }

    /// The segment being read and the file offset in it.
    pub fn position(&self) -> (usize, u64) {
        (self.seg, self.at)
    }

    /// Makes `chunk` hold file bytes `[at, at + n)` of the current segment, as far as the
    /// file has them; returns how many it holds.
    fn fill(&mut self, at: u64, n: usize) -> Result<usize> {
        let have_start = at >= self.chunk_at;
        let have_end = at + n as u64 <= self.chunk_at + self.chunk.len() as u64;
        if have_start && have_end {
            return Ok(n);
        }
        let mut want = n.max(self.chunk_size);
        if let Some(file_end) = self.file_end() {
            want = want.min(file_end.saturating_sub(at) as usize);
            if want == 0 {
                return Ok(0);
            }
        }
        self.read_size = want;
        // Short reads stay cheap; long sequential reads grow the buffer to 1 MiB.
        self.chunk_size = (self.chunk_size * 2).min(1 << 20);
        self.reclaim();
        if self.spare.len() < want {
            self.spare = BytesMut::zeroed(want);
        }
        let seg = &self.segments[self.seg];
        let buf = &mut self.spare[..want];
        let mut got = 0;
        while got < want {
            let r = seg
                .file
                .read_at(&mut buf[got..], at + got as u64)
                .map_err(|e| Error::io(format!("reading {}", seg.path.display()), e))?;
            if r == 0 {
                break;
            }
            got += r;
        }
        self.chunk = self.spare.split_to(got).freeze();
        self.chunk_at = at;
        Ok(got.min(n))
    }

    /// Takes the memory of the chunk before the last back into `spare` when nothing else
    /// holds it.
    fn reclaim(&mut self) {
        let older = std::mem::replace(&mut self.previous, std::mem::take(&mut self.chunk));
        let Ok(back) = older.try_into_mut() else {
            return;
        };
        if back.len() >= self.spare.len() {
            self.spare = back;
        }
    }

    /// The next record, the end, or a torn record.
    pub fn next_record(&mut self) -> Result<Next> {
        loop {
            if self.seg >= self.segments.len() {
                return Ok(Next::End);
            }
            let at = self.at;
            let got = self.fill(at, FRAME_HEADER_LEN)?;
            if got == 0 {
                if self.seg + 1 < self.segments.len() {
                    self.seg += 1;
                    self.at = SEGMENT_HEADER_LEN;
                    self.chunk.clear();
                    self.seg_len = 0;
                    continue;
                }
                return Ok(Next::End);
            }
            let torn = |problem: String, s: &Self| Next::Torn {
                segment: s.seg,
                file_offset: at,
                problem,
            };
            if got < FRAME_HEADER_LEN {
                return Ok(torn(format!("record header cut short ({got} bytes)"), self));
            }
            let off = (at - self.chunk_at) as usize;
            let mut h = [0u8; FRAME_HEADER_LEN];
            h.copy_from_slice(&self.chunk[off..off + FRAME_HEADER_LEN]);
            let (len, crc) = frame_header(&h);
            if h == [0; FRAME_HEADER_LEN] {
                // Zeros where a record would start: the preallocated rest of the active
                // segment. Elsewhere it is damage. What is cached from here on may be
                // zeros that records have since replaced: read it again next time.
                self.chunk.truncate(off);
                if self.seg + 1 == self.segments.len() {
                    return Ok(Next::End);
                }
                return Ok(torn("zeros where a record should start".into(), self));
            }
            let total = FRAME_HEADER_LEN + len as usize;
            // Never trust a length read from disk with an allocation: check it against the
            // file first.
            if at + total as u64 > self.seg_len {
                let seg = &self.segments[self.seg];
                self.seg_len = seg
                    .file
                    .len()
                    .map_err(|e| Error::io(format!("reading {}", seg.path.display()), e))?;
            }
            let file_len = self.seg_len;
            if at + total as u64 > file_len {
                return Ok(torn(
                    format!(
                        "record of {len} bytes runs past the end of the file ({file_len} bytes)"
                    ),
                    self,
                ));
            }
            let got = self.fill(at, total)?;
            if got < total {
                return Ok(torn(
                    format!("record of {len} bytes cut short at {got} bytes"),
                    self,
                ));
            }
            let off = (at - self.chunk_at) as usize;
            let payload_start = off + FRAME_HEADER_LEN;
            if frame_crc(len, &self.chunk[payload_start..off + total]) != crc {
                return Ok(torn("record checksum mismatch".into(), self));
            }
            let log_offset = self.log_offset();
            self.at += total as u64;
            return Ok(Next::Record(
                log_offset,
                self.chunk.slice(payload_start..off + total),
            ));
        }
    }
}
