//! Zeros ahead of the log: a thread that keeps the active segment written with zeros, and
//! synced, a little beyond the end of the log.
//!
//! `fdatasync` of a file that grew must also write its inode (the new length and the new
//! blocks); records written over blocks that already hold synced zeros only need their data
//! written, which makes the sync of a small append cheaper (BENCHMARKS.md has the figures).
//! The log's end is then no longer the file's end: a segment's
//! records end at its end or at the first frame header of eight zero bytes, which no record
//! has (a record's length is never zero; docs/file-format.md).
//!
//! The filler and the writer never write the same bytes: the filler writes zeros only at
//! `filled` and beyond, holding the lock while it writes, and the writer, before writing
//! past `filled`, takes the lock and moves `filled` past its own write. The filler syncs
//! through a file handle of its own, so a write-back error is still reported to the sync
//! thread's handle (the kernel reports it to every open handle of the file).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use tracing::warn;

use crate::io::{FileRef, Fs};

/// Zeros are written and synced in pieces of this size.
const CHUNK: u64 = 256 << 10;
/// Above this average of the bytes each sync makes durable, zeros are not written: a sync
/// of that much data gains less from not writing the inode than the disk loses writing
/// every byte twice (the line is where the two crossed when measured; BENCHMARKS.md).
const SMALL_SYNCS: u64 = 128 << 10;

/// The segment being filled.
struct Target {
    path: PathBuf,
    /// Changes with every new target, so the thread opens the new file.
    generation: u64,
}

struct State {
    target: Option<Target>,
    stop: bool,
    generation: u64,
    /// True from the moment a piece is taken until the thread looks for the next one (the
    /// piece's sync happens outside the lock).
    busy: bool,
    /// True while the thread waits to be woken, having found nothing due; whoever wakes it
    /// clears it, under the lock, as it does.
    parked: bool,
}

struct Inner {
    state: Mutex<State>,
    wake: Condvar,
    /// Told whenever the thread is about to wait with nothing due.
    idle: Condvar,
    /// The file offset up to which the active segment holds either zeros written by the
    /// filler or records: the filler writes only beyond it. Changed under the lock only.
    filled: AtomicU64,
    /// The file offset of the end of the log in the active segment, as the writer last
    /// said.
    end: AtomicU64,
    /// The file offset zeros are not written beyond in the current target (the segment
    /// size; 0 for none). Changed under the lock only.
    limit: AtomicU64,
    /// How far beyond the end of the log zeros are kept now: up to the configured distance
    /// while syncs are small, 0 while they are large.
    ahead_now: AtomicU64,
}

/// The writer's handle on the filler thread.
pub(crate) struct Filler {
    inner: Arc<Inner>,
    /// How far beyond the end of the log zeros are kept while syncs are small.
    ahead: u64,
    /// Bytes written since the filler started: zeros are kept at most this far ahead (and
    /// a piece), so a store that writes little is not given megabytes of zeros.
    written: u64,
    /// True while syncs are large (see `SMALL_SYNCS`).
    resting: bool,
}

/// The filler thread's body.
pub(crate) struct FillerThread(Arc<Inner>);

/// Stops the filler thread, or waits for it to be idle.
#[derive(Clone)]
pub(crate) struct FillerStop(Arc<Inner>);

/// A filler that keeps `ahead` bytes of zeros beyond the end of the log: the writer's
/// handle, the thread's body and what stops it.
pub(crate) fn filler(ahead: u64) -> (Filler, FillerThread, FillerStop) {
    let inner = Arc::new(Inner {
        state: Mutex::new(State {
            target: None,
            stop: false,
            generation: 0,
            busy: false,
            parked: false,
        }),
        wake: Condvar::new(),
        idle: Condvar::new(),
        filled: AtomicU64::new(0),
        end: AtomicU64::new(0),
        limit: AtomicU64::new(0),
        ahead_now: AtomicU64::new(ahead.min(CHUNK)),
    });
    let handle = Filler {
        inner: Arc::clone(&inner),
        ahead,
        written: 0,
        resting: false,
    };
    (handle, FillerThread(Arc::clone(&inner)), FillerStop(inner))
}

impl FillerThread {
    /// Writes zeros as the writer's progress asks for them, until stopped.
    pub fn run(self, fs: &dyn Fs) {
        self.0.run(fs);
    }
}

impl FillerStop {
    /// Makes the thread return; it stops after the piece it is writing, if any.
    pub fn stop(&self) {
        let mut s = self.0.lock();
        s.stop = true;
        s.parked = false;
        self.0.wake.notify_one();
    }

    /// Waits until the thread has written and synced every piece of zeros it was woken
    /// for, and waits to be woken again (or has stopped).
    #[cfg(any(test, feature = "sim"))]
    pub fn wait_idle(&self) {
        let inner = &self.0;
        let mut s = inner.lock();
        while !s.stop && !s.parked {
            s = inner.idle.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Filler {
    /// Makes `path` the segment to fill: its records end at file offset `end`, and the
    /// file is `len` bytes long (zeros beyond `end`, if any, are kept). `None` stops
    /// filling (before the active segment is cut to its end).
    pub fn target(&self, segment: Option<(PathBuf, u64)>, end: u64, len: u64) {
        let mut s = self.inner.lock();
        s.generation += 1;
        let generation = s.generation;
        self.inner.limit.store(
            segment.as_ref().map_or(0, |(_, limit)| *limit),
            Ordering::Release,
        );
        s.target = segment.map(|(path, _)| Target { path, generation });
        self.inner.filled.store(len.max(end), Ordering::Release);
        self.inner.end.store(end, Ordering::Release);
        s.parked = false;
        self.inner.wake.notify_one();
    }

    /// Called before the writer writes `len` bytes of the active segment, up to file
    /// offset `to`: afterwards the filler writes nothing below `to`. `per_sync` is what
    /// each sync has made durable lately (a moving average, in bytes).
    pub fn before_write(&mut self, to: u64, len: u64, per_sync: u64) {
        let inner = &self.inner;
        self.written = self.written.saturating_add(len);
        // Rest above the line, resume below half of it: a sync size that wavers about the
        // line does not start the thread for a few megabytes of zeros each time.
        if per_sync > SMALL_SYNCS {
            self.resting = true;
        } else if per_sync < SMALL_SYNCS / 2 {
            self.resting = false;
        }
        let ahead = if !self.resting {
            self.ahead.min(self.written.saturating_add(CHUNK))
        } else {
            0
        };
        // Set even when 0: a filler that is awake reads it before every piece.
        let resumed = inner.ahead_now.swap(ahead, Ordering::AcqRel) == 0 && ahead > 0;
        inner.end.store(to, Ordering::Release);
        let filled = inner.filled.load(Ordering::Acquire);
        // Wake the filler once zeros run short (and the segment has room for more);
        // otherwise it sleeps.
        let short = resumed
            || (filled < inner.limit.load(Ordering::Acquire)
                && filled.saturating_sub(to) < ahead / 2);
        if to <= filled && !short {
            return;
        }
        let mut s = inner.lock();
        if to > inner.filled.load(Ordering::Acquire) {
            inner.filled.store(to, Ordering::Release);
        }
        if short {
            s.parked = false;
            inner.wake.notify_one();
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The piece of zeros due now, (offset, length), if any: zeros are kept up to the
    /// distance ahead of the end of the log, within the segment.
    fn due(&self, s: &State) -> Option<(u64, u64)> {
        s.target.as_ref()?;
        let limit = self.limit.load(Ordering::Acquire);
        let filled = self.filled.load(Ordering::Acquire);
        let end = self.end.load(Ordering::Acquire);
        let ahead = self.ahead_now.load(Ordering::Acquire);
        (filled < limit && filled < end.saturating_add(ahead))
            .then(|| (filled, CHUNK.min(limit - filled)))
    }

    /// The next piece of zeros to write, (offset, length), with the lock held; waits until
    /// one is due. `None` when stopping.
    fn next_piece(&self) -> Option<(MutexGuard<'_, State>, u64, u64)> {
        let mut s = self.lock();
        s.busy = false;
        loop {
            if s.stop {
                self.idle.notify_all();
                return None;
            }
            if let Some((at, len)) = self.due(&s) {
                s.busy = true;
                s.parked = false;
                return Some((s, at, len));
            }
            s.parked = true;
            self.idle.notify_all();
            s = self.wake.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn run(&self, fs: &dyn Fs) {
        let zeros = vec![0u8; CHUNK as usize];
        let mut file: Option<(u64, FileRef)> = None;
        while let Some((s, at, len)) = self.next_piece() {
            let Some(t) = &s.target else { continue };
            if file.as_ref().is_none_or(|(g, _)| *g != t.generation) {
                match fs.open(&t.path) {
                    Ok(f) => file = Some((t.generation, f)),
                    Err(e) => {
                        warn!(file = %t.path.display(), error = %e, "cannot open the segment to preallocate it; appends go on without");
                        let generation = t.generation;
                        drop(s);
                        self.give_up(generation);
                        continue;
                    }
                }
            }
            let Some((_, f)) = &file else { continue };
            // Written under the lock: the writer waits rather than write the same bytes.
            let written = f.write_all_at(&zeros[..len as usize], at);
            if written.is_ok() {
                self.filled.store(at + len, Ordering::Release);
            }
            let (path, generation) = (t.path.clone(), t.generation);
            drop(s);
            if let Err(e) = written.and_then(|()| f.sync_data()) {
                // Not an error of the log: the writer's own writes and syncs report what
                // is wrong with the disk. Preallocation stops for this segment.
                warn!(file = %path.display(), error = %e, "preallocating the segment failed; appends go on without");
                self.give_up(generation);
            }
        }
    }

    /// Stops filling the segment of `generation`, if it is still the one being filled.
    fn give_up(&self, generation: u64) {
        let mut s = self.lock();
        if s.target.as_ref().is_none_or(|t| t.generation != generation) {
            return;
        }
        s.target = None;
        self.limit.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A filler over a segment of 64 MiB whose log ends at 4 KiB, without its thread.
    fn filler_at_4k() -> (Filler, FillerThread) {
        let (handle, body, _stop) = filler(8 << 20);
        handle.target(Some(("/x.seg".into(), 64 << 20)), 4096, 4096);
        (handle, body)
    }

    fn due(body: &FillerThread) -> Option<(u64, u64)> {
        let s = body.0.lock();
        body.0.due(&s)
    }

    #[test]
    fn zeros_are_due_while_syncs_are_small() {
        let (mut handle, body) = filler_at_4k();
        handle.before_write(8192, 4096, 4 << 10);
        assert_eq!(due(&body), Some((8192, CHUNK)));
    }

    #[test]
    fn nothing_is_due_while_syncs_are_large_and_zeros_resume_below_half() {
        let (mut handle, body) = filler_at_4k();
        handle.before_write(8192, 4096, 4 << 10);
        assert!(due(&body).is_some());
        // Syncs grow past the line: the filler rests, even with zeros short.
        handle.before_write(1 << 20, 1 << 20, SMALL_SYNCS + 1);
        assert_eq!(due(&body), None);
        // Between half the line and the line: still resting.
        handle.before_write(2 << 20, 1 << 20, SMALL_SYNCS * 3 / 4);
        assert_eq!(due(&body), None);
        // Below half: zeros are due again.
        handle.before_write(3 << 20, 4096, SMALL_SYNCS / 4);
        assert!(due(&body).is_some());
    }
}
