//! Hydration: an aggregate's state rebuilt by folding its stream's events, now or as of a
//! point in its past, with older event versions upcast on the way. An aggregate that keeps
//! snapshots starts from the latest usable one and folds only the events after it.

use annal_core::{
    next_item, AsOf, EventStore, ReadRequest, RecordedEvent, Timestamp, SNAPSHOTS_PER_STREAM,
};

use crate::{decode, CodecError, Decider, Event, LoadError, Upcasters};

/// An aggregate's state as of a point of its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded<S> {
    pub state: S,
    /// The revision of the last event the state folds in; `None` when there was none.
    pub revision: Option<u64>,
    /// The log position of the last event replayed; `None` when none was (the state came
    /// whole from a snapshot, or the stream has no event).
    pub position: Option<u64>,
    /// How many stored events were replayed.
    pub replayed: u64,
    /// The revision of the snapshot the load started from, if it started from one.
    pub snapshot: Option<u64>,
}

impl<S: Default> Loaded<S> {
    fn empty() -> Self {
        Loaded {
            state: S::default(),
            revision: None,
            position: None,
            replayed: 0,
            snapshot: None,
        }
    }

    /// The first revision still to replay.
    fn next_revision(&self) -> u64 {
        self.revision.map_or(0, |r| r + 1)
    }
}

/// A point in an aggregate's past, for time travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// After the stream's event of this revision.
    Revision(u64),
    /// After the last of its events at or before this log position.
    Position(u64),
    /// After the last of its events recorded at or before this instant.
    Time(Timestamp),
}

/// Loads instance `stream_id` of `D`: from its latest usable snapshot, if `D` keeps
/// snapshots, and the events after it.
///
/// A policy takes no snapshot of a stream shorter than its threshold (`every` events, or
/// one more than `after_replaying`), so a load first reads that many events: a stream that
/// ends there is loaded without asking for a snapshot, which costs short streams nothing.
pub async fn load<D: Decider, S: EventStore>(
    store: &S,
    stream_id: &str,
    upcasters: &Upcasters,
) -> Result<Loaded<D::State>, LoadError> {
    let start = match D::snapshots().and_then(|how| how.threshold()) {
        Some(threshold) => {
            let read = ReadRequest::stream(stream_id).limit(threshold);
            let head = fold::<D, S>(store, read, upcasters, Loaded::empty()).await?;
            if head.replayed < threshold {
                return Ok(head);
            }
            let start = start::<D, S>(store, stream_id, None).await;
            // A snapshot within what was read already is no shorter way.
            if start.revision > head.revision {
                start
            } else {
                head
            }
        }
        None => start::<D, S>(store, stream_id, None).await,
    };
    let read = ReadRequest::stream(stream_id).from(start.next_revision());
    fold::<D, S>(store, read, upcasters, start).await
}

/// Loads instance `stream_id` of `D` as it was at `at`, from the latest usable snapshot at or
/// before that point, if `D` keeps snapshots.
pub async fn load_as_of<D: Decider, S: EventStore>(
    store: &S,
    stream_id: &str,
    at: At,
    upcasters: &Upcasters,
) -> Result<Loaded<D::State>, LoadError> {
    let as_of = match at {
        At::Revision(_) => None,
        At::Position(p) => Some(AsOf::Position(p)),
        At::Time(t) => Some(AsOf::Time(t)),
    };
    // The revision the point falls on, to find a snapshot at or before it; without
    // snapshots the read's bound alone is enough.
    let last = match (at, as_of) {
        (At::Revision(r), _) => Some(r),
        (_, Some(as_of)) if D::snapshots().is_some() => {
            let mut last = store
                .read(
                    ReadRequest::stream(stream_id)
                        .backward()
                        .limit(1)
                        .as_of(as_of),
                )
                .await?;
            match next_item(&mut last).await {
                Some(e) => Some(e?.revision),
                None => return Ok(Loaded::empty()),
            }
        }
        _ => None,
    };
    let start = match last {
        Some(r) => start::<D, S>(store, stream_id, Some(r)).await,
        None => Loaded::empty(),
    };
    let mut read = ReadRequest::stream(stream_id).from(start.next_revision());
    if let At::Revision(r) = at {
        // The events from the start's next revision through `r`.
        match r.checked_sub(start.next_revision()) {
            None => return Ok(start),
            Some(n) => read = read.limit(n.saturating_add(1)),
        }
    }
    if let Some(as_of) = as_of {
        read = read.as_of(as_of);
    }
    fold::<D, S>(store, read, upcasters, start).await
}

/// Where a load of `D` starts: its latest snapshot at or before `at_or_before` that is of
/// the schema version `D` encodes and decodes, or nothing. A snapshot of another version is
/// passed over, one that does not decode is passed over with a warning, and a store that
/// cannot answer is warned about: a load never fails for a snapshot.
async fn start<D: Decider, S: EventStore>(
    store: &S,
    stream_id: &str,
    mut at_or_before: Option<u64>,
) -> Loaded<D::State> {
    let Some(snapshots) = D::snapshots() else {
        return Loaded::empty();
    };
    for _ in 0..SNAPSHOTS_PER_STREAM {
        let snapshot = match store.get_snapshot(stream_id, at_or_before).await {
            Ok(Some(s)) => s,
            Ok(None) => break,
            Err(error) => {
                tracing::warn!(stream_id, %error, "no snapshot to be had; replaying the stream");
                break;
            }
        };
        if snapshot.schema_version != snapshots.schema_version {
            tracing::debug!(
                stream_id,
                revision = snapshot.revision,
                version = snapshot.schema_version,
                wanted = snapshots.schema_version,
                "passing over a snapshot of another schema version"
            );
        } else {
            match snapshots.decode(&snapshot.data) {
                Ok(state) => {
                    return Loaded {
                        state,
                        revision: Some(snapshot.revision),
                        position: None,
                        replayed: 0,
                        snapshot: Some(snapshot.revision),
                    }
                }
                Err(problem) => tracing::warn!(
                    stream_id,
                    revision = snapshot.revision,
                    %problem,
                    "passing over a snapshot that does not decode"
                ),
            }
        }
        match snapshot.revision.checked_sub(1) {
            Some(before) => at_or_before = Some(before),
            None => break,
        }
    }
    Loaded::empty()
}

async fn fold<D: Decider, S: EventStore>(
    store: &S,
    read: ReadRequest,
    upcasters: &Upcasters,
    mut loaded: Loaded<D::State>,
) -> Result<Loaded<D::State>, LoadError> {
    let mut events = store.read(read).await?;
    while let Some(e) = next_item(&mut events).await {
        let e = e?;
        decode_each::<D::Event>(&e, upcasters, |event| {
            loaded.state = D::evolve(std::mem::take(&mut loaded.state), &event);
        })?;
        loaded.revision = Some(e.revision);
        loaded.position = Some(e.position);
        loaded.replayed += 1;
    }
    Ok(loaded)
}

/// Decodes a stored event into the events it is now (one, unless an upcaster split it).
pub fn decode_recorded<E: Event>(
    e: &RecordedEvent,
    upcasters: &Upcasters,
) -> Result<Vec<E>, CodecError> {
    let mut out = Vec::with_capacity(1);
    decode_each(e, upcasters, |event| out.push(event))?;
    Ok(out)
}

/// Gives `f` the events a stored event is now. One that needs no upcasting is read straight
/// from its bytes; one that does goes through JSON values.
pub fn decode_each<E: Event>(
    e: &RecordedEvent,
    upcasters: &Upcasters,
    mut f: impl FnMut(E),
) -> Result<(), CodecError> {
    let at = |c: CodecError| c.at(&e.stream_id, e.revision, e.position);
    if !upcasters.applies(&e.event_type, e.schema_version) {
        check_version::<E>(&e.event_type, e.schema_version).map_err(at)?;
        f(decode(&e.event_type, &e.data).map_err(at)?);
        return Ok(());
    }
    let data: serde_json::Value = serde_json::from_slice(&e.data)
        .map_err(|x| at(CodecError::new(&e.event_type, x.to_string())))?;
    for u in upcasters
        .upcast(&e.event_type, e.schema_version, data)
        .map_err(at)?
    {
        check_version::<E>(&u.event_type, u.schema_version).map_err(at)?;
        let value =
            serde_json::Value::Object([(u.event_type.clone(), u.data)].into_iter().collect());
        f(E::deserialize(value).map_err(|x| at(CodecError::new(&u.event_type, x.to_string())))?);
    }
    Ok(())
}

fn check_version<E: Event>(event_type: &str, version: u32) -> Result<(), CodecError> {
    let wanted = E::schema_version(event_type);
    if version == wanted {
        return Ok(());
    }
    Err(CodecError::new(
        event_type,
        format!(
            "stored at schema version {version}, but this code reads version {wanted} and \
             no upcaster takes version {version}"
        ),
    ))
}
