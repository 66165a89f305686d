//! Offline verification of a store folder, and offline iteration of its events. Neither
//! changes anything on disk, so both are safe on a store that another process has open.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use annal_core::{Error, RecordedEvent, Result};

use crate::checkpoint::Manifest;
use crate::heads::{categories_of, next_head, open_chain, read_chain, Head};
use crate::index::{decoded_batch_entries, merge_runs, Entry, Run};
use crate::io::{Fs, StdFs};
use crate::layout::{run_path, segments_dir, snapshot_file_path, snapshots_dir};
use crate::log::format::{decode_batch, SEGMENT_HEADER_LEN};
use crate::log::{
    header_mismatches, intact_record_after, read_header, segment_files, tail_after, Next, Segment,
    SeqReader, Tail,
};
use crate::snapshots::file as snapfile;

/// What `check` found.
#[derive(Debug, Default)]
pub struct CheckReport {
    pub segments: usize,
    pub events: u64,
    pub streams: u64,
    pub bytes: u64,
    pub index_entries: u64,
    /// Snapshots kept.
    pub snapshots: u64,
    /// Damage: the store is not what it should be.
    pub problems: Vec<String>,
    /// Findings that the next open repairs by itself (a torn tail).
    pub notes: Vec<String>,
}

impl CheckReport {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// An order-independent digest of a set of index entries, per kind.
#[derive(Default, PartialEq, Eq, Clone, Copy, Debug)]
struct Digest {
    count: u64,
    sum: u64,
    xor: u64,
}

impl Digest {
    fn add(&mut self, e: &Entry) {
        let mut b = [0u8; 24];
        b[0..8].copy_from_slice(&e.key.to_le_bytes());
        b[8..16].copy_from_slice(&e.seq.to_le_bytes());
        b[16..24].copy_from_slice(&e.value.to_le_bytes());
        let h = xxhash_rust::xxh3::xxh3_64(&b);
        self.count += 1;
        self.sum = self.sum.wrapping_add(h);
        self.xor ^= h.rotate_left(17);
    }
}

fn kind_name(kind: u8) -> &'static str {
    match kind {
        1 => "stream",
        2 => "category",
        3 => "event type",
        4 => "tag",
        5 => "event id",
        6 => "batch",
        7 => "time",
        _ => "unknown",
    }
}

/// Opens the segment files without changing anything.
fn segments(fs: &dyn Fs, dir: &Path, report: &mut CheckReport) -> Result<Vec<Arc<Segment>>> {
    let sdir = segments_dir(dir);
    if !fs.exists(&sdir) {
        return Err(Error::NotFound(format!(
            "{} is not an annal store (no segments folder)",
            dir.display()
        )));
    }
    let names = segment_files(fs, dir)?;
    let mut out: Vec<Arc<Segment>> = Vec::new();
    let count = names.len();
    for (i, (first, path)) in names.into_iter().enumerate() {
        let file = fs
            .open(&path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        let len = file.len().unwrap_or(0);
        report.bytes += len;
        let h = match read_header(&file) {
            Ok(h) => h,
            Err(problem) if i + 1 == count && len <= SEGMENT_HEADER_LEN => {
                report.notes.push(format!(
                    "{}: {problem} (a segment being created when the store stopped; removed on open)",
                    path.display()
                ));
                continue;
            }
            Err(problem) => {
                report
                    .problems
                    .push(format!("{}: {problem}", path.display()));
                continue;
            }
        };
        for (_, problem) in header_mismatches(&path, &h, first, out.last().map(|s| &**s))? {
            report
                .problems
                .push(format!("{}: {problem}", path.display()));
        }
        out.push(Arc::new(Segment {
            first_position: h.first_position,
            base_offset: h.base_offset,
            file,
            path,
        }));
    }
    report.segments = out.len();
    Ok(out)
}

/// Verifies a store folder: segment headers and continuity, every record's frame and
/// checksum, gapless positions and revisions, non-decreasing times, and that the
/// checkpointed indexes and stream heads agree with the log. `progress` is called with
/// (bytes read, total bytes).
pub fn check(dir: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<CheckReport> {
    let fs = StdFs;
    let mut report = CheckReport::default();
    let segs = segments(&fs, dir, &mut report)?;
    let manifest = match Manifest::load(&fs, dir) {
        Ok(m) => m,
        // Derived data: the next open rebuilds a checkpoint of an older version.
        Err(e) if older(&e).is_some() => {
            report.notes.push(older_note(
                &e,
                "checkpoint version",
                "rebuilds it from the log",
            ));
            None
        }
        Err(e) => {
            report.problems.push(format!("manifest: {e}"));
            None
        }
    };
    let mut expected: HashMap<u8, Digest> = HashMap::new();
    let mut heads_at_checkpoint: Option<BTreeMap<String, Head>> = None;
    let mut heads: BTreeMap<String, Head> = BTreeMap::new();
    let mut next_position = 0u64;
    let mut last_time = i64::MIN;
    let total = report.bytes.max(1);
    let mut entries = Vec::new();
    let mut reader = SeqReader::new(segs.clone(), 0);
    let checkpoint_at = manifest.as_ref().map_or(0, |m| m.next_position);
    if checkpoint_at == 0 {
        heads_at_checkpoint = Some(BTreeMap::new());
    }
    let mut done_bytes = 0u64;
    loop {
        let next = reader.next_record()?;
        match next {
            Next::End => {
                // What follows the end in the last segment: preallocated zeros, a tail cut
                // off on the next open, or damage if an intact later record follows.
                let (segment, at) = reader.position();
                if let Some(seg) = segs.get(segment) {
                    match tail_after(seg, at, next_position)? {
                        Tail::Clear => {}
                        Tail::Torn => report.notes.push(format!(
                            "{} at offset {at}: bytes of an unfinished write after the end of the log; cut off on the next open",
                            seg.path.display()
                        )),
                        Tail::Damage(later) => report.problems.push(format!(
                            "{} at offset {at}: the log ends in zeros, but an intact record with acknowledged events follows at offset {later}",
                            seg.path.display()
                        )),
                    }
                }
                break;
            }
            Next::Torn {
                segment,
                file_offset,
                problem,
            } => {
                let seg = &segs[segment];
                let covered = manifest
                    .as_ref()
                    .is_some_and(|m| next_position < m.next_position);
                let later = intact_record_after(seg, file_offset, next_position)?;
                if covered || later.is_some() {
                    report.problems.push(format!(
                        "{} at offset {file_offset}: {problem}; acknowledged events {}",
                        seg.path.display(),
                        match later {
                            Some(l) => format!("follow (an intact record at offset {l})"),
                            None => format!(
                                "up to position {} are covered by the checkpoint",
                                checkpoint_at.saturating_sub(1)
                            ),
                        }
                    ));
                } else if segment + 1 == segs.len() {
                    report.notes.push(format!(
                        "{} at offset {file_offset}: {problem}; this unacknowledged tail is cut off on the next open",
                        seg.path.display()
                    ));
                } else {
                    report.problems.push(format!(
                        "{} at offset {file_offset}: {problem}, and later segments follow",
                        seg.path.display()
                    ));
                }
                break;
            }
            Next::Record(offset, payload) => {
                done_bytes += payload.len() as u64 + 8;
                let events = match decode_batch(&payload) {
                    Ok(ev) if !ev.is_empty() => ev,
                    Ok(_) => {
                        report
                            .problems
                            .push(format!("log offset {offset}: empty batch"));
                        break;
                    }
                    Err(e) => {
                        report
                            .problems
                            .push(format!("log offset {offset}: {}", e.0));
                        break;
                    }
                };
                let first = events[0].position;
                if first != next_position {
                    report.problems.push(format!(
                        "log offset {offset}: batch starts at position {first}, expected {next_position}"
                    ));
                    break;
                }
                let at = events[0].recorded_at.0;
                if at < last_time {
                    report.problems.push(format!(
                        "position {first}: recorded at {} is earlier than the batch before",
                        events[0].recorded_at
                    ));
                }
                last_time = at;
                let last = first + events.len() as u64 - 1;
                entries.clear();
                decoded_batch_entries(&mut entries, &events, offset);
                // Events of no stream count their revisions from 0 in every record.
                let mut no_stream_next = 0;
                for e in &events {
                    let want = if e.stream_id.is_empty() {
                        no_stream_next
                    } else {
                        heads.get(&*e.stream_id).map_or(0, |h| h.revision + 1)
                    };
                    if e.revision != want {
                        report.problems.push(format!(
                            "position {}: stream '{}' has revision {}, expected {want}",
                            e.position, e.stream_id, e.revision
                        ));
                    }
                    if e.stream_id.is_empty() {
                        no_stream_next = e.revision + 1;
                    } else {
                        let prior = heads.get(&*e.stream_id).copied();
                        heads.insert(e.stream_id.to_string(), next_head(prior, e));
                    }
                }
                if last < checkpoint_at {
                    for en in &entries {
                        expected.entry(en.kind()).or_default().add(en);
                    }
                }
                next_position = last + 1;
                report.events += events.len() as u64;
                if next_position == checkpoint_at {
                    heads_at_checkpoint = Some(heads.clone());
                }
                if report.events % 4096 < events.len() as u64 {
                    progress(done_bytes, total);
                }
            }
        }
    }
    progress(total, total);
    report.streams = heads.len() as u64;
    check_snapshots(&fs, dir, &heads, &mut report)?;
    if let Some(m) = manifest {
        check_checkpoint(
            &fs,
            dir,
            &m,
            next_position,
            &expected,
            heads_at_checkpoint,
            &mut report,
        );
    }
    Ok(report)
}

/// Verifies the snapshot file: its header, every group as recovery reads it (a torn last
/// group is a note, damage a problem), and that each kept snapshot is of a revision its
/// stream has reached.
fn check_snapshots(
    fs: &dyn Fs,
    dir: &Path,
    heads: &BTreeMap<String, Head>,
    report: &mut CheckReport,
) -> Result<()> {
    let (newest, stale) = crate::snapshots::files(fs, dir)?;
    for name in stale {
        report.notes.push(format!(
            "{}: left by an interrupted snapshot compaction; removed on the next open",
            snapshots_dir(dir).join(name).display()
        ));
    }
    let Some(id) = newest else {
        return Ok(());
    };
    let path = snapshot_file_path(dir, id);
    let shown = path.display();
    let file = fs
        .open(&path)
        .map_err(|e| Error::io(format!("opening {shown}"), e))?;
    let len = file
        .len()
        .map_err(|e| Error::io(format!("reading {shown}"), e))?;
    let mut header = [0u8; snapfile::HEADER_LEN as usize];
    if len < snapfile::HEADER_LEN || file.read_exact_at(&mut header, 0).is_err() {
        report
            .problems
            .push(format!("{shown}: shorter than its header"));
        return Ok(());
    }
    match snapfile::check_header(&header) {
        Ok(()) => {}
        Err(Some(v)) if v < snapfile::VERSION => {
            report.notes.push(format!(
                "{shown}: snapshot file version {v}, older than this build's {}; the next open drops its snapshots (loads replay)",
                snapfile::VERSION
            ));
            return Ok(());
        }
        Err(version) => {
            report.problems.push(match version {
                Some(v) => format!(
                    "{shown}: snapshot file version {v}, but this build reads version {}",
                    snapfile::VERSION
                ),
                None => format!("{shown}: not a snapshot file header"),
            });
            return Ok(());
        }
    }
    let table = match crate::snapshots::scan(&*file, &path) {
        Ok(scanned) => {
            if let Some((offset, problem)) = scanned.torn {
                report.notes.push(format!(
                    "{shown} at offset {offset}: {problem}; cut off on the next open"
                ));
            }
            scanned.table
        }
        Err(e @ Error::Corruption { .. }) => {
            report.problems.push(e.to_string());
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    report.snapshots = table.count() as u64;
    let mut streams: Vec<_> = table.streams.iter().collect();
    streams.sort_by(|a, b| a.0.cmp(b.0));
    for (stream, list) in streams {
        let Some(last) = list.last() else { continue };
        match heads.get(&**stream) {
            None => report.problems.push(format!(
                "a snapshot of stream '{stream}' at revision {}, but the stream has no event",
                last.revision
            )),
            Some(h) if last.revision > h.revision => report.problems.push(format!(
                "a snapshot of stream '{stream}' at revision {}, but the stream ends at revision {}",
                last.revision, h.revision
            )),
            Some(_) => {}
        }
    }
    Ok(())
}

/// The file, version found and version read of a derived file older than this build reads.
fn older(e: &Error) -> Option<(&str, u32, u32)> {
    match e {
        Error::UnsupportedFormat {
            path,
            found,
            supported,
        } if found < supported => Some((path, *found, *supported)),
        _ => None,
    }
}

/// The note for a derived file of an older version: `what` it is, what the next open does.
fn older_note(e: &Error, what: &str, next_open: &str) -> String {
    let (path, found, supported) = older(e).unwrap_or_default();
    format!(
        "{path}: {what} {found}, older than this build's {supported}; the next open {next_open}"
    )
}

fn check_checkpoint(
    fs: &dyn Fs,
    dir: &Path,
    m: &Manifest,
    log_end_position: u64,
    expected: &HashMap<u8, Digest>,
    heads_at_checkpoint: Option<BTreeMap<String, Head>>,
    report: &mut CheckReport,
) {
    if m.next_position > log_end_position {
        report.problems.push(format!(
            "the checkpoint covers positions up to {}, but the log ends at {log_end_position}: acknowledged events are missing",
            m.next_position
        ));
        return;
    }
    let mut runs = Vec::new();
    for id in &m.runs {
        match Run::open(fs, &run_path(dir, *id), *id) {
            Ok(r) => runs.push(Arc::new(r)),
            Err(e) if older(&e).is_some() => report.notes.push(older_note(
                &e,
                "index run of version",
                "rebuilds the indexes from the log",
            )),
            Err(e) => report.problems.push(format!("index run {id}: {e}")),
        }
    }
    if runs.len() == m.runs.len() {
        let mut found: HashMap<u8, Digest> = HashMap::new();
        let mut prev: Option<Entry> = None;
        for e in merge_runs(&runs) {
            match e {
                Ok(e) => {
                    if prev.is_some_and(|p| p == e) {
                        report
                            .problems
                            .push(format!("index entry {e:?} appears twice"));
                    }
                    prev = Some(e);
                    found.entry(e.kind()).or_default().add(&e);
                    report.index_entries += 1;
                }
                Err(e) => {
                    report.problems.push(format!("index runs unreadable: {e}"));
                    return;
                }
            }
        }
        for kind in 1..=7u8 {
            let (want, got) = (
                expected.get(&kind).copied().unwrap_or_default(),
                found.get(&kind).copied().unwrap_or_default(),
            );
            if want != got {
                report.problems.push(format!(
                    "the {} index disagrees with the log: {} entries indexed, {} expected from the log",
                    kind_name(kind),
                    got.count,
                    want.count
                ));
            }
        }
    }
    let files = match open_chain(fs, dir, &m.heads) {
        Ok(files) => files,
        Err(e) if older(&e).is_some() => {
            report.notes.push(older_note(
                &e,
                "stream heads file of version",
                "rebuilds the checkpoint from the log",
            ));
            return;
        }
        Err(e) => {
            report.problems.push(format!("stream heads: {e}"));
            return;
        }
    };
    match read_chain(&files) {
        Ok(stored) => {
            let Some(want) = heads_at_checkpoint else {
                return;
            };
            if stored != want {
                let differing = want
                    .iter()
                    .find(|(id, h)| stored.get(*id) != Some(h))
                    .map(|(id, _)| id.clone())
                    .or_else(|| stored.keys().find(|id| !want.contains_key(*id)).cloned())
                    .unwrap_or_default();
                report.problems.push(format!(
                    "the stream heads files disagree with the log (first difference: stream '{differing}')"
                ));
            }
            let categories: BTreeMap<_, _> = files
                .last()
                .map(|f| f.categories.iter().cloned().collect())
                .unwrap_or_default();
            if categories != categories_of(&want) {
                report.problems.push(
                    "the category counts of the stream heads files disagree with the log".into(),
                );
            }
        }
        Err(e) => report.problems.push(format!("stream heads: {e}")),
    }
}

/// Calls `f` with every event from `from` on, in log order, reading the segment files
/// directly; stops when `f` returns false. A torn tail ends the iteration quietly.
pub fn scan_events(dir: &Path, from: u64, f: &mut dyn FnMut(RecordedEvent) -> bool) -> Result<()> {
    let fs = StdFs;
    let mut report = CheckReport::default();
    let segs = segments(&fs, dir, &mut report)?;
    let start = segs
        .partition_point(|s| s.first_position <= from)
        .saturating_sub(1);
    let base = segs.get(start).map_or(0, |s| s.base_offset);
    let mut reader = SeqReader::new(segs, base);
    loop {
        match reader.next_record()? {
            Next::Record(offset, payload) => {
                let events =
                    decode_batch(&payload).map_err(|e| reader.corruption_at(offset, e.0))?;
                for e in events {
                    if e.position >= from && !f(e) {
                        return Ok(());
                    }
                }
            }
            Next::End | Next::Torn { .. } => return Ok(()),
        }
    }
}
