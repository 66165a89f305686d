//! Files written as numbered, checksummed groups of records, each group written whole and
//! synced before the next: the snapshot file and the server's consumer-group journal.
//!
//! ```text
//! group   length u32 | crc32c(file offset u64, sequence, records) u32 | sequence u64 | records
//! ```
//!
//! Groups count up from 1 in a file. Only the last group can be torn by a crash; a group
//! that does not read whole with an intact group of a later sequence after it is damage to
//! acknowledged data. The checksum covers the group's offset too, so bytes framed alike
//! (a record, or a group copied elsewhere) never pass for a group.

use std::io;
use std::path::Path;

use annal_core::Error;

use super::File;

/// Length, CRC and sequence before a group's records.
pub const GROUP_HEADER_LEN: usize = 16;

/// Starts a group of records in `out` (at its end); [`end_group`] frames it.
pub fn start_group(out: &mut Vec<u8>, sequence: u64) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; 8]);
    out.extend_from_slice(&sequence.to_le_bytes());
    start
}

/// A group's checksum: of its offset in the file, then of its sequence and records.
fn group_crc(offset: u64, body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&offset.to_le_bytes()), body)
}

/// Frames the group that `start_group` began at `start` of `out`, which goes to the file at
/// `file_offset`.
pub fn end_group(out: &mut [u8], start: usize, file_offset: u64) {
    let body = &out[start + 8..];
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    let crc = group_crc(file_offset + start as u64, body);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// An intact group: its sequence and its records' bytes, and its whole length in the file.
pub struct Group {
    pub sequence: u64,
    pub records: Vec<u8>,
    pub len: u64,
}

/// Reads the group at `offset` of a file `file_len` long: `None` when it is not intact.
pub fn read_group(file: &dyn File, offset: u64, file_len: u64) -> Result<Option<Group>, io::Error> {
    if offset + GROUP_HEADER_LEN as u64 > file_len {
        return Ok(None);
    }
    let mut head = [0u8; GROUP_HEADER_LEN];
    file.read_exact_at(&mut head, offset)?;
    let len = u64::from(u32::from_le_bytes(head[..4].try_into().unwrap_or_default()));
    let crc = u32::from_le_bytes(head[4..8].try_into().unwrap_or_default());
    if len < 8 || offset + 8 + len > file_len {
        return Ok(None);
    }
    let mut body = vec![0u8; len as usize];
    file.read_exact_at(&mut body, offset + 8)?;
    if group_crc(offset, &body) != crc {
        return Ok(None);
    }
    let sequence = u64::from_le_bytes(body[..8].try_into().unwrap_or_default());
    body.drain(..8);
    Ok(Some(Group {
        sequence,
        records: body,
        len: 8 + len,
    }))
}

/// Whether an intact group of a sequence after `last` starts anywhere after `offset`: what
/// tells damage (acknowledged groups follow) from a torn last group (nothing does). Headers
/// are looked at through a window; only one whose sequence could follow (no more groups
/// than fit in the bytes left) has its checksum computed.
pub fn intact_group_after(
    file: &dyn File,
    offset: u64,
    file_len: u64,
    last: u64,
) -> Result<Option<u64>, io::Error> {
    const WINDOW: u64 = 64 << 10;
    let most = (file_len - offset) / GROUP_HEADER_LEN as u64 + 1;
    let mut window = vec![0u8; WINDOW as usize + GROUP_HEADER_LEN];
    let mut base = offset + 1;
    while base + GROUP_HEADER_LEN as u64 <= file_len {
        let n = (file_len - base).min(window.len() as u64) as usize;
        file.read_exact_at(&mut window[..n], base)?;
        for i in 0..=n - GROUP_HEADER_LEN {
            let h = &window[i..i + GROUP_HEADER_LEN];
            let len = u64::from(u32::from_le_bytes(h[..4].try_into().unwrap_or_default()));
            let sequence = u64::from_le_bytes(h[8..16].try_into().unwrap_or_default());
            let at = base + i as u64;
            let plausible = sequence > last && sequence - last <= most && len >= 8;
            if plausible && at + 8 + len <= file_len && read_group(file, at, file_len)?.is_some() {
                return Ok(Some(at));
            }
        }
        base += (n - GROUP_HEADER_LEN + 1) as u64;
    }
    Ok(None)
}

/// Where reading a file's groups ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scanned {
    /// The end of the last intact group.
    pub end: u64,
    /// The last intact group's sequence (0 for none).
    pub sequence: u64,
    /// Where a torn last group begins, and why it does not read.
    pub torn: Option<(u64, String)>,
}

/// Reads the groups of the file at `path` from `offset` (after its header), handing each
/// intact one to `visit` with its offset. A group that does not read whole with an intact
/// group after it is damage to acknowledged data, and an error naming `what` the file
/// holds; one with nothing after it is the last group, torn by a crash before its sync.
pub fn scan(
    file: &dyn File,
    path: &Path,
    mut offset: u64,
    what: &str,
    mut visit: impl FnMut(u64, Group) -> Result<(), Error>,
) -> Result<Scanned, Error> {
    let io_err = |e| Error::io(format!("reading {}", path.display()), e);
    let len = file.len().map_err(io_err)?;
    let corrupt = |offset: u64, problem: String| Error::Corruption {
        file: path.display().to_string(),
        offset,
        problem,
    };
    let mut sequence = 0;
    while offset < len {
        match read_group(file, offset, len).map_err(io_err)? {
            Some(g) if g.sequence == sequence + 1 => {
                let n = g.len;
                sequence = g.sequence;
                visit(offset, g)?;
                offset += n;
            }
            Some(g) => {
                return Err(corrupt(
                    offset,
                    format!("group {} where group {} belongs", g.sequence, sequence + 1),
                ))
            }
            None => {
                if let Some(later) =
                    intact_group_after(file, offset, len, sequence).map_err(io_err)?
                {
                    return Err(corrupt(
                        offset,
                        format!("a damaged group of {what}, with acknowledged groups after it (from offset {later})"),
                    ));
                }
                let problem = format!("{} bytes of a group that does not read whole", len - offset);
                return Ok(Scanned {
                    end: offset,
                    sequence,
                    torn: Some((offset, problem)),
                });
            }
        }
    }
    Ok(Scanned {
        end: offset,
        sequence,
        torn: None,
    })
}
