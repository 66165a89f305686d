//! The dispatch machine against a model: random offers, joins, leaves, acks, nacks, stale
//! acks, time passing, replays, discards and restarts from what the journal kept. After
//! every step: no key is held by two members, no event of a key is delivered before an
//! earlier one is settled, an acknowledged event is never delivered again, the floor only
//! moves forward and passes only settled events, every bound holds, and every ack the
//! model knows to be current is taken while every stale one is refused. At the end, a
//! member that acknowledges everything settles the whole log.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use annal_core::{Text, Timestamp};
use proptest::prelude::*;

use super::def::{GroupSettings, OnPark};
use super::machine::{Change, DeadLetter, Delivery, Happened, Machine, MemberId, Nack, Now};

#[derive(Debug, Clone)]
enum Op {
    Append(u8),
    Join,
    Leave(u8),
    Heartbeat,
    Poll,
    Ack(u8),
    Retry(u8),
    Park(u8),
    StaleAck(u8),
    Sleep(u16),
    ReplayAll,
    DiscardOne(u8),
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..6).prop_map(Op::Append),
        2 => Just(Op::Join),
        1 => any::<u8>().prop_map(Op::Leave),
        2 => Just(Op::Heartbeat),
        6 => Just(Op::Poll),
        8 => any::<u8>().prop_map(Op::Ack),
        2 => any::<u8>().prop_map(Op::Retry),
        1 => any::<u8>().prop_map(Op::Park),
        2 => any::<u8>().prop_map(Op::StaleAck),
        3 => (1u16..300).prop_map(Op::Sleep),
        1 => Just(Op::ReplayAll),
        1 => any::<u8>().prop_map(Op::DiscardOne),
        1 => Just(Op::Restart),
    ]
}

/// What the journal keeps.
#[derive(Default)]
struct Durable {
    floor: u64,
    acked: BTreeSet<u64>,
    attempts: HashMap<u64, u32>,
    dead: BTreeMap<u64, DeadLetter>,
}

impl Durable {
    fn apply(&mut self, changes: Vec<Change>, floor: u64) {
        for c in changes {
            match c {
                Change::Acked(p) => {
                    self.acked.insert(p);
                }
                Change::Attempts { position, attempts } => {
                    self.attempts.insert(position, attempts);
                }
                Change::Parked(d) => {
                    self.dead.insert(d.position, d);
                }
                Change::Unparked(p) => {
                    self.dead.remove(&p);
                }
            }
        }
        assert!(
            floor >= self.floor,
            "the floor moved back: {} to {floor}",
            self.floor
        );
        self.floor = floor;
        self.acked = self.acked.split_off(&floor);
        self.attempts.retain(|p, _| *p >= floor);
    }
}

struct Harness {
    settings: GroupSettings,
    m: Machine<u64>,
    /// The log: each position's key.
    log: Vec<Text>,
    /// The next log position to offer.
    fed: u64,
    clock: Instant,
    start: Instant,
    durable: Durable,
    /// Deliveries the model holds current, by key.
    held: HashMap<Text, Delivery<u64>>,
    /// Deliveries that ended (acked, nacked, revoked, or from before a restart).
    stale: Vec<Delivery<u64>>,
    /// Every position ever acknowledged.
    acked: BTreeSet<u64>,
    /// Positions discarded from the dead letters.
    discarded: BTreeSet<u64>,
    members: Vec<MemberId>,
    epoch_seen: u64,
}

impl Harness {
    fn new(settings: GroupSettings) -> Self {
        let start = Instant::now();
        Harness {
            m: Machine::new(settings.clone(), 0, [], [], [], 0),
            settings,
            log: Vec::new(),
            fed: 0,
            clock: start,
            start,
            durable: Durable::default(),
            held: HashMap::new(),
            stale: Vec::new(),
            acked: BTreeSet::new(),
            discarded: BTreeSet::new(),
            members: Vec::new(),
            epoch_seen: 0,
        }
    }

    fn now(&self) -> Now {
        Now {
            at: self.clock,
            wall: Timestamp((self.clock - self.start).as_micros() as i64),
        }
    }

    fn dead(&self) -> BTreeSet<u64> {
        self.m.dead_letters().map(|d| d.position).collect()
    }

    fn feed(&mut self) {
        while self.m.room() > 0 && (self.fed as usize) < self.log.len() {
            let p = self.fed;
            self.m.offer(p, self.log[p as usize].clone(), p, self.now());
            self.fed += 1;
        }
    }

    fn end(&mut self, key: &Text) {
        if let Some(d) = self.held.remove(key) {
            self.stale.push(d);
        }
    }

    fn end_member(&mut self, member: MemberId) {
        let keys: Vec<Text> = self
            .held
            .iter()
            .filter(|(_, d)| d.member == member)
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            self.end(&k);
        }
    }

    fn happened(&mut self, happened: Vec<Happened>) {
        for h in happened {
            match h {
                Happened::TimedOut { position, .. } => {
                    let key = self.log[position as usize].clone();
                    assert_eq!(self.held.get(&key).map(|d| d.position), Some(position));
                    self.end(&key);
                }
                Happened::MemberLost { member, .. } => {
                    self.members.retain(|m| *m != member);
                    self.end_member(member);
                }
            }
        }
    }

    fn pick(&self, i: u8) -> Option<Text> {
        let mut keys: Vec<&Text> = self.held.keys().collect();
        keys.sort();
        (!keys.is_empty()).then(|| keys[i as usize % keys.len()].clone())
    }

    fn poll(&mut self) {
        let dead = self.dead();
        for d in self.m.poll(self.now()) {
            assert!(d.epoch > self.epoch_seen, "epochs go up");
            self.epoch_seen = d.epoch;
            let key = self.log[d.position as usize].clone();
            assert_eq!(d.key, key);
            assert!(
                !self.held.contains_key(&key),
                "key {key} delivered to {} while member {} holds it",
                d.member,
                self.held[&key].member
            );
            assert!(
                !self.acked.contains(&d.position),
                "event {} acked, delivered again",
                d.position
            );
            assert!(!self.discarded.contains(&d.position));
            if let Some(e) = d.event {
                assert_eq!(e, d.position);
                // Every earlier event of the key is settled: acknowledged, or set aside.
                for q in 0..d.position {
                    if self.log[q as usize] == key {
                        assert!(
                            self.acked.contains(&q)
                                || dead.contains(&q)
                                || self.discarded.contains(&q),
                            "event {} of key {key} delivered before event {q} was settled",
                            d.position
                        );
                    }
                }
            } else {
                assert!(
                    dead.contains(&d.position),
                    "a delivery from the log is a dead letter"
                );
            }
            self.held.insert(key, d);
        }
    }

    fn step(&mut self, op: Op) {
        let now = self.now();
        match op {
            Op::Append(k) => self.log.push(Text::from(format!("k{k}"))),
            Op::Join => match self.m.join("m", now) {
                Ok(id) => self.members.push(id),
                Err(_) => assert_eq!(self.members.len(), self.settings.max_members as usize),
            },
            Op::Leave(i) => {
                if !self.members.is_empty() {
                    let id = self.members.remove(i as usize % self.members.len());
                    self.m.leave(id, now).unwrap();
                    self.end_member(id);
                }
            }
            Op::Heartbeat => {
                for id in &self.members {
                    self.m.heartbeat(*id, now).unwrap();
                }
            }
            Op::Poll => {}
            Op::Ack(i) | Op::Retry(i) | Op::Park(i) => {
                let Some(key) = self.pick(i) else { return };
                let d = self.held[&key].clone();
                let result = match op {
                    Op::Ack(_) => self.m.ack(d.member, d.position, d.epoch, now),
                    Op::Retry(_) => {
                        self.m
                            .nack(d.member, d.position, d.epoch, Nack::Retry("no".into()), now)
                    }
                    _ => self
                        .m
                        .nack(d.member, d.position, d.epoch, Nack::Park("bad".into()), now),
                };
                result.unwrap_or_else(|e| panic!("a current delivery {d:?} was refused: {e}"));
                if matches!(op, Op::Ack(_)) {
                    self.acked.insert(d.position);
                }
                self.end(&key);
            }
            Op::StaleAck(i) => {
                if !self.stale.is_empty() {
                    let d = self.stale[i as usize % self.stale.len()].clone();
                    assert!(
                        self.m.ack(d.member, d.position, d.epoch, now).is_err(),
                        "stale {d:?} taken"
                    );
                }
            }
            Op::Sleep(ms) => {
                self.clock += Duration::from_millis(ms as u64);
                let h = self.m.tick(self.now());
                self.happened(h);
            }
            Op::ReplayAll => {
                self.m.replay(None, now).unwrap();
            }
            Op::DiscardOne(i) => {
                let letters: Vec<u64> = self
                    .m
                    .dead_letters()
                    .map(|d| d.position)
                    .filter(|p| !self.m.is_replaying(*p))
                    .collect();
                if !letters.is_empty() {
                    let p = letters[i as usize % letters.len()];
                    assert_eq!(self.m.discard(Some(p), now).unwrap(), 1);
                    self.discarded.insert(p);
                }
            }
            Op::Restart => {
                let d = &self.durable;
                self.m = Machine::new(
                    self.settings.clone(),
                    d.floor,
                    d.acked.iter().copied(),
                    d.attempts.iter().map(|(p, a)| (*p, *a)),
                    d.dead.values().cloned(),
                    self.epoch_seen + 1_000,
                );
                self.fed = d.floor;
                self.members.clear();
                let held: Vec<Text> = self.held.keys().cloned().collect();
                for k in held {
                    self.end(&k);
                }
            }
        }
        self.feed();
        if matches!(op, Op::Poll | Op::Ack(_) | Op::Sleep(_) | Op::Join) {
            self.poll();
        }
        self.check();
    }

    fn check(&mut self) {
        let changes = self.m.take_changes();
        self.durable.apply(changes, self.m.floor());
        // The journal's dead letters are the machine's.
        let kept: Vec<&DeadLetter> = self.durable.dead.values().collect();
        let live: Vec<&DeadLetter> = self.m.dead_letters().collect();
        assert_eq!(kept, live);
        // The floor passes settled events only.
        for p in 0..self.m.floor() {
            assert!(
                self.acked.contains(&p)
                    || self.durable.dead.contains_key(&p)
                    || self.discarded.contains(&p),
                "floor {} passed event {p}, which is not settled",
                self.m.floor()
            );
        }
        let s = &self.settings;
        let g = self.m.gauges();
        assert!(g.members <= s.max_members as usize);
        assert!(
            g.parked <= (s.max_parked + s.buffer) as usize,
            "{} parked",
            g.parked
        );
        for (_, _, held) in self.m.members() {
            assert!(held <= s.max_in_flight as usize);
        }
        assert_eq!(
            g.in_flight,
            self.held.len(),
            "the model's deliveries are the machine's"
        );
        assert!(self.m.room() <= s.buffer as usize);
    }

    /// With one member that acknowledges everything, replays every dead letter and waits
    /// out every backoff, the whole log settles.
    fn drain(&mut self) {
        let now = self.now();
        let id = match self.m.join("drain", now) {
            Ok(id) => id,
            Err(_) => {
                let id = self.members.pop().unwrap();
                self.m.leave(id, now).unwrap();
                self.end_member(id);
                self.m.join("drain", now).unwrap()
            }
        };
        for _ in 0..10_000 {
            self.clock += Duration::from_millis(50);
            let now = self.now();
            for m in self.members.clone() {
                let _ = self.m.heartbeat(m, now);
            }
            self.m.heartbeat(id, now).unwrap();
            let h = self.m.tick(now);
            self.happened(h);
            self.m.replay(None, now).unwrap();
            self.feed();
            self.poll();
            let mine: Vec<Text> = self.held.keys().cloned().collect();
            for k in mine {
                let d = self.held[&k].clone();
                self.m.ack(d.member, d.position, d.epoch, now).unwrap();
                self.acked.insert(d.position);
                self.end(&k);
            }
            self.check();
            if self.m.floor() == self.log.len() as u64 && self.m.dead_letters().next().is_none() {
                return;
            }
        }
        panic!(
            "the log did not settle: floor {}, log {}, dead {:?}, {:?}",
            self.m.floor(),
            self.log.len(),
            self.dead(),
            self.m.gauges()
        );
    }
}

fn settings(skip: bool) -> GroupSettings {
    GroupSettings {
        max_in_flight: 3,
        max_attempts: 3,
        retry_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(40),
        ack_timeout: Duration::from_millis(100),
        member_timeout: Duration::from_millis(200),
        on_park: if skip { OnPark::Skip } else { OnPark::Block },
        max_parked: 6,
        buffer: 8,
        max_members: 3,
        ..GroupSettings::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn the_dispatch_keeps_its_promises(skip in any::<bool>(), ops in prop::collection::vec(op(), 1..200)) {
        let mut h = Harness::new(settings(skip));
        for op in ops {
            h.step(op);
        }
        h.drain();
        for p in 0..h.log.len() as u64 {
            prop_assert!(h.acked.contains(&p) || h.discarded.contains(&p), "event {} never settled", p);
        }
    }
}

#[test]
fn a_parked_event_holds_back_its_key_until_replayed() {
    let mut h = Harness::new(settings(false));
    for k in [0, 0, 1, 0] {
        h.step(Op::Append(k));
    }
    h.step(Op::Join);
    // k0's first event and k1's are out; k0's second waits.
    let mut out: Vec<u64> = h.held.values().map(|d| d.position).collect();
    out.sort();
    assert_eq!(out, vec![0, 2]);
    h.step(Op::Park(0)); // the first held key, k0
    let letters: Vec<(u64, bool)> =
        h.m.dead_letters()
            .map(|d| (d.position, d.waiting))
            .collect();
    assert_eq!(letters, vec![(0, false), (1, true), (3, true)]);
    h.step(Op::Ack(0)); // k1
    assert_eq!(h.m.floor(), 4, "parked and waiting events leave the window");
    assert!(h.held.is_empty());
    h.step(Op::ReplayAll);
    h.step(Op::Poll);
    let d: Vec<(u64, bool)> = h
        .held
        .values()
        .map(|d| (d.position, d.event.is_none()))
        .collect();
    assert_eq!(
        d,
        vec![(0, true)],
        "the parked event alone comes back, from the log"
    );
    h.step(Op::Ack(0));
    h.step(Op::Poll);
    assert_eq!(
        h.held.values().map(|d| d.position).collect::<Vec<_>>(),
        vec![1]
    );
    h.step(Op::Ack(0));
    h.step(Op::Poll);
    h.step(Op::Ack(0));
    assert!(h.m.dead_letters().next().is_none());
}

#[test]
fn retries_back_off_then_park_with_the_reason() {
    let mut h = Harness::new(settings(true));
    h.step(Op::Append(0));
    h.step(Op::Append(0));
    h.step(Op::Join);
    h.step(Op::Retry(0));
    h.step(Op::Poll);
    assert!(h.held.is_empty(), "in backoff");
    h.step(Op::Sleep(10));
    assert_eq!(h.held.values().next().map(|d| d.attempt), Some(2));
    h.step(Op::Retry(0));
    h.step(Op::Sleep(20));
    h.step(Op::Retry(0));
    let d = h.m.dead_letters().next().unwrap().clone();
    assert_eq!((d.position, d.attempts, d.waiting), (0, 3, false));
    assert!(
        d.reason.contains("gave up after 3 attempts"),
        "{}",
        d.reason
    );
    assert_eq!(d.member, "m");
    h.step(Op::Poll);
    assert_eq!(
        h.held.values().map(|d| d.position).collect::<Vec<_>>(),
        vec![1],
        "skip mode: the key goes on"
    );
}

#[test]
fn an_ack_after_the_lease_moved_is_refused_and_names_why() {
    let mut h = Harness::new(settings(true));
    h.step(Op::Append(0));
    h.step(Op::Join);
    let first = h.held.values().next().unwrap().clone();
    h.step(Op::Join);
    h.step(Op::Sleep(150)); // ack timeout: delivered again after the backoff
    h.step(Op::Heartbeat);
    h.step(Op::Sleep(20));
    let second = h.held.values().next().unwrap().clone();
    assert_ne!(second.epoch, first.epoch);
    let e =
        h.m.ack(first.member, first.position, first.epoch, h.now())
            .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("lease moved") || text.contains("stale"),
        "{text}"
    );
    h.m.ack(second.member, second.position, second.epoch, h.now())
        .unwrap();
    let e = h.m.ack(second.member, 7, 1, h.now()).unwrap_err();
    assert!(e.to_string().contains("not in flight"), "{e}");
}

#[test]
fn discarding_everything_drops_waiting_letters_too() {
    let mut h = Harness::new(settings(false));
    for k in [0, 0, 0] {
        h.step(Op::Append(k));
    }
    h.step(Op::Join);
    h.step(Op::Park(0));
    assert_eq!(h.m.dead_letters().count(), 3, "one parked, two waiting");
    let now = h.now();
    assert_eq!(h.m.discard(None, now).unwrap(), 3);
    h.discarded.extend([0, 1, 2]);
    h.step(Op::Poll);
    assert!(h.held.is_empty(), "nothing is delivered: {:?}", h.held);
    assert!(h.m.dead_letters().next().is_none());
    assert_eq!(h.m.floor(), 3);
}

#[test]
fn reasons_and_names_are_bounded() {
    let mut h = Harness::new(settings(true));
    h.step(Op::Append(0));
    h.step(Op::Join);
    let d = h.held.values().next().unwrap().clone();
    let now = h.now();
    h.m.nack(
        d.member,
        d.position,
        d.epoch,
        Nack::Park("é".repeat(5_000)),
        now,
    )
    .unwrap();
    let letter = h.m.dead_letters().next().unwrap();
    assert!(
        letter.reason.len() <= super::machine::MAX_REASON + 3,
        "{}",
        letter.reason.len()
    );
    assert!(letter.reason.ends_with('…'));
}

#[test]
fn parking_a_replayed_event_lets_the_floor_pass_what_waits_behind_it() {
    let mut h = Harness::new(settings(false));
    h.step(Op::Append(0));
    h.step(Op::Append(0));
    h.step(Op::Join);
    h.step(Op::Park(0)); // 0 parked, 1 waits behind it
    h.step(Op::ReplayAll);
    h.step(Op::Poll);
    h.step(Op::Ack(0)); // 0 settles: 1 is released, and delivered
    assert_eq!(
        h.held.values().map(|d| d.position).collect::<Vec<_>>(),
        vec![1]
    );
    h.step(Op::Append(0)); // 2 joins the window, queued behind 1
    assert_eq!(h.m.floor(), 2);
    h.step(Op::Park(0)); // 1 parked again: 2 waits behind it, out of the window
    let letters: Vec<(u64, bool)> =
        h.m.dead_letters()
            .map(|d| (d.position, d.waiting))
            .collect();
    assert_eq!(letters, vec![(1, false), (2, true)]);
    assert_eq!(h.m.floor(), 3, "the window is empty");
    h.drain();
}
