//! A simulated file system for crash tests.
//!
//! Every file keeps two images: what was written, and what was durable at its last
//! `sync_data`. Folder entries (created, renamed, removed files) become durable only at
//! `sync_dir`. [`SimFs::crash_at_sync`] makes the N-th sync fail and every later write fail too,
//! as if the machine lost power there; [`SimFs::crash_image`] then gives the file system a
//! reboot would find: only durable bytes and entries, optionally with a torn prefix of what
//! was written but not yet synced. [`SimFs::panic_in_thread`] makes one thread's next write
//! or sync panic, to test what a panic in an engine thread does to the store.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{File, FileRef, Fs};

#[derive(Default)]
struct Data {
    written: Vec<u8>,
    durable: Vec<u8>,
}

#[derive(Default)]
struct State {
    files: HashMap<u64, Data>,
    live: BTreeMap<PathBuf, u64>,
    durable: BTreeMap<PathBuf, u64>,
    next_inode: u64,
    syncs: u64,
    crash_at_sync: Option<u64>,
    dead: bool,
    space_left: Option<u64>,
    /// The name of a thread whose next write or sync panics.
    panic_in: Option<String>,
}

impl State {
    fn check_alive(&self) -> io::Result<()> {
        if self.dead {
            Err(io::Error::other("simulated power loss: the device is gone"))
        } else {
            Ok(())
        }
    }

    fn sync_point(&mut self) -> io::Result<()> {
        self.check_alive()?;
        self.syncs += 1;
        if self.crash_at_sync == Some(self.syncs) {
            self.dead = true;
            return Err(io::Error::other("simulated power loss during sync"));
        }
        Ok(())
    }
}

/// A simulated file system; cloning shares the same state.
#[derive(Clone, Default)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
}

struct SimFile {
    inode: u64,
    state: Arc<Mutex<State>>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Locks the state for a write or sync: panics (once, without holding the lock) when the
/// calling thread is the one named by `panic_in_thread`.
fn lock_to_change(state: &Mutex<State>) -> MutexGuard<'_, State> {
    let mut s = lock(state);
    let this = std::thread::current();
    if s.panic_in.is_some() && s.panic_in.as_deref() == this.name() {
        s.panic_in = None;
        drop(s);
        panic!("injected panic in {}", this.name().unwrap_or("a thread"));
    }
    s
}

impl SimFs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the `n`-th sync from now (1-based, counting file and folder syncs) fail and
    /// every later write or sync fail as well.
    pub fn crash_at_sync(&self, n: u64) {
        let mut s = lock(&self.state);
        s.crash_at_sync = Some(s.syncs + n);
    }

    /// How many syncs have happened so far.
    pub fn syncs(&self) -> u64 {
        lock(&self.state).syncs
    }

    /// True once a simulated crash has happened.
    pub fn crashed(&self) -> bool {
        lock(&self.state).dead
    }

    /// Limits how many more bytes writes may add before they fail with "no space left".
    pub fn set_space_left(&self, bytes: Option<u64>) {
        lock(&self.state).space_left = bytes;
    }

    /// Makes the next write or sync (of a file or a folder) by the thread named `name` panic.
    pub fn panic_in_thread(&self, name: &str) {
        lock(&self.state).panic_in = Some(name.to_string());
    }

    /// True until the thread named by `panic_in_thread` has panicked.
    pub fn panic_pending(&self) -> bool {
        lock(&self.state).panic_in.is_some()
    }

    /// The file system as it would be found after a reboot now: durable entries and bytes
    /// only. With `torn = Some(seed)`, each file also keeps a pseudo-random prefix of the
    /// bytes written after its last sync, from the first one that differs (appended, or
    /// written over preallocated zeros): a write that reached the disk in part; and half the
    /// time a hole inside that prefix (write-back out of order).
    pub fn crash_image(&self, torn: Option<u64>) -> SimFs {
        let s = lock(&self.state);
        let mut rng = torn.unwrap_or(0) | 1;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut out = State::default();
        for (path, inode) in &s.durable {
            let Some(data) = s.files.get(inode) else {
                continue;
            };
            let mut bytes = data.durable.clone();
            // Where the unsynced writes begin: past the durable bytes for appends, or at
            // the first byte overwritten (records written over preallocated zeros).
            let changed = data
                .written
                .iter()
                .zip(&data.durable)
                .position(|(w, d)| w != d)
                .unwrap_or(data.durable.len().min(data.written.len()));
            if torn.is_some() && data.written.len() > changed {
                let extra = data.written.len() - changed;
                let keep = (next() % (extra as u64 + 1)) as usize;
                let end = changed + keep;
                if bytes.len() < end {
                    bytes.resize(end, 0);
                }
                bytes[changed..end].copy_from_slice(&data.written[changed..end]);
                // Write-back need not follow write order: half the time, a stretch of the
                // unsynced bytes never made it while later ones did (what was there before
                // stays: the durable bytes, or nothing).
                if keep > 1 && next() % 2 == 0 {
                    let from = (next() % keep as u64) as usize;
                    let len = 1 + (next() % (keep - from) as u64) as usize;
                    let hole = bytes.iter_mut().enumerate().skip(changed + from).take(len);
                    for (i, b) in hole {
                        *b = data.durable.get(i).copied().unwrap_or(0);
                    }
                }
            }
            let id = out.next_inode;
            out.next_inode += 1;
            out.files.insert(
                id,
                Data {
                    written: bytes.clone(),
                    durable: bytes,
                },
            );
            out.live.insert(path.clone(), id);
            out.durable.insert(path.clone(), id);
        }
        SimFs {
            state: Arc::new(Mutex::new(out)),
        }
    }

    /// The current (written) contents of a file, for tests that damage files on purpose.
    pub fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        let s = lock(&self.state);
        let inode = s.live.get(path)?;
        s.files.get(inode).map(|d| d.written.clone())
    }

    /// Replaces a file's contents, written and durable alike.
    pub fn write_file(&self, path: &Path, bytes: Vec<u8>) {
        let mut s = lock(&self.state);
        let inode = match s.live.get(path) {
            Some(i) => *i,
            None => {
                let i = s.next_inode;
                s.next_inode += 1;
                s.live.insert(path.to_path_buf(), i);
                s.durable.insert(path.to_path_buf(), i);
                i
            }
        };
        s.files.insert(
            inode,
            Data {
                written: bytes.clone(),
                durable: bytes,
            },
        );
    }
}

impl File for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let s = lock(&self.state);
        let data = &s
            .files
            .get(&self.inode)
            .ok_or(io::ErrorKind::NotFound)?
            .written;
        let Ok(start) = usize::try_from(offset) else {
            return Ok(0);
        };
        if start >= data.len() {
            return Ok(0);
        }
        let n = buf.len().min(data.len() - start);
        buf[..n].copy_from_slice(&data[start..start + n]);
        Ok(n)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut s = lock_to_change(&self.state);
        s.check_alive()?;
        let start = offset as usize;
        let end = start + buf.len();
        let len = s.files.get(&self.inode).map_or(0, |d| d.written.len());
        let growth = end.saturating_sub(len) as u64;
        if let Some(left) = s.space_left {
            if growth > left {
                return Err(io::Error::from_raw_os_error(28));
            }
            s.space_left = Some(left - growth);
        }
        let data = &mut s
            .files
            .get_mut(&self.inode)
            .ok_or(io::ErrorKind::NotFound)?
            .written;
        if data.len() < end {
            data.resize(end, 0);
        }
        data[start..end].copy_from_slice(buf);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut s = lock_to_change(&self.state);
        s.sync_point()?;
        let data = s
            .files
            .get_mut(&self.inode)
            .ok_or(io::ErrorKind::NotFound)?;
        data.durable = data.written.clone();
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        let s = lock(&self.state);
        Ok(s.files
            .get(&self.inode)
            .ok_or(io::ErrorKind::NotFound)?
            .written
            .len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut s = lock_to_change(&self.state);
        s.check_alive()?;
        let data = s
            .files
            .get_mut(&self.inode)
            .ok_or(io::ErrorKind::NotFound)?;
        data.written.resize(len as usize, 0);
        Ok(())
    }
}

impl Fs for SimFs {
    fn create_dir_all(&self, _path: &Path) -> io::Result<()> {
        lock(&self.state).check_alive()
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let s = lock(&self.state);
        Ok(s.live
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
            .collect())
    }

    fn open(&self, path: &Path) -> io::Result<FileRef> {
        let s = lock(&self.state);
        let inode = *s.live.get(path).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{}: no such file", path.display()),
            )
        })?;
        Ok(Arc::new(SimFile {
            inode,
            state: self.state.clone(),
        }))
    }

    fn create(&self, path: &Path) -> io::Result<FileRef> {
        let mut s = lock_to_change(&self.state);
        s.check_alive()?;
        let inode = s.next_inode;
        s.next_inode += 1;
        s.files.insert(inode, Data::default());
        s.live.insert(path.to_path_buf(), inode);
        Ok(Arc::new(SimFile {
            inode,
            state: self.state.clone(),
        }))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut s = lock(&self.state);
        s.check_alive()?;
        s.live
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| io::ErrorKind::NotFound.into())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = lock_to_change(&self.state);
        s.check_alive()?;
        let inode = s.live.remove(from).ok_or(io::ErrorKind::NotFound)?;
        s.live.insert(to.to_path_buf(), inode);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = lock_to_change(&self.state);
        s.sync_point()?;
        s.durable.retain(|p, _| p.parent() != Some(dir));
        let entries: Vec<(PathBuf, u64)> = s
            .live
            .iter()
            .filter(|(p, _)| p.parent() == Some(dir))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        s.durable.extend(entries);
        Ok(())
    }

    fn exists(&self, path: &Path) -> bool {
        let s = lock(&self.state);
        s.live.contains_key(path) || s.live.keys().any(|p| p.starts_with(path))
    }

    fn lock(&self, _path: &Path) -> io::Result<Box<dyn Send + Sync>> {
        Ok(Box::new(()))
    }
}
