//! Appends: round trips, expected revisions, multi-stream atomicity, DCB conditions,
//! idempotency and input validation.

use std::collections::BTreeMap;

use super::util::*;
use crate::{
    validate, AppendRequest, Error, EventStore, ExpectedRevision, Metadata, NewEvent, Query,
    QueryItem, ReadRequest, RecordedEvent, Source, StreamAppend, SubscribeFrom, SubscribeRequest,
    Timestamp, Uuid,
};

/// Appends three fully-populated events and checks every field reads back as written, plus the
/// store-assigned stream, revisions, positions and timestamps.
pub async fn append_and_read_back<S: EventStore>(store: &S) {
    let mut extra = BTreeMap::new();
    extra.insert("ip".to_string(), "10.0.0.1".to_string());
    extra.insert("source".to_string(), "web".to_string());
    let full = NewEvent::new("AccountOpened", vec![0u8, 159, 146, 150, 255, b'\n'])
        .with_id(Uuid::new_v4())
        .with_schema_version(3)
        .with_content_type("application/octet-stream")
        .with_metadata(Metadata {
            correlation_id: Some(Uuid::new_v4()),
            causation_id: Some(Uuid::new_v4()),
            actor: Some("alice@example.com".into()),
            extra,
        })
        .with_tag("account:1")
        .with_tag("region:eu");
    let partial = NewEvent::new("MoneyDeposited", br#"{"amount":100}"#.to_vec())
        .with_metadata(Metadata {
            actor: Some("bob".into()),
            ..Metadata::default()
        })
        .with_tag("account:1");
    let empty = NewEvent::new("Noted", Vec::new());
    let batch = vec![full, partial, empty];

    let before = Timestamp::now();
    let r1 = append_ok(
        store,
        AppendRequest::stream("account-1", ExpectedRevision::NoStream, batch.clone()),
    )
    .await;
    assert_eq!(r1.streams.len(), 1, "one stream result per batch: {r1:?}");
    assert_eq!(r1.streams[0].stream_id, "account-1");
    assert_eq!(r1.streams[0].revision, 2, "revision after 3 events: {r1:?}");
    assert_eq!(r1.revision(), 2);
    assert_eq!(
        (r1.streams[0].first_position, r1.streams[0].last_position),
        (0, 2)
    );
    assert_eq!((r1.first_position, r1.last_position), (0, 2));
    let hour = 3_600_000_000;
    assert!(
        (r1.recorded_at.as_micros() - before.as_micros()).abs() < hour,
        "recorded_at {} is far from now {before}",
        r1.recorded_at
    );

    let stored = read(store, ReadRequest::stream("account-1")).await;
    assert_eq!(stored.len(), 3, "read back {stored:?}");
    for (i, (got, sent)) in stored.iter().zip(&batch).enumerate() {
        assert!(
            got.same_as(sent),
            "event {i} did not round-trip:\nsent {sent:?}\ngot  {got:?}"
        );
        assert_eq!(got.id, sent.id);
        assert_eq!(got.metadata, sent.metadata);
        assert_eq!(got.data, sent.data);
        assert_eq!(got.tags, sent.tags);
        assert_eq!(got.stream_id, "account-1");
        assert_eq!(got.revision, i as u64);
        assert_eq!(got.position, i as u64);
        assert_eq!(
            got.recorded_at, r1.recorded_at,
            "all events of one append share the append's recorded_at"
        );
        assert_eq!(got.category(), "account");
    }

    let more = evs("MoneyWithdrawn", 2);
    let r2 = append_ok(
        store,
        AppendRequest::stream("account-1", ExpectedRevision::Exact(2), more.clone()),
    )
    .await;
    assert_eq!(r2.revision(), 4);
    assert_eq!((r2.first_position, r2.last_position), (3, 4));
    assert!(r2.recorded_at >= r1.recorded_at, "recorded_at went back");

    let r3 = append_to(store, "account-2", vec![ev("AccountOpened")]).await;
    assert_eq!(r3.revision(), 0, "a new stream starts at revision 0");
    assert_eq!((r3.first_position, r3.last_position), (5, 5));
    assert!(r3.recorded_at >= r2.recorded_at, "recorded_at went back");

    let all = read_all(store).await;
    assert_eq!(
        positions(&all),
        (0..6).collect::<Vec<_>>(),
        "gapless positions"
    );
    assert!(
        all.windows(2).all(|w| w[0].recorded_at <= w[1].recorded_at),
        "recorded_at decreases along the log"
    );
    assert!(all[3].same_as(&more[0]) && all[4].same_as(&more[1]));
    assert_eq!(revisions(&all), vec![0, 1, 2, 3, 4, 0]);
    assert_eq!(head(store).await, Some(5));
}

/// `ExpectedRevision::Any` accepts a missing stream and an existing one.
pub async fn expected_revision_any<S: EventStore>(store: &S) {
    let r = append_ok(
        store,
        AppendRequest::stream("any-1", ExpectedRevision::Any, vec![ev("A")]),
    )
    .await;
    assert_eq!(r.revision(), 0);
    let r = append_ok(
        store,
        AppendRequest::stream("any-1", ExpectedRevision::Any, evs("B", 2)),
    )
    .await;
    assert_eq!(r.revision(), 2);
    assert_eq!(read(store, ReadRequest::stream("any-1")).await.len(), 3);
}

/// `ExpectedRevision::NoStream` accepts a missing stream and rejects an existing one.
pub async fn expected_revision_no_stream<S: EventStore>(store: &S) {
    let r = append_ok(
        store,
        AppendRequest::stream("ns-1", ExpectedRevision::NoStream, vec![ev("A")]),
    )
    .await;
    assert_eq!(r.revision(), 0);
    let before = read_all(store).await;
    let err = append_err(
        store,
        AppendRequest::stream("ns-1", ExpectedRevision::NoStream, vec![ev("B")]),
    )
    .await;
    assert_wrong_revision(
        &err,
        "ns-1",
        ExpectedRevision::NoStream,
        Some(0),
        "no stream on an existing stream",
    );
    assert!(err.is_conflict());
    assert_log_unchanged(store, &before, "no stream on an existing stream").await;
}

/// `ExpectedRevision::StreamExists` rejects a missing stream and accepts an existing one.
pub async fn expected_revision_stream_exists<S: EventStore>(store: &S) {
    append_to(store, "other-1", vec![ev("A")]).await;
    let before = read_all(store).await;
    let err = append_err(
        store,
        AppendRequest::stream("se-1", ExpectedRevision::StreamExists, vec![ev("A")]),
    )
    .await;
    assert_wrong_revision(
        &err,
        "se-1",
        ExpectedRevision::StreamExists,
        None,
        "stream exists on a missing stream",
    );
    assert_log_unchanged(store, &before, "stream exists on a missing stream").await;
    assert_eq!(store.stream_info("se-1").await.expect("stream_info"), None);

    append_to(store, "se-1", evs("A", 2)).await;
    let r = append_ok(
        store,
        AppendRequest::stream("se-1", ExpectedRevision::StreamExists, vec![ev("B")]),
    )
    .await;
    assert_eq!(r.revision(), 2);
}

/// `ExpectedRevision::Exact` accepts the stream's last revision only.
pub async fn expected_revision_exact<S: EventStore>(store: &S) {
    let before = read_all(store).await;
    let err = append_err(
        store,
        AppendRequest::stream("ex-1", ExpectedRevision::Exact(0), vec![ev("A")]),
    )
    .await;
    assert_wrong_revision(
        &err,
        "ex-1",
        ExpectedRevision::Exact(0),
        None,
        "exact 0 on a missing stream",
    );
    assert_log_unchanged(store, &before, "exact 0 on a missing stream").await;

    append_to(store, "ex-1", evs("A", 2)).await;
    let before = read_all(store).await;
    for wrong in [0, 2, 5] {
        let err = append_err(
            store,
            AppendRequest::stream("ex-1", ExpectedRevision::Exact(wrong), vec![ev("B")]),
        )
        .await;
        let what = format!("exact {wrong} on a stream at revision 1");
        assert_wrong_revision(&err, "ex-1", ExpectedRevision::Exact(wrong), Some(1), &what);
        assert_log_unchanged(store, &before, &what).await;
    }
    let r = append_ok(
        store,
        AppendRequest::stream("ex-1", ExpectedRevision::Exact(1), evs("B", 3)),
    )
    .await;
    assert_eq!(r.revision(), 4);
    let r = append_ok(
        store,
        AppendRequest::stream("ex-1", ExpectedRevision::Exact(4), vec![ev("C")]),
    )
    .await;
    assert_eq!(r.revision(), 5);
    assert_eq!(
        revisions(&read(store, ReadRequest::stream("ex-1")).await),
        (0..6).collect::<Vec<_>>()
    );
}

/// One append to several streams: positions in request order, and all or nothing.
pub async fn multi_stream_append_is_atomic<S: EventStore>(store: &S) {
    let r = append_ok(
        store,
        AppendRequest::stream("order-1", ExpectedRevision::NoStream, evs("OrderPlaced", 2))
            .and(StreamAppend::new(
                "stock-1",
                ExpectedRevision::NoStream,
                vec![ev("StockReserved")],
            ))
            .and(StreamAppend::new(
                "account-9",
                ExpectedRevision::Any,
                vec![ev("Charged")],
            )),
    )
    .await;
    assert_eq!(r.streams.len(), 3, "{r:?}");
    let got: Vec<_> = r
        .streams
        .iter()
        .map(|s| {
            (
                s.stream_id.as_str(),
                s.revision,
                s.first_position,
                s.last_position,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("order-1", 1, 0, 1),
            ("stock-1", 0, 2, 2),
            ("account-9", 0, 3, 3)
        ],
        "stream results in request order"
    );
    assert_eq!((r.first_position, r.last_position), (0, 3));
    let all = read_all(store).await;
    assert!(
        all.iter().all(|e| e.recorded_at == r.recorded_at),
        "one append, one recorded_at"
    );

    // The second stream's check fails: nothing of the first or third stream is written.
    let before = read_all(store).await;
    let err = append_err(
        store,
        AppendRequest::stream("order-1", ExpectedRevision::Exact(1), vec![ev("OrderPaid")])
            .and(StreamAppend::new(
                "stock-1",
                ExpectedRevision::Exact(7),
                vec![ev("StockReleased")],
            ))
            .and(StreamAppend::new(
                "fresh-1",
                ExpectedRevision::NoStream,
                vec![ev("Created")],
            )),
    )
    .await;
    assert_wrong_revision(
        &err,
        "stock-1",
        ExpectedRevision::Exact(7),
        Some(0),
        "second stream's check fails",
    );
    assert_log_unchanged(store, &before, "second stream's check fails").await;
    assert_eq!(
        store.stream_info("fresh-1").await.expect("stream_info"),
        None
    );
    assert!(read(store, ReadRequest::stream("fresh-1")).await.is_empty());

    // Two failing checks: the first in request order is reported.
    let err = append_err(
        store,
        AppendRequest::stream("fresh-1", ExpectedRevision::StreamExists, vec![ev("X")]).and(
            StreamAppend::new("order-1", ExpectedRevision::NoStream, vec![ev("Y")]),
        ),
    )
    .await;
    assert_wrong_revision(
        &err,
        "fresh-1",
        ExpectedRevision::StreamExists,
        None,
        "first failing stream in request order",
    );
    assert_log_unchanged(store, &before, "two failing checks").await;
}

/// Tagged events for the DCB checks: positions 0..=4.
///
/// 0 `CourseDefined` [course:c1], 1 `StudentRegistered` [student:s1],
/// 2 `StudentSubscribed` [course:c1, student:s1], 3 `CourseDefined` [course:c2],
/// 4 `StudentSubscribed` [course:c2, student:s1].
async fn dcb_fixture<S: EventStore>(store: &S) {
    let tagged = |t: &str, tags: &[&str]| {
        tags.iter()
            .fold(ev(t), |e, tag| e.with_tag(tag.to_string()))
    };
    append_to(
        store,
        "course-c1",
        vec![tagged("CourseDefined", &["course:c1"])],
    )
    .await;
    append_to(
        store,
        "student-s1",
        vec![tagged("StudentRegistered", &["student:s1"])],
    )
    .await;
    append_to(
        store,
        "subscription-1",
        vec![tagged("StudentSubscribed", &["course:c1", "student:s1"])],
    )
    .await;
    append_to(
        store,
        "course-c2",
        vec![tagged("CourseDefined", &["course:c2"])],
    )
    .await;
    append_to(
        store,
        "subscription-2",
        vec![tagged("StudentSubscribed", &["course:c2", "student:s1"])],
    )
    .await;
}

fn subscribed_to(course: &str) -> Query {
    Query::item(QueryItem::types(["StudentSubscribed"]).with_tags([course.to_string()]))
}

/// A condition with no matching event after `after` lets the append through.
pub async fn condition_passes_without_match<S: EventStore>(store: &S) {
    // On an empty store even `Query::all()` with no bound passes.
    let r = append_ok(
        store,
        AppendRequest::stream("first-1", ExpectedRevision::Any, vec![ev("First")])
            .with_condition(Query::all(), None),
    )
    .await;
    assert_eq!(r.first_position, 0);
    dcb_fixture(store).await; // positions 1..=5 now

    // Nothing matches at all.
    let q = subscribed_to("course:c9");
    let r = append_ok(
        store,
        AppendRequest::stream("subscription-3", ExpectedRevision::Any, vec![ev("S")])
            .with_condition(q, None),
    )
    .await;
    assert_eq!(r.first_position, 6);

    // Matches exist, but none after `after`.
    let q = subscribed_to("course:c1"); // matches position 3 only
    let r = append_ok(
        store,
        AppendRequest::stream("subscription-4", ExpectedRevision::Any, vec![ev("S")])
            .with_condition(q.clone(), Some(3)),
    )
    .await;
    assert_eq!(r.first_position, 7);
    let r = append_ok(
        store,
        AppendRequest::stream("subscription-5", ExpectedRevision::Any, vec![ev("S")])
            .with_condition(q, Some(100)),
    )
    .await;
    assert_eq!(r.first_position, 8);

    // Query::all() after the head passes.
    let h = head(store).await.expect("non-empty store");
    append_ok(
        store,
        AppendRequest::stream("subscription-6", ExpectedRevision::Any, vec![ev("S")])
            .with_condition(Query::all(), Some(h)),
    )
    .await;
}

/// A condition with a matching event after `after` fails with the first such position, and
/// nothing is written.
pub async fn condition_fails_on_match<S: EventStore>(store: &S) {
    dcb_fixture(store).await;
    let before = read_all(store).await;
    let attempt = |query: Query, after: Option<u64>| {
        AppendRequest::stream("subscription-9", ExpectedRevision::Any, vec![ev("S")])
            .with_condition(query, after)
    };
    let q = Query::item(QueryItem::types(["StudentSubscribed"]).with_tags(["student:s1"]));
    let cases = [
        (q.clone(), None, 2),
        (q.clone(), Some(0), 2),
        (q.clone(), Some(1), 2),
        (q.clone(), Some(2), 4),
        (q.clone(), Some(3), 4),
        (Query::all(), None, 0),
        (Query::all(), Some(3), 4),
    ];
    for (query, after, position) in cases {
        let what = format!("condition {query:?} after {after:?}");
        let err = append_err(store, attempt(query, after)).await;
        assert_eq!(
            err,
            Error::ConditionFailed { position, after },
            "{what}: wrong error"
        );
        assert!(err.is_conflict());
        assert_log_unchanged(store, &before, &what).await;
    }
    assert!(read(store, ReadRequest::stream("subscription-9"))
        .await
        .is_empty());
}

/// The condition and expected revisions together: either failing fails the append, and the
/// expected revisions are checked first.
pub async fn condition_with_expected_revision<S: EventStore>(store: &S) {
    dcb_fixture(store).await;
    let before = read_all(store).await;
    let c1 = subscribed_to("course:c1"); // matches position 2

    // Right revision, failing condition.
    let err = append_err(
        store,
        AppendRequest::stream("course-c1", ExpectedRevision::Exact(0), vec![ev("X")])
            .with_condition(c1.clone(), Some(1)),
    )
    .await;
    assert_eq!(
        err,
        Error::ConditionFailed {
            position: 2,
            after: Some(1)
        }
    );
    assert_log_unchanged(store, &before, "right revision, failing condition").await;

    // Wrong revision, passing condition.
    let err = append_err(
        store,
        AppendRequest::stream("course-c1", ExpectedRevision::Exact(3), vec![ev("X")])
            .with_condition(c1.clone(), Some(2)),
    )
    .await;
    assert_wrong_revision(
        &err,
        "course-c1",
        ExpectedRevision::Exact(3),
        Some(0),
        "wrong revision, passing condition",
    );
    assert_log_unchanged(store, &before, "wrong revision, passing condition").await;

    // Both wrong: the revision is reported.
    let err = append_err(
        store,
        AppendRequest::stream("course-c1", ExpectedRevision::NoStream, vec![ev("X")])
            .with_condition(c1.clone(), None),
    )
    .await;
    assert_wrong_revision(
        &err,
        "course-c1",
        ExpectedRevision::NoStream,
        Some(0),
        "both failing",
    );
    assert_log_unchanged(store, &before, "both failing").await;

    // Both right, across two streams.
    let r = append_ok(
        store,
        AppendRequest::stream("course-c1", ExpectedRevision::Exact(0), vec![ev("X")])
            .and(StreamAppend::new(
                "student-s1",
                ExpectedRevision::Exact(0),
                vec![ev("Y")],
            ))
            .with_condition(c1, Some(2)),
    )
    .await;
    assert_eq!((r.first_position, r.last_position), (5, 6));
}

/// Multi-item queries are an OR; items may name only types or only tags.
pub async fn condition_query_items<S: EventStore>(store: &S) {
    dcb_fixture(store).await;
    let before = read_all(store).await;
    let cases: Vec<(&str, Query, Option<u64>, Option<u64>)> = vec![
        // (what, query, after, expected failing position or None for success)
        (
            "types only",
            Query::item(QueryItem::types(["StudentRegistered"])),
            None,
            Some(1),
        ),
        (
            "types only, several types",
            Query::item(QueryItem::types(["Nope", "CourseDefined"])),
            Some(0),
            Some(3),
        ),
        (
            "types only, no match",
            Query::item(QueryItem::types(["Nope"])),
            None,
            None,
        ),
        (
            "tags only",
            Query::item(QueryItem::tags(["course:c2"])),
            None,
            Some(3),
        ),
        (
            "tags only, all tags required",
            Query::item(QueryItem::tags(["course:c1", "student:s1"])),
            None,
            Some(2),
        ),
        (
            "tags only, no event has both",
            Query::item(QueryItem::tags(["course:c1", "course:c2"])),
            None,
            None,
        ),
        (
            "or: only the second item matches",
            Query::item(QueryItem::types(["Nope"])).or(QueryItem::tags(["student:s1"])),
            Some(2),
            Some(4),
        ),
        (
            "or: the earliest match of any item",
            Query::item(QueryItem::tags(["course:c2"])).or(QueryItem::types(["CourseDefined"])),
            None,
            Some(0),
        ),
        (
            "or: no item matches",
            Query::item(QueryItem::types(["Nope"])).or(QueryItem::tags(["course:c3"])),
            None,
            None,
        ),
    ];
    let mut written = 0;
    for (what, query, after, failing) in cases {
        let request = AppendRequest::stream("probe-1", ExpectedRevision::Any, vec![ev("Probe")])
            .with_condition(query, after);
        match failing {
            Some(position) => {
                let err = append_err(store, request).await;
                assert_eq!(err, Error::ConditionFailed { position, after }, "{what}");
                let mut expected = before.clone();
                expected.extend(read(store, ReadRequest::stream("probe-1")).await);
                assert_log_unchanged(store, &expected, what).await;
            }
            None => {
                // Probe events match none of the queries, so later cases are unaffected.
                append_ok(store, request).await;
                written += 1;
            }
        }
    }
    assert_eq!(
        read(store, ReadRequest::stream("probe-1")).await.len(),
        written
    );
    // Query::all() after the head passes; after the one before, it fails on the head.
    let h = head(store).await.expect("non-empty store");
    let err = append_err(
        store,
        AppendRequest::stream("probe-1", ExpectedRevision::Any, vec![ev("Probe")])
            .with_condition(Query::all(), Some(h - 1)),
    )
    .await;
    assert_eq!(
        err,
        Error::ConditionFailed {
            position: h,
            after: Some(h - 1)
        }
    );
    append_ok(
        store,
        AppendRequest::stream("probe-1", ExpectedRevision::Any, vec![ev("Probe")])
            .with_condition(Query::all(), Some(h)),
    )
    .await;
}

/// A query with no items is invalid wherever it is used.
pub async fn empty_query_is_rejected<S: EventStore>(store: &S) {
    append_to(store, "any-1", vec![ev("A")]).await;
    let before = read_all(store).await;
    let err = append_err(
        store,
        AppendRequest::stream("any-1", ExpectedRevision::Any, vec![ev("B")])
            .with_condition(Query::default(), None),
    )
    .await;
    assert_invalid(&err, "query", "empty query in a condition");
    assert_log_unchanged(store, &before, "empty query in a condition").await;

    let err = expect_err(
        store
            .read(ReadRequest::query(Query::default()))
            .await
            .map(|_| ()),
        "read with an empty query",
    );
    assert_invalid(&err, "query", "read with an empty query");
    let err = expect_err(
        store
            .subscribe(SubscribeRequest::new(
                Source::Query(Query::default()),
                SubscribeFrom::Start,
            ))
            .await
            .map(|_| ()),
        "subscribe with an empty query",
    );
    assert_invalid(&err, "query", "subscribe with an empty query");
}

/// Retrying an append returns the original result and writes nothing.
pub async fn idempotent_retry<S: EventStore>(store: &S) {
    let request = AppendRequest::stream("retry-1", ExpectedRevision::NoStream, evs("A", 3));
    let original = append_ok(store, request.clone()).await;
    append_to(store, "other-1", evs("B", 2)).await;
    let before = read_all(store).await;
    for attempt in 1..=2 {
        let again = append_ok(store, request.clone()).await;
        assert_eq!(
            again, original,
            "retry {attempt} must return the original result"
        );
        assert_log_unchanged(store, &before, "idempotent retry").await;
    }

    // A later append to the stream does not stop the first batch from being recognized.
    append_to(store, "retry-1", vec![ev("C")]).await;
    let before = read_all(store).await;
    let again = append_ok(store, request).await;
    assert_eq!(again, original);
    assert_log_unchanged(store, &before, "retry after more appends").await;
}

/// Retrying a multi-stream append with a condition returns the original result even though the
/// revisions and the condition would now fail.
pub async fn idempotent_retry_multi_stream<S: EventStore>(store: &S) {
    append_to(store, "noise-1", vec![ev("N")]).await;
    let request = AppendRequest::stream(
        "cart-1",
        ExpectedRevision::NoStream,
        vec![ev("ItemAdded").with_tag("cart:1"), ev("ItemAdded")],
    )
    .and(StreamAppend::new(
        "stock-1",
        ExpectedRevision::NoStream,
        vec![ev("Reserved").with_tag("cart:1")],
    ))
    .with_condition(Query::item(QueryItem::tags(["cart:1"])), None);
    let original = append_ok(store, request.clone()).await;
    assert_eq!((original.first_position, original.last_position), (1, 3));
    append_to(store, "noise-1", vec![ev("N").with_tag("cart:1")]).await;
    let before = read_all(store).await;
    let again = append_ok(store, request).await;
    assert_eq!(again, original, "a multi-stream retry returns the original");
    assert_log_unchanged(store, &before, "multi-stream retry").await;
}

/// Reusing stored event ids in anything other than an exact retry is refused.
pub async fn event_id_conflicts<S: EventStore>(store: &S) {
    let (e1, e2, e3) = (ev("A"), ev("B"), ev("C"));
    append_to(store, "acc-1", vec![e1.clone(), e2.clone()]).await;
    append_to(store, "acc-2", vec![e3.clone()]).await;
    let before = read_all(store).await;
    fn stored(events: &[RecordedEvent], id: Uuid) -> &RecordedEvent {
        events
            .iter()
            .find(|e| e.id == id)
            .expect("fixture event stored")
    }
    let (s1, s2, s3) = (
        stored(&before, e1.id),
        stored(&before, e2.id),
        stored(&before, e3.id),
    );
    let changed = {
        let mut e = e1.clone();
        e.data = b"{\"changed\":true}".to_vec().into();
        e
    };
    let retagged = e1.clone().with_tag("extra:1");
    let cases: Vec<(&str, AppendRequest, Vec<&RecordedEvent>)> = vec![
        (
            "same event in another stream",
            AppendRequest::stream("acc-3", ExpectedRevision::Any, vec![e1.clone()]),
            vec![s1],
        ),
        (
            "same batch in another stream",
            AppendRequest::stream("acc-3", ExpectedRevision::Any, vec![e1.clone(), e2.clone()]),
            vec![s1, s2],
        ),
        (
            "same events in another order",
            AppendRequest::stream("acc-1", ExpectedRevision::Any, vec![e2.clone(), e1.clone()]),
            vec![s1, s2],
        ),
        (
            "same id, different data",
            AppendRequest::stream("acc-1", ExpectedRevision::Any, vec![changed, e2.clone()]),
            vec![s1, s2],
        ),
        (
            "same id, different tags",
            AppendRequest::stream("acc-1", ExpectedRevision::Any, vec![retagged]),
            vec![s1],
        ),
        (
            "stored event followed by a new one",
            AppendRequest::stream("acc-1", ExpectedRevision::Any, vec![e2.clone(), ev("D")]),
            vec![s2],
        ),
        (
            "new event followed by a stored one",
            AppendRequest::stream("acc-1", ExpectedRevision::Any, vec![ev("D"), e1.clone()]),
            vec![s1],
        ),
        (
            "events of two appends as one batch",
            AppendRequest::stream("acc-1", ExpectedRevision::Any, vec![e2.clone(), e3.clone()]),
            vec![s2, s3],
        ),
        (
            "a stored batch plus a new stream",
            AppendRequest::stream("acc-2", ExpectedRevision::Any, vec![e3.clone()]).and(
                StreamAppend::new("acc-4", ExpectedRevision::Any, vec![ev("E")]),
            ),
            vec![s3],
        ),
        (
            "a new stream plus a stored batch",
            AppendRequest::stream("acc-4", ExpectedRevision::Any, vec![ev("E")]).and(
                StreamAppend::new("acc-2", ExpectedRevision::Any, vec![e3.clone()]),
            ),
            vec![s3],
        ),
    ];
    for (what, request, candidates) in cases {
        let err = append_err(store, request).await;
        assert_id_conflict(&err, &candidates, what);
        assert_log_unchanged(store, &before, what).await;
    }
    assert_eq!(store.stream_info("acc-3").await.expect("stream_info"), None);
    assert_eq!(store.stream_info("acc-4").await.expect("stream_info"), None);
}

/// Invalid requests are refused whole, with the validation error every backend shares.
pub async fn invalid_input_is_rejected<S: EventStore>(store: &S) {
    append_to(store, "valid-1", vec![ev("A")]).await;
    let before = read_all(store).await;
    let one =
        |stream: &str, e: NewEvent| AppendRequest::stream(stream, ExpectedRevision::Any, vec![e]);
    let dup = ev("D");
    let mut nil = ev("N");
    nil.id = Uuid::nil();
    let mut empty_type = ev("X");
    empty_type.event_type = "".into();
    let cases: Vec<(&str, AppendRequest, &str)> = vec![
        ("no event", AppendRequest::default(), "append"),
        (
            "an empty stream id that expects a revision",
            AppendRequest::stream("", ExpectedRevision::NoStream, vec![ev("A")]),
            "expected revision",
        ),
        (
            "too long stream id",
            one(&"s".repeat(validate::MAX_STREAM_ID_LEN + 1), ev("A")),
            "stream id",
        ),
        (
            "control character in stream id",
            one("a\nb", ev("A")),
            "stream id",
        ),
        (
            "empty batch",
            AppendRequest::stream("valid-1", ExpectedRevision::Any, vec![]),
            "append",
        ),
        (
            "same stream twice",
            one("valid-2", ev("A")).and(StreamAppend::new(
                "valid-2",
                ExpectedRevision::Any,
                vec![ev("B")],
            )),
            "append",
        ),
        (
            "duplicate event id in a batch",
            AppendRequest::stream(
                "valid-2",
                ExpectedRevision::Any,
                vec![dup.clone(), dup.clone()],
            ),
            "event id",
        ),
        (
            "duplicate event id across streams",
            one("valid-2", dup.clone()).and(StreamAppend::new(
                "valid-3",
                ExpectedRevision::Any,
                vec![dup],
            )),
            "event id",
        ),
        ("nil event id", one("valid-2", nil), "event id"),
        (
            "tag with white space",
            one("valid-2", ev("A").with_tag("account 1")),
            "tag",
        ),
        ("empty tag", one("valid-2", ev("A").with_tag("")), "tag"),
        ("empty event type", one("valid-2", empty_type), "event type"),
        (
            "schema version 0",
            one("valid-2", ev("A").with_schema_version(0)),
            "schema version",
        ),
        (
            "empty content type",
            one("valid-2", ev("A").with_content_type("")),
            "content type",
        ),
        (
            "bad tag in a condition",
            one("valid-2", ev("A")).with_condition(Query::item(QueryItem::tags(["a b"])), None),
            "tag",
        ),
        (
            "valid first stream, invalid second",
            one("valid-2", ev("A")).and(StreamAppend::new(
                "valid-3",
                ExpectedRevision::Any,
                vec![ev("B").with_tag("white space")],
            )),
            "tag",
        ),
    ];
    for (what, request, field) in cases {
        let err = append_err(store, request).await;
        assert_invalid(&err, field, what);
        assert!(!err.is_conflict());
        assert_log_unchanged(store, &before, what).await;
    }

    let big = NewEvent::new("Big", vec![7u8; validate::DEFAULT_MAX_EVENT_SIZE + 1]);
    let err = append_err(store, one("valid-2", big)).await;
    match &err {
        Error::TooLarge { size, limit, .. } => {
            assert!(
                size > limit,
                "oversized event: size {size} <= limit {limit}"
            );
        }
        other => panic!("oversized event: expected TooLarge, got {other:?}"),
    }
    assert_log_unchanged(store, &before, "oversized event").await;
    assert_eq!(
        store.stream_info("valid-2").await.expect("stream_info"),
        None
    );
}
