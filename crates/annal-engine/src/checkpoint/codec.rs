//! The manifest's file handling: a whole file written durably, read back and checked
//! (magic, format version, trailing CRC32C), and a reader of its fields.

use std::path::Path;

use annal_core::{Error, Result};

use crate::io::Fs;

pub fn corrupt(path: &Path, offset: u64, problem: impl Into<String>) -> Error {
    Error::Corruption {
        file: path.display().to_string(),
        offset,
        problem: problem.into(),
    }
}

pub fn read_all(fs: &dyn Fs, path: &Path) -> Result<Vec<u8>> {
    let f = fs
        .open(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let len = f
        .len()
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, 0)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    Ok(buf)
}

/// Writes a whole file durably (create, write, sync). The caller syncs the folder.
pub fn write_all(fs: &dyn Fs, path: &Path, bytes: &[u8]) -> Result<()> {
    let f = fs
        .create(path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
    f.write_all_at(bytes, 0)
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    f.sync_data()
        .map_err(|e| Error::io(format!("syncing {}", path.display()), e))
}

/// Checks the magic, the trailing CRC32C and the format version (`supported`) of a whole
/// file, and returns a reader of the fields after the version.
pub fn checked<'a>(
    path: &'a Path,
    bytes: &'a [u8],
    magic: &[u8; 8],
    supported: u32,
) -> Result<Reader<'a>> {
    if bytes.len() < 16 {
        return Err(corrupt(
            path,
            0,
            format!(
                "{} bytes are too few for a header and a checksum",
                bytes.len()
            ),
        ));
    }
    if &bytes[0..8] != magic {
        return Err(corrupt(path, 0, "bad magic"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let mut c = [0u8; 4];
    c.copy_from_slice(crc);
    if crc32c::crc32c(body) != u32::from_le_bytes(c) {
        return Err(corrupt(path, body.len() as u64, "checksum mismatch"));
    }
    let mut v = [0u8; 4];
    v.copy_from_slice(&body[8..12]);
    let version = u32::from_le_bytes(v);
    if version != supported {
        return Err(Error::UnsupportedFormat {
            path: path.display().to_string(),
            found: version,
            supported,
        });
    }
    Ok(Reader {
        b: &body[12..],
        path,
        at: 12,
    })
}

/// Reads little-endian fields in order, naming the file offset of one that is cut short.
pub struct Reader<'a> {
    b: &'a [u8],
    path: &'a Path,
    at: u64,
}

impl Reader<'_> {
    pub fn take(&mut self, n: usize) -> Result<&[u8]> {
        if self.b.len() < n {
            return Err(corrupt(
                self.path,
                self.at,
                format!("ends early: a field of {n} bytes, {} left", self.b.len()),
            ));
        }
        let (a, rest) = self.b.split_at(n);
        self.b = rest;
        self.at += n as u64;
        Ok(a)
    }
    pub fn u64(&mut self) -> Result<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    pub fn u32(&mut self) -> Result<u32> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }
}
