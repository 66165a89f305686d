//! Checkpoints: what lets a large store reopen without replaying its whole log.
//!
//! A checkpoint is the index runs, a snapshot of every stream head, and the manifest that
//! names them together with the log position and offset they cover. The manifest is written
//! to `manifest.tmp`, synced, and renamed over `manifest`, so a crash leaves either the old
//! checkpoint or the new one. Everything a checkpoint holds is derived from the log: when one
//! is missing or damaged, the store rebuilds it from the log.
//!
//! `manifest`:
//!
//! | size | field                                                   |
//! |------|---------------------------------------------------------|
//! | 8    | magic `ANNALMAN`                                        |
//! | 4    | format version (u32)                                    |
//! | 8    | next position: positions below it are covered (u64)    |
//! | 8    | log offset where the next record goes (the log's end)   |
//! | 8    | recorded at of the last covered batch (i64)             |
//! | 8    | heads snapshot id (u64)                                 |
//! | 8    | next file id (u64)                                      |
//! | 4    | run count r (u32)                                       |
//! | 8 r  | run ids, oldest first                                   |
//! | 4    | CRC32C of everything before                             |
//!
//! `heads-<id>.snap`: magic `ANNALHDS`, u32 version, u64 count, then per stream (in id
//! order) str16 stream id, u64 revision, u64 first position, u64 last position, i64 created
//! at, i64 last written at; then a CRC32C of everything before.

use std::path::Path;

use annal_core::{Error, Result};

use crate::format::FORMAT_VERSION;
use crate::heads::{Head, Heads};
use crate::io::Fs;

const MANIFEST_MAGIC: &[u8; 8] = b"ANNALMAN";
const HEADS_MAGIC: &[u8; 8] = b"ANNALHDS";

/// What a checkpoint covers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Manifest {
    pub next_position: u64,
    pub log_offset: u64,
    pub last_recorded_at: i64,
    pub heads_id: u64,
    pub next_file_id: u64,
    pub runs: Vec<u64>,
}

fn corrupt(path: &Path, problem: impl Into<String>) -> Error {
    Error::Corruption {
        file: path.display().to_string(),
        offset: 0,
        problem: problem.into(),
    }
}

fn read_all(fs: &dyn Fs, path: &Path) -> Result<Vec<u8>> {
    let f = fs
        .open(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), &e))?;
    let len = f
        .len()
        .map_err(|e| Error::io(format!("reading {}", path.display()), &e))?;
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, 0)
        .map_err(|e| Error::io(format!("reading {}", path.display()), &e))?;
    Ok(buf)
}

/// Writes a whole file durably (create, write, sync). The caller syncs the folder.
pub fn write_all(fs: &dyn Fs, path: &Path, bytes: &[u8]) -> Result<()> {
    let f = fs
        .create(path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), &e))?;
    f.write_all_at(bytes, 0)
        .map_err(|e| Error::io(format!("writing {}", path.display()), &e))?;
    f.sync_data()
        .map_err(|e| Error::io(format!("syncing {}", path.display()), &e))
}

/// Splits off and checks the trailing CRC32C.
fn checked<'a>(path: &Path, bytes: &'a [u8], magic: &[u8; 8]) -> Result<&'a [u8]> {
    if bytes.len() < 16 || &bytes[0..8] != magic {
        return Err(corrupt(path, "bad magic or too short"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let mut c = [0u8; 4];
    c.copy_from_slice(crc);
    if crc32c::crc32c(body) != u32::from_le_bytes(c) {
        return Err(corrupt(path, "checksum mismatch"));
    }
    let mut v = [0u8; 4];
    v.copy_from_slice(&body[8..12]);
    let version = u32::from_le_bytes(v);
    if version != FORMAT_VERSION {
        return Err(Error::UnsupportedFormat {
            path: path.display().to_string(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    Ok(&body[12..])
}

struct Reader<'a> {
    b: &'a [u8],
    path: &'a Path,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        if self.b.len() < n {
            return Err(corrupt(self.path, "ends early"));
        }
        let (a, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(a)
    }
    fn u64(&mut self) -> Result<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn u32(&mut self) -> Result<u32> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }
    fn u16(&mut self) -> Result<u16> {
        let mut a = [0u8; 2];
        a.copy_from_slice(self.take(2)?);
        Ok(u16::from_le_bytes(a))
    }
}

impl Manifest {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64 + 8 * self.runs.len());
        b.extend_from_slice(MANIFEST_MAGIC);
        b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        b.extend_from_slice(&self.next_position.to_le_bytes());
        b.extend_from_slice(&self.log_offset.to_le_bytes());
        b.extend_from_slice(&self.last_recorded_at.to_le_bytes());
        b.extend_from_slice(&self.heads_id.to_le_bytes());
        b.extend_from_slice(&self.next_file_id.to_le_bytes());
        b.extend_from_slice(&(self.runs.len() as u32).to_le_bytes());
        for r in &self.runs {
            b.extend_from_slice(&r.to_le_bytes());
        }
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    /// Reads the manifest; `None` when the store has none yet.
    pub fn load(fs: &dyn Fs, path: &Path) -> Result<Option<Manifest>> {
        if !fs.exists(path) {
            return Ok(None);
        }
        let bytes = read_all(fs, path)?;
        let body = checked(path, &bytes, MANIFEST_MAGIC)?;
        let mut r = Reader { b: body, path };
        let mut m = Manifest {
            next_position: r.u64()?,
            log_offset: r.u64()?,
            last_recorded_at: r.u64()? as i64,
            heads_id: r.u64()?,
            next_file_id: r.u64()?,
            runs: Vec::new(),
        };
        let n = r.u32()?;
        for _ in 0..n {
            m.runs.push(r.u64()?);
        }
        Ok(Some(m))
    }

    /// Replaces the manifest atomically and durably.
    pub fn store(&self, fs: &dyn Fs, dir: &Path) -> Result<()> {
        let tmp = dir.join("manifest.tmp");
        write_all(fs, &tmp, &self.encode())?;
        fs.rename(&tmp, &dir.join("manifest"))
            .map_err(|e| Error::io("renaming the manifest", &e))?;
        fs.sync_dir(dir)
            .map_err(|e| Error::io("syncing the store folder", &e))
    }
}

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
    let body = checked(path, &bytes, HEADS_MAGIC)?;
    let mut r = Reader { b: body, path };
    let n = r.u64()?;
    let mut heads = Heads::default();
    for _ in 0..n {
        let len = r.u16()? as usize;
        let id = String::from_utf8(r.take(len)?.to_vec())
            .map_err(|_| corrupt(path, "stream id is not UTF-8"))?;
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
    use crate::io::sim::SimFs;
    use annal_core::Timestamp;

    #[test]
    fn manifest_and_heads_round_trip() {
        let fs = SimFs::new();
        let dir = Path::new("/s");
        let m = Manifest {
            next_position: 10,
            log_offset: 999,
            last_recorded_at: 5,
            heads_id: 3,
            next_file_id: 4,
            runs: vec![1, 2],
        };
        m.store(&fs, dir).unwrap();
        assert_eq!(Manifest::load(&fs, &dir.join("manifest")).unwrap(), Some(m));
        let mut heads = Heads::default();
        heads.apply("account-1", 0, 3, 0, 2, Timestamp(7));
        heads.apply("account-2", 0, 1, 3, 3, Timestamp(8));
        let p = dir.join("heads.snap");
        write_all(&fs, &p, &encode_heads(&heads)).unwrap();
        let back = load_heads(&fs, &p).unwrap();
        assert_eq!(back.streams, heads.streams);
        assert_eq!(back.categories, heads.categories);
        let mut bytes = fs.read_file(&p).unwrap();
        bytes[20] ^= 1;
        fs.write_file(&p, bytes);
        assert!(matches!(load_heads(&fs, &p), Err(Error::Corruption { .. })));
    }
}
