//! The groups' journal: every group's definition and durable state, beside the log in
//! `groups/groups.journal`, written as numbered, checksummed groups of records (one sync
//! each, `annal_engine::io::journal`). A store with no consumer group has no journal.
//!
//! ```text
//! header   "ANGJ" | version u32
//! record   kind u8 | group id u32 | body
//!   1 generation  run u64                         (id 0; once per run that writes)
//!   2 define      floor u64 | definition (JSON, the API's shape)
//!   3 delete      -
//!   4 floor       position u64
//!   5 acked       count u32 | position u64 ...
//!   6 attempts    position u64 | attempts u32
//!   7 parked      position u64 | attempts u32 | parked at i64 (µs) | waiting u8
//!                 | key (u32 length, bytes) | member (u16, bytes) | reason (u32, bytes)
//!   8 unparked    position u64
//! ```
//!
//! Integers are little-endian. One thread writes: it takes every batch queued, writes them
//! as one group, syncs once and answers them all. It keeps a mirror of what the file says;
//! once the file is four times what the mirror takes (and at least `COMPACT_AFTER`), it
//! writes the mirror to a new file, syncs it and renames it over the old one. A failed
//! write or sync stops the journal: every later write is refused with the cause.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use annal_core::{Error, Text, Timestamp};
use annal_engine::io::journal::{end_group, scan, start_group};
use annal_engine::io::{FileRef, Fs};
use tokio::sync::oneshot;

use super::machine::{Change, DeadLetter};

const MAGIC: &[u8; 4] = b"ANGJ";
const VERSION: u32 = 1;
const HEADER_LEN: u64 = 8;
/// The journal is not compacted below this size.
pub const COMPACT_AFTER: u64 = 16 << 20;
/// A compaction starts a new group once one holds this many bytes.
const COMPACT_GROUP: usize = 8 << 20;

const GENERATION: u8 = 1;
const DEFINE: u8 = 2;
const DELETE: u8 = 3;
const FLOOR: u8 = 4;
const ACKED: u8 = 5;
const ATTEMPTS: u8 = 6;
const PARKED: u8 = 7;
const UNPARKED: u8 = 8;

/// The journal's folder in a store's folder.
pub fn dir(data: &Path) -> PathBuf {
    data.join("groups")
}

fn file_path(data: &Path) -> PathBuf {
    dir(data).join("groups.journal")
}

/// One record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rec {
    /// A definition, new or changed; a new group starts at `floor`.
    Define {
        id: u32,
        floor: u64,
        def: Vec<u8>,
    },
    Delete(u32),
    Floor(u32, u64),
    Change(u32, Change),
}

/// What the journal says of one group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kept {
    /// The definition, in the API's JSON shape.
    pub def: Vec<u8>,
    pub floor: u64,
    pub acked: BTreeSet<u64>,
    pub attempts: BTreeMap<u64, u32>,
    pub dead: BTreeMap<u64, DeadLetter>,
}

impl Kept {
    fn apply(&mut self, change: &Change) {
        match change {
            Change::Acked(p) => {
                if *p >= self.floor {
                    self.acked.insert(*p);
                }
            }
            Change::Attempts { position, attempts } => {
                if *position >= self.floor {
                    self.attempts.insert(*position, *attempts);
                }
            }
            Change::Parked(d) => {
                self.dead.insert(d.position, d.clone());
            }
            Change::Unparked(p) => {
                self.dead.remove(p);
            }
        }
    }

    /// The records that say all of it, for group `id`.
    fn records(&self, id: u32) -> impl Iterator<Item = Rec> + '_ {
        let define = Rec::Define {
            id,
            floor: self.floor,
            def: self.def.clone(),
        };
        let acked = self.acked.iter().map(move |p| Change::Acked(*p));
        let attempts = self
            .attempts
            .iter()
            .map(|(&position, &attempts)| Change::Attempts { position, attempts });
        let dead = self.dead.values().map(|d| Change::Parked(d.clone()));
        std::iter::once(define).chain(
            acked
                .chain(attempts)
                .chain(dead)
                .map(move |c| Rec::Change(id, c)),
        )
    }

    fn set_floor(&mut self, floor: u64) {
        if floor > self.floor {
            self.floor = floor;
            self.acked = self.acked.split_off(&floor);
            self.attempts = self.attempts.split_off(&floor);
        }
    }
}

/// Every group the journal holds, by id.
pub type Mirror = BTreeMap<u32, Kept>;

fn apply(mirror: &mut Mirror, rec: &Rec) {
    match rec {
        Rec::Define { id, floor, def } => {
            let kept = mirror.entry(*id).or_insert_with(|| Kept {
                floor: *floor,
                ..Kept::default()
            });
            kept.def.clone_from(def);
        }
        Rec::Delete(id) => {
            mirror.remove(id);
        }
        Rec::Floor(id, floor) => {
            if let Some(k) = mirror.get_mut(id) {
                k.set_floor(*floor);
            }
        }
        Rec::Change(id, change) => {
            if let Some(k) = mirror.get_mut(id) {
                k.apply(change);
            }
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str, wide: bool) {
    if wide {
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    } else {
        out.extend_from_slice(&(s.len().min(u16::MAX as usize) as u16).to_le_bytes());
    }
    let n = if wide {
        s.len()
    } else {
        s.len().min(u16::MAX as usize)
    };
    out.extend_from_slice(&s.as_bytes()[..n]);
}

fn encode(out: &mut Vec<u8>, rec: &Rec) {
    let head = |out: &mut Vec<u8>, kind: u8, id: u32| {
        out.push(kind);
        out.extend_from_slice(&id.to_le_bytes());
    };
    match rec {
        Rec::Define { id, floor, def } => {
            head(out, DEFINE, *id);
            out.extend_from_slice(&floor.to_le_bytes());
            out.extend_from_slice(&(def.len() as u32).to_le_bytes());
            out.extend_from_slice(def);
        }
        Rec::Delete(id) => head(out, DELETE, *id),
        Rec::Floor(id, floor) => {
            head(out, FLOOR, *id);
            out.extend_from_slice(&floor.to_le_bytes());
        }
        Rec::Change(id, Change::Acked(p)) => {
            head(out, ACKED, *id);
            out.extend_from_slice(&1u32.to_le_bytes());
            out.extend_from_slice(&p.to_le_bytes());
        }
        Rec::Change(id, Change::Attempts { position, attempts }) => {
            head(out, ATTEMPTS, *id);
            out.extend_from_slice(&position.to_le_bytes());
            out.extend_from_slice(&attempts.to_le_bytes());
        }
        Rec::Change(id, Change::Parked(d)) => {
            head(out, PARKED, *id);
            out.extend_from_slice(&d.position.to_le_bytes());
            out.extend_from_slice(&d.attempts.to_le_bytes());
            out.extend_from_slice(&d.parked_at.as_micros().to_le_bytes());
            out.push(u8::from(d.waiting));
            put_str(out, &d.key, true);
            put_str(out, &d.member, false);
            put_str(out, &d.reason, true);
        }
        Rec::Change(id, Change::Unparked(p)) => {
            head(out, UNPARKED, *id);
            out.extend_from_slice(&p.to_le_bytes());
        }
    }
}

fn encode_generation(out: &mut Vec<u8>, run: u64) {
    out.push(GENERATION);
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&run.to_le_bytes());
}

/// Reads records off a group's bytes.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let s = self.b.get(self.at..self.at + n)?;
        self.at += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn text(&mut self, wide: bool) -> Option<String> {
        let n = if wide {
            self.u32()? as usize
        } else {
            usize::from(self.u16()?)
        };
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

/// The records of a group's bytes; `None` when one is malformed. A generation record
/// yields its run in the second place.
fn decode(bytes: &[u8]) -> Option<(Vec<Rec>, Option<u64>)> {
    let mut r = Reader { b: bytes, at: 0 };
    let mut out = Vec::new();
    let mut run = None;
    while r.at < bytes.len() {
        let kind = r.u8()?;
        let id = r.u32()?;
        let rec = match kind {
            GENERATION => {
                run = Some(r.u64()?);
                continue;
            }
            DEFINE => {
                let floor = r.u64()?;
                let n = r.u32()? as usize;
                Rec::Define {
                    id,
                    floor,
                    def: r.take(n)?.to_vec(),
                }
            }
            DELETE => Rec::Delete(id),
            FLOOR => Rec::Floor(id, r.u64()?),
            ACKED => {
                let n = r.u32()?;
                for _ in 1..n {
                    out.push(Rec::Change(id, Change::Acked(r.u64()?)));
                }
                Rec::Change(id, Change::Acked(r.u64()?))
            }
            ATTEMPTS => Rec::Change(
                id,
                Change::Attempts {
                    position: r.u64()?,
                    attempts: r.u32()?,
                },
            ),
            PARKED => {
                let position = r.u64()?;
                let attempts = r.u32()?;
                let parked_at = Timestamp(r.u64()? as i64);
                let waiting = r.u8()? != 0;
                let key = Text::from(r.text(true)?);
                let member = r.text(false)?;
                let reason = r.text(true)?;
                Rec::Change(
                    id,
                    Change::Parked(DeadLetter {
                        position,
                        key,
                        reason,
                        attempts,
                        member,
                        parked_at,
                        waiting,
                    }),
                )
            }
            UNPARKED => Rec::Change(id, Change::Unparked(r.u64()?)),
            _ => return None,
        };
        out.push(rec);
    }
    Some((out, run))
}

/// What opening the journal found.
pub struct Opened {
    pub groups: Mirror,
    /// This run's number: above every earlier run's (delivery epochs start from it).
    pub run: u64,
}

struct Writer {
    fs: Arc<dyn Fs>,
    data: PathBuf,
    file: Option<FileRef>,
    end: u64,
    sequence: u64,
    run: u64,
    /// Whether this run's generation record is written yet.
    announced: bool,
    mirror: Mirror,
    /// The file's size when the mirror was last measured against it.
    measured_at: u64,
    compact_after: u64,
    failed: Option<Error>,
}

/// A batch of records to write, and who waits for it; or a look at one group's state.
enum Job {
    Write {
        records: Vec<Rec>,
        done: oneshot::Sender<Result<(), Error>>,
    },
    Mirror {
        id: u32,
        reply: oneshot::Sender<Option<Kept>>,
    },
}

/// The journal's handle; the thread stops when the last handle is dropped.
#[derive(Clone)]
pub struct Journal {
    tx: std::sync::mpsc::SyncSender<Job>,
}

/// How many batches wait for the writer at most; more wait for room.
const QUEUE: usize = 1024;

impl Journal {
    /// Reads the journal in `data` (none is an empty one), cutting a torn last group, and
    /// starts its writer thread.
    pub fn open(fs: Arc<dyn Fs>, data: &Path) -> Result<(Journal, Opened), Error> {
        Self::open_with(fs, data, COMPACT_AFTER)
    }

    /// [`Journal::open`], compacting from `compact_after` bytes.
    pub fn open_with(
        fs: Arc<dyn Fs>,
        data: &Path,
        compact_after: u64,
    ) -> Result<(Journal, Opened), Error> {
        let path = file_path(data);
        let mut groups = Mirror::new();
        let mut run = 0;
        let mut file = None;
        let mut end = HEADER_LEN;
        let mut sequence = 0;
        if fs.exists(&path) {
            let f = fs
                .open(&path)
                .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
            let len = f
                .len()
                .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            let mut header = [0u8; HEADER_LEN as usize];
            if len >= HEADER_LEN {
                f.read_exact_at(&mut header, 0)
                    .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            }
            if &header[..4] != MAGIC {
                return Err(Error::Corruption {
                    file: path.display().to_string(),
                    offset: 0,
                    problem: "not a groups journal header".into(),
                });
            }
            let version = u32::from_le_bytes(header[4..].try_into().unwrap_or_default());
            if version != VERSION {
                return Err(Error::UnsupportedFormat {
                    path: path.display().to_string(),
                    found: version,
                    supported: VERSION,
                });
            }
            let scanned = scan(&*f, &path, HEADER_LEN, "group records", |offset, g| {
                let (records, r) = decode(&g.records).ok_or_else(|| Error::Corruption {
                    file: path.display().to_string(),
                    offset,
                    problem: "a group of malformed group records".into(),
                })?;
                if let Some(r) = r {
                    run = run.max(r);
                }
                for rec in &records {
                    apply(&mut groups, rec);
                }
                Ok(())
            })?;
            if let Some((offset, problem)) = &scanned.torn {
                tracing::warn!(file = %path.display(), offset, %problem, "cutting a torn group at the end of the groups journal");
                f.set_len(*offset)
                    .and_then(|()| f.sync_data())
                    .map_err(|e| Error::io(format!("cutting {}", path.display()), e))?;
            }
            end = scanned.end;
            sequence = scanned.sequence;
            file = Some(f);
        }
        let run = run + 1;
        let has_file = file.is_some();
        let mut writer = Writer {
            fs,
            data: data.to_path_buf(),
            file,
            end,
            sequence,
            run,
            announced: false,
            mirror: groups.clone(),
            measured_at: end,
            compact_after,
            failed: None,
        };
        // This run's number is durable before any delivery is made under it: a run that
        // writes nothing else must still count, or the next one would reuse its epochs.
        // (A new journal gets it with its first group.)
        if has_file {
            writer.append(&[])?;
            writer.measured_at = writer.end;
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("annal-groups".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| Error::io("starting the groups journal thread", e))?;
        Ok((Journal { tx }, Opened { groups, run }))
    }

    /// Writes `records` durably; returns once they are synced.
    pub async fn write(&self, records: Vec<Rec>) -> Result<(), Error> {
        let (done, wait) = oneshot::channel();
        self.queue(Job::Write { records, done }).await?;
        wait.await
            .map_err(|_| Error::Unavailable("the groups journal has stopped".into()))?
    }

    /// What the journal holds of group `id`, after every write queued before.
    pub async fn mirror(&self, id: u32) -> Result<Option<Kept>, Error> {
        let (reply, wait) = oneshot::channel();
        self.queue(Job::Mirror { id, reply }).await?;
        wait.await
            .map_err(|_| Error::Unavailable("the groups journal has stopped".into()))
    }

    async fn queue(&self, job: Job) -> Result<(), Error> {
        let tx = self.tx.clone();
        // The queue is bounded: a full one blocks, so it is waited for off the runtime.
        match tx.try_send(job) {
            Ok(()) => {}
            Err(std::sync::mpsc::TrySendError::Full(job)) => {
                tokio::task::spawn_blocking(move || tx.send(job))
                    .await
                    .map_err(|e| Error::Internal(format!("the journal queue failed: {e}")))?
                    .map_err(|_| Error::Unavailable("the groups journal has stopped".into()))?;
            }
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {
                return Err(Error::Unavailable("the groups journal has stopped".into()))
            }
        }
        Ok(())
    }
}

impl Writer {
    fn run(mut self, rx: std::sync::mpsc::Receiver<Job>) {
        let mut next = None;
        loop {
            let first = match next.take() {
                Some(job) => job,
                None => match rx.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                },
            };
            let mut batch = Vec::new();
            let mut done = Vec::new();
            let mut look = first;
            loop {
                match look {
                    Job::Write { records, done: d } => {
                        batch.push(records);
                        done.push(d);
                    }
                    Job::Mirror { id, reply } if batch.is_empty() => {
                        let _ = reply.send(self.mirror.get(&id).cloned());
                    }
                    mirror @ Job::Mirror { .. } => {
                        // It waits for the writes queued before it.
                        next = Some(mirror);
                        break;
                    }
                }
                match rx.try_recv() {
                    Ok(job) => look = job,
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                continue;
            }
            let result = self.write(&batch);
            for d in done {
                let _ = d.send(result.clone());
            }
        }
    }

    fn write(&mut self, jobs: &[Vec<Rec>]) -> Result<(), Error> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = self.append(jobs);
        if let Err(e) = &result {
            tracing::error!(error = %e, "the groups journal failed; groups stop until the server restarts");
            self.failed = Some(Error::Unavailable(format!(
                "the groups journal failed ({e}); groups resume after a restart"
            )));
            return result;
        }
        for rec in jobs.iter().flatten() {
            apply(&mut self.mirror, rec);
        }
        if self.end >= self.compact_after && self.end >= self.measured_at * 2 {
            self.measured_at = self.end;
            if let Err(e) = self.compact() {
                tracing::warn!(error = %e, "compacting the groups journal failed; the journal goes on as it is");
            }
        }
        Ok(())
    }

    fn path(&self) -> PathBuf {
        file_path(&self.data)
    }

    fn create(&mut self) -> Result<FileRef, Error> {
        let path = self.path();
        let io = |e| Error::io(format!("creating {}", path.display()), e);
        self.fs.create_dir_all(&dir(&self.data)).map_err(io)?;
        let f = self.fs.create(&path).map_err(io)?;
        let mut header = MAGIC.to_vec();
        header.extend_from_slice(&VERSION.to_le_bytes());
        f.write_all_at(&header, 0).map_err(io)?;
        f.sync_data().map_err(io)?;
        self.fs.sync_dir(&dir(&self.data)).map_err(io)?;
        self.end = HEADER_LEN;
        self.sequence = 0;
        Ok(f)
    }

    fn append(&mut self, jobs: &[Vec<Rec>]) -> Result<(), Error> {
        let file = match &self.file {
            Some(f) => f.clone(),
            None => {
                let f = self.create()?;
                self.file = Some(f.clone());
                f
            }
        };
        let mut out = Vec::new();
        let g = start_group(&mut out, self.sequence + 1);
        if !self.announced {
            encode_generation(&mut out, self.run);
        }
        for rec in jobs.iter().flatten() {
            encode(&mut out, rec);
        }
        end_group(&mut out, g, self.end);
        let path = self.path();
        file.write_all_at(&out, self.end)
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        file.sync_data()
            .map_err(|e| Error::io(format!("syncing {}", path.display()), e))?;
        self.announced = true;
        self.end += out.len() as u64;
        self.sequence += 1;
        Ok(())
    }

    /// Writes the mirror to a new file and puts it in place of the old one. A failure
    /// before the rename leaves the old file in force; one after it stops the journal.
    fn compact(&mut self) -> Result<(), Error> {
        let path = self.path();
        let tmp = path.with_extension("journal.tmp");
        let io = |what: &str, e| Error::io(format!("{what} {}", tmp.display()), e);
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&VERSION.to_le_bytes());
        // Groups of at most about 8 MiB, so no group's length nears its field's limit.
        let mut sequence = 1;
        let mut g = start_group(&mut out, sequence);
        encode_generation(&mut out, self.run);
        for rec in self.mirror.iter().flat_map(|(id, kept)| kept.records(*id)) {
            if out.len() - g > COMPACT_GROUP {
                end_group(&mut out, g, 0);
                sequence += 1;
                g = start_group(&mut out, sequence);
            }
            encode(&mut out, &rec);
        }
        end_group(&mut out, g, 0);
        let f = self.fs.create(&tmp).map_err(|e| io("creating", e))?;
        f.write_all_at(&out, 0).map_err(|e| io("writing", e))?;
        f.sync_data().map_err(|e| io("syncing", e))?;
        if let Err(e) = self.fs.rename(&tmp, &path) {
            let e = io("renaming", e);
            self.failed = Some(Error::Unavailable(format!(
                "the groups journal failed ({e}); groups resume after a restart"
            )));
            return Err(e);
        }
        if let Err(e) = self.fs.sync_dir(&dir(&self.data)) {
            let e = io("syncing the folder of", e);
            self.failed = Some(Error::Unavailable(format!(
                "the groups journal failed ({e}); groups resume after a restart"
            )));
            return Err(e);
        }
        self.end = out.len() as u64;
        self.sequence = sequence;
        self.measured_at = self.end;
        self.file = Some(f);
        tracing::info!(bytes = self.end, "compacted the groups journal");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use annal_engine::io::sim::SimFs;

    fn letter(position: u64, waiting: bool) -> DeadLetter {
        DeadLetter {
            position,
            key: Text::from("video-7"),
            reason: "transcoder crashed".into(),
            attempts: 3,
            member: "worker-2".into(),
            parked_at: Timestamp(1_700_000_000_000_000),
            waiting,
        }
    }

    fn records() -> Vec<Rec> {
        vec![
            Rec::Define {
                id: 1,
                floor: 5,
                def: b"{\"name\":\"videos\"}".to_vec(),
            },
            Rec::Change(1, Change::Acked(7)),
            Rec::Change(
                1,
                Change::Attempts {
                    position: 6,
                    attempts: 2,
                },
            ),
            Rec::Change(1, Change::Parked(letter(8, false))),
            Rec::Change(1, Change::Parked(letter(9, true))),
            Rec::Floor(1, 6),
            Rec::Change(1, Change::Unparked(9)),
            Rec::Define {
                id: 2,
                floor: 0,
                def: b"{}".to_vec(),
            },
            Rec::Delete(2),
        ]
    }

    #[test]
    fn records_decode_to_what_was_encoded() {
        let mut out = Vec::new();
        encode_generation(&mut out, 4);
        for r in records() {
            encode(&mut out, &r);
        }
        let (back, run) = decode(&out).unwrap();
        assert_eq!((back, run), (records(), Some(4)));
        assert!(
            decode(&out[..out.len() - 1]).is_none(),
            "a cut record is malformed"
        );
    }

    fn open(fs: &Arc<SimFs>) -> (Journal, Opened) {
        Journal::open(fs.clone() as Arc<dyn Fs>, Path::new("/store")).unwrap()
    }

    #[tokio::test]
    async fn what_was_written_is_what_opens_and_runs_count_up() {
        let fs = Arc::new(SimFs::new());
        let (j, opened) = open(&fs);
        assert!(opened.groups.is_empty());
        assert_eq!(opened.run, 1);
        assert!(
            !fs.exists(&file_path(Path::new("/store"))),
            "no group, no file"
        );
        j.write(records()).await.unwrap();
        drop(j);
        let (_j, opened) = open(&fs);
        assert_eq!(opened.run, 2);
        let kept = &opened.groups[&1];
        assert_eq!(kept.floor, 6);
        assert_eq!(kept.acked, BTreeSet::from([7]));
        assert_eq!(kept.attempts, BTreeMap::from([(6, 2)]));
        assert_eq!(kept.dead.keys().copied().collect::<Vec<_>>(), vec![8]);
        assert_eq!(kept.dead[&8], letter(8, false));
        assert!(!opened.groups.contains_key(&2), "a deleted group is gone");
    }

    /// Batches of records, each changing the state a little.
    fn batches() -> Vec<Vec<Rec>> {
        let mut out = vec![records()];
        for i in 0..12u64 {
            let mut b = vec![
                Rec::Change(1, Change::Acked(20 + 2 * i)),
                Rec::Change(1, Change::Parked(letter(21 + 2 * i, i % 2 == 0))),
            ];
            if i % 3 == 0 {
                b.push(Rec::Floor(1, 10 + i));
            }
            out.push(b);
        }
        out
    }

    fn mirror_after(batches: &[Vec<Rec>]) -> Mirror {
        let mut m = Mirror::new();
        for r in batches.iter().flatten() {
            apply(&mut m, r);
        }
        m
    }

    /// Power is lost at every sync point in turn, with torn writes after it: every batch
    /// that was acknowledged is found, and no batch is found in part.
    #[tokio::test]
    async fn power_loss_at_every_sync_point_keeps_every_acknowledged_batch_whole() {
        let batches = batches();
        let mut n = 1;
        loop {
            let fs = Arc::new(SimFs::new());
            fs.crash_at_sync(n);
            let (j, _) = open(&fs);
            let mut acked = 0;
            for b in &batches {
                if j.write(b.clone()).await.is_err() {
                    break;
                }
                acked += 1;
            }
            drop(j);
            let image = Arc::new(fs.crash_image(Some(n)));
            let (_j, opened) = open(&image);
            let found =
                (acked..=batches.len()).find(|i| mirror_after(&batches[..*i]) == opened.groups);
            assert!(
                found.is_some(),
                "crash at sync {n}: {acked} batches acknowledged, and what opened is no prefix of the batches from there"
            );
            if acked == batches.len() {
                break;
            }
            n += 1;
        }
        assert!(
            n > batches.len() as u64,
            "every batch's sync was a crash point"
        );
    }

    #[tokio::test]
    async fn compaction_keeps_the_state_and_bounds_the_file() {
        let fs = Arc::new(SimFs::new());
        let (j, _) =
            Journal::open_with(fs.clone() as Arc<dyn Fs>, Path::new("/store"), 4096).unwrap();
        j.write(records()).await.unwrap();
        for i in 0..2_000u64 {
            j.write(vec![
                Rec::Change(1, Change::Acked(100 + i)),
                Rec::Floor(1, 100 + i),
            ])
            .await
            .unwrap();
        }
        drop(j);
        let path = file_path(Path::new("/store"));
        let len = fs.read_file(&path).unwrap().len();
        assert!(len < 3 * 4096, "the journal is {len} bytes");
        let image = Arc::new(fs.crash_image(None));
        let (_j, opened) = open(&image);
        let kept = &opened.groups[&1];
        assert_eq!(kept.floor, 2_099);
        assert_eq!(kept.acked, BTreeSet::from([2_099]));
        assert_eq!(kept.dead.len(), 1);
        assert!(opened.run >= 2);
    }

    #[tokio::test]
    async fn damage_before_an_acknowledged_group_is_refused() {
        let fs = Arc::new(SimFs::new());
        let (j, _) = open(&fs);
        j.write(records()).await.unwrap();
        j.write(vec![Rec::Floor(1, 9)]).await.unwrap();
        drop(j);
        let path = file_path(Path::new("/store"));
        let mut bytes = fs.read_file(&path).unwrap();
        bytes[HEADER_LEN as usize + 20] ^= 0xff;
        fs.write_file(&path, bytes);
        let e = Journal::open(fs.clone() as Arc<dyn Fs>, Path::new("/store"))
            .err()
            .unwrap();
        assert!(
            matches!(&e, Error::Corruption { problem, .. } if problem.contains("acknowledged groups after it")),
            "{e}"
        );
    }
}
