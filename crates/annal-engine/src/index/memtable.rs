//! The in-memory part of the index: entries added since the last checkpoint.
//!
//! Entries of one key arrive in order almost always (positions and revisions only grow), so
//! each key keeps a sorted vector that new entries are pushed onto; event ids, one entry per
//! key, live in a map of their own. A hash collision can bring an entry out of order; it is
//! then inserted in place.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use annal_core::Direction;

use super::key::{is_id_key, Entry};

/// Keys are hashes already: mix them once and use them as they are.
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u64(&mut self, k: u64) {
        self.0 = (k ^ (k >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type Map<V> = HashMap<u64, V, BuildHasherDefault<KeyHasher>>;

enum Ids {
    One(u64),
    Many(Vec<u64>),
}

/// Entries since the last checkpoint.
#[derive(Default)]
pub struct MemTable {
    lists: Map<Vec<(u64, u64)>>,
    ids: Map<Ids>,
    len: usize,
}

/// Adds `e` to a sorted list, at its end almost always; false when it was there already.
fn push(list: &mut Vec<(u64, u64)>, e: (u64, u64)) -> bool {
    match list.last() {
        None => list.push(e),
        Some(last) if *last < e => list.push(e),
        Some(last) if *last == e => return false,
        Some(_) => match list.binary_search(&e) {
            Ok(_) => return false,
            Err(i) => list.insert(i, e),
        },
    }
    true
}

impl MemTable {
    /// An empty memtable with room for as many keys and ids as this one holds, so that the
    /// next one fills without rehashing its maps as they grow.
    pub fn sized_like(&self) -> MemTable {
        MemTable {
            lists: Map::with_capacity_and_hasher(self.lists.len(), Default::default()),
            ids: Map::with_capacity_and_hasher(self.ids.len(), Default::default()),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Adds entries; each run of entries of one key costs one lookup of the key.
    pub fn insert_all(&mut self, entries: &[Entry]) {
        let mut rest = entries;
        while let Some(&Entry { key, .. }) = rest.first() {
            let n = rest.iter().take_while(|e| e.key == key).count();
            let (run, after) = rest.split_at(n);
            rest = after;
            if is_id_key(key) {
                for e in run {
                    self.insert(*e);
                }
                continue;
            }
            let list = self.lists.entry(key).or_default();
            list.reserve(run.len());
            for e in run {
                self.len += usize::from(push(list, (e.seq, e.value)));
            }
        }
    }

    pub fn insert(
        &mut self,
        Entry {
            key,
            seq,
            value: val,
        }: Entry,
    ) {
        if is_id_key(key) {
            match self.ids.get_mut(&key) {
                None => {
                    self.ids.insert(key, Ids::One(val));
                }
                Some(Ids::One(v)) if *v == val => return,
                Some(slot @ Ids::One(_)) => {
                    let Ids::One(v) = *slot else { return };
                    let mut all = vec![v, val];
                    all.sort_unstable();
                    *slot = Ids::Many(all);
                }
                Some(Ids::Many(all)) => match all.binary_search(&val) {
                    Ok(_) => return,
                    Err(i) => all.insert(i, val),
                },
            }
            self.len += 1;
            return;
        }
        let list = self.lists.entry(key).or_default();
        self.len += usize::from(push(list, (seq, val)));
    }

    /// How many distinct event id keys are here.
    pub fn id_keys(&self) -> usize {
        self.ids.len()
    }

    /// True when an event id key has an entry here.
    pub fn holds_id(&self, key: u64) -> bool {
        self.ids.contains_key(&key)
    }

    /// `(seq, value)` of the entries of `key` with `lo <= seq <= hi`, in `dir` order, at most
    /// `limit`, appended to `out`.
    pub fn scan(
        &self,
        key: u64,
        lo: u64,
        hi: u64,
        dir: Direction,
        limit: usize,
        out: &mut Vec<(u64, u64)>,
    ) {
        if is_id_key(key) {
            if lo > 0 {
                return;
            }
            let vals: &[u64] = match self.ids.get(&key) {
                None => return,
                Some(Ids::One(v)) => std::slice::from_ref(v),
                Some(Ids::Many(all)) => all,
            };
            match dir {
                Direction::Forward => out.extend(vals.iter().take(limit).map(|v| (0, *v))),
                Direction::Backward => out.extend(vals.iter().rev().take(limit).map(|v| (0, *v))),
            }
            return;
        }
        let Some(list) = self.lists.get(&key) else {
            return;
        };
        let start = list.partition_point(|e| e.0 < lo);
        let end = list.partition_point(|e| e.0 <= hi);
        if start >= end {
            return;
        }
        let range = &list[start..end];
        match dir {
            Direction::Forward => out.extend(range.iter().take(limit)),
            Direction::Backward => out.extend(range.iter().rev().take(limit)),
        }
    }

    /// Every entry, sorted, for writing out as a run.
    ///
    /// Each key's list is sorted already, so only the keys are sorted: the list keys (few),
    /// and the id keys with their values; the two sorted sequences are then merged as they
    /// are read, without gathering every entry in one vector.
    pub fn sorted(&self) -> impl Iterator<Item = Entry> + '_ {
        let mut keys: Vec<u64> = self.lists.keys().copied().collect();
        keys.sort_unstable();
        let mut ids: Vec<(u64, u64)> = Vec::with_capacity(self.ids.len());
        for (k, v) in &self.ids {
            match v {
                Ids::One(v) => ids.push((*k, *v)),
                Ids::Many(all) => ids.extend(all.iter().map(|v| (*k, *v))),
            }
        }
        ids.sort_unstable();
        let mut ids = ids.into_iter().map(|(k, v)| Entry::new(k, 0, v)).peekable();
        let mut keys = keys.into_iter().peekable();
        let mut list: Option<(u64, std::slice::Iter<'_, (u64, u64)>)> = None;
        std::iter::from_fn(move || loop {
            if let Some((k, it)) = &mut list {
                if let Some(&(s, v)) = it.next() {
                    return Some(Entry::new(*k, s, v));
                }
                list = None;
            }
            // The next list key, unless an id key comes before it.
            match (keys.peek(), ids.peek()) {
                (Some(&k), Some(id)) if id.key < k => return ids.next(),
                (Some(&k), _) => {
                    keys.next();
                    list = Some((k, self.lists[&k].iter()));
                }
                (None, _) => return ids.next(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::key::{key, KIND_ID, KIND_STREAM};
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    proptest! {
        /// Scans agree with a sorted set, whatever order the entries came in.
        #[test]
        fn scans_agree_with_a_sorted_set(
            entries in proptest::collection::vec((0u8..4, 0u64..40, 0u64..60, any::<bool>()), 0..200),
            lo in 0u64..40, hi in 0u64..40, limit in 1usize..50,
        ) {
            let mut mem = MemTable::default();
            let mut set = BTreeSet::new();
            let mut all = Vec::new();
            for (k, seq, val, id) in entries {
                let key = if id { key(KIND_ID, &[k]) } else { key(KIND_STREAM, &[k]) };
                let seq = if id { 0 } else { seq };
                let e = Entry::new(key, seq, val);
                mem.insert(e);
                set.insert(e);
                all.push(e);
            }
            // Added all at once (runs of one key looked up once), the same table.
            let mut at_once = MemTable::default();
            at_once.insert_all(&all);
            prop_assert_eq!(at_once.len(), set.len());
            prop_assert_eq!(at_once.sorted().collect::<Vec<_>>(), mem.sorted().collect::<Vec<_>>());
            prop_assert_eq!(mem.len(), set.len());
            prop_assert_eq!(mem.sorted().collect::<Vec<_>>(), set.iter().copied().collect::<Vec<_>>());
            for k in 0u8..4 {
                for id in [false, true] {
                    let key = if id { key(KIND_ID, &[k]) } else { key(KIND_STREAM, &[k]) };
                    for dir in [Direction::Forward, Direction::Backward] {
                        let mut got = Vec::new();
                        mem.scan(key, lo, hi, dir, limit, &mut got);
                        let mut want: Vec<(u64, u64)> = set
                            .range(Entry::new(key, lo, 0)..=Entry::new(key, hi.max(lo), u64::MAX))
                            .filter(|e| e.seq <= hi)
                            .map(|e| (e.seq, e.value))
                            .collect();
                        if dir == Direction::Backward { want.reverse(); }
                        want.truncate(limit);
                        prop_assert_eq!(got, want);
                    }
                }
            }
        }
    }
}
