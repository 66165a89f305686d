//! How events and other results look on a terminal. `--json` output uses the HTTP API's JSON
//! shapes (`annal_server::json`), so scripts see one format everywhere.

use annal_core::{RecordedEvent, Snapshot, StreamInfo};
use annal_server::json::is_json;

/// One line per event: position, time, stream@revision, type and version, data, then tags and
/// the audit fields that are set.
pub fn event_line(e: &RecordedEvent) -> String {
    let data = match std::str::from_utf8(&e.data) {
        Ok(s) if is_json(&e.content_type) || e.content_type.starts_with("text/") => s.to_string(),
        _ => format!("<{} bytes of {}>", e.data.len(), e.content_type),
    };
    let place = match e.in_stream() {
        Some(s) => format!("{s}@{}", e.revision),
        None => "(no stream)".to_string(),
    };
    let mut line = format!(
        "#{:<8} {}  {place}  {} v{}  {}",
        e.position, e.recorded_at, e.event_type, e.schema_version, data
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
    if let Some(c) = e.metadata.causation_id {
        line.push_str(&format!("  causation={c}"));
    }
    line
}

/// An event as one line of JSON.
pub fn event_json(e: &RecordedEvent) -> String {
    serde_json::to_string(&annal_server::json::EventJson::new(e)).unwrap_or_default()
}

/// A stream's facts, one per line.
pub fn stream_info(s: &StreamInfo) -> String {
    format!(
        "stream          {}\nrevision        {}\nevents          {}\nfirst position  {}\nlast position   {}\ncreated         {}\nlast written    {}",
        s.stream_id,
        s.revision,
        s.count,
        s.first_position,
        s.last_position,
        s.created_at,
        s.last_written_at
    )
}

/// A stream's facts as JSON.
pub fn stream_info_json(s: &StreamInfo) -> String {
    serde_json::to_string(&annal_server::json::StreamInfoJson::from(s.clone())).unwrap_or_default()
}

/// A snapshot's facts, one per line, its data last (as text when it is UTF-8).
pub fn snapshot(s: &Snapshot) -> String {
    let data = match std::str::from_utf8(&s.data) {
        Ok(text) if !text.chars().any(char::is_control) => text.to_string(),
        _ => format!("<{} bytes>", s.data.len()),
    };
    format!(
        "stream          {}\nrevision        {}\nschema version  {}\ntaken           {}\ndata            {data}",
        s.stream_id, s.revision, s.schema_version, s.taken_at
    )
}

/// A snapshot as JSON, in the HTTP API's shape.
pub fn snapshot_json(s: &Snapshot) -> String {
    serde_json::to_string(&annal_server::json::SnapshotJson::new(s)).unwrap_or_default()
}
