//! The cache of heads blocks read from heads files, bounded in bytes (`Config::
//! head_cache_bytes`). Blocks never change once written, so a cached block is never stale;
//! a file's blocks simply stop being asked for once it is replaced, and age out.
//!
//! Eviction is CLOCK: a block read since the hand last passed it gets a second chance.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use super::block::Block;

type Key = (u64, usize);

struct Slot {
    block: Arc<Block>,
    used: bool,
}

#[derive(Default)]
struct Inner {
    slots: HashMap<Key, Slot>,
    hand: VecDeque<Key>,
    bytes: usize,
}

pub struct BlockCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

impl BlockCache {
    pub fn new(capacity: usize) -> BlockCache {
        BlockCache {
            capacity,
            inner: Mutex::default(),
        }
    }

    /// Block `block` of heads file `file`, if cached.
    pub fn get(&self, file: u64, block: usize) -> Option<Arc<Block>> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let slot = inner.slots.get_mut(&(file, block))?;
        slot.used = true;
        Some(slot.block.clone())
    }

    /// Caches a block just read (unless it alone passes the bound) and returns it.
    pub fn insert(&self, file: u64, block: usize, b: Arc<Block>) -> Arc<Block> {
        let size = b.bytes();
        if size > self.capacity {
            return b;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let inner = &mut *inner;
        if inner.slots.contains_key(&(file, block)) {
            return b;
        }
        while inner.bytes + size > self.capacity {
            let Some(k) = inner.hand.pop_front() else {
                break;
            };
            let slot = inner
                .slots
                .get_mut(&k)
                .expect("every key on the clock has a slot");
            if slot.used {
                slot.used = false;
                inner.hand.push_back(k);
            } else {
                let gone = inner.slots.remove(&k).expect("present");
                inner.bytes -= gone.block.bytes();
            }
        }
        inner.bytes += size;
        inner.hand.push_back((file, block));
        inner.slots.insert(
            (file, block),
            Slot {
                block: b.clone(),
                used: false,
            },
        );
        b
    }

    /// Bytes of blocks held.
    pub fn bytes(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_stays_within_its_bound_and_keeps_what_is_read() {
        let one = Arc::new(Block::default()).bytes();
        let cache = BlockCache::new(one * 4);
        for b in 0..4 {
            cache.insert(1, b, Arc::new(Block::default()));
        }
        assert_eq!(cache.bytes(), one * 4);
        // Block 0 is read again: it survives the next insertion, block 1 does not.
        assert!(cache.get(1, 0).is_some());
        cache.insert(1, 4, Arc::new(Block::default()));
        assert!(cache.bytes() <= one * 4);
        assert!(cache.get(1, 0).is_some());
        assert!(cache.get(1, 1).is_none());
        assert!(cache.get(1, 4).is_some());
        for b in 5..100 {
            cache.insert(2, b, Arc::new(Block::default()));
            assert!(cache.bytes() <= one * 4);
        }
    }
}
