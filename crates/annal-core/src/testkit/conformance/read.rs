//! Reads: streams, the whole log, types, tag queries, categories, correlation ids, actors
//! and time travel.

use super::util::*;
use crate::{
    AppendRequest, AppendResult, AsOf, EventStore, ExpectedRevision, Metadata, NewEvent, Query,
    QueryItem, ReadRequest, RecordedEvent, Selection, Source, StreamAppend, SubscribeFrom,
    SubscribeRequest, Timestamp, Uuid,
};

/// Ten events in `s-1` interleaved with events of `s-2`; returns the log.
///
/// Positions: `s-1` revision r is at position 2r when r < 5 and at r + 5 otherwise; `s-2` has
/// positions 1, 3, 5, 7, 9.
async fn interleaved<S: EventStore>(store: &S) -> Vec<RecordedEvent> {
    for _ in 0..5 {
        append_to(store, "s-1", vec![ev("A")]).await;
        append_to(store, "s-2", vec![ev("B")]).await;
    }
    append_to(store, "s-1", evs("A", 5)).await;
    read_all(store).await
}

fn stream_revisions(events: &[RecordedEvent], stream: &str) -> Vec<u64> {
    assert!(
        events.iter().all(|e| e.stream_id == stream),
        "a read of stream '{stream}' returned events of other streams: {events:?}"
    );
    revisions(events)
}

/// Stream reads count `from` in revisions, both ways, with limits.
pub async fn read_stream_forward_and_backward<S: EventStore>(store: &S) {
    let log = interleaved(store).await;
    assert_eq!(log.len(), 15);
    let s1 = |r: ReadRequest| async move { stream_revisions(&read(store, r).await, "s-1") };
    let stream = || ReadRequest::stream("s-1");

    assert_eq!(s1(stream()).await, (0..10).collect::<Vec<_>>());
    assert_eq!(s1(stream().from(3).limit(4)).await, vec![3, 4, 5, 6]);
    assert_eq!(s1(stream().from(7)).await, vec![7, 8, 9]);
    assert_eq!(s1(stream().from(9)).await, vec![9]);
    assert!(s1(stream().from(10)).await.is_empty());
    assert_eq!(s1(stream().limit(2)).await, vec![0, 1]);
    assert_eq!(s1(stream().limit(100)).await.len(), 10);
    assert_eq!(
        s1(stream().backward()).await,
        (0..10).rev().collect::<Vec<_>>()
    );
    assert_eq!(
        s1(stream().backward().from(6).limit(3)).await,
        vec![6, 5, 4]
    );
    assert_eq!(s1(stream().backward().from(0)).await, vec![0]);
    assert_eq!(s1(stream().backward().limit(2)).await, vec![9, 8]);
    assert_eq!(s1(stream().backward().from(100).limit(2)).await, vec![9, 8]);

    // Stream events carry their log positions.
    let events = read(store, stream().from(4).limit(2)).await;
    assert_eq!(positions(&events), vec![8, 10]);
    for e in &events {
        assert_eq!(
            e, &log[e.position as usize],
            "stream read differs from the log"
        );
    }
    let s2 = read(store, ReadRequest::stream("s-2").backward()).await;
    assert_eq!(stream_revisions(&s2, "s-2"), vec![4, 3, 2, 1, 0]);
    assert_eq!(positions(&s2), vec![9, 7, 5, 3, 1]);
}

/// Reads of the whole log count `from` in positions, both ways, with limits.
pub async fn read_all_forward_and_backward<S: EventStore>(store: &S) {
    assert!(read_all(store).await.is_empty(), "a new store is empty");
    assert!(read(store, ReadRequest::all().backward()).await.is_empty());
    interleaved(store).await;
    let all = |r: ReadRequest| async move { positions(&read(store, r).await) };

    assert_eq!(all(ReadRequest::all()).await, (0..15).collect::<Vec<_>>());
    assert_eq!(
        all(ReadRequest::all().from(4).limit(3)).await,
        vec![4, 5, 6]
    );
    assert_eq!(all(ReadRequest::all().from(13)).await, vec![13, 14]);
    assert!(all(ReadRequest::all().from(15)).await.is_empty());
    assert_eq!(
        all(ReadRequest::all().backward()).await,
        (0..15).rev().collect::<Vec<_>>()
    );
    assert_eq!(
        all(ReadRequest::all().backward().from(6).limit(4)).await,
        vec![6, 5, 4, 3]
    );
    assert_eq!(
        all(ReadRequest::all().backward().limit(2)).await,
        vec![14, 13]
    );
    assert_eq!(all(ReadRequest::all().backward().from(0)).await, vec![0]);
}

/// Reads by event types return events of any of the types, in position order.
pub async fn read_by_event_types<S: EventStore>(store: &S) {
    append_to(store, "t-1", vec![ev("A"), ev("B"), ev("C")]).await;
    append_to(store, "t-2", vec![ev("C"), ev("D"), ev("A")]).await;
    let types = |r: ReadRequest| async move {
        read(store, r)
            .await
            .iter()
            .map(|e| (e.position, e.event_type.to_string()))
            .collect::<Vec<_>>()
    };
    let pairs = |v: &[(u64, &str)]| -> Vec<(u64, String)> {
        v.iter().map(|(p, t)| (*p, t.to_string())).collect()
    };
    assert_eq!(
        types(ReadRequest::event_types(["A"])).await,
        pairs(&[(0, "A"), (5, "A")])
    );
    assert_eq!(
        types(ReadRequest::event_types(["C", "A"])).await,
        pairs(&[(0, "A"), (2, "C"), (3, "C"), (5, "A")])
    );
    assert_eq!(
        types(ReadRequest::event_types(["C", "A"]).backward().limit(3)).await,
        pairs(&[(5, "A"), (3, "C"), (2, "C")])
    );
    assert_eq!(
        types(ReadRequest::event_types(["C", "A"]).from(1).limit(2)).await,
        pairs(&[(2, "C"), (3, "C")])
    );
    assert!(types(ReadRequest::event_types(["Z"])).await.is_empty());
}

/// Reads by tag/type query return matching events in position order.
pub async fn read_by_query<S: EventStore>(store: &S) {
    append_to(
        store,
        "q-1",
        vec![
            ev("Opened").with_tag("account:1"),
            ev("Deposited").with_tag("account:1").with_tag("vip"),
            ev("Opened").with_tag("account:2"),
        ],
    )
    .await;
    append_to(
        store,
        "q-2",
        vec![ev("Deposited").with_tag("account:2"), ev("Noted")],
    )
    .await;
    let query = |q: Query| async move { positions(&read(store, ReadRequest::query(q)).await) };
    assert_eq!(
        query(Query::item(QueryItem::tags(["account:1"]))).await,
        vec![0, 1]
    );
    assert_eq!(
        query(Query::item(QueryItem::tags(["account:1", "vip"]))).await,
        vec![1]
    );
    assert_eq!(
        query(Query::item(QueryItem::types(["Deposited"]))).await,
        vec![1, 3]
    );
    assert_eq!(
        query(Query::item(
            QueryItem::types(["Opened"]).with_tags(["account:2"])
        ))
        .await,
        vec![2]
    );
    assert_eq!(
        query(Query::item(QueryItem::tags(["vip"])).or(QueryItem::types(["Noted"]))).await,
        vec![1, 4]
    );
    assert_eq!(query(Query::all()).await, vec![0, 1, 2, 3, 4]);
    assert!(query(Query::item(QueryItem::tags(["account:3"])))
        .await
        .is_empty());
    let back = read(
        store,
        ReadRequest::query(Query::item(QueryItem::tags(["account:2"])))
            .backward()
            .from(2),
    )
    .await;
    assert_eq!(positions(&back), vec![2]);
}

/// Category reads select streams whose id before the first `-` equals the category.
pub async fn read_by_category<S: EventStore>(store: &S) {
    append_to(store, "account-1", evs("A", 2)).await; // 0, 1
    append_to(store, "order-1", evs("O", 1)).await; // 2
    append_to(store, "account-2", evs("A", 1)).await; // 3
    append_to(store, "accounts-1", evs("X", 1)).await; // 4
    append_to(store, "account", evs("Y", 1)).await; // 5: no dash, category "account"
    append_to(store, "account-1", evs("A", 1)).await; // 6
    let events = read(store, ReadRequest::category("account")).await;
    assert_eq!(positions(&events), vec![0, 1, 3, 5, 6]);
    assert!(events.iter().all(|e| e.category() == "account"));
    assert_eq!(
        positions(&read(store, ReadRequest::category("account").from(2).limit(2)).await),
        vec![3, 5]
    );
    assert_eq!(
        positions(&read(store, ReadRequest::category("account").backward().from(4)).await),
        vec![3, 1, 0]
    );
    assert_eq!(
        positions(&read(store, ReadRequest::category("order")).await),
        vec![2]
    );
    assert!(read(store, ReadRequest::category("acc")).await.is_empty());
}

/// Reading a stream that does not exist returns no event, not an error.
pub async fn read_missing_stream_is_empty<S: EventStore>(store: &S) {
    assert!(read(store, ReadRequest::stream("ghost-1")).await.is_empty());
    append_to(store, "real-1", vec![ev("A")]).await;
    assert!(read(store, ReadRequest::stream("ghost-1")).await.is_empty());
    assert!(read(store, ReadRequest::stream("ghost-1").backward())
        .await
        .is_empty());
    assert!(read(store, ReadRequest::stream("real")).await.is_empty());
    assert!(read(store, ReadRequest::category("ghost")).await.is_empty());
}

/// Four appends with distinct timestamps: `tt-1` at 0, 1 (one append), 2; `tt-2` at 3; `tt-1`
/// at 4. Returns the results.
async fn timeline<S: EventStore>(store: &S) -> Vec<AppendResult> {
    let mut results = Vec::new();
    for (stream, n) in [("tt-1", 2), ("tt-1", 1), ("tt-2", 1), ("tt-1", 1)] {
        if !results.is_empty() {
            tick().await;
        }
        results.push(append_to(store, stream, evs("E", n)).await);
    }
    for w in results.windows(2) {
        assert!(
            w[0].recorded_at < w[1].recorded_at,
            "appends a few milliseconds apart got timestamps {} and {}",
            w[0].recorded_at,
            w[1].recorded_at
        );
    }
    results
}

/// `as_of` a position hides later events from stream and log reads.
pub async fn time_travel_as_of_position<S: EventStore>(store: &S) {
    timeline(store).await;
    let stream = |p: u64| ReadRequest::stream("tt-1").as_of(AsOf::Position(p));
    let all = |p: u64| ReadRequest::all().as_of(AsOf::Position(p));
    assert_eq!(revisions(&read(store, stream(1)).await), vec![0, 1]);
    assert_eq!(revisions(&read(store, stream(3)).await), vec![0, 1, 2]);
    assert_eq!(revisions(&read(store, stream(4)).await), vec![0, 1, 2, 3]);
    assert_eq!(revisions(&read(store, stream(0)).await), vec![0]);
    assert_eq!(
        revisions(&read(store, stream(3).backward()).await),
        vec![2, 1, 0]
    );
    assert_eq!(
        revisions(&read(store, stream(4).backward().from(2)).await),
        vec![2, 1, 0]
    );
    assert_eq!(positions(&read(store, all(2)).await), vec![0, 1, 2]);
    assert_eq!(
        positions(&read(store, all(3).backward()).await),
        vec![3, 2, 1, 0]
    );
    assert_eq!(
        positions(&read(store, all(3).backward().limit(2)).await),
        vec![3, 2]
    );
    assert_eq!(positions(&read(store, all(3).from(2)).await), vec![2, 3]);
    assert_eq!(positions(&read(store, all(100)).await), vec![0, 1, 2, 3, 4]);
    assert!(
        read(store, ReadRequest::stream("tt-2").as_of(AsOf::Position(2)))
            .await
            .is_empty()
    );
    assert_eq!(
        positions(&read(store, ReadRequest::category("tt").as_of(AsOf::Position(3))).await),
        vec![0, 1, 2, 3]
    );
}

/// `as_of` a time hides events recorded after it.
pub async fn time_travel_as_of_time<S: EventStore>(store: &S) {
    let r = timeline(store).await;
    let before = |t: Timestamp| Timestamp(t.as_micros() - 1);
    let stream = |t: Timestamp| ReadRequest::stream("tt-1").as_of(AsOf::Time(t));
    let all = |t: Timestamp| ReadRequest::all().as_of(AsOf::Time(t));

    assert!(read(store, stream(before(r[0].recorded_at)))
        .await
        .is_empty());
    assert!(read(store, all(before(r[0].recorded_at))).await.is_empty());
    assert_eq!(
        revisions(&read(store, stream(r[0].recorded_at)).await),
        vec![0, 1]
    );
    assert_eq!(
        revisions(&read(store, stream(before(r[1].recorded_at))).await),
        vec![0, 1]
    );
    assert_eq!(
        revisions(&read(store, stream(r[1].recorded_at)).await),
        vec![0, 1, 2]
    );
    assert_eq!(
        revisions(&read(store, stream(r[2].recorded_at)).await),
        vec![0, 1, 2]
    );
    assert_eq!(
        revisions(&read(store, stream(r[3].recorded_at)).await),
        vec![0, 1, 2, 3]
    );
    assert_eq!(
        revisions(&read(store, stream(r[2].recorded_at).backward().limit(2)).await),
        vec![2, 1]
    );
    assert_eq!(
        positions(&read(store, all(r[2].recorded_at)).await),
        vec![0, 1, 2, 3]
    );
    assert_eq!(
        positions(&read(store, all(before(r[2].recorded_at)).backward()).await),
        vec![2, 1, 0]
    );
    assert_eq!(
        positions(&read(store, all(r[3].recorded_at).from(3)).await),
        vec![3, 4]
    );
    let q = ReadRequest::source(Source::EventTypes(vec!["E".into()]))
        .as_of(AsOf::Time(r[1].recorded_at));
    assert_eq!(positions(&read(store, q).await), vec![0, 1, 2]);
}

/// Reads by correlation id and by actor: every event of one business transaction across
/// streams (and of no stream), in log order, either way; every event of one actor; bounded
/// by `from` and `as_of` like any read; and a subscription by correlation id.
pub async fn read_by_correlation_and_actor<S: EventStore>(store: &S) {
    let txn = Uuid::from_u128(0x7c);
    let other = Uuid::from_u128(0x7d);
    let by = |e: NewEvent, correlation: Uuid, actor: &str| {
        e.with_metadata(Metadata {
            correlation_id: Some(correlation),
            causation_id: None,
            actor: Some(actor.into()),
            extra: Default::default(),
        })
    };
    append_to(store, "account-1", vec![by(ev("Opened"), txn, "ann")]).await;
    append_to(store, "account-2", vec![by(ev("Opened"), other, "bob")]).await;
    append_ok(
        store,
        AppendRequest::stream(
            "order-1",
            ExpectedRevision::Any,
            vec![by(ev("Placed"), txn, "bob")],
        )
        .and(StreamAppend::no_stream(vec![by(ev("Audited"), txn, "ann")])),
    )
    .await;
    append_to(store, "account-1", vec![ev("Deposited")]).await;
    append_to(store, "account-1", vec![by(ev("Withdrawn"), txn, "ann")]).await;

    let txn_events = read(store, ReadRequest::correlation(txn)).await;
    assert_eq!(positions(&txn_events), [0, 2, 3, 5]);
    assert!(txn_events
        .iter()
        .all(|e| e.metadata.correlation_id == Some(txn)));
    let streams: Vec<&str> = txn_events.iter().map(|e| e.stream_id.as_str()).collect();
    assert_eq!(streams, ["account-1", "order-1", "", "account-1"]);
    let backward = read(store, ReadRequest::correlation(txn).backward()).await;
    assert_eq!(positions(&backward), [5, 3, 2, 0]);
    let bounded = read(
        store,
        ReadRequest::correlation(txn)
            .from(1)
            .as_of(AsOf::Position(3)),
    )
    .await;
    assert_eq!(positions(&bounded), [2, 3]);
    let ann = read(store, ReadRequest::actor("ann")).await;
    assert_eq!(positions(&ann), [0, 3, 5]);
    let bob = read(store, ReadRequest::actor("bob").limit(1)).await;
    assert_eq!(positions(&bob), [1]);
    assert!(read(store, ReadRequest::correlation(Uuid::from_u128(1)))
        .await
        .is_empty());
    assert!(read(store, ReadRequest::actor("nobody")).await.is_empty());
    let err = expect_err(
        store.read(ReadRequest::actor("")).await.map(|_| ()),
        "an empty actor",
    );
    assert_invalid(&err, "actor", "an empty actor");

    let mut sub = subscribe(
        store,
        SubscribeRequest::new(Source::Correlation(txn), SubscribeFrom::After(3)),
    )
    .await;
    assert_eq!(next_event(&mut sub, "history").await.position, 5);
    next_caught_up(&mut sub, "caught up").await;
    append_to(store, "account-2", vec![by(ev("Closed"), other, "ann")]).await;
    append_to(store, "account-2", vec![by(ev("Reopened"), txn, "cy")]).await;
    assert_eq!(next_event(&mut sub, "live").await.position, 7);
}

/// Filters that combine: a category or a stream-id prefix with types and a tag query; an
/// event must pass every one, events of no stream pass none that names streams, and a
/// subscription selects the same way.
pub async fn read_by_combined_filters<S: EventStore>(store: &S) {
    append_to(store, "account-1", vec![ev("Opened").with_tag("vip")]).await;
    append_to(
        store,
        "account-12",
        vec![ev("Opened"), ev("Deposited").with_tag("vip")],
    )
    .await;
    append_to(store, "order-1", vec![ev("Opened").with_tag("vip")]).await;
    append_ok(
        store,
        AppendRequest::no_stream(vec![ev("Opened").with_tag("vip")]),
    )
    .await;
    append_to(store, "account-2", vec![ev("Deposited").with_tag("vip")]).await;
    let select = |category: Option<&str>, prefix: Option<&str>, query: Option<Query>| {
        ReadRequest::select(Selection {
            category: category.map(str::to_string),
            stream_prefix: prefix.map(str::to_string),
            query,
        })
    };
    let vip = || Some(Query::item(QueryItem::tags(["vip"])));
    let opened = || Some(Query::item(QueryItem::types(["Opened"])));
    let cases = [
        (select(Some("account"), None, vip()), vec![0, 2, 5]),
        (select(Some("account"), None, opened()), vec![0, 1]),
        (select(None, Some("account-1"), None), vec![0, 1, 2]),
        (select(None, Some("account-1"), vip()), vec![0, 2]),
        (select(None, Some("acc"), opened()), vec![0, 1]),
        (select(Some("account"), Some("account-2"), None), vec![5]),
        (select(Some("order"), Some("account"), None), vec![]),
        (select(None, None, vip()), vec![0, 2, 3, 4, 5]),
    ];
    for (request, want) in cases {
        let what = format!("{:?}", request.source);
        assert_eq!(
            positions(&read(store, request.clone()).await),
            want,
            "{what}"
        );
        let back: Vec<u64> = want.iter().rev().copied().collect();
        assert_eq!(
            positions(&read(store, request.backward()).await),
            back,
            "{what}, backward"
        );
    }
    let err = expect_err(
        store
            .read(ReadRequest::select(Selection::default()))
            .await
            .map(|_| ()),
        "an empty selection",
    );
    assert_invalid(&err, "selection", "an empty selection");

    let mut sub = subscribe(
        store,
        SubscribeRequest::new(
            Source::Select(Selection {
                category: Some("account".into()),
                stream_prefix: None,
                query: vip(),
            }),
            SubscribeFrom::Start,
        ),
    )
    .await;
    let history = next_events(&mut sub, 3, "history").await;
    assert_eq!(positions(&history), [0, 2, 5]);
    next_caught_up(&mut sub, "caught up").await;
    append_to(store, "order-2", vec![ev("Opened").with_tag("vip")]).await;
    append_to(store, "account-3", vec![ev("Opened")]).await;
    append_to(store, "account-3", vec![ev("Closed").with_tag("vip")]).await;
    assert_eq!(next_event(&mut sub, "live").await.position, 8);
}

/// Every read says the log's head it was served at, whatever it selects and however it is
/// bounded: what a decision needs to guard its append in the same request.
pub async fn reads_say_the_head_they_were_served_at<S: EventStore>(store: &S) {
    let empty = store.read(ReadRequest::all()).await.expect("read");
    assert_eq!(empty.head(), None, "a read of an empty log");
    append_to(store, "a-1", evs("A", 3)).await;
    append_to(store, "b-1", evs("B", 2)).await;
    let requests = [
        ReadRequest::all(),
        ReadRequest::stream("a-1").limit(1),
        ReadRequest::stream("nobody-1"),
        ReadRequest::event_types(["B"]).backward(),
        ReadRequest::all().as_of(AsOf::Position(1)),
    ];
    for r in requests {
        let what = format!("{r:?}");
        let stream = store.read(r).await.expect("read");
        assert_eq!(stream.head(), Some(4), "{what}");
    }
    // A read keeps the head it was served at while the log grows.
    let mut read = store.read(ReadRequest::all()).await.expect("read");
    append_to(store, "a-1", evs("A", 1)).await;
    assert_eq!(read.head(), Some(4));
    let mut n = 0;
    while let Some(e) = crate::next_item(&mut read).await {
        e.expect("event");
        n += 1;
    }
    assert_eq!(n, 5, "the read holds the events up to its head");
}
