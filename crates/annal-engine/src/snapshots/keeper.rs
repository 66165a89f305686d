//! The keeper thread: writes snapshot puts and deletes to the snapshot file, a group at a
//! time with one sync, applies them to the table once durable, answers, and compacts the
//! file when dead records reach the live ones.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use annal_core::{Error, NewSnapshot, Result, Snapshot, Timestamp};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::file::{
    encode_delete, encode_put, end_group, header, start_group, GROUP_HEADER_LEN, HEADER_LEN,
};
use super::{Active, Kept};
use crate::codec::io_err;
use crate::io::FileRef;
use crate::layout::{snapshot_file_path, snapshot_tmp_path, snapshots_dir};
use crate::shared::Shared;

/// Snapshot requests waiting for the keeper before senders wait.
pub(crate) const QUEUE_DEPTH: usize = 16;
/// A group gathers requests up to about this many bytes of data.
const GROUP_BYTES: usize = 16 << 20;
/// A compaction writes the new file in pieces of about this size.
const WRITE_PIECE: usize = 8 << 20;

/// What the store asks of the keeper.
pub(crate) enum SnapshotCommand {
    Put(NewSnapshot, oneshot::Sender<Result<()>>),
    Delete(String, oneshot::Sender<Result<u64>>),
}

impl SnapshotCommand {
    fn size(&self) -> usize {
        match self {
            SnapshotCommand::Put(s, _) => s.data.len() + s.stream_id.len(),
            SnapshotCommand::Delete(s, _) => s.len(),
        }
    }

    /// Answers with the outcome: for a delete, how many snapshots went.
    fn answer(self, outcome: Result<u64>) {
        // A caller that stopped waiting has nothing to be told.
        match self {
            SnapshotCommand::Put(_, reply) => {
                let _ = reply.send(outcome.map(|_| ()));
            }
            SnapshotCommand::Delete(_, reply) => {
                let _ = reply.send(outcome);
            }
        }
    }
}

pub(crate) struct Keeper {
    shared: Arc<Shared>,
    commands: mpsc::Receiver<SnapshotCommand>,
    /// Where the next group goes in the active file.
    end: u64,
    /// The last group's sequence in the active file.
    sequence: u64,
    /// Dead bytes that make a compaction due again after one failed.
    retry_at: u64,
}

impl Keeper {
    pub fn new(
        shared: Arc<Shared>,
        commands: mpsc::Receiver<SnapshotCommand>,
        end: u64,
        sequence: u64,
    ) -> Keeper {
        Keeper {
            shared,
            commands,
            end,
            sequence,
            retry_at: 0,
        }
    }

    pub fn run(mut self) {
        self.shared.snapshots.read().record();
        while let Some(first) = self.commands.blocking_recv() {
            let mut bytes = first.size();
            let mut group = vec![first];
            while bytes < GROUP_BYTES {
                let Ok(next) = self.commands.try_recv() else {
                    break;
                };
                bytes += next.size();
                group.push(next);
            }
            let outcome = self
                .shared
                .check_poison()
                .and_then(|()| self.commit(&group));
            match outcome {
                Ok(answers) => {
                    for (c, n) in group.into_iter().zip(answers) {
                        c.answer(Ok(n));
                    }
                    self.compact_if_due();
                    self.shared.snapshots.read().record();
                }
                Err(e) => {
                    if !matches!(e, Error::Poisoned { .. }) {
                        self.shared.poison(format!("writing snapshots failed: {e}"));
                    }
                    for c in group {
                        c.answer(Err(e.clone()));
                    }
                }
            }
        }
    }

    /// The active file, created (with its folder) at the first put.
    fn active(&mut self) -> Result<Active> {
        if let Some(a) = self.shared.snapshots.read().active.clone() {
            return Ok(a);
        }
        let dir = &self.shared.dir;
        let fs = &self.shared.fs;
        let sdir = snapshots_dir(dir);
        fs.create_dir_all(&sdir)
            .map_err(|e| io_err("creating", &sdir, e))?;
        let (file, path) = self.write_file(1, &header())?;
        fs.sync_dir(dir).map_err(|e| io_err("syncing", dir, e))?;
        let active = Active { id: 1, path, file };
        self.shared.snapshots.write().active = Some(active.clone());
        self.end = HEADER_LEN;
        self.sequence = 0;
        Ok(active)
    }

    /// Creates snapshot file `id` under its temporary name.
    fn create_tmp(&self, id: u64) -> Result<(FileRef, PathBuf)> {
        let tmp = snapshot_tmp_path(&self.shared.dir, id);
        let file = self
            .shared
            .fs
            .create(&tmp)
            .map_err(|e| io_err("creating", &tmp, e))?;
        Ok((file, tmp))
    }

    /// Writes snapshot file `id` holding `bytes`, durably, under its name.
    fn write_file(&self, id: u64, bytes: &[u8]) -> Result<(FileRef, PathBuf)> {
        let (file, tmp) = self.create_tmp(id)?;
        file.write_all_at(bytes, 0)
            .map_err(|e| io_err("writing", &tmp, e))?;
        let path = self.finish_file(id, &file)?;
        Ok((file, path))
    }

    /// Syncs a file written under its temporary name and renames it into place, durably.
    fn finish_file(&self, id: u64, file: &FileRef) -> Result<PathBuf> {
        let tmp = snapshot_tmp_path(&self.shared.dir, id);
        file.sync_data().map_err(|e| io_err("syncing", &tmp, e))?;
        self.place_file(id)
    }

    /// Renames a synced file from its temporary name into place, durably.
    fn place_file(&self, id: u64) -> Result<PathBuf> {
        let fs = &self.shared.fs;
        let tmp = snapshot_tmp_path(&self.shared.dir, id);
        let path = snapshot_file_path(&self.shared.dir, id);
        fs.rename(&tmp, &path)
            .map_err(|e| io_err("renaming", &tmp, e))?;
        let sdir = snapshots_dir(&self.shared.dir);
        fs.sync_dir(&sdir)
            .map_err(|e| io_err("syncing", &sdir, e))?;
        Ok(path)
    }

    /// Writes and syncs a group's records, then applies them; returns each request's
    /// answer (for a delete, how many snapshots went).
    fn commit(&mut self, group: &[SnapshotCommand]) -> Result<Vec<u64>> {
        let active = self.active()?;
        let taken_at = Timestamp::now();
        let mut buf = Vec::new();
        let start = start_group(&mut buf, self.sequence + 1);
        let mut lens = Vec::with_capacity(group.len());
        for c in group {
            let at = buf.len() as u64;
            let n = match c {
                SnapshotCommand::Put(s, _) => encode_put(
                    &mut buf,
                    &Snapshot {
                        stream_id: s.stream_id.clone(),
                        revision: s.revision,
                        schema_version: s.schema_version,
                        data: s.data.clone(),
                        taken_at,
                    },
                ),
                SnapshotCommand::Delete(stream, _) => encode_delete(&mut buf, stream),
            };
            lens.push((self.end + at, n as u64));
        }
        end_group(&mut buf, start, self.end);
        active
            .file
            .write_all_at(&buf, self.end)
            .map_err(|e| io_err("writing", &active.path, e))?;
        active
            .file
            .sync_data()
            .map_err(|e| io_err("syncing", &active.path, e))?;
        self.end += buf.len() as u64;
        self.sequence += 1;
        let mut table = self.shared.snapshots.write();
        Ok(group
            .iter()
            .zip(lens)
            .map(|(c, (offset, len))| match c {
                SnapshotCommand::Put(s, _) => {
                    metrics::counter!("annal_snapshot_writes_total", "op" => "put").increment(1);
                    let kept = Kept {
                        revision: s.revision,
                        offset,
                        len,
                    };
                    table.put(&s.stream_id, kept);
                    1
                }
                SnapshotCommand::Delete(stream, _) => {
                    metrics::counter!("annal_snapshot_writes_total", "op" => "delete").increment(1);
                    table.delete(stream, len)
                }
            })
            .collect())
    }

    /// Rewrites the live records into a new file once the dead ones reach them and pass
    /// the configured threshold; the old file is removed once the new one is in place. A
    /// compaction that fails before the new file is in place leaves the old one in force:
    /// it is logged, and tried again once the dead bytes have doubled. One that fails after
    /// poisons the store, as a failed sync of the log does.
    fn compact_if_due(&mut self) {
        let due = {
            let t = self.shared.snapshots.read();
            t.dead >= self.shared.config.snapshot_compact_after
                && t.dead >= t.live
                && t.dead >= self.retry_at
        };
        if !due {
            return;
        }
        match self.compact() {
            Ok(()) => {
                self.retry_at = 0;
                metrics::counter!("annal_snapshot_compactions_total").increment(1);
            }
            Err(Compaction::Abandoned(e)) => {
                let dead = self.shared.snapshots.read().dead;
                self.retry_at = dead.saturating_mul(2);
                warn!(error = %e, "compacting the snapshot file failed; the old file stays in force");
            }
            Err(Compaction::Failed(e)) => {
                self.shared
                    .poison(format!("compacting snapshots failed: {e}"));
            }
        }
    }

    fn compact(&mut self) -> std::result::Result<(), Compaction> {
        let (old, lists, dead) = {
            let t = self.shared.snapshots.read();
            let Some(old) = t.active.clone() else {
                return Ok(());
            };
            let lists: Vec<(Box<str>, Vec<Kept>)> = t
                .streams
                .iter()
                .map(|(s, l)| (s.clone(), l.clone()))
                .collect();
            (old, lists, t.dead)
        };
        let id = old.id + 1;
        let (file, tmp) = self.create_tmp(id).map_err(Compaction::Abandoned)?;
        let written = self.write_live(&old, &file, &tmp, lists).and_then(|w| {
            file.sync_data()
                .map_err(|e| io_err("syncing", &tmp, e))
                .map(|()| w)
        });
        let (moved, live, end, sequence) = match written {
            Ok(w) => w,
            Err(e) => {
                if let Err(gone) = self.shared.fs.remove(&tmp) {
                    warn!(file = %tmp.display(), error = %gone, "could not remove an abandoned snapshot file");
                }
                return Err(Compaction::Abandoned(e));
            }
        };
        let path = self.place_file(id).map_err(Compaction::Failed)?;
        {
            let mut t = self.shared.snapshots.write();
            t.streams = moved.into_iter().filter(|(_, l)| !l.is_empty()).collect();
            t.live = live;
            t.dead = 0;
            t.active = Some(Active { id, path, file });
        }
        self.end = end;
        self.sequence = sequence;
        info!(dropped = dead, kept = live, "compacted the snapshot file");
        // Readers still holding the old file read on; a crash before this leaves it for the
        // next open to remove.
        if let Err(e) = self.shared.fs.remove(&old.path) {
            warn!(file = %old.path.display(), error = %e, "could not remove a compacted snapshot file");
        }
        Ok(())
    }

    /// Writes the kept snapshots into the new file `file`, in groups of about
    /// [`WRITE_PIECE`]; returns where each went, the live bytes, the file's end and its last
    /// group's sequence. A snapshot that does not read back (as a get would read it)
    /// abandons the compaction: the old file keeps it.
    #[allow(clippy::type_complexity)]
    fn write_live(
        &self,
        old: &Active,
        file: &FileRef,
        tmp: &Path,
        lists: Vec<(Box<str>, Vec<Kept>)>,
    ) -> Result<(Vec<(Box<str>, Vec<Kept>)>, u64, u64, u64)> {
        let mut buf = header().to_vec();
        let mut at = 0u64;
        let mut live = 0u64;
        let mut sequence = 1;
        let mut group = start_group(&mut buf, sequence);
        let mut moved = Vec::with_capacity(lists.len());
        for (stream, list) in lists {
            let mut kept = Vec::with_capacity(list.len());
            for k in list {
                let s = old.read(&stream, k)?;
                let offset = at + buf.len() as u64;
                let len = encode_put(&mut buf, &s) as u64;
                live += len;
                kept.push(Kept {
                    revision: k.revision,
                    offset,
                    len,
                });
                if buf.len() >= WRITE_PIECE {
                    end_group(&mut buf, group, at);
                    file.write_all_at(&buf, at)
                        .map_err(|e| io_err("writing", tmp, e))?;
                    at += buf.len() as u64;
                    buf.clear();
                    sequence += 1;
                    group = start_group(&mut buf, sequence);
                }
            }
            moved.push((stream, kept));
        }
        if buf.len() > group + GROUP_HEADER_LEN {
            end_group(&mut buf, group, at);
        } else {
            // No record after the last group's start: the group is left out.
            buf.truncate(group);
            sequence -= 1;
        }
        file.write_all_at(&buf, at)
            .map_err(|e| io_err("writing", tmp, e))?;
        Ok((moved, live, at + buf.len() as u64, sequence))
    }
}

/// How a compaction failed: before the new file was in place (the old one stays in force),
/// or after.
enum Compaction {
    Abandoned(Error),
    Failed(Error),
}
