//! Stream heads: each stream's revision, first and last position and times, and each
//! category's counts.
//!
//! Heads live in the heads files of the checkpoint (`file.rs`: sorted blocks behind fences
//! and a Bloom filter), read through a bounded block cache (`cache.rs`). In memory are only
//! the heads changed since the last checkpoint was taken (`recent`), those taken by
//! checkpoints not yet on disk (`frozen`), the files' footers, and the category counts.
//! A stream's head is the one in the newest of those that has it.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, RwLock};

use annal_core::{category_of, CategoryInfo, RecordedEvent, Result, StreamInfo, Timestamp};

pub mod block;
pub mod cache;
pub mod file;

use cache::BlockCache;
pub use file::{HeadsFile, HeadsWriter};

use crate::io::Fs;
use crate::layout::heads_path;

/// The state of one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub revision: u64,
    pub first_position: u64,
    pub last_position: u64,
    pub created_at: i64,
    pub last_written_at: i64,
}

/// Counts of one category.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CategoryCount {
    pub streams: u64,
    pub events: u64,
}

/// Heads in id order, or the error that ended a read.
pub type HeadResult = Result<(String, Head)>;
/// A source of heads in id order.
pub type Source<'a> = Box<dyn Iterator<Item = HeadResult> + Send + 'a>;

/// The heads a checkpoint takes: those changed since the checkpoint before, and every
/// category's counts at that point.
#[derive(Debug, Clone)]
pub struct Taken {
    pub heads: Arc<BTreeMap<String, Head>>,
    pub categories: BTreeMap<String, CategoryCount>,
    /// Streams in the store at that point.
    pub streams: u64,
}

/// At most this many delta files follow a base.
pub const MAX_DELTAS: usize = 16;

/// What a checkpoint writes of the heads, and which heads files it merges them with.
#[derive(Debug)]
pub enum HeadsWrite {
    /// Nothing changed: the files in force stay.
    Unchanged,
    /// Merged with every heads file into a new base that replaces them all.
    Base(Taken),
    /// Merged with the newest `replaces` deltas into one delta that replaces them.
    Delta { replaces: usize, changed: Taken },
}

/// The stream heads of a store.
pub struct Heads {
    /// Heads changed since the last checkpoint was taken.
    recent: BTreeMap<String, Head>,
    /// Heads taken by checkpoints whose files are not installed yet, oldest first.
    frozen: VecDeque<Arc<BTreeMap<String, Head>>>,
    /// The heads files in force: the base, then its deltas.
    files: Arc<Vec<Arc<HeadsFile>>>,
    pub categories: BTreeMap<String, CategoryCount>,
    /// Streams in the store.
    streams: u64,
    /// The files the checkpoints taken so far will leave: whether a base exists, and how
    /// many heads each delta after it holds at most, oldest first.
    based: bool,
    deltas: Vec<u64>,
    cache: Arc<BlockCache>,
}

impl Heads {
    /// No streams, no files.
    pub fn new(cache_bytes: usize) -> Heads {
        Heads::open(Vec::new(), cache_bytes)
    }

    /// The heads of the files of a checkpoint (the base, then its deltas).
    pub fn open(files: Vec<Arc<HeadsFile>>, cache_bytes: usize) -> Heads {
        let categories: BTreeMap<String, CategoryCount> = files
            .last()
            .map(|f| f.categories.iter().cloned().collect())
            .unwrap_or_default();
        Heads {
            recent: BTreeMap::new(),
            frozen: VecDeque::new(),
            streams: categories.values().map(|c| c.streams).sum(),
            categories,
            based: !files.is_empty(),
            deltas: files.iter().skip(1).map(|f| f.streams).collect(),
            files: Arc::new(files),
            cache: Arc::new(BlockCache::new(cache_bytes)),
        }
    }

    /// Records a stream's new head after `count` more events; `new` when the stream had
    /// none before.
    pub fn apply(&mut self, stream: &str, head: Head, count: u64, new: bool) {
        let category = category_of(stream);
        let cat = match self.categories.get_mut(category) {
            Some(c) => c,
            // The name is copied only for a new category, not on every append.
            None => self.categories.entry(category.to_string()).or_default(),
        };
        cat.events += count;
        if new {
            cat.streams += 1;
            self.streams += 1;
        }
        match self.recent.get_mut(stream) {
            Some(h) => *h = head,
            None => {
                self.recent.insert(stream.to_string(), head);
            }
        }
    }

    /// Records one stored event (an event of no stream changes nothing), reading the
    /// stream's head before it where that is not in memory.
    pub fn apply_event(&mut self, e: &RecordedEvent) -> Result<()> {
        if e.stream_id.is_empty() {
            return Ok(());
        }
        let prior = if e.revision == 0 {
            None
        } else {
            self.get(&e.stream_id)?
        };
        self.apply(&e.stream_id, next_head(prior, e), 1, prior.is_none());
        Ok(())
    }

    /// The head of a stream if it is in memory.
    fn in_memory(&self, stream: &str) -> Option<Head> {
        self.recent
            .get(stream)
            .or_else(|| self.frozen.iter().rev().find_map(|f| f.get(stream)))
            .copied()
    }

    /// The head of a stream, reading the files where it is not in memory.
    pub fn get(&self, stream: &str) -> Result<Option<Head>> {
        match self.in_memory(stream) {
            Some(h) => Ok(Some(h)),
            None => from_files(&self.files, &self.cache, stream),
        }
    }

    pub fn stream_count(&self) -> u64 {
        self.streams
    }

    /// The heads files in force, oldest first.
    pub fn files(&self) -> &[Arc<HeadsFile>] {
        &self.files
    }

    /// Bytes held: the heads in memory (estimated per head, with a 16-byte id), the files'
    /// footers, and the block cache.
    pub fn memory(&self) -> (u64, u64, u64) {
        let per_head = std::mem::size_of::<(String, Head)>() as u64 + 16 + 32;
        let in_memory = self.recent.len() + self.frozen.iter().map(|f| f.len()).sum::<usize>();
        (
            in_memory as u64 * per_head,
            self.files.iter().map(|f| f.bytes() as u64).sum(),
            self.cache.bytes() as u64,
        )
    }

    /// What the next checkpoint writes of the heads, taken where it freezes the memtable so
    /// that the two agree: only the heads changed since the checkpoint before. The
    /// checkpoint thread writes them as a delta after the base, merged (from the files) with
    /// the newest deltas while the newest is at most twice its size or while there are
    /// [`MAX_DELTAS`], so each head is rewritten a logarithmic number of times. Once the
    /// deltas would name more than half as many streams as there are (or there is no base
    /// yet), it merges them all with the base into a new base.
    pub fn take_checkpoint(&mut self) -> HeadsWrite {
        if self.recent.is_empty() && self.based {
            return HeadsWrite::Unchanged;
        }
        let heads = Arc::new(std::mem::take(&mut self.recent));
        self.frozen.push_back(heads.clone());
        let mut size = heads.len() as u64;
        let taken = Taken {
            heads,
            categories: self.categories.clone(),
            streams: self.streams,
        };
        let named = self.deltas.iter().sum::<u64>() + size;
        if !self.based || named > self.streams / 2 {
            self.based = true;
            self.deltas.clear();
            return HeadsWrite::Base(taken);
        }
        let mut replaces = 0;
        while let Some(&newest) = self.deltas.last() {
            if newest > 2 * size && self.deltas.len() < MAX_DELTAS {
                break;
            }
            self.deltas.pop();
            size += newest;
            replaces += 1;
        }
        self.deltas.push(size);
        HeadsWrite::Delta {
            replaces,
            changed: taken,
        }
    }

    /// Puts the file a checkpoint wrote in force in place of the files from `keep` on, and
    /// drops the heads it took, which the file now holds.
    pub fn install(&mut self, keep: usize, file: Arc<HeadsFile>) {
        let mut files: Vec<Arc<HeadsFile>> = self.files.iter().take(keep).cloned().collect();
        files.push(file);
        self.files = Arc::new(files);
        self.frozen.pop_front();
    }

    pub fn category_info(name: &str, c: &CategoryCount) -> CategoryInfo {
        CategoryInfo {
            category: name.to_string(),
            stream_count: c.streams,
            event_count: c.events,
        }
    }
}

/// A stream's head after event `e`, given its head before (`None`: `e` starts the stream).
pub fn next_head(prior: Option<Head>, e: &RecordedEvent) -> Head {
    Head {
        revision: e.revision,
        first_position: prior.map_or(e.position, |h| h.first_position),
        last_position: e.position,
        created_at: prior.map_or(e.recorded_at.0, |h| h.created_at),
        last_written_at: e.recorded_at.0,
    }
}

/// The head of a stream in the files (newest first).
fn from_files(files: &[Arc<HeadsFile>], cache: &BlockCache, stream: &str) -> Result<Option<Head>> {
    let hash = file::stream_hash(stream);
    for f in files.iter().rev() {
        if let Some(h) = f.get(stream, hash, cache)? {
            return Ok(Some(h));
        }
    }
    Ok(None)
}

/// The head of a stream, read while the writer applies others: what is in memory under the
/// lock, the files after it, so that a read from disk never holds up the writer.
pub fn lookup(heads: &RwLock<Heads>, stream: &str) -> Result<Option<Head>> {
    let (files, cache) = {
        let h = heads.read().unwrap_or_else(|e| e.into_inner());
        if let Some(head) = h.in_memory(stream) {
            return Ok(Some(head));
        }
        if h.files.is_empty() {
            return Ok(None);
        }
        (h.files.clone(), h.cache.clone())
    };
    from_files(&files, &cache, stream)
}

/// At most `limit` heads from `start` on whose ids begin with `prefix`, in id order.
pub fn list(
    heads: &RwLock<Heads>,
    start: Bound<&str>,
    prefix: &str,
    limit: usize,
) -> Result<Vec<(String, Head)>> {
    let in_range = |(id, _): &(&String, &Head)| id.starts_with(prefix);
    let range = |m: &BTreeMap<String, Head>| -> Vec<(String, Head)> {
        m.range::<str, _>((start, Bound::Unbounded))
            .take_while(in_range)
            .take(limit)
            .map(|(id, h)| (id.clone(), *h))
            .collect()
    };
    let (files, memory) = {
        let h = heads.read().unwrap_or_else(|e| e.into_inner());
        let mut memory: Vec<Vec<(String, Head)>> = h.frozen.iter().map(|f| range(f)).collect();
        memory.push(range(&h.recent));
        (h.files.clone(), memory)
    };
    let mut sources: Vec<Source> = files
        .iter()
        .map(|f| Box::new(f.scan(start)) as Source)
        .collect();
    sources.extend(
        memory
            .into_iter()
            .map(|m| Box::new(m.into_iter().map(Ok)) as Source),
    );
    let mut out = Vec::new();
    for r in Merged::new(sources) {
        let (id, h) = r?;
        if !id.starts_with(prefix) || out.len() == limit {
            break;
        }
        out.push((id, h));
    }
    Ok(out)
}

/// Sources of heads in id order merged into one, in id order; where several hold a
/// stream, the last source's head wins. A read error ends it.
pub struct Merged<'a> {
    sources: Vec<Source<'a>>,
    /// Each source's next head, once read.
    next: Vec<Option<(String, Head)>>,
    started: bool,
    failed: bool,
}

impl<'a> Merged<'a> {
    pub fn new(sources: Vec<Source<'a>>) -> Merged<'a> {
        Merged {
            next: sources.iter().map(|_| None).collect(),
            sources,
            started: false,
            failed: false,
        }
    }

    fn fill(&mut self, i: usize) -> Result<()> {
        self.next[i] = self.sources[i].next().transpose()?;
        Ok(())
    }

    fn step(&mut self) -> Result<Option<(String, Head)>> {
        if !self.started {
            self.started = true;
            for i in 0..self.sources.len() {
                self.fill(i)?;
            }
        }
        let mut best: Option<usize> = None;
        for (i, n) in self.next.iter().enumerate() {
            if let Some((id, _)) = n {
                let later = best
                    .and_then(|b| self.next[b].as_ref())
                    .is_none_or(|(held, _)| id <= held);
                if later {
                    best = Some(i);
                }
            }
        }
        let Some(b) = best else {
            return Ok(None);
        };
        let (id, head) = self.next[b].take().expect("chosen for holding a head");
        for i in 0..self.sources.len() {
            let same = matches!(&self.next[i], Some((other, _)) if *other == id);
            if i == b || same {
                self.fill(i)?;
            }
        }
        Ok(Some((id, head)))
    }
}

impl Iterator for Merged<'_> {
    type Item = HeadResult;

    fn next(&mut self) -> Option<HeadResult> {
        if self.failed {
            return None;
        }
        let r = self.step();
        self.failed = r.is_err();
        r.transpose()
    }
}

/// Writes the heads of `sources` (merged, the last winning) to heads file `id` of `dir`
/// with the categories of `taken`, and opens it.
pub fn write_merged(
    fs: &dyn Fs,
    dir: &Path,
    id: u64,
    older: &[Arc<HeadsFile>],
    taken: &Taken,
) -> Result<HeadsFile> {
    let bound = older.iter().map(|f| f.streams).sum::<u64>() + taken.heads.len() as u64;
    let path = heads_path(dir, id);
    let mut w = HeadsWriter::create(fs, &path, bound.min(taken.streams.max(1)))?;
    let mut sources: Vec<Source> = older
        .iter()
        .map(|f| Box::new(f.scan(Bound::Unbounded)) as Source)
        .collect();
    sources.push(Box::new(
        taken.heads.iter().map(|(id, h)| Ok((id.clone(), *h))),
    ));
    for r in Merged::new(sources) {
        let (sid, h) = r?;
        w.push(&sid, &h)?;
    }
    w.finish(&taken.categories)?;
    HeadsFile::open(fs, &path, id)
}

/// The heads files `ids` of the store in `dir` (a base, then its deltas), opened.
pub fn open_chain(fs: &dyn Fs, dir: &Path, ids: &[u64]) -> Result<Vec<Arc<HeadsFile>>> {
    ids.iter()
        .map(|&id| HeadsFile::open(fs, &heads_path(dir, id), id).map(Arc::new))
        .collect()
}

/// Every head the files hold, the newest of each stream, in stream id order (for checks).
pub fn scan_chain(files: &[Arc<HeadsFile>]) -> Merged<'static> {
    let sources = files
        .iter()
        .map(|f| Box::new(f.scan(Bound::Unbounded)) as Source)
        .collect();
    Merged::new(sources)
}

/// Every head the files hold, the newest of each stream, read whole.
#[cfg(test)]
pub fn read_chain(files: &[Arc<HeadsFile>]) -> Result<BTreeMap<String, Head>> {
    scan_chain(files).collect()
}

/// The category counts of a set of heads.
pub fn categories_of(streams: &BTreeMap<String, Head>) -> BTreeMap<String, CategoryCount> {
    let mut out: BTreeMap<String, CategoryCount> = BTreeMap::new();
    for (id, h) in streams {
        let c = out.entry(category_of(id).to_string()).or_default();
        c.streams += 1;
        c.events += h.revision + 1;
    }
    out
}

pub fn to_info(stream: &str, h: &Head) -> StreamInfo {
    StreamInfo {
        stream_id: stream.to_string(),
        revision: h.revision,
        first_position: h.first_position,
        last_position: h.last_position,
        count: h.revision.saturating_add(1),
        created_at: Timestamp(h.created_at),
        last_written_at: Timestamp(h.last_written_at),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::io::sim::SimFs;

    fn apply(heads: &mut Heads, id: &str, count: u64, position: u64, at: i64) {
        let prior = heads.get(id).unwrap();
        let head = Head {
            revision: prior.map_or(count - 1, |h| h.revision + count),
            first_position: prior.map_or(position, |h| h.first_position),
            last_position: position + count - 1,
            created_at: prior.map_or(at, |h| h.created_at),
            last_written_at: at,
        };
        heads.apply(id, head, count, prior.is_none());
    }

    /// Writes and installs what a checkpoint took, as the checkpoint thread does.
    fn checkpoint(fs: &SimFs, heads: &mut Heads, next_id: &mut u64) {
        let (keep, taken) = match heads.take_checkpoint() {
            HeadsWrite::Unchanged => return,
            HeadsWrite::Base(t) => (0, t),
            HeadsWrite::Delta { replaces, changed } => {
                (heads.files().len().saturating_sub(replaces).max(1), changed)
            }
        };
        let older = heads.files()[keep.min(heads.files().len())..].to_vec();
        let f = write_merged(fs, Path::new("/s"), *next_id, &older, &taken).unwrap();
        *next_id += 1;
        heads.install(keep, Arc::new(f));
    }

    proptest! {
        /// Whatever the appends between checkpoints, every head read (from memory or the
        /// files), every listing and the category counts are those of a plain map of every
        /// stream; the files stay within their bound; and a checkpoint after appends to a
        /// few old streams of many writes only those.
        #[test]
        fn heads_in_files_and_memory_answer_as_one_map(
            rounds in proptest::collection::vec(
                proptest::collection::vec((0u32..400, 1u64..4), 0..60),
                1..30,
            )
        ) {
            let fs = SimFs::new();
            let mut heads = Heads::new(1 << 16);
            let mut model: BTreeMap<String, Head> = BTreeMap::new();
            let mut position = 0;
            let mut next_id = 1;
            for appends in rounds {
                for (stream, count) in appends {
                    let id = format!("s{}-{stream}", stream % 3);
                    apply(&mut heads, &id, count, position, position as i64);
                    model.insert(id.clone(), heads.get(&id).unwrap().unwrap());
                    position += count;
                }
                checkpoint(&fs, &mut heads, &mut next_id);
                prop_assert!(heads.files().len() <= 1 + MAX_DELTAS);
                prop_assert_eq!(&read_chain(heads.files()).unwrap(), &model);
                prop_assert_eq!(&heads.categories, &categories_of(&model));
                let lock = RwLock::new(heads);
                for id in model.keys().step_by(7) {
                    prop_assert_eq!(lookup(&lock, id).unwrap(), model.get(id).copied());
                }
                prop_assert_eq!(lookup(&lock, "s0-none").unwrap(), None);
                let all = list(&lock, Bound::Unbounded, "", usize::MAX).unwrap();
                prop_assert_eq!(all, model.iter().map(|(k, v)| (k.clone(), *v)).collect::<Vec<_>>());
                let after = model.keys().nth(model.len() / 2).cloned().unwrap_or_default();
                let page = list(&lock, Bound::Excluded(&after), "s1-", 5).unwrap();
                let want: Vec<_> = model
                    .range::<str, _>((Bound::Excluded(after.as_str()), Bound::Unbounded))
                    .filter(|(k, _)| k.starts_with("s1-"))
                    .take(5)
                    .map(|(k, v)| (k.clone(), *v))
                    .collect();
                if after.as_str() >= "s1-" {
                    prop_assert_eq!(page, want);
                }
                heads = lock.into_inner().unwrap();
            }
            // A few appends to old streams of a store that has many.
            for s in 0..1000 {
                apply(&mut heads, &format!("old-{s}"), 1, position, 2);
                position += 1;
            }
            checkpoint(&fs, &mut heads, &mut next_id);
            for s in 0..10 {
                apply(&mut heads, &format!("old-{s}"), 1, position, 3);
                position += 1;
            }
            match heads.take_checkpoint() {
                HeadsWrite::Delta { changed, .. } => prop_assert_eq!(changed.heads.len(), 10),
                other => prop_assert!(false, "expected a delta, got {:?}", other),
            }
        }
    }
}
