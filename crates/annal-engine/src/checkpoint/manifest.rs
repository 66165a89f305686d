//! The manifest: what names the checkpoint in force. It is written to `manifest.tmp`,
//! synced, and renamed over `manifest`, so a crash leaves either the old checkpoint or the
//! new one.
//!
//! | size | field                                                   |
//! |------|---------------------------------------------------------|
//! | 8    | magic `ANNALMAN`                                        |
//! | 4    | format version (u32)                                    |
//! | 8    | next position: positions below it are covered (u64)    |
//! | 8    | log offset where the next record goes (the log's end)   |
//! | 8    | recorded at of the last covered batch (i64)             |
//! | 8    | next file id (u64)                                      |
//! | 4    | heads file count h (u32)                                |
//! | 8 h  | heads file ids: the base, then its deltas, oldest first |
//! | 4    | run count r (u32)                                       |
//! | 8 r  | run ids, oldest first                                   |
//! | 4    | CRC32C of everything before                             |

use std::path::Path;

use annal_core::{Error, Result};

use crate::codec::{checked, read_all, write_all, Fields};
use crate::io::Fs;
use crate::layout::{manifest_path, manifest_tmp_path};

const MANIFEST_MAGIC: &[u8; 8] = b"ANNALMAN";

/// The version of the manifest this build writes and reads. Version 1 named a single heads
/// file; a store with one is reopened by rebuilding its checkpoint from the log.
pub const MANIFEST_VERSION: u32 = 2;

/// What a checkpoint covers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Manifest {
    pub next_position: u64,
    pub log_offset: u64,
    pub last_recorded_at: i64,
    pub next_file_id: u64,
    /// The heads files: the base, then its deltas, oldest first (none before the first
    /// checkpoint).
    pub heads: Vec<u64>,
    pub runs: Vec<u64>,
}

impl Manifest {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64 + 8 * (self.heads.len() + self.runs.len()));
        b.extend_from_slice(MANIFEST_MAGIC);
        b.extend_from_slice(&MANIFEST_VERSION.to_le_bytes());
        b.extend_from_slice(&self.next_position.to_le_bytes());
        b.extend_from_slice(&self.log_offset.to_le_bytes());
        b.extend_from_slice(&self.last_recorded_at.to_le_bytes());
        b.extend_from_slice(&self.next_file_id.to_le_bytes());
        b.extend_from_slice(&(self.heads.len() as u32).to_le_bytes());
        for h in &self.heads {
            b.extend_from_slice(&h.to_le_bytes());
        }
        b.extend_from_slice(&(self.runs.len() as u32).to_le_bytes());
        for r in &self.runs {
            b.extend_from_slice(&r.to_le_bytes());
        }
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    /// Reads the store's manifest; `None` when the store has none yet.
    pub fn load(fs: &dyn Fs, dir: &Path) -> Result<Option<Manifest>> {
        let path = &manifest_path(dir);
        if !fs.exists(path) {
            return Ok(None);
        }
        let bytes = read_all(fs, path)?;
        let mut r = checked(path, &bytes, MANIFEST_MAGIC, MANIFEST_VERSION)?;
        let mut m = Manifest {
            next_position: r.u64()?,
            log_offset: r.u64()?,
            last_recorded_at: r.u64()? as i64,
            next_file_id: r.u64()?,
            heads: Vec::new(),
            runs: Vec::new(),
        };
        let n = r.u32()?;
        for _ in 0..n {
            m.heads.push(r.u64()?);
        }
        let n = r.u32()?;
        for _ in 0..n {
            m.runs.push(r.u64()?);
        }
        Ok(Some(m))
    }

    /// Replaces the manifest atomically and durably.
    pub fn store(&self, fs: &dyn Fs, dir: &Path) -> Result<()> {
        let tmp = manifest_tmp_path(dir);
        write_all(fs, &tmp, &self.encode())?;
        fs.rename(&tmp, &manifest_path(dir))
            .map_err(|e| Error::io("renaming the manifest", e))?;
        fs.sync_dir(dir)
            .map_err(|e| Error::io("syncing the store folder", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::sim::SimFs;

    #[test]
    fn a_manifest_round_trips_and_damage_is_refused() {
        let fs = SimFs::new();
        let dir = Path::new("/s");
        let m = Manifest {
            next_position: 10,
            log_offset: 999,
            last_recorded_at: 5,
            next_file_id: 4,
            heads: vec![0, 3],
            runs: vec![1, 2],
        };
        m.store(&fs, dir).unwrap();
        assert_eq!(Manifest::load(&fs, dir).unwrap(), Some(m));
        let path = manifest_path(dir);
        let mut bytes = fs.read_file(&path).unwrap();
        bytes[20] ^= 1;
        fs.write_file(&path, bytes);
        assert!(matches!(
            Manifest::load(&fs, dir),
            Err(Error::Corruption { .. })
        ));
    }
}
