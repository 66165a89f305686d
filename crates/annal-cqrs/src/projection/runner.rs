//! The runner: follows a subscription and applies a projection's events to its sink in
//! batches, each batch with its checkpoint in one transaction.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use annal_core::{
    next_item, EventStore, RecordedEvent, SubscribeFrom, SubscribeRequest, SubscriptionItem,
    SubscriptionStream, Timestamp,
};
use futures_util::FutureExt;
use tokio::sync::watch;

use super::model::{Change, Changes, Table};
use super::sink::{Batch, Checkpoint, Failure, Sink, SinkError, Stmt};
use super::sql::{self, Target};
use super::{Projection, ProjectionError, WaitError};
use crate::{decode_each, Upcasters};

/// What the runner does with an event it cannot apply: `apply` returned an error, the event
/// does not decode, or the sink refused its changes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum OnFailure {
    /// Record it and stop, the checkpoint just before it. The default: a read model that
    /// silently lacks an event is wrong in ways nobody sees.
    #[default]
    Stop,
    /// Try it again, `attempts` times in all, waiting `backoff`, then twice that, and so on
    /// (at most 30 s); then record it and stop. A stop asked for while it waits ends the
    /// runner at once, the event neither applied nor recorded.
    Retry { attempts: u32, backoff: Duration },
    /// Record it (position, error) and go on without it.
    Skip,
}

/// How a runner works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The most events applied in one transaction. Default 1,000.
    pub batch: usize,
    pub on_failure: OnFailure,
    /// How often the runner asks the store for its head, to report its lag. Default 1 s.
    pub head_every: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            batch: 1000,
            on_failure: OnFailure::Stop,
            head_every: Duration::from_secs(1),
        }
    }
}

/// What a runner is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    Starting,
    /// Applying history to the live tables.
    CatchingUp,
    /// Replaying the log into the shadow copy; the live tables answer queries meanwhile.
    Rebuilding,
    /// Caught up; applying events as they are appended.
    Live,
    /// Replaying the log into a copy to compare with the live tables.
    Checking,
    /// Stopped on request.
    Stopped,
    /// Stopped by an error.
    Failed(String),
}

/// A runner's progress, published after every batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub projection: String,
    pub phase: Phase,
    /// Every position below this one is in the live tables.
    pub checkpoint: u64,
    /// During a rebuild, the same for the shadow copy.
    pub rebuilding: Option<u64>,
    /// The log's last position, as last seen.
    pub head: Option<u64>,
    /// Events applied since the runner started (to either copy).
    pub applied: u64,
    /// Events recorded as failures since the runner started.
    pub failed: u64,
}

impl Status {
    fn new(projection: &str) -> Self {
        Status {
            projection: projection.to_string(),
            phase: Phase::Starting,
            checkpoint: 0,
            rebuilding: None,
            head: None,
            applied: 0,
            failed: 0,
        }
    }

    /// How far behind the head the copy being written is, in positions.
    pub fn lag(&self) -> u64 {
        let at = self.rebuilding.unwrap_or(self.checkpoint);
        self.head.map_or(0, |h| (h + 1).saturating_sub(at))
    }
}

/// A runner started with [`Runner::spawn`]. Dropping it stops the runner after the batch in
/// hand, as [`Running::stop`] does.
pub struct Running {
    projection: String,
    status: watch::Receiver<Status>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), ProjectionError>>,
}

impl Running {
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// Every status the runner publishes.
    pub fn watch(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Read your writes: waits until the live tables hold every event up to `position` (an
    /// append's position), at most `timeout`.
    pub async fn wait_for(&self, position: u64, timeout: Duration) -> Result<(), WaitError> {
        let mut rx = self.status.clone();
        let ended = |s: &Status| {
            s.checkpoint > position || matches!(s.phase, Phase::Failed(_) | Phase::Stopped)
        };
        // The guard `wait_for` returns holds the status locked: let go of it at once.
        let reached =
            tokio::time::timeout(timeout, async { rx.wait_for(ended).await.is_ok() }).await;
        let s = self.status();
        match reached {
            _ if s.checkpoint > position => Ok(()),
            Ok(_) => Err(WaitError::Stopped {
                projection: self.projection.clone(),
                position,
                reason: match s.phase {
                    Phase::Failed(e) => e,
                    _ => "stopped on request".to_string(),
                },
            }),
            Err(_) => Err(WaitError::Timeout {
                projection: self.projection.clone(),
                position,
                reached: s.checkpoint.checked_sub(1),
                waited: timeout,
            }),
        }
    }

    /// Stops after the batch in hand and returns how the runner ended.
    pub async fn stop(self) -> Result<(), ProjectionError> {
        let _ = self.stop.send(true);
        self.join().await
    }

    /// Waits for the runner to end on its own (an error, or the store closing).
    pub async fn join(self) -> Result<(), ProjectionError> {
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(ProjectionError::Invalid {
                projection: self.projection,
                problem: format!("the runner's task ended abnormally: {e}"),
            }),
        }
    }
}

/// Applies a projection's events to a sink. See the [module](super) for the guarantees.
pub struct Runner<S, P> {
    pub(super) store: S,
    pub(super) sink: Sink,
    pub(super) projection: Arc<P>,
    pub(super) upcasters: Arc<Upcasters>,
    pub(super) settings: Settings,
    pub(super) tables: Arc<Vec<Table>>,
    pub(super) status: watch::Sender<Status>,
    /// Statements rendered for this sink, per copy: upserts and deletes by table, a
    /// projection's own statements by template (looked up without copying it).
    rendered: HashMap<(Target, usize, bool), Arc<str>>,
    templates: HashMap<Cow<'static, str>, [Option<Arc<str>>; 3]>,
    last_head: Option<Instant>,
    /// When the last event applied was recorded, for the lag in seconds.
    last_applied_at: Option<Timestamp>,
    /// Says when a stop is asked for, while the runner runs.
    stopped: Option<watch::Receiver<bool>>,
}

/// Why an event ends the batch being gathered.
pub(super) enum Halt {
    /// It failed for good and the policy stops on it.
    Failed(ProjectionError),
    /// A stop was asked for while its retry waited: it stays unapplied and unrecorded.
    Stopped,
}

/// How following the log ended, short of an error.
enum Ended {
    /// Another writer moved the checkpoint: load it again.
    Moved,
    /// Stopped on request.
    Stopped,
    /// A rebuild was swapped in (and only a rebuild was asked for).
    Swapped(Checkpoint),
}

/// What the runner is writing: which copy, under which guard, from where.
pub(super) struct Cursor {
    pub(super) target: Target,
    pub(super) guard: u64,
    pub(super) next: u64,
}

/// One event's part of a batch.
struct Part {
    position: u64,
    stream_id: String,
    revision: u64,
    event_type: String,
    stmts: std::ops::Range<usize>,
}

/// A batch being committed.
struct InFlight {
    task: tokio::task::JoinHandle<Result<bool, SinkError>>,
    batch: Arc<Batch>,
    parts: Vec<Part>,
    by_type: HashMap<String, u64>,
    last_recorded: Option<Timestamp>,
    started: Instant,
}

/// A batch being gathered.
pub(super) struct Pending {
    from: u64,
    pub(super) to: u64,
    parts: Vec<Part>,
    stmts: Vec<Stmt>,
    failures: Vec<Failure>,
    by_type: HashMap<String, u64>,
    last_recorded: Option<Timestamp>,
}

impl Pending {
    pub(super) fn new(from: u64) -> Self {
        Pending {
            from,
            to: from,
            parts: Vec::new(),
            stmts: Vec::new(),
            failures: Vec::new(),
            by_type: HashMap::new(),
            last_recorded: None,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.to == self.from && self.failures.is_empty()
    }
}

impl<S: EventStore + 'static, P: Projection> Runner<S, P> {
    pub fn new(store: S, sink: Sink, projection: P) -> Self {
        let tables = Arc::new(projection.tables());
        let status = watch::Sender::new(Status::new(projection.name()));
        Runner {
            store,
            sink,
            projection: Arc::new(projection),
            upcasters: Arc::new(Upcasters::new()),
            settings: Settings::default(),
            tables,
            status,
            rendered: HashMap::new(),
            templates: HashMap::new(),
            last_head: None,
            last_applied_at: None,
            stopped: None,
        }
    }

    /// The upcasters events go through before `apply`.
    pub fn with_upcasters(mut self, upcasters: Upcasters) -> Self {
        self.upcasters = Arc::new(upcasters);
        self
    }

    pub fn with_settings(mut self, settings: Settings) -> Self {
        self.settings = Settings {
            batch: settings.batch.max(1),
            ..settings
        };
        self
    }

    /// Every status the runner will publish.
    pub fn watch(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    pub(super) fn name(&self) -> &str {
        self.projection.name()
    }

    /// Runs on a task of its own until stopped or failed.
    pub fn spawn(self) -> Running {
        let (stop, stopped) = watch::channel(false);
        let status = self.status.subscribe();
        let projection = self.name().to_string();
        let task = tokio::spawn(async move {
            let mut this = self;
            this.go(false, stopped).await.map(|_| ())
        });
        Running {
            projection,
            status,
            stop,
            task,
        }
    }

    /// Runs here until the store ends the subscription or an error stops it.
    pub async fn run(mut self) -> Result<(), ProjectionError> {
        let (_keep, stopped) = watch::channel(false);
        self.go(false, stopped).await.map(|_| ())
    }

    /// Rebuilds now, whatever the versions say: replays the log into a shadow copy while the
    /// live tables answer queries, swaps it in once caught up, and returns the new
    /// checkpoint. A rebuild of this version left unfinished is resumed, not started over.
    pub async fn rebuild(mut self) -> Result<Checkpoint, ProjectionError> {
        let (_keep, stopped) = watch::channel(false);
        match self.go(true, stopped).await? {
            Some(cp) => Ok(cp),
            None => Err(self.invalid("the rebuild was stopped before it finished".into())),
        }
    }

    pub(super) fn invalid(&self, problem: String) -> ProjectionError {
        ProjectionError::Invalid {
            projection: self.name().to_string(),
            problem,
        }
    }

    pub(super) fn sink_error(&self, error: SinkError) -> ProjectionError {
        ProjectionError::Sink {
            projection: self.name().to_string(),
            error,
        }
    }

    pub(super) fn store_error(&self, error: annal_core::Error) -> ProjectionError {
        ProjectionError::Store {
            projection: self.name().to_string(),
            error,
        }
    }

    pub(super) fn check_definition(&self) -> Result<(), ProjectionError> {
        if let Some(p) = super::model::name_problem(self.name()) {
            return Err(self.invalid(format!("the name {p}")));
        }
        if self.tables.is_empty() {
            return Err(self.invalid("declares no table".into()));
        }
        for (i, t) in self.tables.iter().enumerate() {
            if let Some(p) = t.problem() {
                return Err(self.invalid(p));
            }
            if self.tables[..i].iter().any(|u| u.name == t.name) {
                return Err(self.invalid(format!("declares table '{}' twice", t.name)));
            }
        }
        Ok(())
    }

    async fn go(
        &mut self,
        rebuild_only: bool,
        mut stopped: watch::Receiver<bool>,
    ) -> Result<Option<Checkpoint>, ProjectionError> {
        self.stopped = Some(stopped.clone());
        let r = self.go_inner(rebuild_only, &mut stopped).await;
        self.status.send_modify(|s| {
            s.phase = match &r {
                Err(e) => Phase::Failed(e.to_string()),
                Ok(_) => Phase::Stopped,
            }
        });
        r
    }

    async fn go_inner(
        &mut self,
        rebuild_only: bool,
        stopped: &mut watch::Receiver<bool>,
    ) -> Result<Option<Checkpoint>, ProjectionError> {
        self.check_definition()?;
        let version = self.projection.version();
        let mut pause = Duration::from_millis(100);
        let mut force = rebuild_only;
        loop {
            let cp = match self
                .sink
                .init(self.name(), version, self.tables.clone())
                .await
            {
                Err(e) if e.is_transient() => {
                    self.wait_out(&e.to_string(), &mut pause, stopped).await?;
                    continue;
                }
                r => r.map_err(|e| self.sink_error(e))?,
            };
            if cp.version > version {
                return Err(ProjectionError::VersionAhead {
                    projection: self.name().to_string(),
                    stored: cp.version,
                    ours: version,
                });
            }
            let resume = cp.rebuild.filter(|&(v, _)| v == version);
            let cursor = if let Some((_, next)) = resume {
                Cursor {
                    target: Target::Shadow,
                    guard: version.into(),
                    next,
                }
            } else if force || cp.version < version {
                let fresh = self
                    .sink
                    .fresh_copy(
                        self.name(),
                        Target::Shadow,
                        version,
                        cp.generation,
                        self.tables.clone(),
                    )
                    .await
                    .map_err(|e| self.sink_error(e))?;
                if fresh.is_none() {
                    continue;
                }
                tracing::info!(
                    projection = self.name(),
                    version,
                    "rebuilding from the start"
                );
                Cursor {
                    target: Target::Shadow,
                    guard: version.into(),
                    next: 0,
                }
            } else {
                Cursor {
                    target: Target::Live,
                    guard: cp.generation,
                    next: cp.next_position,
                }
            };
            force = false;
            self.status.send_modify(|s| {
                s.checkpoint = cp.next_position;
                s.rebuilding = (cursor.target == Target::Shadow).then_some(cursor.next);
                s.phase = if cursor.target == Target::Shadow {
                    Phase::Rebuilding
                } else {
                    Phase::CatchingUp
                };
            });
            match self.follow(cursor, rebuild_only, stopped).await {
                Ok(Ended::Moved) => continue,
                Ok(Ended::Stopped) => return Ok(None),
                Ok(Ended::Swapped(cp)) => return Ok(Some(cp)),
                Err(ProjectionError::Store {
                    error: error @ annal_core::Error::Unavailable(_),
                    ..
                }) => {
                    self.wait_out(&error.to_string(), &mut pause, stopped)
                        .await?;
                }
                Err(ProjectionError::Sink { error, .. }) if error.is_transient() => {
                    self.wait_out(&error.to_string(), &mut pause, stopped)
                        .await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits `pause` before an event's next attempt: false, at once, when a stop is asked
    /// for before or meanwhile.
    async fn back_off(&mut self, pause: Duration) -> bool {
        let Some(stopped) = self.stopped.as_mut() else {
            tokio::time::sleep(pause).await;
            return true;
        };
        if stop_asked(stopped) {
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stopped.changed() => {}
        }
        !stop_asked(stopped)
    }

    /// Waits before trying again after a passing failure; fails if stopped meanwhile.
    async fn wait_out(
        &self,
        what: &str,
        pause: &mut Duration,
        stopped: &mut watch::Receiver<bool>,
    ) -> Result<(), ProjectionError> {
        tracing::warn!(projection = self.name(), error = what, retry_in = ?*pause, "projection paused");
        tokio::select! {
            _ = tokio::time::sleep(*pause) => {}
            _ = stopped.wait_for(|s| *s) => {}
        }
        *pause = (*pause * 2).min(Duration::from_secs(5));
        if stop_asked(stopped) {
            return Err(self.invalid(format!("stopped while waiting out: {what}")));
        }
        Ok(())
    }

    pub(super) async fn subscribe(&self, next: u64) -> Result<SubscriptionStream, ProjectionError> {
        let from = match next {
            0 => SubscribeFrom::Start,
            n => SubscribeFrom::After(n - 1),
        };
        self.store
            .subscribe(SubscribeRequest::new(self.projection.source(), from))
            .await
            .map_err(|e| self.store_error(e))
    }

    async fn follow(
        &mut self,
        mut cur: Cursor,
        rebuild_only: bool,
        stopped: &mut watch::Receiver<bool>,
    ) -> Result<Ended, ProjectionError> {
        let mut sub = self.subscribe(cur.next).await?;
        let mut caught_up = false;
        // The batch being committed while the next one is gathered, and where the next
        // one starts.
        let mut inflight: Option<InFlight> = None;
        let mut planned = cur.next;
        loop {
            // Asked to stop (or the `Running` dropped): after the batch in flight, even
            // while history keeps coming.
            if stop_asked(stopped) {
                if let Some(sent) = inflight.take() {
                    if let Some(to) = self.settle(sent, &cur).await? {
                        cur.next = to;
                        self.report(&cur, caught_up).await;
                    }
                }
                return Ok(Ended::Stopped);
            }
            let ready = match inflight {
                Some(_) => next_item(&mut sub).now_or_never(),
                None => None,
            };
            let first = match ready {
                Some(item) => item,
                None => {
                    // Nothing more is ready: finish the batch in flight before waiting.
                    if let Some(sent) = inflight.take() {
                        match self.settle(sent, &cur).await? {
                            Some(to) => cur.next = to,
                            None => return Ok(Ended::Moved),
                        }
                        if let Some(end) =
                            self.swap_if_done(&mut cur, caught_up, rebuild_only).await?
                        {
                            return Ok(end);
                        }
                        self.report(&cur, caught_up).await;
                        continue;
                    }
                    tokio::select! {
                        biased;
                        _ = stopped.wait_for(|s| *s) => return Ok(Ended::Stopped),
                        item = next_item(&mut sub) => item,
                    }
                }
            };
            let Some(first) = first else {
                if let Some(sent) = inflight.take() {
                    self.settle(sent, &cur).await?;
                }
                return Err(self.store_error(annal_core::Error::Unavailable(
                    "the subscription ended".into(),
                )));
            };
            let mut items = vec![first];
            while items.len() < self.settings.batch {
                match next_item(&mut sub).now_or_never() {
                    Some(Some(item)) => items.push(item),
                    _ => break,
                }
            }
            let mut pending = Pending::new(planned);
            let mut failed = None;
            for item in items {
                match item {
                    Ok(SubscriptionItem::Event(e)) => {
                        if e.position < pending.to {
                            continue;
                        }
                        if let Err(halt) = self.take(&mut pending, &cur, &e).await? {
                            failed = Some(halt);
                            break;
                        }
                    }
                    Ok(SubscriptionItem::CaughtUp { position }) => {
                        caught_up = true;
                        if let Some(p) = position {
                            pending.to = pending.to.max(p + 1);
                            self.status.send_modify(|s| s.head = s.head.max(Some(p)));
                        }
                    }
                    Ok(SubscriptionItem::Checkpoint { position }) => {
                        pending.to = pending.to.max(position + 1);
                    }
                    Err(e) => {
                        failed = Some(Halt::Failed(self.store_error(e)));
                        break;
                    }
                }
            }
            // Batches commit in order: the one before first.
            if let Some(sent) = inflight.take() {
                match self.settle(sent, &cur).await? {
                    Some(to) => cur.next = to,
                    None => return Ok(Ended::Moved),
                }
            }
            if !pending.is_empty() {
                planned = pending.to;
                if failed.is_some() || (caught_up && cur.target == Target::Shadow) {
                    match self.commit(pending, &cur).await? {
                        Some(to) => cur.next = to,
                        None => return Ok(Ended::Moved),
                    }
                } else {
                    inflight = Some(self.send(pending, &cur));
                }
            }
            match failed {
                Some(Halt::Failed(e)) => return Err(e),
                Some(Halt::Stopped) => return Ok(Ended::Stopped),
                None => {}
            }
            if inflight.is_none() {
                if let Some(end) = self.swap_if_done(&mut cur, caught_up, rebuild_only).await? {
                    return Ok(end);
                }
                planned = cur.next;
            }
            self.report(&cur, caught_up).await;
        }
    }

    /// Once a rebuild's copy has caught up (and nothing is in flight): swaps it in, and
    /// goes on with the live tables unless only the rebuild was asked for. `Some` when
    /// following ends here.
    async fn swap_if_done(
        &mut self,
        cur: &mut Cursor,
        caught_up: bool,
        rebuild_only: bool,
    ) -> Result<Option<Ended>, ProjectionError> {
        if !caught_up || cur.target != Target::Shadow {
            return Ok(None);
        }
        let version = cur.guard as u32;
        let swapped = self
            .sink
            .swap(self.name(), version, cur.next, self.tables.clone())
            .await
            .map_err(|e| self.sink_error(e))?;
        let Some(cp) = swapped else {
            return Ok(Some(Ended::Moved));
        };
        tracing::info!(projection = self.name(), version, position = ?cp.position(), "rebuilt copy swapped in");
        if rebuild_only {
            self.status.send_modify(|s| {
                s.checkpoint = cp.next_position;
                s.rebuilding = None;
            });
            return Ok(Some(Ended::Swapped(cp)));
        }
        *cur = Cursor {
            target: Target::Live,
            guard: cp.generation,
            next: cp.next_position,
        };
        Ok(None)
    }

    /// Publishes the status and the lag metrics after a batch.
    async fn report(&mut self, cur: &Cursor, caught_up: bool) {
        let due = self
            .last_head
            .is_none_or(|t| t.elapsed() >= self.settings.head_every);
        if due {
            self.last_head = Some(Instant::now());
            if let Ok(head) = self.store.head().await {
                self.status.send_modify(|s| s.head = s.head.max(head));
            }
        }
        self.status.send_modify(|s| {
            match cur.target {
                Target::Shadow => s.rebuilding = Some(cur.next),
                _ => {
                    s.checkpoint = cur.next;
                    s.rebuilding = None;
                }
            }
            s.phase = match (cur.target, caught_up) {
                (Target::Shadow, _) => Phase::Rebuilding,
                (_, true) => Phase::Live,
                (_, false) => Phase::CatchingUp,
            };
        });
        let lag = self.status.borrow().lag();
        let name = self.name().to_string();
        // How old the last event applied is, while events wait behind it.
        let lag_seconds = match self.last_applied_at {
            Some(at) if lag > 0 => {
                (Timestamp::now().as_micros() - at.as_micros()).max(0) as f64 / 1e6
            }
            _ => 0.0,
        };
        metrics::gauge!("annal_projection_lag_seconds", "projection" => name.clone())
            .set(lag_seconds);
        metrics::gauge!("annal_projection_lag_events", "projection" => name.clone())
            .set(lag as f64);
        metrics::gauge!("annal_projection_position", "projection" => name)
            .set(cur.next.saturating_sub(1) as f64);
    }

    /// Adds an event's changes to the batch; an event that fails is handled by the
    /// failure policy: `Ok(Err(_))` when the runner must stop on it, or was asked to stop
    /// while the event's retry waited.
    pub(super) async fn take(
        &mut self,
        pending: &mut Pending,
        cur: &Cursor,
        e: &RecordedEvent,
    ) -> Result<Result<(), Halt>, ProjectionError> {
        let mut attempts = 0;
        let error = loop {
            attempts += 1;
            match self.changes_of(e, cur.target) {
                Ok(stmts) => {
                    let start = pending.stmts.len();
                    pending.stmts.extend(stmts);
                    pending.parts.push(Part {
                        position: e.position,
                        stream_id: e.stream_id.to_string(),
                        revision: e.revision,
                        event_type: e.event_type.to_string(),
                        stmts: start..pending.stmts.len(),
                    });
                    *pending.by_type.entry(e.event_type.to_string()).or_default() += 1;
                    pending.last_recorded = Some(e.recorded_at);
                    pending.to = e.position + 1;
                    return Ok(Ok(()));
                }
                Err(error) => match self.settings.on_failure {
                    OnFailure::Retry {
                        attempts: most,
                        backoff,
                    } if attempts < most => {
                        if !self.back_off(backoff_for(backoff, attempts)).await {
                            return Ok(Err(Halt::Stopped));
                        }
                    }
                    _ => break error,
                },
            }
        };
        Ok(self
            .failed(pending, e, attempts, error)
            .await
            .map_err(Halt::Failed))
    }

    /// The statements an event turns into, for one copy.
    fn changes_of(&mut self, e: &RecordedEvent, target: Target) -> Result<Vec<Stmt>, String> {
        let projection = self.projection.clone();
        let tables = self.tables.clone();
        let mut changes = Changes::new(&tables);
        let mut refused = None;
        decode_each::<P::Event>(e, &self.upcasters, |event| {
            if refused.is_none() {
                if let Err(x) = projection.apply(&event, e, &mut changes) {
                    refused = Some(x);
                }
            }
        })
        .map_err(|c| c.to_string())?;
        if let Some(x) = refused.or(changes.misuse.take()) {
            return Err(x);
        }
        changes
            .list
            .into_iter()
            .map(|c| {
                Ok(match c {
                    Change::Upsert { table, row } => (self.rendered(target, table, false), row),
                    Change::Delete { table, key } => (self.rendered(target, table, true), key),
                    Change::Sql { template, params } => (self.template(target, template)?, params),
                })
            })
            .collect()
    }

    /// The upsert (or delete) of a declared table, for one copy.
    fn rendered(&mut self, target: Target, table: usize, delete: bool) -> Arc<str> {
        let d = self.sink.dialect();
        let t = &self.tables[table];
        self.rendered
            .entry((target, table, delete))
            .or_insert_with(|| match delete {
                false => sql::upsert(t, target, d).into(),
                true => sql::delete(t, target, d).into(),
            })
            .clone()
    }

    /// A projection's own statement, for one copy.
    fn template(
        &mut self,
        target: Target,
        template: Cow<'static, str>,
    ) -> Result<Arc<str>, String> {
        let i = target as usize;
        if let Some(Some(s)) = self.templates.get(template.as_ref()).map(|r| &r[i]) {
            return Ok(s.clone());
        }
        let sql: Arc<str> =
            sql::render(&template, &self.tables, target, self.sink.dialect())?.into();
        // A projection that builds its statements on the fly must not grow this for ever.
        if self.templates.len() >= 4096 {
            self.templates.clear();
        }
        self.templates.entry(template).or_default()[i] = Some(sql.clone());
        Ok(sql)
    }

    /// An event failed for good: counted in the status and the metrics, logged, and made
    /// into the record the sink keeps. `action` is `skipped` or `stopped`.
    fn failure(&self, e: &Part, attempts: u32, error: String, action: &str) -> Failure {
        self.status.send_modify(|s| s.failed += 1);
        metrics::counter!("annal_projection_failures_total", "projection" => self.name().to_string(), "action" => action.to_string()).increment(1);
        match action {
            "skipped" => {
                tracing::warn!(projection = self.name(), position = e.position, %error, "event skipped")
            }
            _ => {
                tracing::error!(projection = self.name(), position = e.position, %error, "projection stopped on an event")
            }
        }
        Failure {
            projection: self.name().to_string(),
            position: e.position,
            stream_id: e.stream_id.clone(),
            revision: e.revision,
            event_type: e.event_type.clone(),
            error,
            attempts,
            action: action.to_string(),
            failed_at: Timestamp::now(),
        }
    }

    /// An event failed for good: skip it, or commit what came before and stop on it.
    async fn failed(
        &mut self,
        pending: &mut Pending,
        e: &RecordedEvent,
        attempts: u32,
        error: String,
    ) -> Result<(), ProjectionError> {
        let part = Part {
            position: e.position,
            stream_id: e.stream_id.to_string(),
            revision: e.revision,
            event_type: e.event_type.to_string(),
            stmts: 0..0,
        };
        if self.settings.on_failure == OnFailure::Skip {
            pending
                .failures
                .push(self.failure(&part, attempts, error, "skipped"));
            pending.to = e.position + 1;
            return Ok(());
        }
        pending
            .failures
            .push(self.failure(&part, attempts, error.clone(), "stopped"));
        Err(ProjectionError::Failed {
            projection: self.name().to_string(),
            position: e.position,
            stream_id: part.stream_id,
            revision: part.revision,
            event_type: part.event_type,
            attempts,
            error,
        })
    }

    /// Commits a batch; `None` when the checkpoint had moved. A batch the sink refuses is
    /// committed again event by event, so that the failure policy meets the one event at
    /// fault.
    pub(super) async fn commit(
        &mut self,
        pending: Pending,
        cur: &Cursor,
    ) -> Result<Option<u64>, ProjectionError> {
        let sent = self.send(pending, cur);
        self.settle(sent, cur).await
    }

    /// Starts committing a batch on a task of its own, so that the next batch can be
    /// gathered and decoded meanwhile. Passing failures (the sink busy) are retried there
    /// for up to about 2 s.
    fn send(&self, pending: Pending, cur: &Cursor) -> InFlight {
        let batch = Arc::new(Batch {
            projection: self.name().to_string(),
            target: cur.target,
            guard: cur.guard,
            from: pending.from,
            to: pending.to,
            stmts: pending.stmts,
            failures: pending.failures,
        });
        let (sink, sent) = (self.sink.clone(), batch.clone());
        let task = tokio::spawn(async move {
            let mut pause = Duration::from_millis(50);
            loop {
                match sink.commit(sent.clone()).await {
                    Err(e) if e.is_transient() && pause < Duration::from_secs(2) => {
                        tracing::warn!(projection = sent.projection, error = %e, "read-model sink busy; trying the batch again");
                        tokio::time::sleep(pause).await;
                        pause *= 2;
                    }
                    r => break r,
                }
            }
        });
        InFlight {
            task,
            batch,
            parts: pending.parts,
            by_type: pending.by_type,
            last_recorded: pending.last_recorded,
            started: Instant::now(),
        }
    }

    /// Waits for a batch sent with [`Runner::send`] and accounts for it.
    async fn settle(
        &mut self,
        sent: InFlight,
        cur: &Cursor,
    ) -> Result<Option<u64>, ProjectionError> {
        let outcome = match sent.task.await {
            Ok(r) => r,
            Err(e) => Err(SinkError::Unavailable {
                sink: "read-model sink",
                message: format!("the commit's task ended abnormally: {e}"),
            }),
        };
        let batch = Arc::try_unwrap(sent.batch).unwrap_or_else(|b| Batch {
            projection: b.projection.clone(),
            target: b.target,
            guard: b.guard,
            from: b.from,
            to: b.to,
            stmts: b.stmts.clone(),
            failures: b.failures.clone(),
        });
        match outcome {
            Ok(true) => {}
            Ok(false) => return Ok(None),
            Err(e) if e.is_transient() || batch.stmts.is_empty() => return Err(self.sink_error(e)),
            Err(e) => {
                return self.commit_one_by_one(batch, sent.parts, cur, e).await;
            }
        }
        let name = self.name().to_string();
        metrics::histogram!("annal_projection_batch_seconds", "projection" => name.clone())
            .record(sent.started.elapsed().as_secs_f64());
        let mut applied = 0;
        for (t, n) in sent.by_type {
            applied += n;
            metrics::counter!("annal_projection_events_total", "projection" => name.clone(), "type" => t)
                .increment(n);
        }
        if sent.last_recorded.is_some() {
            self.last_applied_at = sent.last_recorded;
        }
        self.status.send_modify(|s| s.applied += applied);
        Ok(Some(batch.to))
    }

    /// After the sink refused a batch: each event in a transaction of its own; the one the
    /// sink refuses meets the failure policy.
    async fn commit_one_by_one(
        &mut self,
        batch: Batch,
        parts: Vec<Part>,
        cur: &Cursor,
        first_error: SinkError,
    ) -> Result<Option<u64>, ProjectionError> {
        tracing::debug!(projection = self.name(), error = %first_error, "batch refused; applying its events one by one");
        let mut next = batch.from;
        let mut failures = batch.failures;
        for part in parts {
            let mut attempts = 0;
            loop {
                attempts += 1;
                let one = Arc::new(Batch {
                    projection: batch.projection.clone(),
                    target: cur.target,
                    guard: cur.guard,
                    from: next,
                    to: part.position + 1,
                    stmts: batch.stmts[part.stmts.clone()].to_vec(),
                    failures: std::mem::take(&mut failures),
                });
                let error = match self.sink.commit(one.clone()).await {
                    Ok(true) => break,
                    Ok(false) => return Ok(None),
                    Err(e) => e,
                };
                failures = one.failures.clone();
                if error.is_transient() {
                    return Err(self.sink_error(error));
                }
                if let OnFailure::Retry {
                    attempts: most,
                    backoff,
                } = self.settings.on_failure
                {
                    if attempts < most {
                        if !self.back_off(backoff_for(backoff, attempts)).await {
                            // Asked to stop: what came before the event is committed.
                            return Ok(Some(next));
                        }
                        continue;
                    }
                }
                let skip = self.settings.on_failure == OnFailure::Skip;
                let action = if skip { "skipped" } else { "stopped" };
                failures.push(self.failure(&part, attempts, error.to_string(), action));
                let to = if skip { part.position + 1 } else { next };
                let record = Arc::new(Batch {
                    projection: batch.projection.clone(),
                    target: cur.target,
                    guard: cur.guard,
                    from: next,
                    to,
                    stmts: Vec::new(),
                    failures: std::mem::take(&mut failures),
                });
                if !self
                    .sink
                    .commit(record)
                    .await
                    .map_err(|e| self.sink_error(e))?
                {
                    return Ok(None);
                }
                if !skip {
                    return Err(ProjectionError::Failed {
                        projection: self.name().to_string(),
                        position: part.position,
                        stream_id: part.stream_id,
                        revision: part.revision,
                        event_type: part.event_type,
                        attempts,
                        error: error.to_string(),
                    });
                }
                break;
            }
            next = part.position + 1;
            self.status.send_modify(|s| s.applied += 1);
        }
        // What is left: positions after the last event (checkpoint markers, skipped events).
        if next < batch.to || !failures.is_empty() {
            let rest = Arc::new(Batch {
                projection: batch.projection.clone(),
                target: cur.target,
                guard: cur.guard,
                from: next,
                to: batch.to,
                stmts: Vec::new(),
                failures,
            });
            if !self
                .sink
                .commit(rest)
                .await
                .map_err(|e| self.sink_error(e))?
            {
                return Ok(None);
            }
        }
        Ok(Some(batch.to))
    }
}

/// True once a stop was asked for, or once nothing can ask any more (the `Running` was
/// dropped).
fn stop_asked(stopped: &watch::Receiver<bool>) -> bool {
    *stopped.borrow() || stopped.has_changed().is_err()
}

fn backoff_for(first: Duration, attempt: u32) -> Duration {
    first
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(Duration::from_secs(30))
}
