//! Hydration: an aggregate's state rebuilt by folding its stream's events, now or as of a
//! point in its past, with older event versions upcast on the way.

use annal_core::{next_item, AsOf, EventStore, ReadRequest, RecordedEvent, Timestamp};

use crate::{decode, CodecError, Decider, Event, LoadError, Upcasters};

/// An aggregate's state as of a point of its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded<S> {
    pub state: S,
    /// The revision of the last event folded; `None` when there was none.
    pub revision: Option<u64>,
    /// The log position of the last event folded.
    pub position: Option<u64>,
    /// How many stored events were replayed.
    pub replayed: u64,
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

/// Loads instance `stream_id` of `D` by replaying its stream.
pub async fn load<D: Decider, S: EventStore>(
    store: &S,
    stream_id: &str,
    upcasters: &Upcasters,
) -> Result<Loaded<D::State>, LoadError> {
    fold::<D, S>(store, ReadRequest::stream(stream_id), upcasters).await
}

/// Loads instance `stream_id` of `D` as it was at `at`.
pub async fn load_as_of<D: Decider, S: EventStore>(
    store: &S,
    stream_id: &str,
    at: At,
    upcasters: &Upcasters,
) -> Result<Loaded<D::State>, LoadError> {
    let read = ReadRequest::stream(stream_id);
    let read = match at {
        At::Revision(r) => read.limit(r.saturating_add(1)),
        At::Position(p) => read.as_of(AsOf::Position(p)),
        At::Time(t) => read.as_of(AsOf::Time(t)),
    };
    fold::<D, S>(store, read, upcasters).await
}

async fn fold<D: Decider, S: EventStore>(
    store: &S,
    read: ReadRequest,
    upcasters: &Upcasters,
) -> Result<Loaded<D::State>, LoadError> {
    let mut events = store.read(read).await?;
    let mut loaded = Loaded {
        state: D::State::default(),
        revision: None,
        position: None,
        replayed: 0,
    };
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
