//! Index keys and entries: what every part of the index stores, and how the entries of an
//! event or a batch record are made.
//!
//! A key is a kind in the top byte and a 56-bit xxh3 hash of a name below it (the batch and
//! time kinds have no name). Hashes can collide, so every reader checks the event it loads
//! against what it asked for.

use annal_core::{Metadata, NewEvent, RecordedEvent, Text, Uuid};

pub const KIND_STREAM: u8 = 1;
pub const KIND_CATEGORY: u8 = 2;
pub const KIND_TYPE: u8 = 3;
pub const KIND_TAG: u8 = 4;
pub const KIND_ID: u8 = 5;
pub const KIND_BATCH: u8 = 6;
pub const KIND_TIME: u8 = 7;
pub const KIND_CORRELATION: u8 = 8;
pub const KIND_ACTOR: u8 = 9;

/// One index entry. Entries sort by key, then seq, then value, the order of every run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Entry {
    pub key: u64,
    pub seq: u64,
    pub value: u64,
}

impl Entry {
    pub const fn new(key: u64, seq: u64, value: u64) -> Entry {
        Entry { key, seq, value }
    }

    /// The kind in the key's top byte.
    pub fn kind(&self) -> u8 {
        (self.key >> 56) as u8
    }
}

/// The key of a name of a kind.
pub fn key(kind: u8, name: &[u8]) -> u64 {
    (u64::from(kind) << 56) | (xxhash_rust::xxh3::xxh3_64(name) & ((1 << 56) - 1))
}

/// The key of a kind that has no name (batch, time).
pub fn fixed_key(kind: u8) -> u64 {
    u64::from(kind) << 56
}

/// True when the key is an event id key.
pub fn is_id_key(key: u64) -> bool {
    key >> 56 == u64::from(KIND_ID)
}

/// The keys of a stream and of its category; `None` for events of no stream (an empty
/// stream id), which are indexed by type, tag and id only.
pub fn stream_keys(stream: &str) -> Option<(u64, u64)> {
    if stream.is_empty() {
        return None;
    }
    let category = annal_core::category_of(stream);
    Some((
        key(KIND_STREAM, stream.as_bytes()),
        key(KIND_CATEGORY, category.as_bytes()),
    ))
}

/// Adds the entries of one event at `(revision, position)`, given the keys of its stream
/// and category ([`stream_keys`]).
pub fn keyed_event_entries(
    out: &mut Vec<Entry>,
    stream_keys: Option<(u64, u64)>,
    (revision, position): (u64, u64),
    event_type: &str,
    tags: &[Text],
    metadata: &Metadata,
    id: &Uuid,
) {
    let type_key = key(KIND_TYPE, event_type.as_bytes());
    if let Some((stream_key, category_key)) = stream_keys {
        out.push(Entry::new(stream_key, revision, position));
        out.push(Entry::new(category_key, position, position));
    }
    audit_entries(out, metadata, position);
    out.push(Entry::new(type_key, position, position));
    for (i, t) in tags.iter().enumerate() {
        // A tag named twice on one event is indexed once.
        if !tags[..i].contains(t) {
            out.push(Entry::new(key(KIND_TAG, t.as_bytes()), position, position));
        }
    }
    out.push(Entry::new(key(KIND_ID, id.as_bytes()), 0, position));
}

/// The entries that find an event by its correlation id and its actor, when it has them.
fn audit_entries(out: &mut Vec<Entry>, metadata: &Metadata, position: u64) {
    if let Some(c) = metadata.correlation_id {
        out.push(Entry::new(
            key(KIND_CORRELATION, c.as_bytes()),
            position,
            position,
        ));
    }
    if let Some(a) = &metadata.actor {
        out.push(Entry::new(
            key(KIND_ACTOR, a.as_bytes()),
            position,
            position,
        ));
    }
}

/// The key of `name` of `kind`, hashed only when `name` differs from the one before it.
fn cached_key<'a>(last: &mut Option<(&'a str, u64)>, kind: u8, name: &'a str) -> u64 {
    match *last {
        Some((n, k)) if n == name => k,
        _ => {
            let k = key(kind, name.as_bytes());
            *last = Some((name, k));
            k
        }
    }
}

/// Adds the entries of consecutive events of one stream, given the keys of the stream and
/// its category ([`stream_keys`]) and of each event's id (`id_keys`, in event order).
///
/// The same entries as [`keyed_event_entries`] for each event, in another order: grouped by
/// key (every stream entry, then every category entry, then type, correlation, actor, tag
/// and id entries), so
/// that the memtable looks a key up once per run of it instead of once per entry. Each
/// key's entries come in order of position, except a tag that events name at different
/// places in their lists (the memtable puts those in place).
pub fn stream_entries(
    out: &mut Vec<Entry>,
    stream_keys: Option<(u64, u64)>,
    first_revision: u64,
    first_position: u64,
    events: &[NewEvent],
    id_keys: &[u64],
) {
    let n = events.len() as u64;
    let positions = first_position..first_position + n;
    out.reserve(events.len() * 5);
    if let Some((stream_key, category_key)) = stream_keys {
        out.extend((0..n).map(|i| Entry::new(stream_key, first_revision + i, first_position + i)));
        out.extend(positions.clone().map(|p| Entry::new(category_key, p, p)));
    }
    let mut last = None;
    for (e, p) in events.iter().zip(positions.clone()) {
        out.push(Entry::new(
            cached_key(&mut last, KIND_TYPE, &e.event_type),
            p,
            p,
        ));
    }
    // A command's events share their correlation id and actor: one run of each.
    for (e, p) in events.iter().zip(positions.clone()) {
        if let Some(c) = e.metadata.correlation_id {
            out.push(Entry::new(key(KIND_CORRELATION, c.as_bytes()), p, p));
        }
    }
    let mut last = None;
    for (e, p) in events.iter().zip(positions.clone()) {
        if let Some(a) = &e.metadata.actor {
            out.push(Entry::new(cached_key(&mut last, KIND_ACTOR, a), p, p));
        }
    }
    // The first tag of every event, then the second, ...: events mostly carry the same tags
    // in the same order, so each pass is a run of one key.
    let slots = events.iter().map(|e| e.tags.len()).max().unwrap_or(0);
    for j in 0..slots {
        let mut last = None;
        for (e, p) in events.iter().zip(positions.clone()) {
            let Some(t) = e.tags.get(j) else { continue };
            // A tag named twice on one event is indexed once.
            if !e.tags[..j].contains(t) {
                out.push(Entry::new(cached_key(&mut last, KIND_TAG, t), p, p));
            }
        }
    }
    out.extend(
        id_keys
            .iter()
            .zip(positions)
            .map(|(&k, p)| Entry::new(k, 0, p)),
    );
}

/// Adds every entry of one decoded batch record (its batch and time entries, and each
/// event's).
pub fn decoded_batch_entries(out: &mut Vec<Entry>, events: &[RecordedEvent], log_offset: u64) {
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        return;
    };
    batch_entries(
        out,
        first.position,
        last.position,
        first.recorded_at.0,
        log_offset,
    );
    for e in events {
        keyed_event_entries(
            out,
            stream_keys(&e.stream_id),
            (e.revision, e.position),
            &e.event_type,
            &e.tags,
            &e.metadata,
            &e.id,
        );
    }
}

/// Adds the entries of one batch record: where it starts in the log, and when it was
/// recorded.
pub fn batch_entries(
    out: &mut Vec<Entry>,
    first_position: u64,
    last_position: u64,
    recorded_at: i64,
    log_offset: u64,
) {
    out.push(Entry::new(
        fixed_key(KIND_BATCH),
        first_position,
        log_offset,
    ));
    out.push(Entry::new(
        fixed_key(KIND_TIME),
        recorded_at.max(0) as u64,
        last_position,
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The entries of a stream's events grouped by key are those of each event alone.
        #[test]
        fn stream_entries_are_each_events_entries_grouped_by_key(
            events in proptest::collection::vec(
                (0u8..3, proptest::collection::vec(0u8..4, 0..4)),
                1..30,
            ),
            first_revision in 0u64..1000,
            first_position in 0u64..1000,
            no_stream in proptest::bool::weighted(0.2),
        ) {
            let events: Vec<NewEvent> = events
                .into_iter()
                .map(|(t, tags)| {
                    let mut e = NewEvent::new(format!("T{t}"), b"{}".to_vec());
                    e.tags = tags.iter().map(|t| format!("tag:{t}").into()).collect();
                    if t == 1 {
                        e.metadata.actor = Some("user-1".into());
                    }
                    if tags.len() > 1 {
                        e.metadata.correlation_id = Some(Uuid::from_u128(tags.len() as u128));
                    }
                    e
                })
                .collect();
            let keys = stream_keys(if no_stream { "" } else { "account-7" });
            let id_keys: Vec<u64> = events.iter().map(|e| key(KIND_ID, e.id.as_bytes())).collect();
            let mut grouped = Vec::new();
            stream_entries(&mut grouped, keys, first_revision, first_position, &events, &id_keys);
            let mut each = Vec::new();
            for (i, e) in events.iter().enumerate() {
                let i = i as u64;
                keyed_event_entries(
                    &mut each, keys, (first_revision + i, first_position + i), &e.event_type,
                    &e.tags, &e.metadata, &e.id,
                );
            }
            let mut sorted = grouped.clone();
            sorted.sort_unstable();
            each.sort_unstable();
            proptest::prop_assert_eq!(&sorted, &each);
            // The stream's and the category's entries are one run each, in order; events of
            // no stream have neither.
            let n = events.len();
            let Some(keys) = keys else {
                let kinds = [KIND_STREAM, KIND_CATEGORY];
                proptest::prop_assert!(grouped.iter().all(|e| !kinds.contains(&((e.key >> 56) as u8))));
                return Ok(());
            };
            proptest::prop_assert!(grouped[..n].iter().all(|e| e.key == keys.0));
            proptest::prop_assert!(grouped[n..2 * n].iter().all(|e| e.key == keys.1));
            proptest::prop_assert!(grouped[..2 * n].windows(2).all(|w| w[0] < w[1] || w[0].key != w[1].key));
        }
    }
}
