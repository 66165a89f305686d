//! Checkpoints: what lets a large store reopen without replaying its whole log.
//!
//! A checkpoint is the index runs, the stream heads (`crate::heads`: a base of every stream
//! and deltas of what changed after it), and the manifest that names them together with the log
//! position and offset they cover (`manifest.rs`). Everything a checkpoint holds is derived from the log: when one is
//! missing, damaged or of an older version, the store rebuilds it from the log.
//!
//! The checkpoint thread (here) writes each frozen memtable out as a run, the heads taken
//! with it and a new manifest, merges runs, and builds the id filter, so
//! that none of that slows the write path.

use std::sync::{mpsc as std_mpsc, Arc};

use annal_core::{Error, Result};
use tokio::sync::oneshot;
use tracing::{debug, warn};

use crate::heads::{write_merged, HeadsWrite};
use crate::index::idfilter::MIN_IDS;
use crate::index::{merge, IdFilter, MemTable, Run};
use crate::layout::{heads_path, index_dir, run_path};
use crate::shared::Shared;

pub mod manifest;

pub use manifest::Manifest;

/// A checkpoint to write: a frozen memtable and the stream heads at the same point.
pub(crate) struct Job {
    /// `None`: a barrier that writes nothing.
    pub frozen: Option<Arc<MemTable>>,
    pub heads: HeadsWrite,
    pub next_position: u64,
    pub log_end: u64,
    pub last_ts: i64,
    pub replies: Vec<oneshot::Sender<Result<()>>>,
}

/// The checkpoint thread.
pub(crate) struct Checkpointer {
    shared: Arc<Shared>,
    jobs: std_mpsc::Receiver<Job>,
    /// The checkpoint in force.
    manifest: Manifest,
}

impl Checkpointer {
    pub fn new(shared: Arc<Shared>, jobs: std_mpsc::Receiver<Job>, manifest: Manifest) -> Self {
        Checkpointer {
            shared,
            jobs,
            manifest,
        }
    }

    /// Writes checkpoints as they come, until the syncer is gone.
    pub fn run(mut self) {
        // The runs found at open go into the id filter before anything else.
        self.id_filter(0);
        while let Ok(job) = self.jobs.recv() {
            if let Err(e) = self.shared.check_poison() {
                for tx in job.replies {
                    let _ = tx.send(Err(e.clone()));
                }
                continue;
            }
            let r = match &job.frozen {
                Some(frozen) => self.checkpoint(&job, frozen).and_then(|()| self.merge()),
                None => Ok(()),
            };
            if let Err(e) = &r {
                // The frozen memtable stays readable; a later checkpoint cannot skip over it,
                // so writes stop here, as after any failed write.
                self.shared.poison(e.to_string());
            }
            for tx in job.replies {
                let _ = tx.send(r.clone());
            }
        }
    }

    /// Writes a frozen memtable out as a run, writes the heads taken with it (a base or a
    /// delta), and replaces the manifest; then removes the heads files it no longer names.
    fn checkpoint(&mut self, job: &Job, frozen: &MemTable) -> Result<()> {
        let fs = self.shared.fs.clone();
        let dir = self.shared.dir.clone();
        let run_id = self.manifest.next_file_id;
        let heads_id = run_id + 1;
        let ids = self.id_filter(frozen.id_keys() as u64);
        let written = (|| {
            let run = Run::write_adding_ids(
                fs.as_ref(),
                &run_path(&dir, run_id),
                run_id,
                frozen.sorted().map(Ok),
                frozen.id_keys() as u64,
                ids.as_deref(),
            )?;
            fs.sync_dir(&index_dir(&dir))
                .map_err(|e| Error::io("syncing the index folder", e))?;
            let mut heads = self.manifest.heads.clone();
            let mut installed = None;
            let merge = match &job.heads {
                HeadsWrite::Unchanged => None,
                HeadsWrite::Base(changed) => Some((0, changed)),
                // The base stays: a delta never replaces it.
                HeadsWrite::Delta { replaces, changed } => {
                    Some((heads.len().saturating_sub(*replaces).max(1), changed))
                }
            };
            if let Some((keep, changed)) = merge {
                let older = {
                    let h = self.shared.heads.read().unwrap_or_else(|e| e.into_inner());
                    h.files()[keep.min(h.files().len())..].to_vec()
                };
                let file = write_merged(fs.as_ref(), &dir, heads_id, &older, changed)?;
                heads.truncate(keep);
                heads.push(heads_id);
                installed = Some((keep, Arc::new(file)));
            }
            let mut manifest = Manifest {
                next_position: job.next_position,
                log_offset: job.log_end,
                last_recorded_at: job.last_ts,
                next_file_id: heads_id + 1,
                heads,
                runs: self.manifest.runs.clone(),
            };
            manifest.runs.push(run_id);
            manifest.store(fs.as_ref(), &dir)?;
            Ok::<_, Error>((run, manifest, installed))
        })();
        let (run, manifest, installed) = written?;
        self.shared.index.install(Arc::new(run), ids.is_some());
        if let Some((keep, file)) = installed {
            let mut heads = self.shared.heads.write().unwrap_or_else(|e| e.into_inner());
            heads.install(keep, file);
            metrics::gauge!("annal_streams").set(heads.stream_count() as f64);
            let (changed, footers, cache) = heads.memory();
            metrics::gauge!("annal_stream_heads_memory_bytes")
                .set((changed + footers + cache) as f64);
        }
        for old in &self.manifest.heads {
            if !manifest.heads.contains(old) {
                let _ = fs.remove(&heads_path(&dir, *old));
            }
        }
        self.manifest = manifest;
        Ok(())
    }

    /// The id filter, with room for `n` more ids. When it has none (or does not exist yet),
    /// a new one is built from the runs' id entries and installed: over every run when
    /// their ids and the `n` fit in two thirds of `Config::id_filter_bytes`, else over the
    /// newest runs that do, sized for one and a half times their ids and the `n`. `None`
    /// when the bound is below the smallest filter (there is none), when the `n` alone do
    /// not fit (the run being written is then left to its own filter, and the filter in
    /// force stays), or when the runs cannot be read: the runs' own filters then answer
    /// alone, as they would without it.
    fn id_filter(&mut self, n: u64) -> Option<Arc<IdFilter>> {
        if let Some(f) = self.shared.index.id_filter().filter(|f| f.has_room(n)) {
            return Some(f);
        }
        let most = IdFilter::ids_within(self.shared.config.id_filter_bytes);
        let budget = most / 3 * 2;
        if most < MIN_IDS || n > budget {
            return None;
        }
        let runs = self.shared.index.runs();
        let (mut ids, mut covered) = (0, Vec::new());
        for r in runs.iter().rev() {
            if ids + r.estimated_ids() + n <= budget {
                ids += r.estimated_ids();
                covered.push(r.clone());
            }
        }
        let filter = Arc::new(IdFilter::with_capacity((ids + n) * 3 / 2));
        for r in &covered {
            if let Err(e) = r.add_ids_to(&filter) {
                warn!(error = %e, "could not read the event ids of an index run; every run's own filter answers for it");
                self.shared.index.set_id_filter(None, Vec::new());
                return None;
            }
        }
        debug!(
            runs = runs.len(),
            covered = covered.len(),
            ids = filter.added(),
            capacity = filter.capacity(),
            bytes = filter.bytes(),
            "id filter built"
        );
        self.shared
            .index
            .set_id_filter(Some(filter.clone()), covered.iter().map(|r| r.id).collect());
        Some(filter)
    }

    /// Merges the newest runs while the merge policy says so (`index/merge.rs`).
    fn merge(&mut self) -> Result<()> {
        loop {
            let runs = self.shared.index.runs();
            let n = runs.len();
            let Some(k) = merge::due(&runs) else {
                return Ok(());
            };
            let fs = self.shared.fs.clone();
            let dir = self.shared.dir.clone();
            let id = self.manifest.next_file_id;
            // Runs whose ids are all in the id filter merge into one whose ids are too.
            let inputs = &runs[n - k..];
            let covered = inputs.iter().all(|r| self.shared.index.is_covered(r.id));
            let expected_ids = inputs.iter().map(|r| r.estimated_ids()).sum();
            let ids = if covered {
                None
            } else {
                self.id_filter(expected_ids)
            };
            let merged = Run::write_adding_ids(
                fs.as_ref(),
                &run_path(&dir, id),
                id,
                merge::merge_runs(inputs),
                expected_ids,
                ids.as_deref(),
            )?;
            fs.sync_dir(&index_dir(&dir))
                .map_err(|e| Error::io("syncing the index folder", e))?;
            let mut manifest = self.manifest.clone();
            manifest.runs.truncate(n - k);
            manifest.runs.push(id);
            manifest.next_file_id = id + 1;
            manifest.store(fs.as_ref(), &dir)?;
            self.shared
                .index
                .replace_tail(n - k, Arc::new(merged), covered || ids.is_some());
            for r in inputs {
                let _ = fs.remove(&run_path(&dir, r.id));
            }
            self.manifest = manifest;
        }
    }
}
