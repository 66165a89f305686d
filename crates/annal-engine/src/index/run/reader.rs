//! Reading a run: opening it (header, fences, block table and filter, all checked), lookups
//! by key and seq, the id filter's questions, and iteration in order for merges.

use std::borrow::Cow;
use std::path::Path;

use annal_core::{Direction, Error, Result};

use super::{
    Filter, Run, Table, BLOCK, FENCE_LEN, FILTER_IN_MEMORY, HEADER_LEN, MAGIC, RUN_VERSION, SPARSE,
    TABLE_IN_MEMORY,
};
use crate::codec::corrupt;
use crate::index::block::unpack_block;
use crate::index::filter::{self, BLOCK_WORDS, RUN_BITS_PER_ID};
use crate::index::idfilter::IdFilter;
use crate::index::key::{is_id_key, Entry, KIND_ID};
use crate::io::Fs;

/// Blocks read at once when iterating a run or reading its id entries.
const READ_BLOCKS: usize = 64;

fn le_u32(b: &[u8]) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[..4]);
    u32::from_le_bytes(w)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[..8]);
    u64::from_le_bytes(w)
}

/// Where some blocks start (and the last of them ends), and their checksums.
type BlockTable<'a> = (Cow<'a, [u64]>, Cow<'a, [u32]>);

impl Run {
    /// Opens a run and loads its fences, block table and (when small) id filter. A run of
    /// another version is refused with `UnsupportedFormat`.
    pub fn open(fs: &dyn Fs, path: &Path, id: u64) -> Result<Run> {
        Run::open_keeping(fs, path, id, FILTER_IN_MEMORY, TABLE_IN_MEMORY)
    }

    /// `open`, keeping the id filter in memory when it is at most `filter_bytes` bytes and
    /// the whole block table when it is at most `table_bytes`.
    fn open_keeping(
        fs: &dyn Fs,
        path: &Path,
        id: u64,
        filter_bytes: u64,
        table_bytes: u64,
    ) -> Result<Run> {
        let file = fs
            .open(path)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        let mut header = [0u8; HEADER_LEN as usize];
        file.read_exact_at(&mut header, 0)
            .map_err(|_| corrupt(path, 0, "index run header is incomplete"))?;
        if &header[0..8] != MAGIC {
            return Err(corrupt(path, 0, "not an index run (bad magic)"));
        }
        if crc32c::crc32c(&header[0..44]) != le_u32(&header[44..48]) {
            return Err(corrupt(path, 0, "index run header checksum mismatch"));
        }
        let version = le_u32(&header[8..12]);
        if version != RUN_VERSION {
            return Err(Error::UnsupportedFormat {
                path: path.display().to_string(),
                found: version,
                supported: RUN_VERSION,
            });
        }
        let block = le_u32(&header[12..16]) as usize;
        if block != BLOCK {
            return Err(corrupt(
                path,
                12,
                format!("block size {block}, expected {BLOCK}"),
            ));
        }
        let count = le_u64(&header[16..24]);
        let words = le_u64(&header[24..32]);
        if !words.is_multiple_of(BLOCK_WORDS as u64) {
            return Err(corrupt(
                path,
                24,
                format!("filter of {words} words is not whole {BLOCK_WORDS}-word blocks"),
            ));
        }
        let fence_count = count.div_ceil(BLOCK as u64);
        let data_len = le_u64(&header[36..44]);
        let fence_at = data_len
            .checked_add(HEADER_LEN)
            .ok_or_else(|| corrupt(path, 36, format!("data size {data_len} is impossible")))?;
        let file_len = file
            .len()
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        // Per block: a fence, where it starts and a checksum.
        let per_block = FENCE_LEN as u64 + 8 + 4;
        let tail_len = words
            .checked_mul(8)
            .and_then(|w| w.checked_add(fence_count.checked_mul(per_block)?))
            .filter(|t| *t <= file_len)
            .ok_or_else(|| corrupt(path, 24, format!("filter size {words} is impossible")))?;
        if fence_at.checked_add(tail_len) != Some(file_len) {
            return Err(corrupt(
                path,
                0,
                format!(
                    "index run is {file_len} bytes, its header implies {}",
                    fence_at.saturating_add(tail_len)
                ),
            ));
        }
        // The tail is read a section at a time, a chunk at a time, for its checksum; what
        // is kept of it depends on its size.
        let short = |_| corrupt(path, fence_at, "index run is shorter than its header says");
        let blocks = fence_count as usize;
        let keep_table = fence_count * per_block <= table_bytes;
        let keep_filter = words * 8 <= filter_bytes;
        let filter_at = fence_at + fence_count * per_block;
        let mut crc = 0u32;
        let mut section = |at: u64, len: u64, elem: usize, f: &mut dyn FnMut(&[u8])| {
            let mut chunk = vec![0u8; ((1 << 20) / elem * elem).min(len as usize)];
            let mut done = 0;
            while done < len {
                let n = chunk.len().min((len - done) as usize);
                file.read_exact_at(&mut chunk[..n], at + done)
                    .map_err(short)?;
                crc = crc32c::crc32c_append(crc, &chunk[..n]);
                chunk[..n].chunks_exact(elem).for_each(&mut *f);
                done += n as u64;
            }
            Ok::<_, Error>(())
        };
        let (mut fences, mut every) = (Vec::new(), Vec::new());
        let mut i = 0usize;
        section(
            fence_at,
            fence_count * FENCE_LEN as u64,
            FENCE_LEN,
            &mut |c| {
                let e = Entry::new(le_u64(&c[0..8]), le_u64(&c[8..16]), le_u64(&c[16..24]));
                if keep_table {
                    fences.push(e);
                } else if i.is_multiple_of(SPARSE) {
                    every.push(e);
                }
                i += 1;
            },
        )?;
        // Each block holds at least one entry, so starts rise strictly from 0.
        let (mut starts, mut prev, mut rising) = (Vec::new(), None::<u64>, true);
        section(
            fence_at + fence_count * FENCE_LEN as u64,
            fence_count * 8,
            8,
            &mut |c| {
                let s = le_u64(c);
                rising &= prev.map_or(s == 0, |p| p < s);
                prev = Some(s);
                if keep_table {
                    starts.push(s);
                }
            },
        )?;
        rising &= prev.is_none_or(|p| p < data_len);
        let mut crcs = Vec::new();
        section(
            fence_at + fence_count * (FENCE_LEN as u64 + 8),
            fence_count * 4,
            4,
            &mut |c| {
                if keep_table {
                    crcs.push(le_u32(c));
                }
            },
        )?;
        let mut filter = Vec::new();
        section(filter_at, words * 8, 8, &mut |c| {
            if keep_filter {
                filter.push(le_u64(c));
            }
        })?;
        if crc != le_u32(&header[32..36]) {
            return Err(corrupt(
                path,
                fence_at,
                "index run fence, block checksum or filter section checksum mismatch",
            ));
        }
        if !rising {
            return Err(corrupt(
                path,
                fence_at,
                "index run block table is inconsistent",
            ));
        }
        starts.push(data_len);
        Ok(Run {
            id,
            count,
            file,
            path: path.to_path_buf(),
            table: if keep_table {
                Table::Memory {
                    fences,
                    starts,
                    crcs,
                }
            } else {
                Table::Sparse {
                    every,
                    blocks,
                    at: fence_at,
                    data_len,
                }
            },
            filter: if keep_filter {
                Filter::Memory(filter)
            } else {
                Filter::Disk {
                    at: filter_at,
                    words,
                }
            },
            batch_range: std::sync::OnceLock::new(),
        })
    }
    /// The lowest and highest seq of the batch key's entries (`None`: the run has none).
    pub fn batch_range(&self) -> Result<Option<(u64, u64)>> {
        if let Some(r) = self.batch_range.get() {
            return Ok(*r);
        }
        let k = crate::index::fixed_key(crate::index::KIND_BATCH);
        let (mut lo, mut hi) = (Vec::new(), Vec::new());
        self.scan(k, 0, u64::MAX, Direction::Forward, 1, &mut lo)?;
        self.scan(k, 0, u64::MAX, Direction::Backward, 1, &mut hi)?;
        let range = lo.first().zip(hi.first()).map(|(a, b)| (a.0, b.0));
        let _ = self.batch_range.set(range);
        Ok(range)
    }

    /// False when the run certainly holds no entry of this event id key. A filter block that
    /// cannot be read answers "may hold": the block read that follows reports the error.
    pub fn may_hold_id(&self, key: u64) -> bool {
        match &self.filter {
            Filter::Memory(words) => words.is_empty() || filter::holds(words, key),
            Filter::Disk { at, words } => {
                filter::holds_on_disk(&self.file, *at, *words, key).unwrap_or(true)
            }
        }
    }

    /// `may_hold_id` for many keys: `out[i]` is set when the run may hold `keys[i]`. Every
    /// key's filter block in memory is read before any is tested, so their cache misses
    /// overlap instead of coming one after the other.
    pub fn may_hold_ids(&self, keys: &[u64], out: &mut [bool]) {
        if let Filter::Memory(words) = &self.filter {
            if !words.is_empty() {
                let blocks = words.len() / BLOCK_WORDS;
                let touched = keys
                    .iter()
                    .fold(0u64, |acc, &k| acc ^ words[filter::first_word(k, blocks)]);
                std::hint::black_box(touched);
            }
        }
        for (&k, maybe) in keys.iter().zip(out) {
            *maybe = *maybe || self.may_hold_id(k);
        }
    }

    /// About how many event ids the run holds, from the size of its filter: no fewer than
    /// it holds when its filter was sized for them.
    pub fn estimated_ids(&self) -> u64 {
        self.filter.words() * 64 / RUN_BITS_PER_ID
    }

    /// Adds the run's event id keys to `ids`, read `READ_BLOCKS` blocks at a time (they
    /// are contiguous: the id kind is the top byte of their keys).
    pub fn add_ids_to(&self, ids: &IdFilter) -> Result<()> {
        let first_id = Entry::new(u64::from(KIND_ID) << 56, 0, 0);
        let mut b = self.partition(|f| *f < first_id)?.saturating_sub(1);
        let (mut raw, mut buf, mut keys) = (Vec::new(), Vec::new(), Vec::new());
        while b < self.blocks() {
            self.blocks_into(b, READ_BLOCKS, &mut raw, &mut buf)?;
            keys.clear();
            keys.extend(buf.iter().map(|e| e.key).filter(|&k| is_id_key(k)));
            ids.add_all(&keys);
            if buf
                .last()
                .is_some_and(|e| e.key > first_id.key && !is_id_key(e.key))
            {
                break;
            }
            b += READ_BLOCKS;
        }
        Ok(())
    }

    /// How many blocks the run has.
    pub fn blocks(&self) -> usize {
        self.table.blocks()
    }

    /// Reads `n` little-endian values of `size` bytes at `at`.
    fn read_table(&self, at: u64, n: usize, size: usize) -> Result<Vec<u8>> {
        let mut raw = vec![0u8; n * size];
        self.file
            .read_exact_at(&mut raw, at)
            .map_err(|e| Error::io(format!("reading {}", self.path.display()), e))?;
        Ok(raw)
    }

    /// The number of leading fences for which `pred` holds (`pred` holds for a prefix).
    fn partition(&self, pred: impl Fn(&Entry) -> bool) -> Result<usize> {
        match &self.table {
            Table::Memory { fences, .. } => Ok(fences.partition_point(pred)),
            Table::Sparse {
                every, blocks, at, ..
            } => {
                let g = every.partition_point(&pred);
                if g == 0 {
                    return Ok(0);
                }
                // The answer lies after fence (g - 1) * SPARSE, which holds, and at or
                // before g * SPARSE, which does not (or is the end).
                let first = (g - 1) * SPARSE;
                let n = SPARSE.min(blocks - first);
                let raw = self.read_table(at + (first * FENCE_LEN) as u64, n, FENCE_LEN)?;
                let held = raw
                    .chunks_exact(FENCE_LEN)
                    .map(|c| Entry::new(le_u64(&c[0..8]), le_u64(&c[8..16]), le_u64(&c[16..24])))
                    .take_while(|e| pred(e))
                    .count();
                Ok(first + held)
            }
        }
    }

    /// Where blocks `first..last` start and where the last of them ends (`last - first +
    /// 1` offsets), and their checksums.
    fn block_table(&self, first: usize, last: usize) -> Result<BlockTable<'_>> {
        match &self.table {
            Table::Memory { starts, crcs, .. } => Ok((
                Cow::Borrowed(&starts[first..=last]),
                Cow::Borrowed(&crcs[first..last]),
            )),
            Table::Sparse {
                blocks,
                at,
                data_len,
                ..
            } => {
                let starts_at = at + (blocks * FENCE_LEN) as u64;
                let crcs_at = starts_at + (blocks * 8) as u64;
                let through = (last + 1).min(*blocks);
                let mut starts: Vec<u64> = self
                    .read_table(starts_at + (first * 8) as u64, through - first, 8)?
                    .chunks_exact(8)
                    .map(le_u64)
                    .collect();
                if last == *blocks {
                    starts.push(*data_len);
                }
                let crcs = self
                    .read_table(crcs_at + (first * 4) as u64, last - first, 4)?
                    .chunks_exact(4)
                    .map(le_u32)
                    .collect();
                Ok((Cow::Owned(starts), Cow::Owned(crcs)))
            }
        }
    }

    /// The entries of block `i`.
    pub fn block(&self, i: usize) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        self.blocks_into(i, 1, &mut Vec::new(), &mut out)?;
        Ok(out)
    }

    /// Replaces `out` with the entries of blocks `first..first + n` (fewer at the run's end),
    /// read in one go through `raw` and each checked against its checksum.
    fn blocks_into(
        &self,
        first: usize,
        n: usize,
        raw: &mut Vec<u8>,
        out: &mut Vec<Entry>,
    ) -> Result<()> {
        out.clear();
        let last = (first + n).min(self.blocks());
        if first >= last {
            return Ok(());
        }
        let (starts, crcs) = self.block_table(first, last)?;
        let base = starts[0];
        let end = starts[last - first];
        if starts.windows(2).any(|w| w[0] >= w[1]) || end < base {
            return Err(corrupt(
                &self.path,
                HEADER_LEN + base,
                "index run block table is inconsistent",
            ));
        }
        raw.resize((end - base) as usize, 0);
        self.file
            .read_exact_at(raw, HEADER_LEN + base)
            .map_err(|e| Error::io(format!("reading {}", self.path.display()), e))?;
        for i in first..last {
            let k = i - first;
            let at = HEADER_LEN + starts[k];
            let bytes = &raw[(starts[k] - base) as usize..(starts[k + 1] - base) as usize];
            if crcs[k] != crc32c::crc32c(bytes) {
                return Err(corrupt(
                    &self.path,
                    at,
                    format!("index block {i} checksum mismatch"),
                ));
            }
            let n = (self.count - (i * BLOCK) as u64).min(BLOCK as u64) as usize;
            if unpack_block(bytes, n, out).is_none() {
                return Err(corrupt(
                    &self.path,
                    at,
                    format!("index block {i} does not hold {n} packed entries"),
                ));
            }
        }
        Ok(())
    }

    /// `(seq, value)` of the entries of `key` with `lo <= seq <= hi`, in `dir` order, at
    /// most `limit`, appended to `out`.
    pub fn scan(
        &self,
        key: u64,
        lo: u64,
        hi: u64,
        dir: Direction,
        limit: usize,
        out: &mut Vec<(u64, u64)>,
    ) -> Result<()> {
        let mut taken = 0;
        match dir {
            Direction::Forward => {
                let target = Entry::new(key, lo, 0);
                let first = self.partition(|f| *f < target)?.saturating_sub(1);
                for b in first..self.blocks() {
                    for e in self.block(b)? {
                        if e < target {
                            continue;
                        }
                        if e.key != key || e.seq > hi {
                            return Ok(());
                        }
                        out.push((e.seq, e.value));
                        taken += 1;
                        if taken >= limit {
                            return Ok(());
                        }
                    }
                }
            }
            Direction::Backward => {
                let target = Entry::new(key, hi, u64::MAX);
                let end = self.partition(|f| *f <= target)?;
                for b in (0..end).rev() {
                    for e in self.block(b)?.into_iter().rev() {
                        if e > target {
                            continue;
                        }
                        if e.key != key || e.seq < lo {
                            return Ok(());
                        }
                        out.push((e.seq, e.value));
                        taken += 1;
                        if taken >= limit {
                            return Ok(());
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Every entry in order, read many blocks at a time.
    pub fn iter(&self) -> RunIter<'_> {
        RunIter {
            run: self,
            block: 0,
            raw: Vec::new(),
            buf: Vec::new(),
            at: 0,
        }
    }
}

/// Iterates a run's entries.
pub struct RunIter<'a> {
    run: &'a Run,
    /// The next block to read.
    block: usize,
    raw: Vec<u8>,
    /// The entries read, and the next one to hand out.
    buf: Vec<Entry>,
    at: usize,
}

impl RunIter<'_> {
    /// The next entry without taking it; `Ok(None)` at the end.
    pub fn peek(&mut self) -> Result<Option<Entry>> {
        if self.at == self.buf.len() {
            if self.block >= self.run.blocks() {
                return Ok(None);
            }
            self.run
                .blocks_into(self.block, READ_BLOCKS, &mut self.raw, &mut self.buf)?;
            self.block += READ_BLOCKS;
            self.at = 0;
        }
        Ok(self.buf.get(self.at).copied())
    }

    /// Takes the entry `peek` gave.
    pub fn advance(&mut self) {
        self.at += 1;
    }
}

impl Iterator for RunIter<'_> {
    type Item = Result<Entry>;
    fn next(&mut self) -> Option<Result<Entry>> {
        match self.peek() {
            Ok(Some(e)) => {
                self.at += 1;
                Some(Ok(e))
            }
            Ok(None) => None,
            Err(e) => {
                // Nothing more after an error.
                self.block = self.run.blocks();
                self.buf.clear();
                self.at = 0;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::key::{key, KIND_STREAM, KIND_TAG};
    use crate::io::sim::SimFs;

    #[test]
    fn run_scans_agree_with_a_sorted_vec() {
        let fs = SimFs::new();
        let mut entries: Vec<Entry> = Vec::new();
        for k in 0..5u64 {
            for s in 0..(k * 300 + 7) {
                entries.push(Entry::new(k << 56, s * 2, s + 1000 * k));
            }
        }
        entries.sort();
        let path = Path::new("/x/run-1.idx");
        Run::write(&fs, path, 1, entries.iter().copied().map(Ok)).unwrap();
        let run = Run::open(&fs, path, 1).unwrap();
        assert_eq!(run.count, entries.len() as u64);
        for k in 0..5u64 {
            for (lo, hi, limit) in [
                (0, u64::MAX, 10_000),
                (5, 101, 7),
                (300, 900, 1000),
                (10_000, 20_000, 5),
            ] {
                for dir in [Direction::Forward, Direction::Backward] {
                    let mut got = Vec::new();
                    run.scan(k << 56, lo, hi, dir, limit, &mut got).unwrap();
                    let mut want: Vec<(u64, u64)> = entries
                        .iter()
                        .filter(|e| e.key == k << 56 && e.seq >= lo && e.seq <= hi)
                        .map(|e| (e.seq, e.value))
                        .collect();
                    if dir == Direction::Backward {
                        want.reverse();
                    }
                    want.truncate(limit);
                    assert_eq!(got, want, "k={k} lo={lo} hi={hi} dir={dir:?}");
                }
            }
        }
        let all: Vec<Entry> = run.iter().map(|e| e.unwrap()).collect();
        assert_eq!(all, entries);
    }

    /// A run whose block table stays on disk but for every SPARSE-th fence answers every
    /// scan, at group edges too, as one that holds the whole table.
    #[test]
    fn a_sparse_block_table_answers_as_a_whole_one() {
        let fs = SimFs::new();
        let mut entries: Vec<Entry> = Vec::new();
        for k in 0..40u64 {
            for s in 0..(k * 73 + 1) {
                entries.push(Entry::new(k << 56, s * 3, s));
            }
        }
        entries.sort();
        let path = Path::new("/x/run-4.idx");
        Run::write(&fs, path, 4, entries.iter().copied().map(Ok)).unwrap();
        let whole = Run::open(&fs, path, 4).unwrap();
        let sparse = Run::open_keeping(&fs, path, 4, FILTER_IN_MEMORY, 0).unwrap();
        assert!(matches!(whole.table, Table::Memory { .. }));
        assert!(matches!(sparse.table, Table::Sparse { .. }));
        assert!(sparse.blocks() > 2 * SPARSE, "{} blocks", sparse.blocks());
        assert!(sparse.memory().0 * 50 < whole.memory().0);
        for k in 0..41u64 {
            for (lo, hi, limit) in [(0, u64::MAX, usize::MAX), (30, 900, 25), (5, 5, 1)] {
                for dir in [Direction::Forward, Direction::Backward] {
                    let (mut a, mut b) = (Vec::new(), Vec::new());
                    whole.scan(k << 56, lo, hi, dir, limit, &mut a).unwrap();
                    sparse.scan(k << 56, lo, hi, dir, limit, &mut b).unwrap();
                    assert_eq!(a, b, "k={k} lo={lo} hi={hi} {dir:?}");
                }
            }
        }
        let all: Vec<Entry> = sparse.iter().map(|e| e.unwrap()).collect();
        assert_eq!(all, entries);
        // The table a writer keeps of a large run is the one a reader keeps.
        let Table::Memory {
            fences,
            starts,
            crcs,
        } = &whole.table
        else {
            unreachable!()
        };
        let Table::Sparse {
            every,
            blocks,
            at,
            data_len,
        } = &sparse.table
        else {
            unreachable!()
        };
        let Table::Sparse {
            every: e2,
            blocks: b2,
            at: a2,
            data_len: d2,
        } = Table::new(fences.clone(), starts.clone(), crcs.clone(), *at, 0)
        else {
            panic!("a table over its bound stays whole")
        };
        assert_eq!((every, blocks, at, data_len), (&e2, &b2, &a2, &d2));
        // A flipped bit in the block table is found when the run is opened.
        let mut bytes = fs.read_file(path).unwrap();
        let table_at = (HEADER_LEN + le_u64(&bytes[36..44])) as usize;
        bytes[table_at + 24 * 70 + 3] ^= 1;
        fs.write_file(path, bytes);
        let err = Run::open_keeping(&fs, path, 4, FILTER_IN_MEMORY, 0)
            .err()
            .expect("refused");
        assert!(matches!(err, Error::Corruption { .. }), "{err}");
    }

    #[test]
    fn id_filter_has_no_false_negatives_and_few_false_positives() {
        let fs = SimFs::new();
        let mut entries: Vec<Entry> = (0..5000u64)
            .map(|i| Entry::new(key(KIND_ID, &i.to_le_bytes()), 0, i))
            .chain((0..3000u64).map(|i| Entry::new(key(KIND_STREAM, &i.to_le_bytes()), 0, i)))
            .collect();
        entries.sort();
        let path = Path::new("/x/run-3.idx");
        Run::write(&fs, path, 3, entries.iter().copied().map(Ok)).unwrap();
        let run = Run::open(&fs, path, 3).unwrap();
        assert!(matches!(run.filter, Filter::Memory(_)));
        assert!((0..5000u64).all(|i| run.may_hold_id(key(KIND_ID, &i.to_le_bytes()))));
        let false_positives = (5000..25_000u64)
            .filter(|i| run.may_hold_id(key(KIND_ID, &i.to_le_bytes())))
            .count();
        assert!(false_positives < 100, "{false_positives} of 20000");
        // Read from the file instead, the filter answers every id the same, alone or many
        // at a time.
        let on_disk = Run::open_keeping(&fs, path, 3, 0, TABLE_IN_MEMORY).unwrap();
        assert!(matches!(on_disk.filter, Filter::Disk { .. }));
        let keys: Vec<u64> = (0..25_000u64)
            .map(|i| key(KIND_ID, &i.to_le_bytes()))
            .collect();
        let (mut a, mut b) = (vec![false; keys.len()], vec![false; keys.len()]);
        run.may_hold_ids(&keys, &mut a);
        on_disk.may_hold_ids(&keys, &mut b);
        assert_eq!(a, b);
        assert!(keys
            .iter()
            .zip(&a)
            .all(|(&k, &m)| on_disk.may_hold_id(k) == m));
        assert_eq!(on_disk.estimated_ids(), run.estimated_ids());
        // A flipped bit in the filter is found when the run is opened, kept or not.
        let mut bytes = fs.read_file(path).unwrap();
        let n = bytes.len();
        bytes[n - 9] ^= 1;
        fs.write_file(path, bytes);
        for keep in [0, u64::MAX] {
            let err = Run::open_keeping(&fs, path, 3, keep, keep)
                .err()
                .expect("refused");
            assert!(matches!(err, Error::Corruption { .. }), "{err}");
        }
    }

    #[test]
    fn filters_hold_every_id_whether_sized_for_them_or_for_fewer() {
        let fs = SimFs::new();
        // Ten ids have a second entry, at another position: they count once.
        let mut entries: Vec<Entry> = (0..5000u64)
            .map(|i| Entry::new(key(KIND_ID, &i.to_le_bytes()), i, i))
            .chain(
                (0..10u64).map(|i| Entry::new(key(KIND_ID, &i.to_le_bytes()), 9000 + i, 9000 + i)),
            )
            .chain((0..3000u64).map(|i| Entry::new(key(KIND_TAG, &i.to_le_bytes()), i, i)))
            .collect();
        entries.sort();
        let id_keys: Vec<u64> = (0..5000u64)
            .map(|i| key(KIND_ID, &i.to_le_bytes()))
            .collect();
        for (n, expected_ids) in [(5, 5000u64), (6, 100)] {
            let ids = IdFilter::with_capacity(10_000);
            let path = std::path::PathBuf::from(format!("/x/run-{n}.idx"));
            let written = Run::write_adding_ids(
                &fs,
                &path,
                n,
                entries.iter().copied().map(Ok),
                expected_ids,
                Some(&ids),
            )
            .unwrap();
            let run = Run::open(&fs, &path, n).unwrap();
            // Sized for what it was told, to within one filter block.
            let per_block = 512 / RUN_BITS_PER_ID + 1;
            assert!(
                (expected_ids..expected_ids + per_block).contains(&run.estimated_ids()),
                "{} for {expected_ids}",
                run.estimated_ids()
            );
            assert_eq!(run.estimated_ids(), written.estimated_ids());
            assert_eq!(ids.added(), 5000);
            for &k in &id_keys {
                assert!(run.may_hold_id(k) && written.may_hold_id(k) && ids.may_hold(k));
            }
            let back: Vec<Entry> = run.iter().map(|e| e.unwrap()).collect();
            assert_eq!(back, entries);
        }
    }

    proptest::proptest! {
        /// A run gives back exactly the sorted entries written, whatever their values and
        /// however many blocks they fill.
        #[test]
        fn runs_give_back_their_entries(
            mut raw in proptest::collection::vec(
                (0u64..6, proptest::prelude::any::<u64>(), proptest::prelude::any::<u64>()),
                0..1500,
            ),
        ) {
            let mut entries: Vec<Entry> = raw
                .drain(..)
                .map(|(k, seq, val)| Entry::new((k << 58) | (k * 0x0123_4567), seq, val))
                .collect();
            entries.sort();
            let fs = SimFs::new();
            let path = Path::new("/x/run-9.idx");
            Run::write(&fs, path, 9, entries.iter().copied().map(Ok)).unwrap();
            let run = Run::open(&fs, path, 9).unwrap();
            let back: Vec<Entry> = run.iter().map(|e| e.unwrap()).collect();
            proptest::prop_assert_eq!(back, entries);
        }
    }

    #[test]
    fn entries_out_of_order_are_refused() {
        let fs = SimFs::new();
        let path = Path::new("/x/run-8.idx");
        let entries = [Entry::new(1, 5, 5), Entry::new(1, 4, 4)].map(Ok);
        let err = Run::write(&fs, path, 8, entries.into_iter()).err().unwrap();
        assert!(err.to_string().contains("after"), "{err}");
    }

    /// The run at `path` with its header's version field set to `version`.
    fn set_version(fs: &SimFs, path: &Path, version: u32) {
        let mut bytes = fs.read_file(path).unwrap();
        bytes[8..12].copy_from_slice(&version.to_le_bytes());
        let crc = crc32c::crc32c(&bytes[0..44]);
        bytes[44..48].copy_from_slice(&crc.to_le_bytes());
        fs.write_file(path, bytes);
    }

    #[test]
    fn a_run_of_another_version_is_refused_by_name() {
        let fs = SimFs::new();
        let path = Path::new("/x/run-7.idx");
        Run::write(&fs, path, 7, (0..10u64).map(|i| Ok(Entry::new(1, i, i)))).unwrap();
        for version in [RUN_VERSION - 1, RUN_VERSION + 1] {
            set_version(&fs, path, version);
            let Err(Error::UnsupportedFormat {
                found, supported, ..
            }) = Run::open(&fs, path, 7)
            else {
                panic!("a version {version} run was opened");
            };
            assert_eq!((found, supported), (version, RUN_VERSION));
        }
    }

    #[test]
    fn a_damaged_block_is_reported_when_read() {
        let fs = SimFs::new();
        let path = Path::new("/x/run-4.idx");
        let run = Run::write(&fs, path, 4, (0..1000u64).map(|i| Ok(Entry::new(1, i, i)))).unwrap();
        let mut bytes = fs.read_file(path).unwrap();
        let second = run.block_table(1, 2).unwrap().0[0];
        bytes[(HEADER_LEN + second + 9) as usize] ^= 0x20;
        fs.write_file(path, bytes);
        let run = Run::open(&fs, path, 4).unwrap();
        assert!(run.block(0).is_ok());
        let err = run.block(1).unwrap_err();
        assert!(matches!(err, Error::Corruption { .. }), "{err}");
        assert!(
            err.to_string().contains("index block 1 checksum mismatch"),
            "{err}"
        );
    }

    #[test]
    fn damaged_run_is_reported() {
        let fs = SimFs::new();
        let path = Path::new("/x/run-2.idx");
        Run::write(&fs, path, 2, (0..1000u64).map(|i| Ok(Entry::new(1, i, i)))).unwrap();
        let mut bytes = fs.read_file(path).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 0xff;
        fs.write_file(path, bytes);
        assert!(matches!(
            Run::open(&fs, path, 2),
            Err(Error::Corruption { .. })
        ));
    }
}
