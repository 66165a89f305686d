//! The states a command handler keeps between commands, so that the next command on the same
//! aggregate decides without reading its stream.
//!
//! A kept state is safe to decide on whatever happened since: the handler appends with the
//! revision it was kept at, so when another writer reached the stream first the append is
//! refused, the state is dropped, and the command loads and decides again, as after any
//! lost race. A state is taken out while its command runs and put back once its events are
//! appended; two commands on one aggregate at once find it once, and the other loads.
//!
//! The cache holds at most its capacity of states; past it, the state kept longest ago goes
//! first.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// A state and the revision of its stream's last event it folds in.
struct Kept {
    state: Box<dyn Any + Send + Sync>,
    revision: u64,
    /// Which of the key's entries in `order` is this one's.
    generation: u64,
}

#[derive(Default)]
struct Inner {
    kept: HashMap<String, Kept>,
    /// Keys in the order they were kept, with the generation they were kept at; an entry
    /// whose generation is not the key's current one is stale and skipped.
    order: VecDeque<(String, u64)>,
    next_generation: u64,
}

/// States of up to `capacity` aggregates, by stream id.
pub(crate) struct StateCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for StateCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self.lock().kept.len();
        f.debug_struct("StateCache")
            .field("capacity", &self.capacity)
            .field("held", &held)
            .finish()
    }
}

impl StateCache {
    pub fn new(capacity: usize) -> StateCache {
        StateCache {
            capacity,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the state kept for `stream` out, with its revision; `None` when there is none
    /// (or one of another type, which is dropped).
    pub fn take<T: Send + Sync + 'static>(&self, stream: &str) -> Option<(T, u64)> {
        let kept = self.lock().kept.remove(stream)?;
        let revision = kept.revision;
        kept.state.downcast::<T>().ok().map(|s| (*s, revision))
    }

    /// Keeps `state` for `stream` at `revision`, in place of any kept before.
    pub fn put<T: Send + Sync + 'static>(&self, stream: &str, state: T, revision: u64) {
        if self.capacity == 0 {
            return;
        }
        let mut inner = self.lock();
        let generation = inner.next_generation;
        inner.next_generation += 1;
        let kept = Kept {
            state: Box::new(state),
            revision,
            generation,
        };
        inner.kept.insert(stream.to_string(), kept);
        inner.order.push_back((stream.to_string(), generation));
        while inner.kept.len() > self.capacity {
            let Some((key, generation)) = inner.order.pop_front() else {
                break;
            };
            if inner
                .kept
                .get(&key)
                .is_some_and(|k| k.generation == generation)
            {
                inner.kept.remove(&key);
            }
        }
        // Entries of states taken or kept again since pile up in `order`; past twice the
        // capacity they are swept, so that it stays bounded too.
        if inner.order.len() > 2 * self.capacity.max(1) {
            let Inner { kept, order, .. } = &mut *inner;
            order.retain(|(key, generation)| {
                kept.get(key).is_some_and(|k| k.generation == *generation)
            });
        }
    }

    /// How many states are kept.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().kept.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_is_taken_once_and_the_oldest_goes_first() {
        let cache = StateCache::new(2);
        cache.put("a-1", 10u32, 0);
        cache.put("a-2", 20u32, 4);
        assert_eq!(cache.take::<u32>("a-2"), Some((20, 4)));
        assert_eq!(cache.take::<u32>("a-2"), None, "taken out");
        cache.put("a-2", 21u32, 5);
        cache.put("a-3", 30u32, 1);
        // a-1 was kept longest ago.
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.take::<u32>("a-1"), None);
        assert_eq!(cache.take::<u32>("a-2"), Some((21, 5)));
        assert_eq!(cache.take::<u32>("a-3"), Some((30, 1)));
    }

    #[test]
    fn a_state_of_another_type_is_not_handed_out() {
        let cache = StateCache::new(4);
        cache.put("a-1", 1u8, 0);
        assert_eq!(cache.take::<u32>("a-1"), None);
        assert_eq!(cache.take::<u8>("a-1"), None, "dropped");
    }

    #[test]
    fn the_order_stays_bounded_when_states_are_kept_again_and_again() {
        let cache = StateCache::new(3);
        for i in 0..10_000u64 {
            let key = format!("a-{}", i % 5);
            let _ = cache.take::<u64>(&key);
            cache.put(&key, i, i);
            let inner = cache.lock();
            assert!(inner.kept.len() <= 3);
            assert!(inner.order.len() <= 7, "{}", inner.order.len());
        }
        // The three kept last are there.
        for (k, v) in [("a-2", 9_997u64), ("a-3", 9_998), ("a-4", 9_999)] {
            assert_eq!(cache.take::<u64>(k), Some((v, v)));
        }
        let zero = StateCache::new(0);
        zero.put("a-1", 1u8, 0);
        assert_eq!(
            zero.take::<u8>("a-1"),
            None,
            "a cache of no room keeps nothing"
        );
    }
}
