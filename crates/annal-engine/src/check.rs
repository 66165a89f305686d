//! Offline verification of a store folder, and offline iteration of its events. Neither
//! changes anything on disk, so both are safe on a store that another process has open.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use annal_core::{Error, RecordedEvent, Result};

use crate::checkpoint::Manifest;
use crate::heads::{categories_of, next_head, open_chain, scan_chain, Head};
use crate::index::{decoded_batch_entries, merge_runs, Entry, Run};
use crate::io::{Fs, StdFs};
use crate::layout::{run_path, segments_dir, snapshot_file_path, snapshots_dir};
use crate::log::format::{decode_batch, SEGMENT_HEADER_LEN};
use crate::log::{
    header_mismatches, intact_record_after, read_header, segment_files, tail_after, Next, Segment,
    SeqReader, Tail,
};
use crate::snapshots::file as snapfile;
use crate::snapshots::Table;

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
    /// Passes over the log: one, or more when the streams' heads would not fit the memory
    /// given (`check_with`).
    pub passes: u64,
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

/// About the bytes a stream's head takes while `check` tracks it: its id, the head, and its
/// share of the map.
const HEAD_BYTES: u64 = 300;

/// What `check` keeps of stream heads at most, by default (`check_with`).
pub const DEFAULT_CHECK_MEMORY: u64 = 2 << 30;

/// Which streams a pass over the log tracks: those whose id hashes to `index`, of `of`.
#[derive(Debug, Clone, Copy)]
struct Part {
    index: u64,
    of: u64,
}

impl Part {
    fn holds(self, stream: &str) -> bool {
        self.of == 1 || xxhash_rust::xxh3::xxh3_64(stream.as_bytes()) % self.of == self.index
    }
}

/// The stream heads files of the checkpoint, as far as they could be opened, and what the
/// passes found comparing them with the log.
struct StoredHeads {
    files: Vec<Arc<crate::heads::HeadsFile>>,
    /// The first difference found, reported once.
    differs: Option<String>,
    /// Category counts of the log's streams at the checkpoint, summed over the passes.
    categories: BTreeMap<String, crate::heads::CategoryCount>,
    /// Passes that reached the checkpoint and compared their part.
    compared: u64,
    problems: Vec<String>,
}

impl StoredHeads {
    /// Compares the heads of `part` at the checkpoint with the files' heads of that part.
    fn compare(&mut self, part: Part, want: &BTreeMap<String, Head>) {
        self.compared += 1;
        for (category, c) in categories_of(want) {
            let sum = self.categories.entry(category).or_default();
            sum.streams += c.streams;
            sum.events += c.events;
        }
        if self.differs.is_some() || !self.problems.is_empty() {
            return;
        }
        let mut stored = scan_chain(&self.files).filter(|h| match h {
            Ok((id, _)) => part.holds(id),
            Err(_) => true,
        });
        let mut want = want.iter();
        let (mut s, mut w) = (stored.next(), want.next());
        loop {
            match (s, w) {
                (None, None) => return,
                (Some(Err(e)), _) => {
                    self.problems.push(format!("stream heads: {e}"));
                    return;
                }
                (Some(Ok((sid, sh))), Some((wid, wh))) if sid == *wid => {
                    if sh != *wh {
                        self.differs = Some(sid);
                        return;
                    }
                    (s, w) = (stored.next(), want.next());
                }
                // The smaller id is in one of them only.
                (Some(Ok((sid, _))), Some((wid, _))) => {
                    self.differs = Some(if sid < *wid { sid } else { wid.clone() });
                    return;
                }
                (Some(Ok((sid, _))), None) => {
                    self.differs = Some(sid);
                    return;
                }
                (None, Some((wid, _))) => {
                    self.differs = Some(wid.clone());
                    return;
                }
            }
        }
    }

    /// What the passes found, once every part was compared.
    fn report(self, passes: u64, report: &mut CheckReport) {
        report.problems.extend(self.problems);
        if let Some(stream) = self.differs {
            report.problems.push(format!(
                "the stream heads files disagree with the log (first difference: stream '{stream}')"
            ));
        }
        if self.compared < passes {
            return;
        }
        let stored: BTreeMap<_, _> = self
            .files
            .last()
            .map(|f| f.categories.iter().cloned().collect())
            .unwrap_or_default();
        if stored != self.categories {
            report
                .problems
                .push("the category counts of the stream heads files disagree with the log".into());
        }
    }
}

/// The streams of `part` as a pass over the log finds them.
struct Tracked {
    part: Part,
    heads: BTreeMap<String, Head>,
}

impl Tracked {
    /// The streams of share `index` of `of`, none found yet.
    fn new(index: u64, of: u64) -> Tracked {
        Tracked {
            part: Part { index, of },
            heads: BTreeMap::new(),
        }
    }

    /// Checks that `e`, an event of a stream, has the revision after its stream's last, and
    /// moves the stream's head on; events of streams of other parts are left to their pass.
    fn track(&mut self, e: &RecordedEvent, report: &mut CheckReport) {
        if !self.part.holds(&e.stream_id) {
            return;
        }
        let prior = self.heads.get(&*e.stream_id).copied();
        let want = prior.map_or(0, |h| h.revision + 1);
        if e.revision != want {
            report.problems.push(format!(
                "position {}: stream '{}' has revision {}, expected {want}",
                e.position, e.stream_id, e.revision
            ));
        }
        self.heads
            .insert(e.stream_id.to_string(), next_head(prior, e));
    }
}

/// Verifies a store folder, with at most [`DEFAULT_CHECK_MEMORY`] of stream heads in
/// memory (see [`check_with`]).
pub fn check(dir: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<CheckReport> {
    check_with(dir, DEFAULT_CHECK_MEMORY, progress)
}

/// Verifies a store folder: segment headers and continuity, every record's frame and
/// checksum, gapless positions and revisions, non-decreasing times, and that the
/// checkpointed indexes and stream heads agree with the log. `progress` is called with
/// (bytes read, total bytes).
///
/// Stream heads take about 300 bytes each while they are followed. When the checkpoint's
/// streams (with a quarter more, and a million, for those created since) would take more
/// than `memory`, the log is read again for each further share of the streams, by a hash of
/// their ids: the first pass checks everything else as well, the later ones only the
/// revisions and heads of their share. Many streams created since the last checkpoint can
/// take the heads past `memory`.
pub fn check_with(
    dir: &Path,
    memory: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<CheckReport> {
    let fs = StdFs;
    let mut report = CheckReport::default();
    let segs = segments(&fs, dir, &mut report)?;
    // Derived data: the next open rebuilds a checkpoint of an older version.
    let manifest = or_noted(
        Manifest::load(&fs, dir),
        ("checkpoint version", "rebuilds it from the log"),
        "manifest",
        &mut report,
    )
    .flatten();
    let mut stored = manifest
        .as_ref()
        .and_then(|m| stored_heads(&fs, dir, m, &mut report));
    let passes = passes(stored.as_ref(), memory);
    report.passes = passes;
    let snapshots = load_snapshots(&fs, dir, &mut report)?;
    let mut expected: HashMap<u8, Digest> = HashMap::new();
    let mut tracked = Tracked::new(0, passes);
    let mut next_position = 0u64;
    let mut last_time = i64::MIN;
    let total = report.bytes.max(1) * passes;
    let mut entries = Vec::new();
    let mut reader = SeqReader::new(segs.clone(), 0);
    let checkpoint_at = manifest.as_ref().map_or(0, |m| m.next_position);
    if checkpoint_at == 0 {
        if let Some(stored) = &mut stored {
            stored.compare(tracked.part, &tracked.heads);
        }
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
                    if !e.stream_id.is_empty() {
                        tracked.track(e, &mut report);
                        continue;
                    }
                    if e.revision != no_stream_next {
                        report.problems.push(format!(
                            "position {}: stream '' has revision {}, expected {no_stream_next}",
                            e.position, e.revision
                        ));
                    }
                    no_stream_next = e.revision + 1;
                }
                if last < checkpoint_at {
                    for en in &entries {
                        expected.entry(en.kind()).or_default().add(en);
                    }
                }
                next_position = last + 1;
                report.events += events.len() as u64;
                if next_position == checkpoint_at {
                    if let Some(stored) = &mut stored {
                        stored.compare(tracked.part, &tracked.heads);
                    }
                }
                if report.events % 4096 < events.len() as u64 {
                    progress(done_bytes, total);
                }
            }
        }
    }
    finish_part(&tracked, snapshots.as_ref(), &mut report);
    // The later passes: the revisions and heads of the other shares of the streams, up to
    // where the first pass found the log to end.
    for index in 1..passes {
        let mut tracked = Tracked::new(index, passes);
        let base = index * report.bytes.max(1);
        heads_pass(
            &segs,
            next_position,
            checkpoint_at,
            &mut tracked,
            stored.as_mut(),
            &mut report,
            &mut |done| progress(base + done, total),
        )?;
        finish_part(&tracked, snapshots.as_ref(), &mut report);
    }
    progress(total, total);
    if let Some(m) = manifest {
        check_checkpoint(&fs, dir, &m, next_position, &expected, &mut report);
    }
    if let Some(stored) = stored {
        stored.report(passes, &mut report);
    }
    Ok(report)
}

/// How many passes keep the heads within `memory`: one per share of the streams that fits.
fn passes(stored: Option<&StoredHeads>, memory: u64) -> u64 {
    let at_checkpoint: u64 = stored
        .and_then(|s| s.files.last())
        .map_or(0, |f| f.categories.iter().map(|(_, c)| c.streams).sum());
    let streams = at_checkpoint + at_checkpoint / 4 + 1_000_000;
    (streams * HEAD_BYTES)
        .div_ceil(memory.max(HEAD_BYTES))
        .max(1)
}

/// The checkpoint's stream heads files; `None` (with a note or a problem) when they cannot
/// be opened.
fn stored_heads(
    fs: &dyn Fs,
    dir: &Path,
    m: &Manifest,
    report: &mut CheckReport,
) -> Option<StoredHeads> {
    let files = or_noted(
        open_chain(fs, dir, &m.heads),
        (
            "stream heads file of version",
            "rebuilds the checkpoint from the log",
        ),
        "stream heads",
        report,
    )?;
    Some(StoredHeads {
        files,
        differs: None,
        categories: BTreeMap::new(),
        compared: 0,
        problems: Vec::new(),
    })
}

/// `r`'s value; or, when opening a derived file failed, `None` with a note if the file is of
/// an older version (`older_file`: what it is, and what the next open does about it), and with
/// a problem named `what` otherwise.
fn or_noted<T>(
    r: Result<T>,
    older_file: (&str, &str),
    what: &str,
    report: &mut CheckReport,
) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) if older(&e).is_some() => {
            report
                .notes
                .push(older_note(&e, older_file.0, older_file.1));
            None
        }
        Err(e) => {
            report.problems.push(format!("{what}: {e}"));
            None
        }
    }
}

/// What a pass leaves once it has read the log: its streams counted, and the snapshots of
/// its streams checked against their heads.
fn finish_part(tracked: &Tracked, snapshots: Option<&Table>, report: &mut CheckReport) {
    report.streams += tracked.heads.len() as u64;
    if let Some(table) = snapshots {
        check_snapshot_streams(table, tracked, report);
    }
}

/// A later pass: reads the log up to `end` (where the first pass found it to end, having
/// reported any damage) and checks the revisions and heads of `tracked`'s streams.
fn heads_pass(
    segs: &[Arc<Segment>],
    end: u64,
    checkpoint_at: u64,
    tracked: &mut Tracked,
    mut stored: Option<&mut StoredHeads>,
    report: &mut CheckReport,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    if checkpoint_at == 0 {
        if let Some(stored) = stored.as_deref_mut() {
            stored.compare(tracked.part, &tracked.heads);
        }
    }
    let mut reader = SeqReader::new(segs.to_vec(), 0);
    let (mut done, mut records) = (0u64, 0u64);
    while let Next::Record(_, payload) = reader.next_record()? {
        done += payload.len() as u64 + 8;
        let Ok(events) = decode_batch(&payload) else {
            break;
        };
        let Some(last) = events.last().map(|e| e.position) else {
            break;
        };
        if last >= end {
            break;
        }
        for e in events.iter().filter(|e| !e.stream_id.is_empty()) {
            tracked.track(e, report);
        }
        if last + 1 == checkpoint_at {
            if let Some(stored) = stored.as_deref_mut() {
                stored.compare(tracked.part, &tracked.heads);
            }
        }
        records += 1;
        if records % 4096 == 0 {
            progress(done);
        }
    }
    Ok(())
}

/// Verifies the snapshot file: its header and every group as recovery reads it (a torn last
/// group is a note, damage a problem). Returns its table, for [`check_snapshot_streams`];
/// `None` when there is none to check.
fn load_snapshots(fs: &dyn Fs, dir: &Path, report: &mut CheckReport) -> Result<Option<Table>> {
    let (newest, stale) = crate::snapshots::files(fs, dir)?;
    for name in stale {
        report.notes.push(format!(
            "{}: left by an interrupted snapshot compaction; removed on the next open",
            snapshots_dir(dir).join(name).display()
        ));
    }
    let Some(id) = newest else {
        return Ok(None);
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
        return Ok(None);
    }
    match snapfile::check_header(&header) {
        Ok(()) => {}
        Err(Some(v)) if v < snapfile::VERSION => {
            report.notes.push(format!(
                "{shown}: snapshot file version {v}, older than this build's {}; the next open drops its snapshots (loads replay)",
                snapfile::VERSION
            ));
            return Ok(None);
        }
        Err(version) => {
            report.problems.push(match version {
                Some(v) => format!(
                    "{shown}: snapshot file version {v}, but this build reads version {}",
                    snapfile::VERSION
                ),
                None => format!("{shown}: not a snapshot file header"),
            });
            return Ok(None);
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
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    report.snapshots = table.count() as u64;
    Ok(Some(table))
}

/// Checks that each kept snapshot of a stream of `tracked`'s part is of a revision its stream
/// has reached.
fn check_snapshot_streams(table: &Table, tracked: &Tracked, report: &mut CheckReport) {
    let mut streams: Vec<_> = table
        .streams
        .iter()
        .filter(|(stream, _)| tracked.part.holds(stream))
        .collect();
    streams.sort_by(|a, b| a.0.cmp(b.0));
    for (stream, list) in streams {
        let Some(last) = list.last() else { continue };
        match tracked.heads.get(&**stream) {
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
        let run = or_noted(
            Run::open(fs, &run_path(dir, *id), *id),
            ("index run of version", "rebuilds the indexes from the log"),
            &format!("index run {id}"),
            report,
        );
        runs.extend(run.map(Arc::new));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heads::{write_merged, CategoryCount, Taken};

    fn head(n: u64) -> Head {
        Head {
            revision: n % 3,
            first_position: n,
            last_position: n + 10,
            created_at: 1,
            last_written_at: 2,
        }
    }

    /// Heads files holding `heads`, as a checkpoint writes them.
    fn stored(dir: &Path, heads: &BTreeMap<String, Head>) -> StoredHeads {
        let taken = Taken {
            heads: Arc::new(heads.clone()),
            categories: categories_of(heads),
            streams: heads.len() as u64,
        };
        let file = write_merged(&StdFs, dir, 1, &[], &taken).unwrap();
        StoredHeads {
            files: vec![Arc::new(file)],
            differs: None,
            categories: BTreeMap::new(),
            compared: 0,
            problems: Vec::new(),
        }
    }

    /// Compares `want` with the files part by part, as the passes of `check` do.
    fn compare_in(
        passes: u64,
        files: &BTreeMap<String, Head>,
        want: &BTreeMap<String, Head>,
    ) -> CheckReport {
        let dir = tempfile::tempdir().unwrap();
        let mut s = stored(dir.path(), files);
        for index in 0..passes {
            let part = Part { index, of: passes };
            let mine: BTreeMap<String, Head> = want
                .iter()
                .filter(|(id, _)| part.holds(id))
                .map(|(id, h)| (id.clone(), *h))
                .collect();
            s.compare(part, &mine);
        }
        let mut report = CheckReport::default();
        s.report(passes, &mut report);
        report
    }

    #[test]
    fn heads_compared_part_by_part_find_what_a_whole_comparison_finds() {
        let heads: BTreeMap<String, Head> = (0..2_000u64)
            .map(|n| {
                (
                    format!("{}-{n}", ["account", "order", "user"][n as usize % 3]),
                    head(n),
                )
            })
            .collect();
        // The parts split the streams: each is in exactly one.
        for id in heads.keys() {
            assert_eq!(
                (0..7)
                    .filter(|&i| Part { index: i, of: 7 }.holds(id))
                    .count(),
                1
            );
        }
        for passes in [1, 2, 7] {
            let report = compare_in(passes, &heads, &heads);
            assert!(
                report.problems.is_empty(),
                "{passes}: {:?}",
                report.problems
            );

            // One head differs, one stream is missing from the files, one is only in them:
            // each is found, whichever part it falls in.
            let victims: Vec<&String> = heads.keys().step_by(223).take(9).collect();
            assert!(victims.iter().any(|v| !Part { index: 0, of: 7 }.holds(v)));
            for &victim in &victims {
                let mut changed = heads.clone();
                changed.get_mut(victim).unwrap().revision += 1;
                let mut fewer = heads.clone();
                fewer.remove(victim);
                for (files, want) in [(&heads, &changed), (&fewer, &heads), (&heads, &fewer)] {
                    let report = compare_in(passes, files, want);
                    let differs = format!("(first difference: stream '{victim}')");
                    assert!(
                        report.problems.iter().any(|p| p.ends_with(&differs)),
                        "{passes}: {:?}",
                        report.problems
                    );
                }
            }
            let mut fewer = heads.clone();
            fewer.remove(victims[0]);
            // Counts that disagree are found once every part was compared.
            let report = compare_in(passes, &fewer, &fewer);
            assert!(
                report.problems.is_empty(),
                "{passes}: {:?}",
                report.problems
            );
        }
        let mut wrong_counts = stored(tempfile::tempdir().unwrap().path(), &heads);
        wrong_counts
            .categories
            .insert("ghost".into(), CategoryCount::default());
        wrong_counts.compared = 1;
        let mut report = CheckReport::default();
        wrong_counts.report(1, &mut report);
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.contains("category counts")),
            "{:?}",
            report.problems
        );
    }

    #[test]
    fn passes_keep_the_heads_within_the_memory_given() {
        assert_eq!(passes(None, DEFAULT_CHECK_MEMORY), 1);
        // No checkpoint: a million streams are assumed, 300 MB of heads.
        assert_eq!(passes(None, 100_000_000), 3);
        assert_eq!(passes(None, 299_999_999), 2);
        assert_eq!(passes(None, 300_000_000), 1);
        assert_eq!(passes(None, 1), 1_000_000, "at least a head's bytes");
    }
}
