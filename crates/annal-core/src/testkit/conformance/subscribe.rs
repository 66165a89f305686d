//! Subscriptions: history, the caught-up marker, live events, filters and the switch to live.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::util::*;
use crate::{
    AppendRequest, Error, EventStore, ExpectedRevision, Query, QueryItem, RecordedEvent, Result,
    Source, SubscribeFrom, SubscribeRequest, SubscriptionItem, SubscriptionStream,
};

fn all_from(from: SubscribeFrom) -> SubscribeRequest {
    SubscribeRequest::new(Source::All, from)
}

/// From the start: every past event, the marker at the head, then events appended later.
pub async fn subscribe_from_start<S: EventStore>(store: &S) {
    let mut early = subscribe(store, all_from(SubscribeFrom::Start)).await;
    assert_eq!(
        next_caught_up(&mut early, "subscription to an empty store").await,
        None,
        "an empty store is caught up at no position"
    );

    append_to(store, "a-1", vec![ev("A"), ev("B")]).await;
    append_to(store, "b-1", vec![ev("C")]).await;
    let history = read_all(store).await;
    let live_early = next_events(&mut early, 3, "live events after an empty history").await;
    assert_eq!(live_early, history);

    let mut sub = subscribe(store, all_from(SubscribeFrom::Start)).await;
    let got = next_events(&mut sub, 3, "history from the start").await;
    assert_eq!(got, history, "history differs from the log");
    assert_eq!(next_caught_up(&mut sub, "after history").await, Some(2));

    let new = [ev("D"), ev("E")];
    append_to(store, "b-1", vec![new[0].clone()]).await;
    append_to(store, "a-1", vec![new[1].clone()]).await;
    let live = next_events(&mut sub, 2, "live events").await;
    assert_eq!(positions(&live), vec![3, 4]);
    assert!(live[0].same_as(&new[0]) && live[1].same_as(&new[1]));
    assert_eq!((live[0].stream_id.as_str(), live[0].revision), ("b-1", 1));
    assert_eq!((live[1].stream_id.as_str(), live[1].revision), ("a-1", 2));
    assert_eq!(
        positions(&next_events(&mut early, 2, "live events, early subscriber").await),
        vec![3, 4]
    );
    assert_eq!(live, read_all(store).await[3..].to_vec());
    assert_quiet(&mut sub, "nothing more was appended").await;
    assert_quiet(&mut early, "nothing more was appended").await;

    // Subscribers already waiting (each in its own task) are all woken by a later append.
    let e = ev("F");
    let waiters = [
        wait_in_task(sub, "waiting subscriber"),
        wait_in_task(early, "waiting early subscriber"),
    ];
    let mut waiters: Vec<_> = waiters.into_iter().collect();
    for (_, parked) in waiters.iter_mut() {
        waits_for_the_store(parked, 1, "waiting subscriber").await;
    }
    let r = append_to(store, "a-1", vec![e.clone()]).await;
    for (waiter, _) in waiters {
        let (_, got) = joined(waiter, "waiting subscriber").await;
        assert_eq!(got.position, r.first_position);
        assert!(got.same_as(&e));
    }
}

/// Waits for a subscription's next event in a task of its own, so that only the store can wake
/// it.
///
/// Also returns how many times the subscription has been left waiting for the store (its
/// stream returned `Pending`), so that a test can append once the task waits.
fn wait_in_task(
    sub: SubscriptionStream,
    what: &'static str,
) -> (
    tokio::task::JoinHandle<(SubscriptionStream, RecordedEvent)>,
    tokio::sync::watch::Receiver<usize>,
) {
    let (parked, parks) = tokio::sync::watch::channel(0usize);
    let mut sub: SubscriptionStream = Box::pin(Parks { sub, parked });
    let task = tokio::spawn(async move {
        let e = next_event(&mut sub, what).await;
        (sub, e)
    });
    (task, parks)
}

/// A subscription that counts the times it was left waiting.
struct Parks {
    sub: SubscriptionStream,
    parked: tokio::sync::watch::Sender<usize>,
}

impl futures_core::Stream for Parks {
    type Item = crate::Result<SubscriptionItem>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let polled = this.sub.as_mut().poll_next(cx);
        if polled.is_pending() {
            this.parked.send_modify(|n| *n += 1);
        }
        polled
    }
}

/// Waits until a subscription in a task has been left waiting `n` times.
async fn waits_for_the_store(
    parks: &mut tokio::sync::watch::Receiver<usize>,
    n: usize,
    what: &str,
) {
    if within(parks.wait_for(|&count| count >= n)).await.is_none() {
        panic!("{what}: the subscription never waited within {WAIT:?}");
    }
}

async fn joined<T: Send + 'static>(handle: tokio::task::JoinHandle<T>, what: &str) -> T {
    match tokio::time::timeout(WAIT, handle).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => panic!("{what}: task failed: {e}"),
        Err(_) => panic!("{what}: task did not finish within {WAIT:?}"),
    }
}

/// From a checkpoint: history starts right after it.
pub async fn subscribe_from_after<S: EventStore>(store: &S) {
    append_to(store, "c-1", evs("A", 3)).await;
    append_to(store, "c-2", evs("B", 2)).await;
    let mut mid = subscribe(store, all_from(SubscribeFrom::After(2))).await;
    let mut at_head = subscribe(store, all_from(SubscribeFrom::After(4))).await;
    let mut at_zero = subscribe(store, all_from(SubscribeFrom::After(0))).await;

    assert_eq!(
        positions(&next_events(&mut mid, 2, "history after 2").await),
        vec![3, 4]
    );
    assert_eq!(next_caught_up(&mut mid, "after history").await, Some(4));
    assert_eq!(
        next_caught_up(&mut at_head, "checkpoint at the head").await,
        Some(4)
    );
    assert_eq!(
        positions(&next_events(&mut at_zero, 4, "history after 0").await),
        vec![1, 2, 3, 4]
    );
    assert_eq!(next_caught_up(&mut at_zero, "after history").await, Some(4));

    append_to(store, "c-1", evs("C", 1)).await;
    for (sub, name) in [
        (&mut mid, "after 2"),
        (&mut at_head, "after 4"),
        (&mut at_zero, "after 0"),
    ] {
        assert_eq!(next_event(sub, name).await.position, 5, "{name}");
        assert_quiet(sub, name).await;
    }
}

/// A resume point beyond the head names events that do not exist: refused, for the whole
/// log and for one stream alike, so that no checkpoint is ever sent below it.
pub async fn subscribe_after_beyond_the_head_is_refused<S: EventStore>(store: &S) {
    let refused = |r: Result<SubscriptionStream>, what: &str| match r {
        Err(Error::InvalidArgument { field, problem }) => {
            assert_eq!(field, "from", "{what}: {problem}");
            assert!(problem.contains("beyond"), "{what}: {problem}");
        }
        Err(e) => panic!("{what}: expected InvalidArgument, got {e:?}"),
        Ok(_) => panic!("{what}: a resume point beyond the head was accepted"),
    };
    refused(
        store.subscribe(all_from(SubscribeFrom::After(0))).await,
        "after 0 of an empty log",
    );
    append_to(store, "b-1", evs("A", 3)).await;
    for p in [3, 1_000_000, u64::MAX] {
        refused(
            store.subscribe(all_from(SubscribeFrom::After(p))).await,
            &format!("after {p} with the head at 2"),
        );
        let stream = SubscribeRequest::new(Source::Stream("b-1".into()), SubscribeFrom::After(p));
        refused(store.subscribe(stream).await, &format!("stream after {p}"));
    }
    let mut at_head = subscribe(store, all_from(SubscribeFrom::After(2))).await;
    assert_eq!(
        next_caught_up(&mut at_head, "after the head").await,
        Some(2)
    );
}

/// From now: no history, the marker at the current head, then new events.
pub async fn subscribe_from_now<S: EventStore>(store: &S) {
    append_to(store, "n-1", evs("A", 3)).await;
    let mut sub = subscribe(store, all_from(SubscribeFrom::Now)).await;
    assert_eq!(
        next_caught_up(&mut sub, "a subscription from now starts caught up").await,
        Some(2)
    );
    let e = ev("B");
    append_to(store, "n-2", vec![e.clone()]).await;
    let got = next_event(&mut sub, "live event").await;
    assert_eq!(got.position, 3);
    assert!(got.same_as(&e));
    assert_quiet(&mut sub, "only one event was appended").await;
}

/// Reads events until the one with this id; returns the positions read, that one included.
async fn events_until(sub: &mut SubscriptionStream, id: crate::Uuid, what: &str) -> Vec<u64> {
    let mut out = Vec::new();
    loop {
        let e = next_event(sub, what).await;
        out.push(e.position);
        if e.id == id {
            return out;
        }
    }
}

/// Filtered subscriptions (stream, category, event types, query) deliver matches only, in
/// history and live.
pub async fn subscribe_filtered<S: EventStore>(store: &S) {
    append_to(
        store,
        "account-1",
        vec![
            ev("Opened").with_tag("account:1"),                    // 0
            ev("Deposited").with_tag("account:1").with_tag("vip"), // 1
        ],
    )
    .await;
    append_to(store, "account-2", vec![ev("Opened").with_tag("account:2")]).await; // 2
    append_to(
        store,
        "order-1",
        vec![ev("Placed").with_tag("vip"), ev("Deposited")], // 3, 4
    )
    .await;

    let filters: Vec<(&str, Source, Vec<u64>, Vec<u64>)> = vec![
        // (name, source, history positions, live positions before the sentinel)
        (
            "stream",
            Source::Stream("account-1".into()),
            vec![0, 1],
            vec![7],
        ),
        (
            "category",
            Source::Category("account".into()),
            vec![0, 1, 2],
            vec![5, 7],
        ),
        (
            "event types",
            Source::EventTypes(vec!["Deposited".into(), "Closed".into()]),
            vec![1, 4],
            vec![5, 7],
        ),
        (
            "query",
            Source::Query(Query::item(QueryItem::tags(["vip"]))),
            vec![1, 3],
            vec![6],
        ),
    ];
    let mut subs = Vec::new();
    for (name, source, history, _) in &filters {
        let mut sub = subscribe(
            store,
            SubscribeRequest::new(source.clone(), SubscribeFrom::Start),
        )
        .await;
        let got = next_events(&mut sub, history.len(), name).await;
        assert_eq!(positions(&got), *history, "{name}: history");
        assert_eq!(
            next_caught_up(&mut sub, name).await,
            Some(4),
            "{name}: the marker carries the log's head, matched or not"
        );
        subs.push(sub);
    }

    append_to(store, "account-2", vec![ev("Deposited")]).await; // 5
    append_to(store, "order-1", vec![ev("Shipped").with_tag("vip")]).await; // 6
    append_to(store, "account-1", vec![ev("Closed")]).await; // 7
    append_to(store, "accounts-9", vec![ev("Opened")]).await; // 8
    let sentinel = ev("Deposited").with_tag("vip");
    append_to(store, "account-1", vec![sentinel.clone()]).await; // 9: matches every filter

    for ((name, _, _, live), sub) in filters.iter().zip(subs.iter_mut()) {
        let mut expected = live.clone();
        expected.push(9);
        assert_eq!(
            events_until(sub, sentinel.id, name).await,
            expected,
            "{name}: live events"
        );
    }

    // A waiting filtered subscriber skips an unmatched event and is woken by a matched one.
    let name = "waiting category subscriber";
    let matched = ev("Closed");
    let (waiter, mut parks) = wait_in_task(subs.swap_remove(1), name);
    waits_for_the_store(&mut parks, 1, name).await;
    append_to(store, "order-1", vec![ev("Deposited")]).await; // 10
                                                              // Give the waiter the chance to skip it and wait again before the matched event comes
                                                              // (a store need not wake a subscriber for an event it skips, so this wait is bounded).
    let _ = tokio::time::timeout(QUIET, parks.wait_for(|&count| count >= 2)).await;
    append_to(store, "account-2", vec![matched.clone()]).await; // 11
    let (_, got) = joined(waiter, name).await;
    assert_eq!(got.position, 11, "{name}");
    assert!(got.same_as(&matched), "{name}");

    // A filtered subscription from a checkpoint.
    let mut sub = subscribe(
        store,
        SubscribeRequest::new(Source::Category("account".into()), SubscribeFrom::After(2)),
    )
    .await;
    assert_eq!(
        positions(&next_events(&mut sub, 4, "category after 2").await),
        vec![5, 7, 9, 11]
    );
    assert_eq!(next_caught_up(&mut sub, "category after 2").await, Some(11));
}

/// A filtered subscription that passes events it does not deliver reports checkpoints: each
/// covers every match up to it, and resuming after one misses nothing and repeats nothing.
pub async fn subscribe_checkpoints<S: EventStore>(store: &S) {
    let wanted = || Source::EventTypes(vec!["Wanted".into()]);
    append_to(store, "cp-1", vec![ev("Wanted")]).await; // 0
    let mut sub = subscribe(store, SubscribeRequest::new(wanted(), SubscribeFrom::Start)).await;
    assert_eq!(
        next_event(&mut sub, "checkpoints: history").await.position,
        0
    );
    assert_eq!(next_caught_up(&mut sub, "checkpoints").await, Some(0));

    append_to(store, "cp-2", evs("Other", 3)).await; // 1, 2, 3
    let mut last = 0;
    while last < 3 {
        match next_sub(&mut sub, "checkpoints: after skipped events").await {
            SubscriptionItem::Checkpoint { position } => {
                assert!(
                    position > last && position <= 3,
                    "checkpoint at {position} after {last}, with the head at 3"
                );
                last = position;
            }
            other => panic!("checkpoints: expected a checkpoint, got {other:?}"),
        }
    }
    assert_quiet(&mut sub, "checkpoints: nothing matched").await;

    append_to(store, "cp-2", vec![ev("Other")]).await; // 4
    let wanted_event = ev("Wanted");
    append_to(store, "cp-1", vec![wanted_event.clone()]).await; // 5
    let got = next_event(&mut sub, "checkpoints: live match").await;
    assert_eq!(got.position, 5);
    assert!(got.same_as(&wanted_event));

    // A subscriber restarting from the checkpoint gets the later match only.
    let mut resumed = subscribe(
        store,
        SubscribeRequest::new(wanted(), SubscribeFrom::After(last)),
    )
    .await;
    assert_eq!(
        next_event(&mut resumed, "resumed from a checkpoint")
            .await
            .position,
        5
    );
    assert_eq!(
        next_caught_up(&mut resumed, "resumed from a checkpoint").await,
        Some(5)
    );
}

/// Tracks what a subscription delivered, checking order and the single caught-up marker.
#[derive(Default)]
struct Delivered {
    positions: Vec<u64>,
    caught_up: Option<Option<u64>>,
    events_before_marker: usize,
    checkpoint: Option<u64>,
}

impl Delivered {
    fn take(&mut self, item: SubscriptionItem, what: &str) {
        match item {
            SubscriptionItem::Event(e) => {
                if let Some(&last) = self.positions.last() {
                    assert!(
                        e.position > last,
                        "{what}: position {} delivered after {last} (duplicate or out of order)",
                        e.position
                    );
                }
                if let Some(marker) = self.caught_up {
                    assert!(
                        marker.is_none_or(|m| e.position > m),
                        "{what}: live event at {} is not after the caught-up position {marker:?}",
                        e.position
                    );
                }
                assert!(
                    self.checkpoint.is_none_or(|c| e.position > c),
                    "{what}: event at {} delivered after a checkpoint at {:?} that covered it",
                    e.position,
                    self.checkpoint
                );
                self.positions.push(e.position);
            }
            SubscriptionItem::Checkpoint { position } => {
                assert!(
                    self.caught_up.is_some(),
                    "{what}: a checkpoint at {position} before the caught-up marker"
                );
                assert!(
                    self.positions.last().is_none_or(|&p| position > p)
                        && self.checkpoint.is_none_or(|c| position > c),
                    "{what}: checkpoint at {position} does not advance (last event {:?}, last checkpoint {:?})",
                    self.positions.last(),
                    self.checkpoint
                );
                self.checkpoint = Some(position);
            }
            SubscriptionItem::CaughtUp { position } => {
                assert!(
                    self.caught_up.is_none(),
                    "{what}: a second caught-up marker"
                );
                let last = self.positions.last().copied();
                assert!(
                    last.is_none() || position >= last,
                    "{what}: caught up at {position:?} after delivering position {last:?}"
                );
                self.caught_up = Some(position);
                self.events_before_marker = self.positions.len();
            }
        }
    }
}

/// Appends from another task while subscribers catch up: every event arrives exactly once, in
/// order, across the switch from history to live.
pub async fn subscribe_catch_up_race<S: EventStore + 'static>(store: &Arc<S>) {
    const HISTORY: u64 = 200;
    const LIVE: u64 = 400;
    const PARITY: [&str; 2] = ["parity:even", "parity:odd"];
    let tagged = |i: u64| ev("Raced").with_tag(PARITY[(i % 2) as usize]);
    for batch in 0..HISTORY / 10 {
        let events = (batch * 10..batch * 10 + 10).map(tagged).collect();
        append_to(&**store, &format!("race-{}", batch % 4), events).await;
    }

    let writer = {
        let store = Arc::clone(store);
        tokio::spawn(async move {
            for i in HISTORY..HISTORY + LIVE {
                let request = AppendRequest::stream(
                    format!("race-{}", i % 4),
                    ExpectedRevision::Any,
                    vec![tagged(i)],
                );
                if let Err(e) = store.append(request).await {
                    panic!("concurrent append {i} failed: {e}");
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let mut all = subscribe(&**store, all_from(SubscribeFrom::Start)).await;
    let even_query = Source::Query(Query::item(QueryItem::tags(["parity:even"])));
    let mut even = subscribe(
        &**store,
        SubscribeRequest::new(even_query, SubscribeFrom::Start),
    )
    .await;

    let total = HISTORY + LIVE;
    let mut seen_all = Delivered::default();
    let mut seen_even = Delivered::default();
    while (seen_all.positions.len() as u64) < total || seen_all.caught_up.is_none() {
        seen_all.take(next_sub(&mut all, "race, all").await, "race, all");
        if (seen_even.positions.len() as u64) < total / 2 || seen_even.caught_up.is_none() {
            seen_even.take(next_sub(&mut even, "race, even").await, "race, even");
        }
        // Lets the writer run between items even on a single-threaded runtime.
        tokio::task::yield_now().await;
    }
    while (seen_even.positions.len() as u64) < total / 2 || seen_even.caught_up.is_none() {
        seen_even.take(next_sub(&mut even, "race, even").await, "race, even");
    }
    match tokio::time::timeout(WAIT, writer).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("the writer task failed: {e}"),
        Err(_) => panic!("the writer task did not finish within {WAIT:?}"),
    }

    assert_eq!(
        seen_all.positions,
        (0..total).collect::<Vec<_>>(),
        "the unfiltered subscription must deliver every position once"
    );
    let marker = seen_all.caught_up.flatten();
    assert!(
        marker >= Some(HISTORY - 1),
        "caught up at {marker:?}, before the history written before subscribing"
    );
    assert_eq!(
        seen_all.events_before_marker as u64,
        marker.map_or(0, |m| m + 1),
        "the history before the marker is every event up to the marker's position"
    );

    let log: Vec<RecordedEvent> = read_all(&**store).await;
    let evens: Vec<u64> = log
        .iter()
        .filter(|e| e.tags.iter().any(|t| t == "parity:even"))
        .map(|e| e.position)
        .collect();
    assert_eq!(evens.len() as u64, total / 2);
    assert_eq!(
        seen_even.positions, evens,
        "the filtered subscription must deliver every match once"
    );
    let even_marker = seen_even.caught_up.flatten();
    let matched_before: BTreeSet<u64> = evens
        .iter()
        .copied()
        .filter(|&p| even_marker.is_some_and(|m| p <= m))
        .collect();
    assert_eq!(
        seen_even.events_before_marker,
        matched_before.len(),
        "the filtered history is every match up to the marker's position"
    );
    assert_quiet(&mut all, "after the race").await;
    assert_quiet(&mut even, "after the race").await;
}
