//! Index runs: immutable sorted files of index entries, written by checkpoints and merges.
//!
//! A run file (`index/run-<id>.idx`), version 2 (docs/file-format.md has every detail):
//!
//! | offset | size     | field                                         |
//! |--------|----------|-----------------------------------------------|
//! | 0      | 8        | magic `ANNALIDX`                              |
//! | 8      | 4        | run format version (u32): 2                   |
//! | 12     | 4        | entries per block (u32)                       |
//! | 16     | 8        | entry count n (u64)                           |
//! | 24     | 8        | id filter size w, in 64-bit words (u64)       |
//! | 32     | 4        | CRC32C of every section after the blocks      |
//! | 36     | 8        | d: bytes of the blocks                        |
//! | 44     | 4        | CRC32C of bytes 0..44                         |
//! | 48     | d        | blocks of 256 entries, packed (`block.rs`)    |
//! | ...    | 24 f     | fences: the first entry of each block         |
//! | ...    | 8 f      | where each block starts, from offset 48       |
//! | ...    | 4 f      | CRC32C of each block's bytes                  |
//! | ...    | 8 w      | id filter: a blocked Bloom filter of the event id keys (`filter.rs`) |
//!
//! The block table (fences, block starts and block checksums) stays in memory while it is
//! at most [`TABLE_IN_MEMORY`] bytes; a larger run keeps every [`SPARSE`]th fence and reads
//! the part of the table a lookup needs from the file. The filter of a run stays in memory
//! while it is at most [`FILTER_IN_MEMORY`] bytes; a larger run's filter is read a
//! 64-byte filter block at a time (through the page cache) when asked, so that memory does
//! not grow with the events of the merged runs. A lookup binary-searches the fences and
//! reads one block. Runs of an older version are not read:
//! the store rebuilds its indexes from the log when it finds one (`recovery.rs`). A newer
//! version is refused, so that an older build never misreads a newer store.

use std::path::PathBuf;

use super::key::Entry;
use crate::io::FileRef;

mod reader;
mod writer;

pub use reader::RunIter;

const MAGIC: &[u8; 8] = b"ANNALIDX";
/// The version of the runs this build reads and writes.
pub const RUN_VERSION: u32 = 3;
const HEADER_LEN: u64 = 48;
/// Bytes of a fence: an entry as three little-endian u64.
const FENCE_LEN: usize = 24;
/// Entries per block: a lookup reads one block per run.
pub const BLOCK: usize = 256;

/// The largest block table (fences, starts, checksums: 36 bytes a block of 256 entries) held
/// in memory, in bytes: that of about 7.4 million entries.
pub const TABLE_IN_MEMORY: u64 = 1 << 20;

/// Blocks per fence a larger run keeps in memory.
pub const SPARSE: usize = 64;

/// A run's block table: each block's fence (its first entry), where it starts and its
/// checksum.
enum Table {
    /// All in memory; `starts` ends with where the last block ends.
    Memory {
        fences: Vec<Entry>,
        starts: Vec<u64>,
        crcs: Vec<u32>,
    },
    /// The fence of every [`SPARSE`]th block in memory; the rest read from the file, whose
    /// table starts at `at` (fences, then starts, then checksums, `blocks` of each), when
    /// a lookup needs it.
    Sparse {
        every: Vec<Entry>,
        blocks: usize,
        at: u64,
        data_len: u64,
    },
}

impl Table {
    /// The table of a run written with these fences, block starts (ending with where the
    /// last block ends) and checksums, whose table starts at file offset `at`: whole when
    /// it takes at most `keep` bytes.
    fn new(fences: Vec<Entry>, starts: Vec<u64>, crcs: Vec<u32>, at: u64, keep: u64) -> Table {
        if fences.len() as u64 * (FENCE_LEN as u64 + 12) <= keep {
            return Table::Memory {
                fences,
                starts,
                crcs,
            };
        }
        Table::Sparse {
            every: fences.iter().step_by(SPARSE).copied().collect(),
            blocks: fences.len(),
            at,
            data_len: starts.last().copied().unwrap_or(0),
        }
    }

    fn blocks(&self) -> usize {
        match self {
            Table::Memory { fences, .. } => fences.len(),
            Table::Sparse { blocks, .. } => *blocks,
        }
    }

    fn bytes(&self) -> u64 {
        let fence = std::mem::size_of::<Entry>();
        (match self {
            Table::Memory {
                fences,
                starts,
                crcs,
            } => fences.capacity() * fence + starts.capacity() * 8 + crcs.capacity() * 4,
            Table::Sparse { every, .. } => every.capacity() * fence,
        }) as u64
    }
}

/// The largest run filter held in memory, in bytes (that of about 2.4 million event ids).
pub const FILTER_IN_MEMORY: u64 = 4 << 20;

/// A run's event id filter: in memory, or where it is in the file and its size in words.
enum Filter {
    Memory(Vec<u64>),
    Disk { at: u64, words: u64 },
}

impl Run {
    /// Bytes held in memory: the fences, block starts and checksums, and the filter's.
    pub fn memory(&self) -> (u64, u64) {
        let fences = self.table.bytes();
        let filter = match &self.filter {
            Filter::Memory(w) => w.capacity() * 8,
            Filter::Disk { .. } => 0,
        };
        (fences, filter as u64)
    }
}

impl Filter {
    fn words(&self) -> u64 {
        match self {
            Filter::Memory(w) => w.len() as u64,
            Filter::Disk { words, .. } => *words,
        }
    }
}

/// An immutable sorted run on disk.
pub struct Run {
    pub id: u64,
    pub count: u64,
    file: FileRef,
    path: PathBuf,
    table: Table,
    filter: Filter,
    /// The lowest and highest seq of the batch key's entries, found on first use.
    batch_range: std::sync::OnceLock<Option<(u64, u64)>>,
}
