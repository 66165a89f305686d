//! A heads file (`heads-<id>.snap`): stream heads at a checkpoint, sorted by stream id in
//! blocks, so that a head is found by reading one block and the store never holds every
//! head in memory. The manifest names a base, which holds every stream, and the deltas after
//! it, each holding the streams changed since the file before it (see
//! `Heads::take_checkpoint`); a stream's head is the one in the newest file that has it.
//!
//! | part    | bytes                                                                   |
//! |---------|-------------------------------------------------------------------------|
//! | header  | magic `ANNALHDS`, u32 format version                                    |
//! | blocks  | per block: u32 count, then per head (in id order) str16 stream id, u64 revision, u64 first position, u64 last position, i64 created at, i64 last written at; then a CRC32C of the block |
//! | footer  | u64 streams; u32 categories, per category str16 name, u64 streams, u64 events; u32 blocks, per block u64 offset, u32 length, str16 first stream id; u32 filter words, the words |
//! | trailer | u64 footer offset, u32 CRC32C of the footer                             |
//!
//! Opening a file reads and checks only its footer: the fences (each block's first id) and
//! a Bloom filter over its stream ids ([`BITS_PER_STREAM`] bits each), so that a stream the
//! file does not hold costs no block read. What of the footer stays in memory depends on its
//! size, as for index runs: the filter while it is at most `FILTER_IN_MEMORY` bytes (a larger
//! one is probed by reading the one 64-byte filter block a stream needs), the fences while
//! they are at most `TABLE_IN_MEMORY` bytes (of larger ones, every `SPARSE`th fence and
//! where its group starts; a lookup reads its group's fences). Blocks (`block.rs`) are read
//! through the [`BlockCache`].

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use annal_core::{Error, Result};

use super::block::Block;
use super::cache::BlockCache;
use super::{CategoryCount, Head};
use crate::codec::{corrupt, io_err, Fields, Reader};
use crate::index::filter::{holds, holds_on_disk, RunFilter};
use crate::index::run::{FILTER_IN_MEMORY, SPARSE, TABLE_IN_MEMORY};
use crate::io::{FileRef, Fs};

const MAGIC: &[u8; 8] = b"ANNALHDS";
const HEADER_LEN: u64 = 12;
const TRAILER_LEN: u64 = 12;
/// A block is closed once it holds this many bytes.
const BLOCK_BYTES: usize = 4096;
/// Bytes written out at once.
const WRITE_CHUNK: usize = 1 << 20;

/// The version of heads files this build writes and reads. Version 1 was one sorted list
/// read whole.
pub const HEADS_VERSION: u32 = 2;

/// Filter bits per stream: about one stream in a hundred that a file does not hold reads a
/// block of it.
pub const BITS_PER_STREAM: u64 = 10;

/// The filter key of a stream id.
pub fn stream_hash(id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(id.as_bytes())
}

/// An open heads file: what it keeps of its footer in memory, its blocks on disk.
pub struct HeadsFile {
    pub id: u64,
    path: PathBuf,
    file: FileRef,
    /// Streams the file holds.
    pub streams: u64,
    /// Every category's counts at the checkpoint that wrote the file.
    pub categories: Vec<(String, CategoryCount)>,
    fences: Fences,
    filter: Filter,
}

/// Where the blocks are. Fence ids are laid end to end in one string, with where each ends.
enum Fences {
    /// Every block's first id, and where each block starts and the last one ends (blocks
    /// lie end to end).
    Memory {
        ids: String,
        ends: Vec<u32>,
        starts: Vec<u64>,
    },
    /// The first id of every `SPARSE`th block, and the file offset of that block's fence
    /// entry (the last offset is the end of the fence entries); `blocks` in all.
    Sparse {
        ids: String,
        ends: Vec<u32>,
        at: Vec<u64>,
        blocks: usize,
    },
}

/// The filter over the file's stream ids: in memory, or where its words are in the file.
enum Filter {
    Memory(Vec<u64>),
    Disk { at: u64, words: u64 },
}

/// The `i`th of ids laid end to end in `ids`, each ending at `ends[i]`.
fn nth<'a>(ids: &'a str, ends: &[u32], i: usize) -> &'a str {
    let start = if i == 0 { 0 } else { ends[i - 1] as usize };
    &ids[start..ends[i] as usize]
}

/// The number of the last of `n` ids in order whose id is at or before `id`.
fn last_at_or_before<'a>(n: usize, nth: impl Fn(usize) -> &'a str, id: &str) -> Option<usize> {
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if nth(mid) <= id {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo.checked_sub(1)
}

/// Bytes of a footer read at once (a few in unit tests, so that fields cross chunks).
const FOOTER_CHUNK: usize = if cfg!(test) { 61 } else { 1 << 20 };

/// A footer read a chunk at a time, its CRC32C taken over every byte as it is read, so that
/// a large footer is never held whole.
struct Chunked<'a> {
    file: &'a FileRef,
    path: &'a Path,
    /// The file offset of `buf[0]`, and where the footer ends.
    base: u64,
    end: u64,
    buf: Vec<u8>,
    /// The next byte of `buf` to read.
    at: usize,
    crc: u32,
}

impl Fields for Chunked<'_> {
    fn offset(&self) -> u64 {
        self.base + self.at as u64
    }

    fn path(&self) -> &Path {
        self.path
    }

    fn take(&mut self, n: usize) -> Result<&[u8]> {
        if self.buf.len() - self.at < n {
            self.buf.drain(..self.at);
            self.base += self.at as u64;
            self.at = 0;
            let have = self.base + self.buf.len() as u64;
            let more = ((n - self.buf.len()).max(FOOTER_CHUNK) as u64).min(self.end - have);
            if self.buf.len() + (more as usize) < n {
                return Err(corrupt(
                    self.path,
                    self.base,
                    format!("footer ends early: a field of {n} bytes"),
                ));
            }
            let old = self.buf.len();
            self.buf.resize(old + more as usize, 0);
            self.file
                .read_exact_at(&mut self.buf[old..], have)
                .map_err(|e| io_err("reading", self.path, e))?;
            self.crc = crc32c::crc32c_append(self.crc, &self.buf[old..]);
        }
        let field = &self.buf[self.at..self.at + n];
        self.at += n;
        Ok(field)
    }
}

impl Chunked<'_> {
    /// Passes over `n` bytes, taking them into the checksum.
    fn skip(&mut self, mut n: u64) -> Result<()> {
        while n > 0 {
            let step = n.min(FOOTER_CHUNK as u64) as usize;
            self.take(step)?;
            n -= step as u64;
        }
        Ok(())
    }

    /// Reads what is left of the footer; returns the checksum of all of it.
    fn finish(mut self) -> Result<u32> {
        let left = self.end - self.offset();
        self.skip(left)?;
        Ok(self.crc)
    }
}

/// A group of sparse fences read from the file: the number of its first block, where each
/// of its blocks starts and ends, and their first ids.
#[derive(Default)]
struct Group {
    first: usize,
    blocks: Vec<(u64, u64)>,
    ids: Vec<String>,
}

impl std::fmt::Debug for HeadsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadsFile")
            .field("id", &self.id)
            .field("streams", &self.streams)
            .field("blocks", &self.blocks())
            .field("footer_bytes", &self.bytes())
            .finish()
    }
}

impl HeadsFile {
    /// Opens a heads file, reading its header and footer.
    pub fn open(fs: &dyn Fs, path: &Path, id: u64) -> Result<HeadsFile> {
        // The crate's unit tests open every other file keeping nothing of its footer, so
        // that small files take the paths of large ones.
        if cfg!(test) && id % 2 == 1 {
            return HeadsFile::open_keeping(fs, path, id, 0, 0);
        }
        HeadsFile::open_keeping(fs, path, id, FILTER_IN_MEMORY, TABLE_IN_MEMORY)
    }

    /// `open`, keeping the filter in memory when it is at most `filter_bytes` bytes and
    /// every fence when the fences are at most `fence_bytes`.
    fn open_keeping(
        fs: &dyn Fs,
        path: &Path,
        id: u64,
        filter_bytes: u64,
        fence_bytes: u64,
    ) -> Result<HeadsFile> {
        let file = fs.open(path).map_err(|e| io_err("opening", path, e))?;
        let len = file.len().map_err(|e| io_err("reading", path, e))?;
        if len < HEADER_LEN + TRAILER_LEN {
            return Err(corrupt(
                path,
                0,
                format!("{len} bytes are too few for a heads file"),
            ));
        }
        let mut header = [0u8; HEADER_LEN as usize];
        file.read_exact_at(&mut header, 0)
            .map_err(|e| io_err("reading", path, e))?;
        if &header[..8] != MAGIC {
            return Err(corrupt(path, 0, "bad magic"));
        }
        let version = u32::from_le_bytes(header[8..12].try_into().expect("4"));
        if version != HEADS_VERSION {
            return Err(Error::UnsupportedFormat {
                path: path.display().to_string(),
                found: version,
                supported: HEADS_VERSION,
            });
        }
        let mut trailer = [0u8; TRAILER_LEN as usize];
        file.read_exact_at(&mut trailer, len - TRAILER_LEN)
            .map_err(|e| io_err("reading", path, e))?;
        let footer_at = u64::from_le_bytes(trailer[..8].try_into().expect("8"));
        let crc = u32::from_le_bytes(trailer[8..].try_into().expect("4"));
        if footer_at < HEADER_LEN || footer_at > len - TRAILER_LEN {
            return Err(corrupt(
                path,
                len - TRAILER_LEN,
                "footer offset out of range",
            ));
        }
        // The footer is read a chunk at a time, its checksum taken as it goes: what stays of
        // it depends on its size, and nothing it says is kept unless the checksum matches.
        let mut r = Chunked {
            file: &file,
            path,
            base: footer_at,
            end: len - TRAILER_LEN,
            buf: Vec::new(),
            at: 0,
            crc: 0,
        };
        let streams = r.u64()?;
        let mut categories = Vec::new();
        for _ in 0..r.u32()? {
            let name = r.str16()?;
            categories.push((
                name,
                CategoryCount {
                    streams: r.u64()?,
                    events: r.u64()?,
                },
            ));
        }
        let n = r.u32()? as usize;
        // Each fence takes at least 12 bytes in memory: past that many, only one in `SPARSE`
        // is kept as it is read; below, every one, thinned out at the end if they take more
        // than `fence_bytes`.
        let surely_sparse = n as u64 * 12 > fence_bytes;
        let (mut ids, mut ends) = (String::new(), Vec::new());
        let (mut starts, mut at) = (Vec::new(), Vec::new());
        let mut end_of_last = HEADER_LEN;
        for i in 0..n {
            let entry_at = r.offset();
            let offset = r.u64()?;
            let end = offset + u64::from(r.u32()?);
            if offset != end_of_last || end > footer_at {
                return Err(corrupt(path, r.offset(), "block out of place"));
            }
            end_of_last = end;
            let first = r.str16()?;
            if surely_sparse && !i.is_multiple_of(SPARSE) {
                continue;
            }
            if !surely_sparse {
                starts.push(offset);
            }
            at.push(entry_at);
            ids.push_str(&first);
            ends.push(ids.len() as u32);
        }
        starts.push(end_of_last);
        let whole = (ids.len() + ends.len() * 4 + starts.len() * 8) as u64;
        let fences = if !surely_sparse && whole <= fence_bytes {
            Fences::Memory { ids, ends, starts }
        } else {
            // Kept as read when surely sparse; else thinned out to one in `SPARSE` now.
            let (ids, ends, mut at) = if surely_sparse {
                (ids, ends, at)
            } else {
                let (mut kept, mut kept_ends, mut kept_at) =
                    (String::new(), Vec::new(), Vec::new());
                for g in (0..ends.len()).step_by(SPARSE) {
                    kept.push_str(nth(&ids, &ends, g));
                    kept_ends.push(kept.len() as u32);
                    kept_at.push(at[g]);
                }
                (kept, kept_ends, kept_at)
            };
            at.push(r.offset());
            Fences::Sparse {
                ids,
                ends,
                at,
                blocks: n,
            }
        };
        let words = r.u32()? as usize;
        if words == 0 || !words.is_multiple_of(crate::index::filter::BLOCK_WORDS) {
            return Err(corrupt(path, r.offset(), "bad filter size"));
        }
        let filter = if words as u64 * 8 <= filter_bytes {
            let mut filter = Vec::with_capacity(words.min((r.end - r.offset()) as usize / 8));
            for _ in 0..words {
                filter.push(r.u64()?);
            }
            Filter::Memory(filter)
        } else {
            let at = r.offset();
            r.skip(words as u64 * 8)?;
            Filter::Disk {
                at,
                words: words as u64,
            }
        };
        if r.finish()? != crc {
            return Err(corrupt(path, footer_at, "heads footer checksum mismatch"));
        }
        Ok(HeadsFile {
            id,
            path: path.to_path_buf(),
            file,
            streams,
            categories,
            fences,
            filter,
        })
    }

    fn blocks(&self) -> usize {
        match &self.fences {
            Fences::Memory { ends, .. } => ends.len(),
            Fences::Sparse { blocks, .. } => *blocks,
        }
    }

    /// The fences of sparse group `g`, read from the file.
    fn group(&self, g: usize) -> Result<Group> {
        let Fences::Sparse { at, blocks, .. } = &self.fences else {
            return Err(Error::Internal(
                "a heads file whose fences are all in memory has no groups".into(),
            ));
        };
        let (from, to) = (at[g], at[g + 1]);
        let mut raw = vec![0u8; (to - from) as usize];
        self.file
            .read_exact_at(&mut raw, from)
            .map_err(|e| io_err("reading", &self.path, e))?;
        let mut r = Reader::new(&self.path, &raw, from);
        let first = g * SPARSE;
        let n = SPARSE.min(blocks - first);
        let mut group = Group {
            first,
            blocks: Vec::with_capacity(n),
            ids: Vec::with_capacity(n),
        };
        for _ in 0..n {
            let offset = r.u64()?;
            let len = u64::from(r.u32()?);
            group.blocks.push((offset, offset + len));
            group.ids.push(r.str16()?);
        }
        Ok(group)
    }

    /// The number of the block that would hold `id` (the last whose first id is at or
    /// before it), and where that block starts and ends.
    fn block_for(&self, id: &str) -> Result<Option<(usize, u64, u64)>> {
        match &self.fences {
            Fences::Memory { ids, ends, starts } => {
                Ok(last_at_or_before(ends.len(), |i| nth(ids, ends, i), id)
                    .map(|b| (b, starts[b], starts[b + 1])))
            }
            Fences::Sparse { ids, ends, .. } => {
                let Some(g) = last_at_or_before(ends.len(), |i| nth(ids, ends, i), id) else {
                    return Ok(None);
                };
                let group = self.group(g)?;
                // The group's first id is the sparse fence, at or before `id`.
                let j = last_at_or_before(group.ids.len(), |i| &group.ids[i], id).unwrap_or(0);
                let (offset, end) = group.blocks[j];
                Ok(Some((group.first + j, offset, end)))
            }
        }
    }

    /// Where block `i` starts and ends; `group` keeps the sparse group read last.
    fn locate(&self, i: usize, group: &mut Group) -> Result<(u64, u64)> {
        match &self.fences {
            Fences::Memory { starts, .. } => Ok((starts[i], starts[i + 1])),
            Fences::Sparse { .. } => {
                if i < group.first || i >= group.first + group.blocks.len() {
                    *group = self.group(i / SPARSE)?;
                }
                Ok(group.blocks[i - group.first])
            }
        }
    }

    /// Memory held by what is kept of the footer.
    pub fn bytes(&self) -> usize {
        (match &self.fences {
            Fences::Memory { ids, ends, starts } => {
                ids.capacity() + ends.capacity() * 4 + starts.capacity() * 8
            }
            Fences::Sparse { ids, ends, at, .. } => {
                ids.capacity() + ends.capacity() * 4 + at.capacity() * 8
            }
        }) + match &self.filter {
            Filter::Memory(w) => w.capacity() * 8,
            Filter::Disk { .. } => 0,
        }
    }

    /// Reads the block that lies from `offset` to `end`.
    fn read_block(&self, offset: u64, end: u64) -> Result<Block> {
        let mut buf = vec![0u8; (end - offset) as usize];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(|e| io_err("reading", &self.path, e))?;
        Block::decode(&self.path, offset, &buf)
    }

    /// False when the file certainly does not hold the stream of `hash`.
    fn may_hold(&self, hash: u64) -> Result<bool> {
        match &self.filter {
            Filter::Memory(words) => Ok(holds(words, hash)),
            Filter::Disk { at, words } => holds_on_disk(&self.file, *at, *words, hash)
                .map_err(|e| io_err("reading", &self.path, e)),
        }
    }

    /// The head of `id` (`hash` is its [`stream_hash`]), if this file holds it.
    pub fn get(&self, id: &str, hash: u64, cache: &BlockCache) -> Result<Option<Head>> {
        if !self.may_hold(hash)? {
            return Ok(None);
        }
        let Some((b, offset, end)) = self.block_for(id)? else {
            return Ok(None);
        };
        let block = match cache.get(self.id, b) {
            Some(block) => block,
            None => cache.insert(self.id, b, Arc::new(self.read_block(offset, end)?)),
        };
        Ok(block.find(id))
    }

    /// The heads from `from` on, in id order, read block by block (past the cache).
    pub fn scan(self: &Arc<Self>, from: Bound<&str>) -> Scan {
        let (first, error) = match from {
            Bound::Unbounded => (0, None),
            Bound::Included(id) | Bound::Excluded(id) => match self.block_for(id) {
                Ok(b) => (b.map_or(0, |b| b.0), None),
                Err(e) => (self.blocks(), Some(e)),
            },
        };
        Scan {
            file: self.clone(),
            next_block: first,
            group: Group::default(),
            error,
            block: Block::default(),
            at: 0,
            from: match from {
                Bound::Unbounded => Bound::Unbounded,
                Bound::Included(id) => Bound::Included(id.to_string()),
                Bound::Excluded(id) => Bound::Excluded(id.to_string()),
            },
        }
    }
}

/// The heads of a file in id order, from a bound on.
pub struct Scan {
    file: Arc<HeadsFile>,
    next_block: usize,
    group: Group,
    /// An error finding where to start, reported first.
    error: Option<Error>,
    block: Block,
    at: usize,
    from: Bound<String>,
}

impl Iterator for Scan {
    type Item = Result<(String, Head)>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.error.take() {
            return Some(Err(e));
        }
        while self.at >= self.block.len() {
            if self.next_block >= self.file.blocks() {
                return None;
            }
            let read = self
                .file
                .locate(self.next_block, &mut self.group)
                .and_then(|(offset, end)| self.file.read_block(offset, end));
            match read {
                Ok(b) => self.block = b,
                Err(e) => {
                    self.next_block = self.file.blocks();
                    return Some(Err(e));
                }
            }
            self.next_block += 1;
            self.at = match &self.from {
                Bound::Unbounded => 0,
                Bound::Included(id) => self.block.lower_bound(id),
                Bound::Excluded(id) => {
                    let i = self.block.lower_bound(id);
                    i + usize::from(i < self.block.len() && self.block.id(i) == id)
                }
            };
        }
        let i = self.at;
        self.at += 1;
        Some(Ok((self.block.id(i).to_string(), self.block.head(i))))
    }
}

fn put_str16(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u16).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

/// Writes a heads file from heads given in id order.
pub struct HeadsWriter {
    path: PathBuf,
    file: FileRef,
    /// Bytes not yet written, from file offset `written`.
    out: Vec<u8>,
    written: u64,
    /// The open block: its bytes and count.
    block: Vec<u8>,
    in_block: u32,
    first_of_block: String,
    last: Option<String>,
    fences: Vec<(u64, u32, String)>,
    filter: RunFilter,
    streams: u64,
}

impl HeadsWriter {
    /// Creates the file, with a filter sized for at most `streams` heads.
    pub fn create(fs: &dyn Fs, path: &Path, streams: u64) -> Result<HeadsWriter> {
        let file = fs.create(path).map_err(|e| io_err("creating", path, e))?;
        let mut out = Vec::with_capacity(WRITE_CHUNK + BLOCK_BYTES * 2);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&HEADS_VERSION.to_le_bytes());
        Ok(HeadsWriter {
            path: path.to_path_buf(),
            file,
            out,
            written: 0,
            block: Vec::with_capacity(BLOCK_BYTES * 2),
            in_block: 0,
            first_of_block: String::new(),
            last: None,
            fences: Vec::new(),
            filter: RunFilter::with_bits(streams.max(1), BITS_PER_STREAM),
            streams: 0,
        })
    }

    /// Adds the next head; ids must increase.
    pub fn push(&mut self, id: &str, h: &Head) -> Result<()> {
        if self.last.as_deref().is_some_and(|l| l >= id) {
            return Err(Error::Internal(format!(
                "heads written out of order: '{id}' after '{}'",
                self.last.as_deref().unwrap_or_default()
            )));
        }
        if self.in_block == 0 {
            self.first_of_block.clear();
            self.first_of_block.push_str(id);
            self.block.clear();
            self.block.extend_from_slice(&0u32.to_le_bytes());
        }
        put_str16(&mut self.block, id);
        for w in [
            h.revision,
            h.first_position,
            h.last_position,
            h.created_at as u64,
            h.last_written_at as u64,
        ] {
            self.block.extend_from_slice(&w.to_le_bytes());
        }
        self.in_block += 1;
        self.filter.add_all(&[stream_hash(id)]);
        self.streams += 1;
        match &mut self.last {
            Some(l) => {
                l.clear();
                l.push_str(id);
            }
            None => self.last = Some(id.to_string()),
        }
        if self.block.len() >= BLOCK_BYTES {
            self.close_block()?;
        }
        Ok(())
    }

    fn close_block(&mut self) -> Result<()> {
        if self.in_block == 0 {
            return Ok(());
        }
        self.block[..4].copy_from_slice(&self.in_block.to_le_bytes());
        let crc = crc32c::crc32c(&self.block);
        self.block.extend_from_slice(&crc.to_le_bytes());
        let offset = self.written + self.out.len() as u64;
        self.fences.push((
            offset,
            self.block.len() as u32,
            std::mem::take(&mut self.first_of_block),
        ));
        self.out.extend_from_slice(&self.block);
        self.in_block = 0;
        if self.out.len() >= WRITE_CHUNK {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.file
            .write_all_at(&self.out, self.written)
            .map_err(|e| io_err("writing", &self.path, e))?;
        self.written += self.out.len() as u64;
        self.out.clear();
        Ok(())
    }

    /// Writes the footer with `categories` and makes the file durable (the caller syncs
    /// the folder). Returns the number of heads written.
    pub fn finish(mut self, categories: &BTreeMap<String, CategoryCount>) -> Result<u64> {
        self.close_block()?;
        let footer_at = self.written + self.out.len() as u64;
        let mut f = Vec::with_capacity(64 + self.fences.len() * 32 + self.filter.words.len() * 8);
        f.extend_from_slice(&self.streams.to_le_bytes());
        f.extend_from_slice(&(categories.len() as u32).to_le_bytes());
        for (name, c) in categories {
            put_str16(&mut f, name);
            f.extend_from_slice(&c.streams.to_le_bytes());
            f.extend_from_slice(&c.events.to_le_bytes());
        }
        f.extend_from_slice(&(self.fences.len() as u32).to_le_bytes());
        for (offset, len, first) in &self.fences {
            f.extend_from_slice(&offset.to_le_bytes());
            f.extend_from_slice(&len.to_le_bytes());
            put_str16(&mut f, first);
        }
        f.extend_from_slice(&(self.filter.words.len() as u32).to_le_bytes());
        for w in &self.filter.words {
            f.extend_from_slice(&w.to_le_bytes());
        }
        let crc = crc32c::crc32c(&f);
        self.out.extend_from_slice(&f);
        self.out.extend_from_slice(&footer_at.to_le_bytes());
        self.out.extend_from_slice(&crc.to_le_bytes());
        self.flush()?;
        self.file
            .sync_data()
            .map_err(|e| io_err("syncing", &self.path, e))?;
        Ok(self.streams)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::sim::SimFs;

    fn head(i: u64) -> Head {
        Head {
            revision: i,
            first_position: i * 10,
            last_position: i * 10 + i,
            created_at: i as i64,
            last_written_at: i as i64 + 1,
        }
    }

    #[test]
    fn a_file_finds_every_head_it_holds_scans_in_order_and_refuses_damage() {
        let fs = SimFs::new();
        let p = Path::new("/s/heads.snap");
        let ids: Vec<String> = (0..20_000).map(|i| format!("account-{i:05}")).collect();
        let mut w = HeadsWriter::create(&fs, p, ids.len() as u64).unwrap();
        for (i, id) in ids.iter().enumerate() {
            w.push(id, &head(i as u64)).unwrap();
        }
        assert!(
            w.push("account-0", &head(0)).is_err(),
            "out of order is refused"
        );
        let mut cats = BTreeMap::new();
        cats.insert(
            "account".to_string(),
            CategoryCount {
                streams: 20_000,
                events: 7,
            },
        );
        assert_eq!(w.finish(&cats).unwrap(), 20_000);
        let whole = HeadsFile::open(&fs, p, 0).unwrap();
        // The same file with its filter left on disk and one fence in `SPARSE` kept.
        let thin = HeadsFile::open_keeping(&fs, p, 2, 0, 0).unwrap();
        assert!(matches!(whole.fences, Fences::Memory { .. }));
        assert!(matches!(whole.filter, Filter::Memory(_)));
        assert!(matches!(thin.fences, Fences::Sparse { .. }));
        assert!(matches!(thin.filter, Filter::Disk { .. }));
        assert!(
            thin.bytes() * 20 < whole.bytes(),
            "{} bytes kept of {}",
            thin.bytes(),
            whole.bytes()
        );
        for f in [whole, thin] {
            let f = Arc::new(f);
            assert!(f.blocks() > 3 * SPARSE, "{} blocks", f.blocks());
            assert_eq!(f.categories, vec![("account".to_string(), cats["account"])]);
            let cache = BlockCache::new(1 << 20);
            for (i, id) in ids.iter().enumerate() {
                assert_eq!(
                    f.get(id, stream_hash(id), &cache).unwrap(),
                    Some(head(i as u64))
                );
            }
            for absent in ["account-", "account-20000x", "zzz", "", "account-00001a"] {
                assert_eq!(f.get(absent, stream_hash(absent), &cache).unwrap(), None);
            }
            let all: Vec<_> = f.scan(Bound::Unbounded).map(Result::unwrap).collect();
            assert_eq!(all.len(), 20_000);
            assert!(all
                .iter()
                .zip(&ids)
                .all(|((a, h), b)| a == b && *h == head(b[8..].parse().unwrap())));
            // From every block edge of a few groups, and from ids between.
            for k in (0..20_000).step_by(97).chain([0, 1, 19_998, 19_999]) {
                let after: Vec<_> = f
                    .scan(Bound::Excluded(&ids[k]))
                    .map(|r| r.unwrap().0)
                    .collect();
                assert_eq!(after.len(), 19_999 - k);
                assert_eq!(after.first(), ids.get(k + 1));
                let from = ids[k][..12].to_string();
                let n = f.scan(Bound::Included(&from)).count();
                let want = ids.iter().filter(|i| i.as_str() >= from.as_str()).count();
                assert_eq!(n, want, "from {from}");
            }
        }

        // A flipped bit in a block is found when the block is read.
        let mut bytes = fs.read_file(p).unwrap();
        bytes[40] ^= 1;
        fs.write_file(p, bytes.clone());
        let f = HeadsFile::open(&fs, p, 2).unwrap();
        let err = f
            .get(&ids[0], stream_hash(&ids[0]), &BlockCache::new(1 << 20))
            .unwrap_err();
        assert!(matches!(err, Error::Corruption { .. }), "{err}");
        // One anywhere in the footer or trailer stops the open, kept whole or not.
        bytes[40] ^= 1;
        let n = bytes.len();
        let footer_at = u64::from_le_bytes(bytes[n - 12..n - 4].try_into().unwrap()) as usize;
        for at in (footer_at..n).step_by(53).chain([footer_at, n - 13, n - 1]) {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x10;
            fs.write_file(p, damaged);
            for open in [HeadsFile::open(&fs, p, 4), HeadsFile::open(&fs, p, 5)] {
                assert!(
                    matches!(open, Err(Error::Corruption { .. })),
                    "a flipped bit at {at} of {n}: {open:?}"
                );
            }
        }
    }
}
