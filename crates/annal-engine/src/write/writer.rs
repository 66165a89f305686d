//! The writer thread: checks each queued append request, encodes the accepted ones of a
//! group into one buffer, writes it at the end of the active segment and hands the group to
//! the syncer.

use std::sync::atomic::Ordering;
use std::sync::{mpsc as std_mpsc, Arc};

use annal_core::{
    AppendRequest, AppendResult, Error, NewEvent, Query, Result, StreamAppendResult, Text,
    Timestamp,
};
use tokio::sync::mpsc;
use tracing::debug;

use super::pending::Pending;
use super::prealloc::Filler;
use super::{Checked, Command, HeadUpdate, Written};
use crate::heads::{lookup, Head};
use crate::index::{batch_entries, key, stream_entries, stream_keys, KIND_ID};
use crate::log::format::{encode_batch, BatchStream, SEGMENT_HEADER_LEN};
use crate::log::{create_segment, Segment};
use crate::read::find_by_id;
use crate::shared::Shared;

/// Bytes of a group the writer encodes before writing them out: a large group is written
/// in pieces of about this size, so the writer's buffer holds no more than one piece.
const WRITE_PIECE: usize = 8 << 20;

/// Most requests the writer takes into one group.
const MAX_GROUP: usize = 1024;

/// Where the log ends when the writer starts.
pub(crate) struct Tail {
    pub active: Arc<Segment>,
    /// The file offset of the end of the log in the active segment.
    pub active_len: u64,
    pub log_end: u64,
    pub next_position: u64,
    pub last_ts: i64,
}

pub(crate) struct Writer {
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Command>,
    to_syncer: std_mpsc::Sender<Written>,
    active: Arc<Segment>,
    active_len: u64,
    log_end: u64,
    next_position: u64,
    last_ts: i64,
    buf: Vec<u8>,
    /// The number of the last group.
    seq: u64,
    pending: Pending,
    /// The index keys of a request's event ids, and whether the index may hold each.
    id_keys: Vec<u64>,
    /// The head of each stream of the request being prepared, as checked (a request names
    /// a stream once), so that encoding it looks none up again.
    priors: Vec<Option<Head>>,
    id_maybe: Vec<bool>,
    id_scratch: Vec<bool>,
    /// Keeps zeros ahead of the log in the active segment (`None` when turned off).
    filler: Option<Filler>,
}

/// Where a stored event sits, for the idempotency check.
struct Found {
    stream: Text,
    revision: u64,
    position: u64,
    recorded_at: Timestamp,
    same: bool,
}

impl Writer {
    pub fn new(
        shared: Arc<Shared>,
        rx: mpsc::Receiver<Command>,
        to_syncer: std_mpsc::Sender<Written>,
        tail: Tail,
        filler: Option<Filler>,
    ) -> Writer {
        if let Some(f) = &filler {
            let len = tail.active.file.len().unwrap_or(tail.active_len);
            f.target(
                Some((tail.active.path.clone(), shared.config.segment_size)),
                tail.active_len,
                len,
            );
        }
        Writer {
            shared,
            rx,
            to_syncer,
            active: tail.active,
            active_len: tail.active_len,
            log_end: tail.log_end,
            next_position: tail.next_position,
            last_ts: tail.last_ts,
            buf: Vec::with_capacity(1 << 20),
            seq: 0,
            pending: Pending::default(),
            id_keys: Vec::new(),
            priors: Vec::new(),
            id_maybe: Vec::new(),
            id_scratch: Vec::new(),
            filler,
        }
    }

    /// Takes groups of queued commands until every sender is gone, then stops (the syncer
    /// stops once it has the last group).
    pub fn run(mut self) {
        let (mut groups, mut requests) = (0u64, 0u64);
        while let Some(first) = self.rx.blocking_recv() {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match self.rx.try_recv() {
                    Ok(c) => group.push(c),
                    Err(_) => break,
                }
            }
            if group.iter().all(|c| matches!(c, Command::Prune)) {
                self.pending
                    .prune(self.shared.synced_group.load(Ordering::Acquire));
                continue;
            }
            groups += 1;
            requests += group.len() as u64;
            if let Some(w) = self.process(group) {
                if let Err(std_mpsc::SendError(w)) = self.to_syncer.send(w) {
                    // Only a syncer that stopped on a panic is gone while the writer runs.
                    w.fail(&self.shared.lost_answer());
                    break;
                }
            }
        }
        debug!(groups, requests, "the writer stops");
    }

    /// Checks, encodes and writes one group. Returns it for the syncer, or `None` when every
    /// request was answered here.
    fn process(&mut self, group: Vec<Command>) -> Option<Written> {
        let mut appends = Vec::with_capacity(group.len());
        let mut checkpoints = Vec::new();
        for c in group {
            match c {
                Command::Append(r, checked, tx) => appends.push((Arc::new(r), checked, tx)),
                Command::Checkpoint(tx) => checkpoints.push(tx),
                // The group prunes first thing anyway.
                Command::Prune => {}
            }
        }
        self.seq += 1;
        let ts = Timestamp::now().0.max(self.last_ts);
        let mut w = Written {
            seq: self.seq,
            segment: None,
            next_position: self.next_position,
            log_end: self.log_end,
            last_ts: self.last_ts,
            entries: Vec::new(),
            updates: Vec::new(),
            replies: Vec::with_capacity(appends.len()),
            checkpoints,
        };
        let ready = self.shared.check_poison().and_then(|()| {
            self.pending
                .prune(self.shared.synced_group.load(Ordering::Acquire));
            if self.active_len >= self.shared.config.segment_size
                && self.active_len > SEGMENT_HEADER_LEN
            {
                self.roll()
                    .inspect_err(|e| self.shared.poison(e.to_string()))?;
            }
            Ok(())
        });
        if let Err(e) = ready {
            for (_, _, tx) in appends {
                let _ = tx.send(Err(e.clone()));
            }
            w.fail(&e);
            return None;
        }
        self.buf.clear();
        let synced_up_to = self.shared.synced_log_end();
        let mut next = self.next_position;
        let mut appends = appends.into_iter();
        while let Some((req, checked, tx)) = appends.next() {
            let outcome = self.prepare(&req, checked, &mut w, &mut next, ts, synced_up_to);
            w.replies.push((tx, outcome));
            // A large group is written in pieces, so that the buffer stays small.
            if self.buf.len() >= WRITE_PIECE {
                if let Err(e) = self.write_buf(&mut w) {
                    for (_, _, tx) in appends {
                        let _ = tx.send(Err(e.clone()));
                    }
                    w.fail(&e);
                    return None;
                }
            }
        }
        if let Err(e) = self.write_buf(&mut w) {
            w.fail(&e);
            return None;
        }
        // After a large group, the buffer's memory goes back.
        if self.buf.capacity() > 2 * WRITE_PIECE {
            self.buf = Vec::with_capacity(WRITE_PIECE);
        }
        if w.segment.is_none() {
            return Some(w);
        }
        self.next_position = next;
        self.last_ts = ts;
        w.next_position = next;
        w.log_end = self.log_end;
        w.last_ts = ts;
        Some(w)
    }

    /// Writes what the buffer holds at the end of the active segment and empties it; the
    /// group is then marked as written there. A failed write poisons the store.
    fn write_buf(&mut self, w: &mut Written) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let len = self.buf.len() as u64;
        if let Some(f) = &mut self.filler {
            let per_sync = self.shared.synced_per_sync.load(Ordering::Relaxed);
            f.before_write(self.active_len + len, len, per_sync);
        }
        let written = self
            .active
            .file
            .write_all_at(&self.buf, self.active_len)
            .map_err(|e| Error::io(format!("writing {}", self.active.path.display()), e));
        if let Err(e) = written {
            self.shared.poison(e.to_string());
            return Err(e);
        }
        self.active_len += len;
        self.log_end += len;
        self.buf.clear();
        w.segment = Some(self.active.clone());
        Ok(())
    }

    /// The stream's head, as the writer sees it: pending groups first.
    fn current(&self, stream: &str) -> Result<Option<Head>> {
        match self.pending.head(stream) {
            Some(h) => Ok(Some(h)),
            None => lookup(&self.shared.heads, stream),
        }
    }

    /// Checks a request and, when it passes, encodes it into the buffer.
    fn prepare(
        &mut self,
        req: &Arc<AppendRequest>,
        checked: Option<Checked>,
        w: &mut Written,
        next: &mut u64,
        ts: i64,
        synced_up_to: u64,
    ) -> Result<AppendResult> {
        if let Some(result) = self.check_ids(req)? {
            return Ok(result);
        }
        self.priors.clear();
        for s in &req.streams {
            let prior = self.current(&s.stream_id)?;
            self.priors.push(prior);
            let actual = prior.map(|h| h.revision);
            if !s.expected.accepts(actual) {
                return Err(Error::WrongExpectedRevision {
                    stream: s.stream_id.to_string(),
                    expected: s.expected,
                    actual,
                });
            }
        }
        if let Some(c) = &req.condition {
            if let Some(position) = self.first_match(&c.query, c.after, checked)? {
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
        let mut position = first_position;
        // check_ids left the keys of this request's event ids in `id_keys`, in event order.
        let mut id_keys = &self.id_keys[..];
        for (s, &prev) in req.streams.iter().zip(&self.priors) {
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
            let last = position + count - 1;
            let head = Head {
                revision: first_revision + count - 1,
                first_position: prev.map_or(position, |h| h.first_position),
                last_position: last,
                created_at: prev.map_or(ts, |h| h.created_at),
                last_written_at: ts,
            };
            // Events of no stream move no head: their revisions start at 0 in every request.
            if !s.stream_id.is_empty() {
                self.pending.set_head(&s.stream_id, head, w.seq);
                w.updates.push(HeadUpdate {
                    stream: s.stream_id.clone(),
                    head,
                    count,
                    new: prev.is_none(),
                });
            }
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
            synced_up_to,
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
        self.pending.accept(w.seq, req.clone(), ts, starts);
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
            stream: f.stream.to_string(),
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
        if let Some(p) = self.pending.event(&e.id) {
            return Ok(Some(Found {
                stream: p.stream.clone(),
                revision: p.revision,
                position: p.position,
                recorded_at: p.recorded_at,
                same: p.event == e,
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
    /// The first position after `after` that `query` matches: the one found before the
    /// request was queued, or else among the synced events after those checked then and the
    /// pending ones.
    fn first_match(
        &self,
        query: &Query,
        after: Option<u64>,
        checked: Option<Checked>,
    ) -> Result<Option<u64>> {
        if let Some(found) = checked.and_then(|c| c.found) {
            // Pending events all come after what was synced when it was checked.
            return Ok(Some(found));
        }
        let from = after.map_or(0, |a| a.saturating_add(1));
        let pending = self.pending.first_match(query, from);
        let unchecked = checked.map_or(from, |c| from.max(c.through.saturating_add(1)));
        if let Some(head) = self.shared.head() {
            if let Some(p) = crate::read::first_match(&self.shared, query, unchecked, head)? {
                return Ok(Some(pending.map_or(p, |q| q.min(p))));
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
        self.shared.wait_synced(self.log_end)?;
        // The old segment ends at its last record: cut the zeros preallocated after it, so
        // that every segment but the last ends at its file's end.
        if let Some(f) = &self.filler {
            f.target(None, self.active_len, self.active_len);
        }
        let old = &self.active;
        let len = old
            .file
            .len()
            .map_err(|e| Error::io(format!("reading {}", old.path.display()), e))?;
        if len > self.active_len {
            old.file
                .set_len(self.active_len)
                .and_then(|()| old.file.sync_data())
                .map_err(|e| Error::io(format!("cutting {} to its end", old.path.display()), e))?;
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
