//! What the store tells about itself: stream info, listings, `position_at` and `head`.

use super::util::*;
use crate::{
    AppendRequest, CategoryInfo, EventStore, ExpectedRevision, ListCategories, ListStreams,
    StreamInfo, Timestamp,
};

/// `stream_info` reports revision, positions, count and times; `None` for a missing stream.
pub async fn stream_info<S: EventStore>(store: &S) {
    assert_eq!(
        store.stream_info("info-1").await.expect("stream_info"),
        None
    );
    let r1 = append_to(store, "info-1", evs("A", 2)).await; // 0, 1
    append_to(store, "other-1", evs("B", 1)).await; // 2
    tick().await;
    let r3 = append_to(store, "info-1", evs("C", 3)).await; // 3..=5
    let info = store
        .stream_info("info-1")
        .await
        .expect("stream_info")
        .expect("info-1 exists");
    assert_eq!(
        info,
        StreamInfo {
            stream_id: "info-1".to_string(),
            revision: 4,
            first_position: 0,
            last_position: 5,
            count: 5,
            created_at: r1.recorded_at,
            last_written_at: r3.recorded_at,
        }
    );
    assert!(info.created_at <= info.last_written_at);
    let other = store
        .stream_info("other-1")
        .await
        .expect("stream_info")
        .expect("other-1 exists");
    assert_eq!(
        (
            other.revision,
            other.first_position,
            other.last_position,
            other.count
        ),
        (0, 2, 2, 1)
    );
    assert_eq!(other.created_at, other.last_written_at);
    assert_eq!(
        store.stream_info("info").await.expect("stream_info"),
        None,
        "a prefix of a stream id is not the stream"
    );
}

fn ids(page: &[StreamInfo]) -> Vec<&str> {
    page.iter().map(|s| s.stream_id.as_str()).collect()
}

/// `list_streams` pages through streams in id order, with a prefix, `after` and `limit`.
pub async fn list_streams<S: EventStore>(store: &S) {
    let list = |prefix: Option<&str>, after: Option<&str>, limit: usize| ListStreams {
        prefix: prefix.map(String::from),
        after: after.map(String::from),
        limit,
    };
    assert!(store
        .list_streams(list(None, None, 0))
        .await
        .expect("list_streams")
        .is_empty());
    for (stream, n) in [
        ("b-2", 1),
        ("c", 2),
        ("a-1", 1),
        ("b-1", 3),
        ("b-3", 1),
        ("a-2", 1),
        ("b-2", 1),
    ] {
        append_to(store, stream, evs("E", n)).await;
    }
    let page = |l: ListStreams| async move { store.list_streams(l).await.expect("list_streams") };

    let everything = page(list(None, None, 0)).await;
    assert_eq!(
        ids(&everything),
        vec!["a-1", "a-2", "b-1", "b-2", "b-3", "c"]
    );
    for info in &everything {
        let single = store
            .stream_info(&info.stream_id)
            .await
            .expect("stream_info");
        assert_eq!(
            single.as_ref(),
            Some(info),
            "list_streams and stream_info disagree"
        );
    }
    let b2 = &everything[3];
    assert_eq!((b2.revision, b2.count, b2.first_position), (1, 2, 0));

    assert_eq!(ids(&page(list(None, None, 2)).await), vec!["a-1", "a-2"]);
    assert_eq!(
        ids(&page(list(None, Some("a-2"), 2)).await),
        vec!["b-1", "b-2"]
    );
    assert_eq!(
        ids(&page(list(None, Some("b-2"), 2)).await),
        vec!["b-3", "c"]
    );
    assert!(page(list(None, Some("c"), 2)).await.is_empty());
    assert_eq!(
        ids(&page(list(None, Some("b-15"), 0)).await),
        vec!["b-2", "b-3", "c"],
        "after need not name an existing stream"
    );

    assert_eq!(
        ids(&page(list(Some("b-"), None, 0)).await),
        vec!["b-1", "b-2", "b-3"]
    );
    assert_eq!(
        ids(&page(list(Some("b-"), None, 2)).await),
        vec!["b-1", "b-2"]
    );
    assert_eq!(
        ids(&page(list(Some("b-"), Some("b-2"), 2)).await),
        vec!["b-3"]
    );
    assert!(page(list(Some("b-"), Some("b-3"), 2)).await.is_empty());
    assert_eq!(ids(&page(list(Some("c"), None, 0)).await), vec!["c"]);
    assert!(page(list(Some("d"), None, 0)).await.is_empty());

    // Paging to the end visits every stream once.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let p = page(list(None, after.as_deref(), 4)).await;
        if p.is_empty() {
            break;
        }
        assert!(p.len() <= 4, "page longer than the limit");
        after = p.last().map(|s| s.stream_id.clone());
        seen.extend(p.into_iter().map(|s| s.stream_id));
    }
    assert_eq!(seen, ids(&everything));
}

/// `list_categories` counts streams and events per category, in name order.
pub async fn list_categories<S: EventStore>(store: &S) {
    let list = |after: Option<&str>, limit: usize| ListCategories {
        after: after.map(String::from),
        limit,
    };
    assert!(store
        .list_categories(list(None, 0))
        .await
        .expect("list_categories")
        .is_empty());
    append_to(store, "order-1", evs("O", 2)).await;
    append_to(store, "account-1", evs("A", 2)).await;
    append_ok(
        store,
        AppendRequest::stream("account-2", ExpectedRevision::Any, evs("A", 1)).and(
            crate::StreamAppend::new("zeta", ExpectedRevision::Any, evs("Z", 1)),
        ),
    )
    .await;
    append_to(store, "order-1", evs("O", 1)).await;
    let cat = |category: &str, stream_count: u64, event_count: u64| CategoryInfo {
        category: category.to_string(),
        stream_count,
        event_count,
    };
    let page =
        |l: ListCategories| async move { store.list_categories(l).await.expect("list_categories") };
    assert_eq!(
        page(list(None, 0)).await,
        vec![cat("account", 2, 3), cat("order", 1, 3), cat("zeta", 1, 1)]
    );
    assert_eq!(page(list(None, 1)).await, vec![cat("account", 2, 3)]);
    assert_eq!(
        page(list(Some("account"), 1)).await,
        vec![cat("order", 1, 3)]
    );
    assert_eq!(
        page(list(Some("b"), 0)).await,
        vec![cat("order", 1, 3), cat("zeta", 1, 1)]
    );
    assert!(page(list(Some("zeta"), 0)).await.is_empty());
}

/// `position_at` is the head of the log at an instant.
pub async fn position_at<S: EventStore>(store: &S) {
    let at = |t: Timestamp| async move { store.position_at(t).await.expect("position_at") };
    assert_eq!(at(Timestamp::now()).await, None, "empty store");
    let r1 = append_to(store, "pa-1", evs("A", 2)).await; // 0, 1
    tick().await;
    let r2 = append_to(store, "pa-2", evs("B", 2)).await; // 2, 3
    tick().await;
    let r3 = append_to(store, "pa-1", evs("C", 1)).await; // 4
    assert!(r1.recorded_at < r2.recorded_at && r2.recorded_at < r3.recorded_at);
    let before = |t: Timestamp| Timestamp(t.as_micros() - 1);

    assert_eq!(at(before(r1.recorded_at)).await, None);
    assert_eq!(at(Timestamp(0)).await, None);
    assert_eq!(
        at(r1.recorded_at).await,
        Some(1),
        "last position of the instant"
    );
    assert_eq!(at(before(r2.recorded_at)).await, Some(1));
    assert_eq!(at(r2.recorded_at).await, Some(3));
    assert_eq!(at(r3.recorded_at).await, Some(4));
    assert_eq!(
        at(Timestamp(r3.recorded_at.as_micros() + 3_600_000_000)).await,
        Some(4)
    );
}

/// `head` is the last position, `None` on an empty store, unchanged by failed appends.
pub async fn head_tracks_the_log<S: EventStore>(store: &S) {
    assert_eq!(head(store).await, None);
    assert!(read_all(store).await.is_empty());
    append_to(store, "h-1", evs("A", 3)).await;
    assert_eq!(head(store).await, Some(2));
    let err = append_err(
        store,
        AppendRequest::stream("h-1", ExpectedRevision::NoStream, evs("A", 2)),
    )
    .await;
    assert!(err.is_conflict(), "{err:?}");
    assert_eq!(head(store).await, Some(2));
    let r = append_to(store, "h-2", evs("B", 2)).await;
    assert_eq!(head(store).await, Some(r.last_position));
    assert_eq!(r.last_position, 4);
}
