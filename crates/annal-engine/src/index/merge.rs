//! Merging runs: which runs to merge next (the policy), and the merged stream of their
//! entries.
//!
//! Runs are merged four at a time once the newest four are of about one size (the oldest of
//! them at most twice the newest), so sizes grow geometrically like the digits of a base-4
//! counter: an entry is rewritten about log4(n) times (log2(n) when two are merged at a
//! time), and a lookup visits at most three runs of each size. While more than `MAX_RUNS`
//! exist, the newest two are merged whatever their sizes.

use std::sync::Arc;

use annal_core::Result;

use super::key::Entry;
use super::run::{Run, RunIter};

/// Runs merged into one once they are of about one size.
const FANOUT: usize = 4;
/// Most runs kept before the newest are merged regardless of size.
const MAX_RUNS: usize = 12;

/// How many of the newest runs to merge now, if any.
pub fn due(runs: &[Arc<Run>]) -> Option<usize> {
    let n = runs.len();
    if n >= FANOUT && runs[n - FANOUT].count <= 2 * runs[n - 1].count {
        Some(FANOUT)
    } else if n > MAX_RUNS {
        Some(2)
    } else {
        None
    }
}

/// Merges sorted runs into one sorted stream of entries.
pub fn merge_runs(runs: &[Arc<Run>]) -> impl Iterator<Item = Result<Entry>> + '_ {
    let mut iters: Vec<RunIter<'_>> = runs.iter().map(|r| r.iter()).collect();
    let mut failed = false;
    // The run the last entry came from, and the least entry the others have next: while
    // that run's next entry is below it, it comes next without asking the others. Runs
    // written by checkpoints hold one key's entries in runs of seqs, so most entries take
    // this path.
    let mut lead: Option<(usize, Option<Entry>)> = None;
    std::iter::from_fn(move || {
        if failed {
            return None;
        }
        if let Some((i, bound)) = lead {
            match iters[i].peek() {
                Ok(Some(e)) if bound.is_none_or(|b| e < b) => {
                    iters[i].advance();
                    return Some(Ok(e));
                }
                Ok(_) => {}
                Err(e) => {
                    failed = true;
                    return Some(Err(e));
                }
            }
        }
        // The least next entry (the first run's on a tie) and the least of the others.
        let mut best: Option<(usize, Entry)> = None;
        let mut others: Option<Entry> = None;
        for (i, it) in iters.iter_mut().enumerate() {
            match it.peek() {
                Ok(Some(e)) => match best {
                    Some((_, b)) if e >= b => {
                        if others.is_none_or(|o| e < o) {
                            others = Some(e);
                        }
                    }
                    _ => {
                        if let Some((_, b)) = best {
                            others = Some(b);
                        }
                        best = Some((i, e));
                    }
                },
                Ok(None) => {}
                Err(e) => {
                    failed = true;
                    return Some(Err(e));
                }
            }
        }
        let (i, e) = best?;
        iters[i].advance();
        lead = Some((i, others));
        Some(Ok(e))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::sim::SimFs;

    fn run_of(fs: &SimFs, id: u64, count: u64) -> Arc<Run> {
        let path = std::path::PathBuf::from(format!("/x/run-{id}.idx"));
        Arc::new(Run::write(fs, &path, id, (0..count).map(|i| Ok(Entry::new(1, i, i)))).unwrap())
    }

    #[test]
    fn four_runs_of_about_one_size_are_merged_and_many_runs_two_at_a_time() {
        let fs = SimFs::new();
        let sizes = |s: &[u64]| -> Vec<Arc<Run>> {
            s.iter()
                .enumerate()
                .map(|(i, &n)| run_of(&fs, i as u64, n))
                .collect()
        };
        assert_eq!(due(&sizes(&[10, 10, 10])), None);
        assert_eq!(due(&sizes(&[10, 10, 10, 10])), Some(4));
        assert_eq!(due(&sizes(&[40, 10, 10, 10])), None);
        assert_eq!(due(&sizes(&[160, 40, 40, 40, 10, 10, 10])), None);
        assert_eq!(due(&sizes(&[20, 10, 10, 10])), Some(4));
        let many: Vec<u64> = (0..13).map(|i| 1000 >> (i % 9)).collect();
        assert_eq!(due(&sizes(&many)), Some(2));
    }

    proptest::proptest! {
        /// Merging runs gives every entry of every run, in order, each as often as it was
        /// written, however the entries are spread over the runs.
        #[test]
        fn merged_runs_give_every_entry_in_order(
            spread in proptest::collection::vec(
                (0u64..4, 0u64..3000, 0u64..5, 0usize..5),
                0..3000,
            ),
            runs in 1usize..6,
        ) {
            let fs = SimFs::new();
            let mut all: Vec<Entry> = Vec::new();
            let mut parts: Vec<Vec<Entry>> = vec![Vec::new(); runs];
            for (k, seq, val, r) in spread {
                let e = Entry::new(k << 56, seq, val);
                all.push(e);
                parts[r % runs].push(e);
            }
            all.sort();
            let mut written = Vec::new();
            for (n, mut part) in parts.into_iter().enumerate() {
                part.sort();
                let path = std::path::PathBuf::from(format!("/x/run-{n}.idx"));
                Run::write(&fs, &path, n as u64, part.into_iter().map(Ok)).unwrap();
                written.push(Arc::new(Run::open(&fs, &path, n as u64).unwrap()));
            }
            let merged: Vec<Entry> = merge_runs(&written).map(|e| e.unwrap()).collect();
            proptest::prop_assert_eq!(merged, all);
        }
    }
}
