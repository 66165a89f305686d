//! What the writer has accepted but the syncer has not applied yet: the requests of groups
//! still waiting for their sync, the stream heads they move, and their event ids. The writer
//! checks every new request against these as well as against the store, so a request sees
//! every request before it whether or not that one is durable yet.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use annal_core::{AppendRequest, NewEvent, Query, Text, Timestamp, Uuid};

use crate::heads::Head;

/// A hash map with a fast hash seeded at random per process (the keys come from clients).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// An accepted request of a group that the syncer has not applied yet (as far as the writer
/// knows).
struct Request {
    group: u64,
    request: Arc<AppendRequest>,
    recorded_at: i64,
    /// For each stream of the request: the revision and the position of its first event.
    starts: Vec<(u64, u64)>,
}

/// Where a pending event with a given id sits.
pub struct PendingEvent<'a> {
    pub stream: &'a Text,
    pub revision: u64,
    pub position: u64,
    pub recorded_at: Timestamp,
    pub event: &'a NewEvent,
}

/// The accepted requests of groups not yet applied, oldest first.
#[derive(Default)]
pub struct Pending {
    /// Heads of streams changed by groups not yet applied, with the group that changed them.
    heads: FastMap<Text, (Head, u64)>,
    /// `requests[i]` is request number `popped + i`.
    requests: VecDeque<Request>,
    popped: u64,
    /// The event ids of `requests`: request number, stream index, event index.
    ids: FastMap<Uuid, (u64, u32, u32)>,
}

impl Pending {
    /// Forgets what groups up to `synced` changed: the syncer has applied them.
    pub fn prune(&mut self, synced: u64) {
        self.heads.retain(|_, (_, group)| *group > synced);
        while self.requests.front().is_some_and(|p| p.group <= synced) {
            let Some(p) = self.requests.pop_front() else {
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

    /// The stream's head after the pending requests, if they change it.
    pub fn head(&self, stream: &str) -> Option<Head> {
        self.heads.get(stream).map(|(h, _)| *h)
    }

    /// Records a stream's new head, moved by a request of `group`.
    pub fn set_head(&mut self, stream: &Text, head: Head, group: u64) {
        self.heads.insert(stream.clone(), (head, group));
    }

    /// Records an accepted request of `group`: `starts` gives, for each of its streams, the
    /// revision and position of its first event.
    pub fn accept(
        &mut self,
        group: u64,
        request: Arc<AppendRequest>,
        recorded_at: i64,
        starts: Vec<(u64, u64)>,
    ) {
        let number = self.popped + self.requests.len() as u64;
        for (si, s) in request.streams.iter().enumerate() {
            for (ei, e) in s.events.iter().enumerate() {
                self.ids.insert(e.id, (number, si as u32, ei as u32));
            }
        }
        self.requests.push_back(Request {
            group,
            request,
            recorded_at,
            starts,
        });
    }

    /// The pending event with this id, if any.
    pub fn event(&self, id: &Uuid) -> Option<PendingEvent<'_>> {
        let &(number, si, ei) = self.ids.get(id)?;
        let p = &self.requests[(number - self.popped) as usize];
        let stream = &p.request.streams[si as usize];
        let (revision, position) = p.starts[si as usize];
        Some(PendingEvent {
            stream: &stream.stream_id,
            revision: revision + u64::from(ei),
            position: position + u64::from(ei),
            recorded_at: Timestamp(p.recorded_at),
            event: &stream.events[ei as usize],
        })
    }

    /// The first position at or after `from` of a pending event that matches `query`.
    pub fn first_match(&self, query: &Query, from: u64) -> Option<u64> {
        // Pending positions grow request by request, stream by stream: the first match is
        // the lowest.
        self.requests.iter().find_map(|p| {
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
        })
    }
}
