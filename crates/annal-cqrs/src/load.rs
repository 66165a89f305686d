//! Hydration: an aggregate's state rebuilt by folding its stream's events.

use annal_core::{next_item, EventStore, ReadRequest, RecordedEvent};

use crate::{decode, Decider, Event, LoadError};

/// An aggregate's state as of its stream's last event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded<S> {
    pub state: S,
    /// The stream's last revision; `None` when it has no event.
    pub revision: Option<u64>,
    /// The log position of the stream's last event.
    pub position: Option<u64>,
    /// How many events were replayed.
    pub replayed: u64,
}

/// Loads instance `stream_id` of `D` by replaying its stream.
pub async fn load<D: Decider, S: EventStore>(
    store: &S,
    stream_id: &str,
) -> Result<Loaded<D::State>, LoadError> {
    let mut events = store.read(ReadRequest::stream(stream_id)).await?;
    let mut loaded = Loaded {
        state: D::State::default(),
        revision: None,
        position: None,
        replayed: 0,
    };
    while let Some(e) = next_item(&mut events).await {
        let e = e?;
        let event = decode_recorded::<D::Event>(&e)?;
        loaded.state = D::evolve(loaded.state, &event);
        loaded.revision = Some(e.revision);
        loaded.position = Some(e.position);
        loaded.replayed += 1;
    }
    Ok(loaded)
}

/// Decodes a stored event, refusing one of another schema version than this code writes.
pub fn decode_recorded<E: Event>(e: &RecordedEvent) -> Result<E, crate::CodecError> {
    let wanted = E::schema_version(&e.event_type);
    if e.schema_version != wanted {
        return Err(crate::CodecError::new(
            &e.event_type,
            format!(
                "stored with schema version {}, but this code reads version {wanted}",
                e.schema_version
            ),
        )
        .at(&e.stream_id, e.revision, e.position));
    }
    decode(&e.event_type, &e.data).map_err(|c| c.at(&e.stream_id, e.revision, e.position))
}
