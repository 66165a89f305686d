//! Snapshots, kept beside the log in one file of their own (`file.rs`): what each stream's
//! snapshots are and where they lie (held in memory, for streams that have any), reading
//! one, and opening the file. The keeper thread (`keeper.rs`) writes it.
//!
//! A store that never took a snapshot has no snapshot file and spends nothing on them. A
//! put or a delete is durable before it is answered (one sync per group of them), and
//! visible only then. Records of snapshots no longer kept (replaced, beyond the number kept
//! per stream, or deleted) are dead bytes; once they reach the live ones and pass
//! `Config::snapshot_compact_after`, the keeper writes the live ones to a new file and
//! removes the old one, so a deleted snapshot's bytes leave the disk then.

use std::collections::HashMap;
use std::path::Path;
use std::sync::RwLock;

use annal_core::{keep_snapshot, latest_snapshot, Bytes, Error, Result, Snapshot};
use tracing::warn;

use crate::codec::io_err;
use crate::io::{FileRef, Fs};
use crate::layout::{
    is_snapshot_tmp, parse_snapshot_file_name, snapshot_file_name, snapshot_file_path,
    snapshots_dir,
};

pub(crate) mod file;
pub(crate) mod keeper;

use file::{group_records, read_record, Bad, Record, GROUP_HEADER_LEN, HEADER_LEN};

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

    /// Sets the snapshot gauges (`annal_snapshots_kept`, `annal_snapshot_bytes{kind}`).
    pub fn record(&self) {
        metrics::gauge!("annal_snapshots_kept").set(self.count() as f64);
        metrics::gauge!("annal_snapshot_bytes", "kind" => "live").set(self.live as f64);
        metrics::gauge!("annal_snapshot_bytes", "kind" => "dead").set(self.dead as f64);
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
        active.read(stream_id, kept).map(Some)
    }
}

impl Active {
    /// Reads the snapshot of `stream_id` kept at `kept`, checking its checksum and that it
    /// is the snapshot indexed there.
    pub fn read(&self, stream_id: &str, kept: Kept) -> Result<Snapshot> {
        let corrupt = |problem: String| Error::Corruption {
            file: self.path.display().to_string(),
            offset: kept.offset,
            problem,
        };
        match read_record(&*self.file, kept.offset, kept.offset + kept.len) {
            Ok((Record::Put(s), _)) if s.stream_id == stream_id && s.revision == kept.revision => {
                Ok(s)
            }
            Ok(_) => Err(corrupt(
                "the record is not the snapshot indexed there".into(),
            )),
            Err(Bad::Io(e)) => Err(io_err("reading", &self.path, e)),
            Err(Bad::Damaged(problem)) => Err(corrupt(problem)),
            Err(Bad::Malformed) => Err(corrupt("a malformed snapshot record".into())),
        }
    }
}

/// What opening the snapshot file found.
pub(crate) struct Opened {
    pub table: Table,
    /// Where the next group goes.
    pub end: u64,
    /// The last group's sequence (0: none).
    pub sequence: u64,
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

/// What reading a snapshot file's groups found.
pub(crate) struct Scanned {
    pub table: Table,
    /// The end of the last intact group.
    pub end: u64,
    pub sequence: u64,
    /// Where a torn last group begins, and why it does not read.
    pub torn: Option<(u64, String)>,
}

/// Reads the groups of a snapshot file (after its header) into a table. A group that does
/// not read whole with an intact group after it is damage to acknowledged data, and an
/// error; one with none after it is the last group, torn by a crash before its sync.
pub(crate) fn scan(file: &dyn crate::io::File, path: &Path) -> Result<Scanned> {
    let mut table = Table::default();
    let end = crate::io::journal::scan(file, path, HEADER_LEN, "snapshot records", |offset, g| {
        let records = Bytes::from(g.records);
        let Some(records) = group_records(&records) else {
            return Err(Error::Corruption {
                file: path.display().to_string(),
                offset,
                problem: "a group of malformed snapshot records".into(),
            });
        };
        for (record, at, n) in records {
            let at = offset + GROUP_HEADER_LEN as u64 + at as u64;
            match record {
                Record::Put(s) => table.put(
                    &s.stream_id,
                    Kept {
                        revision: s.revision,
                        offset: at,
                        len: n as u64,
                    },
                ),
                Record::Delete(stream) => {
                    table.delete(&stream, n as u64);
                }
            }
        }
        Ok(())
    })?;
    Ok(Scanned {
        table,
        end: end.end,
        sequence: end.sequence,
        torn: end.torn,
    })
}

/// Opens the store's snapshots: reads the newest file's groups, cuts a torn last one, and
/// removes what an interrupted compaction left. A file of an older format is dropped with a
/// warning (snapshots are a cache: loads replay instead); a newer one is refused.
pub(crate) fn open(fs: &dyn Fs, dir: &Path) -> Result<Opened> {
    let (newest, mut stale) = files(fs, dir)?;
    let sdir = snapshots_dir(dir);
    let remove = |names: Vec<String>| -> Result<()> {
        for name in names {
            let path = sdir.join(name);
            fs.remove(&path).map_err(|e| io_err("removing", &path, e))?;
        }
        Ok(())
    };
    let none = Opened {
        table: Table::default(),
        end: 0,
        sequence: 0,
    };
    let Some(id) = newest else {
        remove(stale)?;
        return Ok(none);
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
        Err(Some(found)) if found < file::VERSION => {
            warn!(file = %path.display(), found, "dropping a snapshot file of an older format; loads replay until new snapshots are taken");
            stale.push(snapshot_file_name(id));
            remove(stale)?;
            return Ok(none);
        }
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
    let mut scanned = scan(&*file, &path)?;
    if let Some((offset, problem)) = &scanned.torn {
        // Groups are synced one after the other before they are answered: a last group
        // that does not read whole was being written when the store stopped.
        warn!(file = %path.display(), offset, %problem, "cutting a torn group of snapshot records at the end of the snapshot file");
        file.set_len(*offset)
            .map_err(|e| io_err("cutting", &path, e))?;
        file.sync_data().map_err(|e| io_err("syncing", &path, e))?;
    }
    remove(stale)?;
    scanned.table.active = Some(Active { id, path, file });
    Ok(Opened {
        table: scanned.table,
        end: scanned.end,
        sequence: scanned.sequence,
    })
}
