//! Events read and kept keep about their own size of memory alive, not the records or read
//! buffers they were decoded from.

use annal_core::{
    AppendRequest, ExpectedRevision, NewEvent, ReadRequest, RecordedEvent, StreamAppend,
};
use annal_engine::Store;

/// The memory that each event's data keeps alive once nothing else holds it, as far as it
/// shows: the rest of the buffer its data starts in (so the events checked here come
/// before most of their record).
fn kept_memory(events: Vec<RecordedEvent>) -> Vec<usize> {
    events
        .into_iter()
        .map(|e| match e.data.try_into_mut() {
            Ok(only) => only.capacity(),
            Err(_) => panic!("another event shares this one's buffer"),
        })
        .collect()
}

fn read(store: &Store, request: ReadRequest) -> Vec<RecordedEvent> {
    store
        .read_iter(request)
        .unwrap()
        .collect::<annal_core::Result<Vec<_>>>()
        .unwrap()
}

/// A read, made from a stream's number and one or two positions.
type Request<N> = Box<dyn Fn(N, u64, u64) -> ReadRequest>;

#[test]
fn kept_events_do_not_keep_their_records_or_read_buffers() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();

    // Records of two streams: one event of 16 bytes, then one of 1 MiB.
    const RECORDS: u64 = 6;
    let mut small_at = Vec::new();
    for i in 0..RECORDS {
        let r = store
            .append_blocking(AppendRequest {
                streams: vec![
                    StreamAppend::new(
                        format!("small-{i}"),
                        ExpectedRevision::Any,
                        vec![NewEvent::new("Small", vec![1u8; 16])],
                    ),
                    StreamAppend::new(
                        format!("big-{i}"),
                        ExpectedRevision::Any,
                        vec![NewEvent::new("Big", vec![7u8; 1 << 20])],
                    ),
                ],
                condition: None,
            })
            .unwrap();
        small_at.push(r.streams[0].first_position);
    }

    // Each kind of read that picks the small event out of its record.
    let reads: Vec<(&str, Request<u64>)> = vec![
        (
            "by stream",
            Box::new(|i, _, _| ReadRequest::stream(format!("small-{i}"))),
        ),
        (
            "by type",
            Box::new(|_, at, _| ReadRequest::event_types(["Small"]).from(at).limit(1)),
        ),
        (
            "all, forward",
            Box::new(|_, at, _| ReadRequest::all().from(at).limit(1)),
        ),
        (
            "all, backward",
            Box::new(|_, at, _| ReadRequest::all().backward().from(at).limit(1)),
        ),
    ];
    for (what, request) in &reads {
        for i in 0..RECORDS {
            let events = read(&store, request(i, small_at[i as usize], 0));
            assert_eq!(events.len(), 1, "{what}");
            assert_eq!(events[0].data.len(), 16, "{what}");
            assert_eq!(kept_memory(events), [16], "{what}");
        }
    }

    // A whole read keeps what it read: the events of a record share it.
    let all = read(&store, ReadRequest::all());
    assert_eq!(all.len() as u64, 2 * RECORDS);
    let (small, big) = (&all[0].data, &all[1].data);
    let apart = big.as_ptr() as usize - small.as_ptr() as usize;
    assert!(
        (16..4096).contains(&apart),
        "the second event's data lies {apart} bytes after the first's"
    );
    drop(all);

    // Reads limited to one event of records of a thousand: the one event costs its size.
    let mut spans = Vec::new();
    for i in 0..4 {
        let r = store
            .append_blocking(AppendRequest::stream(
                format!("many-{i}"),
                ExpectedRevision::Any,
                (0..1000)
                    .map(|_| NewEvent::new("Many", vec![3u8; 1 << 10]))
                    .collect(),
            ))
            .unwrap();
        spans.push((r.first_position, r.last_position));
    }
    let limited: Vec<(&str, Request<usize>)> = vec![
        (
            "all, forward",
            Box::new(|_, first, _| ReadRequest::all().from(first).limit(1)),
        ),
        (
            "all, backward",
            Box::new(|_, first, _| ReadRequest::all().backward().from(first + 1).limit(1)),
        ),
        (
            "by stream",
            Box::new(|i, _, _| ReadRequest::stream(format!("many-{i}")).limit(1)),
        ),
        (
            "by stream, backward",
            Box::new(|i, _, _| {
                ReadRequest::stream(format!("many-{i}"))
                    .backward()
                    .from(1)
                    .limit(1)
            }),
        ),
    ];
    for (what, request) in &limited {
        for (i, &(first, last)) in spans.iter().enumerate() {
            let events = read(&store, request(i, first, last));
            assert_eq!(kept_memory(events), [1 << 10], "{what}");
        }
    }

    // Small records read one at a time from new readers, as a subscription that keeps up
    // does: each kept event costs its own size, not a read buffer (16 KiB at first).
    let mut first = None;
    for _ in 0..20 {
        let r = store
            .append_blocking(AppendRequest::stream(
                "tail",
                ExpectedRevision::Any,
                vec![NewEvent::new("Tick", vec![2u8; 16])],
            ))
            .unwrap();
        first.get_or_insert(r.first_position);
    }
    let first = first.unwrap();
    for at in first..first + 20 {
        let events = read(&store, ReadRequest::all().from(at).limit(1));
        assert_eq!(kept_memory(events), [16], "position {at}");
    }
    store.close().unwrap();
}

/// Once the store has answered an append it keeps nothing of the request, even when no other
/// append follows: the memory of a flood of large appends goes back when the flood is over.
#[tokio::test]
async fn an_answered_append_keeps_nothing_of_its_request() {
    use annal_core::EventStore;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let data = annal_core::Bytes::from(vec![b'x'; 1 << 20]);
    let mut mine = data.clone();
    let request =
        AppendRequest::stream("s", ExpectedRevision::Any, vec![NewEvent::new("Big", data)]);
    store.append(request).await.unwrap();
    // Ours is the only reference left once the store lets go of the request.
    let started = std::time::Instant::now();
    loop {
        match mine.try_into_mut() {
            Ok(_) => break,
            Err(back) => mine = back,
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "the store still holds the data of an append it has answered"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}
