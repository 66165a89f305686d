//! The indexes: one log-structured table of `(key, seq, value)` entries that serves every
//! lookup the engine makes.
//!
//! | kind     | name        | seq               | value                       |
//! |----------|-------------|-------------------|-----------------------------|
//! | stream   | stream id   | revision          | position                    |
//! | category | category    | position          | position                    |
//! | type     | event type  | position          | position                    |
//! | tag      | tag         | position          | position                    |
//! | id       | event id    | 0                 | position                    |
//! | batch    | (none)      | first position    | log offset of the record    |
//! | time     | (none)      | recorded at (µs)  | last position of the batch  |
//!
//! New entries go to the memtable (`memtable.rs`); a checkpoint freezes it and writes it out
//! as a sorted, immutable run file (`run/`), and runs of about one size are merged
//! (`merge.rs`) so that there are only a few of them. Keys and the entries of an event are
//! made in `key.rs`; event ids are answered first by Bloom filters (`filter.rs`, and the id
//! filter over many runs, `idfilter.rs`), so that a new id reads no block.

use std::sync::{Arc, RwLock};

use annal_core::{Direction, Result};

pub mod block;
pub mod filter;
pub mod idfilter;
pub mod key;
pub mod memtable;
pub mod merge;
pub mod run;

pub use idfilter::IdFilter;
pub use key::{
    batch_entries, decoded_batch_entries, fixed_key, is_id_key, key, stream_entries, stream_keys,
    Entry, KIND_ACTOR, KIND_BATCH, KIND_CATEGORY, KIND_CORRELATION, KIND_ID, KIND_STREAM, KIND_TAG,
    KIND_TIME, KIND_TYPE,
};
pub use memtable::MemTable;
pub use merge::merge_runs;
pub use run::Run;

/// The index: a memtable, frozen memtables waiting to be written out (oldest first), and
/// runs.
#[derive(Default)]
pub struct IndexState {
    pub mem: MemTable,
    pub frozen: Vec<Arc<MemTable>>,
    pub runs: Vec<Arc<Run>>,
    /// The filter over the event ids of many runs, once built.
    pub ids: Option<Arc<IdFilter>>,
    /// The runs (by id) whose every event id is in `ids`.
    pub covered: Vec<u64>,
}

/// The shared index, readable while the writer adds to it.
#[derive(Default)]
pub struct Index {
    pub state: RwLock<IndexState>,
}

impl Index {
    /// `(seq, value)` of entries of `key` with `lo <= seq <= hi`, in `dir` order, at most
    /// `limit`, merged from every part of the index.
    pub fn scan(
        &self,
        key: u64,
        lo: u64,
        hi: u64,
        dir: Direction,
        limit: usize,
    ) -> Result<Vec<(u64, u64)>> {
        if lo > hi || limit == 0 {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let runs: Vec<Arc<Run>> = {
            let s = self.state.read().unwrap_or_else(|e| e.into_inner());
            s.mem.scan(key, lo, hi, dir, limit, &mut out);
            for f in &s.frozen {
                f.scan(key, lo, hi, dir, limit, &mut out);
            }
            // An event id is looked up only in the runs whose Bloom filter may hold it, so
            // the lookup of a new id allocates nothing and reads nothing.
            s.runs
                .iter()
                .filter(|r| !is_id_key(key) || r.may_hold_id(key))
                .cloned()
                .collect()
        };
        for run in &runs {
            run.scan(key, lo, hi, dir, limit, &mut out)?;
        }
        match dir {
            Direction::Forward => out.sort_unstable(),
            Direction::Backward => out.sort_unstable_by(|a, b| b.cmp(a)),
        }
        out.dedup();
        out.truncate(limit);
        Ok(out)
    }

    /// For event id keys: `out[i]` is false when no part of the index holds `keys[i]` (the
    /// answer for a new id, found without reading a run), true when one may.
    /// A run the id filter covers is asked only about the keys the filter may hold.
    pub fn may_hold_ids(&self, keys: &[u64], out: &mut Vec<bool>, scratch: &mut Vec<bool>) {
        out.clear();
        out.resize(keys.len(), false);
        let s = self.state.read().unwrap_or_else(|e| e.into_inner());
        for (&k, maybe) in keys.iter().zip(out.iter_mut()) {
            *maybe = s.mem.holds_id(k) || s.frozen.iter().any(|f| f.holds_id(k));
        }
        let Some(ids) = &s.ids else {
            for run in &s.runs {
                run.may_hold_ids(keys, out);
            }
            return;
        };
        ids.may_hold_many(keys, scratch);
        let any = scratch.iter().any(|&m| m);
        for run in &s.runs {
            if !s.covered.contains(&run.id) {
                run.may_hold_ids(keys, out);
            } else if any {
                for ((&k, maybe), _) in keys
                    .iter()
                    .zip(out.iter_mut())
                    .zip(&*scratch)
                    .filter(|(_, &m)| m)
                {
                    *maybe = *maybe || run.may_hold_id(k);
                }
            }
        }
    }

    /// Bytes in memory: the runs' fences and tables, their filters kept in memory, the
    /// id filter; and the entries of the memtable and frozen ones.
    pub fn memory(&self) -> (u64, u64, u64, u64) {
        let s = self.state.read().unwrap_or_else(|e| e.into_inner());
        let (mut fences, mut filters) = (0, 0);
        for r in &s.runs {
            let (f, b) = r.memory();
            fences += f;
            filters += b;
        }
        let ids = s.ids.as_ref().map_or(0, |i| i.bytes() as u64);
        let entries = s.mem.len() + s.frozen.iter().map(|f| f.len()).sum::<usize>();
        (fences, filters, ids, entries as u64)
    }

    /// The id filter, when built.
    pub fn id_filter(&self) -> Option<Arc<IdFilter>> {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .ids
            .clone()
    }

    /// True when the id filter holds every event id of the run.
    pub fn is_covered(&self, run: u64) -> bool {
        let s = self.state.read().unwrap_or_else(|e| e.into_inner());
        s.ids.is_some() && s.covered.contains(&run)
    }

    /// Installs an id filter that holds every event id of the runs `covered`; `None` drops
    /// it (the runs' own filters answer alone).
    pub fn set_id_filter(&self, ids: Option<Arc<IdFilter>>, covered: Vec<u64>) {
        let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
        s.covered = if ids.is_some() { covered } else { Vec::new() };
        s.ids = ids;
    }

    /// The entry of `key` with the greatest seq at or below `seq`.
    pub fn floor(&self, key: u64, seq: u64) -> Result<Option<(u64, u64)>> {
        if key == fixed_key(KIND_BATCH) {
            return self.floor_batch(seq);
        }
        Ok(self
            .scan(key, 0, seq, Direction::Backward, 1)?
            .into_iter()
            .next())
    }

    /// [`Index::floor`] of the batch key, which every run holds: only the runs whose batch
    /// entries can beat the best found so far are read, so a lookup reads one run, not all.
    fn floor_batch(&self, seq: u64) -> Result<Option<(u64, u64)>> {
        let key = fixed_key(KIND_BATCH);
        let mut out = Vec::new();
        let runs: Vec<Arc<Run>> = {
            let s = self.state.read().unwrap_or_else(|e| e.into_inner());
            s.mem.scan(key, 0, seq, Direction::Backward, 1, &mut out);
            for f in &s.frozen {
                f.scan(key, 0, seq, Direction::Backward, 1, &mut out);
            }
            s.runs.clone()
        };
        let mut ranked = Vec::with_capacity(runs.len());
        for run in runs {
            if let Some((lo, hi)) = run.batch_range()? {
                if lo <= seq {
                    ranked.push((hi.min(seq), run));
                }
            }
        }
        // Highest first: once the best found is at or above what a run could give, no run
        // after it can give more.
        ranked.sort_unstable_by_key(|r| std::cmp::Reverse(r.0));
        for (could, run) in ranked {
            if out.iter().any(|&(s, _)| s >= could) {
                break;
            }
            run.scan(key, 0, seq, Direction::Backward, 1, &mut out)?;
        }
        Ok(out.into_iter().max())
    }

    /// Adds entries to the memtable; runs of entries of one key are looked up once.
    pub fn insert(&self, entries: &[Entry]) {
        let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
        s.mem.insert_all(entries);
    }

    /// How many entries wait in the memtable.
    pub fn mem_len(&self) -> usize {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .mem
            .len()
    }

    /// Freezes the memtable for writing out; returns it.
    pub fn freeze(&self) -> Arc<MemTable> {
        let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
        let next = s.mem.sized_like();
        let mem = Arc::new(std::mem::replace(&mut s.mem, next));
        s.frozen.push(mem.clone());
        mem
    }

    /// Replaces the oldest frozen memtable with the run written from it; `covered`: every
    /// event id of the run is in the id filter.
    pub fn install(&self, run: Arc<Run>, covered: bool) {
        let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
        if !s.frozen.is_empty() {
            s.frozen.remove(0);
        }
        if covered && s.ids.is_some() {
            s.covered.push(run.id);
        }
        s.runs.push(run);
    }

    /// The runs, oldest first.
    pub fn runs(&self) -> Vec<Arc<Run>> {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .runs
            .clone()
    }

    /// Replaces runs `from..` with `merged`; `covered` as for `install`.
    pub fn replace_tail(&self, from: usize, merged: Arc<Run>, covered: bool) {
        let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
        s.runs.truncate(from);
        let IndexState {
            runs, covered: c, ..
        } = &mut *s;
        c.retain(|id| runs.iter().any(|r| r.id == *id));
        if covered && s.ids.is_some() {
            s.covered.push(merged.id);
        }
        s.runs.push(merged);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::sim::SimFs;
    use std::path::Path;

    /// The batch key's floor, reading only the runs that can beat the best found, agrees
    /// with a scan of every part of the index: runs in log order, a run that overlaps others
    /// (as a merge leaves none, but nothing relies on that), and the memtable.
    #[test]
    fn the_batch_floor_agrees_with_a_scan_of_everything() {
        let fs = SimFs::new();
        let key = fixed_key(KIND_BATCH);
        let ranges: [&[u64]; 4] = [&[0, 3, 10, 11], &[20, 25, 40], &[5, 30, 55], &[60, 61]];
        let mut runs = Vec::new();
        for (i, seqs) in ranges.iter().enumerate() {
            let mut entries: Vec<Entry> = seqs.iter().map(|&s| Entry::new(key, s, s * 7)).collect();
            // Other keys around the batch key's entries.
            entries.push(Entry::new(fixed_key(KIND_STREAM) | 9, 1, 1));
            entries.push(Entry::new(fixed_key(KIND_TIME), 2, 2));
            entries.sort();
            let path = format!("/x/run-{i}.idx");
            let path = Path::new(&path);
            Run::write(&fs, path, i as u64, entries.into_iter().map(Ok)).unwrap();
            runs.push(Arc::new(Run::open(&fs, path, i as u64).unwrap()));
        }
        let mut mem = MemTable::default();
        mem.insert_all(&[Entry::new(key, 70, 490), Entry::new(key, 12, 84)]);
        let index = Index {
            state: RwLock::new(IndexState {
                mem,
                frozen: Vec::new(),
                runs,
                ids: None,
                covered: Vec::new(),
            }),
        };
        for seq in 0..80 {
            let all = index
                .scan(key, 0, seq, Direction::Backward, 1)
                .unwrap()
                .into_iter()
                .next();
            assert_eq!(index.floor(key, seq).unwrap(), all, "floor of {seq}");
        }
        assert_eq!(index.floor(key, 4).unwrap(), Some((3, 21)));
    }
}
