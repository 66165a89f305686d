//! A consumer group's dispatch as a pure state machine: no I/O, no clock of its own (every
//! call is given the time), so that tests drive it through any interleaving.
//!
//! Events are offered in log order, each with its key. At any moment a key has at most one
//! event in flight, held by one member; its next event is delivered only once that one is
//! settled: acknowledged, or parked. A failed delivery (a nack, an ack timeout, a member
//! gone) is retried after a backoff, by any member, until `max_attempts`; then the event
//! is parked with the reason, its attempts and the member that failed it. Every delivery
//! has an epoch: an ack must name the one it answers, so an ack that comes after its lease
//! moved to another member is refused, never taken for the new delivery.
//!
//! The window: every position below `floor` is settled; above it, the machine holds the
//! events offered and not yet settled, and the positions acknowledged out of order. The
//! window's size is bounded by `buffer`; [`Machine::room`] says how many more events the
//! feed may offer.
//!
//! Parked events leave the window (they are kept as dead letters, pointers into the log
//! that the journal keeps). With [`OnPark::Block`] a key with a parked event is blocked:
//! its later events are parked as *waiting*, and go on once every parked event of the key
//! was replayed and acknowledged, or discarded. Replayed and released events are delivered
//! from outside the window; the feed fetches their events (a delivery without its event).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use annal_core::{Error, Text, Timestamp};

use super::def::{GroupSettings, OnPark};

/// A member's id, unique within its group for as long as the group runs.
pub type MemberId = u64;

/// The time a call happens at: monotonic for timers, and the wall clock for records.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub at: Instant,
    pub wall: Timestamp,
}

impl Now {
    /// The time now.
    pub fn current() -> Self {
        Now {
            at: Instant::now(),
            wall: Timestamp::now(),
        }
    }
}

/// An event the group set aside: failed too often (or nacked to park), or waiting behind
/// one that did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub position: u64,
    pub key: Text,
    pub reason: String,
    /// Its failed deliveries.
    pub attempts: u32,
    /// The member whose delivery failed last (empty for a waiting event).
    pub member: String,
    pub parked_at: Timestamp,
    /// Not failed itself: it waits behind an earlier parked event of its key.
    pub waiting: bool,
}

/// A change the journal keeps, in the order it happened. The floor is read from
/// [`Machine::floor`] whenever the journal writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// An event above the floor was acknowledged.
    Acked(u64),
    /// An event in the window failed this many times so far.
    Attempts { position: u64, attempts: u32 },
    /// An event was parked (or its dead letter changed).
    Parked(DeadLetter),
    /// A dead letter is gone: its replay was acknowledged, or it was discarded.
    Unparked(u64),
}

/// An event handed to a member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery<E> {
    pub member: MemberId,
    pub position: u64,
    pub key: Text,
    /// Names this delivery in its ack or nack.
    pub epoch: u64,
    /// 1 for the first delivery of the event, 2 for its first retry, ...
    pub attempt: u32,
    /// `None` for an event from outside the window (replayed or released): the feed reads
    /// it from the log.
    pub event: Option<E>,
}

/// What a member says of an event it could not handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nack {
    /// Try again after the backoff (parked once its attempts run out).
    Retry(String),
    /// Park it now.
    Park(String),
}

/// Something the machine did on its own, for the log and the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Happened {
    /// A delivery was not acknowledged within `ack_timeout`.
    TimedOut { member: MemberId, position: u64 },
    /// A member was not heard from within `member_timeout`, and lost what it held.
    MemberLost {
        member: MemberId,
        name: String,
        held: usize,
    },
}

/// Counts since the machine started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub delivered: u64,
    pub redelivered: u64,
    pub acked: u64,
    pub parked: u64,
    /// Times the members changed: a join, a leave, a member lost.
    pub rebalances: u64,
}

/// The group's size at a glance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gauges {
    pub floor: u64,
    /// Offered, not yet settled (in flight, queued or in backoff), replays included.
    pub pending: usize,
    pub in_flight: usize,
    pub parked: usize,
    pub members: usize,
}

#[derive(Debug)]
struct Pending<E> {
    key: Text,
    event: Option<E>,
    attempts: u32,
    held: Option<Held>,
    /// Delivered from outside the window: a replayed or released dead letter.
    from_dead: bool,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    member: MemberId,
    epoch: u64,
    deadline: Instant,
}

#[derive(Debug, Default)]
struct KeyState {
    /// Its pending events, in log order.
    queue: BTreeSet<u64>,
    /// Its event in flight.
    busy: Option<u64>,
    /// In backoff until then.
    not_before: Option<Instant>,
    /// Its dead letters that are not waiting (replaying ones included).
    parked: u32,
    /// The head position it is listed under in `ready`.
    ready_at: Option<u64>,
    /// Its latest parked event, which its waiting events wait behind.
    blocker: u64,
}

impl KeyState {
    fn idle(&self) -> bool {
        self.queue.is_empty() && self.busy.is_none() && self.parked == 0
    }
}

#[derive(Debug)]
struct Member {
    name: String,
    last_seen: Instant,
    held: BTreeSet<u64>,
}

/// One group's dispatch (see the module's documentation).
#[derive(Debug)]
pub struct Machine<E> {
    settings: GroupSettings,
    /// Every position below it is settled.
    floor: u64,
    /// The next position the feed may offer: every event before it was offered or skipped.
    next: u64,
    /// Pending events in the window.
    window: BTreeSet<u64>,
    /// Acknowledged positions at or above the floor, below `next`.
    acked: BTreeSet<u64>,
    /// Acknowledged positions at or after `next`, restored from the journal: passed over
    /// when the feed offers them again.
    settled_ahead: BTreeSet<u64>,
    /// Failed attempts restored from the journal, for events not offered again yet.
    restored_attempts: HashMap<u64, u32>,
    pending: BTreeMap<u64, Pending<E>>,
    keys: HashMap<Text, KeyState>,
    /// Keys that can be delivered now, by their head position.
    ready: BTreeSet<(u64, Text)>,
    /// Keys in backoff, by when they are due.
    backoffs: BTreeSet<(Instant, Text)>,
    /// Deliveries by their ack deadline.
    deadlines: BTreeSet<(Instant, u64)>,
    members: BTreeMap<MemberId, Member>,
    next_member: MemberId,
    /// The member after which the next delivery round starts.
    turn: MemberId,
    epoch: u64,
    dead: BTreeMap<u64, DeadLetter>,
    /// Dead letters being delivered again.
    replaying: BTreeSet<u64>,
    changes: Vec<Change>,
    counters: Counters,
}

fn invalid(problem: String) -> Error {
    Error::invalid("delivery", problem)
}

impl<E> Machine<E> {
    /// A machine resumed from what the journal kept: the floor, the acknowledged positions
    /// above it, the failed attempts of events in the window, and the dead letters.
    /// `epoch` is where delivery epochs start: above every epoch an earlier run gave out.
    pub fn new(
        settings: GroupSettings,
        floor: u64,
        acked: impl IntoIterator<Item = u64>,
        attempts: impl IntoIterator<Item = (u64, u32)>,
        dead: impl IntoIterator<Item = DeadLetter>,
        epoch: u64,
    ) -> Self {
        let mut m = Machine {
            settings,
            floor,
            next: floor,
            window: BTreeSet::new(),
            acked: BTreeSet::new(),
            settled_ahead: acked.into_iter().filter(|p| *p >= floor).collect(),
            restored_attempts: attempts.into_iter().filter(|(p, _)| *p >= floor).collect(),
            pending: BTreeMap::new(),
            keys: HashMap::new(),
            ready: BTreeSet::new(),
            backoffs: BTreeSet::new(),
            deadlines: BTreeSet::new(),
            members: BTreeMap::new(),
            next_member: 1,
            turn: 0,
            epoch,
            dead: BTreeMap::new(),
            replaying: BTreeSet::new(),
            changes: Vec::new(),
            counters: Counters::default(),
        };
        for d in dead {
            if !d.waiting {
                let k = m.keys.entry(d.key.clone()).or_default();
                k.parked += 1;
                k.blocker = d.position;
            }
            m.dead.insert(d.position, d);
        }
        // Waiting letters with nothing left to wait for (the group now skips, or their
        // key's parked events settled just before a restart) go on.
        let skip = m.settings.on_park == OnPark::Skip;
        let keys: BTreeSet<Text> = m
            .dead
            .values()
            .filter(|d| d.waiting)
            .filter(|d| skip || m.keys.get(&d.key).is_none_or(|k| k.parked == 0))
            .map(|d| d.key.clone())
            .collect();
        for key in keys {
            m.release_waiting(&key);
        }
        m
    }

    /// Member ids start at `first` (a run of the group of its own: an id from an earlier
    /// run of the group never names a member of this one).
    pub fn first_member(mut self, first: MemberId) -> Self {
        self.next_member = first.max(1);
        self.turn = self.next_member - 1;
        self
    }

    pub fn settings(&self) -> &GroupSettings {
        &self.settings
    }

    /// Every position below it is settled: where a restart reads from.
    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// The next position the feed may offer.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Acknowledged positions at or above the floor.
    pub fn acked(&self) -> impl Iterator<Item = u64> + '_ {
        self.acked.iter().chain(&self.settled_ahead).copied()
    }

    /// Failed attempts of the events in the window.
    pub fn attempts(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.window
            .iter()
            .filter_map(|p| self.pending.get(p).map(|e| (*p, e.attempts)))
            .filter(|(_, a)| *a > 0)
            .chain(self.restored_attempts.iter().map(|(p, a)| (*p, *a)))
    }

    /// How many more events the feed may offer now.
    pub fn room(&self) -> usize {
        if self.dead.len() >= self.settings.max_parked as usize {
            return 0;
        }
        let used = self.window.len() + self.acked.len();
        (self.settings.buffer as usize).saturating_sub(used)
    }

    pub fn gauges(&self) -> Gauges {
        Gauges {
            floor: self.floor,
            pending: self.pending.len(),
            in_flight: self.members.values().map(|m| m.held.len()).sum(),
            parked: self.dead.len(),
            members: self.members.len(),
        }
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The changes the journal has not taken yet.
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    /// The dead letters, in log order.
    pub fn dead_letters(&self) -> impl Iterator<Item = &DeadLetter> + '_ {
        self.dead.values()
    }

    /// True while a dead letter is being delivered again.
    pub fn is_replaying(&self, position: u64) -> bool {
        self.replaying.contains(&position)
    }

    /// The members: id, name, and the positions each holds.
    pub fn members(&self) -> impl Iterator<Item = (MemberId, &str, usize)> + '_ {
        self.members
            .iter()
            .map(|(id, m)| (*id, m.name.as_str(), m.held.len()))
    }

    /// The feed's next event, at `position` (at or after [`Machine::next`]) with its key.
    /// It must have [`Machine::room`]. An event settled before a restart is passed over.
    pub fn offer(&mut self, position: u64, key: Text, event: E, now: Now) {
        debug_assert!(position >= self.next, "offered out of order");
        self.next = self.next.max(position + 1);
        self.pass_settled();
        if self.acked.contains(&position) || self.dead.contains_key(&position) {
            self.move_floor();
            return;
        }
        let attempts = self.restored_attempts.remove(&position).unwrap_or(0);
        let blocker = match self.keys.get(&key) {
            Some(k) if k.parked > 0 && self.settings.on_park == OnPark::Block => Some(k.blocker),
            _ => None,
        };
        if let Some(blocker) = blocker {
            let letter = DeadLetter {
                position,
                key: key.clone(),
                reason: format!("waits behind parked event {blocker} of its key"),
                attempts,
                member: String::new(),
                parked_at: now.wall,
                waiting: true,
            };
            self.changes.push(Change::Parked(letter.clone()));
            self.dead.insert(position, letter);
            self.move_floor();
            return;
        }
        self.window.insert(position);
        self.pending.insert(
            position,
            Pending {
                key: key.clone(),
                event: Some(event),
                attempts,
                held: None,
                from_dead: false,
            },
        );
        self.keys
            .entry(key.clone())
            .or_default()
            .queue
            .insert(position);
        self.refresh(&key, now.at);
    }

    /// The feed has seen every event of its source before `next` (a filtered source's
    /// checkpoint): the floor may pass positions no event of the group holds.
    pub fn advance(&mut self, next: u64) {
        if next > self.next {
            self.next = next;
            self.pass_settled();
            self.move_floor();
        }
    }

    /// A new member. Refused once the group has `max_members`.
    pub fn join(&mut self, name: &str, now: Now) -> Result<MemberId, Error> {
        if self.members.len() >= self.settings.max_members as usize {
            return Err(Error::Unavailable(format!(
                "the group has its most members ({}, max_members)",
                self.settings.max_members
            )));
        }
        let id = self.next_member;
        self.next_member += 1;
        self.members.insert(
            id,
            Member {
                name: clip(name.to_string()),
                last_seen: now.at,
                held: BTreeSet::new(),
            },
        );
        self.counters.rebalances += 1;
        Ok(id)
    }

    /// A member leaves: what it held is delivered again, and the attempt is not counted
    /// against the events.
    pub fn leave(&mut self, member: MemberId, now: Now) -> Result<(), Error> {
        let m = self
            .members
            .remove(&member)
            .ok_or_else(|| unknown_member(member))?;
        for position in m.held {
            self.revoke(position, None, now);
        }
        self.counters.rebalances += 1;
        Ok(())
    }

    /// A member is alive.
    pub fn heartbeat(&mut self, member: MemberId, now: Now) -> Result<(), Error> {
        let m = self
            .members
            .get_mut(&member)
            .ok_or_else(|| unknown_member(member))?;
        m.last_seen = m.last_seen.max(now.at);
        Ok(())
    }

    /// Hands ready keys' next events to members with room, in turn.
    pub fn poll(&mut self, now: Now) -> Vec<Delivery<E>>
    where
        E: Clone,
    {
        self.wake(now.at);
        let mut out = Vec::new();
        let cap = self.settings.max_in_flight as usize;
        while !self.ready.is_empty() {
            let start = self.turn;
            let member = self
                .members
                .range(start + 1..)
                .chain(self.members.range(..=start))
                .find(|(_, m)| m.held.len() < cap)
                .map(|(id, _)| *id);
            let Some(member) = member else { break };
            self.turn = member;
            let Some((position, key)) = self.ready.pop_first() else {
                break;
            };
            let k = self.keys.get_mut(&key).expect("a ready key is known");
            k.ready_at = None;
            k.busy = Some(position);
            self.epoch += 1;
            let epoch = self.epoch;
            let deadline = now.at + self.settings.ack_timeout;
            let p = self
                .pending
                .get_mut(&position)
                .expect("a key's head is pending");
            p.held = Some(Held {
                member,
                epoch,
                deadline,
            });
            self.deadlines.insert((deadline, position));
            if let Some(m) = self.members.get_mut(&member) {
                m.held.insert(position);
            }
            self.counters.delivered += 1;
            if p.attempts > 0 {
                self.counters.redelivered += 1;
            }
            out.push(Delivery {
                member,
                position,
                key,
                epoch,
                attempt: p.attempts + 1,
                event: p.event.clone(),
            });
        }
        out
    }

    /// Checks that `member` holds `position` under `epoch`.
    fn check(&self, member: MemberId, position: u64, epoch: u64) -> Result<(), Error> {
        if !self.members.contains_key(&member) {
            return Err(unknown_member(member));
        }
        let Some(p) = self.pending.get(&position) else {
            return Err(invalid(format!(
                "event {position} is not in flight in this group: it was settled, or never delivered"
            )));
        };
        match p.held {
            Some(h) if h.member == member && h.epoch == epoch => Ok(()),
            Some(h) if h.member == member => Err(invalid(format!(
                "epoch {epoch} of event {position} is stale: the event was delivered again (epoch {})",
                h.epoch
            ))),
            Some(_) => Err(invalid(format!(
                "event {position} is held by another member: its lease moved after epoch {epoch}"
            ))),
            None => Err(invalid(format!(
                "event {position} is not held by member {member}: its lease ended (epoch {epoch}), and it waits to be delivered again"
            ))),
        }
    }

    /// The member handled the event.
    pub fn ack(
        &mut self,
        member: MemberId,
        position: u64,
        epoch: u64,
        now: Now,
    ) -> Result<(), Error> {
        self.check(member, position, epoch)?;
        self.touch(member, now);
        let p = self.release(position);
        self.counters.acked += 1;
        if p.from_dead {
            self.replaying.remove(&position);
            if let Some(d) = self.dead.remove(&position) {
                self.unparked(position);
                if !d.waiting {
                    self.unpark_one(&p.key);
                }
            }
        } else {
            self.window.remove(&position);
            self.acked.insert(position);
            self.changes.push(Change::Acked(position));
            self.move_floor();
        }
        self.refresh(&p.key, now.at);
        self.forget_key(&p.key);
        Ok(())
    }

    /// The member could not handle the event: retry it after the backoff, or park it.
    pub fn nack(
        &mut self,
        member: MemberId,
        position: u64,
        epoch: u64,
        nack: Nack,
        now: Now,
    ) -> Result<(), Error> {
        self.check(member, position, epoch)?;
        let nack = match nack {
            Nack::Retry(r) => Nack::Retry(clip(r)),
            Nack::Park(r) => Nack::Park(clip(r)),
        };
        self.touch(member, now);
        let name = self.member_name(member);
        match nack {
            Nack::Retry(reason) => self.fail(position, reason, name, now),
            Nack::Park(reason) => {
                let p = self.release(position);
                let attempts = p.attempts + 1;
                self.park(position, p, reason, attempts, name, now);
            }
        }
        Ok(())
    }

    /// Times out deliveries past their deadline and members not heard from: what they held
    /// fails, and is retried or parked.
    pub fn tick(&mut self, now: Now) -> Vec<Happened> {
        let mut happened = Vec::new();
        let lost: Vec<MemberId> = self
            .members
            .iter()
            .filter(|(_, m)| {
                now.at.saturating_duration_since(m.last_seen) >= self.settings.member_timeout
            })
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            let m = self.members.remove(&id).expect("listed above");
            let reason = format!("member '{}' was lost (no heartbeat)", m.name);
            happened.push(Happened::MemberLost {
                member: id,
                name: m.name.clone(),
                held: m.held.len(),
            });
            for position in m.held {
                self.revoke(position, Some((reason.clone(), m.name.clone())), now);
            }
            self.counters.rebalances += 1;
        }
        while let Some(&(deadline, position)) = self.deadlines.first() {
            if deadline > now.at {
                break;
            }
            self.deadlines.pop_first();
            let Some(held) = self.pending.get(&position).and_then(|p| p.held) else {
                continue;
            };
            if held.deadline != deadline {
                continue;
            }
            let name = self.member_name(held.member);
            if let Some(m) = self.members.get_mut(&held.member) {
                m.held.remove(&position);
            }
            happened.push(Happened::TimedOut {
                member: held.member,
                position,
            });
            let reason = format!(
                "not acknowledged within {} (ack_timeout)",
                humantime::format_duration(self.settings.ack_timeout)
            );
            self.fail(position, reason, name, now);
        }
        happened
    }

    /// The next instant something falls due: a backoff ends, an ack or a member times out.
    pub fn next_deadline(&self) -> Option<Instant> {
        let members = self
            .members
            .values()
            .map(|m| m.last_seen + self.settings.member_timeout)
            .min();
        [
            self.backoffs.first().map(|(t, _)| *t),
            self.deadlines.first().map(|(t, _)| *t),
            members,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Delivers dead letters again: the one at `position`, or every one that is not
    /// waiting (waiting ones follow their key's parked events). Returns how many.
    pub fn replay(&mut self, position: Option<u64>, now: Now) -> Result<usize, Error> {
        let chosen: Vec<u64> = match position {
            Some(p) => {
                let d = self.dead.get(&p).ok_or_else(|| not_parked(p))?;
                if d.waiting && self.settings.on_park == OnPark::Block {
                    return Err(Error::invalid(
                        "position",
                        format!(
                            "event {p} waits behind a parked event of its key; replay or discard that one first"
                        ),
                    ));
                }
                if self.replaying.contains(&p) {
                    return Ok(0);
                }
                vec![p]
            }
            None => self
                .dead
                .values()
                .filter(|d| !d.waiting && !self.replaying.contains(&d.position))
                .map(|d| d.position)
                .collect(),
        };
        for p in &chosen {
            let key = self.dead[p].key.clone();
            self.requeue(*p, key, now.at);
        }
        Ok(chosen.len())
    }

    /// Drops dead letters: the one at `position`, or all. A key whose parked events are all
    /// gone releases its waiting ones. Returns how many.
    pub fn discard(&mut self, position: Option<u64>, now: Now) -> Result<usize, Error> {
        let chosen: Vec<u64> = match position {
            Some(p) => {
                self.dead.get(&p).ok_or_else(|| not_parked(p))?;
                vec![p]
            }
            // Waiting letters first: dropping a key's parked one would release them.
            None => {
                let (waiting, parked): (Vec<&DeadLetter>, Vec<&DeadLetter>) =
                    self.dead.values().partition(|d| d.waiting);
                waiting.iter().chain(&parked).map(|d| d.position).collect()
            }
        };
        let mut count = 0;
        for p in chosen {
            if self.replaying.contains(&p) {
                // In flight again; it settles through its delivery.
                if position.is_some() {
                    return Err(Error::invalid(
                        "position",
                        format!("event {p} is being replayed; it can be discarded once it is parked again"),
                    ));
                }
                continue;
            }
            let Some(d) = self.dead.remove(&p) else {
                continue;
            };
            self.unparked(p);
            count += 1;
            if !d.waiting {
                self.unpark_one(&d.key);
            }
            self.refresh(&d.key, now.at);
            self.forget_key(&d.key);
        }
        Ok(count)
    }

    // ---- inside ----

    /// A dead letter is gone for good. One at or above the floor counts as acknowledged,
    /// so that a restart, reading again from the floor, passes over it.
    fn unparked(&mut self, position: u64) {
        if position >= self.floor {
            self.acked.insert(position);
            self.changes.push(Change::Acked(position));
        }
        self.changes.push(Change::Unparked(position));
    }

    fn member_name(&self, member: MemberId) -> String {
        self.members
            .get(&member)
            .map_or_else(|| format!("member {member}"), |m| m.name.clone())
    }

    fn touch(&mut self, member: MemberId, now: Now) {
        if let Some(m) = self.members.get_mut(&member) {
            m.last_seen = m.last_seen.max(now.at);
        }
    }

    /// Ends the delivery of `position` (its member lets go of it) and takes it out of its
    /// key's queue and the pending events.
    fn release(&mut self, position: u64) -> Pending<E> {
        let p = self
            .pending
            .remove(&position)
            .expect("checked to be pending");
        if let Some(h) = p.held {
            self.deadlines.remove(&(h.deadline, position));
            if let Some(m) = self.members.get_mut(&h.member) {
                m.held.remove(&position);
            }
        }
        if let Some(k) = self.keys.get_mut(&p.key) {
            k.queue.remove(&position);
            if k.busy == Some(position) {
                k.busy = None;
            }
        }
        p
    }

    /// Takes a delivery back from its member: with `failure`, it counts as a failed attempt.
    fn revoke(&mut self, position: u64, failure: Option<(String, String)>, now: Now) {
        let Some(p) = self.pending.get_mut(&position) else {
            return;
        };
        let Some(h) = p.held.take() else { return };
        self.deadlines.remove(&(h.deadline, position));
        let key = p.key.clone();
        if let Some(k) = self.keys.get_mut(&key) {
            k.busy = None;
        }
        match failure {
            Some((reason, member)) => {
                // `fail` expects the delivery still held; put it back as it was, minus the
                // member, which is gone.
                self.pending.get_mut(&position).expect("above").held = Some(h);
                self.fail(position, reason, member, now);
            }
            None => self.refresh(&key, now.at),
        }
    }

    /// A failed delivery: counted, then retried after the backoff or parked.
    fn fail(&mut self, position: u64, reason: String, member: String, now: Now) {
        let attempts = {
            let p = self
                .pending
                .get_mut(&position)
                .expect("a failed event is pending");
            p.attempts += 1;
            p.attempts
        };
        if attempts >= self.settings.max_attempts {
            let p = self.release(position);
            self.park(
                position,
                p,
                format!("{reason}; gave up after {attempts} attempts"),
                attempts,
                member,
                now,
            );
            return;
        }
        let p = self.release_hold(position);
        if !p.1 {
            self.changes.push(Change::Attempts { position, attempts });
        }
        let key = p.0;
        let due = now.at + self.settings.backoff(attempts);
        if let Some(k) = self.keys.get_mut(&key) {
            if let Some(old) = k.not_before.replace(due) {
                self.backoffs.remove(&(old, key.clone()));
            }
        }
        self.backoffs.insert((due, key.clone()));
        self.refresh(&key, now.at);
    }

    /// Ends a delivery but keeps the event pending; returns its key and whether it comes
    /// from the dead letters.
    fn release_hold(&mut self, position: u64) -> (Text, bool) {
        let p = self.pending.get_mut(&position).expect("pending");
        if let Some(h) = p.held.take() {
            self.deadlines.remove(&(h.deadline, position));
            if let Some(m) = self.members.get_mut(&h.member) {
                m.held.remove(&position);
            }
        }
        let key = p.key.clone();
        let from_dead = p.from_dead;
        if let Some(k) = self.keys.get_mut(&key) {
            if k.busy == Some(position) {
                k.busy = None;
            }
        }
        (key, from_dead)
    }

    /// Parks an event already taken out of the pending ones. With `Block`, the key's other
    /// queued events are parked as waiting behind it.
    fn park(
        &mut self,
        position: u64,
        p: Pending<E>,
        reason: String,
        attempts: u32,
        member: String,
        now: Now,
    ) {
        self.counters.parked += 1;
        let key = p.key.clone();
        let was_waiting = self.dead.get(&position).is_some_and(|d| d.waiting);
        let letter = DeadLetter {
            position,
            key: key.clone(),
            reason,
            attempts,
            member,
            parked_at: now.wall,
            waiting: false,
        };
        self.changes.push(Change::Parked(letter.clone()));
        self.dead.insert(position, letter);
        self.replaying.remove(&position);
        let newly_parked = !p.from_dead || was_waiting;
        if !p.from_dead {
            self.window.remove(&position);
        }
        let k = self.keys.entry(key.clone()).or_default();
        k.blocker = position;
        if newly_parked {
            k.parked += 1;
        }
        if self.settings.on_park == OnPark::Block {
            let queued: Vec<u64> = self
                .keys
                .get(&key)
                .map(|k| k.queue.iter().copied().collect())
                .unwrap_or_default();
            for q in queued {
                let e = self.release(q);
                if e.from_dead {
                    // A replayed or released letter goes back to being a letter.
                    self.replaying.remove(&q);
                    continue;
                }
                self.window.remove(&q);
                let letter = DeadLetter {
                    position: q,
                    key: key.clone(),
                    reason: format!("waits behind parked event {position} of its key"),
                    attempts: e.attempts,
                    member: String::new(),
                    parked_at: now.wall,
                    waiting: true,
                };
                self.changes.push(Change::Parked(letter.clone()));
                self.dead.insert(q, letter);
            }
        }
        // Even when the parked event was a replayed letter (never in the window), the key's
        // events now waiting behind it left the window: the floor may pass them. Left where
        // it was, nothing moves it once the feed has caught up, and the acknowledged positions
        // above it fill the buffer.
        self.move_floor();
        self.refresh(&key, now.at);
        self.forget_key(&key);
    }

    /// One parked (not waiting) letter of `key` is gone; the last one releases the waiting.
    fn unpark_one(&mut self, key: &Text) {
        let Some(k) = self.keys.get_mut(key) else {
            return;
        };
        k.parked = k.parked.saturating_sub(1);
        if k.parked == 0 {
            self.release_waiting(key);
        }
    }

    /// Delivers the waiting letters of `key` again, in order.
    fn release_waiting(&mut self, key: &Text) {
        let waiting: Vec<u64> = self
            .dead
            .values()
            .filter(|d| d.waiting && d.key == *key && !self.replaying.contains(&d.position))
            .map(|d| d.position)
            .collect();
        for p in waiting {
            self.requeue_at(p, key.clone());
        }
        self.refresh_now(key);
    }

    /// Puts a dead letter back in its key's queue, to be delivered from the log.
    fn requeue(&mut self, position: u64, key: Text, now: Instant) {
        self.requeue_at(position, key.clone());
        self.refresh(&key, now);
    }

    fn requeue_at(&mut self, position: u64, key: Text) {
        let attempts = self.dead.get(&position).map_or(0, |d| d.attempts);
        self.replaying.insert(position);
        self.pending.insert(
            position,
            Pending {
                key: key.clone(),
                event: None,
                attempts: if self.dead.get(&position).is_some_and(|d| d.waiting) {
                    attempts
                } else {
                    0
                },
                held: None,
                from_dead: true,
            },
        );
        self.keys.entry(key).or_default().queue.insert(position);
    }

    /// Lists `key` in `ready` under its head when it can be delivered, and only then; a
    /// backoff that has passed ends here.
    fn refresh(&mut self, key: &Text, now: Instant) {
        let Some(k) = self.keys.get_mut(key) else {
            return;
        };
        if let Some(t) = k.not_before {
            if t <= now {
                k.not_before = None;
                self.backoffs.remove(&(t, key.clone()));
            }
        }
        self.refresh_now(key);
    }

    fn refresh_now(&mut self, key: &Text) {
        let Some(k) = self.keys.get_mut(key) else {
            return;
        };
        if let Some(at) = k.ready_at.take() {
            self.ready.remove(&(at, key.clone()));
        }
        if k.busy.is_none() && k.not_before.is_none() {
            if let Some(&head) = k.queue.first() {
                k.ready_at = Some(head);
                self.ready.insert((head, key.clone()));
            }
        }
    }

    /// Ends the backoffs that are due.
    fn wake(&mut self, now: Instant) {
        while let Some((t, key)) = self.backoffs.first().cloned() {
            if t > now {
                break;
            }
            self.backoffs.pop_first();
            if let Some(k) = self.keys.get_mut(&key) {
                if k.not_before == Some(t) {
                    k.not_before = None;
                }
            }
            self.refresh_now(&key);
        }
    }

    /// Drops a key's state once nothing of it remains.
    fn forget_key(&mut self, key: &Text) {
        if self
            .keys
            .get(key)
            .is_some_and(|k| k.idle() && k.not_before.is_none())
        {
            self.keys.remove(key);
        }
    }

    /// Restored acknowledged positions the feed has reached join the window's.
    fn pass_settled(&mut self) {
        while let Some(&p) = self.settled_ahead.first() {
            if p >= self.next {
                break;
            }
            self.settled_ahead.pop_first();
            self.acked.insert(p);
        }
    }

    fn move_floor(&mut self) {
        let floor = self.window.first().copied().unwrap_or(self.next);
        if floor > self.floor {
            self.floor = floor;
            self.acked = self.acked.split_off(&floor);
            self.restored_attempts.retain(|p, _| *p >= floor);
        }
    }
}

/// The longest reason a dead letter keeps, in bytes; a longer one is cut (at a character).
pub const MAX_REASON: usize = 1024;

fn clip(mut reason: String) -> String {
    if reason.len() > MAX_REASON {
        let mut end = MAX_REASON;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
        reason.push('…');
    }
    reason
}

fn unknown_member(member: MemberId) -> Error {
    Error::NotFound(format!(
        "member {member}: it left or was lost (no heartbeat within member_timeout)"
    ))
}

fn not_parked(position: u64) -> Error {
    Error::NotFound(format!("parked event at position {position}"))
}
