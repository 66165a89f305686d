//! Concurrent writers: optimistic concurrency races and parallel appends.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use tokio::sync::Barrier;

use super::util::*;
use crate::{
    AppendRequest, AppendResult, EventStore, ExpectedRevision, ListStreams, NewEvent, ReadRequest,
    Result,
};

async fn join<T: Send + 'static>(handle: tokio::task::JoinHandle<T>, what: &str) -> T {
    match tokio::time::timeout(WAIT, handle).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => panic!("{what}: task failed: {e}"),
        Err(_) => panic!("{what}: task did not finish within {WAIT:?}"),
    }
}

/// Tasks race to append to one stream with the same expected revision, round after round:
/// exactly one wins each round and the others get `WrongExpectedRevision`.
pub async fn concurrent_expected_revision_race<S: EventStore + 'static>(store: &Arc<S>) {
    const TASKS: usize = 8;
    const ROUNDS: u64 = 10;
    const STREAM: &str = "contended-1";
    let mut winners = Vec::new();
    for round in 0..ROUNDS {
        let expected = match round {
            0 => ExpectedRevision::NoStream,
            r => ExpectedRevision::Exact(r - 1),
        };
        let barrier = Arc::new(Barrier::new(TASKS));
        let handles: Vec<_> = (0..TASKS)
            .map(|task| {
                let store = Arc::clone(store);
                let barrier = Arc::clone(&barrier);
                let event = ev("Claimed").with_tag(format!("task:{task}"));
                tokio::spawn(async move {
                    barrier.wait().await;
                    let request = AppendRequest::stream(STREAM, expected, vec![event.clone()]);
                    let result: Result<AppendResult> = store.append(request).await;
                    (event, result)
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for h in handles {
            outcomes.push(join(h, "racing append").await);
        }
        let what = format!("round {round} ({expected})");
        let (won, lost): (Vec<_>, Vec<_>) = outcomes.into_iter().partition(|(_, r)| r.is_ok());
        assert_eq!(
            won.len(),
            1,
            "{what}: exactly one writer must win, got {}: {won:?}",
            won.len()
        );
        let (event, result) = won.into_iter().next().expect("one winner");
        let result = result.expect("the winner succeeded");
        assert_eq!(result.revision(), round, "{what}: winner's revision");
        for (_, r) in lost {
            let err = r.expect_err("a loser failed");
            assert_wrong_revision(&err, STREAM, expected, Some(round), &what);
        }
        winners.push(event);
    }
    let stream = read(store.as_ref(), ReadRequest::stream(STREAM)).await;
    assert_eq!(stream.len(), winners.len(), "one event per round");
    for (i, (stored, winner)) in stream.iter().zip(&winners).enumerate() {
        assert_eq!(stored.revision, i as u64);
        assert!(
            stored.same_as(winner),
            "round {i}: stored event is not the winner's"
        );
    }
    assert_eq!(head(store.as_ref()).await, Some(ROUNDS - 1));
}

/// Many tasks append to their own streams at once: every event lands once, positions stay
/// gapless, each stream keeps its order and each append's events stay together.
pub async fn concurrent_writers<S: EventStore + 'static>(store: &Arc<S>) {
    const WRITERS: usize = 64;
    const APPENDS: u64 = 10;
    const BATCH: u64 = 2;
    let handles: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = Arc::clone(store);
            tokio::spawn(async move {
                let stream = format!("writer-{w}");
                let mut written: Vec<(Vec<NewEvent>, AppendResult)> = Vec::new();
                for i in 0..APPENDS {
                    let expected = match i {
                        0 => ExpectedRevision::NoStream,
                        i => ExpectedRevision::Exact(i * BATCH - 1),
                    };
                    let events: Vec<NewEvent> = (0..BATCH)
                        .map(|_| ev("Written").with_tag(format!("writer:{w}")))
                        .collect();
                    let request = AppendRequest::stream(&stream, expected, events.clone());
                    match store.append(request).await {
                        Ok(r) => written.push((events, r)),
                        Err(e) => panic!("writer {w}, append {i}: {e}"),
                    }
                    tokio::task::yield_now().await;
                }
                (stream, written)
            })
        })
        .collect();
    let mut by_writer = Vec::new();
    for h in handles {
        by_writer.push(join(h, "concurrent writer").await);
    }

    let store = store.as_ref();
    let total = WRITERS as u64 * APPENDS * BATCH;
    let log = read_all(store).await;
    assert_eq!(
        positions(&log),
        (0..total).collect::<Vec<_>>(),
        "positions must be gapless"
    );
    assert_eq!(head(store).await, Some(total - 1));
    assert!(
        log.windows(2).all(|w| w[0].recorded_at <= w[1].recorded_at),
        "recorded_at decreases along the log"
    );
    let ids: HashSet<_> = log.iter().map(|e| e.id).collect();
    assert_eq!(ids.len() as u64, total, "duplicate event ids in the log");

    let mut claimed = BTreeMap::new();
    for (stream, written) in &by_writer {
        let stored = read(store, ReadRequest::stream(stream.as_str())).await;
        assert_eq!(
            revisions(&stored),
            (0..APPENDS * BATCH).collect::<Vec<_>>(),
            "{stream}: revisions"
        );
        let sent: Vec<&NewEvent> = written.iter().flat_map(|(events, _)| events).collect();
        for (s, e) in stored.iter().zip(&sent) {
            assert!(s.same_as(e), "{stream}: events out of order or altered");
        }
        for (events, result) in written {
            assert_eq!(
                result.last_position - result.first_position + 1,
                events.len() as u64,
                "{stream}: one append's events must be contiguous"
            );
            for (offset, e) in events.iter().enumerate() {
                let p = result.first_position + offset as u64;
                let at = &log[p as usize];
                assert!(at.same_as(e), "{stream}: the result's positions are wrong");
                assert_eq!(at.recorded_at, result.recorded_at);
                assert!(
                    claimed.insert(p, stream.clone()).is_none(),
                    "position {p} twice"
                );
            }
        }
    }
    assert_eq!(claimed.len() as u64, total);

    let listed = store
        .list_streams(ListStreams {
            prefix: Some("writer-".into()),
            ..ListStreams::default()
        })
        .await
        .expect("list_streams");
    assert_eq!(listed.len(), WRITERS);
    assert!(listed.iter().all(|s| s.count == APPENDS * BATCH));
}
