//! Writing a run: one pass over sorted entries, packed in place into a buffer that is
//! written out as it fills, with the run's filter (and the id filter, when given) fed as
//! the id keys go by.

use std::path::Path;

use annal_core::{Error, Result};
use tracing::debug;

use super::{
    Filter, Run, Table, BLOCK, FENCE_LEN, FILTER_IN_MEMORY, HEADER_LEN, MAGIC, RUN_VERSION,
    TABLE_IN_MEMORY,
};
use crate::index::block::{pack_entry, PACKED_MAX};
use crate::index::filter::RunFilter;
use crate::index::idfilter::IdFilter;
use crate::index::key::{is_id_key, Entry};
use crate::io::Fs;

/// Bytes of blocks gathered before they are written out.
const FLUSH: usize = 1 << 20;
/// Id keys gathered before they go into the filters.
const ID_CHUNK: usize = 1024;

impl Run {
    #[cfg(test)]
    /// Writes a run of sorted entries and makes it durable, its filter sized for its ids.
    pub fn write(
        fs: &dyn Fs,
        path: &Path,
        id: u64,
        entries: impl Iterator<Item = Result<Entry>>,
    ) -> Result<Run> {
        let entries: Vec<_> = entries.collect();
        let mut id_keys: Vec<u64> = entries
            .iter()
            .filter_map(|e| e.as_ref().ok().map(|e| e.key).filter(|&k| is_id_key(k)))
            .collect();
        id_keys.dedup();
        let ids = id_keys.len();
        Run::write_adding_ids(fs, path, id, entries.into_iter(), ids as u64, None)
    }

    /// Writes a run of sorted entries and makes it durable, adding its event id keys to
    /// `ids` as well. Its filter is sized for `expected_ids` event ids: more make it answer
    /// "maybe" more often, never wrongly.
    pub fn write_adding_ids(
        fs: &dyn Fs,
        path: &Path,
        id: u64,
        entries: impl Iterator<Item = Result<Entry>>,
        expected_ids: u64,
        ids: Option<&IdFilter>,
    ) -> Result<Run> {
        let io = |op: &str, e: std::io::Error| Error::io(format!("{op} {}", path.display()), e);
        let file = fs.create(path).map_err(|e| io("creating", e))?;
        // Entries are packed in place: `buf[..at]` holds the blocks not yet written, and
        // the buffer always has room for one more packed entry past `at`.
        let mut buf = vec![0u8; FLUSH + BLOCK * PACKED_MAX];
        let mut at = 0;
        // Bytes of blocks written out of `buf` so far.
        let mut flushed = 0u64;
        let mut count = 0u64;
        let mut fences = Vec::new();
        let mut starts = Vec::new();
        let mut block_crcs = Vec::new();
        // Where the current block starts in `buf`, and the entry before in it.
        let mut block_start = 0;
        let mut prev: Option<Entry> = None;
        let mut last: Option<Entry> = None;
        let mut filter = RunFilter::with_capacity(expected_ids);
        let mut id_keys = Vec::with_capacity(ID_CHUNK);
        let mut last_id = None;
        let mut add_ids = |keys: &mut Vec<u64>| {
            filter.add_all(keys);
            if let Some(ids) = ids {
                ids.add_all(keys);
            }
            keys.clear();
        };
        for e in entries {
            let e = e?;
            if let Some(last) = last.filter(|l| e < *l) {
                return Err(Error::Internal(format!(
                    "index run {} got entry {e:?} after {last:?}",
                    path.display()
                )));
            }
            last = Some(e);
            // An id key with entries at several positions goes into the filters once.
            if is_id_key(e.key) && last_id != Some(e.key) {
                last_id = Some(e.key);
                id_keys.push(e.key);
                if id_keys.len() == ID_CHUNK {
                    add_ids(&mut id_keys);
                }
            }
            if count.is_multiple_of(BLOCK as u64) {
                if count > 0 {
                    block_crcs.push(crc32c::crc32c(&buf[block_start..at]));
                    if at >= FLUSH {
                        file.write_all_at(&buf[..at], HEADER_LEN + flushed)
                            .map_err(|e| io("writing", e))?;
                        flushed += at as u64;
                        at = 0;
                    }
                }
                block_start = at;
                starts.push(flushed + block_start as u64);
                fences.push(e);
                prev = None;
            }
            let slot: &mut [u8; PACKED_MAX] = (&mut buf[at..at + PACKED_MAX])
                .try_into()
                .expect("a slot of PACKED_MAX bytes");
            at += pack_entry(slot, prev, e);
            prev = Some(e);
            count += 1;
        }
        add_ids(&mut id_keys);
        if count > 0 {
            block_crcs.push(crc32c::crc32c(&buf[block_start..at]));
        }
        buf.truncate(at);
        let data_len = flushed + buf.len() as u64;
        let fence_start = buf.len();
        buf.reserve(fences.len() * (FENCE_LEN + 12));
        for f in &fences {
            buf.extend_from_slice(&f.key.to_le_bytes());
            buf.extend_from_slice(&f.seq.to_le_bytes());
            buf.extend_from_slice(&f.value.to_le_bytes());
        }
        for s in &starts {
            buf.extend_from_slice(&s.to_le_bytes());
        }
        for c in &block_crcs {
            buf.extend_from_slice(&c.to_le_bytes());
        }
        if filter.added > expected_ids {
            debug!(
                run = %path.display(),
                ids = filter.added,
                expected_ids,
                "an index run holds more event ids than its filter was sized for"
            );
        }
        let filter_at = HEADER_LEN + flushed + buf.len() as u64;
        let filter = filter.words;
        for w in &filter {
            buf.extend_from_slice(&w.to_le_bytes());
        }
        let tail_crc = crc32c::crc32c(&buf[fence_start..]);
        file.write_all_at(&buf, HEADER_LEN + flushed)
            .map_err(|e| io("writing", e))?;
        let mut header = [0u8; HEADER_LEN as usize];
        header[0..8].copy_from_slice(MAGIC);
        header[8..12].copy_from_slice(&RUN_VERSION.to_le_bytes());
        header[12..16].copy_from_slice(&(BLOCK as u32).to_le_bytes());
        header[16..24].copy_from_slice(&count.to_le_bytes());
        header[24..32].copy_from_slice(&(filter.len() as u64).to_le_bytes());
        header[32..36].copy_from_slice(&tail_crc.to_le_bytes());
        header[36..44].copy_from_slice(&data_len.to_le_bytes());
        let crc = crc32c::crc32c(&header[0..44]);
        header[44..48].copy_from_slice(&crc.to_le_bytes());
        file.write_all_at(&header, 0)
            .map_err(|e| io("writing", e))?;
        file.sync_data().map_err(|e| io("syncing", e))?;
        starts.push(data_len);
        Ok(Run {
            id,
            count,
            file,
            path: path.to_path_buf(),
            table: Table::new(
                fences,
                starts,
                block_crcs,
                HEADER_LEN + data_len,
                TABLE_IN_MEMORY,
            ),
            filter: if filter.len() as u64 * 8 <= FILTER_IN_MEMORY {
                Filter::Memory(filter)
            } else {
                Filter::Disk {
                    at: filter_at,
                    words: filter.len() as u64,
                }
            },
            batch_range: std::sync::OnceLock::new(),
        })
    }
}
