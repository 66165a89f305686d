//! The store folder: every file name and subfolder the engine uses, in one place.
//!
//! ```text
//! <store>/
//!   LOCK                         an exclusive lock: one process at a time
//!   manifest                     names the checkpoint in force (checkpoint/manifest.rs)
//!   manifest.tmp                 a manifest being written, renamed over `manifest`
//!   heads-<id, 16 hex>.snap      stream heads: a base and its deltas (heads/file.rs)
//!   segments/<position, 20 digits>.seg
//!                                the log, one file per segment, named by its first
//!                                position (log/format.rs)
//!   index/run-<id, 16 hex>.idx   index runs (index/run/)
//!   snapshots/<id, 16 hex>.snapshots
//!                                the kept snapshots (snapshots/file.rs), created at the
//!                                first put; a compaction writes the next id
//!   snapshots/<id>.snapshots.tmp a snapshot file being written, renamed into place
//! ```
//!
//! Runs and heads files share one sequence of ids (the manifest's next file id), so a
//! new checkpoint file never takes the name of one a crash left behind.

use std::path::{Path, PathBuf};

const SEGMENTS: &str = "segments";
const INDEX: &str = "index";
const LOCK: &str = "LOCK";
const MANIFEST: &str = "manifest";
const MANIFEST_TMP: &str = "manifest.tmp";
const SNAPSHOTS: &str = "snapshots";
const SNAPSHOT_SUFFIX: &str = ".snapshots";
const TMP_SUFFIX: &str = ".tmp";

/// `segments/` below the store folder.
pub fn segments_dir(dir: &Path) -> PathBuf {
    dir.join(SEGMENTS)
}

/// `index/` below the store folder.
pub fn index_dir(dir: &Path) -> PathBuf {
    dir.join(INDEX)
}

/// `snapshots/` below the store folder.
pub fn snapshots_dir(dir: &Path) -> PathBuf {
    dir.join(SNAPSHOTS)
}

pub fn snapshot_file_name(id: u64) -> String {
    format!("{id:016x}{SNAPSHOT_SUFFIX}")
}

pub fn snapshot_file_path(dir: &Path, id: u64) -> PathBuf {
    snapshots_dir(dir).join(snapshot_file_name(id))
}

/// Where a snapshot file is written before it is renamed into place.
pub fn snapshot_tmp_path(dir: &Path, id: u64) -> PathBuf {
    snapshots_dir(dir).join(format!("{id:016x}{SNAPSHOT_SUFFIX}{TMP_SUFFIX}"))
}

/// The id of a snapshot file's name; `None` for any other name.
pub fn parse_snapshot_file_name(name: &str) -> Option<u64> {
    parse_id(name, "", SNAPSHOT_SUFFIX)
}

/// True for a snapshot file that was being written when the store stopped.
pub fn is_snapshot_tmp(name: &str) -> bool {
    name.strip_suffix(TMP_SUFFIX)
        .is_some_and(|n| parse_snapshot_file_name(n).is_some())
}

pub fn lock_path(dir: &Path) -> PathBuf {
    dir.join(LOCK)
}

pub fn manifest_path(dir: &Path) -> PathBuf {
    dir.join(MANIFEST)
}

pub fn manifest_tmp_path(dir: &Path) -> PathBuf {
    dir.join(MANIFEST_TMP)
}

/// True for the name of a manifest being written when the store stopped.
pub fn is_manifest_tmp(name: &str) -> bool {
    name == MANIFEST_TMP
}

/// The file name of the segment that starts at `first_position`.
pub fn segment_name(first_position: u64) -> String {
    format!("{first_position:020}.seg")
}

/// The first position of a segment file's name; `None` for any other name.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub fn segment_path(dir: &Path, first_position: u64) -> PathBuf {
    segments_dir(dir).join(segment_name(first_position))
}

pub fn run_name(id: u64) -> String {
    format!("run-{id:016x}.idx")
}

pub fn run_path(dir: &Path, id: u64) -> PathBuf {
    index_dir(dir).join(run_name(id))
}

pub fn heads_name(id: u64) -> String {
    format!("heads-{id:016x}.snap")
}

pub fn heads_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(heads_name(id))
}

fn parse_id(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    let hex = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    (hex.len() == 16).then(|| u64::from_str_radix(hex, 16).ok())?
}

/// The id of a run file's name; `None` for any other name.
pub fn parse_run_name(name: &str) -> Option<u64> {
    parse_id(name, "run-", ".idx")
}

/// The id of a heads file's name; `None` for any other name.
pub fn parse_heads_name(name: &str) -> Option<u64> {
    parse_id(name, "heads-", ".snap")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_other_names_do_not() {
        for n in [0, 1, 42, u64::MAX] {
            assert_eq!(parse_segment_name(&segment_name(n)), Some(n));
            assert_eq!(parse_run_name(&run_name(n)), Some(n));
            assert_eq!(parse_heads_name(&heads_name(n)), Some(n));
            let file = snapshot_file_path(Path::new("/s"), n);
            let name = file.file_name().unwrap().to_str().unwrap();
            assert_eq!(parse_snapshot_file_name(name), Some(n));
            let tmp = snapshot_tmp_path(Path::new("/s"), n);
            assert!(is_snapshot_tmp(tmp.file_name().unwrap().to_str().unwrap()));
            assert!(!is_snapshot_tmp(name));
        }
        for other in [
            "1.seg",
            "run-1.idx",
            "heads-xyz.snap",
            "manifest",
            "LOCK",
            "x.idx",
        ] {
            assert_eq!(parse_segment_name(other), None, "{other}");
            assert_eq!(parse_run_name(other), None, "{other}");
            assert_eq!(parse_heads_name(other), None, "{other}");
            assert_eq!(parse_snapshot_file_name(other), None, "{other}");
        }
    }
}
