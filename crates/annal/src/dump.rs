//! `annal dump`: events as text or JSON lines.

use std::io::Write;
use std::path::Path;

use crate::render::{event_json, event_line};

pub fn dump(
    dir: &Path,
    from: u64,
    limit: Option<u64>,
    stream: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut left = limit.unwrap_or(u64::MAX);
    let mut failed = None;
    annal_engine::check::scan_events(dir, from, &mut |e| {
        if left == 0 {
            return false;
        }
        if stream.is_some_and(|s| s != e.stream_id) {
            return true;
        }
        left -= 1;
        let r = if json {
            writeln!(out, "{}", event_json(&e))
        } else {
            writeln!(out, "{}", event_line(&e))
        };
        match r {
            Ok(()) => true,
            Err(err) => {
                // A closed pipe (`annal dump | head`) ends the dump quietly.
                if err.kind() != std::io::ErrorKind::BrokenPipe {
                    failed = Some(err);
                }
                false
            }
        }
    })?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    match out.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
