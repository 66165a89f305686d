//! The segment log: a folder of segment files, each named by its first position, holding
//! framed batch records back to back (`format.rs` has the bytes). `reader.rs` reads records
//! in order, `tail.rs` tells what follows the end of the log.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use annal_core::{Error, Result};

use crate::io::{FileRef, Fs};
use crate::layout::{parse_segment_name, segment_path, segments_dir};

pub mod format;
mod reader;
mod tail;

use format::{frame_crc, frame_header, SegmentHeader, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN};
pub use reader::{Next, SeqReader};
pub use tail::{intact_record_after, tail_after, Tail};

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

/// The segments, in order.
#[derive(Default)]
pub struct Log {
    pub segments: RwLock<Vec<Arc<Segment>>>,
}

/// A `Corruption` error naming the segment file that holds `log_offset` and the offset in
/// that file.
pub fn corruption_at(
    segments: &[Arc<Segment>],
    log_offset: u64,
    problem: impl Into<String>,
) -> Error {
    let i = segments.partition_point(|s| s.base_offset <= log_offset);
    match i.checked_sub(1).map(|i| &segments[i]) {
        Some(seg) => corrupt(seg, seg.file_offset(log_offset), problem),
        None => Error::Corruption {
            file: "segments".into(),
            offset: log_offset,
            problem: format!(
                "{} (no segment holds log offset {log_offset})",
                problem.into()
            ),
        },
    }
}

fn corrupt(seg: &Segment, offset: u64, problem: impl Into<String>) -> Error {
    Error::Corruption {
        file: seg.path.display().to_string(),
        offset,
        problem: problem.into(),
    }
}

impl Log {
    pub fn new(segments: Vec<Arc<Segment>>) -> Log {
        Log {
            segments: RwLock::new(segments),
        }
    }

    /// A `Corruption` error naming the file and file offset of a log offset.
    pub fn corruption_at(&self, log_offset: u64, problem: impl Into<String>) -> Error {
        let segs = self.segments.read().unwrap_or_else(|e| e.into_inner());
        corruption_at(&segs, log_offset, problem)
    }

    pub fn segment_list(&self) -> Vec<Arc<Segment>> {
        self.segments
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The segment holding a log offset, and where the next one starts (`None` for the last).
    fn segment_span(&self, log_offset: u64) -> Option<(Arc<Segment>, Option<u64>)> {
        let segs = self.segments.read().unwrap_or_else(|e| e.into_inner());
        let i = segs.partition_point(|s| s.base_offset <= log_offset);
        let seg = segs.get(i.checked_sub(1)?)?.clone();
        Some((seg, segs.get(i).map(|s| s.base_offset)))
    }

    /// Reads and checks the record at a log offset, which must end by `end` (the durable end
    /// of the log). Returns its payload and the log offset of the record after it.
    ///
    /// One read takes the header and, for most records, the whole of it.
    pub fn read_record(&self, log_offset: u64, end: u64) -> Result<(annal_core::Bytes, u64)> {
        let (seg, next) = self
            .segment_span(log_offset)
            .ok_or_else(|| Error::Corruption {
                file: "segments".into(),
                offset: log_offset,
                problem: "no segment holds this log offset".into(),
            })?;
        let at = seg.file_offset(log_offset);
        // A record never spans segments.
        let room = next.unwrap_or(end).min(end).saturating_sub(log_offset);
        if room < FRAME_HEADER_LEN as u64 {
            return Err(corrupt(
                &seg,
                at,
                "no record starts this close to the end of the log",
            ));
        }
        let mut first = vec![0u8; room.min(FIRST_READ) as usize];
        seg.file
            .read_exact_at(&mut first, at)
            .map_err(|e| corrupt(&seg, at, format!("record unreadable: {e}")))?;
        let mut h = [0u8; FRAME_HEADER_LEN];
        h.copy_from_slice(&first[..FRAME_HEADER_LEN]);
        let (len, crc) = frame_header(&h);
        let whole = FRAME_HEADER_LEN as u64 + u64::from(len);
        if whole > room {
            return Err(corrupt(
                &seg,
                at,
                format!("record of {len} bytes runs past the end of the log"),
            ));
        }
        let payload: annal_core::Bytes = if whole as usize <= first.len() {
            annal_core::Bytes::copy_from_slice(&first[FRAME_HEADER_LEN..whole as usize])
        } else {
            let mut payload = vec![0u8; len as usize];
            let have = first.len() - FRAME_HEADER_LEN;
            payload[..have].copy_from_slice(&first[FRAME_HEADER_LEN..]);
            seg.file
                .read_exact_at(&mut payload[have..], at + first.len() as u64)
                .map_err(|e| corrupt(&seg, at, format!("record of {len} bytes unreadable: {e}")))?;
            payload.into()
        };
        if frame_crc(len, &payload) != crc {
            return Err(corrupt(&seg, at, "record checksum mismatch"));
        }
        Ok((payload, log_offset + whole))
    }
}

/// Bytes read at once for a record read by position: the header and most records.
const FIRST_READ: u64 = 4096;

/// Creates a segment file with its header, durably.
pub fn create_segment(
    fs: &dyn Fs,
    dir: &Path,
    first_position: u64,
    base_offset: u64,
) -> Result<Arc<Segment>> {
    let io =
        |op: &str, path: &Path, e: std::io::Error| Error::io(format!("{op} {}", path.display()), e);
    let sdir = segments_dir(dir);
    let path = segment_path(dir, first_position);
    let file = fs.create(&path).map_err(|e| io("creating", &path, e))?;
    let header = SegmentHeader {
        version: format::FORMAT_VERSION,
        first_position,
        base_offset,
        created_at: annal_core::Timestamp::now().0,
    };
    file.write_all_at(&header.encode(), 0)
        .map_err(|e| io("writing", &path, e))?;
    file.sync_data().map_err(|e| io("syncing", &path, e))?;
    fs.sync_dir(&sdir).map_err(|e| io("syncing", &sdir, e))?;
    Ok(Arc::new(Segment {
        first_position,
        base_offset,
        file,
        path,
    }))
}

/// The segment files of a store, sorted by first position: (first position, path).
pub fn segment_files(fs: &dyn Fs, dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let sdir = segments_dir(dir);
    let mut names: Vec<(u64, PathBuf)> = fs
        .list(&sdir)
        .map_err(|e| Error::io(format!("listing {}", sdir.display()), e))?
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
    if header.version != format::FORMAT_VERSION {
        return Err(Error::UnsupportedFormat {
            path: path.display().to_string(),
            found: header.version,
            supported: format::FORMAT_VERSION,
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
            .map_err(|e| Error::io(format!("reading {}", prev.path.display()), e))?;
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
