//! The heads snapshot (`heads-<id>.snap`): every stream's head at a checkpoint, so that
//! reopening reads one file instead of the log.
//!
//! Magic `ANNALHDS`, u32 format version, u64 count, then per stream (in id order) str16
//! stream id, u64 revision, u64 first position, u64 last position, i64 created at, i64 last
//! written at; then a CRC32C of everything before.

use std::path::Path;

use annal_core::Result;

use super::codec::{checked, corrupt, read_all};
use crate::heads::{Head, Heads};
use crate::io::Fs;
use crate::log::format::FORMAT_VERSION;

const HEADS_MAGIC: &[u8; 8] = b"ANNALHDS";

/// Encodes every stream head.
pub fn encode_heads(heads: &Heads) -> Vec<u8> {
    let mut b = Vec::with_capacity(32 + heads.streams.len() * 64);
    b.extend_from_slice(HEADS_MAGIC);
    b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    b.extend_from_slice(&(heads.streams.len() as u64).to_le_bytes());
    for (id, h) in &heads.streams {
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

/// Reads a heads snapshot.
pub fn load_heads(fs: &dyn Fs, path: &Path) -> Result<Heads> {
    let bytes = read_all(fs, path)?;
    let mut r = checked(path, &bytes, HEADS_MAGIC)?;
    let n = r.u64()?;
    let mut heads = Heads::default();
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
        heads.streams.insert(id, h);
    }
    heads.rebuild_categories();
    Ok(heads)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::codec::write_all;
    use crate::io::sim::SimFs;
    use annal_core::{Error, Timestamp};

    #[test]
    fn heads_round_trip_and_damage_is_refused() {
        let fs = SimFs::new();
        let mut heads = Heads::default();
        heads.apply("account-1", 0, 3, 0, 2, Timestamp(7));
        heads.apply("account-2", 0, 1, 3, 3, Timestamp(8));
        let p = Path::new("/s/heads.snap");
        write_all(&fs, p, &encode_heads(&heads)).unwrap();
        let back = load_heads(&fs, p).unwrap();
        assert_eq!(back.streams, heads.streams);
        assert_eq!(back.categories, heads.categories);
        let mut bytes = fs.read_file(p).unwrap();
        bytes[20] ^= 1;
        fs.write_file(p, bytes);
        assert!(matches!(load_heads(&fs, p), Err(Error::Corruption { .. })));
    }
}
