//! The in-memory reference store.
//!
//! Everything lives in one `Vec` behind one mutex, and every operation is a plain scan of it.
//! This is slow on large logs, and that is the point: the code should be easy to check by eye,
//! because other backends are judged against it.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use futures_core::Stream;
use uuid::Uuid;

use crate::Text;

use crate::{
    category_of, keep_snapshot, latest_snapshot, validate, AppendRequest, AppendResult, AsOf,
    CategoryInfo, Direction, Error, EventStore, EventStream, ListCategories, ListStreams, NewEvent,
    NewSnapshot, ReadRequest, RecordedEvent, Result, Snapshot, Source, StreamAppend,
    StreamAppendResult, StreamInfo, SubscribeFrom, SubscribeRequest, SubscriptionItem,
    SubscriptionStream, Timestamp,
};

/// An [`EventStore`] held in memory: the reference model for other backends' tests.
///
/// Clones share the same log.
#[derive(Clone)]
pub struct MemoryStore {
    shared: Arc<Shared>,
    max_event_size: usize,
}

struct Shared {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The log; an event's index is its position.
    log: Vec<RecordedEvent>,
    /// Event id to position.
    ids: HashMap<Uuid, u64>,
    /// Stream id to the positions of its events; an entry's index is the event's revision.
    streams: BTreeMap<String, Vec<u64>>,
    /// The waker of each subscription that is waiting for new events, by subscription id.
    wakers: HashMap<u64, Waker>,
    next_subscription_id: u64,
    /// Each stream's snapshots, by revision.
    snapshots: HashMap<String, Vec<Snapshot>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Writes only happen after every check has passed, so a panic elsewhere cannot leave the
        // state half-changed: a poisoned lock is still safe to use.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    fn event(&self, position: u64) -> &RecordedEvent {
        &self.log[to_index(position)]
    }

    fn head(&self) -> Option<u64> {
        self.log.last().map(|e| e.position)
    }

    fn stream_revision(&self, stream_id: &str) -> Option<u64> {
        self.streams
            .get(stream_id)
            .and_then(|positions| positions.len().checked_sub(1))
            .map(to_u64)
    }

    fn stream_events(&self, stream_id: &str) -> Vec<&RecordedEvent> {
        self.streams
            .get(stream_id)
            .map(|positions| positions.iter().map(|&p| self.event(p)).collect())
            .unwrap_or_default()
    }

    fn stream_info(&self, stream_id: &str) -> Option<StreamInfo> {
        let events = self.stream_events(stream_id);
        let first = events.first()?;
        let last = events.last()?;
        Some(StreamInfo {
            stream_id: stream_id.to_string(),
            revision: last.revision,
            first_position: first.position,
            last_position: last.position,
            count: to_u64(events.len()),
            created_at: first.recorded_at,
            last_written_at: last.recorded_at,
        })
    }
}

fn to_u64(n: usize) -> u64 {
    u64::try_from(n).expect("count fits in u64")
}

fn to_index(n: u64) -> usize {
    usize::try_from(n).expect("position fits in usize")
}

/// What an already-stored batch means for a new append.
enum Prior<'a> {
    /// None of the batch's ids is known.
    New,
    /// The exact batch was written before: these are its stored events, in batch order.
    Replay(Vec<&'a RecordedEvent>),
}

fn conflict(stored: &RecordedEvent, problem: impl Into<String>) -> Error {
    Error::EventIdConflict {
        event_id: stored.id,
        stream: stored.stream_id.to_string(),
        position: stored.position,
        problem: problem.into(),
    }
}

/// Compares one batch of a request with what the log already holds under its event ids.
fn classify<'a>(state: &'a State, append: &StreamAppend) -> Result<Prior<'a>> {
    let stored: Vec<Option<&RecordedEvent>> = append
        .events
        .iter()
        .map(|e| state.ids.get(&e.id).map(|&p| state.event(p)))
        .collect();
    let Some(first_known) = stored.iter().flatten().next() else {
        return Ok(Prior::New);
    };
    if stored.iter().any(Option::is_none) {
        return Err(conflict(
            first_known,
            format!(
                "only part of the batch for stream '{}' was written before; a retry must repeat \
                 the original batch exactly",
                append.stream_id
            ),
        ));
    }
    let stored: Vec<&RecordedEvent> = stored.into_iter().flatten().collect();
    for (new, old) in append.events.iter().zip(&stored) {
        if old.stream_id != append.stream_id {
            return Err(conflict(
                old,
                format!(
                    "the request appends it to stream '{}' instead",
                    append.stream_id
                ),
            ));
        }
        if !old.same_as(new) {
            return Err(conflict(
                old,
                "the stored event differs from the new event with the same id",
            ));
        }
    }
    for pair in stored.windows(2) {
        if pair[1].revision != pair[0].revision + 1 {
            return Err(conflict(
                pair[1],
                format!(
                    "the batch for stream '{}' was written before in a different order or not \
                     as one batch",
                    append.stream_id
                ),
            ));
        }
    }
    Ok(Prior::Replay(stored))
}

/// The result the original append returned, rebuilt from the stored events of each batch.
fn replayed_result(batches: &[Vec<&RecordedEvent>]) -> AppendResult {
    let all = || batches.iter().flatten();
    let streams = batches
        .iter()
        .map(|events| StreamAppendResult {
            stream_id: events[0].stream_id.clone(),
            revision: events[events.len() - 1].revision,
            first_position: events.iter().map(|e| e.position).min().unwrap_or(0),
            last_position: events.iter().map(|e| e.position).max().unwrap_or(0),
        })
        .collect();
    AppendResult {
        streams,
        first_position: all().map(|e| e.position).min().unwrap_or(0),
        last_position: all().map(|e| e.position).max().unwrap_or(0),
        recorded_at: batches[0][0].recorded_at,
    }
}

/// True when a subscription or read of `source` (other than its stream revision bounds) selects `e`.
fn source_matches(source: &Source, e: &RecordedEvent) -> bool {
    match source {
        Source::All => true,
        Source::Stream(id) => e.stream_id == *id,
        Source::Category(c) => category_of(&e.stream_id) == c,
        Source::EventTypes(types) => types.iter().any(|t| *t == e.event_type),
        Source::Query(q) => q.matches(&e.event_type, &e.tags),
        Source::Correlation(c) => e.metadata.correlation_id == Some(*c),
        Source::Actor(a) => e.metadata.actor.as_deref() == Some(a.as_str()),
        Source::Select(s) => s.matches(&e.stream_id, &e.event_type, &e.tags),
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store with the default event size limit.
    pub fn new() -> Self {
        MemoryStore {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
            }),
            max_event_size: validate::DEFAULT_MAX_EVENT_SIZE,
        }
    }

    /// Sets the largest event (as [`NewEvent::size`] counts it) that appends accept.
    pub fn with_max_event_size(mut self, max_event_size: usize) -> Self {
        self.max_event_size = max_event_size;
        self
    }

    /// A copy of the whole log, in position order.
    pub fn snapshot(&self) -> Vec<RecordedEvent> {
        self.shared.lock().log.clone()
    }

    fn append_now(&self, request: &AppendRequest) -> Result<AppendResult> {
        validate::append(request, self.max_event_size)?;
        let mut state = self.shared.lock();

        // Idempotency: a request whose every batch is already stored, exactly, is a retry.
        let mut replays = Vec::new();
        let mut first_replayed = None;
        let mut any_new = false;
        for append in &request.streams {
            match classify(&state, append)? {
                Prior::New => any_new = true,
                Prior::Replay(events) => {
                    first_replayed.get_or_insert(events[0]);
                    replays.push(events);
                }
            }
        }
        if let Some(stored) = first_replayed {
            if any_new {
                return Err(conflict(
                    stored,
                    "it was written by an earlier request that did not carry the rest of this one",
                ));
            }
            return Ok(replayed_result(&replays));
        }

        for append in &request.streams {
            let actual = state.stream_revision(&append.stream_id);
            if !append.expected.accepts(actual) {
                return Err(Error::WrongExpectedRevision {
                    stream: append.stream_id.to_string(),
                    expected: append.expected,
                    actual,
                });
            }
        }

        if let Some(condition) = &request.condition {
            let first_match = state.log.iter().find(|e| {
                condition.after.is_none_or(|after| e.position > after)
                    && condition.query.matches(&e.event_type, &e.tags)
            });
            if let Some(e) = first_match {
                return Err(Error::ConditionFailed {
                    position: e.position,
                    after: condition.after,
                });
            }
        }

        let now = Timestamp::now();
        let recorded_at = state.log.last().map_or(now, |e| e.recorded_at.max(now));
        let first_position = to_u64(state.log.len());
        let mut streams = Vec::new();
        for append in &request.streams {
            let stream_first = to_u64(state.log.len());
            let mut revision = state
                .stream_revision(&append.stream_id)
                .map_or(0, |r| r + 1);
            for e in &append.events {
                let position = to_u64(state.log.len());
                state.log.push(recorded(
                    e,
                    &append.stream_id,
                    revision,
                    position,
                    recorded_at,
                ));
                state.ids.insert(e.id, position);
                // Events of no stream make no stream (and their revisions start at 0 in
                // every request, as the stream's revision is always none).
                if !append.stream_id.is_empty() {
                    state
                        .streams
                        .entry(append.stream_id.to_string())
                        .or_default()
                        .push(position);
                }
                revision += 1;
            }
            streams.push(StreamAppendResult {
                stream_id: append.stream_id.clone(),
                revision: revision - 1,
                first_position: stream_first,
                last_position: to_u64(state.log.len()) - 1,
            });
        }
        let result = AppendResult {
            streams,
            first_position,
            last_position: to_u64(state.log.len()) - 1,
            recorded_at,
        };
        let wakers = std::mem::take(&mut state.wakers);
        drop(state);
        wakers.into_values().for_each(Waker::wake);
        Ok(result)
    }

    /// The head of the log and the events of a read.
    fn read_now(&self, request: &ReadRequest) -> Result<(Option<u64>, Vec<RecordedEvent>)> {
        validate::read(request)?;
        let state = self.shared.lock();
        let head = state.head();
        let visible = |e: &RecordedEvent| match request.as_of {
            None => true,
            Some(AsOf::Position(p)) => e.position <= p,
            Some(AsOf::Time(t)) => e.recorded_at <= t,
        };
        // `from` counts revisions in a stream read and positions otherwise.
        let (candidates, key): (Vec<&RecordedEvent>, fn(&RecordedEvent) -> u64) =
            match &request.source {
                Source::Stream(id) => (state.stream_events(id), |e| e.revision),
                source => (
                    state
                        .log
                        .iter()
                        .filter(|e| source_matches(source, e))
                        .collect(),
                    |e| e.position,
                ),
            };
        let mut selected: Vec<&RecordedEvent> =
            candidates.into_iter().filter(|e| visible(e)).collect();
        match request.direction {
            Direction::Forward => selected.retain(|e| request.from.is_none_or(|f| key(e) >= f)),
            Direction::Backward => {
                selected.retain(|e| request.from.is_none_or(|f| key(e) <= f));
                selected.reverse();
            }
        }
        if let Some(limit) = request.limit {
            selected.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        }
        Ok((head, selected.into_iter().cloned().collect()))
    }

    fn subscribe_now(&self, request: SubscribeRequest) -> Result<Subscription> {
        validate::subscribe(&request)?;
        let mut state = self.shared.lock();
        let head = state.head();
        validate::resume_point(request.from, head)?;
        let next = match request.from {
            SubscribeFrom::Start => 0,
            SubscribeFrom::After(p) => p.saturating_add(1),
            SubscribeFrom::Now => head.map_or(0, |h| h + 1),
        };
        let id = state.next_subscription_id;
        state.next_subscription_id += 1;
        Ok(Subscription {
            shared: Arc::clone(&self.shared),
            id,
            source: request.source,
            next,
            caught_up_at: Some(head),
            reported: None,
        })
    }

    fn list_streams_now(&self, request: &ListStreams) -> Vec<StreamInfo> {
        let state = self.shared.lock();
        let limit = if request.limit == 0 {
            usize::MAX
        } else {
            request.limit
        };
        state
            .streams
            .keys()
            .filter(|id| {
                request
                    .prefix
                    .as_ref()
                    .is_none_or(|prefix| id.starts_with(prefix.as_str()))
            })
            .filter(|id| request.after.as_ref().is_none_or(|after| *id > after))
            .take(limit)
            .filter_map(|id| state.stream_info(id))
            .collect()
    }

    fn list_categories_now(&self, request: &ListCategories) -> Vec<CategoryInfo> {
        let state = self.shared.lock();
        let mut categories: BTreeMap<&str, CategoryInfo> = BTreeMap::new();
        for (id, positions) in &state.streams {
            let category = category_of(id);
            let info = categories.entry(category).or_insert_with(|| CategoryInfo {
                category: category.to_string(),
                stream_count: 0,
                event_count: 0,
            });
            info.stream_count += 1;
            info.event_count += to_u64(positions.len());
        }
        let limit = if request.limit == 0 {
            usize::MAX
        } else {
            request.limit
        };
        categories
            .into_values()
            .filter(|c| {
                request
                    .after
                    .as_ref()
                    .is_none_or(|after| c.category > *after)
            })
            .take(limit)
            .collect()
    }

    fn position_at_now(&self, at: Timestamp) -> Option<u64> {
        let state = self.shared.lock();
        // recorded_at never decreases along the log, so the last match is the first from the end.
        state
            .log
            .iter()
            .rev()
            .find(|e| e.recorded_at <= at)
            .map(|e| e.position)
    }
}

fn recorded(
    e: &NewEvent,
    stream_id: &Text,
    revision: u64,
    position: u64,
    recorded_at: Timestamp,
) -> RecordedEvent {
    RecordedEvent {
        id: e.id,
        stream_id: stream_id.clone(),
        revision,
        position,
        recorded_at,
        event_type: e.event_type.clone(),
        schema_version: e.schema_version,
        content_type: e.content_type.clone(),
        metadata: e.metadata.clone(),
        data: e.data.clone(),
        tags: e.tags.clone(),
    }
}

impl EventStore for MemoryStore {
    async fn append(&self, request: AppendRequest) -> Result<AppendResult> {
        self.append_now(&request)
    }

    async fn read(&self, request: ReadRequest) -> Result<EventStream> {
        let (head, events) = self.read_now(&request)?;
        Ok(EventStream::new(
            head,
            VecStream {
                events: events.into_iter(),
            },
        ))
    }

    async fn subscribe(&self, request: SubscribeRequest) -> Result<SubscriptionStream> {
        Ok(Box::pin(self.subscribe_now(request)?))
    }

    async fn stream_info(&self, stream_id: &str) -> Result<Option<StreamInfo>> {
        validate::stream_id(stream_id)?;
        Ok(self.shared.lock().stream_info(stream_id))
    }

    async fn list_streams(&self, request: ListStreams) -> Result<Vec<StreamInfo>> {
        Ok(self.list_streams_now(&request))
    }

    async fn list_categories(&self, request: ListCategories) -> Result<Vec<CategoryInfo>> {
        Ok(self.list_categories_now(&request))
    }

    async fn position_at(&self, at: Timestamp) -> Result<Option<u64>> {
        Ok(self.position_at_now(at))
    }

    async fn head(&self) -> Result<Option<u64>> {
        Ok(self.shared.lock().head())
    }

    async fn put_snapshot(&self, snapshot: NewSnapshot) -> Result<()> {
        validate::snapshot(&snapshot, self.max_event_size)?;
        let mut state = self.shared.lock();
        validate::snapshot_revision(&snapshot, state.stream_revision(&snapshot.stream_id))?;
        let kept = Snapshot {
            taken_at: Timestamp::now(),
            stream_id: snapshot.stream_id,
            revision: snapshot.revision,
            schema_version: snapshot.schema_version,
            data: snapshot.data,
        };
        let list = state.snapshots.entry(kept.stream_id.clone()).or_default();
        keep_snapshot(list, kept, |s| s.revision);
        Ok(())
    }

    async fn get_snapshot(
        &self,
        stream_id: &str,
        at_or_before: Option<u64>,
    ) -> Result<Option<Snapshot>> {
        validate::stream_id(stream_id)?;
        let state = self.shared.lock();
        Ok(state
            .snapshots
            .get(stream_id)
            .and_then(|list| latest_snapshot(list, at_or_before, |s| s.revision))
            .cloned())
    }

    async fn delete_snapshots(&self, stream_id: &str) -> Result<u64> {
        validate::stream_id(stream_id)?;
        let removed = self.shared.lock().snapshots.remove(stream_id);
        Ok(removed.map_or(0, |list| to_u64(list.len())))
    }
}

/// The events of a read, taken when the read was made.
struct VecStream {
    events: std::vec::IntoIter<RecordedEvent>,
}

impl Stream for VecStream {
    type Item = Result<RecordedEvent>;

    fn poll_next(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Poll::Ready(self.events.next().map(Ok))
    }
}

/// A subscription walks the log by position: history up to the head seen when it was made,
/// the caught-up marker, then whatever is appended later. Reading every event from the one
/// shared log is what rules out gaps and duplicates at the switch to live.
struct Subscription {
    shared: Arc<Shared>,
    id: u64,
    source: Source,
    /// The next position to look at.
    next: u64,
    /// The head when the subscription was made, until the caught-up marker has been sent.
    caught_up_at: Option<Option<u64>>,
    /// The highest position reported by an event, the marker or a checkpoint.
    reported: Option<u64>,
}

impl Stream for Subscription {
    type Item = Result<SubscriptionItem>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let mut state = this.shared.lock();
        // While catching up, only history (up to the head seen at the start) is delivered.
        let end = match this.caught_up_at {
            Some(head) => head.map_or(0, |h| h + 1),
            None => to_u64(state.log.len()),
        };
        while this.next < end {
            let e = state.event(this.next);
            this.next += 1;
            if source_matches(&this.source, e) {
                this.reported = Some(e.position);
                return Poll::Ready(Some(Ok(SubscriptionItem::Event(e.clone()))));
            }
        }
        if let Some(head) = this.caught_up_at.take() {
            this.reported = this.reported.max(head);
            return Poll::Ready(Some(Ok(SubscriptionItem::CaughtUp { position: head })));
        }
        if let Some(position) = end.checked_sub(1).filter(|&p| Some(p) > this.reported) {
            this.reported = Some(position);
            return Poll::Ready(Some(Ok(SubscriptionItem::Checkpoint { position })));
        }
        state.wakers.insert(this.id, cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.shared.lock().wakers.remove(&self.id);
    }
}
