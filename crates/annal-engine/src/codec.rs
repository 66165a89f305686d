//! What the checkpoint's files share: errors that name a file, whole files written durably,
//! read back and checked (magic, format version, trailing CRC32C), and a reader of
//! little-endian fields that names the file offset of one cut short.

use std::path::Path;

use annal_core::{Error, Result};

use crate::io::Fs;

/// A file found damaged at `offset`.
pub fn corrupt(path: &Path, offset: u64, problem: impl Into<String>) -> Error {
    Error::Corruption {
        file: path.display().to_string(),
        offset,
        problem: problem.into(),
    }
}

/// An I/O error of operation `op` ("reading", "syncing") on a file.
pub fn io_err(op: &str, path: &Path, e: std::io::Error) -> Error {
    Error::io(format!("{op} {}", path.display()), e)
}

pub fn read_all(fs: &dyn Fs, path: &Path) -> Result<Vec<u8>> {
    let f = fs.open(path).map_err(|e| io_err("opening", path, e))?;
    let len = f.len().map_err(|e| io_err("reading", path, e))?;
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, 0)
        .map_err(|e| io_err("reading", path, e))?;
    Ok(buf)
}

/// Writes a whole file durably (create, write, sync). The caller syncs the folder.
pub fn write_all(fs: &dyn Fs, path: &Path, bytes: &[u8]) -> Result<()> {
    let f = fs.create(path).map_err(|e| io_err("creating", path, e))?;
    f.write_all_at(bytes, 0)
        .map_err(|e| io_err("writing", path, e))?;
    f.sync_data().map_err(|e| io_err("syncing", path, e))
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

/// Little-endian fields read in order from a file, naming the file offset of one that is
/// cut short or malformed. A [`Reader`] reads them from bytes in memory; a source that reads
/// the file as it goes gives only `take`, `offset` and `path`.
pub trait Fields {
    /// The next `n` bytes.
    fn take(&mut self, n: usize) -> Result<&[u8]>;
    /// The file offset of the next field.
    fn offset(&self) -> u64;
    /// The file the fields are read from.
    fn path(&self) -> &Path;

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    /// A string of at most 65,535 bytes after its u16 length.
    fn str16(&mut self) -> Result<String> {
        let n = u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")) as usize;
        let at = self.offset();
        let bytes = self.take(n)?.to_vec();
        String::from_utf8(bytes).map_err(|_| corrupt(self.path(), at, "a name is not UTF-8"))
    }
}

/// Reads little-endian fields from bytes in memory.
pub struct Reader<'a> {
    b: &'a [u8],
    path: &'a Path,
    at: u64,
}

impl<'a> Reader<'a> {
    /// A reader of `b`, which starts at file offset `at` of `path`.
    pub fn new(path: &'a Path, b: &'a [u8], at: u64) -> Reader<'a> {
        Reader { b, path, at }
    }
}

impl Fields for Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
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

    fn offset(&self) -> u64 {
        self.at
    }

    fn path(&self) -> &Path {
        self.path
    }
}
