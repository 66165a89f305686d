//! Read cursors: a request turned into index scans of pages of entries, events fetched by
//! position and filtered (hash collisions share keys), up to the read's upper bound. A
//! forward read of the whole log skips the index and reads the segment files in order.

use std::collections::VecDeque;
use std::sync::Arc;

use annal_core::{Bytes, Direction, Query, RecordedEvent, Result, Selection, Source, Uuid};

use super::{data_bytes, detach, detach_alone, fetch_batch, index_disagrees};
use crate::index::{
    fixed_key, key, KIND_ACTOR, KIND_BATCH, KIND_CATEGORY, KIND_CORRELATION, KIND_STREAM, KIND_TAG,
    KIND_TYPE,
};
use crate::log::format::{
    decode_batch_header, decode_batch_into, visit_batch, DResult, EventNames, StoredEvent,
};
use crate::log::{Next, SeqReader};
use crate::shared::Shared;

/// Events read per index lookup.
const PAGE: usize = 256;

enum Plan {
    /// Every event, in log order.
    All,
    /// One stream, by revision.
    Stream { key: u64 },
    /// The union of index keys whose seq is the position.
    Keys(Vec<u64>),
}

enum Filter {
    None,
    Stream(String),
    Category(String),
    Types(Vec<String>),
    Query(Query),
    Correlation(Uuid),
    Actor(String),
    Select(Selection),
}

impl Filter {
    fn accepts(&self, e: &RecordedEvent) -> bool {
        match self {
            Filter::None => true,
            Filter::Stream(s) => e.stream_id == *s,
            Filter::Category(c) => e.category() == c,
            Filter::Types(t) => t.iter().any(|t| *t == e.event_type),
            Filter::Query(q) => q.matches(&e.event_type, &e.tags),
            Filter::Correlation(c) => e.metadata.correlation_id == Some(*c),
            Filter::Actor(a) => e.metadata.actor.as_deref() == Some(a.as_str()),
            Filter::Select(s) => s.matches(&e.stream_id, &e.event_type, &e.tags),
        }
    }
}

fn plan_for(source: &Source) -> (Plan, Filter) {
    match source {
        Source::All => (Plan::All, Filter::None),
        Source::Stream(s) => (
            Plan::Stream {
                key: key(KIND_STREAM, s.as_bytes()),
            },
            Filter::Stream(s.clone()),
        ),
        Source::Category(c) => (
            Plan::Keys(vec![key(KIND_CATEGORY, c.as_bytes())]),
            Filter::Category(c.clone()),
        ),
        Source::EventTypes(types) => (
            Plan::Keys(types.iter().map(|t| key(KIND_TYPE, t.as_bytes())).collect()),
            Filter::Types(types.clone()),
        ),
        Source::Correlation(c) => (
            Plan::Keys(vec![key(KIND_CORRELATION, c.as_bytes())]),
            Filter::Correlation(*c),
        ),
        Source::Actor(a) => (
            Plan::Keys(vec![key(KIND_ACTOR, a.as_bytes())]),
            Filter::Actor(a.clone()),
        ),
        Source::Query(q) => (
            query_keys(q).map_or(Plan::All, Plan::Keys),
            Filter::Query(q.clone()),
        ),
        Source::Select(sel) => {
            // The query's keys when it has them (tags are the narrowest), else the category's,
            // else those of the category every stream of the prefix is in.
            let category = sel.category.clone().or_else(|| {
                sel.stream_prefix
                    .as_deref()
                    .and_then(|p| p.split_once('-'))
                    .map(|(c, _)| c.to_string())
            });
            let plan = match (sel.query.as_ref().and_then(query_keys), category) {
                (Some(keys), _) => Plan::Keys(keys),
                (None, Some(c)) => Plan::Keys(vec![key(KIND_CATEGORY, c.as_bytes())]),
                (None, None) => Plan::All,
            };
            (plan, Filter::Select(sel.clone()))
        }
    }
}

/// The index keys whose union holds every event `q` matches; `None` when an item matches
/// events of any type and tag, so only the whole log holds them.
fn query_keys(q: &Query) -> Option<Vec<u64>> {
    let mut keys = Vec::new();
    for item in &q.items {
        if let Some(tag) = item.tags.first() {
            keys.push(key(KIND_TAG, tag.as_bytes()));
        } else if !item.types.is_empty() {
            keys.extend(item.types.iter().map(|t| key(KIND_TYPE, t.as_bytes())));
        } else {
            return None;
        }
    }
    keys.sort_unstable();
    keys.dedup();
    Some(keys)
}

/// A position in a read: where it goes on from, and how far it may go.
pub(crate) struct Cursor {
    pub(super) shared: Arc<Shared>,
    plan: Plan,
    filter: Filter,
    dir: Direction,
    /// The next revision (stream plan) or position (other plans) to look at; `None` when the
    /// read has nothing more in its direction.
    next: Option<u64>,
    /// The highest position the read may return; `None` returns nothing.
    pub max_pos: Option<u64>,
    remaining: u64,
    buffer: VecDeque<RecordedEvent>,
    /// The record read last by position.
    cache: Option<Fetched>,
    seq: Option<SeqReader>,
    /// The names of the events the whole-log read decoded last, shared with the next.
    names: EventNames,
}

impl Cursor {
    /// A cursor over `source` starting at `from` (a revision for streams, else a position;
    /// `None` is the start, or the end when going backward).
    pub fn new(
        shared: Arc<Shared>,
        source: &Source,
        from: Option<u64>,
        dir: Direction,
        limit: Option<u64>,
        max_pos: Option<u64>,
    ) -> Cursor {
        let (plan, filter) = plan_for(source);
        let next = Some(from.unwrap_or(match dir {
            Direction::Forward => 0,
            Direction::Backward => u64::MAX,
        }));
        Cursor {
            shared,
            plan,
            filter,
            dir,
            next,
            max_pos,
            remaining: limit.unwrap_or(u64::MAX),
            buffer: VecDeque::new(),
            cache: None,
            seq: None,
            names: EventNames::default(),
        }
    }

    /// The next event, or `None` when there is none up to `max_pos` (for now).
    pub fn next_event(&mut self) -> Result<Option<RecordedEvent>> {
        if self.remaining == 0 {
            return Ok(None);
        }
        while self.buffer.is_empty() {
            if !self.fill()? {
                return Ok(None);
            }
        }
        self.remaining -= 1;
        Ok(self.buffer.pop_front())
    }

    /// The next events, as many as the read had at hand (a record's worth or a page), or
    /// `None` when there is none up to `max_pos` (for now). The events are not moved one by
    /// one: a whole-log read hands out the vector its records were decoded into.
    pub fn next_chunk(&mut self) -> Result<Option<Vec<RecordedEvent>>> {
        if self.remaining == 0 {
            return Ok(None);
        }
        while self.buffer.is_empty() {
            if !self.fill()? {
                return Ok(None);
            }
        }
        // The next chunk is likely the size of this one: room for it now spares the copies
        // of a growing buffer.
        let room = self.buffer.len();
        let mut chunk = std::mem::replace(&mut self.buffer, VecDeque::with_capacity(room));
        if chunk.len() as u64 > self.remaining {
            // Only a limited read stops inside its buffer: keep the rest for no one.
            chunk.truncate(self.remaining as usize);
        }
        self.remaining -= chunk.len() as u64;
        Ok(Some(Vec::from(chunk)))
    }

    /// The event at `position`, from the record read last when it holds it.
    fn fetch(&mut self, position: u64) -> Result<RecordedEvent> {
        if let Some(f) = &self.cache {
            let first = f.events.first().map_or(0, |e| e.position);
            if position >= first {
                if let Some(e) = f.events.get((position - first) as usize) {
                    return Ok(f.give(e));
                }
            }
        }
        let events = fetch_batch(&self.shared, position)?;
        let first = events.first().map_or(0, |e| e.position);
        let at = position.wrapping_sub(first) as usize;
        let share = self.takes_most(&events, at);
        let f = Fetched {
            data: if share { 0 } else { data_bytes(&events) },
            events,
            share,
        };
        let e = f
            .events
            .get(at)
            .filter(|e| e.position == position)
            .map(|e| f.give(e));
        self.cache = Some(f);
        e.ok_or_else(|| {
            index_disagrees(
                &self.shared,
                format!("the batch found for position {position} does not hold it"),
            )
        })
    }

    /// Whether the events that this read gives from a record (`events`), from its event
    /// `at` on, hold at least half of its data: the case of a stream read through a record
    /// of that stream alone.
    fn takes_most(&self, events: &[RecordedEvent], at: usize) -> bool {
        // A stream appears once in a record, so a record of one stream starts and ends
        // with it.
        let (Some(e), Some(first), Some(last)) = (events.get(at), events.first(), events.last())
        else {
            return false;
        };
        if !matches!(self.plan, Plan::Stream { .. })
            || first.stream_id != e.stream_id
            || last.stream_id != e.stream_id
        {
            return false;
        }
        let room = (self.remaining as usize)
            .saturating_sub(self.buffer.len())
            .max(1);
        let taken = match self.dir {
            Direction::Forward => &events[at..events.len().min(at.saturating_add(room))],
            Direction::Backward => &events[(at + 1).saturating_sub(room)..=at],
        };
        taken.len() == events.len() || 2 * data_bytes(taken) >= data_bytes(events)
    }

    fn push(&mut self, e: RecordedEvent) {
        if self.filter.accepts(&e) {
            self.buffer.push_back(e);
        }
    }

    /// Looks further; false when there is nothing more up to `max_pos` for now.
    fn fill(&mut self) -> Result<bool> {
        let (Some(next), Some(max)) = (self.next, self.max_pos) else {
            return Ok(false);
        };
        match (&self.plan, self.dir) {
            (Plan::All, Direction::Forward) => self.fill_all_forward(max),
            (Plan::All, Direction::Backward) => {
                let p = next.min(max);
                let batch = fetch_batch(&self.shared, p)?;
                let first = batch.first().map_or(0, |e| e.position);
                let all = data_bytes(batch.iter());
                let before = self.buffer.len();
                // Events past the read's limit would never be given.
                let room = (self.remaining as usize).saturating_sub(before);
                for e in batch.into_iter().rev() {
                    if self.buffer.len() - before == room {
                        break;
                    }
                    if e.position <= p {
                        self.push(e);
                    }
                }
                if 2 * data_bytes(self.buffer.range(before..)) < all {
                    detach(self.buffer.range_mut(before..));
                }
                self.next = first.checked_sub(1);
                Ok(true)
            }
            (Plan::Stream { key }, Direction::Forward) => {
                let key = *key;
                let mut entries =
                    self.shared
                        .index
                        .scan(key, next, u64::MAX, Direction::Forward, PAGE)?;
                trim_partial_seq(&mut entries, PAGE);
                if entries.is_empty() {
                    return Ok(false);
                }
                for (rev, pos) in entries {
                    if pos > max {
                        // Never step back past a revision already delivered (an entry of a
                        // stream whose name hashes alike can carry the same revision).
                        self.next = Some(self.next.map_or(rev, |n| n.max(rev)));
                        return Ok(!self.buffer.is_empty());
                    }
                    let e = self.fetch(pos)?;
                    self.push(e);
                    self.next = Some(rev + 1);
                }
                Ok(true)
            }
            (Plan::Stream { key }, Direction::Backward) => {
                let key = *key;
                let mut entries =
                    self.shared
                        .index
                        .scan(key, 0, next, Direction::Backward, PAGE)?;
                trim_partial_seq(&mut entries, PAGE);
                if entries.is_empty() {
                    self.next = None;
                    return Ok(false);
                }
                for (rev, pos) in entries {
                    self.next = rev.checked_sub(1);
                    if pos <= max {
                        let e = self.fetch(pos)?;
                        self.push(e);
                    }
                    if self.next.is_none() {
                        break;
                    }
                }
                Ok(true)
            }
            (Plan::Keys(keys), dir) => {
                let (lo, hi) = match dir {
                    Direction::Forward => (next, max),
                    Direction::Backward => (0, next.min(max)),
                };
                if lo > hi {
                    if dir == Direction::Backward {
                        self.next = None;
                    }
                    return Ok(false);
                }
                let mut positions = Vec::new();
                for k in keys.clone() {
                    for (_, pos) in self.shared.index.scan(k, lo, hi, dir, PAGE)? {
                        positions.push(pos);
                    }
                }
                match dir {
                    Direction::Forward => positions.sort_unstable(),
                    Direction::Backward => positions.sort_unstable_by(|a, b| b.cmp(a)),
                }
                positions.dedup();
                positions.truncate(PAGE);
                let Some(&last) = positions.last() else {
                    if dir == Direction::Backward {
                        self.next = None;
                    }
                    return Ok(false);
                };
                for pos in positions {
                    let e = self.fetch(pos)?;
                    self.push(e);
                }
                self.next = match dir {
                    Direction::Forward => Some(last + 1),
                    Direction::Backward => last.checked_sub(1),
                };
                Ok(true)
            }
        }
    }

    /// Reads the next records of the log into the buffer, decoding each whole: its events
    /// share their names, and the record's bytes once the read is a long one.
    fn fill_all_forward(&mut self, max: u64) -> Result<bool> {
        let mut buffer = std::mem::take(&mut self.buffer);
        let mut names = std::mem::take(&mut self.names);
        let filter = std::mem::replace(&mut self.filter, Filter::None);
        let limit = self.remaining as usize;
        let read = self.walk_log(max, PAGE, &mut |payload, want, max, bulk| {
            let before = buffer.len();
            decode_batch_into(payload, &mut names, &mut buffer)?;
            let decoded = buffer.len() - before;
            // Only the events from `want` (a read may start inside a record) up to `max`.
            let mut whole = true;
            while buffer.len() > before && buffer.back().is_some_and(|e| e.position > max) {
                buffer.pop_back();
                whole = false;
            }
            let early = buffer
                .range(before..)
                .take_while(|e| e.position < want)
                .count();
            buffer.drain(before..before + early);
            let given = buffer.len() - before;
            let last = (given > 0)
                .then(|| buffer.back().map(|e| e.position))
                .flatten();
            if !matches!(filter, Filter::None) {
                let new: Vec<RecordedEvent> = buffer.drain(before..).collect();
                buffer.extend(new.into_iter().filter(|e| filter.accepts(e)));
            }
            // Events past the read's limit would never be given.
            buffer.truncate(limit.max(before));
            // The events kept share the record when the read is a long one (a small read's
            // buffer is mostly bytes that nothing else will use) and they are the record's
            // events, or hold at least half of its bytes.
            let kept = buffer.len() - before;
            if !bulk || (kept < decoded && 2 * data_bytes(buffer.range(before..)) < payload.len()) {
                detach(buffer.range_mut(before..));
            }
            Ok(Walked {
                given,
                last,
                whole,
                stopped: false,
            })
        });
        self.buffer = buffer;
        self.names = names;
        self.filter = filter;
        Ok(read?.0 > 0)
    }

    /// Gives `f` the records of the log from the one holding `self.next`, with the first
    /// position wanted, the last allowed (`max`) and whether the reader is reading in bulk
    /// ([`SeqReader::bulk`]), starting no new record once `budget` events were given, until
    /// `f` says it stopped. Returns how many were given and whether `f` stopped the walk.
    fn walk_log(
        &mut self,
        max: u64,
        budget: usize,
        f: &mut dyn FnMut(&Bytes, u64, u64, bool) -> DResult<Walked>,
    ) -> Result<(usize, bool)> {
        let Some(next) = self.next else {
            return Ok((0, false));
        };
        if next > max {
            return Ok((0, false));
        }
        if self.seq.is_none() {
            let (_, offset) = self
                .shared
                .index
                .floor(fixed_key(KIND_BATCH), next)?
                .ok_or_else(|| {
                    index_disagrees(&self.shared, format!("no batch holds position {next}"))
                })?;
            self.seq = Some(SeqReader::new(self.shared.log.segment_list(), offset));
        }
        if let Some(seq) = self.seq.as_mut() {
            seq.bound(self.shared.synced_log_end());
        }
        let mut retried = false;
        let mut read = 0;
        while read < budget && self.next.is_some_and(|n| n <= max) {
            let seq = self.seq.as_mut().expect("set above");
            let (offset, payload) = match seq.next_record()? {
                Next::Record(offset, payload) => {
                    let header = decode_batch_header(&payload)
                        .map_err(|e| self.shared.log.corruption_at(offset, e.0))?;
                    let want = self.next.unwrap_or(0);
                    if header
                        .first_position
                        .saturating_add(u64::from(header.event_count))
                        <= want
                    {
                        continue;
                    }
                    (offset, payload)
                }
                Next::End | Next::Torn { .. } if !retried => {
                    // The writer may have moved on to a new segment, or our buffer may hold
                    // bytes read while a record was being written: look again.
                    retried = true;
                    let at = seq.log_offset();
                    self.seq = Some(SeqReader::new(self.shared.log.segment_list(), at));
                    continue;
                }
                Next::End => {
                    let end = seq.log_offset();
                    return Err(
                        seq.corruption_at(end, format!("the log ends here, before position {max}"))
                    );
                }
                Next::Torn {
                    segment,
                    file_offset,
                    problem,
                } => return Err(seq.torn_at(segment, file_offset, problem)),
            };
            retried = false;
            let want = self.next.unwrap_or(0);
            let bulk = self.seq.as_ref().is_some_and(SeqReader::bulk);
            let walked = f(&payload, want, max, bulk)
                .map_err(|e| self.shared.log.corruption_at(offset, e.0))?;
            read += walked.given;
            if let Some(last) = walked.last {
                self.next = Some(last + 1);
            }
            if !walked.whole || walked.stopped {
                // The reader has moved past this record, whose later events were not given:
                // a later walk finds its place again through the batch index.
                self.seq = None;
                return Ok((read, walked.stopped));
            }
        }
        Ok((read, false))
    }

    /// Gives `f` every event of the read, as stored, until `f` returns false. A forward read
    /// of the whole log hands out views into the records as read from the segment files,
    /// with no decoding into owned events; other reads decode each event.
    pub fn visit(&mut self, f: &mut dyn FnMut(&StoredEvent<'_>) -> bool) -> Result<()> {
        let plain = matches!(
            (&self.plan, self.dir, &self.filter),
            (Plan::All, Direction::Forward, Filter::None)
        );
        if !plain {
            while let Some(e) = self.next_event()? {
                if !f(&StoredEvent::from(&e)) {
                    return Ok(());
                }
            }
            return Ok(());
        }
        while self.remaining > 0 {
            let Some(max) = self.max_pos else {
                return Ok(());
            };
            let mut remaining = self.remaining;
            let mut record = |payload: &Bytes, want: u64, max: u64, _bulk: bool| {
                let mut walked = Walked {
                    given: 0,
                    last: None,
                    whole: true,
                    stopped: false,
                };
                let whole = visit_batch(payload, |e| {
                    if e.position > max {
                        return false;
                    }
                    if e.position >= want {
                        walked.last = Some(e.position);
                        walked.given += 1;
                        remaining -= 1;
                        if !f(e) || remaining == 0 {
                            walked.stopped = true;
                            return false;
                        }
                    }
                    true
                })?;
                walked.whole = whole;
                Ok(walked)
            };
            let walked = self.walk_log(max, usize::MAX, &mut record);
            self.remaining = remaining;
            let (read, stopped) = walked?;
            if stopped || read == 0 {
                return Ok(());
            }
        }
        Ok(())
    }
}

/// The events of a record read by position.
struct Fetched {
    events: Vec<RecordedEvent>,
    /// How many bytes of data they hold (when they are not shared).
    data: usize,
    /// Whether the events given from it may share it (see [`detach_alone`]).
    share: bool,
}

impl Fetched {
    fn give(&self, e: &RecordedEvent) -> RecordedEvent {
        if self.share {
            e.clone()
        } else {
            detach_alone(e.clone(), self.data)
        }
    }
}

/// What the consumer of a record did with it.
struct Walked {
    /// Events given.
    given: usize,
    /// The position of the last event given.
    last: Option<u64>,
    /// Every event of the record up to its end was looked at.
    whole: bool,
    /// The consumer wants no more.
    stopped: bool,
}

/// When a page came back full, drops its last seq's entries so that the next page starts
/// at that seq again and misses none of them (seqs repeat only on hash collisions).
fn trim_partial_seq(entries: &mut Vec<(u64, u64)>, page: usize) {
    if entries.len() < page {
        return;
    }
    if let Some(&(last, _)) = entries.last() {
        let keep = entries
            .iter()
            .rposition(|e| e.0 != last)
            .map_or(0, |i| i + 1);
        if keep > 0 {
            entries.truncate(keep);
        }
    }
}
