//! How a store is opened: [`Config`], a typed builder with a default for every field. The
//! engine reads no environment variable or file.

use std::sync::Arc;

use annal_core::validate;

use crate::io::{Fs, StdFs};

/// The most bytes of events one request may carry: its record's length field is 32 bits.
const MAX_RECORD_BYTES: usize = 3 << 30;

/// How a store is opened. Every field has a default; the engine reads no environment or file.
#[derive(Clone)]
pub struct Config {
    /// A segment is closed and a new one started once it holds this many bytes.
    pub segment_size: u64,
    /// The largest event accepted, in bytes (data plus everything it carries).
    pub max_event_size: usize,
    /// The largest append request accepted, in bytes.
    pub max_append_size: usize,
    /// Index entries kept in memory before a checkpoint writes them out.
    pub checkpoint_entries: usize,
    /// Append requests waiting for the writer before senders wait.
    pub queue_depth: usize,
    /// Bytes of zeros kept written and synced beyond the end of the log in the active
    /// segment, so that a sync writes only the records (not the file's new length and
    /// blocks); 0 turns preallocation off.
    pub preallocate: u64,
    /// The snapshot file is rewritten with only the snapshots kept once the records of
    /// snapshots no longer kept (replaced, dropped or deleted) pass this many bytes and
    /// are at least the kept ones.
    pub snapshot_compact_after: u64,
    /// Bytes of stream heads blocks read from the heads files kept in memory. Heads changed
    /// since the last checkpoint are in memory besides, whatever this says.
    pub head_cache_bytes: usize,
    /// The most bytes the id filter (one Bloom filter over the event ids of many index runs,
    /// 10 bits an id) may take; 0 turns it off. When the ids of every run do not fit in two
    /// thirds of it, it holds the newest runs' and the others' own filters answer for
    /// theirs, read from disk when large: memory stays bounded, and a new id costs a read
    /// of the page cache per run left out.
    pub id_filter_bytes: u64,
    /// The file system (the real one unless a test supplies another).
    pub fs: Arc<dyn Fs>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            segment_size: 256 * 1024 * 1024,
            max_event_size: validate::DEFAULT_MAX_EVENT_SIZE,
            max_append_size: 64 * 1024 * 1024,
            checkpoint_entries: 1 << 20,
            queue_depth: 4096,
            preallocate: 8 << 20,
            snapshot_compact_after: 16 << 20,
            head_cache_bytes: 64 << 20,
            id_filter_bytes: 128 << 20,
            fs: Arc::new(StdFs),
        }
    }
}

impl Config {
    pub fn segment_size(mut self, bytes: u64) -> Self {
        self.segment_size = bytes;
        self
    }
    /// At most 3 GiB: a request is one record, whose length field is 32 bits.
    pub fn max_event_size(mut self, bytes: usize) -> Self {
        self.max_event_size = bytes.min(MAX_RECORD_BYTES);
        self
    }
    /// At most 3 GiB: a request is one record, whose length field is 32 bits.
    pub fn max_append_size(mut self, bytes: usize) -> Self {
        self.max_append_size = bytes.min(MAX_RECORD_BYTES);
        self
    }
    pub fn checkpoint_entries(mut self, entries: usize) -> Self {
        self.checkpoint_entries = entries.max(1);
        self
    }
    pub fn queue_depth(mut self, depth: usize) -> Self {
        self.queue_depth = depth.max(1);
        self
    }
    /// Bytes of zeros kept ahead of the log (0: off).
    pub fn preallocate(mut self, bytes: u64) -> Self {
        self.preallocate = bytes;
        self
    }
    /// Dead snapshot bytes that make the snapshot file due for compaction.
    pub fn snapshot_compact_after(mut self, bytes: u64) -> Self {
        self.snapshot_compact_after = bytes;
        self
    }
    /// Bytes of heads blocks cached (see [`Config::head_cache_bytes`]).
    pub fn head_cache_bytes(mut self, bytes: usize) -> Self {
        self.head_cache_bytes = bytes;
        self
    }
    /// Bytes the id filter may take (see [`Config::id_filter_bytes`]).
    pub fn id_filter_bytes(mut self, bytes: u64) -> Self {
        self.id_filter_bytes = bytes;
        self
    }
    pub fn fs(mut self, fs: Arc<dyn Fs>) -> Self {
        self.fs = fs;
        self
    }
}
