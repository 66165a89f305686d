//! Histories for people: an aggregate's events, or any read's, one line each, with when,
//! who, what (the event's own sentence) and the business transaction it belongs to.

use annal_core::{next_item, EventStore, ReadRequest, RecordedEvent};

use crate::{decode_each, Event, LoadError, Upcasters};

/// One line for a stored event: `2026-12-06 10:00:03 user-7 deposited 200 [account-1@1]
/// (correlation 1b4e28ba)`. The sentence is [`Event::describe`] of what the event decodes
/// to as `E` (after upcasting); an event that is not an `E` shows its type and data.
pub fn render_line<E: Event>(e: &RecordedEvent, upcasters: &Upcasters) -> String {
    let mut sentences = Vec::new();
    let described = decode_each::<E>(e, upcasters, |event| sentences.push(event.describe()));
    if described.is_err() {
        sentences = vec![format!(
            "{} {}",
            e.event_type,
            String::from_utf8_lossy(&e.data)
        )];
    }
    let when = e.recorded_at.to_string();
    // `2026-12-06T10:00:03.123456Z`: the date and the second.
    let when = when.get(..19).unwrap_or(&when).replacen('T', " ", 1);
    let who = e.metadata.actor.as_deref().unwrap_or("(no actor)");
    let mut line = format!(
        "{when} {who} {} [{}@{}]",
        sentences.join("; "),
        e.stream_id,
        e.revision
    );
    if let Some(c) = e.metadata.correlation_id {
        let c = c.simple().to_string();
        line.push_str(&format!(" (correlation {})", &c[..8]));
    }
    line
}

/// The lines of every event `read` selects, in its order.
pub async fn render_history<E: Event, S: EventStore>(
    store: &S,
    read: ReadRequest,
    upcasters: &Upcasters,
) -> Result<Vec<String>, LoadError> {
    let mut events = store.read(read).await?;
    let mut lines = Vec::new();
    while let Some(e) = next_item(&mut events).await {
        lines.push(render_line::<E>(&e?, upcasters));
    }
    Ok(lines)
}
