//! Command handling: load, decide, append on the revision that was read; on a conflict,
//! load again and decide again. With a state cache, the state a command left is kept for
//! the next command on the same aggregate (`cache.rs`).

use std::sync::Arc;

use annal_core::{
    next_item, AppendRequest, Error, EventStore, ExpectedRevision, NewEvent, NewSnapshot,
    ReadRequest, NO_STREAM,
};

use crate::cache::StateCache;
use crate::{
    decode_each, encode, load, load_as_of, stream_id, At, CommandError, Context, Decider, Decision,
    LoadError, Loaded, Retry, Snapshotting, Upcasters,
};

/// What a command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handled {
    pub stream_id: String,
    /// The stream's revision after the command (before it, when it wrote nothing); `None`
    /// when the stream has no event.
    pub revision: Option<u64>,
    /// The log position of the last event written; `None` when the command wrote nothing.
    pub position: Option<u64>,
    /// How many events were written.
    pub written: usize,
    /// How many times the command was decided (1 when no writer got in the way).
    pub attempts: u32,
}

/// Runs commands against aggregates kept in `store`: the embedded engine, a client of a
/// server, or any other [`EventStore`].
#[derive(Debug, Clone)]
pub struct CommandHandler<S> {
    store: S,
    retry: Retry,
    upcasters: Arc<Upcasters>,
    /// States kept between commands ([`CommandHandler::with_state_cache`]); none by default.
    cache: Option<Arc<StateCache>>,
}

impl<S: EventStore> CommandHandler<S> {
    /// A handler with the default [`Retry`].
    pub fn new(store: S) -> Self {
        CommandHandler {
            store,
            retry: Retry::default(),
            upcasters: Arc::new(Upcasters::new()),
            cache: None,
        }
    }

    /// Keeps the state each command leaves, for up to `aggregates` aggregates (the one kept
    /// longest ago goes first), so that the next command on one decides on it without
    /// reading its stream. The handler and its clones share it; 0 keeps none (the default).
    ///
    /// It is safe whoever else writes: a command on a kept state appends with the revision
    /// the state was kept at, so a stream another writer reached first refuses the append,
    /// and the command loads, decides and appends again, as after any lost race. What it
    /// costs is memory (each kept state, as `D::State` holds it) and, per command on a kept
    /// state that another writer moved on, one refused append.
    pub fn with_state_cache(mut self, aggregates: usize) -> Self {
        self.cache = (aggregates > 0).then(|| Arc::new(StateCache::new(aggregates)));
        self
    }

    /// How conflicts and unanswered appends are retried.
    pub fn with_retry(mut self, retry: Retry) -> Self {
        self.retry = Retry {
            attempts: retry.attempts.max(1),
            ..retry
        };
        self
    }

    /// The upcasters every load applies.
    pub fn with_upcasters(mut self, upcasters: Upcasters) -> Self {
        self.upcasters = Arc::new(upcasters);
        self
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// The current state of instance `id` of `D`, from its latest usable snapshot if `D`
    /// keeps snapshots; a load that replayed more than `D`'s policy allows keeps a new one.
    pub async fn load<D: Decider>(&self, id: &str) -> Result<Loaded<D::State>, LoadError> {
        self.load_stream::<D>(&stream_id::<D>(id)).await
    }

    async fn load_stream<D: Decider>(&self, stream: &str) -> Result<Loaded<D::State>, LoadError> {
        let loaded = load::<D, S>(&self.store, stream, &self.upcasters).await?;
        if let (Some(how), Some(revision)) = (D::snapshots(), loaded.revision) {
            if how.due_after_load(loaded.replayed) {
                self.keep_snapshot(stream, revision, &loaded.state, &how)
                    .await;
            }
        }
        Ok(loaded)
    }

    /// The state the cache kept for `stream`, taken out of it.
    fn kept<D: Decider>(&self, stream: &str) -> Option<Loaded<D::State>> {
        let (state, revision) = self.cache.as_ref()?.take::<D::State>(stream)?;
        Some(Loaded {
            state,
            revision: Some(revision),
            position: None,
            replayed: 0,
            snapshot: None,
        })
    }

    /// Keeps `state` in the cache, if there is one, for the next command on `stream`; a
    /// stream with no event has nothing worth keeping.
    fn keep<D: Decider>(&self, stream: &str, state: D::State, revision: Option<u64>) {
        if let (Some(cache), Some(revision)) = (&self.cache, revision) {
            cache.put(stream, state, revision);
        }
    }

    /// Keeps a snapshot of `state` at `revision`. A snapshot is a cache: one that cannot be
    /// kept is logged, and loads replay a little more until the next.
    async fn keep_snapshot<T>(
        &self,
        stream: &str,
        revision: u64,
        state: &T,
        how: &Snapshotting<T>,
    ) {
        let data = match how.encode(state) {
            Ok(data) => data,
            Err(problem) => {
                tracing::warn!(stream, revision, %problem, "a state that does not encode is not snapshotted");
                return;
            }
        };
        let snapshot = NewSnapshot::new(stream, revision, how.schema_version, data);
        if let Err(error) = self.store.put_snapshot(snapshot).await {
            tracing::warn!(stream, revision, %error, "keeping a snapshot failed");
        }
    }

    /// Instance `id` of `D` as it was at `at`: time travel.
    pub async fn load_as_of<D: Decider>(
        &self,
        id: &str,
        at: At,
    ) -> Result<Loaded<D::State>, LoadError> {
        load_as_of::<D, S>(&self.store, &stream_id::<D>(id), at, &self.upcasters).await
    }

    /// Carries out `command` on instance `id` of `D`: loads it, decides, and appends the
    /// events only if no other event reached the stream since it was read (then keeps a
    /// snapshot of the new state when `D`'s policy says so). On a conflict it
    /// loads and decides again, up to the retry policy's attempts. A decision of no events
    /// writes nothing; a refusal is [`CommandError::Rejected`].
    ///
    /// An append that got no answer ([`Error::Unavailable`]) is sent again as it was: its
    /// event ids make the retry idempotent, so an append that did land is not doubled.
    pub async fn handle<D: Decider>(
        &self,
        id: &str,
        command: &D::Command,
        context: &Context,
    ) -> Result<Handled, CommandError<D::Error>> {
        let stream = stream_id::<D>(id);
        let mut attempt = 1;
        let mut fresh = false;
        loop {
            let kept = if fresh { None } else { self.kept::<D>(&stream) };
            let from_cache = kept.is_some();
            let loaded = match kept {
                Some(kept) => kept,
                None => self.load_stream::<D>(&stream).await?,
            };
            let events = D::decide(&loaded.state, command);
            // A kept state may be stale. An append checks that for the events it carries;
            // a refusal or a decision of nothing appends nothing, so it is made again on
            // the stream as it is.
            if from_cache && events.as_ref().map_or(true, Vec::is_empty) {
                fresh = true;
                continue;
            }
            let events = match events {
                Ok(events) => events,
                Err(refused) => {
                    self.keep::<D>(&stream, loaded.state, loaded.revision);
                    return Err(CommandError::Rejected(refused));
                }
            };
            if events.is_empty() {
                self.keep::<D>(&stream, loaded.state, loaded.revision);
                return Ok(Handled {
                    stream_id: stream,
                    revision: loaded.revision,
                    position: None,
                    written: 0,
                    attempts: attempt,
                });
            }
            let expected = loaded
                .revision
                .map_or(ExpectedRevision::NoStream, ExpectedRevision::Exact);
            let written = events.len();
            let request =
                AppendRequest::stream(stream.as_str(), expected, to_new(&events, context)?);
            match self.append(request, &mut attempt).await {
                Ok(r) => {
                    let how = D::snapshots()
                        .filter(|how| how.due_after_command(loaded.revision, r.revision()));
                    if how.is_some() || self.cache.is_some() {
                        let state = events.iter().fold(loaded.state, D::evolve);
                        if let Some(how) = how {
                            self.keep_snapshot(&stream, r.revision(), &state, &how)
                                .await;
                        }
                        self.keep::<D>(&stream, state, Some(r.revision()));
                    }
                    return Ok(Handled {
                        stream_id: stream,
                        revision: Some(r.revision()),
                        position: Some(r.last_position),
                        written,
                        attempts: attempt,
                    });
                }
                Err(e @ Error::WrongExpectedRevision { .. }) => {
                    self.lost_race(&mut attempt, e).await?;
                }
                Err(e) => return Err(CommandError::Store(e)),
            }
        }
    }

    /// Carries out `command` under the rule `D`, whose boundary is a query: reads the events
    /// the query selects (the read says the log's head it was served at), folds them,
    /// decides, and appends the events (belonging to no stream) on the condition that
    /// nothing matching the query came after that head. On a conflict it reads and decides again, up to the retry policy's
    /// attempts. The result's `stream_id` is empty and its `revision` `None`.
    pub async fn decide<D: Decision>(
        &self,
        command: &D::Command,
        context: &Context,
    ) -> Result<Handled, CommandError<D::Error>> {
        let query = D::query(command);
        let mut attempt = 1;
        loop {
            // One read gives the state and the head it was served at: the condition guards
            // everything after that head.
            let mut events = self
                .store
                .read(ReadRequest::query(query.clone()))
                .await
                .map_err(CommandError::Store)?;
            let head = events.head();
            let mut state = D::State::default();
            while let Some(e) = next_item(&mut events).await {
                let e = e.map_err(CommandError::Store)?;
                decode_each::<D::Event>(&e, &self.upcasters, |event| {
                    state = D::evolve(std::mem::take(&mut state), &event);
                })?;
            }
            let events = D::decide(&state, command).map_err(CommandError::Rejected)?;
            if events.is_empty() {
                return Ok(Handled {
                    stream_id: NO_STREAM.to_string(),
                    revision: None,
                    position: None,
                    written: 0,
                    attempts: attempt,
                });
            }
            let written = events.len();
            let request = AppendRequest::no_stream(to_new(&events, context)?)
                .with_condition(query.clone(), head);
            match self.append(request, &mut attempt).await {
                Ok(r) => {
                    return Ok(Handled {
                        stream_id: NO_STREAM.to_string(),
                        revision: None,
                        position: Some(r.last_position),
                        written,
                        attempts: attempt,
                    })
                }
                Err(e @ Error::ConditionFailed { .. }) => {
                    self.lost_race(&mut attempt, e).await?;
                }
                Err(e) => return Err(CommandError::Store(e)),
            }
        }
    }

    /// After a conflict (`lost`): gives up when no attempt is left, else waits before the
    /// next.
    async fn lost_race<E>(&self, attempt: &mut u32, lost: Error) -> Result<(), CommandError<E>> {
        if *attempt >= self.retry.attempts {
            return Err(CommandError::Contended {
                attempts: *attempt,
                last: lost,
            });
        }
        *attempt += 1;
        tracing::debug!(attempt, %lost, "lost a race; deciding again");
        tokio::time::sleep(self.retry.pause(*attempt)).await;
        Ok(())
    }

    /// Appends, sending the same request again while the store does not answer and attempts
    /// remain.
    async fn append(
        &self,
        request: AppendRequest,
        attempt: &mut u32,
    ) -> annal_core::Result<annal_core::AppendResult> {
        loop {
            match self.store.append(request.clone()).await {
                Err(Error::Unavailable(why)) if *attempt < self.retry.attempts => {
                    *attempt += 1;
                    tracing::debug!(%why, attempt, "no answer to an append; sending it again");
                    tokio::time::sleep(self.retry.pause(*attempt)).await;
                }
                other => return other,
            }
        }
    }
}

/// The events of a decision, ready to append in `context`.
pub fn to_new<E: crate::Event>(
    events: &[E],
    context: &Context,
) -> Result<Vec<NewEvent>, crate::CodecError> {
    let metadata = context.metadata();
    events
        .iter()
        .map(|e| {
            let encoded = encode(e)?;
            let mut new = NewEvent::new(encoded.event_type, encoded.data)
                .with_schema_version(encoded.schema_version)
                .with_metadata(metadata.clone());
            new.tags = encoded.tags.into_iter().map(Into::into).collect();
            Ok(new)
        })
        .collect()
}
