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
//! Only the fences, block starts, block checksums and filter stay in memory; a lookup
//! binary-searches the fences and reads one block. Runs of an older version are not read:
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

/// An immutable sorted run on disk.
pub struct Run {
    pub id: u64,
    pub count: u64,
    file: FileRef,
    path: PathBuf,
    fences: Vec<Entry>,
    /// Where each block starts, in bytes after the header, and where the last one ends.
    starts: Vec<u64>,
    block_crcs: Vec<u32>,
    filter: Vec<u64>,
    /// The lowest and highest seq of the batch key's entries, found on first use.
    batch_range: std::sync::OnceLock<Option<(u64, u64)>>,
}
