//! `annal dump`: events as text or JSON lines.

use std::io::Write;
use std::path::Path;

use annal_core::RecordedEvent;
use serde_json::{json, Map, Value};

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= c.len() {
                out.push(T[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn is_json(e: &RecordedEvent) -> bool {
    e.content_type == "application/json" || e.content_type.ends_with("+json")
}

/// The event as a JSON object: JSON data as JSON, other data as base64.
pub fn to_json(e: &RecordedEvent) -> Value {
    let mut m = Map::new();
    m.insert("position".into(), json!(e.position));
    m.insert("stream_id".into(), json!(e.stream_id));
    m.insert("revision".into(), json!(e.revision));
    m.insert("id".into(), json!(e.id.to_string()));
    m.insert("recorded_at".into(), json!(e.recorded_at.to_string()));
    m.insert("event_type".into(), json!(e.event_type));
    m.insert("schema_version".into(), json!(e.schema_version));
    m.insert("content_type".into(), json!(e.content_type));
    let mut meta = Map::new();
    if let Some(c) = e.metadata.correlation_id {
        meta.insert("correlation_id".into(), json!(c.to_string()));
    }
    if let Some(c) = e.metadata.causation_id {
        meta.insert("causation_id".into(), json!(c.to_string()));
    }
    if let Some(a) = &e.metadata.actor {
        meta.insert("actor".into(), json!(a));
    }
    for (k, v) in &e.metadata.extra {
        meta.insert(k.clone(), json!(v));
    }
    m.insert("metadata".into(), Value::Object(meta));
    m.insert("tags".into(), json!(e.tags));
    match serde_json::from_slice::<Value>(&e.data) {
        Ok(v) if is_json(e) => {
            m.insert("data".into(), v);
        }
        _ => {
            m.insert("data_base64".into(), json!(base64(&e.data)));
        }
    }
    Value::Object(m)
}

fn text(e: &RecordedEvent) -> String {
    let data = match std::str::from_utf8(&e.data) {
        Ok(s) if is_json(e) || e.content_type.starts_with("text/") => s.to_string(),
        _ => format!("<{} bytes of {}>", e.data.len(), e.content_type),
    };
    let mut line = format!(
        "#{:<8} {}  {}@{}  {} v{}  {}",
        e.position, e.recorded_at, e.stream_id, e.revision, e.event_type, e.schema_version, data
    );
    if !e.tags.is_empty() {
        line.push_str(&format!("  tags=[{}]", e.tags.join(",")));
    }
    if let Some(a) = &e.metadata.actor {
        line.push_str(&format!("  actor={a}"));
    }
    if let Some(c) = e.metadata.correlation_id {
        line.push_str(&format!("  correlation={c}"));
    }
    line
}

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
            writeln!(out, "{}", to_json(&e))
        } else {
            writeln!(out, "{}", text(&e))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_examples() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }
}
