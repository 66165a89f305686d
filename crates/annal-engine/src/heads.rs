//! Stream heads: what the store keeps in memory for every stream (and category). Memory
//! grows with the number of streams, never with the number of events.

use std::collections::BTreeMap;

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

/// Every stream's head and every category's counts.
#[derive(Debug, Default, Clone)]
pub struct Heads {
    pub streams: BTreeMap<String, Head>,
    pub categories: BTreeMap<String, CategoryCount>,
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
        let cat = self
            .categories
            .entry(category_of(stream).to_string())
            .or_default();
        cat.events += count;
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

    /// Rebuilds the category counts from the streams.
    pub fn rebuild_categories(&mut self) {
        self.categories.clear();
        for (id, h) in &self.streams {
            let c = self
                .categories
                .entry(category_of(id).to_string())
                .or_default();
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
