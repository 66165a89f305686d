//! A heads file (`heads-<id>.snap`): stream heads at a checkpoint, so that reopening reads
//! files instead of the log. The manifest names a base, which holds every stream, and the
//! deltas after it, each holding the streams changed since the file before it (see
//! `Heads::take_checkpoint`); a stream's head is the one in the newest file that has it.
//!
//! Magic `ANNALHDS`, u32 format version, u64 count, then per stream (in id order) str16
//! stream id, u64 revision, u64 first position, u64 last position, i64 created at, i64 last
//! written at; then a CRC32C of everything before.

use std::collections::BTreeMap;
use std::path::Path;

use annal_core::Result;

use super::codec::{checked, corrupt, read_all};
use crate::heads::Head;
use crate::io::Fs;
use crate::layout::heads_path;

const HEADS_MAGIC: &[u8; 8] = b"ANNALHDS";

/// The version of heads files this build writes and reads.
pub const HEADS_VERSION: u32 = 1;

/// Encodes stream heads, given in id order.
pub fn encode_heads(heads: &[(String, Head)]) -> Vec<u8> {
    let mut b = Vec::with_capacity(32 + heads.len() * 64);
    b.extend_from_slice(HEADS_MAGIC);
    b.extend_from_slice(&HEADS_VERSION.to_le_bytes());
    b.extend_from_slice(&(heads.len() as u64).to_le_bytes());
    for (id, h) in heads {
        b.extend_from_slice(&(id.len() as u16).to_le_bytes());
        b.extend_from_slice(id.as_bytes());
        b.extend_from_slice(&h.revision.to_le_bytes());
        b.extend_from_slice(&h.first_position.to_le_bytes());
        b.extend_from_slice(&h.last_position.to_le_bytes());
        b.extend_from_slice(&h.created_at.to_le_bytes());
        b.extend_from_slice(&h.last_written_at.to_le_bytes());
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// The heads files `ids` of the store in `dir` (a base, then its deltas) laid over each
/// other: every stream's newest head, and how many heads each delta holds.
pub fn load_chain(
    fs: &dyn Fs,
    dir: &Path,
    ids: &[u64],
) -> Result<(BTreeMap<String, Head>, Vec<u64>)> {
    let mut streams = BTreeMap::new();
    let mut deltas = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let file = load_heads(fs, &heads_path(dir, *id))?;
        if i == 0 {
            // Built whole from its sorted entries, not one insertion at a time.
            streams = file.into_iter().collect();
        } else {
            deltas.push(file.len() as u64);
            streams.extend(file);
        }
    }
    Ok((streams, deltas))
}

/// Reads a heads file: its streams' heads, in id order.
pub fn load_heads(fs: &dyn Fs, path: &Path) -> Result<Vec<(String, Head)>> {
    let bytes = read_all(fs, path)?;
    let mut r = checked(path, &bytes, HEADS_MAGIC, HEADS_VERSION)?;
    let n = r.u64()?;
    let mut heads = Vec::with_capacity(n.min(1 << 20) as usize);
    for _ in 0..n {
        let len = r.u16()? as usize;
        let at = r.offset();
        let id = String::from_utf8(r.take(len)?.to_vec())
            .map_err(|_| corrupt(path, at, "stream id is not UTF-8"))?;
        let h = Head {
            revision: r.u64()?,
            first_position: r.u64()?,
            last_position: r.u64()?,
            created_at: r.u64()? as i64,
            last_written_at: r.u64()? as i64,
        };
        heads.push((id, h));
    }
    Ok(heads)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::codec::write_all;
    use crate::heads::Heads;
    use crate::io::sim::SimFs;
    use annal_core::{Error, Timestamp};

    #[test]
    fn heads_round_trip_and_damage_is_refused() {
        let fs = SimFs::new();
        let mut heads = Heads::default();
        heads.apply("account-1", 0, 3, 0, 2, Timestamp(7));
        heads.apply("account-2", 0, 1, 3, 3, Timestamp(8));
        let p = Path::new("/s/heads.snap");
        let all: Vec<_> = heads.streams.into_iter().collect();
        write_all(&fs, p, &encode_heads(&all)).unwrap();
        assert_eq!(load_heads(&fs, p).unwrap(), all);
        let mut bytes = fs.read_file(p).unwrap();
        bytes[20] ^= 1;
        fs.write_file(p, bytes);
        assert!(matches!(load_heads(&fs, p), Err(Error::Corruption { .. })));
    }
}
