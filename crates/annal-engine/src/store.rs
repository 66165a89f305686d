//! The public handle: [`Store`], what it opens, and the `EventStore` it implements.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use annal_core::{
    validate, AppendRequest, AppendResult, CategoryInfo, Direction, Error, EventStore, EventStream,
    ListCategories, ListStreams, NewSnapshot, ReadRequest, RecordedEvent, Result, Snapshot, Source,
    StreamInfo, SubscribeFrom, SubscribeRequest, SubscriptionStream, Timestamp,
};
use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::heads::{list, lookup, to_info, Heads};
use crate::index::{key, Index, KIND_STREAM};
use crate::io::Fs;
use crate::layout::lock_path;
use crate::log::format::StoredEvent;
use crate::log::Log;
use crate::read::{Cursor, ReadStream, Subscription};
use crate::recovery::recover;
use crate::shared::Shared;
use crate::snapshots::keeper::SnapshotCommand;
use crate::threads::{Start, Threads};
use crate::write::writer::Tail;
use crate::write::{Checked, Command};

/// What an open store holds in memory, by part, in bytes ([`Store::memory`]). Only the
/// changed heads and the memtable grow between checkpoints; every other part is bounded by
/// a setting or grows with what the checkpoint's files hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    /// Heads changed since the last checkpoint, and those of checkpoints not yet on disk
    /// (estimated per head).
    pub heads_changed: u64,
    /// The heads files' fences and filters.
    pub heads_footers: u64,
    /// The heads block cache (at most `Config::head_cache_bytes`).
    pub head_cache: u64,
    /// The index runs' fences, block starts and block checksums.
    pub run_fences: u64,
    /// The filters of runs small enough to keep them.
    pub run_filters: u64,
    /// The filter over the event ids of every run.
    pub id_filter: u64,
    /// Entries of the memtable and of frozen ones (not bytes).
    pub memtable_entries: u64,
}

/// An Annal store opened in this process.
///
/// Appends go to one writer thread that commits whatever has queued with one fsync (group
/// commit) and acknowledges only after it. Reads and subscriptions run on the caller's
/// thread and never wait for the writer.
pub struct Store {
    shared: Arc<Shared>,
    threads: Mutex<Threads>,
    _lock: Box<dyn Send + Sync>,
}

/// A read run on the caller's thread that gives each event as a view of how it is stored. A
/// forward read of the whole log takes its events straight out of the log's records, with no
/// owned copy of any of them; every other read decodes each event first.
pub struct StoredRead(Cursor, Option<u64>);

impl StoredRead {
    /// The log's last position when the read was served.
    pub fn head(&self) -> Option<u64> {
        self.1
    }

    /// Gives `f` each event of the read until `f` returns false or the read ends.
    pub fn visit(mut self, mut f: impl FnMut(&StoredEvent<'_>) -> bool) -> Result<()> {
        self.0.visit(&mut f)
    }
}

/// How long opening waits for a lock another holder is releasing.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Takes the store's lock. A process that forks while it holds the lock shares it with the
/// child until the child execs, so a store just closed in this process can look open for a
/// moment; a lock that stays taken for `LOCK_WAIT` is another process's.
fn lock(fs: &dyn Fs, dir: &Path) -> Result<Box<dyn Send + Sync>> {
    let path = lock_path(dir);
    let started = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        match fs.lock(&path) {
            Ok(lock) => return Ok(lock),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if started.elapsed() >= LOCK_WAIT {
                    return Err(Error::Unavailable(format!(
                        "the store in {} is open in another process",
                        dir.display()
                    )));
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(100));
            }
            Err(e) => return Err(Error::io(format!("locking {}", dir.display()), e)),
        }
    }
}

impl Store {
    /// Opens (or creates) the store in `dir` with the default configuration.
    pub fn open(dir: impl AsRef<Path>) -> Result<Store> {
        Self::open_with(dir, Config::default())
    }

    /// Opens (or creates) the store in `dir`.
    pub fn open_with(dir: impl AsRef<Path>, config: Config) -> Result<Store> {
        let dir = dir.as_ref().to_path_buf();
        let fs = config.fs.clone();
        fs.create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let lock = lock(fs.as_ref(), &dir)?;
        let rec = recover(fs.as_ref(), &dir, config.head_cache_bytes)?;
        let snapshots = crate::snapshots::open(fs.as_ref(), &dir)?;
        let index = Index::default();
        {
            let mut s = index.state.write().unwrap_or_else(|e| e.into_inner());
            s.runs = rec.runs;
            s.mem.insert_all(&rec.entries);
        }
        let start = Start {
            tail: Tail {
                active: rec
                    .segments
                    .last()
                    .cloned()
                    .ok_or_else(|| Error::Internal("recovery left no segment".into()))?,
                active_len: rec.active_len,
                log_end: rec.log_end,
                next_position: rec.next_position,
                last_ts: rec.last_recorded_at,
            },
            manifest: rec.manifest,
            snapshot_end: snapshots.end,
            snapshot_sequence: snapshots.sequence,
        };
        let shared = Arc::new(Shared::new(
            dir,
            config,
            Log::new(rec.segments),
            index,
            rec.heads,
            rec.next_position,
            rec.log_end,
        ));
        *shared.snapshots.write() = snapshots.table;
        let threads = Threads::start(&shared, start)?;
        Ok(Store {
            shared,
            threads: Mutex::new(threads),
            _lock: lock,
        })
    }

    /// What the engine holds in memory now, by part.
    pub fn memory(&self) -> Memory {
        let (heads_changed, heads_footers, head_cache) = self
            .shared
            .heads
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .memory();
        let (run_fences, run_filters, id_filter, memtable_entries) = self.shared.index.memory();
        Memory {
            heads_changed,
            heads_footers,
            head_cache,
            run_fences,
            run_filters,
            id_filter,
            memtable_entries,
        }
    }

    /// The folder the store lives in.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The log's last position now (`EventStore::head` without the future).
    pub fn head_now(&self) -> Option<u64> {
        self.shared.head()
    }

    /// Waits until the preallocation thread has written and synced every zero due now
    /// (feature `sim`, for tests that look at segment files).
    #[cfg(any(test, feature = "sim"))]
    pub fn wait_preallocated(&self) {
        let filler = self
            .threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .filler();
        if let Some(f) = filler {
            f.wait_idle();
        }
    }

    /// Why the store refuses writes, when an earlier failure poisoned it.
    pub fn poison_cause(&self) -> Option<String> {
        self.shared.poison_cause()
    }

    fn sender(&self) -> Result<mpsc::Sender<Command>> {
        self.threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .queue()
            .cloned()
            .ok_or(Error::Closed)
    }

    fn snapshot_sender(&self) -> Result<mpsc::Sender<SnapshotCommand>> {
        self.threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .snapshot_queue()
            .cloned()
            .ok_or(Error::Closed)
    }

    /// Checks a snapshot put before it is queued: its stream has reached its revision (the
    /// heads hold only what is durable, so that stays true).
    fn check_snapshot(&self, snapshot: &NewSnapshot) -> Result<()> {
        validate::snapshot(snapshot, self.shared.config.max_event_size)?;
        let last = lookup(&self.shared.heads, &snapshot.stream_id)?.map(|h| h.revision);
        validate::snapshot_revision(snapshot, last)?;
        self.shared.check_poison()
    }

    /// Checks a delete of a stream's snapshots; false when the stream has none, so that
    /// there is nothing to write (a put that was answered is in the table already).
    fn check_delete(&self, stream_id: &str) -> Result<bool> {
        validate::stream_id(stream_id)?;
        self.shared.check_poison()?;
        Ok(self.shared.snapshots.read().streams.contains_key(stream_id))
    }

    /// Keeps a snapshot, from synchronous code (see [`EventStore::put_snapshot`]). Must not
    /// be called from inside an async runtime.
    pub fn put_snapshot_blocking(&self, snapshot: NewSnapshot) -> Result<()> {
        self.check_snapshot(&snapshot)?;
        let (reply, rx) = oneshot::channel();
        self.snapshot_sender()?
            .blocking_send(SnapshotCommand::Put(snapshot, reply))
            .map_err(|_| self.shared.lost_answer())?;
        rx.blocking_recv().map_err(|_| self.shared.lost_answer())?
    }

    /// Deletes a stream's snapshots, from synchronous code (see
    /// [`EventStore::delete_snapshots`]). Must not be called from inside an async runtime.
    pub fn delete_snapshots_blocking(&self, stream_id: &str) -> Result<u64> {
        if !self.check_delete(stream_id)? {
            return Ok(0);
        }
        let (reply, rx) = oneshot::channel();
        self.snapshot_sender()?
            .blocking_send(SnapshotCommand::Delete(stream_id.to_string(), reply))
            .map_err(|_| self.shared.lost_answer())?;
        rx.blocking_recv().map_err(|_| self.shared.lost_answer())?
    }

    /// A stream's snapshot (see [`EventStore::get_snapshot`]), on the caller's thread.
    pub fn get_snapshot_now(
        &self,
        stream_id: &str,
        at_or_before: Option<u64>,
    ) -> Result<Option<Snapshot>> {
        validate::stream_id(stream_id)?;
        self.shared.snapshots.get(stream_id, at_or_before)
    }

    fn check_append(&self, request: &AppendRequest) -> Result<()> {
        validate::append(request, self.shared.config.max_event_size)?;
        let size: usize = request
            .streams
            .iter()
            .flat_map(|s| s.events.iter())
            .map(|e| e.size())
            .sum();
        if size > self.shared.config.max_append_size {
            return Err(Error::TooLarge {
                what: "append request".into(),
                size,
                limit: self.shared.config.max_append_size,
            });
        }
        self.shared.check_poison()
    }

    /// Checks a request's condition against the log as it is now, on the caller's thread,
    /// so that the writer only checks what comes after (the writer still decides: an
    /// idempotent retry or a wrong expected revision is answered before the condition).
    fn precheck(&self, request: &AppendRequest) -> Result<Option<Checked>> {
        let (Some(c), Some(head)) = (&request.condition, self.shared.head()) else {
            return Ok(None);
        };
        let from = c.after.map_or(0, |a| a.saturating_add(1));
        Ok(Some(Checked {
            through: head,
            found: crate::read::first_match(&self.shared, &c.query, from, head)?,
        }))
    }

    /// Appends from synchronous code. Must not be called from inside an async runtime.
    pub fn append_blocking(&self, request: AppendRequest) -> Result<AppendResult> {
        self.check_append(&request)?;
        let checked = self.precheck(&request)?;
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .blocking_send(Command::Append(request, checked, reply))
            .map_err(|_| self.shared.lost_answer())?;
        rx.blocking_recv().map_err(|_| self.shared.lost_answer())?
    }

    /// Writes a checkpoint now (indexes and stream heads), so that reopening replays nothing.
    pub fn checkpoint_blocking(&self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .blocking_send(Command::Checkpoint(reply))
            .map_err(|_| self.shared.lost_answer())?;
        rx.blocking_recv().map_err(|_| self.shared.lost_answer())?
    }

    /// A synchronous iterator over a read.
    pub fn read_iter(
        &self,
        request: ReadRequest,
    ) -> Result<impl Iterator<Item = Result<RecordedEvent>>> {
        // Whole chunks out of the cursor, each event moved once out of its chunk: cheaper
        // than taking them from the cursor's buffer one by one.
        let mut chunks = self.read_chunks(request)?;
        let mut chunk = Vec::new().into_iter();
        Ok(std::iter::from_fn(move || loop {
            if let Some(e) = chunk.next() {
                return Some(Ok(e));
            }
            match chunks.next()? {
                Ok(next) => chunk = next.into_iter(),
                Err(e) => return Some(Err(e)),
            }
        }))
    }

    /// A synchronous iterator over a read that gives its events a chunk at a time, in
    /// order: the fastest way to replay many events, as each is decoded in place and never
    /// moved again.
    pub fn read_chunks(
        &self,
        request: ReadRequest,
    ) -> Result<impl Iterator<Item = Result<Vec<RecordedEvent>>>> {
        let (_, mut cursor) = self.cursor(&request)?;
        let mut done = false;
        Ok(std::iter::from_fn(move || {
            if done {
                return None;
            }
            let next = cursor.next_chunk();
            done = !matches!(next, Ok(Some(_)));
            next.transpose()
        }))
    }

    /// A read whose events are handed out as stored (see [`StoredRead`]); the request is
    /// checked now.
    pub fn read_stored(&self, request: ReadRequest) -> Result<StoredRead> {
        let (head, cursor) = self.cursor(&request)?;
        Ok(StoredRead(cursor, head))
    }

    /// The head of the log now, and a cursor over the read up to it.
    fn cursor(&self, request: &ReadRequest) -> Result<(Option<u64>, Cursor)> {
        validate::read(request)?;
        let (head, max) = self.shared.read_bounds(request.as_of)?;
        Ok((
            head,
            Cursor::new(
                self.shared.clone(),
                &request.source,
                request.from,
                request.direction,
                request.limit,
                max,
            ),
        ))
    }

    /// The stream's first revision whose position is after `position`.
    fn stream_revision_after(&self, stream: &str, position: u64) -> Result<u64> {
        let Some(h) = lookup(&self.shared.heads, stream)? else {
            return Ok(0);
        };
        if h.last_position <= position {
            return Ok(h.revision + 1);
        }
        let k = key(KIND_STREAM, stream.as_bytes());
        // Positions grow with revisions: binary search the revisions.
        let (mut lo, mut hi) = (0u64, h.revision);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let pos = self
                .shared
                .index
                .scan(k, mid, mid, Direction::Forward, 64)?
                .into_iter()
                .map(|(_, p)| p)
                .find(|&p| {
                    crate::read::fetch_event(&self.shared, p).is_ok_and(|e| e.stream_id == stream)
                })
                .unwrap_or(u64::MAX);
            if pos > position {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Ok(lo)
    }

    /// Stops the writer after the appends already queued, writes a checkpoint and closes.
    pub fn close(self) -> Result<()> {
        self.shutdown();
        Ok(())
    }

    fn shutdown(&self) {
        self.threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stop();
        self.shared.closed.store(true, Ordering::Release);
        self.shared.head_tx.send_modify(|_| {});
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl EventStore for Store {
    async fn append(&self, request: AppendRequest) -> Result<AppendResult> {
        self.check_append(&request)?;
        let checked = self.precheck(&request)?;
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .send(Command::Append(request, checked, reply))
            .await
            .map_err(|_| self.shared.lost_answer())?;
        rx.await.map_err(|_| self.shared.lost_answer())?
    }

    async fn read(&self, request: ReadRequest) -> Result<EventStream> {
        let (head, cursor) = self.cursor(&request)?;
        Ok(EventStream::new(
            head,
            ReadStream {
                cursor,
                done: false,
            },
        ))
    }

    async fn subscribe(&self, request: SubscribeRequest) -> Result<SubscriptionStream> {
        validate::subscribe(&request)?;
        let rx = self.shared.head_tx.subscribe();
        let next_position = *rx.borrow();
        validate::resume_point(request.from, next_position.checked_sub(1))?;
        let from = match (&request.source, request.from) {
            (Source::Stream(_), SubscribeFrom::Start) => 0,
            (Source::Stream(s), SubscribeFrom::After(p)) => self.stream_revision_after(s, p)?,
            (Source::Stream(s), SubscribeFrom::Now) => match next_position.checked_sub(1) {
                Some(p) => self.stream_revision_after(s, p)?,
                None => 0,
            },
            (_, SubscribeFrom::Start) => 0,
            (_, SubscribeFrom::After(p)) => p.saturating_add(1),
            (_, SubscribeFrom::Now) => next_position,
        };
        let cursor = Cursor::new(
            self.shared.clone(),
            &request.source,
            Some(from),
            Direction::Forward,
            None,
            next_position.checked_sub(1),
        );
        Ok(Box::pin(Subscription {
            cursor,
            rx: Some(rx),
            wait: None,
            caught_up: false,
            reported: None,
            done: false,
        }))
    }

    async fn stream_info(&self, stream_id: &str) -> Result<Option<StreamInfo>> {
        validate::stream_id(stream_id)?;
        Ok(lookup(&self.shared.heads, stream_id)?.map(|h| to_info(stream_id, &h)))
    }

    async fn list_streams(&self, request: ListStreams) -> Result<Vec<StreamInfo>> {
        let limit = if request.limit == 0 {
            usize::MAX
        } else {
            request.limit
        };
        let start = match (&request.after, &request.prefix) {
            (Some(a), Some(p)) if a < p => std::ops::Bound::Included(p.as_str()),
            (Some(a), _) => std::ops::Bound::Excluded(a.as_str()),
            (None, Some(p)) => std::ops::Bound::Included(p.as_str()),
            (None, None) => std::ops::Bound::Unbounded,
        };
        let prefix = request.prefix.as_deref().unwrap_or_default();
        let listed = list(&self.shared.heads, start, prefix, limit)?;
        Ok(listed.iter().map(|(id, h)| to_info(id, h)).collect())
    }

    async fn list_categories(&self, request: ListCategories) -> Result<Vec<CategoryInfo>> {
        let heads = self.shared.heads.read().unwrap_or_else(|e| e.into_inner());
        let limit = if request.limit == 0 {
            usize::MAX
        } else {
            request.limit
        };
        let start = match request.after {
            Some(a) => std::ops::Bound::Excluded(a),
            None => std::ops::Bound::Unbounded,
        };
        Ok(heads
            .categories
            .range((start, std::ops::Bound::Unbounded))
            .take(limit)
            .map(|(name, c)| Heads::category_info(name, c))
            .collect())
    }

    async fn position_at(&self, at: Timestamp) -> Result<Option<u64>> {
        self.shared.position_at(at)
    }

    async fn head(&self) -> Result<Option<u64>> {
        Ok(self.shared.head())
    }

    async fn put_snapshot(&self, snapshot: NewSnapshot) -> Result<()> {
        self.check_snapshot(&snapshot)?;
        let (reply, rx) = oneshot::channel();
        self.snapshot_sender()?
            .send(SnapshotCommand::Put(snapshot, reply))
            .await
            .map_err(|_| self.shared.lost_answer())?;
        rx.await.map_err(|_| self.shared.lost_answer())?
    }

    async fn get_snapshot(
        &self,
        stream_id: &str,
        at_or_before: Option<u64>,
    ) -> Result<Option<Snapshot>> {
        self.get_snapshot_now(stream_id, at_or_before)
    }

    async fn delete_snapshots(&self, stream_id: &str) -> Result<u64> {
        if !self.check_delete(stream_id)? {
            return Ok(0);
        }
        let (reply, rx) = oneshot::channel();
        self.snapshot_sender()?
            .send(SnapshotCommand::Delete(stream_id.to_string(), reply))
            .await
            .map_err(|_| self.shared.lost_answer())?;
        rx.await.map_err(|_| self.shared.lost_answer())?
    }
}
