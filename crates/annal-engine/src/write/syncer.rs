//! The sync thread: makes written groups durable, then applies and acknowledges them, and
//! hands checkpoints to the checkpoint thread.

use std::sync::atomic::Ordering;
use std::sync::{mpsc as std_mpsc, Arc};

use annal_core::{Error, Result};
use tokio::sync::{mpsc, oneshot};

use super::{Command, Written};
use crate::checkpoint::Job;
use crate::heads::HeadsWrite;
use crate::log::Segment;
use crate::shared::Shared;

pub(crate) struct Syncer {
    shared: Arc<Shared>,
    rx: std_mpsc::Receiver<Written>,
    /// The checkpoint thread's queue (bounded: at most two checkpoints wait).
    jobs: std_mpsc::SyncSender<Job>,
    /// The writer's queue, told when every group written so far is applied. Weak, so that
    /// the writer still stops once the store's own sender is gone.
    writer: mpsc::WeakSender<Command>,
    /// The next position of the last checkpoint handed out.
    checkpointed: u64,
    /// What is durable and applied: the next position, the log's end, the last time.
    next_position: u64,
    log_end: u64,
    last_ts: i64,
    /// Set after a failed sync: nothing later may be acknowledged.
    failed: Option<Error>,
}

impl Syncer {
    /// `checkpointed`: the next position the checkpoint in force covers.
    pub fn new(
        shared: Arc<Shared>,
        rx: std_mpsc::Receiver<Written>,
        jobs: std_mpsc::SyncSender<Job>,
        writer: mpsc::WeakSender<Command>,
        checkpointed: u64,
        next_position: u64,
        last_ts: i64,
    ) -> Syncer {
        let log_end = shared.synced_log_end();
        Syncer {
            shared,
            rx,
            jobs,
            writer,
            checkpointed,
            next_position,
            log_end,
            last_ts,
            failed: None,
        }
    }

    /// Commits groups as they come until the writer is gone, then hands out a last
    /// checkpoint (the checkpoint thread stops once it has written it).
    pub fn run(mut self) {
        while let Ok(first) = self.rx.recv() {
            let mut batch = vec![first];
            batch.extend(self.rx.try_iter());
            self.commit(batch);
            self.caught_up();
        }
        if self.failed.is_none() && self.shared.poison_cause().is_none() {
            self.checkpoint(Vec::new());
        }
    }

    /// Tells the writer that the groups it has written are applied, when its queue is
    /// empty (a writer with requests queued prunes with its next group anyway).
    fn caught_up(&self) {
        if let Some(writer) = self.writer.upgrade() {
            if writer.capacity() == writer.max_capacity() {
                let _ = writer.try_send(Command::Prune);
            }
        }
    }

    /// Hands a checkpoint of everything applied so far to the checkpoint thread: freezes the
    /// memtable and snapshots the stream heads here, between groups, so the two agree. Waits
    /// when two checkpoints are already queued.
    fn checkpoint(&mut self, replies: Vec<oneshot::Sender<Result<()>>>) {
        let nothing_new =
            self.checkpointed == self.next_position && self.shared.index.mem_len() == 0;
        if nothing_new && replies.is_empty() {
            return;
        }
        // With nothing new, the job only waits for the checkpoints before it (a barrier), so
        // that a requested checkpoint is answered once it is on disk.
        let job = Job {
            frozen: (!nothing_new).then(|| self.shared.index.freeze()),
            heads: if nothing_new {
                HeadsWrite::Unchanged
            } else {
                self.shared
                    .heads
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .take_checkpoint()
            },
            next_position: self.next_position,
            log_end: self.log_end,
            last_ts: self.last_ts,
            replies,
        };
        self.checkpointed = self.next_position;
        if let Err(std_mpsc::SendError(job)) = self.jobs.send(job) {
            // Only a checkpoint thread that stopped on a panic is gone while this one runs.
            let e = self.shared.lost_answer();
            for tx in job.replies {
                let _ = tx.send(Err(e.clone()));
            }
        }
    }

    /// Syncs what the groups wrote, once per segment file, then applies and acknowledges
    /// them in order.
    fn commit(&mut self, batch: Vec<Written>) {
        if self.failed.is_none() {
            if let Err(e) = self.sync(&batch) {
                self.shared.poison(e.to_string());
                self.failed = Some(e);
            }
        }
        let mut checkpoints = Vec::new();
        for g in batch {
            if let Some(e) = &self.failed {
                g.fail(e);
                continue;
            }
            if g.segment.is_some() {
                // Index first, then the head, then the stream heads: what stream_info and
                // list_streams report is always readable.
                self.shared.index.insert(&g.entries);
                self.next_position = g.next_position;
                self.log_end = g.log_end;
                self.last_ts = g.last_ts;
                self.shared
                    .next_position
                    .store(g.next_position, Ordering::Release);
                let mut heads = self.shared.heads.write().unwrap_or_else(|e| e.into_inner());
                for u in g.updates {
                    heads.apply(&u.stream, u.head, u.count, u.new);
                }
            }
            self.shared.synced_group.store(g.seq, Ordering::Release);
            self.shared.head_tx.send_replace(self.next_position);
            for (tx, outcome) in g.replies {
                let _ = tx.send(outcome);
            }
            checkpoints.extend(g.checkpoints);
        }
        if self.failed.is_some() {
            return;
        }
        let due = self.shared.index.mem_len() >= self.shared.config.checkpoint_entries;
        if due || !checkpoints.is_empty() {
            self.checkpoint(checkpoints);
        }
    }

    /// Makes every group of the batch durable: one sync per segment file it wrote to, in
    /// order.
    fn sync(&self, batch: &[Written]) -> Result<()> {
        let mut synced: Vec<&Arc<Segment>> = Vec::new();
        for g in batch {
            let Some(seg) = &g.segment else { continue };
            if synced.iter().any(|s| Arc::ptr_eq(s, seg)) {
                continue;
            }
            synced.push(seg);
            let started = std::time::Instant::now();
            let result = seg.file.sync_data();
            metrics::histogram!("annal_fsync_seconds").record(started.elapsed().as_secs_f64());
            result.map_err(|e| Error::io(format!("syncing {}", seg.path.display()), e))?;
        }
        if let Some(end) = batch
            .iter()
            .filter(|g| g.segment.is_some())
            .map(|g| g.log_end)
            .max()
        {
            let before = self.shared.set_synced_log_end(end);
            let per_sync = self.shared.synced_per_sync.load(Ordering::Relaxed);
            let bytes = end.saturating_sub(before);
            self.shared
                .synced_per_sync
                .store((per_sync * 7 + bytes) / 8, Ordering::Relaxed);
        }
        Ok(())
    }
}
