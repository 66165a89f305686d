//! The read path: fetching events by position (here), read cursors over every kind of
//! source (`cursor.rs`), reads as streams (`stream.rs`) and subscriptions, cursors that
//! wait for the log to grow (`subscription.rs`).

use annal_core::{Direction, Error, RecordedEvent, Result};

use crate::index::{fixed_key, key, KIND_BATCH, KIND_ID};
use crate::layout::index_dir;
use crate::log::format::decode_batch;
use crate::shared::Shared;

mod cursor;
mod stream;
mod subscription;

pub(crate) use cursor::Cursor;
pub(crate) use stream::ReadStream;
pub(crate) use subscription::Subscription;

/// An inconsistency between the index and the log, which lies in no one place of a file.
fn index_disagrees(shared: &Shared, problem: String) -> Error {
    Error::Corruption {
        file: index_dir(&shared.dir).display().to_string(),
        offset: 0,
        problem: format!("{problem}: the index disagrees with the log (reopening the store after removing its manifest rebuilds the index)"),
    }
}

fn decode_at(shared: &Shared, log_offset: u64) -> Result<Vec<RecordedEvent>> {
    let (payload, _) = shared.log.read_record(log_offset)?;
    decode_batch(&payload).map_err(|e| shared.log.corruption_at(log_offset, e.0))
}

/// The whole batch holding `position`.
pub(crate) fn fetch_batch(shared: &Shared, position: u64) -> Result<Vec<RecordedEvent>> {
    let (_, offset) = shared
        .index
        .floor(fixed_key(KIND_BATCH), position)?
        .ok_or_else(|| index_disagrees(shared, format!("no batch holds position {position}")))?;
    decode_at(shared, offset)
}

/// The event at `position`.
pub(crate) fn fetch_event(shared: &Shared, position: u64) -> Result<RecordedEvent> {
    let batch = fetch_batch(shared, position)?;
    let first = batch.first().map_or(0, |e| e.position);
    batch
        .into_iter()
        .nth(position.saturating_sub(first) as usize)
        .filter(|e| e.position == position)
        .ok_or_else(|| {
            index_disagrees(
                shared,
                format!("the batch found for position {position} does not hold it"),
            )
        })
}

/// The stored event with this id, if any.
pub(crate) fn find_by_id(shared: &Shared, id: &annal_core::Uuid) -> Result<Option<RecordedEvent>> {
    let hits = shared
        .index
        .scan(key(KIND_ID, id.as_bytes()), 0, 0, Direction::Forward, 64)?;
    for (_, position) in hits {
        let e = fetch_event(shared, position)?;
        if e.id == *id {
            return Ok(Some(e));
        }
    }
    Ok(None)
}
