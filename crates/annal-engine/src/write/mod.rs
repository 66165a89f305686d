//! The write path: a writer thread and a sync thread in a pipeline, with a preallocation
//! thread keeping zeros ahead of the log.
//!
//! The **writer** (`writer.rs`) owns the tail of the log. It takes every append request that
//! has queued, checks each against the stream heads, the event id index and its DCB
//! condition (seeing every request before it, including those still waiting for their
//! sync: `pending.rs`), encodes the accepted ones into one buffer and writes it at the end
//! of the active segment. Then it hands the group to the syncer and goes on with the next
//! group at once.
//!
//! The **syncer** (`syncer.rs`) takes every group that has been written, syncs the segment
//! files once for all of them (group commit), and only then adds their index entries,
//! updates the stream heads, publishes the new head and acknowledges the requests, in
//! order. While it syncs, the writer gathers and writes the next group, so a sync is never
//! idle waiting for clients and clients never wait for a sync that could have included
//! them. It also hands checkpoints to the checkpoint thread. When it has applied every
//! group written so far, it tells the writer, which then forgets those groups' requests
//! (`Command::Prune`): the memory of an answered request goes back at once, not when the
//! next request comes.
//!
//! The **filler** (`prealloc.rs`) keeps synced zeros ahead of the log while syncs are
//! small, so that a sync writes the records and not the file's new length as well.
//!
//! A failed write or sync poisons the store: nothing after it is acknowledged.

use std::sync::Arc;

use annal_core::{AppendRequest, AppendResult, Result, Text};
use tokio::sync::oneshot;

use crate::heads::Head;
use crate::index::Entry;
use crate::log::Segment;

mod pending;
pub(crate) mod prealloc;
pub(crate) mod syncer;
pub(crate) mod writer;

/// Where an append's answer goes.
pub(crate) type Reply = oneshot::Sender<Result<AppendResult>>;

/// What the store asks of the writer.
pub(crate) enum Command {
    /// A request, and what checking its condition (if any) found before it was queued.
    Append(AppendRequest, Option<Checked>, Reply),
    Checkpoint(oneshot::Sender<Result<()>>),
    /// From the syncer, once it has applied every group written so far: forget what those
    /// groups changed now rather than when the next request comes, so that the memory of
    /// requests already answered goes back at once.
    Prune,
}

/// An append condition checked against the log before the request was queued: through which
/// position, and the first event there that breaks it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Checked {
    pub through: u64,
    pub found: Option<u64>,
}

/// A stream's events of one accepted request, for the stream heads: the stream's new head,
/// how many events it gained, and whether it is new.
pub(crate) struct HeadUpdate {
    pub stream: Text,
    pub head: Head,
    pub count: u64,
    pub new: bool,
}

/// A group written to the log, waiting for its sync.
pub(crate) struct Written {
    pub seq: u64,
    /// The segment the group was written to; `None` when nothing was written.
    pub segment: Option<Arc<Segment>>,
    /// What is durable once the group is: the next position, the log's end and the last
    /// time recorded.
    pub next_position: u64,
    pub log_end: u64,
    pub last_ts: i64,
    pub entries: Vec<Entry>,
    pub updates: Vec<HeadUpdate>,
    pub replies: Vec<(Reply, Result<AppendResult>)>,
    pub checkpoints: Vec<oneshot::Sender<Result<()>>>,
}

impl Written {
    /// Answers every request of the group with `e`, except those refused already, which
    /// keep their own error.
    pub fn fail(self, e: &annal_core::Error) {
        for (tx, outcome) in self.replies {
            let _ = tx.send(match outcome {
                Ok(_) => Err(e.clone()),
                Err(refused) => Err(refused),
            });
        }
        for tx in self.checkpoints {
            let _ = tx.send(Err(e.clone()));
        }
    }
}
