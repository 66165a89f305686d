//! Helpers shared by the checks.

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use crate::{
    next_item, AppendRequest, AppendResult, Error, EventStore, EventStoreExt, ExpectedRevision,
    NewEvent, ReadRequest, RecordedEvent, Result, SubscribeRequest, SubscriptionItem,
    SubscriptionStream,
};

/// How long any wait on a subscription may take before the check fails.
pub(super) const WAIT: Duration = Duration::from_secs(10);

/// How long a subscription is watched to make sure nothing more arrives.
pub(super) const QUIET: Duration = Duration::from_millis(50);

/// A JSON event of this type with a small body.
pub(super) fn ev(event_type: &str) -> NewEvent {
    NewEvent::new(
        event_type,
        format!("{{\"type\":\"{event_type}\"}}").into_bytes(),
    )
}

/// `n` events of this type.
pub(super) fn evs(event_type: &str, n: usize) -> Vec<NewEvent> {
    (0..n).map(|_| ev(event_type)).collect()
}

/// A short description of a request for failure messages (events' data can be large).
pub(super) fn summary(request: &AppendRequest) -> String {
    let streams: Vec<String> = request
        .streams
        .iter()
        .map(|s| {
            let types: Vec<&str> = s.events.iter().map(|e| e.event_type.as_str()).collect();
            format!("'{}' ({}) {types:?}", s.stream_id, s.expected)
        })
        .collect();
    format!("streams {streams:?}, condition {:?}", request.condition)
}

pub(super) async fn append_ok<S: EventStore>(store: &S, request: AppendRequest) -> AppendResult {
    let shown = summary(&request);
    match store.append(request).await {
        Ok(r) => r,
        Err(e) => panic!("append failed: {e} ({e:?})\nrequest: {shown}"),
    }
}

/// Appends events to one stream with no revision check.
pub(super) async fn append_to<S: EventStore>(
    store: &S,
    stream: &str,
    events: Vec<NewEvent>,
) -> AppendResult {
    append_ok(
        store,
        AppendRequest::stream(stream, ExpectedRevision::Any, events),
    )
    .await
}

/// Sends an append that must fail, and returns its error.
pub(super) async fn append_err<S: EventStore>(store: &S, request: AppendRequest) -> Error {
    let shown = summary(&request);
    match store.append(request).await {
        Ok(r) => panic!("append should have failed but returned {r:?}\nrequest: {shown}"),
        Err(e) => e,
    }
}

pub(super) fn expect_err<T: Debug>(result: Result<T>, what: &str) -> Error {
    match result {
        Ok(v) => panic!("{what}: should have failed but returned {v:?}"),
        Err(e) => e,
    }
}

pub(super) async fn read<S: EventStore>(store: &S, request: ReadRequest) -> Vec<RecordedEvent> {
    let shown = format!("{request:?}");
    match store.read_to_vec(request).await {
        Ok(events) => events,
        Err(e) => panic!("read failed: {e} ({e:?})\nrequest: {shown}"),
    }
}

pub(super) async fn read_all<S: EventStore>(store: &S) -> Vec<RecordedEvent> {
    read(store, ReadRequest::all()).await
}

pub(super) async fn head<S: EventStore>(store: &S) -> Option<u64> {
    store.head().await.expect("head failed")
}

pub(super) fn positions(events: &[RecordedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.position).collect()
}

pub(super) fn revisions(events: &[RecordedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.revision).collect()
}

/// Checks that the log is exactly what it was (same head, same events).
pub(super) async fn assert_log_unchanged<S: EventStore>(
    store: &S,
    before: &[RecordedEvent],
    what: &str,
) {
    let after = read_all(store).await;
    assert_eq!(
        positions(&after),
        positions(before),
        "{what}: the log changed although the append failed"
    );
    assert_eq!(after, before, "{what}: the log changed");
    let expected_head = before.last().map(|e| e.position);
    assert_eq!(
        head(store).await,
        expected_head,
        "{what}: head changed although the append failed"
    );
}

/// Checks an `InvalidArgument` naming `field`.
pub(super) fn assert_invalid(err: &Error, field: &str, what: &str) {
    match err {
        Error::InvalidArgument { field: f, problem } => {
            assert_eq!(f, field, "{what}: wrong field in {err:?}");
            assert!(!problem.is_empty(), "{what}: empty problem text");
        }
        other => panic!("{what}: expected InvalidArgument for '{field}', got {other:?}"),
    }
}

/// Checks a `WrongExpectedRevision` with exactly these fields.
pub(super) fn assert_wrong_revision(
    err: &Error,
    stream: &str,
    expected: ExpectedRevision,
    actual: Option<u64>,
    what: &str,
) {
    let want = Error::WrongExpectedRevision {
        stream: stream.to_string(),
        expected,
        actual,
    };
    assert_eq!(err, &want, "{what}");
}

/// Checks an `EventIdConflict` about one of the `candidates` (event id, its stored stream and
/// position): when several reused ids are wrong, a backend may name any of them.
pub(super) fn assert_id_conflict(err: &Error, candidates: &[&RecordedEvent], what: &str) {
    match err {
        Error::EventIdConflict {
            event_id,
            stream,
            position,
            problem,
        } => {
            let Some(stored) = candidates.iter().find(|e| e.id == *event_id) else {
                panic!("{what}: the conflict names an unexpected event id: {err:?}");
            };
            assert_eq!(stream, &stored.stream_id, "{what}: wrong stream in {err:?}");
            assert_eq!(
                *position, stored.position,
                "{what}: wrong position in {err:?}"
            );
            assert!(!problem.is_empty(), "{what}: empty problem text");
        }
        other => panic!("{what}: expected EventIdConflict, got {other:?}"),
    }
}

pub(super) async fn subscribe<S: EventStore>(
    store: &S,
    request: SubscribeRequest,
) -> SubscriptionStream {
    let shown = format!("{request:?}");
    match tokio::time::timeout(WAIT, store.subscribe(request)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => panic!("subscribe failed: {e} ({e:?})\nrequest: {shown}"),
        Err(_) => panic!("subscribe did not return within {WAIT:?}\nrequest: {shown}"),
    }
}

/// Runs `fut` for at most [`WAIT`]; `None` when it did not finish.
///
/// Unlike `tokio::time::timeout`, this does not poll `fut` once more when the time is up, so a
/// stream that has an item but never wakes its task is caught rather than rescued by the timer.
pub(super) async fn within<F: Future>(fut: F) -> Option<F::Output> {
    tokio::select! {
        biased;
        () = tokio::time::sleep(WAIT) => None,
        out = fut => Some(out),
    }
}

/// The next item of a subscription, failing after [`WAIT`].
pub(super) async fn next_sub(sub: &mut SubscriptionStream, what: &str) -> SubscriptionItem {
    match within(next_item(sub)).await {
        Some(Some(Ok(item))) => item,
        Some(Some(Err(e))) => panic!("{what}: the subscription failed: {e} ({e:?})"),
        Some(None) => panic!("{what}: the subscription ended"),
        None => {
            panic!("{what}: no subscription item within {WAIT:?} (or its task was never woken)")
        }
    }
}

/// The next item that is not a checkpoint.
pub(super) async fn next_not_checkpoint(
    sub: &mut SubscriptionStream,
    what: &str,
) -> SubscriptionItem {
    loop {
        match next_sub(sub, what).await {
            SubscriptionItem::Checkpoint { .. } => continue,
            item => return item,
        }
    }
}

/// The next item other than a checkpoint, which must be an event.
pub(super) async fn next_event(sub: &mut SubscriptionStream, what: &str) -> RecordedEvent {
    match next_not_checkpoint(sub, what).await {
        SubscriptionItem::Event(e) => e,
        other => panic!("{what}: expected an event, got {other:?}"),
    }
}

/// The next `n` items, which must all be events.
pub(super) async fn next_events(
    sub: &mut SubscriptionStream,
    n: usize,
    what: &str,
) -> Vec<RecordedEvent> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(next_event(sub, what).await);
    }
    out
}

/// The next item other than a checkpoint, which must be the caught-up marker; returns its
/// position.
pub(super) async fn next_caught_up(sub: &mut SubscriptionStream, what: &str) -> Option<u64> {
    match next_not_checkpoint(sub, what).await {
        SubscriptionItem::CaughtUp { position } => position,
        SubscriptionItem::Event(e) => panic!(
            "{what}: expected the caught-up marker, got the event at position {} ({e:?})",
            e.position
        ),
        SubscriptionItem::Checkpoint { .. } => unreachable!("checkpoints are skipped"),
    }
}

/// Checks that no event or marker arrives for a short while (checkpoints may).
pub(super) async fn assert_quiet(sub: &mut SubscriptionStream, what: &str) {
    let quiet = tokio::time::sleep(QUIET);
    tokio::pin!(quiet);
    loop {
        tokio::select! {
            () = &mut quiet => return,
            item = next_item(sub) => match item {
                Some(Ok(SubscriptionItem::Checkpoint { .. })) => continue,
                other => panic!("{what}: expected nothing more, got {other:?}"),
            },
        }
    }
}

/// Waits until the clock has moved on by a millisecond, so that the next append gets a later
/// timestamp than the last (the stores of the tests share this machine's clock). Yields
/// rather than sleeps: it waits on the clock itself.
pub(super) async fn tick() {
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_millis(1) {
        tokio::task::yield_now().await;
    }
}
