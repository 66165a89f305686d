//! Opening a store: find the segments, load the last checkpoint, replay the log after it,
//! and cut off a torn tail.

use std::path::Path;
use std::sync::Arc;

use annal_core::{Error, Result};
use tracing::{info, warn};

use crate::checkpoint::Manifest;
use crate::codec::io_err;
use crate::heads::{open_chain, Heads};
use crate::index::{decoded_batch_entries, Entry, Run};
use crate::io::Fs;
use crate::layout::{
    heads_name, index_dir, is_manifest_tmp, parse_heads_name, parse_run_name, run_name, run_path,
    segments_dir,
};
use crate::log::format::{decode_batch, SEGMENT_HEADER_LEN};
use crate::log::{
    corruption_at, create_segment, header_mismatches, read_header, segment_files, tail_after, Next,
    Segment, SeqReader, Tail,
};

/// Everything the store needs to start from what is on disk.
pub(crate) struct Recovered {
    pub heads: Heads,
    pub segments: Vec<Arc<Segment>>,
    pub next_position: u64,
    pub log_end: u64,
    pub active_len: u64,
    pub last_recorded_at: i64,
    pub manifest: Manifest,
    pub runs: Vec<Arc<Run>>,
    pub entries: Vec<Entry>,
}

/// Lists and checks the segment files.
fn open_segments(fs: &dyn Fs, dir: &Path) -> Result<Vec<Arc<Segment>>> {
    let sdir = segments_dir(dir);
    let names = segment_files(fs, dir)?;
    let mut segments: Vec<Arc<Segment>> = Vec::new();
    let count = names.len();
    for (i, (first, path)) in names.into_iter().enumerate() {
        let file = fs.open(&path).map_err(|e| io_err("opening", &path, e))?;
        let header = match read_header(&file) {
            Ok(h) => h,
            Err(problem)
                if i + 1 == count
                    && file.len().map_err(|e| io_err("reading", &path, e))?
                        <= SEGMENT_HEADER_LEN =>
            {
                // The header is synced before any record is written: a last segment no longer
                // than a header, with a bad one, was being created when the store stopped and
                // holds nothing.
                warn!(file = %path.display(), %problem, "removing a segment whose creation did not finish");
                fs.remove(&path).map_err(|e| io_err("removing", &path, e))?;
                fs.sync_dir(&sdir)
                    .map_err(|e| io_err("syncing", &sdir, e))?;
                continue;
            }
            Err(problem) => {
                return Err(Error::Corruption {
                    file: path.display().to_string(),
                    offset: 0,
                    problem,
                })
            }
        };
        if let Some((offset, problem)) =
            header_mismatches(&path, &header, first, segments.last().map(|s| &**s))?
                .into_iter()
                .next()
        {
            return Err(Error::Corruption {
                file: path.display().to_string(),
                offset,
                problem,
            });
        }
        segments.push(Arc::new(Segment {
            first_position: header.first_position,
            base_offset: header.base_offset,
            file,
            path,
        }));
    }
    Ok(segments)
}

/// A loaded checkpoint: the manifest, the stream heads and the runs it names.
type Checkpoint = (Manifest, Heads, Vec<Arc<Run>>);

/// A part of the checkpoint as read: `None` (after saying why) when it cannot be used, so
/// that the store rebuilds the checkpoint from the log. A part of an older version is
/// derived data to rebuild, not to read; one of a newer version stops the open.
fn usable<T>(part: &str, read: Result<T>) -> Result<Option<T>> {
    match read {
        Ok(v) => Ok(Some(v)),
        Err(Error::UnsupportedFormat {
            path,
            found,
            supported,
        }) if found < supported => {
            info!(
                file = %path,
                version = found,
                current = supported,
                "{part} is of an older version; rebuilding the checkpoint from the log"
            );
            Ok(None)
        }
        Err(e @ Error::UnsupportedFormat { .. }) => Err(e),
        Err(e) => {
            warn!(error = %e, "{part} is unreadable; rebuilding the checkpoint from the log");
            Ok(None)
        }
    }
}

/// Loads the checkpoint named by the manifest; `None` (after a warning) when any part of it
/// is unusable, so that the store rebuilds it from the log.
fn load_checkpoint(fs: &dyn Fs, dir: &Path, cache_bytes: usize) -> Result<Option<Checkpoint>> {
    let Some(Some(manifest)) = usable("the checkpoint manifest", Manifest::load(fs, dir))? else {
        return Ok(None);
    };
    let Some(files) = usable("a stream heads file", open_chain(fs, dir, &manifest.heads))? else {
        return Ok(None);
    };
    let heads = Heads::open(files, cache_bytes);
    let mut runs = Vec::new();
    for id in &manifest.runs {
        let Some(run) = usable("an index run", Run::open(fs, &run_path(dir, *id), *id))? else {
            return Ok(None);
        };
        runs.push(Arc::new(run));
    }
    Ok(Some((manifest, heads, runs)))
}

/// One more than the highest id of any run or heads file present.
fn next_free_file_id(fs: &dyn Fs, dir: &Path) -> u64 {
    let top = fs.list(dir).unwrap_or_default();
    let runs = fs.list(&index_dir(dir)).unwrap_or_default();
    top.iter()
        .filter_map(|n| parse_heads_name(n))
        .chain(runs.iter().filter_map(|n| parse_run_name(n)))
        .max()
        .map_or(0, |m| m.saturating_add(1))
}

/// Removes files that no checkpoint names (left by a crash during a checkpoint or merge).
fn remove_orphans(fs: &dyn Fs, dir: &Path, manifest: &Manifest) {
    let keep_heads: Vec<String> = manifest.heads.iter().map(|&id| heads_name(id)).collect();
    for name in fs.list(dir).unwrap_or_default() {
        if (parse_heads_name(&name).is_some() && !keep_heads.contains(&name))
            || is_manifest_tmp(&name)
        {
            let _ = fs.remove(&dir.join(&name));
        }
    }
    let idir = index_dir(dir);
    for name in fs.list(&idir).unwrap_or_default() {
        if !manifest.runs.iter().any(|&id| name == run_name(id)) {
            let _ = fs.remove(&idir.join(&name));
        }
    }
}

/// Opens what is on disk (creating an empty store where there is none), with a heads cache
/// of `cache_bytes`.
pub(crate) fn recover(fs: &dyn Fs, dir: &Path, cache_bytes: usize) -> Result<Recovered> {
    for d in [dir.to_path_buf(), segments_dir(dir), index_dir(dir)] {
        fs.create_dir_all(&d)
            .map_err(|e| io_err("creating", &d, e))?;
    }
    let mut segments = open_segments(fs, dir)?;
    let (mut manifest, mut heads, runs) = match load_checkpoint(fs, dir, cache_bytes)? {
        Some(c) => c,
        None => (Manifest::default(), Heads::new(cache_bytes), Vec::new()),
    };
    // New checkpoint files never reuse the name of one already on disk, whichever manifest
    // a crash leaves in force.
    manifest.next_file_id = manifest.next_file_id.max(next_free_file_id(fs, dir));
    remove_orphans(fs, dir, &manifest);
    if segments.is_empty() {
        if manifest.next_position > 0 {
            return Err(Error::Corruption {
                file: segments_dir(dir).display().to_string(),
                offset: 0,
                problem: format!(
                    "no segment files, but the checkpoint covers {} events",
                    manifest.next_position
                ),
            });
        }
        segments.push(create_segment(fs, dir, 0, 0)?);
    }

    let mut next_position = manifest.next_position;
    let mut last_recorded_at = manifest.last_recorded_at;
    let mut entries = Vec::new();
    let mut reader = SeqReader::new(segments.clone(), manifest.log_offset);
    let mut replayed = 0u64;
    {
        let (seg, at) = reader.position();
        let len = segments[seg]
            .file
            .len()
            .map_err(|e| io_err("reading", &segments[seg].path, e))?;
        if at > len {
            return Err(Error::Corruption {
                file: segments[seg].path.display().to_string(),
                offset: at,
                problem: format!(
                    "the checkpoint covers the log up to here, but the file ends at {len}: acknowledged events are missing"
                ),
            });
        }
    }
    // Where reading stopped: the segment, the file offset, and what was wrong there (`None`
    // at the end of the log).
    let (segment, at, torn) = loop {
        match reader.next_record()? {
            Next::Record(offset, payload) => {
                let corrupt = |problem: String| corruption_at(&segments, offset, problem);
                let events = decode_batch(&payload).map_err(|e| corrupt(e.0))?;
                let Some(first) = events.first() else {
                    return Err(corrupt("empty batch".into()));
                };
                if first.position != next_position {
                    return Err(corrupt(format!(
                        "batch starts at position {}, expected {next_position}",
                        first.position
                    )));
                }
                let last = next_position + events.len() as u64 - 1;
                let at = first.recorded_at;
                decoded_batch_entries(&mut entries, &events, offset);
                for e in &events {
                    heads.apply_event(e)?;
                }
                next_position = last + 1;
                last_recorded_at = at.0;
                replayed += events.len() as u64;
            }
            Next::End => {
                let (segment, at) = reader.position();
                break (segment, at, None);
            }
            Next::Torn {
                segment,
                file_offset,
                problem,
            } => break (segment, file_offset, Some(problem)),
        }
    };
    let seg = &segments[segment];
    if let Some(problem) = &torn {
        if segment + 1 != segments.len() {
            return Err(Error::Corruption {
                file: seg.path.display().to_string(),
                offset: at,
                problem: format!("{problem}, and later segments follow"),
            });
        }
    }
    // After the end: nothing, preallocated zeros, what an unfinished write left, or an
    // intact record that proves the end was synced (damage).
    let tail = tail_after(seg, at, next_position)?;
    let clean_end = torn.is_none();
    let problem = torn.unwrap_or_else(|| "the log ends in zeros".into());
    match tail {
        Tail::Clear if clean_end => {}
        Tail::Damage(later) => {
            return Err(Error::Corruption {
                file: seg.path.display().to_string(),
                offset: at,
                problem: format!(
                    "{problem}, but an intact later record follows at offset {later}: this is damage inside the log, not a torn final write; the store will not open (run `annal check`)"
                ),
            });
        }
        Tail::Clear | Tail::Torn => {
            let len = seg
                .file
                .len()
                .map_err(|e| io_err("reading", &seg.path, e))?;
            warn!(
                file = %seg.path.display(),
                offset = at,
                dropped_bytes = len - at,
                %problem,
                "truncating a torn write at the end of the log"
            );
            seg.file
                .set_len(at)
                .map_err(|e| io_err("truncating", &seg.path, e))?;
            seg.file
                .sync_data()
                .map_err(|e| io_err("syncing", &seg.path, e))?;
        }
    }
    let last = segments.last().expect("at least one segment");
    // What a killed process left in the page cache is readable but perhaps not on disk yet;
    // make it durable before new records, whose watermark will claim it is.
    last.file
        .sync_data()
        .map_err(|e| io_err("syncing", &last.path, e))?;
    // The log ends where reading stopped: at the end of the file, or where the zeros of
    // preallocated space begin.
    let active_len = at;
    let log_end = last.base_offset + active_len - SEGMENT_HEADER_LEN;
    if replayed > 0 {
        info!(
            events = replayed,
            from = manifest.next_position,
            "replayed the log after the checkpoint"
        );
    }
    Ok(Recovered {
        heads,
        segments,
        next_position,
        log_end,
        active_len,
        last_recorded_at,
        manifest,
        runs,
        entries,
    })
}
