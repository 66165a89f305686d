//! Snapshots: kept beside the log, found by revision, deleted per stream, never events.

use super::util::*;
use crate::{
    EventStore, NewSnapshot, Snapshot, Source, SubscribeFrom, SubscribeRequest, Timestamp,
    SNAPSHOTS_PER_STREAM,
};

async fn put<S: EventStore>(store: &S, stream: &str, revision: u64, version: u32, data: &str) {
    let snapshot = NewSnapshot::new(stream, revision, version, data.as_bytes().to_vec());
    if let Err(e) = store.put_snapshot(snapshot).await {
        panic!("putting the snapshot of '{stream}' at revision {revision} failed: {e} ({e:?})");
    }
}

async fn get<S: EventStore>(
    store: &S,
    stream: &str,
    at_or_before: Option<u64>,
) -> Option<Snapshot> {
    match store.get_snapshot(stream, at_or_before).await {
        Ok(s) => s,
        Err(e) => panic!("getting the snapshot of '{stream}' at {at_or_before:?} failed: {e}"),
    }
}

/// The revision, schema version and data of a snapshot found.
async fn found<S: EventStore>(
    store: &S,
    stream: &str,
    at_or_before: Option<u64>,
) -> Option<(u64, u32, String)> {
    get(store, stream, at_or_before).await.map(|s| {
        assert_eq!(s.stream_id, stream, "a snapshot of another stream");
        (
            s.revision,
            s.schema_version,
            String::from_utf8_lossy(&s.data).into_owned(),
        )
    })
}

/// A snapshot is found by the highest revision at or before the one asked, replaced by a put
/// of the same revision, and gone for good once its stream's snapshots are deleted.
pub async fn snapshots_put_get_and_delete<S: EventStore>(store: &S) {
    assert_eq!(found(store, "snap-1", None).await, None, "no snapshot yet");
    append_to(store, "snap-1", evs("Counted", 10)).await;
    append_to(store, "snap-2", evs("Counted", 2)).await;
    let before = Timestamp::now();
    put(store, "snap-1", 3, 1, "three").await;
    put(store, "snap-1", 7, 1, "seven").await;
    put(store, "snap-1", 5, 2, "five").await;
    put(store, "snap-2", 1, 1, "other").await;
    assert_eq!(
        found(store, "snap-1", None).await,
        Some((7, 1, "seven".into()))
    );
    assert_eq!(
        found(store, "snap-1", Some(100)).await,
        Some((7, 1, "seven".into()))
    );
    assert_eq!(
        found(store, "snap-1", Some(6)).await,
        Some((5, 2, "five".into()))
    );
    assert_eq!(
        found(store, "snap-1", Some(5)).await,
        Some((5, 2, "five".into()))
    );
    assert_eq!(
        found(store, "snap-1", Some(4)).await,
        Some((3, 1, "three".into()))
    );
    assert_eq!(
        found(store, "snap-1", Some(2)).await,
        None,
        "nothing at or before 2"
    );
    let taken = get(store, "snap-1", None)
        .await
        .expect("a snapshot")
        .taken_at;
    let slack = 5_000_000; // clocks of a client and a server on one machine
    assert!(
        taken.as_micros() >= before.as_micros() - slack
            && taken.as_micros() <= Timestamp::now().as_micros() + slack,
        "taken_at {taken} is not about now"
    );

    put(store, "snap-1", 7, 3, "seven again").await;
    assert_eq!(
        found(store, "snap-1", None).await,
        Some((7, 3, "seven again".into())),
        "a put of the same revision replaces the snapshot"
    );
    put(store, "snap-1", 9, 1, "").await;
    assert_eq!(
        found(store, "snap-1", None).await,
        Some((9, 1, String::new())),
        "empty data"
    );

    let deleted = store.delete_snapshots("snap-1").await.expect("delete");
    assert_eq!(deleted, 4, "snap-1 had snapshots at 3, 5, 7 and 9");
    assert_eq!(found(store, "snap-1", None).await, None, "deleted");
    assert_eq!(found(store, "snap-1", Some(5)).await, None, "deleted");
    assert_eq!(store.delete_snapshots("snap-1").await.expect("delete"), 0);
    assert_eq!(
        store.delete_snapshots("snap-none").await.expect("delete"),
        0
    );
    assert_eq!(
        found(store, "snap-2", None).await,
        Some((1, 1, "other".into())),
        "another stream's snapshots stay"
    );

    // After a delete, new snapshots are kept again.
    put(store, "snap-1", 2, 1, "two").await;
    assert_eq!(
        found(store, "snap-1", None).await,
        Some((2, 1, "two".into()))
    );
}

/// A stream keeps the snapshots of its highest revisions, at most `SNAPSHOTS_PER_STREAM`.
pub async fn snapshots_kept_per_stream_are_bounded<S: EventStore>(store: &S) {
    let n = SNAPSHOTS_PER_STREAM as u64;
    append_to(store, "many-1", evs("Counted", n as usize + 3)).await;
    for r in 0..n + 3 {
        put(store, "many-1", r, 1, &format!("at {r}")).await;
    }
    // A put below every kept revision is dropped at once.
    put(store, "many-1", 0, 1, "late").await;
    assert_eq!(found(store, "many-1", None).await.map(|s| s.0), Some(n + 2));
    assert_eq!(
        found(store, "many-1", Some(2)).await,
        None,
        "the oldest three went"
    );
    assert_eq!(
        found(store, "many-1", Some(3)).await,
        Some((3, 1, "at 3".into()))
    );
    assert_eq!(store.delete_snapshots("many-1").await.expect("delete"), n);
}

/// A put names a stream that has reached the revision, with data within the limit; a bad one
/// is refused whole and keeps nothing.
pub async fn invalid_snapshots_are_refused<S: EventStore>(store: &S) {
    let missing = store
        .put_snapshot(NewSnapshot::new("gone-1", 0, 1, b"x".to_vec()))
        .await;
    assert!(
        matches!(
            expect_err(missing, "a snapshot of a stream with no event"),
            crate::Error::NotFound(_)
        ),
        "a stream with no event has no state to snapshot"
    );
    append_to(store, "bad-1", evs("Counted", 2)).await;
    let ahead = store
        .put_snapshot(NewSnapshot::new("bad-1", 2, 1, b"x".to_vec()))
        .await;
    assert_invalid(
        &expect_err(ahead, "a snapshot ahead of its stream"),
        "snapshot revision",
        "a snapshot ahead of its stream",
    );
    let unnamed = store
        .put_snapshot(NewSnapshot::new("", 0, 1, b"x".to_vec()))
        .await;
    assert_invalid(
        &expect_err(unnamed, "a snapshot of no stream"),
        "stream id",
        "a snapshot of no stream",
    );
    assert_invalid(
        &expect_err(store.get_snapshot("", None).await, "a get of no stream"),
        "stream id",
        "a get of no stream",
    );
    assert_invalid(
        &expect_err(store.delete_snapshots("").await, "a delete of no stream"),
        "stream id",
        "a delete of no stream",
    );
    assert_eq!(found(store, "bad-1", None).await, None, "nothing was kept");
}

/// Snapshots are no events: reads, subscriptions, the head and stream info do not change.
pub async fn snapshots_are_not_events<S: EventStore>(store: &S) {
    append_to(store, "quiet-1", evs("Counted", 3)).await;
    let mut sub = subscribe(
        store,
        SubscribeRequest::new(Source::All, SubscribeFrom::Start),
    )
    .await;
    assert_eq!(next_events(&mut sub, 3, "history").await.len(), 3);
    assert_eq!(next_caught_up(&mut sub, "after history").await, Some(2));
    let log = read_all(store).await;
    let info = store.stream_info("quiet-1").await.expect("stream_info");
    put(store, "quiet-1", 2, 1, "state").await;
    put(store, "quiet-1", 0, 1, "state").await;
    assert_log_unchanged(store, &log, "after putting snapshots").await;
    assert_eq!(
        store.stream_info("quiet-1").await.expect("stream_info"),
        info,
        "stream info is the same"
    );
    assert_quiet(&mut sub, "a snapshot is no event").await;
    store.delete_snapshots("quiet-1").await.expect("delete");
    assert_log_unchanged(store, &log, "after deleting snapshots").await;
    assert_quiet(&mut sub, "a deleted snapshot is no event").await;
    append_to(store, "quiet-1", evs("Counted", 1)).await;
    let live = next_events(&mut sub, 1, "the next event").await;
    assert_eq!(live[0].position, 3, "the next event follows with no gap");
}
