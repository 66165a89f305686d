//! Annal's server: an event store behind gRPC (`annal.v1`) and HTTP/JSON on one port, with
//! Server-Sent Events for subscriptions, an OpenAPI document, bearer-token authentication,
//! TLS, Prometheus metrics, health and readiness.
//!
//! [`Server::start`] opens the embedded engine in the configured folder; [`Server::serve`]
//! serves any store that implements [`Backend`] (the engine, or any `EventStore` wrapped in
//! [`Plain`]). Either binds the port and serves until [`Server::shutdown`] (or a signal, in
//! the binary): it stops accepting, lets requests in flight finish (appends are durable
//! before they are answered), ends subscriptions, and closes the store.
//!
//! Memory stays bounded under load: reads and subscriptions stream in batches through bounded
//! queues (a slow reader pauses its producer rather than buffering), appends being processed
//! hold at most `max_inflight_append_bytes`, and connections, HTTP/2 streams and
//! subscriptions are capped ([`config::Limits`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use annal_core::{
    next_item, AppendRequest, AppendResult, Error, ReadRequest, RecordedEvent, SubscribeRequest,
    SubscriptionItem,
};
use annal_engine::Store;
use tokio::sync::{watch, Semaphore};

mod access;
mod answers;
mod backend;
mod budget;
pub mod config;
mod conns;
pub mod extract;
pub mod groups;
mod grpc;
pub mod http;
pub mod json;
mod metrics;
mod serve;
mod wire;

pub use backend::{Backend, Plain};
pub use config::{Config, Limits, Settings};

use backend::Served;

/// What every request handler shares.
pub(crate) struct State {
    pub store: Arc<dyn Served>,
    pub config: Config,
    pub subscriptions: Arc<Semaphore>,
    pub reads: Arc<Semaphore>,
    pub append_budget: Arc<Semaphore>,
    /// The one append at a time that may go over the budget (see `State::take`).
    pub overdraft: Arc<Semaphore>,
    /// The memory of answers waiting for their clients (`answers.rs`).
    pub answers: Arc<answers::Answers>,
    /// Becomes true when the server starts shutting down.
    pub shutdown: watch::Receiver<bool>,
    pub draining: AtomicBool,
    pub started: Instant,
    /// The consumer groups (`groups/`).
    pub groups: Arc<groups::Groups>,
}

/// A batch of a read or subscription is cut at about this many bytes of events, whatever its
/// event count, so that large events never make a message too big to send.
pub const BATCH_BYTES: usize = 4 << 20;

/// The bytes an event takes on the wire, roughly.
fn approx_size(e: &RecordedEvent) -> usize {
    e.data.len() + e.stream_id.len() + e.event_type.len() + 96
}

pub use access::Budget;

/// What the first packed batch buffer of a read starts with room for; later ones start with
/// the size the one before reached.
const FIRST_PACKED_BUFFER: usize = 16 << 10;

/// Runs `read` on the blocking pool, holding `permit`, and returns the queue its messages go
/// to (their room taken from the answer budget, see `answers.rs`). `read` gets a sender
/// (false once the receiver is gone, the queue was stopped, or the receiver has taken
/// nothing for `write_timeout`) and a check whether the receiver is gone; a panic in it
/// ends the read with an error, never with what looks like its end. A read whose receiver
/// stopped taking its messages drops them and gives its permit back; the receiver then ends
/// with an error.
fn spawn_read<T, F, R>(
    state: &State,
    permit: tokio::sync::OwnedSemaphorePermit,
    queue: usize,
    mut convert: F,
    read: R,
) -> Result<answers::Receiver<T>, Error>
where
    T: answers::Weigh + Send + 'static,
    F: FnMut(ReadMsg) -> Option<T> + Send + 'static,
    R: FnOnce(&mut dyn FnMut(ReadMsg) -> bool, &dyn Fn() -> bool) + Send + 'static,
{
    let (tx, rx) = state.answers.open(queue)?;
    let write_timeout = state.config.limits.write_timeout;
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let put = |item: T| -> bool {
            match handle.block_on(tokio::time::timeout(write_timeout, tx.send(item))) {
                Ok(sent) => sent,
                Err(_) => {
                    metrics::stalled_read();
                    tracing::debug!(
                        ?write_timeout,
                        "a read's client took nothing for the write timeout; the read stops"
                    );
                    tx.stop(Error::Unavailable(format!(
                        "the read was stopped: its answers were not taken for {} (write_timeout)",
                        humantime::format_duration(write_timeout)
                    )));
                    false
                }
            }
        };
        let run = std::panic::AssertUnwindSafe(|| {
            let mut send = |msg| match convert(msg) {
                Some(item) => put(item),
                None => true,
            };
            read(&mut send, &|| tx.is_closed());
        });
        if std::panic::catch_unwind(run).is_err() {
            let e = public(Error::Internal("the read stopped on a panic".into()));
            if let Some(item) = convert(ReadMsg::Failed(e)) {
                put(item);
            }
        }
    });
    Ok(rx)
}

/// One message of a read, before it is put on the wire.
pub(crate) enum ReadMsg {
    Events(Vec<RecordedEvent>),
    /// Events in the packed encoding.
    Packed(Vec<u8>),
    Failed(Error),
    /// The read is over; `head` is the log's last position when it was served.
    End {
        head: Option<u64>,
    },
}

/// One message of a subscription, before it is put on the wire.
pub(crate) enum SubMsg {
    Events(Vec<RecordedEvent>),
    CaughtUp(Option<u64>),
    Checkpoint(u64),
    Heartbeat(Option<u64>),
    Failed(Error),
}

/// A path of the server's file system as clients see it: its last two parts (a file of the
/// store and its folder, as `log/00000000000000000000.seg`), never where the store lives.
fn short_path(path: &str) -> String {
    let parts: Vec<&str> = path.trim_end_matches('/').rsplit('/').take(2).collect();
    parts.into_iter().rev().collect::<Vec<_>>().join("/")
}

/// `text` with every absolute path in it shortened by [`short_path`].
pub(crate) fn hide_paths(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('/') {
        let starts_word = rest[..at]
            .chars()
            .next_back()
            .is_none_or(|c| c.is_whitespace() || "('\"=:".contains(c));
        out.push_str(&rest[..at]);
        let end = rest[at..]
            .find(|c: char| c.is_whitespace() || "),'\"".contains(c))
            .map_or(rest.len(), |n| at + n);
        let word = &rest[at..end];
        let word = word.strip_suffix(':').unwrap_or(word);
        if starts_word && word.len() > 1 {
            out.push_str(&short_path(word));
            rest = &rest[at + word.len()..];
        } else {
            out.push('/');
            rest = &rest[at + 1..];
        }
    }
    out.push_str(rest);
    out
}

/// Replaces failures whose details are the server's business (I/O, internal errors) with a
/// plain internal error, after logging the original with a reference the operator can find;
/// other failures reach clients without the server's paths.
pub(crate) fn public(e: Error) -> Error {
    let e = match e {
        Error::Corruption {
            file,
            offset,
            problem,
        } => Error::Corruption {
            file: short_path(&file),
            offset,
            problem: hide_paths(&problem),
        },
        Error::UnsupportedFormat {
            path,
            found,
            supported,
        } => Error::UnsupportedFormat {
            path: short_path(&path),
            found,
            supported,
        },
        Error::Poisoned { cause } => Error::Poisoned {
            cause: hide_paths(&cause),
        },
        Error::DiskFull { message } => Error::DiskFull {
            message: hide_paths(&message),
        },
        other => other,
    };
    match e {
        Error::Io { .. } | Error::Internal(_) => {
            let reference = uuid::Uuid::new_v4().simple().to_string();
            let reference = &reference[..12];
            tracing::error!(error = %e, reference, "request failed");
            Error::Internal(format!(
                "the server failed to complete the request; its log has the details under reference {reference}"
            ))
        }
        other => other,
    }
}

/// How gathering a batch of a read ended.
enum Gathered {
    /// The batch is full; the read goes on.
    Full,
    /// The read is over.
    End,
    Failed(Error),
    /// The receiver went away.
    Gone,
}

/// A page of a read ends once it has been read for this long (checked every 8 events): a
/// page is read on a worker of the runtime, and a read of events scattered over a cold disk
/// must not hold it.
pub const PAGE_TIME: Duration = Duration::from_millis(1);

/// A page of a read: its packed events, the head it was served at, and whether the read
/// holds more.
pub struct Page {
    pub head: Option<u64>,
    pub more: bool,
    pub packed: Vec<u8>,
}

impl Page {
    fn new(head: Option<u64>, more: bool, packed: Vec<u8>) -> Page {
        Page { head, more, packed }
    }
}

/// Appends an event as stored to a packed batch.
fn pack(e: &annal_engine::StoredEvent<'_>, buf: &mut Vec<u8>) {
    annal_proto::packed::Parts {
        position: e.position,
        revision: e.revision,
        recorded_at: e.recorded_at,
        schema_version: e.schema_version,
        id: e.id,
        correlation_id: e.correlation_id,
        causation_id: e.causation_id,
        actor: e.actor,
        stream_id: e.stream_id,
        event_type: e.event_type,
        content_type: e.content_type,
        tags: e.tags.clone(),
        extra: e.extra.clone(),
        data: e.data,
    }
    .encode(buf);
}

/// The next events of a read, up to `batch` of them and about [`BATCH_BYTES`].
async fn gather(
    events: &mut annal_core::EventStream,
    batch: usize,
    closed: &dyn Fn() -> bool,
) -> (Vec<RecordedEvent>, Gathered) {
    let mut out = Vec::with_capacity(batch);
    let mut bytes = 0;
    loop {
        match next_item(events).await {
            Some(Ok(e)) => {
                bytes += approx_size(&e);
                out.push(e);
                if out.len() == batch || bytes >= BATCH_BYTES {
                    return (out, Gathered::Full);
                }
                if out.len() % 64 == 0 && closed() {
                    return (out, Gathered::Gone);
                }
            }
            Some(Err(e)) => return (out, Gathered::Failed(e)),
            None => return (out, Gathered::End),
        }
    }
}

impl State {
    /// Appends through the store, counting it in the metrics. The request already holds its
    /// share of the in-flight budget (`budget`, taken as its bytes arrived, or held by the
    /// caller), kept until the engine has answered. With `detach`, the engine call runs in a
    /// task of its own, so that a handler dropped halfway (its client went away) still
    /// keeps the share until the engine answers; a caller that is such a task already
    /// passes false.
    pub async fn append(
        &self,
        request: AppendRequest,
        wire_size: usize,
        budget: Option<Budget>,
        detach: bool,
    ) -> Result<AppendResult, Error> {
        let limit = self.config.limits.max_append_bytes;
        if wire_size > limit.saturating_mul(2) {
            return Err(Error::TooLarge {
                what: "append request".into(),
                size: wire_size,
                limit,
            });
        }
        let events = request.event_count();
        let bytes: usize = request
            .streams
            .iter()
            .flat_map(|s| s.events.iter())
            .map(|e| e.data.len())
            .sum();
        let conditional = request.condition.is_some();
        let mut request = request;
        if let Some(share) = &budget {
            crate::access::ride_along(&mut request, share);
        }
        let store = Arc::clone(&self.store);
        let append = async move {
            let _budget = budget;
            let started = Instant::now();
            let result = store.append(request).await;
            metrics::appended(&result, events, bytes, started.elapsed());
            result
        };
        if conditional {
            // A condition is first checked against the log on the calling thread, for as
            // long as its query takes: on the blocking pool, not on a runtime worker.
            let handle = tokio::runtime::Handle::current();
            return tokio::task::spawn_blocking(move || handle.block_on(append))
                .await
                .map_err(|e| Error::Internal(format!("the append task failed: {e}")))?;
        }
        if !detach {
            return append.await;
        }
        tokio::spawn(append)
            .await
            .map_err(|e| Error::Internal(format!("the append task failed: {e}")))?
    }

    /// Starts a read: validates it now, then streams batches of at most `read_batch_events`
    /// events (and about [`BATCH_BYTES`]) from a blocking thread through a queue of `queue`
    /// items. `convert` turns each [`ReadMsg`] into what goes on the queue (nothing, for
    /// `None`) on that thread. At most `max_reads` reads run at once; more are refused.
    pub async fn read_batches<T, F>(
        &self,
        request: ReadRequest,
        queue: usize,
        convert: F,
    ) -> Result<(Option<u64>, answers::Receiver<T>), Error>
    where
        T: answers::Weigh + Send + 'static,
        F: FnMut(ReadMsg) -> Option<T> + Send + 'static,
    {
        let permit = self.read_permit()?;
        let mut events = self.store.read(request).await?;
        let head = events.head();
        let batch = self.config.limits.read_batch_events;
        let handle = tokio::runtime::Handle::current();
        spawn_read(self, permit, queue, convert, move |send, closed| {
            loop {
                // A batch at a time under one `block_on`: the engine's reads never wait, so
                // this costs a poll per event and nothing more.
                let (events, end) = handle.block_on(gather(&mut events, batch, closed));
                if !events.is_empty() && !send(ReadMsg::Events(events)) {
                    return;
                }
                match end {
                    Gathered::Full => {}
                    Gathered::Gone => return,
                    Gathered::Failed(e) => {
                        send(ReadMsg::Failed(public(e)));
                        return;
                    }
                    Gathered::End => {
                        send(ReadMsg::End { head });
                        return;
                    }
                }
            }
        })
        .map(|rx| (head, rx))
    }

    /// Starts a read like [`State::read_batches`], with its batches in the packed encoding.
    /// On a store that hands out events as stored (the engine), events are packed as they
    /// are handed out (`ReadMsg::Packed`): a forward read of the whole log goes from the
    /// log's records to the message without an owned copy of any event. Other stores give
    /// owned events (`ReadMsg::Events`), which `convert` packs.
    pub async fn read_packed<T, F>(
        &self,
        request: ReadRequest,
        queue: usize,
        convert: F,
    ) -> Result<(Option<u64>, answers::Receiver<T>), Error>
    where
        T: answers::Weigh + Send + 'static,
        F: FnMut(ReadMsg) -> Option<T> + Send + 'static,
    {
        let Some(read) = self.store.read_stored(&request) else {
            return self.read_batches(request, queue, convert).await;
        };
        let permit = self.read_permit()?;
        let read = read?;
        let head = read.head();
        let batch = self.config.limits.read_batch_events;
        spawn_read(self, permit, queue, convert, move |send, closed| {
            let mut buf = Vec::with_capacity(FIRST_PACKED_BUFFER);
            let mut count = 0;
            let mut gone = false;
            let result = read.visit(|e| {
                pack(e, &mut buf);
                count += 1;
                if count == batch || buf.len() >= BATCH_BYTES {
                    let size = buf.len();
                    let full = std::mem::replace(&mut buf, Vec::with_capacity(size));
                    if !send(ReadMsg::Packed(full)) {
                        gone = true;
                        return false;
                    }
                    count = 0;
                } else if count % 64 == 0 && closed() {
                    gone = true;
                    return false;
                }
                true
            });
            if gone {
                return;
            }
            if count > 0 && !send(ReadMsg::Packed(buf)) {
                return;
            }
            send(match result {
                Ok(()) => ReadMsg::End { head },
                Err(e) => ReadMsg::Failed(public(e)),
            });
        })
        .map(|rx| (head, rx))
    }

    /// The first page of a read: its events up to `read_batch_events` of them, about
    /// `max_bytes` (at least one event) or what [`PAGE_TIME`] of reading gives, packed,
    /// with the head it was served at and whether more events follow. It holds a read
    /// permit while it reads, and returns the page's share of the answer budget
    /// (`max_answer_bytes`), which the caller keeps until the page is sent.
    ///
    /// It reads on the caller's thread, a worker of the runtime: handing a short read to
    /// the blocking pool cost a quarter of the commands a server handles (W8). The page's
    /// bounds keep that short, and the time bound keeps it short when the events must come
    /// from disk.
    pub async fn read_page(
        &self,
        request: ReadRequest,
        max_bytes: usize,
    ) -> Result<(Page, tokio::sync::OwnedSemaphorePermit), Error> {
        let permit = self.read_permit()?;
        let wait = self.config.limits.write_timeout;
        let mut held = self.answers.hold(max_bytes, wait).await?;
        let page = self.build_page(request, max_bytes, permit).await?;
        // A page held room for a whole page while it was read; it keeps what it takes.
        let extra = held.num_permits().saturating_sub(page.packed.len().max(1));
        if extra > 0 {
            drop(held.split(extra));
        }
        if page.packed.len() > max_bytes {
            // One event larger than a page.
            held.merge(
                self.answers
                    .hold(page.packed.len() - max_bytes, wait)
                    .await?,
            );
        }
        Ok((page, held))
    }

    async fn build_page(
        &self,
        request: ReadRequest,
        max_bytes: usize,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<Page, Error> {
        let batch = self.config.limits.read_batch_events;
        let Some(read) = self.store.read_stored(&request) else {
            let mut events = self.store.read(request).await?;
            let head = events.head();
            let mut buf = Vec::new();
            let mut count = 0;
            while let Some(e) = next_item(&mut events).await {
                if count == batch || buf.len() >= max_bytes {
                    return Ok(Page::new(head, true, buf));
                }
                let e = e?;
                annal_proto::packed::parts(&e).encode(&mut buf);
                count += 1;
            }
            return Ok(Page::new(head, false, buf));
        };
        let read = read?;
        let head = read.head();
        let _permit = permit;
        let started = Instant::now();
        let mut buf = Vec::new();
        let (mut count, mut more) = (0, false);
        let visited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            read.visit(|e| {
                let late = count % 8 == 7 && started.elapsed() >= PAGE_TIME;
                if count == batch || buf.len() >= max_bytes || late {
                    more = true;
                    return false;
                }
                pack(e, &mut buf);
                count += 1;
                true
            })
        }));
        match visited {
            Ok(visited) => visited.map(|()| Page::new(head, more, buf)),
            Err(_) => Err(Error::Internal("the read stopped on a panic".into())),
        }
    }

    fn read_permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Error> {
        self.reads.clone().try_acquire_owned().map_err(|_| {
            Error::Unavailable(format!(
                "the server already serves {} reads, its limit (max_reads)",
                self.config.limits.max_reads
            ))
        })
    }

    /// Starts a subscription: history, the caught-up marker, live events, checkpoints and
    /// heartbeats, as [`SubMsg`]s turned into `T` by `convert`, through a queue of
    /// `subscription_buffer` messages. It ends when the receiver goes away or the server
    /// shuts down (with a last `Failed(Unavailable)`).
    ///
    /// History is read on the blocking pool (it may come from disk); once caught up, the
    /// subscription moves to a task on the runtime that waits for the head to move and reads
    /// only what is new.
    pub async fn subscribe<T, F>(
        self: &Arc<Self>,
        request: SubscribeRequest,
        heartbeat: Option<Duration>,
        convert: F,
    ) -> Result<answers::Receiver<T>, Error>
    where
        T: answers::Weigh + Send + 'static,
        F: FnMut(SubMsg) -> T + Send + 'static,
    {
        let permit = self
            .subscriptions
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                Error::Unavailable(format!(
                    "the server already serves {} subscriptions, its limit (max_subscriptions)",
                    self.config.limits.max_subscriptions
                ))
            })?;
        // Finding where a stream subscription starts may read the index.
        let store = Arc::clone(&self.store);
        let handle = tokio::runtime::Handle::current();
        let sub = tokio::task::spawn_blocking(move || handle.block_on(store.subscribe(request)))
            .await
            .map_err(|e| Error::Internal(format!("starting the subscription failed: {e}")))??;
        let (tx, rx) = self.answers.open(self.config.limits.subscription_buffer)?;
        let pump = Pump {
            state: Arc::clone(self),
            sub,
            tx,
            convert,
            batch: self.config.limits.read_batch_events,
            heartbeat: heartbeat
                .unwrap_or(self.config.limits.heartbeat)
                .max(Duration::from_millis(10)),
            shutdown: self.shutdown.clone(),
        };
        tokio::spawn(async move {
            let _permit = permit;
            let _active = metrics::ActiveSubscription::new();
            let handle = tokio::runtime::Handle::current();
            let caught_up = tokio::task::spawn_blocking(move || pump.catch_up(&handle)).await;
            if let Ok(Some(pump)) = caught_up {
                pump.live().await;
            }
        });
        Ok(rx)
    }

    /// True when the server should take requests: the store is writable and no shutdown
    /// has begun.
    pub fn ready(&self) -> Result<(), String> {
        if self.draining.load(Ordering::Acquire) {
            return Err("the server is shutting down".into());
        }
        self.store
            .health()
            .map_err(|cause| format!("the store refuses writes: {}", hide_paths(&cause)))
    }
}

/// A subscription being delivered.
struct Pump<T: Send + 'static, F> {
    state: Arc<State>,
    sub: annal_core::SubscriptionStream,
    tx: answers::Sender<T>,
    convert: F,
    batch: usize,
    heartbeat: Duration,
    shutdown: watch::Receiver<bool>,
}

impl<T, F> Pump<T, F>
where
    T: answers::Weigh + Send + 'static,
    F: FnMut(SubMsg) -> T + Send + 'static,
{
    fn stopping_msg() -> SubMsg {
        SubMsg::Failed(Error::Unavailable("the server is shutting down".into()))
    }

    /// Delivers history up to the caught-up marker, on a blocking thread. Until the marker
    /// the engine's subscription never waits, so each poll returns at once. `None` when the
    /// subscription is over.
    fn catch_up(mut self, handle: &tokio::runtime::Handle) -> Option<Self> {
        let mut last_sent = Instant::now();
        loop {
            if *self.shutdown.borrow() {
                handle.block_on(self.tx.send((self.convert)(Self::stopping_msg())));
                return None;
            }
            let mut events = Vec::new();
            let mut bytes = 0;
            let marker = loop {
                match handle.block_on(next_item(&mut self.sub)) {
                    None => break None,
                    Some(Err(e)) => break Some(SubMsg::Failed(public(e))),
                    Some(Ok(SubscriptionItem::Event(e))) => {
                        bytes += approx_size(&e);
                        events.push(e);
                        if events.len() >= self.batch || bytes >= BATCH_BYTES {
                            break None;
                        }
                    }
                    Some(Ok(SubscriptionItem::CaughtUp { position })) => {
                        break Some(SubMsg::CaughtUp(position))
                    }
                    // Only sent after the marker.
                    Some(Ok(SubscriptionItem::Checkpoint { .. })) => {}
                }
            };
            let ended = events.is_empty() && marker.is_none();
            if !events.is_empty() {
                let head = handle.block_on(self.state.store.head()).ok().flatten();
                record_lag(&events, head);
                if !handle.block_on(self.tx.send((self.convert)(SubMsg::Events(events)))) {
                    return None;
                }
                last_sent = Instant::now();
            }
            match marker {
                Some(SubMsg::CaughtUp(p)) => {
                    if !handle.block_on(self.tx.send((self.convert)(SubMsg::CaughtUp(p)))) {
                        return None;
                    }
                    return Some(self);
                }
                Some(failed) => {
                    handle.block_on(self.tx.send((self.convert)(failed)));
                    return None;
                }
                None if ended => return None,
                None => {}
            }
            if last_sent.elapsed() >= self.heartbeat {
                let head = handle.block_on(self.state.store.head()).ok().flatten();
                if !handle.block_on(self.tx.send((self.convert)(SubMsg::Heartbeat(head)))) {
                    return None;
                }
                last_sent = Instant::now();
            }
        }
    }

    async fn send(&mut self, msg: SubMsg) -> bool {
        let item = (self.convert)(msg);
        self.tx.send(item).await
    }

    /// Delivers live events, checkpoints and heartbeats until the subscriber goes away, the
    /// subscription ends or the server shuts down.
    async fn live(mut self) {
        let mut next_beat = tokio::time::Instant::now() + self.heartbeat;
        // An item read while gathering a batch, to send after it.
        let mut held: Option<SubscriptionItem> = None;
        loop {
            let item = match held.take() {
                Some(item) => Some(Ok(item)),
                None => tokio::select! {
                    biased;
                    () = stopping(&mut self.shutdown) => {
                        self.send(Self::stopping_msg()).await;
                        return;
                    }
                    () = self.tx.closed() => return,
                    item = next_item(&mut self.sub) => item,
                    () = tokio::time::sleep_until(next_beat) => {
                        let head = self.state.store.head().await.ok().flatten();
                        if !self.send(SubMsg::Heartbeat(head)).await {
                            return;
                        }
                        next_beat = tokio::time::Instant::now() + self.heartbeat;
                        continue;
                    }
                },
            };
            let msg = match item {
                None => return,
                Some(Err(e)) => {
                    self.send(SubMsg::Failed(public(e))).await;
                    return;
                }
                Some(Ok(SubscriptionItem::Event(e))) => {
                    let mut bytes = approx_size(&e);
                    let mut events = vec![e];
                    // Gather whatever else is ready, up to a batch.
                    while events.len() < self.batch && bytes < BATCH_BYTES {
                        match ready_item(&mut self.sub).await {
                            Some(Some(Ok(SubscriptionItem::Event(e)))) => {
                                bytes += approx_size(&e);
                                events.push(e);
                            }
                            Some(Some(Ok(other))) => {
                                held = Some(other);
                                break;
                            }
                            Some(Some(Err(e))) => {
                                self.send(SubMsg::Events(events)).await;
                                self.send(SubMsg::Failed(public(e))).await;
                                return;
                            }
                            Some(None) | None => break,
                        }
                    }
                    record_lag(&events, self.state.store.head().await.ok().flatten());
                    SubMsg::Events(events)
                }
                Some(Ok(SubscriptionItem::CaughtUp { position })) => SubMsg::CaughtUp(position),
                Some(Ok(SubscriptionItem::Checkpoint { position })) => {
                    // Only the newest of the checkpoints that are ready matters.
                    let mut position = position;
                    loop {
                        match ready_item(&mut self.sub).await {
                            Some(Some(Ok(SubscriptionItem::Checkpoint { position: p }))) => {
                                position = p
                            }
                            Some(Some(Ok(other))) => {
                                held = Some(other);
                                break;
                            }
                            Some(Some(Err(e))) => {
                                self.send(SubMsg::Failed(public(e))).await;
                                return;
                            }
                            _ => break,
                        }
                    }
                    SubMsg::Checkpoint(position)
                }
            };
            if !self.send(msg).await {
                return;
            }
            next_beat = tokio::time::Instant::now() + self.heartbeat;
        }
    }
}

/// Records how far behind the head a subscriber's latest batch is.
fn record_lag(events: &[RecordedEvent], head: Option<u64>) {
    if let (Some(last), Some(head)) = (events.last(), head) {
        metrics::lag(head.saturating_sub(last.position));
    }
}

/// Returns once the server has begun shutting down.
pub(crate) async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|&s| s).await;
}

/// The next item if one is ready now; `None` when the subscription would wait.
async fn ready_item(
    sub: &mut annal_core::SubscriptionStream,
) -> Option<Option<annal_core::Result<SubscriptionItem>>> {
    std::future::poll_fn(|cx| match sub.as_mut().poll_next(cx) {
        std::task::Poll::Ready(item) => std::task::Poll::Ready(Some(item)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await
}

/// What closes the served store: once nothing else holds it, the closing to run (it may
/// block); `None` while it is still held.
type Closer = Box<dyn FnMut() -> Option<Box<dyn FnOnce() -> annal_core::Result<()> + Send>> + Send>;

/// A running server.
pub struct Server {
    addr: SocketAddr,
    state: Arc<State>,
    stop: watch::Sender<bool>,
    done: tokio::task::JoinHandle<anyhow::Result<()>>,
    close: Closer,
}

impl Server {
    /// Opens the embedded engine in the configured folder, binds the listen address and
    /// starts serving it.
    pub async fn start(config: Config) -> anyhow::Result<Server> {
        use anyhow::Context;
        // TLS files are read first: a key that cannot be used costs no store opening.
        if let Some(files) = &config.tls {
            serve::tls_acceptor(files)?;
        }
        let engine = annal_engine::Config::default()
            .max_event_size(config.limits.max_event_bytes)
            .max_append_size(config.limits.max_append_bytes)
            .head_cache_bytes(config.limits.head_cache_bytes)
            .id_filter_bytes(config.limits.id_filter_bytes);
        let data = config.data.clone();
        let store = tokio::task::spawn_blocking(move || Store::open_with(&data, engine))
            .await?
            .with_context(|| format!("opening the store in {}", config.data.display()))?;
        tracing::info!(data = %config.data.display(), "the store is open");
        Self::serve(store, config).await
    }

    /// Binds the listen address and serves `store`; `config.data` is not used.
    pub async fn serve<S: Backend>(store: S, config: Config) -> anyhow::Result<Server> {
        use anyhow::Context;
        let tls = match &config.tls {
            Some(files) => Some(serve::tls_acceptor(files)?),
            None => None,
        };
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listening on {}", config.listen))?;
        let addr = listener.local_addr()?;
        metrics::install();
        let (stop, shutdown) = watch::channel(false);
        let store = Arc::new(store);
        let served: Arc<dyn Served> = Arc::clone(&store) as Arc<dyn Served>;
        let groups = {
            let data = config.data.clone();
            let shutdown = shutdown.clone();
            let max_groups = config.limits.max_groups;
            groups::Groups::open(&data, served, shutdown, max_groups).with_context(|| {
                format!("opening the consumer groups in {}", config.data.display())
            })?
        };
        let mut held = Some(Arc::clone(&store));
        let close: Closer = Box::new(move || {
            let store = held.take()?;
            match Arc::try_unwrap(store) {
                Ok(store) => Some(Box::new(move || store.close())),
                Err(store) => {
                    held = Some(store);
                    None
                }
            }
        });
        let state = Arc::new(State {
            store,
            subscriptions: Arc::new(Semaphore::new(config.limits.max_subscriptions)),
            reads: Arc::new(Semaphore::new(config.limits.max_reads)),
            append_budget: Arc::new(Semaphore::new(config.limits.max_inflight_append_bytes)),
            overdraft: Arc::new(Semaphore::new(1)),
            answers: answers::Answers::new(config.limits.max_answer_bytes),
            config,
            shutdown: shutdown.clone(),
            draining: AtomicBool::new(false),
            started: Instant::now(),
            groups: Arc::new(groups),
        });
        let app = http::router(Arc::clone(&state));
        let done = tokio::spawn(serve::serve(
            listener,
            tls,
            app,
            Arc::clone(&state),
            shutdown,
        ));
        tracing::info!(%addr, tls = state.config.tls.is_some(), auth = state.config.auth_enabled(), "annal is serving");
        Ok(Server {
            addr,
            state,
            stop,
            done,
            close,
        })
    }

    /// The address the server listens on (with the port the system chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, waits for requests in flight (up to `shutdown_grace`), ends
    /// subscriptions and closes the store.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.state.draining.store(true, Ordering::Release);
        let _ = self.stop.send(true);
        self.finish().await
    }

    /// Waits until serving has stopped, then closes the store once nothing else holds it
    /// (closing the engine writes a checkpoint, so the next start replays nothing).
    async fn finish(self) -> anyhow::Result<()> {
        let served = self.done.await?;
        self.state.groups.stop_all().await;
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut close = self.close;
        drop(self.state);
        loop {
            if let Some(closing) = close() {
                tokio::task::spawn_blocking(closing).await??;
                break;
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "requests still held the store 5 s after shutdown, so it was not closed; acknowledged appends are durable, and the next start replays the log's tail"
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        served
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_see_no_absolute_path_of_the_server() {
        assert_eq!(
            hide_paths("syncing /srv/annal/data/log/00000000000000000000.seg: Input/output error (os error 5)"),
            "syncing log/00000000000000000000.seg: Input/output error (os error 5)"
        );
        assert_eq!(
            hide_paths("cutting '/var/lib/annal/log/1.seg' to its end"),
            "cutting 'log/1.seg' to its end"
        );
        assert_eq!(hide_paths("a/b and 1/2 stay"), "a/b and 1/2 stay");
        let e = public(Error::Corruption {
            file: "/home/x/store/index/00000007.run".into(),
            offset: 12,
            problem: "checksum mismatch".into(),
        });
        assert!(
            matches!(&e, Error::Corruption { file, .. } if file == "index/00000007.run"),
            "{e:?}"
        );
        let e = public(Error::Poisoned {
            cause: "writing /home/x/store/log/2.seg failed".into(),
        });
        assert_eq!(e.to_string().matches("/home").count(), 0, "{e}");
    }
}
