//! The read path: fetching events by position (here), read cursors over every kind of
//! source (`cursor.rs`), reads as streams (`stream.rs`) and subscriptions, cursors that
//! wait for the log to grow (`subscription.rs`).

use std::sync::Arc;

use annal_core::{Bytes, Direction, Error, RecordedEvent, Result};

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
    let (payload, _) = shared
        .log
        .read_record(log_offset, shared.synced_log_end())?;
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

/// How many bytes of data the events hold.
fn data_bytes<'a>(events: impl IntoIterator<Item = &'a RecordedEvent>) -> usize {
    events.into_iter().map(|e| e.data.len()).sum()
}

// Events decoded from a record share its memory: their data are slices of it, and of the
// read buffer it sits in. Events that leave a read without most of their record's data
// get their own copy of their data instead, so that an event kept alone never keeps a
// large record, or the buffer around it, alive.

/// An event taken alone out of a record whose events hold `record_bytes` of data.
fn detach_alone(mut e: RecordedEvent, record_bytes: usize) -> RecordedEvent {
    if 2 * e.data.len() < record_bytes {
        e.data = Bytes::copy_from_slice(&e.data);
    }
    e
}

/// Gives each event its own copy of its data.
fn detach<'a>(events: impl Iterator<Item = &'a mut RecordedEvent>) {
    for e in events {
        e.data = Bytes::copy_from_slice(&e.data);
    }
}

/// The event at `position`.
pub(crate) fn fetch_event(shared: &Shared, position: u64) -> Result<RecordedEvent> {
    let batch = fetch_batch(shared, position)?;
    let first = batch.first().map_or(0, |e| e.position);
    let all = data_bytes(&batch);
    batch
        .into_iter()
        .nth(position.saturating_sub(first) as usize)
        .filter(|e| e.position == position)
        .map(|e| detach_alone(e, all))
        .ok_or_else(|| {
            index_disagrees(
                shared,
                format!("the batch found for position {position} does not hold it"),
            )
        })
}

/// The position of the first event at or after `from`, up to `max`, that `query` matches.
/// Its time grows with the events that share a key with the query's items (a tag, a type)
/// in that range, which a client chooses: the store runs it on the caller's thread before
/// an append enters the writer, so that the writer only checks what came since.
pub(crate) fn first_match(
    shared: &Arc<Shared>,
    query: &annal_core::Query,
    from: u64,
    max: u64,
) -> Result<Option<u64>> {
    if from > max {
        return Ok(None);
    }
    let mut cursor = Cursor::new(
        Arc::clone(shared),
        &annal_core::Source::Query(query.clone()),
        Some(from),
        Direction::Forward,
        Some(1),
        Some(max),
    );
    Ok(cursor.next_event()?.map(|e| e.position))
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
