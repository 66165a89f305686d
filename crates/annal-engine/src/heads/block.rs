//! A block of a heads file, decoded: what a lookup searches and the cache holds.

use std::path::Path;

use annal_core::Result;

use super::Head;
use crate::codec::corrupt;

/// Bytes of a head after its id.
const HEAD_BYTES: usize = 40;

/// One block of heads, decoded: ids laid end to end, where each ends, and the heads.
#[derive(Debug, Default)]
pub struct Block {
    ids: String,
    ends: Vec<u32>,
    heads: Vec<Head>,
}

impl Block {
    pub fn len(&self) -> usize {
        self.heads.len()
    }

    pub fn id(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.ids[start..self.ends[i] as usize]
    }

    pub fn head(&self, i: usize) -> Head {
        self.heads[i]
    }

    /// The first entry whose id is at or after `id`.
    pub(super) fn lower_bound(&self, id: &str) -> usize {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.id(mid) < id {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    pub fn find(&self, id: &str) -> Option<Head> {
        let i = self.lower_bound(id);
        (i < self.len() && self.id(i) == id).then(|| self.heads[i])
    }

    /// Memory held, for the cache's bound.
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Block>()
            + self.ids.capacity()
            + self.ends.capacity() * 4
            + self.heads.capacity() * std::mem::size_of::<Head>()
    }

    /// Decodes a block read at `offset` of `path`, checking its CRC.
    pub(super) fn decode(path: &Path, offset: u64, b: &[u8]) -> Result<Block> {
        if b.len() < 8 {
            return Err(corrupt(path, offset, "a heads block is too short"));
        }
        let (body, crc) = b.split_at(b.len() - 4);
        if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
            return Err(corrupt(path, offset, "heads block checksum mismatch"));
        }
        let n = u32::from_le_bytes(body[..4].try_into().expect("4 bytes")) as usize;
        let mut block = Block {
            ids: String::new(),
            ends: Vec::with_capacity(n),
            heads: Vec::with_capacity(n),
        };
        let mut ids = Vec::with_capacity(body.len());
        let mut at = 4;
        let short = || corrupt(path, offset, "a heads block ends early");
        for _ in 0..n {
            let len = u16::from_le_bytes(
                body.get(at..at + 2)
                    .ok_or_else(short)?
                    .try_into()
                    .expect("2"),
            ) as usize;
            at += 2;
            ids.extend_from_slice(body.get(at..at + len).ok_or_else(short)?);
            at += len;
            let f = body.get(at..at + HEAD_BYTES).ok_or_else(short)?;
            let word = |i: usize| u64::from_le_bytes(f[i * 8..i * 8 + 8].try_into().expect("8"));
            block.heads.push(Head {
                revision: word(0),
                first_position: word(1),
                last_position: word(2),
                created_at: word(3) as i64,
                last_written_at: word(4) as i64,
            });
            at += HEAD_BYTES;
            block.ends.push(ids.len() as u32);
        }
        block.ids = String::from_utf8(ids)
            .map_err(|_| corrupt(path, offset, "a stream id is not UTF-8"))?;
        if (1..block.len()).any(|i| block.id(i - 1) >= block.id(i)) {
            return Err(corrupt(path, offset, "heads block out of order"));
        }
        Ok(block)
    }
}
