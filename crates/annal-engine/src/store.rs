//! The public handle: [`Store`], its [`Config`], and the state its threads share.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use annal_core::{
    validate, AppendRequest, AppendResult, AsOf, CategoryInfo, Direction, Error, EventStore,
    EventStream, ListCategories, ListStreams, ReadRequest, RecordedEvent, Result, Source,
    StreamInfo, SubscribeFrom, SubscribeRequest, SubscriptionStream, Timestamp,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::format::StoredEvent;
use crate::heads::{to_info, Heads};
use crate::index::{fixed_key, key, Index, KIND_STREAM, KIND_TIME};
use crate::io::{Fs, StdFs};
use crate::log::Log;
use crate::read::{Cursor, ReadStream, Subscription};
use crate::recovery::recover;
use crate::writer::{Command, Writer};

/// The most bytes of events one request may carry: its record's length field is 32 bits.
const MAX_RECORD_BYTES: usize = 3 << 30;

/// How a store is opened. Every field has a default; the engine reads no environment or file.
#[derive(Clone)]
pub struct Config {
    /// A segment is closed and a new one started once it holds this many bytes.
    pub segment_size: u64,
    /// The largest event accepted, in bytes (data plus everything it carries).
    pub max_event_size: usize,
    /// The largest append request accepted, in bytes.
    pub max_append_size: usize,
    /// Index entries kept in memory before a checkpoint writes them out.
    pub checkpoint_entries: usize,
    /// Append requests waiting for the writer before senders wait.
    pub queue_depth: usize,
    /// Bytes of zeros kept written and synced beyond the end of the log in the active
    /// segment, so that a sync writes only the records (not the file's new length and
    /// blocks); 0 turns preallocation off.
    pub preallocate: u64,
    /// The file system (the real one unless a test supplies another).
    pub fs: Arc<dyn Fs>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            segment_size: 256 * 1024 * 1024,
            max_event_size: validate::DEFAULT_MAX_EVENT_SIZE,
            max_append_size: 64 * 1024 * 1024,
            checkpoint_entries: 1 << 20,
            queue_depth: 4096,
            preallocate: 8 << 20,
            fs: Arc::new(StdFs),
        }
    }
}

impl Config {
    pub fn segment_size(mut self, bytes: u64) -> Self {
        self.segment_size = bytes;
        self
    }
    /// At most 3 GiB: a request is one record, whose length field is 32 bits.
    pub fn max_event_size(mut self, bytes: usize) -> Self {
        self.max_event_size = bytes.min(MAX_RECORD_BYTES);
        self
    }
    /// At most 3 GiB: a request is one record, whose length field is 32 bits.
    pub fn max_append_size(mut self, bytes: usize) -> Self {
        self.max_append_size = bytes.min(MAX_RECORD_BYTES);
        self
    }
    pub fn checkpoint_entries(mut self, entries: usize) -> Self {
        self.checkpoint_entries = entries.max(1);
        self
    }
    pub fn queue_depth(mut self, depth: usize) -> Self {
        self.queue_depth = depth.max(1);
        self
    }
    /// Bytes of zeros kept ahead of the log (0: off).
    pub fn preallocate(mut self, bytes: u64) -> Self {
        self.preallocate = bytes;
        self
    }
    pub fn fs(mut self, fs: Arc<dyn Fs>) -> Self {
        self.fs = fs;
        self
    }
}

/// State shared by the writer thread, readers and subscriptions.
pub(crate) struct Shared {
    pub fs: Arc<dyn Fs>,
    pub dir: PathBuf,
    pub config: Config,
    pub log: Log,
    pub index: Index,
    pub heads: RwLock<Heads>,
    /// Events below this position are durable and visible.
    pub next_position: AtomicU64,
    pub head_tx: watch::Sender<u64>,
    pub poisoned: Mutex<Option<String>>,
    pub closed: AtomicBool,
    /// The last group the syncer has applied (the writer forgets pending state up to it).
    pub synced_group: AtomicU64,
    /// The log offset below which the log is known durable.
    pub synced_log_end: AtomicU64,
    /// What each sync of the log has made durable lately, in bytes (a moving average kept
    /// by the sync thread; preallocation rests while it is large).
    pub synced_per_sync: AtomicU64,
}

impl Shared {
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub fn poison_cause(&self) -> Option<String> {
        self.poisoned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn head(&self) -> Option<u64> {
        self.next_position.load(Ordering::Acquire).checked_sub(1)
    }

    /// The last position recorded at or before `at`.
    pub fn position_at(&self, at: Timestamp) -> Result<Option<u64>> {
        if at.0 < 0 {
            return Ok(None);
        }
        // Clamped to the head: the time index may hold a group being applied right now.
        let found = self
            .index
            .floor(fixed_key(KIND_TIME), at.0 as u64)?
            .map(|(_, last)| last);
        Ok(match (found, self.head()) {
            (Some(p), Some(h)) => Some(p.min(h)),
            _ => None,
        })
    }

    /// The highest position a read as of `as_of` may return.
    fn read_limit(&self, as_of: Option<AsOf>) -> Result<Option<u64>> {
        let head = self.head();
        let cut = match as_of {
            None => return Ok(head),
            Some(AsOf::Position(p)) => Some(p),
            Some(AsOf::Time(t)) => self.position_at(t)?,
        };
        Ok(match (head, cut) {
            (Some(h), Some(c)) => Some(h.min(c)),
            _ => None,
        })
    }
}

/// An Annal store opened in this process.
///
/// Appends go to one writer thread that commits whatever has queued with one fsync (group
/// commit) and acknowledges only after it. Reads and subscriptions run on the caller's
/// thread and never wait for the writer.
pub struct Store {
    shared: Arc<Shared>,
    tx: Mutex<Option<mpsc::Sender<Command>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    _lock: Box<dyn Send + Sync>,
}

/// A read run on the caller's thread that gives each event as a view of how it is stored. A
/// forward read of the whole log takes its events straight out of the log's records, with no
/// owned copy of any of them; every other read decodes each event first.
pub struct StoredRead(Cursor);

impl StoredRead {
    /// Gives `f` each event of the read until `f` returns false or the read ends.
    pub fn visit(mut self, mut f: impl FnMut(&StoredEvent<'_>) -> bool) -> Result<()> {
        self.0.visit(&mut f)
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
            .map_err(|e| Error::io(format!("creating {}", dir.display()), &e))?;
        let lock = fs.lock(&dir.join("LOCK")).map_err(|e| {
            if e.kind() == std::io::ErrorKind::WouldBlock {
                Error::Unavailable(format!(
                    "the store in {} is open in another process",
                    dir.display()
                ))
            } else {
                Error::io(format!("locking {}", dir.display()), &e)
            }
        })?;
        let rec = recover(fs.as_ref(), &dir)?;
        let index = Index::default();
        {
            let mut s = index.state.write().unwrap_or_else(|e| e.into_inner());
            s.runs = rec.runs.clone();
            s.mem.insert_all(&rec.entries);
        }
        let (head_tx, _) = watch::channel(rec.next_position);
        let shared = Arc::new(Shared {
            fs,
            dir,
            log: Log {
                segments: RwLock::new(rec.segments.clone()),
            },
            index,
            heads: RwLock::new(rec.heads.clone()),
            next_position: AtomicU64::new(rec.next_position),
            head_tx,
            poisoned: Mutex::new(None),
            closed: AtomicBool::new(false),
            synced_group: AtomicU64::new(0),
            synced_log_end: AtomicU64::new(rec.log_end),
            synced_per_sync: AtomicU64::new(0),
            config: config.clone(),
        });
        let (tx, rx) = mpsc::channel(config.queue_depth);
        let writer = Writer::new(shared.clone(), rx, &rec);
        let handle = std::thread::Builder::new()
            .name("annal-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| Error::io("starting the writer thread", &e))?;
        Ok(Store {
            shared,
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(handle)),
            _lock: lock,
        })
    }

    /// The folder the store lives in.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The log's last position now (`EventStore::head` without the future).
    pub fn head_now(&self) -> Option<u64> {
        self.shared.head()
    }

    /// Why the store refuses writes, when an earlier failure poisoned it.
    pub fn poison_cause(&self) -> Option<String> {
        self.shared.poison_cause()
    }

    fn sender(&self) -> Result<mpsc::Sender<Command>> {
        self.tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(Error::Closed)
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
        if let Some(cause) = self.shared.poison_cause() {
            return Err(Error::Poisoned { cause });
        }
        Ok(())
    }

    /// Appends from synchronous code. Must not be called from inside an async runtime.
    pub fn append_blocking(&self, request: AppendRequest) -> Result<AppendResult> {
        self.check_append(&request)?;
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .blocking_send(Command::Append(request, reply))
            .map_err(|_| Error::Closed)?;
        rx.blocking_recv().map_err(|_| Error::Closed)?
    }

    /// Writes a checkpoint now (indexes and stream heads), so that reopening replays nothing.
    pub fn checkpoint_blocking(&self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .blocking_send(Command::Checkpoint(reply))
            .map_err(|_| Error::Closed)?;
        rx.blocking_recv().map_err(|_| Error::Closed)?
    }

    /// A synchronous iterator over a read.
    pub fn read_iter(
        &self,
        request: ReadRequest,
    ) -> Result<impl Iterator<Item = Result<RecordedEvent>>> {
        let mut cursor = self.cursor(&request)?;
        let mut done = false;
        Ok(std::iter::from_fn(move || {
            if done {
                return None;
            }
            match cursor.next_event() {
                Ok(Some(e)) => Some(Ok(e)),
                Ok(None) => {
                    done = true;
                    None
                }
                Err(e) => {
                    done = true;
                    Some(Err(e))
                }
            }
        }))
    }

    /// A read whose events are handed out as stored (see [`StoredRead`]); the request is
    /// checked now.
    pub fn read_stored(&self, request: ReadRequest) -> Result<StoredRead> {
        Ok(StoredRead(self.cursor(&request)?))
    }

    fn cursor(&self, request: &ReadRequest) -> Result<Cursor> {
        validate::read(request)?;
        let max = self.shared.read_limit(request.as_of)?;
        Ok(Cursor::new(
            self.shared.clone(),
            &request.source,
            request.from,
            request.direction,
            request.limit,
            max,
        ))
    }

    /// The stream's first revision whose position is after `position`.
    fn stream_revision_after(&self, stream: &str, position: u64) -> Result<u64> {
        let Some(h) = self
            .shared
            .heads
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .info(stream)
        else {
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
        self.shutdown()
    }

    fn shutdown(&self) -> Result<()> {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        let handle = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            h.join()
                .map_err(|_| Error::Internal("the writer thread panicked".into()))?;
        }
        self.shared.closed.store(true, Ordering::Release);
        self.shared.head_tx.send_modify(|_| {});
        Ok(())
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

impl EventStore for Store {
    async fn append(&self, request: AppendRequest) -> Result<AppendResult> {
        self.check_append(&request)?;
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .send(Command::Append(request, reply))
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    async fn read(&self, request: ReadRequest) -> Result<EventStream> {
        let cursor = self.cursor(&request)?;
        Ok(Box::pin(ReadStream {
            cursor,
            done: false,
        }))
    }

    async fn subscribe(&self, request: SubscribeRequest) -> Result<SubscriptionStream> {
        validate::subscribe(&request)?;
        let rx = self.shared.head_tx.subscribe();
        let next_position = *rx.borrow();
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
        Ok(self
            .shared
            .heads
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .info(stream_id))
    }

    async fn list_streams(&self, request: ListStreams) -> Result<Vec<StreamInfo>> {
        let heads = self.shared.heads.read().unwrap_or_else(|e| e.into_inner());
        let limit = if request.limit == 0 {
            usize::MAX
        } else {
            request.limit
        };
        let start = match (&request.after, &request.prefix) {
            (Some(a), Some(p)) if a < p => std::ops::Bound::Included(p.clone()),
            (Some(a), _) => std::ops::Bound::Excluded(a.clone()),
            (None, Some(p)) => std::ops::Bound::Included(p.clone()),
            (None, None) => std::ops::Bound::Unbounded,
        };
        let prefix = request.prefix.unwrap_or_default();
        Ok(heads
            .streams
            .range((start, std::ops::Bound::Unbounded))
            .take_while(|(id, _)| id.starts_with(&prefix))
            .take(limit)
            .map(|(id, h)| to_info(id, h))
            .collect())
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
}
