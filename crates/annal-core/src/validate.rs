//! Input checks shared by every backend, so that a bad request is refused with the same error
//! wherever it is sent. Every check runs before anything is written: an invalid request is
//! rejected whole.

use std::collections::HashSet;

use uuid::Uuid;

use crate::{
    AppendRequest, Error, ExpectedRevision, NewSnapshot, Query, ReadRequest, Result, Source,
    SubscribeFrom, SubscribeRequest,
};

/// Longest stream id, in bytes.
pub const MAX_STREAM_ID_LEN: usize = 512;
/// Longest event type, content type, tag, actor or metadata key, in bytes.
pub const MAX_NAME_LEN: usize = 256;
/// Default limit on one event's size (data plus everything else it carries).
pub const DEFAULT_MAX_EVENT_SIZE: usize = 16 * 1024 * 1024;
/// Most events one append request may carry.
pub const MAX_EVENTS_PER_APPEND: usize = 100_000;
/// Most streams one append request may touch.
pub const MAX_STREAMS_PER_APPEND: usize = 1_000;
/// Most tags one event may carry.
pub const MAX_TAGS_PER_EVENT: usize = 100;
/// Most free-form metadata pairs one event may carry.
pub const MAX_METADATA_PAIRS: usize = 256;
/// The most items a query (a read's, a subscription's or an append condition's) holds.
pub const MAX_QUERY_ITEMS: usize = 100;
/// The most event types one query item names.
pub const MAX_QUERY_TYPES: usize = 100;
/// The most tags one query item names: as many as an event may hold.
pub const MAX_QUERY_TAGS: usize = MAX_TAGS_PER_EVENT;

fn check_name(field: &str, value: &str, max: usize) -> Result<()> {
    if value.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if value.len() > max {
        return Err(Error::invalid(
            field,
            format!("is {} bytes, longer than the limit of {max}", value.len()),
        ));
    }
    // Printable ASCII, the common case, holds no control character; anything else is looked
    // at character by character (C1 controls are two bytes in UTF-8).
    if value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Ok(());
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(Error::invalid(
            field,
            format!(
                "'{}' contains the control character {c:?}",
                value.escape_debug()
            ),
        ));
    }
    Ok(())
}

/// A stream id: 1 to 512 bytes of UTF-8 with no control characters.
pub fn stream_id(id: &str) -> Result<()> {
    check_name("stream id", id, MAX_STREAM_ID_LEN)
}

/// A snapshot to put: a valid stream id and data of at most `max_size` bytes (a store bounds
/// a snapshot as it bounds an event).
pub fn snapshot(s: &NewSnapshot, max_size: usize) -> Result<()> {
    stream_id(&s.stream_id)?;
    if s.data.len() > max_size {
        return Err(Error::TooLarge {
            what: format!("the snapshot of stream '{}'", s.stream_id),
            size: s.data.len(),
            limit: max_size,
        });
    }
    Ok(())
}

/// A snapshot's revision against its stream's last revision (`None`: the stream has no
/// event): a snapshot is of a state the stream has reached.
pub fn snapshot_revision(s: &NewSnapshot, last: Option<u64>) -> Result<()> {
    match last {
        None => Err(Error::NotFound(format!(
            "stream '{}' has no event to take a snapshot of",
            s.stream_id
        ))),
        Some(last) if s.revision > last => Err(Error::invalid(
            "snapshot revision",
            format!(
                "is {}, but stream '{}' is at revision {last}",
                s.revision, s.stream_id
            ),
        )),
        Some(_) => Ok(()),
    }
}

/// An event type: 1 to 256 bytes, no control characters.
pub fn event_type(t: &str) -> Result<()> {
    check_name("event type", t, MAX_NAME_LEN)
}

/// A tag: 1 to 256 bytes, no control characters and no white space (`account:42`).
pub fn tag(t: &str) -> Result<()> {
    check_name("tag", t, MAX_NAME_LEN)?;
    let graphic = t.bytes().all(|b| b.is_ascii_graphic());
    if !graphic && t.chars().any(char::is_whitespace) {
        return Err(Error::invalid("tag", format!("'{t}' contains white space")));
    }
    Ok(())
}

/// A query: at least one item, at most [`MAX_QUERY_ITEMS`], each naming at most
/// [`MAX_QUERY_TYPES`] types and [`MAX_QUERY_TAGS`] tags; every named type and tag valid.
pub fn query(q: &Query) -> Result<()> {
    if q.items.is_empty() {
        return Err(Error::invalid(
            "query",
            "has no items; use Query::all() to match every event",
        ));
    }
    if q.items.len() > MAX_QUERY_ITEMS {
        return Err(Error::invalid(
            "query",
            format!(
                "has {} items, more than the limit of {MAX_QUERY_ITEMS}",
                q.items.len()
            ),
        ));
    }
    for (i, item) in q.items.iter().enumerate() {
        if item.types.len() > MAX_QUERY_TYPES {
            return Err(Error::invalid(
                "query",
                format!(
                    "item {i} names {} event types, more than the limit of {MAX_QUERY_TYPES}",
                    item.types.len()
                ),
            ));
        }
        if item.tags.len() > MAX_QUERY_TAGS {
            return Err(Error::invalid(
                "query",
                format!(
                    "item {i} names {} tags, more than the limit of {MAX_QUERY_TAGS} (an event holds at most that many)",
                    item.tags.len()
                ),
            ));
        }
    }
    for item in &q.items {
        for t in &item.types {
            event_type(t)?;
        }
        for t in &item.tags {
            tag(t)?;
        }
    }
    Ok(())
}

/// A read or subscription source.
pub fn source(s: &Source) -> Result<()> {
    match s {
        Source::All => Ok(()),
        Source::Stream(id) => stream_id(id),
        Source::Category(c) => check_name("category", c, MAX_STREAM_ID_LEN),
        Source::EventTypes(types) => {
            if types.is_empty() {
                return Err(Error::invalid("event types", "name at least one type"));
            }
            types.iter().try_for_each(|t| event_type(t))
        }
        Source::Query(q) => query(q),
        Source::Correlation(_) => Ok(()),
        Source::Actor(a) => check_name("actor", a, MAX_NAME_LEN),
        Source::Select(s) => {
            if s.category.is_none() && s.stream_prefix.is_none() && s.query.is_none() {
                return Err(Error::invalid(
                    "selection",
                    "give at least one of category, stream prefix or query",
                ));
            }
            if let Some(c) = &s.category {
                check_name("category", c, MAX_STREAM_ID_LEN)?;
            }
            if let Some(p) = &s.stream_prefix {
                check_name("stream prefix", p, MAX_STREAM_ID_LEN)?;
            }
            s.query.as_ref().map_or(Ok(()), query)
        }
    }
}

/// A read request.
pub fn read(r: &ReadRequest) -> Result<()> {
    source(&r.source)
}

/// A subscription request.
pub fn subscribe(r: &SubscribeRequest) -> Result<()> {
    source(&r.source)
}

/// A subscription's resume point against the log's last position (`None`: the log is
/// empty): a point beyond it names events that do not exist, and is refused.
pub fn resume_point(from: SubscribeFrom, head: Option<u64>) -> Result<()> {
    let SubscribeFrom::After(p) = from else {
        return Ok(());
    };
    match head {
        Some(h) if p <= h => Ok(()),
        Some(h) => Err(Error::invalid(
            "from",
            format!("resume point {p} is beyond the head of the log ({h})"),
        )),
        None => Err(Error::invalid(
            "from",
            format!("resume point {p} is beyond the head of the log (it is empty)"),
        )),
    }
}

/// An append request, with the per-event size limit of the store it is sent to.
pub fn append(req: &AppendRequest, max_event_size: usize) -> Result<()> {
    if req.streams.is_empty() {
        return Err(Error::invalid(
            "append",
            "carries no event (it names no stream and has no events of no stream)",
        ));
    }
    if req.streams.len() > MAX_STREAMS_PER_APPEND {
        return Err(Error::invalid(
            "append",
            format!(
                "touches {} streams, more than the limit of {MAX_STREAMS_PER_APPEND}",
                req.streams.len()
            ),
        ));
    }
    let total = req.event_count();
    if total > MAX_EVENTS_PER_APPEND {
        return Err(Error::invalid(
            "append",
            format!("carries {total} events, more than the limit of {MAX_EVENTS_PER_APPEND}"),
        ));
    }
    let mut streams = HashSet::new();
    // Sorted, a repeated id sits next to its twin: no hashing of client-chosen keys.
    let mut ids: Vec<u128> = Vec::with_capacity(total);
    for s in &req.streams {
        if s.stream_id.is_empty() {
            // Events of no stream: there is no revision to expect.
            if s.expected != ExpectedRevision::Any {
                return Err(Error::invalid(
                    "expected revision",
                    format!(
                        "events of no stream have no revision to check, so they expect 'any', not '{}'; \
                         guard them with a condition instead",
                        s.expected
                    ),
                ));
            }
        } else {
            stream_id(&s.stream_id)?;
        }
        if !streams.insert(s.stream_id.as_str()) {
            return Err(Error::invalid(
                "append",
                if s.stream_id.is_empty() {
                    "has two batches of events of no stream".to_string()
                } else {
                    format!("names stream '{}' twice", s.stream_id)
                },
            ));
        }
        if s.events.is_empty() {
            return Err(Error::invalid(
                "append",
                if s.stream_id.is_empty() {
                    "the batch of events of no stream is empty".to_string()
                } else {
                    format!("the batch for stream '{}' is empty", s.stream_id)
                },
            ));
        }
        for e in &s.events {
            ids.push(e.id.as_u128());
            if e.id.is_nil() {
                return Err(Error::invalid("event id", "must not be the nil uuid"));
            }
            event_type(&e.event_type)?;
            check_name("content type", &e.content_type, MAX_NAME_LEN)?;
            if e.schema_version == 0 {
                return Err(Error::invalid("schema version", "starts at 1"));
            }
            if e.tags.len() > MAX_TAGS_PER_EVENT {
                return Err(Error::invalid(
                    "tags",
                    format!(
                        "event {} has {} tags, more than the limit of {MAX_TAGS_PER_EVENT}",
                        e.id,
                        e.tags.len()
                    ),
                ));
            }
            for t in &e.tags {
                tag(t)?;
            }
            if e.metadata.extra.len() > MAX_METADATA_PAIRS {
                return Err(Error::invalid(
                    "metadata",
                    format!(
                        "event {} has {} metadata pairs, more than the limit of {MAX_METADATA_PAIRS}",
                        e.id,
                        e.metadata.extra.len()
                    ),
                ));
            }
            if let Some(actor) = &e.metadata.actor {
                check_name("actor", actor, MAX_NAME_LEN)?;
            }
            for k in e.metadata.extra.keys() {
                check_name("metadata key", k, MAX_NAME_LEN)?;
            }
            let size = e.size();
            if size > max_event_size {
                return Err(Error::TooLarge {
                    what: format!("event {}", e.id),
                    size,
                    limit: max_event_size,
                });
            }
        }
    }
    ids.sort_unstable();
    if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::invalid(
            "event id",
            format!("{} appears twice in one request", Uuid::from_u128(w[0])),
        ));
    }
    if let Some(c) = &req.condition {
        query(&c.query)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ExpectedRevision, NewEvent};

    fn one(stream: &str, e: NewEvent) -> AppendRequest {
        AppendRequest::stream(stream, ExpectedRevision::Any, vec![e])
    }

    #[test]
    fn queries_are_bounded_and_the_message_names_the_limit() {
        use crate::QueryItem;
        let item = |types: usize, tags: usize| QueryItem {
            types: (0..types).map(|i| format!("T{i}")).collect(),
            tags: (0..tags).map(|i| format!("t{i}")).collect(),
        };
        let q = |items: Vec<QueryItem>| Query { items };
        assert!(query(&q(vec![item(1, 1); MAX_QUERY_ITEMS])).is_ok());
        assert!(query(&q(vec![item(MAX_QUERY_TYPES, MAX_QUERY_TAGS)])).is_ok());
        for (bad, says) in [
            (
                q(vec![item(1, 1); MAX_QUERY_ITEMS + 1]),
                "101 items, more than the limit of 100",
            ),
            (
                q(vec![item(MAX_QUERY_TYPES + 1, 0)]),
                "item 0 names 101 event types, more than the limit of 100",
            ),
            (
                q(vec![item(0, 1), item(0, MAX_QUERY_TAGS + 1)]),
                "item 1 names 101 tags, more than the limit of 100",
            ),
        ] {
            let e = query(&bad).unwrap_err();
            assert!(
                matches!(&e, Error::InvalidArgument { field, .. } if field == "query"),
                "{e:?}"
            );
            assert!(e.to_string().contains(says), "{e}");
        }
    }

    #[test]
    fn rejects_bad_input_with_named_field() {
        let ok = NewEvent::new("Opened", b"{}".to_vec());
        assert!(append(&one("account-1", ok.clone()), 1024).is_ok());
        // An empty stream id is events of no stream, which expect no revision.
        assert!(append(&one("", ok.clone()), 1024).is_ok());
        let err = append(
            &AppendRequest::stream("", ExpectedRevision::NoStream, vec![ok.clone()]),
            1024,
        )
        .unwrap_err();
        assert!(err
            .to_string()
            .starts_with("invalid expected revision: events of no stream have no revision"));
        let err = stream_id("").unwrap_err();
        assert_eq!(err.to_string(), "invalid stream id: must not be empty");
        let long = "x".repeat(MAX_STREAM_ID_LEN + 1);
        assert!(append(&one(&long, ok.clone()), 1024)
            .unwrap_err()
            .to_string()
            .contains("longer than the limit of 512"));
        let err = append(&one("a", ok.clone().with_tag("has space")), 1024).unwrap_err();
        assert!(err.to_string().contains("white space"), "{err}");
        let big = NewEvent::new("Big", vec![0u8; 2000]);
        assert!(matches!(
            append(&one("a", big), 1024),
            Err(Error::TooLarge { limit: 1024, .. })
        ));
        let empty = AppendRequest::stream("a", ExpectedRevision::Any, vec![]);
        assert!(append(&empty, 1024)
            .unwrap_err()
            .to_string()
            .contains("empty"));
        let twice = AppendRequest::stream("a", ExpectedRevision::Any, vec![ok.clone(), ok]);
        assert!(append(&twice, 1024)
            .unwrap_err()
            .to_string()
            .contains("twice"));
        let mut many = NewEvent::new("Tagged", b"{}".to_vec());
        many.tags = (0..=MAX_TAGS_PER_EVENT)
            .map(|i| format!("t{i}").into())
            .collect();
        let err = append(&one("a", many), 1 << 20).unwrap_err();
        assert!(
            err.to_string().contains("more than the limit of 100"),
            "{err}"
        );
        let mut meta = NewEvent::new("Meta", b"{}".to_vec());
        meta.metadata.extra = (0..=MAX_METADATA_PAIRS)
            .map(|i| (format!("k{i}"), String::new()))
            .collect();
        assert!(append(&one("a", meta), 1 << 20).is_err());
        assert!(query(&Query::default()).is_err());
        assert!(query(&Query::all()).is_ok());
    }

    #[test]
    fn names_outside_printable_ascii_are_looked_at_character_by_character() {
        for ok in ["Opened", "Überwiesen", "注文", "a b", "x~"] {
            assert!(event_type(ok).is_ok(), "{ok:?}");
        }
        for control in ["a\u{7f}", "a\nb", "\u{85}next line", "tab\there", "\u{9f}"] {
            let err = event_type(control).unwrap_err().to_string();
            assert!(err.contains("control character"), "{control:?}: {err}");
        }
        for ok in ["account:42", "kunde:Müller", "注文:1"] {
            assert!(tag(ok).is_ok(), "{ok:?}");
        }
        for spaced in [
            "a b",
            "ideographic\u{3000}space",
            "nbsp\u{a0}x",
            "en\u{2002}x",
        ] {
            let err = tag(spaced).unwrap_err().to_string();
            assert!(err.contains("white space"), "{spaced:?}: {err}");
        }
    }

    #[test]
    fn a_repeated_event_id_is_named_wherever_it_stands() {
        let a = NewEvent::new("A", b"{}".to_vec());
        let b = NewEvent::new("B", b"{}".to_vec());
        let c = NewEvent::new("C", b"{}".to_vec());
        let req = AppendRequest {
            streams: vec![
                crate::StreamAppend {
                    stream_id: "one".into(),
                    expected: ExpectedRevision::Any,
                    events: vec![a.clone(), b],
                },
                crate::StreamAppend {
                    stream_id: "two".into(),
                    expected: ExpectedRevision::Any,
                    events: vec![c, a.clone()],
                },
            ],
            condition: None,
        };
        let err = append(&req, 1024).unwrap_err().to_string();
        assert!(err.contains(&a.id.to_string()), "{err}");
        assert!(err.contains("twice"), "{err}");
    }
}
