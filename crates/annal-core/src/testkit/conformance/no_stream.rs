//! Events that belong to no stream, as Dynamic Consistency Boundary decisions write them:
//! found by tag, type and the whole log, guarded by conditions, creating no stream; and
//! "every event" spelled as one query in reads and conditions alike.

use super::util::*;
use crate::{
    AppendRequest, Error, EventStore, ExpectedRevision, ListCategories, ListStreams, Query,
    QueryItem, ReadRequest, Source, StreamAppend, SubscribeFrom, SubscribeRequest,
    SubscriptionItem, NO_STREAM,
};

fn tagged(event_type: &str, tags: &[&str]) -> crate::NewEvent {
    tags.iter().fold(ev(event_type), |e, t| e.with_tag(*t))
}

/// Events of no stream are written, read back by the whole log, tag and type, with an empty
/// stream id and revisions counting from 0 in each request, and make no stream or category.
pub async fn events_of_no_stream<S: EventStore>(store: &S) {
    append_to(store, "account-1", evs("Opened", 1)).await;
    let r = append_ok(
        store,
        AppendRequest::no_stream(vec![
            tagged("UsernameClaimed", &["username:ann"]),
            tagged("UsernameClaimed", &["username:bob", "tenant:t1"]),
        ]),
    )
    .await;
    assert_eq!((r.first_position, r.last_position), (1, 2));
    assert_eq!(r.streams.len(), 1);
    assert_eq!(
        (r.streams[0].stream_id.as_str(), r.streams[0].revision),
        (NO_STREAM, 1),
        "the result of events of no stream: {r:?}"
    );
    // With a stream's batch, atomically; revisions of no stream start again at 0.
    let r = append_ok(
        store,
        AppendRequest::stream("account-1", ExpectedRevision::Exact(0), evs("Renamed", 1)).and(
            StreamAppend::no_stream(vec![tagged("UsernameClaimed", &["username:cy"])]),
        ),
    )
    .await;
    assert_eq!(r.streams[0].revision, 1);
    assert_eq!(
        (r.streams[1].stream_id.as_str(), r.streams[1].revision),
        (NO_STREAM, 0)
    );
    assert_eq!((r.streams[1].first_position, r.last_position), (4, 4));

    let all = read_all(store).await;
    let shape: Vec<(&str, u64, u64)> = all
        .iter()
        .map(|e| (e.stream_id.as_str(), e.revision, e.position))
        .collect();
    assert_eq!(
        shape,
        [
            ("account-1", 0, 0),
            ("", 0, 1),
            ("", 1, 2),
            ("account-1", 1, 3),
            ("", 0, 4),
        ]
    );
    assert_eq!(all[1].in_stream(), None);
    assert_eq!(all[0].in_stream(), Some("account-1"));
    let by_tag = read(
        store,
        ReadRequest::query(Query::item(QueryItem::tags(["tenant:t1"]))),
    )
    .await;
    assert_eq!(positions(&by_tag), [2]);
    let by_type = read(store, ReadRequest::event_types(["UsernameClaimed"])).await;
    assert_eq!(positions(&by_type), [1, 2, 4]);
    let backward = read(store, ReadRequest::all().backward().limit(2)).await;
    assert_eq!(positions(&backward), [4, 3]);
    // No stream and no category came of them.
    let streams = store
        .list_streams(ListStreams {
            limit: 100,
            ..Default::default()
        })
        .await
        .expect("list streams");
    let ids: Vec<&str> = streams.iter().map(|s| s.stream_id.as_str()).collect();
    assert_eq!(ids, ["account-1"]);
    let categories = store
        .list_categories(ListCategories {
            limit: 100,
            ..Default::default()
        })
        .await
        .expect("list categories");
    let names: Vec<(&str, u64)> = categories
        .iter()
        .map(|c| (c.category.as_str(), c.event_count))
        .collect();
    assert_eq!(names, [("account", 2)]);
    let info = store.stream_info("account-1").await.expect("info");
    assert_eq!(info.map(|i| (i.revision, i.count)), Some((1, 2)));
    let err = expect_err(
        store.read(ReadRequest::stream(NO_STREAM)).await.map(|_| ()),
        "reading the stream of no stream",
    );
    assert_invalid(&err, "stream id", "reading the stream of no stream");
}

/// A decision over events of no stream: the condition "nothing matching after the position
/// I read" lets one of two racing decisions through and refuses the other; a retry of the
/// one that passed is idempotent.
pub async fn events_of_no_stream_are_guarded_by_conditions<S: EventStore>(store: &S) {
    append_to(store, "noise-1", evs("Noise", 2)).await;
    let claim = Query::item(QueryItem::types(["UsernameClaimed"]).with_tags(["username:ann"]));
    let seen = read(store, ReadRequest::query(claim.clone())).await;
    assert!(seen.is_empty());
    let read_at = head(store).await;
    let decision = |who: &str| {
        AppendRequest::no_stream(vec![tagged("UsernameClaimed", &["username:ann", who])])
            .with_condition(claim.clone(), read_at)
    };
    let first = decision("by:one");
    let won = append_ok(store, first.clone()).await;
    let before = read_all(store).await;
    let err = append_err(store, decision("by:two")).await;
    assert_eq!(
        err,
        Error::ConditionFailed {
            position: won.first_position,
            after: read_at
        }
    );
    assert_log_unchanged(store, &before, "the losing decision").await;
    // Sent again (its answer lost), the winner is not written twice.
    let again = append_ok(store, first).await;
    assert_eq!(again, won);
    assert_log_unchanged(store, &before, "the winning decision sent again").await;
    // A subscription by tag delivers it.
    let mut sub = subscribe(
        store,
        SubscribeRequest::new(
            Source::Query(Query::item(QueryItem::tags(["username:ann"]))),
            SubscribeFrom::Start,
        ),
    )
    .await;
    let e = next_event(&mut sub, "the claim").await;
    assert_eq!((e.stream_id.as_str(), e.position), ("", won.first_position));
}

/// What events of no stream cannot do: expect a revision, come in two batches of one
/// request, or be an empty batch.
pub async fn events_of_no_stream_expect_any<S: EventStore>(store: &S) {
    append_to(store, "account-1", evs("Opened", 1)).await;
    let before = read_all(store).await;
    for expected in [
        ExpectedRevision::NoStream,
        ExpectedRevision::StreamExists,
        ExpectedRevision::Exact(0),
    ] {
        let what = format!("events of no stream expecting {expected}");
        let err = append_err(
            store,
            AppendRequest::stream(NO_STREAM, expected, evs("Claimed", 1)),
        )
        .await;
        assert_invalid(&err, "expected revision", &what);
        assert_log_unchanged(store, &before, &what).await;
    }
    let twice =
        AppendRequest::no_stream(evs("Claimed", 1)).and(StreamAppend::no_stream(evs("Claimed", 1)));
    assert_invalid(&append_err(store, twice).await, "append", "two batches");
    let empty = AppendRequest::no_stream(vec![]);
    assert_invalid(&append_err(store, empty).await, "append", "an empty batch");
    assert_log_unchanged(store, &before, "refused requests").await;
}

/// "Every event" is one query, [`Query::all`], in a read source and in a condition alike:
/// it reads what [`Source::All`] reads, events of no stream included, and as a condition
/// fails on any event after its position.
pub async fn every_event_is_one_query<S: EventStore>(store: &S) {
    append_to(store, "account-1", evs("Opened", 2)).await;
    append_ok(store, AppendRequest::no_stream(evs("Claimed", 2))).await;
    let all = read_all(store).await;
    assert_eq!(all.len(), 4);
    assert_eq!(read(store, ReadRequest::query(Query::all())).await, all);
    assert_eq!(
        read(store, ReadRequest::query(Query::all()).backward()).await,
        all.iter().rev().cloned().collect::<Vec<_>>()
    );
    let mut sub = subscribe(
        store,
        SubscribeRequest::new(Source::Query(Query::all()), SubscribeFrom::Start),
    )
    .await;
    let delivered = next_events(&mut sub, 4, "every event").await;
    assert_eq!(delivered, all);
    assert!(matches!(
        next_sub(&mut sub, "caught up").await,
        SubscriptionItem::CaughtUp { .. }
    ));
    let err = append_err(
        store,
        AppendRequest::no_stream(evs("Claimed", 1)).with_condition(Query::all(), Some(2)),
    )
    .await;
    assert_eq!(
        err,
        Error::ConditionFailed {
            position: 3,
            after: Some(2)
        }
    );
    append_ok(
        store,
        AppendRequest::no_stream(evs("Claimed", 1)).with_condition(Query::all(), Some(3)),
    )
    .await;
}
