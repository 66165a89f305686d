//! Snapshots, kept beside the log in one file of their own (`file.rs`): what each stream's
//! snapshots are and where they lie (held in memory, for streams that have any), reading
//! one, and opening the file. The keeper thread (`keeper.rs`) writes it.
//!
//! A store that never took a snapshot has no snapshot file and spends nothing on them. A
//! put or a delete is durable before it is answered (one sync per group of them), and
//! visible only then. Records of snapshots no longer kept (replaced, beyond the number kept
//! per stream, or deleted) are dead bytes; once they outweigh the live ones and pass
//! `Config::snapshot_compact_after`, the keeper writes the live ones to a new file and
//! removes the old one, so deleted data leaves the disk.

use std::collections::HashMap;
use std::path::Path;
use std::sync::RwLock;

use annal_core::{keep_snapshot, latest_snapshot, Error, Result, Snapshot};
use tracing::warn;

use crate::io::{FileRef, Fs};
use crate::layout::{is_snapshot_tmp, parse_snapshot_file_name, snapshot_file_path, snapshots_dir};

pub(crate) mod file;
pub(crate) mod keeper;

use file::{read_record, Bad, Record, HEADER_LEN};

/// Where one kept snapshot's record lies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Kept {
    pub revision: u64,
    pub offset: u64,
    pub len: u64,
}

/// The snapshot file in use.
#[derive(Clone)]
pub(crate) struct Active {
    pub id: u64,
    pub path: std::path::PathBuf,
    pub file: FileRef,
}

/// What the store knows of its snapshots.
#[derive(Default)]
pub(crate) struct Table {
    pub active: Option<Active>,
    pub streams: HashMap<Box<str>, Vec<Kept>>,
    /// Bytes of the records of kept snapshots, and of every other record.
    pub live: u64,
    pub dead: u64,
}

impl Table {
    /// Records a put at `offset`.
    pub fn put(&mut self, stream_id: &str, kept: Kept) {
        let list = match self.streams.get_mut(stream_id) {
            Some(list) => list,
            None => self.streams.entry(stream_id.into()).or_default(),
        };
        self.live += kept.len;
        for gone in keep_snapshot(list, kept, |k| k.revision) {
            self.live -= gone.len;
            self.dead += gone.len;
        }
    }

    /// Records a delete record `len` bytes long; returns how many snapshots went.
    pub fn delete(&mut self, stream_id: &str, len: u64) -> u64 {
        self.dead += len;
        let gone = self.streams.remove(stream_id).unwrap_or_default();
        for k in &gone {
            self.live -= k.len;
            self.dead += k.len;
        }
        gone.len() as u64
    }

    pub fn count(&self) -> usize {
        self.streams.values().map(Vec::len).sum()
    }
}

/// The store's snapshots: a table behind a lock, read by any thread, changed by the keeper.
#[derive(Default)]
pub(crate) struct Snapshots {
    pub table: RwLock<Table>,
}

impl Snapshots {
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn write(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The stream's snapshot of the highest revision at or before `at_or_before`.
    pub fn get(&self, stream_id: &str, at_or_before: Option<u64>) -> Result<Option<Snapshot>> {
        let (active, kept) = {
            let t = self.read();
            let Some(kept) = t
                .streams
                .get(stream_id)
                .and_then(|list| latest_snapshot(list, at_or_before, |k| k.revision))
                .copied()
            else {
                return Ok(None);
            };
            let Some(active) = t.active.clone() else {
                return Err(Error::Internal("a snapshot is kept with no file".into()));
            };
            (active, kept)
        };
        let name = &active.path;
        let corrupt = |problem: String| Error::Corruption {
            file: name.display().to_string(),
            offset: kept.offset,
            problem,
        };
        match read_record(&*active.file, kept.offset, kept.offset + kept.len) {
            Ok((Record::Put(s), _)) if s.stream_id == stream_id && s.revision == kept.revision => {
                Ok(Some(s))
            }
            Ok(_) => Err(corrupt(
                "the record is not the snapshot indexed there".into(),
            )),
            Err(Bad::Io(e)) => Err(Error::io(format!("reading {}", name.display()), e)),
            Err(Bad::Torn(problem)) => Err(corrupt(problem)),
            Err(Bad::Malformed) => Err(corrupt("a malformed snapshot record".into())),
        }
    }
}

fn io_err(op: &str, path: &Path, e: std::io::Error) -> Error {
    Error::io(format!("{op} {}", path.display()), e)
}

/// What opening the snapshot file found.
pub(crate) struct Opened {
    pub table: Table,
    /// Where the next record goes.
    pub end: u64,
}

/// The newest complete snapshot file of a store, if any, and the names of older ones and of
/// unfinished new ones (a compaction or a creation a crash interrupted).
pub(crate) fn files(fs: &dyn Fs, dir: &Path) -> Result<(Option<u64>, Vec<String>)> {
    let sdir = snapshots_dir(dir);
    if !fs.exists(&sdir) {
        return Ok((None, Vec::new()));
    }
    let names = fs.list(&sdir).map_err(|e| io_err("listing", &sdir, e))?;
    let newest = names
        .iter()
        .filter_map(|n| parse_snapshot_file_name(n))
        .max();
    let stale = names
        .into_iter()
        .filter(|n| {
            is_snapshot_tmp(n) || parse_snapshot_file_name(n).is_some_and(|id| Some(id) < newest)
        })
        .collect();
    Ok((newest, stale))
}

/// Opens the store's snapshots: reads the newest file's records, cuts a torn last one, and
/// removes what an interrupted compaction left.
pub(crate) fn open(fs: &dyn Fs, dir: &Path) -> Result<Opened> {
    let (newest, stale) = files(fs, dir)?;
    let sdir = snapshots_dir(dir);
    let Some(id) = newest else {
        for name in stale {
            let path = sdir.join(name);
            fs.remove(&path).map_err(|e| io_err("removing", &path, e))?;
        }
        return Ok(Opened {
            table: Table::default(),
            end: 0,
        });
    };
    let path = snapshot_file_path(dir, id);
    let file = fs.open(&path).map_err(|e| io_err("opening", &path, e))?;
    let len = file.len().map_err(|e| io_err("reading", &path, e))?;
    let mut header = [0u8; HEADER_LEN as usize];
    if len >= HEADER_LEN {
        file.read_exact_at(&mut header, 0)
            .map_err(|e| io_err("reading", &path, e))?;
    }
    match file::check_header(&header) {
        Ok(()) => {}
        Err(Some(found)) => {
            return Err(Error::UnsupportedFormat {
                path: path.display().to_string(),
                found,
                supported: file::VERSION,
            })
        }
        // A file is renamed into place only once its header is synced.
        Err(None) => {
            return Err(Error::Corruption {
                file: path.display().to_string(),
                offset: 0,
                problem: "not a snapshot file header".into(),
            })
        }
    }
    let mut table = Table::default();
    let mut offset = HEADER_LEN;
    while offset < len {
        offset += match read_record(&*file, offset, len) {
            Ok((Record::Put(s), n)) => {
                let kept = Kept {
                    revision: s.revision,
                    offset,
                    len: n,
                };
                table.put(&s.stream_id, kept);
                n
            }
            Ok((Record::Delete(stream), n)) => {
                table.delete(&stream, n);
                n
            }
            Err(Bad::Io(e)) => return Err(io_err("reading", &path, e)),
            Err(Bad::Torn(problem)) => {
                // Records are synced in order before they are acknowledged: a record that
                // does not read whole was being written when the store stopped.
                warn!(file = %path.display(), offset, %problem, cut = len - offset,
                    "cutting a torn snapshot record at the end of the snapshot file");
                file.set_len(offset)
                    .map_err(|e| io_err("cutting", &path, e))?;
                file.sync_data().map_err(|e| io_err("syncing", &path, e))?;
                break;
            }
            Err(Bad::Malformed) => {
                return Err(Error::Corruption {
                    file: path.display().to_string(),
                    offset,
                    problem: "a snapshot record with a valid checksum that makes no sense".into(),
                })
            }
        };
    }
    for name in stale {
        let path = sdir.join(name);
        fs.remove(&path).map_err(|e| io_err("removing", &path, e))?;
    }
    table.active = Some(Active { id, path, file });
    Ok(Opened { table, end: offset })
}
