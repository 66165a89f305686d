//! The state that the engine's threads, readers and subscriptions share, and poisoning: the
//! sticky state of a store that refuses writes after a failed write or sync, or a panic in
//! one of its threads.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;

use annal_core::{AsOf, Error, Result, Timestamp};
use tokio::sync::watch;
use tracing::error;

use crate::config::Config;
use crate::heads::Heads;
use crate::index::{fixed_key, Index, KIND_TIME};
use crate::io::Fs;
use crate::log::Log;
use crate::snapshots::Snapshots;

/// State shared by the writer thread, readers and subscriptions.
pub(crate) struct Shared {
    pub fs: Arc<dyn Fs>,
    pub dir: PathBuf,
    pub config: Config,
    pub log: Log,
    pub index: Index,
    pub heads: RwLock<Heads>,
    pub snapshots: Snapshots,
    /// Events below this position are durable and visible.
    pub next_position: AtomicU64,
    pub head_tx: watch::Sender<u64>,
    pub closed: AtomicBool,
    /// The last group the syncer has applied (the writer forgets pending state up to it).
    pub synced_group: AtomicU64,
    /// What each sync of the log has made durable lately, in bytes (a moving average kept
    /// by the sync thread; preallocation rests while it is large).
    pub synced_per_sync: AtomicU64,
    /// The log offset below which the log is known durable.
    synced_log_end: AtomicU64,
    /// Why the store refuses writes, once it does. Changed under `waits`' lock too, so that a
    /// thread waiting for the log to be synced wakes when the store is poisoned.
    poisoned: Mutex<Option<String>>,
    /// Held while `synced_log_end` or the poison changes, and by whoever waits on `moved`.
    waits: Mutex<()>,
    moved: Condvar,
}

impl Shared {
    pub fn new(
        dir: PathBuf,
        config: Config,
        log: Log,
        index: Index,
        heads: Heads,
        next_position: u64,
        log_end: u64,
    ) -> Shared {
        let (head_tx, _) = watch::channel(next_position);
        Shared {
            fs: config.fs.clone(),
            dir,
            config,
            log,
            index,
            heads: RwLock::new(heads),
            snapshots: Snapshots::default(),
            next_position: AtomicU64::new(next_position),
            head_tx,
            closed: AtomicBool::new(false),
            synced_group: AtomicU64::new(0),
            synced_per_sync: AtomicU64::new(0),
            synced_log_end: AtomicU64::new(log_end),
            poisoned: Mutex::new(None),
            waits: Mutex::new(()),
            moved: Condvar::new(),
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub fn poison_cause(&self) -> Option<String> {
        self.poisoned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `Err(Poisoned)` once the store refuses writes.
    pub fn check_poison(&self) -> Result<()> {
        match self.poison_cause() {
            Some(cause) => Err(Error::Poisoned { cause }),
            None => Ok(()),
        }
    }

    /// Makes the store refuse writes until it is reopened, for `cause` (the first cause
    /// wins), and logs it.
    pub fn poison(&self, cause: String) {
        error!(%cause, "the store refuses writes until it is reopened");
        let _waits = self.waits.lock().unwrap_or_else(|e| e.into_inner());
        let mut p = self.poisoned.lock().unwrap_or_else(|e| e.into_inner());
        if p.is_none() {
            *p = Some(cause);
        }
        drop(p);
        self.moved.notify_all();
    }

    /// What an append gets when its answer was lost: only an engine thread that stopped on
    /// a panic drops a request unanswered, and that thread poisons the store as soon as it
    /// has unwound (after the answers it held were dropped), so this waits for the cause.
    pub fn lost_answer(&self) -> Error {
        let waits = self.waits.lock().unwrap_or_else(|e| e.into_inner());
        let _waited = self
            .moved
            .wait_timeout_while(waits, Duration::from_secs(1), |_| {
                self.poison_cause().is_none()
            })
            .unwrap_or_else(|e| e.into_inner());
        Error::Poisoned {
            cause: self.poison_cause().unwrap_or_else(|| {
                "an engine thread stopped while the request was in flight".into()
            }),
        }
    }

    pub fn synced_log_end(&self) -> u64 {
        self.synced_log_end.load(Ordering::Acquire)
    }

    /// Records that the log is durable below `end`; returns what it was before.
    pub fn set_synced_log_end(&self, end: u64) -> u64 {
        let _waits = self.waits.lock().unwrap_or_else(|e| e.into_inner());
        let before = self.synced_log_end.swap(end, Ordering::AcqRel);
        self.moved.notify_all();
        before
    }

    /// Waits until the log is durable below `end`, or the store is poisoned.
    pub fn wait_synced(&self, end: u64) -> Result<()> {
        let mut waits = self.waits.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            self.check_poison()?;
            if self.synced_log_end() >= end {
                return Ok(());
            }
            waits = self.moved.wait(waits).unwrap_or_else(|e| e.into_inner());
        }
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

    /// The head of the log now, and the highest position a read `as_of` may return.
    pub fn read_bounds(&self, as_of: Option<AsOf>) -> Result<(Option<u64>, Option<u64>)> {
        let head = self.head();
        Ok((head, self.limit_at(head, as_of)?))
    }

    fn limit_at(&self, head: Option<u64>, as_of: Option<AsOf>) -> Result<Option<u64>> {
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
