//! One running group: a task that owns its [`Machine`], fed by a subscription to its source
//! from its floor, taking its members' commands, and writing every change to the journal
//! before it answers an acknowledgement or hands out the next event of a key: an event is
//! never delivered while the acknowledgement of the one before it could still be lost.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use annal_core::{
    next_item, Error, ReadRequest, RecordedEvent, SubscribeFrom, SubscribeRequest,
    SubscriptionItem, Text, Timestamp,
};
use tokio::sync::{mpsc, oneshot, watch};

use super::def::{GroupDef, GroupSettings, KeyBy};
use super::journal::{Journal, Kept, Rec};
use super::machine::{Counters, DeadLetter, Gauges, Machine, MemberId, Nack, Now};
use crate::backend::Served;

/// What a member receives.
// Nearly every item is a delivery; boxing its event would add an allocation to each.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Out {
    Delivery {
        position: u64,
        epoch: u64,
        attempt: u32,
        event: RecordedEvent,
    },
    /// The group stopped (deleted, changed, failed, or the server is stopping).
    Ended(Error),
}

pub(crate) type Reply<T> = oneshot::Sender<Result<T, Error>>;

/// An answer given once the journal has written what it answers for.
pub(crate) type Waiter = Box<dyn FnOnce(Result<(), Error>) + Send>;

/// What a group is asked.
pub enum Cmd {
    Join {
        name: String,
        /// The member's id, its deliveries, and the settings it is held to.
        reply: Reply<(MemberId, mpsc::Receiver<Out>, GroupSettings)>,
    },
    Leave(MemberId),
    /// A member is alive; with a reply, it learns whether the group still knows it.
    Heartbeat(MemberId, Option<Reply<()>>),
    Ack {
        member: MemberId,
        position: u64,
        epoch: u64,
        reply: Option<Waiter>,
    },
    Nack {
        member: MemberId,
        position: u64,
        epoch: u64,
        nack: Nack,
        reply: Option<Waiter>,
    },
    Replay {
        position: Option<u64>,
        reply: Reply<usize>,
    },
    Discard {
        position: Option<u64>,
        reply: Reply<usize>,
    },
    Parked {
        after: Option<u64>,
        limit: usize,
        reply: Reply<Vec<Parked>>,
    },
    Status(Reply<Status>),
}

impl Cmd {
    /// An ack (no `nack`) or a nack of one delivery, answered once it is durable.
    pub fn settle(
        member: MemberId,
        position: u64,
        epoch: u64,
        nack: Option<Nack>,
        reply: Waiter,
    ) -> Cmd {
        let reply = Some(reply);
        match nack {
            None => Cmd::Ack {
                member,
                position,
                epoch,
                reply,
            },
            Some(nack) => Cmd::Nack {
                member,
                position,
                epoch,
                nack,
                reply,
            },
        }
    }
}

/// A dead letter as shown: with whether it is being delivered again.
#[derive(Debug, Clone)]
pub struct Parked {
    pub letter: DeadLetter,
    pub replaying: bool,
}

/// A member as shown.
#[derive(Debug, Clone)]
pub struct MemberStatus {
    pub id: MemberId,
    pub name: String,
    pub in_flight: usize,
}

/// A group's state as shown.
#[derive(Debug, Clone)]
pub struct Status {
    pub def: GroupDef,
    pub gauges: Gauges,
    pub counters: Counters,
    pub members: Vec<MemberStatus>,
    /// The log's last position.
    pub head: Option<u64>,
    /// Positions between the floor and the head.
    pub lag_events: u64,
    /// How long ago the oldest unsettled event was recorded (0 with none).
    pub lag_seconds: f64,
    /// Why the group stopped, if it did.
    pub failed: Option<String>,
}

/// What a group starts with.
pub struct Start {
    pub id: u32,
    pub def: GroupDef,
    pub kept: Kept,
    /// Where delivery epochs start.
    pub epoch: u64,
    /// Where member ids start: above every id an earlier task of this run gave out.
    pub first_member: MemberId,
}

/// The key an event is routed by.
pub fn key_of(e: &RecordedEvent, by: KeyBy) -> Text {
    if by == KeyBy::Correlation {
        if let Some(c) = e.metadata.correlation_id {
            return Text::from(c.to_string());
        }
    }
    if e.stream_id.is_empty() {
        // An event of no stream has nothing to be ordered with.
        Text::from(e.id.to_string())
    } else {
        e.stream_id.clone()
    }
}

/// How long a group waits before it opens a failed subscription again.
const RESUBSCRIBE: Duration = Duration::from_secs(1);

/// How many subscription items a feed hands over at once.
const FEED_BATCH: usize = 256;

/// Reads the group's source from `floor` on the blocking pool while it catches up (the
/// engine reads history on the calling thread), then as a task, into `tx` in batches.
fn spawn_feed(
    store: Arc<dyn Served>,
    request: SubscribeRequest,
    tx: mpsc::Sender<Result<Vec<SubscriptionItem>, Error>>,
) {
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let run = async move {
            let mut sub = match store.subscribe(request).await {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return None;
                }
            };
            let mut batch = Vec::with_capacity(FEED_BATCH);
            loop {
                match next_item(&mut sub).await {
                    Some(Ok(item)) => {
                        let caught_up = matches!(item, SubscriptionItem::CaughtUp { .. });
                        batch.push(item);
                        if batch.len() >= FEED_BATCH || caught_up {
                            if tx.send(Ok(std::mem::take(&mut batch))).await.is_err() {
                                return None;
                            }
                            if caught_up {
                                return Some((sub, tx));
                            }
                        }
                    }
                    Some(Err(e)) => {
                        let _ = tx.send(Err(e)).await;
                        return None;
                    }
                    None => return None,
                }
            }
        };
        let Some((mut sub, tx)) = handle.block_on(run) else {
            return;
        };
        handle.spawn(async move {
            loop {
                // The group's task is gone: the subscription goes with it.
                let item = tokio::select! {
                    item = next_item(&mut sub) => item,
                    () = tx.closed() => return,
                };
                let Some(item) = item else { return };
                let mut batch = vec![];
                match item {
                    Ok(item) => batch.push(item),
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
                let mut failed = None;
                while batch.len() < FEED_BATCH {
                    match crate::ready_item(&mut sub).await {
                        Some(Some(Ok(item))) => batch.push(item),
                        Some(Some(Err(e))) => {
                            failed = Some(e);
                            break;
                        }
                        Some(None) => {
                            failed = Some(Error::Unavailable("the subscription ended".into()));
                            break;
                        }
                        None => break,
                    }
                }
                if tx.send(Ok(batch)).await.is_err() {
                    return;
                }
                if let Some(e) = failed {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        });
    });
}

/// Reads the event at `position` (a dead letter delivered again).
async fn read_at(store: &Arc<dyn Served>, position: u64) -> Result<RecordedEvent, Error> {
    let store = Arc::clone(store);
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        handle.block_on(async {
            let mut events = store
                .read(ReadRequest::all().from(position).limit(1))
                .await?;
            match next_item(&mut events).await {
                Some(Ok(e)) if e.position == position => Ok(e),
                Some(Err(e)) => Err(e),
                _ => Err(Error::NotFound(format!("the event at position {position}"))),
            }
        })
    })
    .await
    .map_err(|e| Error::Internal(format!("reading a parked event failed: {e}")))?
}

struct Runtime {
    id: u32,
    def: GroupDef,
    m: Machine<RecordedEvent>,
    store: Arc<dyn Served>,
    journal: Journal,
    members: HashMap<MemberId, mpsc::Sender<Out>>,
    /// When each unsettled event in the window was recorded.
    recorded: BTreeMap<u64, Timestamp>,
    journaled_floor: u64,
    /// Answers that wait for the journal.
    waiting: Vec<Waiter>,
    failed: Option<Error>,
}

/// Starts a group's task; it runs until `rx` closes or the server stops.
pub(crate) fn spawn(
    start: Start,
    store: Arc<dyn Served>,
    journal: Journal,
    rx: mpsc::Receiver<Cmd>,
    stop: oneshot::Receiver<()>,
    shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let Start {
        id,
        def,
        kept,
        epoch,
        first_member,
    } = start;
    let m = Machine::new(
        def.settings.clone(),
        kept.floor,
        kept.acked.iter().copied(),
        kept.attempts.iter().map(|(p, a)| (*p, *a)),
        kept.dead.into_values(),
        epoch,
    )
    .first_member(first_member);
    let rt = Runtime {
        id,
        journaled_floor: kept.floor,
        def,
        m,
        store,
        journal,
        members: HashMap::new(),
        recorded: BTreeMap::new(),
        waiting: Vec::new(),
        failed: None,
    };
    tokio::spawn(rt.run(rx, stop, shutdown))
}

impl Runtime {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Cmd>,
        mut stop: oneshot::Receiver<()>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut feed = self.subscribe();
        // Items taken from the feed and not offered yet (the window was full).
        let mut held: std::collections::VecDeque<SubscriptionItem> = Default::default();
        let mut feed_open = true;
        // When a feed that failed or ended is opened again.
        let mut resubscribe: Option<Instant> = None;
        loop {
            if let Some(at) = resubscribe.filter(|at| *at <= Instant::now()) {
                let _ = at;
                held.clear();
                feed = self.subscribe();
                feed_open = true;
                resubscribe = None;
            }
            self.offer_held(&mut held);
            let deadline = self
                .m
                .next_deadline()
                .into_iter()
                .chain(resubscribe)
                .min()
                .map(tokio::time::Instant::from_std)
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            let want_feed =
                feed_open && held.is_empty() && self.m.room() > 0 && self.failed.is_none();
            let mut fed = false;
            if want_feed {
                if let Ok(batch) = feed.try_recv() {
                    fed = true;
                    match batch {
                        Ok(items) => held.extend(items),
                        Err(e) => {
                            self.feed_failed(&e);
                            feed_open = false;
                            resubscribe = Some(Instant::now() + RESUBSCRIBE);
                        }
                    }
                }
            }
            if !fed {
                tokio::select! {
                    _ = crate::stopping(&mut shutdown) => {
                        self.end(Error::Unavailable("the server is shutting down".into()));
                        return;
                    }
                    _ = &mut stop => {
                        self.end(Error::Unavailable(format!(
                            "consumer group '{}' was changed or deleted; join again",
                            self.def.name
                        )));
                        return;
                    }
                    cmd = rx.recv() => {
                        let Some(cmd) = cmd else {
                            self.end(Error::Unavailable("the group was stopped".into()));
                            return;
                        };
                        self.handle(cmd).await;
                        let mut more = 0;
                        while more < 1024 {
                            match rx.try_recv() {
                                Ok(cmd) => self.handle(cmd).await,
                                Err(_) => break,
                            }
                            more += 1;
                        }
                    }
                    batch = feed.recv(), if want_feed => match batch {
                        Some(Ok(items)) => held.extend(items),
                        failed => {
                            let e = match failed {
                                Some(Err(e)) => e,
                                _ => Error::Unavailable("the subscription ended".into()),
                            };
                            self.feed_failed(&e);
                            feed_open = false;
                            resubscribe = Some(Instant::now() + RESUBSCRIBE);
                        }
                    },
                    _ = tokio::time::sleep_until(deadline) => {}
                }
            }
            let now = Now::current();
            for h in self.m.tick(now) {
                match h {
                    super::machine::Happened::MemberLost { member, name, held } => {
                        tracing::warn!(group = %self.def.name, member, %name, held, "a member was lost (no heartbeat within member_timeout); what it held goes to others");
                        if let Some(tx) = self.members.remove(&member) {
                            let _ = tx.try_send(Out::Ended(Error::Unavailable(format!(
                                "member {member} was lost: no heartbeat within member_timeout; join again"
                            ))));
                        }
                    }
                    super::machine::Happened::TimedOut { member, position } => {
                        tracing::info!(group = %self.def.name, member, position, "a delivery was not acknowledged within ack_timeout; it is retried");
                    }
                }
            }
            self.offer_held(&mut held);
            if let Err(e) = self.flush().await {
                // The journal stopped: the group hands out nothing more and says why.
                tracing::error!(group = %self.def.name, error = %e, "the group stops: its journal failed");
                self.failed = Some(e.clone());
                self.end(e);
            }
            self.deliver(now).await;
        }
    }

    /// Opens the group's feed from the next position it has not seen.
    fn subscribe(&self) -> mpsc::Receiver<Result<Vec<SubscriptionItem>, Error>> {
        let from = match self.m.next() {
            0 => SubscribeFrom::Start,
            n => SubscribeFrom::After(n - 1),
        };
        let (tx, rx) = mpsc::channel(4);
        spawn_feed(
            Arc::clone(&self.store),
            SubscribeRequest::new(self.def.source.clone(), from),
            tx,
        );
        rx
    }

    fn feed_failed(&self, e: &Error) {
        tracing::error!(group = %self.def.name, error = %e, next = self.m.next(), "the group's subscription failed; it is opened again from where it stopped");
    }

    /// Offers what the feed gave, as far as the window has room.
    fn offer_held(&mut self, held: &mut std::collections::VecDeque<SubscriptionItem>) {
        let now = Now::current();
        while self.m.room() > 0 {
            let Some(item) = held.pop_front() else { break };
            match item {
                SubscriptionItem::Event(e) => {
                    if e.position < self.m.next() {
                        continue;
                    }
                    let key = key_of(&e, self.def.settings.key_by);
                    self.recorded.insert(e.position, e.recorded_at);
                    self.m.offer(e.position, key, e, now);
                }
                SubscriptionItem::Checkpoint { position } => self.m.advance(position + 1),
                SubscriptionItem::CaughtUp {
                    position: Some(head),
                } => self.m.advance(head + 1),
                SubscriptionItem::CaughtUp { position: None } => {}
            }
        }
        let floor = self.m.floor();
        self.recorded = self.recorded.split_off(&floor);
    }

    /// Writes the machine's changes; then answers those who waited for them.
    async fn flush(&mut self) -> Result<(), Error> {
        let changes = self.m.take_changes();
        let floor = self.m.floor();
        let waiting = std::mem::take(&mut self.waiting);
        if changes.is_empty() && floor == self.journaled_floor {
            for w in waiting {
                w(Ok(()));
            }
            return Ok(());
        }
        let mut recs: Vec<Rec> = changes
            .into_iter()
            .map(|c| Rec::Change(self.id, c))
            .collect();
        if floor != self.journaled_floor {
            recs.push(Rec::Floor(self.id, floor));
        }
        let result = self.journal.write(recs).await;
        for w in waiting {
            w(result.clone());
        }
        result?;
        self.journaled_floor = floor;
        Ok(())
    }

    /// Hands out what is ready; a member whose queue is gone has left.
    async fn deliver(&mut self, now: Now) {
        if self.failed.is_some() {
            return;
        }
        for d in self.m.poll(now) {
            let event = match d.event {
                Some(e) => e,
                None => match read_at(&self.store, d.position).await {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::error!(group = %self.def.name, position = d.position, error = %e, "a parked event could not be read");
                        let _ = self.m.nack(
                            d.member,
                            d.position,
                            d.epoch,
                            Nack::Park(format!("the event could not be read: {e}")),
                            now,
                        );
                        continue;
                    }
                },
            };
            let out = Out::Delivery {
                position: d.position,
                epoch: d.epoch,
                attempt: d.attempt,
                event,
            };
            let sent = self
                .members
                .get(&d.member)
                .is_some_and(|tx| tx.try_send(out).is_ok());
            if !sent {
                self.members.remove(&d.member);
                let _ = self.m.leave(d.member, now);
            }
        }
    }

    async fn handle(&mut self, cmd: Cmd) {
        let now = Now::current();
        match cmd {
            Cmd::Join { name, reply } => {
                if let Some(e) = &self.failed {
                    let _ = reply.send(Err(e.clone()));
                    return;
                }
                match self.m.join(&name, now) {
                    Ok(id) => {
                        let cap = self.def.settings.max_in_flight as usize + 1;
                        let (tx, rx) = mpsc::channel(cap);
                        self.members.insert(id, tx);
                        tracing::info!(group = %self.def.name, member = id, %name, "a member joined");
                        let _ = reply.send(Ok((id, rx, self.def.settings.clone())));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Cmd::Leave(member) => {
                if self.members.remove(&member).is_some() {
                    let _ = self.m.leave(member, now);
                    tracing::info!(group = %self.def.name, member, "a member left");
                }
            }
            Cmd::Heartbeat(member, reply) => {
                let r = self.m.heartbeat(member, now);
                if let Some(reply) = reply {
                    let _ = reply.send(r);
                }
            }
            Cmd::Ack {
                member,
                position,
                epoch,
                reply,
            } => {
                let r = self.m.ack(member, position, epoch, now);
                self.answer(r, reply);
            }
            Cmd::Nack {
                member,
                position,
                epoch,
                nack,
                reply,
            } => {
                let r = self.m.nack(member, position, epoch, nack, now);
                self.answer(r, reply);
            }
            Cmd::Replay { position, reply } => {
                let _ = reply.send(self.m.replay(position, now));
            }
            Cmd::Discard { position, reply } => match self.m.discard(position, now) {
                Ok(n) => self.waiting.push(Box::new(move |r: Result<(), Error>| {
                    let _ = reply.send(r.map(|()| n));
                })),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Cmd::Parked {
                after,
                limit,
                reply,
            } => {
                let list = self
                    .m
                    .dead_letters()
                    .filter(|d| after.is_none_or(|a| d.position > a))
                    .take(limit)
                    .map(|d| Parked {
                        letter: d.clone(),
                        replaying: self.m.is_replaying(d.position),
                    })
                    .collect();
                let _ = reply.send(Ok(list));
            }
            Cmd::Status(reply) => {
                let head = self.store.head().await.ok().flatten();
                let _ = reply.send(Ok(self.status(head)));
            }
        }
    }

    /// A successful ack or nack is answered once the journal has it; a refused one now.
    fn answer(&mut self, r: Result<(), Error>, reply: Option<Waiter>) {
        match (r, reply) {
            (Ok(()), Some(reply)) => self.waiting.push(reply),
            (Err(e), Some(reply)) => reply(Err(e)),
            (_, None) => {}
        }
    }

    fn status(&self, head: Option<u64>) -> Status {
        let gauges = self.m.gauges();
        let lag_events = head.map_or(0, |h| (h + 1).saturating_sub(gauges.floor));
        let lag_seconds = self.recorded.values().next().map_or(0.0, |t| {
            let now = Timestamp::now().as_micros();
            (now - t.as_micros()).max(0) as f64 / 1e6
        });
        Status {
            def: self.def.clone(),
            gauges,
            counters: self.m.counters(),
            members: self
                .m
                .members()
                .map(|(id, name, in_flight)| MemberStatus {
                    id,
                    name: name.to_string(),
                    in_flight,
                })
                .collect(),
            head,
            lag_events,
            lag_seconds,
            failed: self.failed.as_ref().map(|e| e.to_string()),
        }
    }

    /// Ends every member's deliveries with `why`.
    fn end(&mut self, why: Error) {
        for (_, tx) in self.members.drain() {
            let _ = tx.try_send(Out::Ended(why.clone()));
        }
        for w in self.waiting.drain(..) {
            w(Err(why.clone()));
        }
    }
}

/// How long an admin call waits for a group's task before it gives up.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends `cmd` (made with a reply channel) to a group and waits for the answer.
pub async fn ask<T>(
    tx: &mpsc::Sender<Cmd>,
    make: impl FnOnce(Reply<T>) -> Cmd,
) -> Result<T, Error> {
    let (reply, wait) = oneshot::channel();
    let gone = || Error::Unavailable("the group stopped".into());
    tokio::time::timeout(ANSWER_TIMEOUT, tx.send(make(reply)))
        .await
        .map_err(|_| Error::Unavailable("the group is too busy to take the request".into()))?
        .map_err(|_| gone())?;
    let started = Instant::now();
    match tokio::time::timeout(ANSWER_TIMEOUT.saturating_sub(started.elapsed()), wait).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(gone()),
        Err(_) => Err(Error::Unavailable(
            "the group did not answer in time".into(),
        )),
    }
}
