//! The write path: a writer thread and a sync thread in a pipeline.
//!
//! The **writer** owns the tail of the log. It takes every append request that has queued,
//! checks each against the stream heads, the event id index and its DCB condition (seeing
//! every request before it, including those still waiting for their sync), encodes the
//! accepted ones into one buffer and writes it at the end of the active segment. Then it
//! hands the group to the **syncer** and goes on with the next group at once.
//!
//! The syncer takes every group that has been written, syncs the segment files once for all
//! of them (group commit), and only then adds their index entries, updates the stream heads,
//! publishes the new head and acknowledges the requests, in order. While it syncs, the writer
//! gathers and writes the next group, so a sync is never idle waiting for clients and
//! clients never wait for a sync that could have included them.
//!
//! A failed write or sync poisons the store: nothing after it is acknowledged.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{mpsc as std_mpsc, Arc};

use annal_core::{
    AppendRequest, AppendResult, Error, NewEvent, Query, Result, StreamAppendResult, Timestamp,
    Uuid,
};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, warn};

use crate::checkpoint::{encode_heads, write_all, Manifest};
use crate::format::{encode_batch, BatchStream, SEGMENT_HEADER_LEN};
use crate::heads::{Head, Heads};
use crate::idfilter::IdFilter;
use crate::index::{
    batch_entries, key, merge_runs, stream_entries, stream_keys, Entry, Run, KIND_ID,
};
use crate::log::Segment;
use crate::memtable::MemTable;
use crate::prealloc::Filler;
use crate::read::{find_by_id, Cursor};
use crate::recovery::{create_segment, heads_path, run_path, Recovered};
use crate::store::Shared;

/// Most requests the writer takes into one group.
const MAX_GROUP: usize = 1024;
/// Runs merged into one once they are of about one size: an entry is rewritten about
/// log4(n) times (log2(n) when two are merged at a time), and a lookup visits at most three
/// runs of each size.
const FANOUT: usize = 4;
/// Most runs kept before the newest are merged regardless of size.
const MAX_RUNS: usize = 12;

type Reply = oneshot::Sender<Result<AppendResult>>;

/// A hash map with a fast hash seeded at random per process (the keys come from clients).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

pub(crate) enum Command {
    Append(AppendRequest, Reply),
    Checkpoint(oneshot::Sender<Result<()>>),
}

/// An accepted request of a group that the syncer has not applied yet (as far as the writer
/// knows).
struct Pending {
    seq: u64,
    request: Arc<AppendRequest>,
    recorded_at: i64,
    /// For each stream of the request: the revision and the position of its first event.
    starts: Vec<(u64, u64)>,
}

/// A group written to the log, waiting for its sync.
struct Written {
    seq: u64,
    /// The log offset below which the log was durable when this group was prepared.
    synced_up_to: u64,
    /// The segment the group was written to; `None` when nothing was written.
    segment: Option<Arc<Segment>>,
    next_position: u64,
    log_end: u64,
    last_ts: i64,
    entries: Vec<Entry>,
    updates: Vec<(String, u64, u64, u64, u64)>,
    recorded_at: i64,
    replies: Vec<(Reply, Result<AppendResult>)>,
    checkpoints: Vec<oneshot::Sender<Result<()>>>,
}

enum ToSyncer {
    Group(Box<Written>),
    Stop,
}

pub(crate) struct Writer {
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Command>,
    active: Arc<Segment>,
    active_len: u64,
    log_end: u64,
    next_position: u64,
    last_ts: i64,
    buf: Vec<u8>,
    seq: u64,
    /// Heads of streams changed by groups not yet applied, with the group that changed them.
    heads: FastMap<String, (Head, u64)>,
    /// Accepted requests of groups not yet applied, oldest first: `pending[i]` is request
    /// number `popped + i`.
    pending: VecDeque<Pending>,
    popped: u64,
    /// The event ids of `pending`: request number, stream index, event index.
    ids: FastMap<Uuid, (u64, u32, u32)>,
    /// The index keys of a request's event ids, and whether the index may hold each.
    id_keys: Vec<u64>,
    id_maybe: Vec<bool>,
    id_scratch: Vec<bool>,
    recovered_manifest: Option<Manifest>,
    /// Keeps zeros ahead of the log in the active segment (`None` when turned off).
    filler: Option<Filler>,
}

/// Where a stored event sits, for the idempotency check.
struct Found {
    stream: String,
    revision: u64,
    position: u64,
    recorded_at: Timestamp,
    same: bool,
}

impl Writer {
    pub fn new(shared: Arc<Shared>, rx: mpsc::Receiver<Command>, rec: &Recovered) -> Writer {
        Writer {
            active: rec
                .segments
                .last()
                .expect("recovery leaves a segment")
                .clone(),
            shared,
            rx,
            active_len: rec.active_len,
            log_end: rec.log_end,
            next_position: rec.next_position,
            last_ts: rec.last_recorded_at,
            buf: Vec::with_capacity(1 << 20),
            seq: 0,
            heads: FastMap::default(),
            pending: VecDeque::new(),
            popped: 0,
            ids: FastMap::default(),
            id_keys: Vec::new(),
            id_maybe: Vec::new(),
            id_scratch: Vec::new(),
            recovered_manifest: Some(rec.manifest.clone()),
            filler: None,
        }
    }

    /// Starts preallocating the active segment, when configured.
    fn start_filler(&mut self) {
        let ahead = self.shared.config.preallocate;
        if ahead == 0 {
            return;
        }
        match Filler::start(self.shared.fs.clone(), ahead) {
            Ok(f) => {
                let len = self.active.file.len().unwrap_or(self.active_len);
                f.target(
                    Some((self.active.path.clone(), self.shared.config.segment_size)),
                    self.active_len,
                    len,
                );
                self.filler = Some(f);
            }
            Err(e) => {
                warn!(error = %e, "could not start the preallocation thread; appends go on without")
            }
        }
    }

    pub fn run(mut self) {
        self.start_filler();
        let (tx, rx) = std_mpsc::channel();
        let manifest = self.recovered_manifest.take().unwrap_or_default();
        let syncer = Syncer {
            shared: self.shared.clone(),
            rx,
            jobs: None,
            checkpointed: manifest.next_position,
            manifest: Some(manifest),
            next_position: self.next_position,
            log_end: self.log_end,
            last_ts: self.last_ts,
            failed: None,
        };
        let handle = std::thread::Builder::new()
            .name("annal-syncer".into())
            .spawn(move || syncer.run());
        let handle = match handle {
            Ok(h) => h,
            Err(e) => {
                self.poison(&Error::io("starting the sync thread", &e));
                return;
            }
        };
        let (mut groups, mut requests) = (0u64, 0u64);
        while let Some(first) = self.rx.blocking_recv() {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match self.rx.try_recv() {
                    Ok(c) => group.push(c),
                    Err(_) => break,
                }
            }
            groups += 1;
            requests += group.len() as u64;
            if let Some(w) = self.process(group) {
                if tx.send(ToSyncer::Group(Box::new(w))).is_err() {
                    break;
                }
            }
        }
        debug!(groups, requests, "the writer stops");
        let _ = tx.send(ToSyncer::Stop);
        let _ = handle.join();
    }

    fn poison(&self, e: &Error) {
        poison(&self.shared, e);
    }

    /// Forgets pending state of groups the syncer has applied.
    fn prune(&mut self) {
        let synced = self.shared.synced_group.load(Ordering::Acquire);
        self.heads.retain(|_, (_, seq)| *seq > synced);
        while self.pending.front().is_some_and(|p| p.seq <= synced) {
            let Some(p) = self.pending.pop_front() else {
                break;
            };
            let number = self.popped;
            self.popped += 1;
            for e in p.request.streams.iter().flat_map(|s| &s.events) {
                if self.ids.get(&e.id).is_some_and(|at| at.0 == number) {
                    self.ids.remove(&e.id);
                }
            }
        }
    }

    /// Checks, encodes and writes one group. Returns it for the syncer, or `None` when every
    /// request was answered here.
    fn process(&mut self, group: Vec<Command>) -> Option<Written> {
        let mut appends = Vec::with_capacity(group.len());
        let mut checkpoints = Vec::new();
        for c in group {
            match c {
                Command::Append(r, tx) => appends.push((Arc::new(r), tx)),
                Command::Checkpoint(tx) => checkpoints.push(tx),
            }
        }
        if let Some(cause) = self.shared.poison_cause() {
            let err = Error::Poisoned { cause };
            for (_, tx) in appends {
                let _ = tx.send(Err(err.clone()));
            }
            for tx in checkpoints {
                let _ = tx.send(Err(err.clone()));
            }
            return None;
        }
        self.prune();
        if self.active_len >= self.shared.config.segment_size
            && self.active_len > SEGMENT_HEADER_LEN
        {
            if let Err(e) = self.roll() {
                self.poison(&e);
                for (_, tx) in appends {
                    let _ = tx.send(Err(e.clone()));
                }
                for tx in checkpoints {
                    let _ = tx.send(Err(e.clone()));
                }
                return None;
            }
        }
        self.seq += 1;
        let seq = self.seq;
        let ts = Timestamp::now().0.max(self.last_ts);
        let mut w = Written {
            seq,
            synced_up_to: self.shared.synced_log_end.load(Ordering::Acquire),
            segment: None,
            next_position: self.next_position,
            log_end: self.log_end,
            last_ts: self.last_ts,
            entries: Vec::new(),
            updates: Vec::new(),
            recorded_at: ts,
            replies: Vec::with_capacity(appends.len()),
            checkpoints,
        };
        self.buf.clear();
        let mut next = self.next_position;
        for (req, tx) in appends {
            let outcome = self.prepare(&req, &mut w, &mut next, ts);
            w.replies.push((tx, outcome));
        }
        if !self.buf.is_empty() {
            if let Some(f) = &mut self.filler {
                let len = self.buf.len() as u64;
                let per_sync = self.shared.synced_per_sync.load(Ordering::Relaxed);
                f.before_write(self.active_len + len, len, per_sync);
            }
            let written = self
                .active
                .file
                .write_all_at(&self.buf, self.active_len)
                .map_err(|e| Error::io(format!("writing {}", self.active.path.display()), &e));
            if let Err(e) = written {
                self.poison(&e);
                for (tx, outcome) in w.replies {
                    let _ = tx.send(match outcome {
                        Ok(_) => Err(e.clone()),
                        Err(conflict) => Err(conflict),
                    });
                }
                for tx in w.checkpoints {
                    let _ = tx.send(Err(e.clone()));
                }
                return None;
            }
            self.active_len += self.buf.len() as u64;
            self.log_end += self.buf.len() as u64;
            self.next_position = next;
            self.last_ts = ts;
            w.segment = Some(self.active.clone());
            w.next_position = next;
            w.log_end = self.log_end;
            w.last_ts = ts;
        }
        Some(w)
    }

    /// The stream's head, as the writer sees it: pending groups first.
    fn current(&self, stream: &str) -> Option<Head> {
        self.heads.get(stream).map(|(h, _)| *h).or_else(|| {
            self.shared
                .heads
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .streams
                .get(stream)
                .copied()
        })
    }

    /// Checks a request and, when it passes, encodes it into the buffer.
    fn prepare(
        &mut self,
        req: &Arc<AppendRequest>,
        w: &mut Written,
        next: &mut u64,
        ts: i64,
    ) -> Result<AppendResult> {
        if let Some(result) = self.check_ids(req)? {
            return Ok(result);
        }
        for s in &req.streams {
            let actual = self.current(&s.stream_id).map(|h| h.revision);
            if !s.expected.accepts(actual) {
                return Err(Error::WrongExpectedRevision {
                    stream: s.stream_id.clone(),
                    expected: s.expected,
                    actual,
                });
            }
        }
        if let Some(c) = &req.condition {
            if let Some(position) = self.first_match(&c.query, c.after)? {
                return Err(Error::ConditionFailed {
                    position,
                    after: c.after,
                });
            }
        }
        // Accepted: encode and record what it changes.
        let first_position = *next;
        let log_offset = self.log_end + self.buf.len() as u64;
        let mut batch = Vec::with_capacity(req.streams.len());
        let mut results = Vec::with_capacity(req.streams.len());
        let mut starts = Vec::with_capacity(req.streams.len());
        let number = self.popped + self.pending.len() as u64;
        let mut position = first_position;
        // check_ids left the keys of this request's event ids in `id_keys`, in event order.
        let mut id_keys = &self.id_keys[..];
        for (si, s) in req.streams.iter().enumerate() {
            let prev = self.current(&s.stream_id);
            let first_revision = prev.map_or(0, |h| h.revision + 1);
            let count = s.events.len() as u64;
            let (keys, rest) = id_keys.split_at(s.events.len());
            id_keys = rest;
            stream_entries(
                &mut w.entries,
                stream_keys(&s.stream_id),
                first_revision,
                position,
                &s.events,
                keys,
            );
            starts.push((first_revision, position));
            for (ei, e) in s.events.iter().enumerate() {
                self.ids.insert(e.id, (number, si as u32, ei as u32));
            }
            let last = position + count - 1;
            let head = Head {
                revision: first_revision + count - 1,
                first_position: prev.map_or(position, |h| h.first_position),
                last_position: last,
                created_at: prev.map_or(ts, |h| h.created_at),
                last_written_at: ts,
            };
            self.heads.insert(s.stream_id.clone(), (head, w.seq));
            w.updates
                .push((s.stream_id.clone(), first_revision, count, position, last));
            results.push(StreamAppendResult {
                stream_id: s.stream_id.clone(),
                revision: head.revision,
                first_position: position,
                last_position: last,
            });
            batch.push(BatchStream {
                stream_id: &s.stream_id,
                first_revision,
                events: &s.events,
            });
            position += count;
        }
        let last_position = position - 1;
        encode_batch(
            &mut self.buf,
            first_position,
            Timestamp(ts),
            w.synced_up_to,
            &batch,
        );
        batch_entries(
            &mut w.entries,
            first_position,
            last_position,
            ts,
            log_offset,
        );
        *next = position;
        self.pending.push_back(Pending {
            seq: w.seq,
            request: req.clone(),
            recorded_at: ts,
            starts,
        });
        Ok(AppendResult {
            streams: results,
            first_position,
            last_position,
            recorded_at: Timestamp(ts),
        })
    }

    /// Looks up every event id of a request. `Ok(None)`: all are new. `Ok(Some)`: the whole
    /// request was written before (a retry): its original result. Otherwise an id conflict.
    fn check_ids(&mut self, req: &AppendRequest) -> Result<Option<AppendResult>> {
        // Which ids the index may hold, all at once; a new id is then looked up no further.
        self.id_keys.clear();
        self.id_keys.extend(
            req.streams
                .iter()
                .flat_map(|s| &s.events)
                .map(|e| key(KIND_ID, e.id.as_bytes())),
        );
        self.shared
            .index
            .may_hold_ids(&self.id_keys, &mut self.id_maybe, &mut self.id_scratch);
        let mut maybe = self.id_maybe.iter();
        let mut found: Vec<Vec<Option<Found>>> = Vec::with_capacity(req.streams.len());
        let mut any = false;
        for s in &req.streams {
            let mut row = Vec::with_capacity(s.events.len());
            for e in &s.events {
                let stored = maybe.next().copied().unwrap_or(true);
                let f = self.find(e, stored)?;
                any |= f.is_some();
                row.push(f);
            }
            found.push(row);
        }
        if !any {
            return Ok(None);
        }
        let mut results = Vec::with_capacity(req.streams.len());
        let conflict = |e: &NewEvent, f: &Found, problem: String| Error::EventIdConflict {
            event_id: e.id,
            stream: f.stream.clone(),
            position: f.position,
            problem,
        };
        let mut recorded_at = None;
        for (s, row) in req.streams.iter().zip(&found) {
            let first_known = row.iter().flatten().next();
            for (ei, (e, f)) in s.events.iter().zip(row).enumerate() {
                let Some(f) = f else {
                    let (ke, kf) = s
                        .events
                        .iter()
                        .zip(row)
                        .find_map(|(e, f)| f.as_ref().map(|f| (e, f)))
                        .or_else(|| {
                            req.streams
                                .iter()
                                .zip(&found)
                                .flat_map(|(s, r)| s.events.iter().zip(r))
                                .find_map(|(e, f)| f.as_ref().map(|f| (e, f)))
                        })
                        .expect("some id is known");
                    return Err(conflict(
                        ke,
                        kf,
                        "the request mixes events already written with new ones; a retry must resend exactly the original request".into(),
                    ));
                };
                if f.stream != s.stream_id {
                    return Err(conflict(
                        e,
                        f,
                        format!("this request puts it in stream '{}'", s.stream_id),
                    ));
                }
                let base = first_known.map_or(0, |k| k.revision);
                if f.revision != base + ei as u64 {
                    return Err(conflict(
                        e,
                        f,
                        "this request has it in a different order".into(),
                    ));
                }
                if !f.same {
                    return Err(conflict(
                        e,
                        f,
                        "the stored event has different content".into(),
                    ));
                }
                recorded_at.get_or_insert(f.recorded_at);
            }
            let first = row.first().and_then(|f| f.as_ref());
            let last = row.last().and_then(|f| f.as_ref());
            if let (Some(first), Some(last)) = (first, last) {
                results.push(StreamAppendResult {
                    stream_id: s.stream_id.clone(),
                    revision: last.revision,
                    first_position: first.position,
                    last_position: last.position,
                });
            }
        }
        let positions = found.iter().flatten().flatten().map(|f| f.position);
        let first_position = positions.clone().min().unwrap_or(0);
        let last_position = positions.max().unwrap_or(0);
        Ok(Some(AppendResult {
            streams: results,
            first_position,
            last_position,
            recorded_at: recorded_at.unwrap_or_default(),
        }))
    }

    /// Finds an event id among pending groups, then (when the index may hold it) in the
    /// store.
    fn find(&self, e: &NewEvent, maybe_stored: bool) -> Result<Option<Found>> {
        if let Some(&(number, si, ei)) = self.ids.get(&e.id) {
            let p = &self.pending[(number - self.popped) as usize];
            let stream = &p.request.streams[si as usize];
            let original = &stream.events[ei as usize];
            let (revision, position) = p.starts[si as usize];
            return Ok(Some(Found {
                stream: stream.stream_id.clone(),
                revision: revision + u64::from(ei),
                position: position + u64::from(ei),
                recorded_at: Timestamp(p.recorded_at),
                same: original == e,
            }));
        }
        if !maybe_stored {
            return Ok(None);
        }
        Ok(find_by_id(&self.shared, &e.id)?.map(|stored| Found {
            same: stored.same_as(e),
            stream: stored.stream_id,
            revision: stored.revision,
            position: stored.position,
            recorded_at: stored.recorded_at,
        }))
    }

    /// The first position after `after` of an event matching `query`: in what the syncer has
    /// applied, or in the groups still pending (which may overlap; the lowest wins).
    fn first_match(&self, query: &Query, after: Option<u64>) -> Result<Option<u64>> {
        let from = after.map_or(0, |a| a.saturating_add(1));
        // Pending positions grow request by request, stream by stream: the first match is
        // the lowest.
        let pending = self.pending.iter().find_map(|p| {
            p.request
                .streams
                .iter()
                .zip(&p.starts)
                .find_map(|(s, &(_, first))| {
                    s.events.iter().enumerate().find_map(|(ei, e)| {
                        let position = first + ei as u64;
                        (position >= from && query.matches(&e.event_type, &e.tags))
                            .then_some(position)
                    })
                })
        });
        let head = self.shared.head();
        if head.is_some_and(|h| from <= h) {
            let mut cursor = Cursor::new(
                self.shared.clone(),
                &annal_core::Source::Query(query.clone()),
                Some(from),
                annal_core::Direction::Forward,
                Some(1),
                head,
            );
            if let Some(e) = cursor.next_event()? {
                return Ok(Some(pending.map_or(e.position, |p| p.min(e.position))));
            }
        }
        Ok(pending)
    }

    /// Starts a new segment at the current end of the log.
    fn roll(&mut self) -> Result<()> {
        // The new segment's header records where the old one ends, so the old one's last
        // writes must be durable first. Only the sync thread syncs records (a second sync
        // through the same handle could take a write-back error that the sync thread then
        // never sees), so wait for it to get there; the cut below is synced here, when no
        // record is left unsynced.
        loop {
            if let Some(cause) = self.shared.poison_cause() {
                return Err(Error::Poisoned { cause });
            }
            if self.shared.synced_log_end.load(Ordering::Acquire) >= self.log_end {
                break;
            }
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
        // The old segment ends at its last record: cut the zeros preallocated after it, so
        // that every segment but the last ends at its file's end.
        if let Some(f) = &self.filler {
            f.target(None, self.active_len, self.active_len);
        }
        let old = &self.active;
        let len = old
            .file
            .len()
            .map_err(|e| Error::io(format!("reading {}", old.path.display()), &e))?;
        if len > self.active_len {
            old.file
                .set_len(self.active_len)
                .and_then(|()| old.file.sync_data())
                .map_err(|e| Error::io(format!("cutting {} to its end", old.path.display()), &e))?;
        }
        let seg = create_segment(
            self.shared.fs.as_ref(),
            &self.shared.dir,
            self.next_position,
            self.log_end,
        )?;
        self.shared
            .log
            .segments
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(seg.clone());
        if let Some(f) = &self.filler {
            f.target(
                Some((seg.path.clone(), self.shared.config.segment_size)),
                SEGMENT_HEADER_LEN,
                SEGMENT_HEADER_LEN,
            );
        }
        self.active = seg;
        self.active_len = SEGMENT_HEADER_LEN;
        Ok(())
    }
}

/// Marks the store poisoned (the first cause wins) and logs it.
fn poison(shared: &Shared, e: &Error) {
    error!(error = %e, "a write to the log failed; the store refuses writes until reopened");
    let mut p = shared.poisoned.lock().unwrap_or_else(|e| e.into_inner());
    if p.is_none() {
        *p = Some(e.to_string());
    }
}

/// The sync thread: makes written groups durable, then applies and acknowledges them.
struct Syncer {
    shared: Arc<Shared>,
    rx: std_mpsc::Receiver<ToSyncer>,
    /// The checkpoint thread's queue (bounded: at most two checkpoints wait).
    jobs: Option<std_mpsc::SyncSender<Job>>,
    /// The next position of the last checkpoint handed out.
    checkpointed: u64,
    /// What is durable and applied: the next position, the log's end, the last time.
    next_position: u64,
    log_end: u64,
    last_ts: i64,
    /// Set after a failed sync: nothing later may be acknowledged.
    failed: Option<Error>,
    /// The checkpoint in force at start, handed to the checkpoint thread.
    manifest: Option<Manifest>,
}

impl Syncer {
    fn run(mut self) {
        let (jobs, rx) = std_mpsc::sync_channel(1);
        let checkpointer = Checkpointer {
            shared: self.shared.clone(),
            manifest: self.manifest.take().unwrap_or_default(),
        };
        let handle = match std::thread::Builder::new()
            .name("annal-checkpoint".into())
            .spawn(move || checkpointer.run(rx))
        {
            Ok(h) => Some(h),
            Err(e) => {
                warn!(error = %e, "could not start the checkpoint thread; checkpoints are off");
                None
            }
        };
        if handle.is_some() {
            self.jobs = Some(jobs);
        }
        let mut stop = false;
        while !stop {
            let Ok(first) = self.rx.recv() else { break };
            let mut batch = Vec::new();
            let mut next = Some(first);
            while let Some(msg) = next {
                match msg {
                    ToSyncer::Group(g) => batch.push(*g),
                    ToSyncer::Stop => stop = true,
                }
                next = if stop { None } else { self.rx.try_recv().ok() };
            }
            if !batch.is_empty() {
                self.commit(batch);
            }
        }
        if self.failed.is_none() && self.shared.poison_cause().is_none() {
            self.checkpoint(Vec::new());
        }
        self.jobs = None;
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    /// Hands a checkpoint of everything applied so far to the checkpoint thread: freezes the
    /// memtable and snapshots the stream heads here, between groups, so the two agree. Waits
    /// when two checkpoints are already queued.
    fn checkpoint(&mut self, replies: Vec<oneshot::Sender<Result<()>>>) {
        let nothing_new =
            self.checkpointed == self.next_position && self.shared.index.mem_len() == 0;
        if nothing_new && replies.is_empty() {
            return;
        }
        let Some(jobs) = &self.jobs else {
            for tx in replies {
                let _ = tx.send(Err(Error::Internal("checkpoints are off".into())));
            }
            return;
        };
        // With nothing new, the job only waits for the checkpoints before it (a barrier), so
        // that a requested checkpoint is answered once it is on disk.
        let job = Job {
            frozen: (!nothing_new).then(|| self.shared.index.freeze()),
            heads: if nothing_new {
                Heads::default()
            } else {
                self.shared
                    .heads
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
            },
            next_position: self.next_position,
            log_end: self.log_end,
            last_ts: self.last_ts,
            replies,
        };
        self.checkpointed = self.next_position;
        if let Err(std_mpsc::SendError(job)) = jobs.send(job) {
            for tx in job.replies {
                let _ = tx.send(Err(Error::Internal("the checkpoint thread stopped".into())));
            }
        }
    }

    fn commit(&mut self, batch: Vec<Written>) {
        if self.failed.is_none() {
            // One sync per segment file the batch wrote to, in order.
            let mut synced: Vec<&Arc<Segment>> = Vec::new();
            for g in &batch {
                let Some(seg) = &g.segment else { continue };
                if synced.iter().any(|s| Arc::ptr_eq(s, seg)) {
                    continue;
                }
                synced.push(seg);
                let started = std::time::Instant::now();
                let result = seg.file.sync_data();
                metrics::histogram!("annal_fsync_seconds").record(started.elapsed().as_secs_f64());
                if let Err(e) = result {
                    let e = Error::io(format!("syncing {}", seg.path.display()), &e);
                    poison(&self.shared, &e);
                    self.failed = Some(e);
                    break;
                }
            }
            if self.failed.is_none() {
                if let Some(end) = batch
                    .iter()
                    .filter(|g| g.segment.is_some())
                    .map(|g| g.log_end)
                    .max()
                {
                    let before = self.shared.synced_log_end.swap(end, Ordering::AcqRel);
                    let per_sync = self.shared.synced_per_sync.load(Ordering::Relaxed);
                    let bytes = end.saturating_sub(before);
                    self.shared
                        .synced_per_sync
                        .store((per_sync * 7 + bytes) / 8, Ordering::Relaxed);
                }
            }
        }
        let mut checkpoints = Vec::new();
        for g in batch {
            if let Some(e) = &self.failed {
                for (tx, outcome) in g.replies {
                    let _ = tx.send(match outcome {
                        Ok(_) => Err(e.clone()),
                        Err(conflict) => Err(conflict),
                    });
                }
                for tx in g.checkpoints {
                    let _ = tx.send(Err(e.clone()));
                }
                continue;
            }
            if g.segment.is_some() {
                // Index first, then the head, then the stream heads: what stream_info and
                // list_streams report is always readable.
                self.shared.index.insert(&g.entries);
                self.next_position = g.next_position;
                self.log_end = g.log_end;
                self.last_ts = g.last_ts;
                self.shared
                    .next_position
                    .store(g.next_position, Ordering::Release);
                let mut heads = self.shared.heads.write().unwrap_or_else(|e| e.into_inner());
                for (stream, first_rev, count, first_pos, last_pos) in g.updates {
                    heads.apply(
                        &stream,
                        first_rev,
                        count,
                        first_pos,
                        last_pos,
                        Timestamp(g.recorded_at),
                    );
                }
            }
            self.shared.synced_group.store(g.seq, Ordering::Release);
            self.shared.head_tx.send_replace(self.next_position);
            for (tx, outcome) in g.replies {
                let _ = tx.send(outcome);
            }
            checkpoints.extend(g.checkpoints);
        }
        if self.failed.is_some() {
            return;
        }
        let due = self.shared.index.mem_len() >= self.shared.config.checkpoint_entries;
        if due || !checkpoints.is_empty() {
            self.checkpoint(checkpoints);
        }
    }
}

/// A checkpoint to write: a frozen memtable and the stream heads at the same point.
struct Job {
    /// `None`: a barrier that writes nothing.
    frozen: Option<Arc<MemTable>>,
    heads: Heads,
    next_position: u64,
    log_end: u64,
    last_ts: i64,
    replies: Vec<oneshot::Sender<Result<()>>>,
}

/// The checkpoint thread: writes runs, heads snapshots and the manifest, and merges runs,
/// so that none of that slows the write path.
struct Checkpointer {
    shared: Arc<Shared>,
    manifest: Manifest,
}

impl Checkpointer {
    fn run(mut self, jobs: std_mpsc::Receiver<Job>) {
        // The runs found at open go into the id filter before anything else.
        self.id_filter(0);
        while let Ok(job) = jobs.recv() {
            if let Some(cause) = self.shared.poison_cause() {
                for tx in job.replies {
                    let _ = tx.send(Err(Error::Poisoned {
                        cause: cause.clone(),
                    }));
                }
                continue;
            }
            let r = match &job.frozen {
                Some(frozen) => self.checkpoint(&job, frozen).and_then(|()| self.merge()),
                None => Ok(()),
            };
            if let Err(e) = &r {
                // The frozen memtable stays readable; a later checkpoint cannot skip over it,
                // so writes stop here, as after any failed write.
                poison(&self.shared, e);
            }
            for tx in job.replies {
                let _ = tx.send(r.clone());
            }
        }
    }

    /// Writes a frozen memtable out as a run, writes the heads snapshot taken with it, and
    /// replaces the manifest.
    fn checkpoint(&mut self, job: &Job, frozen: &MemTable) -> Result<()> {
        let fs = self.shared.fs.clone();
        let dir = self.shared.dir.clone();
        let run_id = self.manifest.next_file_id;
        let heads_id = run_id + 1;
        let ids = self.id_filter(frozen.id_keys() as u64);
        let written = (|| {
            let run = Run::write_adding_ids(
                fs.as_ref(),
                &run_path(&dir, run_id),
                run_id,
                frozen.sorted().map(Ok),
                frozen.id_keys() as u64,
                ids.as_deref(),
            )?;
            fs.sync_dir(&dir.join("index"))
                .map_err(|e| Error::io("syncing the index folder", &e))?;
            let snapshot = encode_heads(&job.heads);
            write_all(fs.as_ref(), &heads_path(&dir, heads_id), &snapshot)?;
            let mut manifest = Manifest {
                next_position: job.next_position,
                log_offset: job.log_end,
                last_recorded_at: job.last_ts,
                heads_id,
                next_file_id: heads_id + 1,
                runs: self.manifest.runs.clone(),
            };
            manifest.runs.push(run_id);
            manifest.store(fs.as_ref(), &dir)?;
            Ok::<_, Error>((run, manifest))
        })();
        let (run, manifest) = written?;
        self.shared.index.install(Arc::new(run), ids.is_some());
        let old_heads = heads_path(&dir, self.manifest.heads_id);
        if self.manifest.heads_id != heads_id {
            let _ = fs.remove(&old_heads);
        }
        self.manifest = manifest;
        Ok(())
    }

    /// The id filter, with room for `n` more ids. When it has none (or does not exist yet),
    /// a filter for one and a half times the ids of every run and the `n` is built from the
    /// runs' id entries and installed, covering them all. `None` when the runs cannot be read: the
    /// runs' own filters then answer alone, as they would without it.
    fn id_filter(&mut self, n: u64) -> Option<Arc<IdFilter>> {
        if let Some(f) = self.shared.index.id_filter().filter(|f| f.has_room(n)) {
            return Some(f);
        }
        let runs = self.shared.index.runs();
        let ids: u64 = runs.iter().map(|r| r.estimated_ids()).sum();
        let filter = Arc::new(IdFilter::with_capacity((ids + n) * 3 / 2));
        for r in &runs {
            if let Err(e) = r.add_ids_to(&filter) {
                warn!(error = %e, "could not read the event ids of an index run; every run's own filter answers for it");
                self.shared.index.set_id_filter(None, Vec::new());
                return None;
            }
        }
        debug!(
            runs = runs.len(),
            ids = filter.added(),
            capacity = filter.capacity(),
            bytes = filter.bytes(),
            "id filter built"
        );
        self.shared
            .index
            .set_id_filter(Some(filter.clone()), runs.iter().map(|r| r.id).collect());
        Some(filter)
    }

    /// Merges the newest `FANOUT` runs while they are of about one size (the oldest of them
    /// at most twice the newest), so that sizes grow geometrically, like the digits of a
    /// base-4 counter: an entry is rewritten and a lookup visits O(log n) runs. While more
    /// than `MAX_RUNS` exist, the newest two are merged.
    fn merge(&mut self) -> Result<()> {
        loop {
            let runs = self.shared.index.runs();
            let n = runs.len();
            let k = if n >= FANOUT && runs[n - FANOUT].count <= 2 * runs[n - 1].count {
                FANOUT
            } else if n > MAX_RUNS {
                2
            } else {
                return Ok(());
            };
            let fs = self.shared.fs.clone();
            let dir = self.shared.dir.clone();
            let id = self.manifest.next_file_id;
            // Runs whose ids are all in the id filter merge into one whose ids are too.
            let inputs = &runs[n - k..];
            let covered = inputs.iter().all(|r| self.shared.index.is_covered(r.id));
            let expected_ids = inputs.iter().map(|r| r.estimated_ids()).sum();
            let ids = if covered {
                None
            } else {
                self.id_filter(expected_ids)
            };
            let merged = Run::write_adding_ids(
                fs.as_ref(),
                &run_path(&dir, id),
                id,
                merge_runs(inputs),
                expected_ids,
                ids.as_deref(),
            )?;
            fs.sync_dir(&dir.join("index"))
                .map_err(|e| Error::io("syncing the index folder", &e))?;
            let mut manifest = self.manifest.clone();
            manifest.runs.truncate(n - k);
            manifest.runs.push(id);
            manifest.next_file_id = id + 1;
            manifest.store(fs.as_ref(), &dir)?;
            self.shared
                .index
                .replace_tail(n - k, Arc::new(merged), covered || ids.is_some());
            for r in &runs[n - k..] {
                let _ = fs.remove(&run_path(&dir, r.id));
            }
            self.manifest = manifest;
        }
    }
}
