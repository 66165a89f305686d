//! Stream heads: what the store keeps in memory for every stream (and category). Memory
//! grows with the number of streams, never with the number of events.

use std::collections::{BTreeMap, HashSet};

use annal_core::{category_of, CategoryInfo, StreamInfo, Timestamp};

/// The state of one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub revision: u64,
    pub first_position: u64,
    pub last_position: u64,
    pub created_at: i64,
    pub last_written_at: i64,
}

/// Counts of one category.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CategoryCount {
    pub streams: u64,
    pub events: u64,
}

/// Every stream's head and every category's counts, and what the checkpoint files of the
/// heads hold (see [`Heads::take_checkpoint`]).
#[derive(Debug, Default, Clone)]
pub struct Heads {
    pub streams: BTreeMap<String, Head>,
    pub categories: BTreeMap<String, CategoryCount>,
    /// Streams changed since the last checkpoint (hashed: marking one is on the commit
    /// path; the checkpoint thread sorts them).
    pub dirty: HashSet<String, foldhash::fast::RandomState>,
    /// The checkpoint's heads files: whether a base (every stream) exists, and how many
    /// streams each delta file after it holds at most, oldest first.
    pub based: bool,
    pub deltas: Vec<u64>,
}

/// The counts of a category, made on first use: its name is copied only then, not on
/// every append to it.
fn category<'a>(
    categories: &'a mut BTreeMap<String, CategoryCount>,
    name: &str,
) -> &'a mut CategoryCount {
    if !categories.contains_key(name) {
        categories.insert(name.to_string(), CategoryCount::default());
    }
    categories.get_mut(name).expect("inserted above")
}

/// Heads files (each in id order, oldest first) and the heads changed after them (in any
/// order) merged into one list in id order, the newest head of each stream winning.
pub fn merge_heads(
    files: impl IntoIterator<Item = Vec<(String, Head)>>,
    mut changed: Vec<(String, Head)>,
) -> Vec<(String, Head)> {
    changed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    files
        .into_iter()
        .chain([changed])
        .reduce(merge_sorted)
        .unwrap_or_default()
}

/// Merges two lists of heads in id order into one; where both hold a stream, `newer`'s
/// head wins.
fn merge_sorted(older: Vec<(String, Head)>, newer: Vec<(String, Head)>) -> Vec<(String, Head)> {
    let mut out = Vec::with_capacity(older.len() + newer.len());
    let mut a = older.into_iter().peekable();
    let mut b = newer.into_iter().peekable();
    loop {
        let order = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => x.0.cmp(&y.0),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => return out,
        };
        match order {
            std::cmp::Ordering::Less => out.extend(a.next()),
            std::cmp::Ordering::Greater => out.extend(b.next()),
            std::cmp::Ordering::Equal => {
                a.next();
                out.extend(b.next());
            }
        }
    }
}

/// At most this many delta files follow a base.
pub const MAX_DELTAS: usize = 16;

/// What a checkpoint writes of the heads: the heads changed since the last checkpoint (in
/// no order: the checkpoint thread sorts them), and which heads files it merges them with.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadsWrite {
    /// Nothing changed: the files in force stay.
    Unchanged,
    /// Merged with every heads file into a new base that replaces them all.
    Base(Vec<(String, Head)>),
    /// Merged with the newest `replaces` deltas into one delta that replaces them.
    Delta {
        replaces: usize,
        changed: Vec<(String, Head)>,
    },
}

impl Heads {
    /// Records `count` events appended to a stream at `first_revision..`, positions
    /// `first_position..=last_position` (the stream's events of one batch).
    pub fn apply(
        &mut self,
        stream: &str,
        first_revision: u64,
        count: u64,
        first_position: u64,
        last_position: u64,
        at: Timestamp,
    ) {
        let revision = first_revision + count - 1;
        let cat = category(&mut self.categories, category_of(stream));
        cat.events += count;
        if !self.dirty.contains(stream) {
            self.dirty.insert(stream.to_string());
        }
        match self.streams.get_mut(stream) {
            Some(h) => {
                h.revision = revision;
                h.last_position = last_position;
                h.last_written_at = at.0;
            }
            None => {
                cat.streams += 1;
                self.streams.insert(
                    stream.to_string(),
                    Head {
                        revision,
                        first_position,
                        last_position,
                        created_at: at.0,
                        last_written_at: at.0,
                    },
                );
            }
        }
    }

    /// Records one stored event (an event of no stream changes nothing).
    pub fn apply_event(&mut self, e: &annal_core::RecordedEvent) {
        if e.stream_id.is_empty() {
            return;
        }
        self.apply(
            &e.stream_id,
            e.revision,
            1,
            e.position,
            e.position,
            e.recorded_at,
        );
    }

    /// What the next checkpoint writes of the heads, taken where it freezes the memtable so
    /// that the two agree: only the heads changed since the checkpoint before. The
    /// checkpoint thread writes them as a delta after the base, merged (from the files) with
    /// the newest deltas while the newest is at most twice its size or while there are
    /// [`MAX_DELTAS`], so each head is rewritten a logarithmic number of times. Once the
    /// deltas would name more than half as many streams as there are (or there is no base
    /// yet), it merges them all with the base into a new base.
    pub fn take_checkpoint(&mut self) -> HeadsWrite {
        let dirty = std::mem::take(&mut self.dirty);
        if dirty.is_empty() && self.based {
            return HeadsWrite::Unchanged;
        }
        let changed: Vec<(String, Head)> = dirty
            .into_iter()
            .filter_map(|id| {
                let h = *self.streams.get(&id)?;
                Some((id, h))
            })
            .collect();
        let mut size = changed.len() as u64;
        let named = self.deltas.iter().sum::<u64>() + size;
        if !self.based || named > self.streams.len() as u64 / 2 {
            self.based = true;
            self.deltas.clear();
            return HeadsWrite::Base(changed);
        }
        let mut replaces = 0;
        while let Some(&newest) = self.deltas.last() {
            if newest > 2 * size && self.deltas.len() < MAX_DELTAS {
                break;
            }
            self.deltas.pop();
            size += newest;
            replaces += 1;
        }
        self.deltas.push(size);
        HeadsWrite::Delta { replaces, changed }
    }

    /// Rebuilds the category counts from the streams.
    pub fn rebuild_categories(&mut self) {
        self.categories.clear();
        for (id, h) in &self.streams {
            let c = category(&mut self.categories, category_of(id));
            c.streams += 1;
            c.events += h.revision + 1;
        }
    }

    pub fn info(&self, stream: &str) -> Option<StreamInfo> {
        self.streams.get(stream).map(|h| to_info(stream, h))
    }

    pub fn category_info(name: &str, c: &CategoryCount) -> CategoryInfo {
        CategoryInfo {
            category: name.to_string(),
            stream_count: c.streams,
            event_count: c.events,
        }
    }
}

pub fn to_info(stream: &str, h: &Head) -> StreamInfo {
    StreamInfo {
        stream_id: stream.to_string(),
        revision: h.revision,
        first_position: h.first_position,
        last_position: h.last_position,
        count: h.revision.saturating_add(1),
        created_at: Timestamp(h.created_at),
        last_written_at: Timestamp(h.last_written_at),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    /// The heads files a manifest would name after `write`, merged as the checkpoint
    /// thread merges them: the base first, then the deltas.
    fn written(files: &mut Vec<Vec<(String, Head)>>, write: HeadsWrite) {
        let (keep, changed) = match write {
            HeadsWrite::Unchanged => return,
            HeadsWrite::Base(changed) => (0, changed),
            HeadsWrite::Delta { replaces, changed } => {
                (files.len().saturating_sub(replaces).max(1), changed)
            }
        };
        let merged = merge_heads(files.drain(keep..).collect::<Vec<_>>(), changed);
        files.push(merged);
    }

    proptest! {
        /// Whatever the appends between checkpoints, the base and its deltas (the newest
        /// file that has a stream wins) are every stream's head at the last checkpoint,
        /// deltas never pass their bound, and a checkpoint after appends to a few old
        /// streams of many writes only a delta.
        #[test]
        fn base_and_deltas_always_give_every_head(
            rounds in proptest::collection::vec(
                proptest::collection::vec((0u32..400, 1u64..4), 0..60),
                1..40,
            )
        ) {
            let mut heads = Heads::default();
            let mut files = Vec::new();
            let mut position = 0;
            for appends in rounds {
                for (stream, count) in appends {
                    let id = format!("s-{stream}");
                    let revision = heads.streams.get(&id).map_or(0, |h| h.revision + 1);
                    heads.apply(&id, revision, count, position, position + count - 1, Timestamp(1));
                    position += count;
                }
                written(&mut files, heads.take_checkpoint());
                let mut merged = BTreeMap::new();
                for f in &files {
                    merged.extend(f.iter().map(|(k, v)| (k.clone(), *v)));
                }
                prop_assert_eq!(&merged, &heads.streams);
                prop_assert!(files.len() <= 1 + MAX_DELTAS);
                prop_assert_eq!(files.len(), 1 + heads.deltas.len());
            }
            // A few appends to old streams of a store that has many.
            for s in 0..1000 {
                heads.apply(&format!("old-{s}"), 0, 1, position, position, Timestamp(2));
                position += 1;
            }
            written(&mut files, heads.take_checkpoint());
            for s in 0..10 {
                let id = format!("old-{s}");
                heads.apply(&id, 1, 1, position, position, Timestamp(3));
                position += 1;
            }
            match heads.take_checkpoint() {
                HeadsWrite::Delta { changed, .. } => prop_assert_eq!(changed.len(), 10),
                other => prop_assert!(false, "expected a delta, got {:?}", other),
            }
        }
    }
}
