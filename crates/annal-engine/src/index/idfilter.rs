//! One Bloom filter over the event ids of many index runs.
//!
//! Every append looks up each of its event ids, and nearly every id is new. Each run has a
//! filter of its own that answers "certainly not here" for a new id, but asking every run
//! costs a cache miss per run per id, and a false positive of any of them costs a block
//! read. The id filter holds the ids of every run it *covers*, so a new id costs one probe;
//! a covered run is asked on its own only for the rare id the id filter may hold.
//!
//! It lives in memory only, within `Config::id_filter_bytes`. The checkpoint thread builds
//! it from the runs' id entries when the store opens, and again (with room for half as many
//! ids again) when it fills up; in between, each run it writes adds its ids as it is
//! written, and a run is marked covered only once all of its ids are in. When the ids of
//! every run do not fit in two thirds of the bound, it is built over the newest runs that
//! do. Until the filter exists, and for runs it does not cover, the runs' own filters
//! answer, so the filter changes how fast a new id is found, never the answer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::filter::{self, BLOCK_WORDS};

/// The fewest ids a filter is sized for (5 KiB).
pub const MIN_IDS: u64 = 4096;

/// Bits per id. Fewer than the runs' filters take, because a false positive here costs only
/// the probes of the runs' own filters, not a block read.
const BITS_PER_ID: u64 = 10;

/// A blocked Bloom filter (the runs' layout) whose bits may be set while it is read.
pub struct IdFilter {
    words: Vec<AtomicU64>,
    blocks: usize,
    capacity: u64,
    added: AtomicU64,
    /// Held while ids are added, so that one thread sets bits at a time and may set them
    /// with a plain load and store: a locked read-modify-write per bit is a full barrier,
    /// which keeps the cache misses of one id's block from overlapping the next one's.
    adding: Mutex<()>,
}

impl IdFilter {
    /// An empty filter for about `ids` ids.
    pub fn with_capacity(ids: u64) -> IdFilter {
        let ids = ids.max(MIN_IDS);
        let blocks = (ids * BITS_PER_ID).div_ceil(64 * BLOCK_WORDS as u64) as usize;
        IdFilter {
            words: (0..blocks * BLOCK_WORDS)
                .map(|_| AtomicU64::new(0))
                .collect(),
            blocks,
            capacity: ids,
            added: AtomicU64::new(0),
            adding: Mutex::new(()),
        }
    }

    /// The most ids a filter of at most `bytes` bytes is sized for.
    pub fn ids_within(bytes: u64) -> u64 {
        bytes * 8 / BITS_PER_ID
    }

    /// True while `n` more ids keep it within the ids it was sized for.
    pub fn has_room(&self, n: u64) -> bool {
        self.added.load(Ordering::Relaxed).saturating_add(n) <= self.capacity
    }

    /// Ids added so far (an id added twice counts twice).
    pub fn added(&self) -> u64 {
        self.added.load(Ordering::Relaxed)
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes of memory the bits take.
    pub fn bytes(&self) -> usize {
        self.words.len() * 8
    }

    /// Adds id keys. Readers see them once the lock that publishes their run is released.
    pub fn add_all(&self, keys: &[u64]) {
        let _one_adder = self.adding.lock().unwrap_or_else(|e| e.into_inner());
        for &k in keys {
            let (first, masks) = filter::masks(k, self.blocks);
            for (w, m) in self.words[first..first + BLOCK_WORDS].iter().zip(masks) {
                // Only this thread stores to the words while the lock is held; readers see
                // a word before or after its new bits, and a bit once set stays set. Every
                // word of the block is stored, also unchanged: cheaper than a branch that
                // cannot be predicted.
                w.store(w.load(Ordering::Relaxed) | m, Ordering::Relaxed);
            }
        }
        self.added.fetch_add(keys.len() as u64, Ordering::Relaxed);
    }

    /// False when no run the filter covers holds the id key.
    pub fn may_hold(&self, key: u64) -> bool {
        filter::bits(key, self.blocks).all(|(w, m)| self.words[w].load(Ordering::Relaxed) & m != 0)
    }

    /// `out[i] = may_hold(keys[i])`. Every key's block is touched before any is tested, so
    /// that their cache misses overlap.
    pub fn may_hold_many(&self, keys: &[u64], out: &mut Vec<bool>) {
        let touched = keys.iter().fold(0u64, |acc, &k| {
            acc ^ self.words[filter::first_word(k, self.blocks)].load(Ordering::Relaxed)
        });
        std::hint::black_box(touched);
        out.clear();
        out.extend(keys.iter().map(|&k| self.may_hold(k)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::key::{key, KIND_ID};

    fn id_key(i: u64) -> u64 {
        key(KIND_ID, &i.to_le_bytes())
    }

    #[test]
    fn holds_every_id_added_and_few_others() {
        let f = IdFilter::with_capacity(50_000);
        let added: Vec<u64> = (0..50_000).map(id_key).collect();
        f.add_all(&added);
        assert_eq!(f.added(), 50_000);
        assert!(added.iter().all(|&k| f.may_hold(k)));
        let mut out = Vec::new();
        f.may_hold_many(&added, &mut out);
        assert!(out.iter().all(|&b| b));
        let others = (1_000_000..1_100_000)
            .filter(|&i| f.may_hold(id_key(i)))
            .count();
        // 10 bits per id: about 1% false positives.
        assert!(others < 1_500, "{others} false positives in 100,000");
        assert!(!f.has_room(1));
    }

    #[test]
    fn ids_added_from_many_threads_at_once_are_all_held() {
        let f = IdFilter::with_capacity(80_000);
        let keys: Vec<u64> = (0..80_000).map(id_key).collect();
        std::thread::scope(|s| {
            for part in keys.chunks(10_000) {
                let f = &f;
                s.spawn(move || {
                    for chunk in part.chunks(100) {
                        f.add_all(chunk);
                    }
                });
            }
        });
        assert_eq!(f.added(), 80_000);
        assert!(keys.iter().all(|&k| f.may_hold(k)));
    }

    #[test]
    fn an_empty_filter_holds_nothing_and_has_room_for_its_minimum() {
        let f = IdFilter::with_capacity(0);
        assert_eq!(f.capacity(), MIN_IDS);
        assert!(f.has_room(MIN_IDS));
        assert!((0..10_000).all(|i| !f.may_hold(id_key(i))));
    }
}
