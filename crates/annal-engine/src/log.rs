//! The segment log: a folder of segment files, each named by its first position, holding
//! framed batch records back to back (see [`crate::format`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use annal_core::{Error, Result};

use crate::format::{frame_crc, frame_header, SegmentHeader, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN};
use crate::io::{FileRef, Fs};

/// One segment file.
pub struct Segment {
    pub first_position: u64,
    /// Log offset of the segment's first record.
    pub base_offset: u64,
    pub file: FileRef,
    pub path: PathBuf,
}

impl Segment {
    /// The file offset of a log offset in this segment.
    pub fn file_offset(&self, log_offset: u64) -> u64 {
        log_offset - self.base_offset + SEGMENT_HEADER_LEN
    }
}

/// The file name of the segment that starts at `first_position`.
pub fn segment_name(first_position: u64) -> String {
    format!("{first_position:020}.seg")
}

/// Parses a segment file name.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segments, in order.
#[derive(Default)]
pub struct Log {
    pub segments: RwLock<Vec<Arc<Segment>>>,
}

fn corrupt(seg: &Segment, offset: u64, problem: impl Into<String>) -> Error {
    Error::Corruption {
        file: seg.path.display().to_string(),
        offset,
        problem: problem.into(),
    }
}

/// What a sequential read found at the next record.
pub enum Next<'a> {
    /// A record: its log offset and payload.
    Record(u64, &'a [u8]),
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

impl Log {
    /// The segment holding a log offset.
    pub fn segment_for(&self, log_offset: u64) -> Option<Arc<Segment>> {
        let segs = self.segments.read().unwrap_or_else(|e| e.into_inner());
        let i = segs.partition_point(|s| s.base_offset <= log_offset);
        i.checked_sub(1).map(|i| segs[i].clone())
    }

    pub fn segment_list(&self) -> Vec<Arc<Segment>> {
        self.segments
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads and checks the record at a log offset. Returns its payload and the log offset of
    /// the record after it.
    pub fn read_record(&self, log_offset: u64) -> Result<(Vec<u8>, u64)> {
        let seg = self
            .segment_for(log_offset)
            .ok_or_else(|| Error::Corruption {
                file: "segments".into(),
                offset: log_offset,
                problem: "no segment holds this log offset".into(),
            })?;
        let at = seg.file_offset(log_offset);
        let mut h = [0u8; FRAME_HEADER_LEN];
        seg.file
            .read_exact_at(&mut h, at)
            .map_err(|e| corrupt(&seg, at, format!("record header unreadable: {e}")))?;
        let (len, crc) = frame_header(&h);
        let file_len = seg
            .file
            .len()
            .map_err(|e| Error::io(format!("reading {}", seg.path.display()), &e))?;
        if at + FRAME_HEADER_LEN as u64 + u64::from(len) > file_len {
            return Err(corrupt(
                &seg,
                at,
                format!("record of {len} bytes runs past the end of the file"),
            ));
        }
        let mut payload = vec![0u8; len as usize];
        seg.file
            .read_exact_at(&mut payload, at + FRAME_HEADER_LEN as u64)
            .map_err(|e| corrupt(&seg, at, format!("record of {len} bytes unreadable: {e}")))?;
        if frame_crc(len, &payload) != crc {
            return Err(corrupt(&seg, at, "record checksum mismatch"));
        }
        Ok((
            payload,
            log_offset + FRAME_HEADER_LEN as u64 + u64::from(len),
        ))
    }
}

/// Reads records in order through a large buffer.
pub struct SeqReader {
    segments: Vec<Arc<Segment>>,
    seg: usize,
    /// File offset of the next record in the current segment.
    at: u64,
    chunk: Vec<u8>,
    chunk_at: u64,
    chunk_size: usize,
    /// The current segment's length when last looked at.
    seg_len: u64,
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
            chunk: Vec::new(),
            chunk_at: 0,
            chunk_size: 16 << 10,
            seg_len: 0,
        }
    }

    /// The log offset of the next record.
    pub fn log_offset(&self) -> u64 {
        self.segments
            .get(self.seg)
            .map_or(0, |s| s.base_offset + self.at - SEGMENT_HEADER_LEN)
    }

    /// The segment being read and the file offset in it.
    pub fn position(&self) -> (usize, u64) {
        (self.seg, self.at)
    }

    /// Makes `chunk` hold file bytes `[at, at + n)` of the current segment, as far as the
    /// file has them; returns how many it holds.
    fn fill(&mut self, at: u64, n: usize) -> Result<usize> {
        let seg = &self.segments[self.seg];
        let have_start = at >= self.chunk_at;
        let have_end = at + n as u64 <= self.chunk_at + self.chunk.len() as u64;
        if have_start && have_end {
            return Ok(n);
        }
        let want = n.max(self.chunk_size);
        // Short reads stay cheap; long sequential reads grow the buffer to 1 MiB.
        self.chunk_size = (self.chunk_size * 2).min(1 << 20);
        self.chunk.resize(want, 0);
        let mut got = 0;
        while got < want {
            let r = seg
                .file
                .read_at(&mut self.chunk[got..], at + got as u64)
                .map_err(|e| Error::io(format!("reading {}", seg.path.display()), &e))?;
            if r == 0 {
                break;
            }
            got += r;
        }
        self.chunk.truncate(got);
        self.chunk_at = at;
        Ok(got.min(n))
    }

    /// The next record, the end, or a torn record.
    pub fn next_record(&mut self) -> Result<Next<'_>> {
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
                    .map_err(|e| Error::io(format!("reading {}", seg.path.display()), &e))?;
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
                &self.chunk[payload_start..off + total],
            ));
        }
    }
}

/// The segment files of a store, sorted by first position: (first position, path).
pub fn segment_files(fs: &dyn Fs, dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let sdir = segments_dir(dir);
    let mut names: Vec<(u64, PathBuf)> = fs
        .list(&sdir)
        .map_err(|e| Error::io(format!("listing {}", sdir.display()), &e))?
        .into_iter()
        .filter_map(|n| parse_segment_name(&n).map(|p| (p, sdir.join(n))))
        .collect();
    names.sort();
    Ok(names)
}

/// Reads and decodes a segment file's header; the problem as text when it is unusable.
pub fn read_header(file: &FileRef) -> std::result::Result<SegmentHeader, String> {
    let mut raw = [0u8; SEGMENT_HEADER_LEN as usize];
    file.read_exact_at(&mut raw, 0)
        .map_err(|e| format!("segment header unreadable: {e}"))?;
    SegmentHeader::decode(&raw).map_err(|e| e.0)
}

/// Checks a segment's header against its file name and the segment before it. Another
/// format version is an error; any other disagreement is returned as (offset in the header,
/// problem), for the caller to refuse or report.
pub fn header_mismatches(
    path: &Path,
    header: &SegmentHeader,
    first: u64,
    prev: Option<&Segment>,
) -> Result<Vec<(u64, String)>> {
    if header.version != crate::format::FORMAT_VERSION {
        return Err(Error::UnsupportedFormat {
            path: path.display().to_string(),
            found: header.version,
            supported: crate::format::FORMAT_VERSION,
        });
    }
    let mut out = Vec::new();
    if header.first_position != first {
        out.push((
            16,
            format!(
                "header says first position {}, the file name says {first}",
                header.first_position
            ),
        ));
    }
    if let Some(prev) = prev {
        let len = prev
            .file
            .len()
            .map_err(|e| Error::io(format!("reading {}", prev.path.display()), &e))?;
        let expected = prev.base_offset + len.saturating_sub(SEGMENT_HEADER_LEN);
        if header.base_offset != expected {
            out.push((
                24,
                format!(
                    "segment starts at log offset {}, but the one before ends at {expected}",
                    header.base_offset
                ),
            ));
        }
    }
    Ok(out)
}

/// `segments/` below the store folder.
pub fn segments_dir(dir: &Path) -> PathBuf {
    dir.join("segments")
}

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
    let io = |e: std::io::Error| Error::io(format!("reading {}", seg.path.display()), &e);
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
        .map_err(|e| Error::io(format!("reading {}", seg.path.display()), &e))?;
    if len <= file_offset + 1 {
        return Ok(None);
    }
    let damaged_at = seg.base_offset + file_offset - SEGMENT_HEADER_LEN;
    let mut rest = vec![0u8; (len - file_offset) as usize];
    seg.file
        .read_exact_at(&mut rest, file_offset)
        .map_err(|e| Error::io(format!("reading {}", seg.path.display()), &e))?;
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
        if let Ok(b) = crate::format::decode_batch_header(payload) {
            if b.first_position > expected && b.synced_up_to > damaged_at {
                return Ok(Some(file_offset + start as u64));
            }
        }
    }
    Ok(None)
}
