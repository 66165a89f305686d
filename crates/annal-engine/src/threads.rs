//! The engine's threads: started together by `Store::open`, owned by one [`Threads`] value,
//! stopped and joined in one order when it is dropped.
//!
//! | thread            | body                      | stops when                        |
//! |-------------------|---------------------------|-----------------------------------|
//! | `annal-writer`    | `write/writer.rs`         | the store drops the queue's sender |
//! | `annal-syncer`    | `write/syncer.rs`         | the writer is gone                |
//! | `annal-checkpoint`| `checkpoint/mod.rs`       | the syncer is gone (after the last checkpoint) |
//! | `annal-prealloc`  | `write/prealloc.rs`       | told to, once the writer is gone  |
//! | `annal-snapshots` | `snapshots/keeper.rs`     | the store drops its queue's sender |
//!
//! A panic in any of them poisons the store with the panic's message, as a failed fsync
//! does: writes are refused with `Poisoned` until the store is reopened, and reads go on.
//! A request whose answer the panicking thread held gets `Poisoned` as well.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc as std_mpsc, Arc};
use std::thread::JoinHandle;

use annal_core::{Error, Result};
use tokio::sync::mpsc;

use crate::checkpoint::{Checkpointer, Manifest};
use crate::shared::Shared;
use crate::snapshots::keeper::{Keeper, SnapshotCommand, QUEUE_DEPTH};
use crate::write::prealloc::{filler, FillerStop};
use crate::write::syncer::Syncer;
use crate::write::writer::{Tail, Writer};
use crate::write::Command;

/// Where the threads start from: what recovery found.
pub(crate) struct Start {
    pub tail: Tail,
    /// The checkpoint in force.
    pub manifest: Manifest,
    /// Where the next group of snapshot records goes, and the last group's sequence.
    pub snapshot_end: u64,
    pub snapshot_sequence: u64,
}

/// Every engine thread, and the queue to the writer. Dropping it stops them: the queue's
/// sender first, then each thread is joined after the one that feeds it.
pub(crate) struct Threads {
    queue: Option<mpsc::Sender<Command>>,
    writer: Option<JoinHandle<()>>,
    syncer: Option<JoinHandle<()>>,
    checkpointer: Option<JoinHandle<()>>,
    filler: Option<(FillerStop, JoinHandle<()>)>,
    snapshot_queue: Option<mpsc::Sender<SnapshotCommand>>,
    keeper: Option<JoinHandle<()>>,
}

/// The message of a panic's payload.
fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message")
}

/// Starts `body` on a thread named `annal-<name>`; a panic in it poisons the store.
fn spawn(
    name: &'static str,
    shared: &Arc<Shared>,
    body: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>> {
    let shared = Arc::clone(shared);
    std::thread::Builder::new()
        .name(format!("annal-{name}"))
        .spawn(move || {
            if let Err(panic) = catch_unwind(AssertUnwindSafe(body)) {
                shared.poison(format!(
                    "the {name} thread panicked: {}",
                    panic_message(panic.as_ref())
                ));
            }
        })
        .map_err(|e| Error::io(format!("starting the {name} thread"), e))
}

impl Threads {
    /// Starts the threads over `shared`, from where recovery left the store. A thread that
    /// cannot be started stops the ones started before it and fails the open.
    pub fn start(shared: &Arc<Shared>, start: Start) -> Result<Threads> {
        let mut threads = Threads {
            queue: None,
            writer: None,
            syncer: None,
            checkpointer: None,
            filler: None,
            snapshot_queue: None,
            keeper: None,
        };
        let (queue, commands) = mpsc::channel(shared.config.queue_depth);
        let (to_syncer, groups) = std_mpsc::channel();
        // At most two checkpoints wait for the checkpoint thread.
        let (to_checkpointer, jobs) = std_mpsc::sync_channel(1);

        let checkpointed = start.manifest.next_position;
        let checkpointer = Checkpointer::new(Arc::clone(shared), jobs, start.manifest);
        threads.checkpointer = Some(spawn("checkpoint", shared, move || checkpointer.run())?);

        let syncer = Syncer::new(
            Arc::clone(shared),
            groups,
            to_checkpointer,
            queue.downgrade(),
            checkpointed,
            start.tail.next_position,
            start.tail.last_ts,
        );
        threads.syncer = Some(spawn("syncer", shared, move || syncer.run())?);

        let mut zeros = None;
        if shared.config.preallocate > 0 {
            let (handle, body, stop) = filler(shared.config.preallocate);
            let fs = Arc::clone(&shared.fs);
            threads.filler = Some((stop, spawn("prealloc", shared, move || body.run(&*fs))?));
            zeros = Some(handle);
        }

        let writer = Writer::new(Arc::clone(shared), commands, to_syncer, start.tail, zeros);
        threads.writer = Some(spawn("writer", shared, move || writer.run())?);
        threads.queue = Some(queue);

        let (snapshot_queue, snapshot_commands) = mpsc::channel(QUEUE_DEPTH);
        let keeper = Keeper::new(
            Arc::clone(shared),
            snapshot_commands,
            start.snapshot_end,
            start.snapshot_sequence,
        );
        threads.keeper = Some(spawn("snapshots", shared, move || keeper.run())?);
        threads.snapshot_queue = Some(snapshot_queue);
        Ok(threads)
    }

    /// What waits for the preallocation thread, when there is one.
    #[cfg(any(test, feature = "sim"))]
    pub fn filler(&self) -> Option<FillerStop> {
        self.filler.as_ref().map(|(stop, _)| stop.clone())
    }

    /// The writer's queue; `None` once the store is closing.
    pub fn queue(&self) -> Option<&mpsc::Sender<Command>> {
        self.queue.as_ref()
    }

    /// The snapshot keeper's queue; `None` once the store is closing.
    pub fn snapshot_queue(&self) -> Option<&mpsc::Sender<SnapshotCommand>> {
        self.snapshot_queue.as_ref()
    }

    /// Stops every thread, in order: the snapshot keeper and the writer answer what is
    /// queued and stop, the syncer commits what was written and hands out a last
    /// checkpoint, the checkpoint thread writes it, and the filler stops last.
    pub fn stop(&mut self) {
        self.queue = None;
        self.snapshot_queue = None;
        for handle in [
            self.keeper.take(),
            self.writer.take(),
            self.syncer.take(),
            self.checkpointer.take(),
        ]
        .into_iter()
        .flatten()
        {
            // A panic was caught in the thread and poisoned the store.
            let _ = handle.join();
        }
        if let Some((stop, handle)) = self.filler.take() {
            stop.stop();
            let _ = handle.join();
        }
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        self.stop();
    }
}
