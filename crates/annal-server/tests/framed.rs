//! The framed append protocol on the server's port: the Rust client's appends go over it,
//! pipelined on one connection; frames that break the protocol are refused with an error
//! that names the problem, and cost nothing but their own connection.

mod common;

use std::time::Duration;

use annal_client::Client;
use annal_core::{
    AppendRequest, Error, EventStore, EventStoreExt, ExpectedRevision, NewEvent, ReadRequest,
};
use annal_proto as pb;
use annal_wire::{self as wire, Header, Kind, HEADER_LEN};
use common::*;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

/// The metrics are the process's: the tests here run one at a time, so that one can count
/// what it caused.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `annal_requests_total` for these labels, as `/metrics` shows it now.
async fn requests(addr: std::net::SocketAddr, labels: &str) -> u64 {
    metric(addr, &format!("annal_requests_total{{{labels}}}")).await as u64
}

fn one(stream: &str, expected: ExpectedRevision) -> AppendRequest {
    AppendRequest::stream(
        stream,
        expected,
        vec![NewEvent::new("Noted", br#"{"n":1}"#.to_vec())],
    )
}

/// A raw connection that has sent the preface.
async fn raw(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(wire::PREFACE).await.unwrap();
    s
}

async fn send(s: &mut TcpStream, kind: u8, id: u32, payload: &[u8]) {
    let h = Header {
        len: payload.len() as u32,
        kind,
        id,
    };
    s.write_all(&h.encode()).await.unwrap();
    s.write_all(payload).await.unwrap();
}

/// The next frame, or `None` when the server closed the connection.
async fn frame(s: &mut TcpStream) -> Option<(Header, Vec<u8>)> {
    tokio::time::timeout(WAIT, async {
        let mut h = [0u8; HEADER_LEN];
        s.read_exact(&mut h).await.ok()?;
        let h = Header::parse(&h);
        let mut payload = vec![0u8; h.len as usize];
        s.read_exact(&mut payload).await.ok()?;
        Some((h, payload))
    })
    .await
    .expect("an answer or the end of the connection within the wait")
}

/// The error an Error frame carries, for the request id it names.
async fn error(s: &mut TcpStream) -> (u32, Error) {
    let (h, payload) = frame(s).await.expect("an Error frame");
    assert_eq!(h.kind, Kind::Error as u8, "{h:?}");
    let status = wire::decode_status(&payload).expect("a status");
    (h.id, pb::error_from_status(&status))
}

async fn hello(s: &mut TcpStream, token: &str) {
    send(s, Kind::Hello as u8, 0, token.as_bytes()).await;
    let (h, payload) = frame(s).await.expect("Ready");
    assert_eq!(
        (h.kind, payload.as_slice()),
        (Kind::Ready as u8, &wire::PREFACE[..])
    );
}

fn append_payload(stream: &str) -> Vec<u8> {
    pb::AppendRequest::from(one(stream, ExpectedRevision::Any)).encode_to_vec()
}

fn problem(e: &Error) -> String {
    match e {
        Error::InvalidArgument { field, problem } => format!("{field}: {problem}"),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_frames_are_refused_with_an_error_that_names_the_problem() {
    let _serial = SERIAL.lock().await;
    let s = start_with(|c| c.limits.max_append_bytes = 64 * 1024).await;
    let addr = s.addr();

    // An append before the Hello.
    let mut c = raw(addr).await;
    send(&mut c, Kind::Append as u8, 1, &append_payload("a")).await;
    let (id, e) = error(&mut c).await;
    assert_eq!(id, 1);
    assert!(problem(&e).contains("the first frame must be Hello"), "{e}");
    assert!(frame(&mut c).await.is_none(), "the connection is closed");

    // A payload that is no AppendRequest fails that request alone; the connection goes on.
    let mut c = raw(addr).await;
    hello(&mut c, "").await;
    send(&mut c, Kind::Append as u8, 7, &[0xff, 0xff, 0xff]).await;
    let (id, e) = error(&mut c).await;
    assert_eq!(id, 7);
    assert!(
        problem(&e).contains("does not hold an annal.v1.AppendRequest"),
        "{e}"
    );
    send(&mut c, Kind::Append as u8, 8, &append_payload("framed-1")).await;
    let (h, payload) = frame(&mut c).await.expect("Appended");
    assert_eq!((h.kind, h.id), (Kind::Appended as u8, 8));
    let r = pb::AppendResponse::decode(payload.as_slice()).unwrap();
    assert_eq!(r.first_position, 0);

    // An unknown kind ends the connection.
    send(&mut c, 42, 9, b"").await;
    let (id, e) = error(&mut c).await;
    assert_eq!(id, 9);
    assert!(problem(&e).contains("kind 42"), "{e}");
    assert!(frame(&mut c).await.is_none());

    // An append over the limit is read past, not kept, and refused alone.
    let mut c = raw(addr).await;
    hello(&mut c, "").await;
    let big = 2usize << 20;
    send(&mut c, Kind::Append as u8, 3, &vec![0u8; big]).await;
    let (id, e) = error(&mut c).await;
    assert_eq!(id, 3);
    let cut = 64 * 1024 + (1 << 20);
    assert!(
        matches!(e, Error::TooLarge { size, limit, .. } if size == big && limit == cut),
        "{e:?}"
    );
    // Request id 0 belongs to the connection: using it ends the connection.
    send(&mut c, Kind::Append as u8, 0, &append_payload("zero")).await;
    let (id, e) = error(&mut c).await;
    assert_eq!(id, 0);
    assert!(problem(&e).contains("request id 0 is reserved"), "{e}");
    assert!(frame(&mut c).await.is_none());

    // A connection cut inside a frame writes nothing.
    let mut c = raw(addr).await;
    hello(&mut c, "").await;
    let payload = append_payload("cut");
    let h = Header {
        len: payload.len() as u32,
        kind: Kind::Append as u8,
        id: 1,
    };
    c.write_all(&h.encode()).await.unwrap();
    c.write_all(&payload[..payload.len() / 2]).await.unwrap();
    drop(c);

    // Random bytes after the Hello: every connection ends with an error or is closed, none
    // takes the server down, and none writes anything.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for round in 0..64 {
        let mut garbage = Vec::new();
        for _ in 0..(round % 7 + 1) * 5 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            garbage.extend_from_slice(&x.to_le_bytes());
        }
        // Some rounds are Append frames of random content, so that decoding is tried too.
        if round % 2 == 0 {
            let len = (garbage.len() - HEADER_LEN) as u32;
            garbage[..HEADER_LEN].copy_from_slice(
                &Header {
                    len,
                    kind: Kind::Append as u8,
                    id: round,
                }
                .encode(),
            );
        }
        let mut c = raw(addr).await;
        hello(&mut c, "").await;
        c.write_all(&garbage).await.unwrap();
        c.shutdown().await.unwrap();
        while let Some((h, _)) = frame(&mut c).await {
            assert_eq!(h.kind, Kind::Error as u8, "round {round}: {h:?}");
        }
    }

    // Through all of it the server stays up, and only the one valid append was written.
    let client = s.client().await;
    client
        .append(one("framed-2", ExpectedRevision::NoStream))
        .await
        .unwrap();
    let events = client.read_to_vec(ReadRequest::all()).await.unwrap();
    let streams: Vec<&str> = events.iter().map(|e| e.stream_id.as_str()).collect();
    assert_eq!(streams, ["framed-1", "framed-2"]);
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_from_many_tasks_share_one_connection_and_are_counted() {
    const WIRE_OK: &str = r#"api="wire",status="2xx""#;
    const WIRE_REFUSED: &str = r#"api="wire",status="4xx""#;
    const GRPC_OK: &str = r#"api="grpc",status="2xx""#;
    let _serial = SERIAL.lock().await;
    // Eight in flight at most: the rest wait in TCP until answers make room.
    let s = start_with(|c| {
        c.limits.max_append_bytes = 64 * 1024;
        c.limits.max_streams_per_connection = 8;
    })
    .await;
    let mut before = [0; 3];
    for (b, labels) in before.iter_mut().zip([WIRE_OK, WIRE_REFUSED, GRPC_OK]) {
        *b = requests(s.addr(), labels).await;
    }
    let client = s.client().await;
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .append(one(&format!("p-{i}"), ExpectedRevision::NoStream))
                    .await
            })
        })
        .collect();
    let mut positions = Vec::new();
    for t in tasks {
        positions.push(t.await.unwrap().unwrap().first_position);
    }
    positions.sort_unstable();
    assert_eq!(positions, (0..200).collect::<Vec<u64>>());

    // Errors come back as the engine's, and the connection serves on after them.
    let e = client
        .append(one("p-0", ExpectedRevision::NoStream))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::WrongExpectedRevision { stream, actual: Some(0), .. } if stream == "p-0"),
        "{e:?}"
    );
    let big = AppendRequest::stream(
        "big",
        ExpectedRevision::Any,
        vec![NewEvent::new("Big", vec![b'x'; 200 * 1024])],
    );
    let e = client.append(big).await.unwrap_err();
    assert!(matches!(e, Error::TooLarge { .. }), "{e:?}");
    client
        .append(one("p-200", ExpectedRevision::NoStream))
        .await
        .unwrap();

    // The same appends through gRPC, when the client is told to.
    let grpc = Client::builder(s.url.clone())
        .framed(false)
        .connect()
        .await
        .unwrap();
    grpc.append(one("g-0", ExpectedRevision::NoStream))
        .await
        .unwrap();

    let counts = [WIRE_OK, WIRE_REFUSED, GRPC_OK];
    let mut after = [0; 3];
    for (a, labels) in after.iter_mut().zip(counts) {
        *a = requests(s.addr(), labels).await;
    }
    assert_eq!(
        after[0] - before[0],
        201,
        "appends answered over the framed protocol"
    );
    assert_eq!(after[1] - before[1], 2, "refused over the framed protocol");
    assert!(after[2] > before[2], "the gRPC append");
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reconnects_after_the_server_closes_its_connection() {
    let _serial = SERIAL.lock().await;
    let s = start().await;
    let client = s.client().await;
    client
        .append(one("r-1", ExpectedRevision::NoStream))
        .await
        .unwrap();
    // The server closes the connection by stopping; another takes its data and its port.
    let addr = s.addr();
    let dir = s._dir;
    s.server.shutdown().await.unwrap();
    let config = annal_server::Config::new(dir.path().join("data"), addr);
    let server = annal_server::Server::start(config).await.unwrap();
    let e = client.append(one("r-1", ExpectedRevision::Exact(0))).await;
    // The old connection is gone: the first append after the restart either finds that out
    // (Unavailable, nothing written) or already runs on a new connection.
    if let Err(e) = &e {
        assert!(matches!(e, Error::Unavailable(_)), "{e:?}");
    }
    let mut tries = 0;
    let r = loop {
        match client.append(one("r-2", ExpectedRevision::NoStream)).await {
            Ok(r) => break r,
            Err(Error::Unavailable(_)) if tries < 3 => tries += 1,
            Err(e) => panic!("{e:?}"),
        }
    };
    assert!(r.first_position >= 1);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_says_hello_is_let_go() {
    let _serial = SERIAL.lock().await;
    let hello = Duration::from_millis(300);
    let s = start_with(|c| c.limits.hello_timeout = hello).await;
    let mut c = raw(s.addr()).await;
    let started = std::time::Instant::now();
    let mut h = [0u8; HEADER_LEN];
    tokio::time::timeout(Duration::from_secs(20), c.read_exact(&mut h))
        .await
        .expect("the server speaks within its Hello timeout")
        .unwrap();
    let h = Header::parse(&h);
    assert_eq!((h.kind, h.id), (Kind::Error as u8, 0));
    let mut payload = vec![0u8; h.len as usize];
    c.read_exact(&mut payload).await.unwrap();
    let e = pb::error_from_status(&wire::decode_status(&payload).unwrap());
    assert!(
        matches!(&e, Error::Unavailable(m) if m.contains("no Hello within 300ms")),
        "{e:?}"
    );
    assert!(started.elapsed() >= hello);
    assert!(
        frame(&mut c).await.is_none(),
        "then the connection is closed"
    );
    s.server.shutdown().await.unwrap();
}

/// Events in three streams, interleaved, with a type each that alternates.
async fn fill_three(client: &Client) {
    for i in 0..10u32 {
        for (stream, upto) in [("acct-1", 10), ("acct-2", 7), ("other-1", 5)] {
            if i < upto {
                let ty = if i % 2 == 0 { "Even" } else { "Odd" };
                client
                    .append(AppendRequest::stream(
                        stream,
                        ExpectedRevision::Any,
                        vec![NewEvent::new(ty, format!("{{\"i\":{i}}}").into_bytes())],
                    ))
                    .await
                    .unwrap();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framed_reads_come_a_page_at_a_time_and_match_grpc_reads() {
    const WIRE_OK: &str = r#"api="wire",status="2xx""#;
    let _serial = SERIAL.lock().await;
    // Pages of three events, so that every read below takes several.
    let s = start_with(|c| c.limits.read_batch_events = 3).await;
    let framed = s.client().await;
    let grpc = Client::builder(s.url.clone())
        .framed(false)
        .connect()
        .await
        .unwrap();
    fill_three(&framed).await;
    use annal_core::AsOf;
    let reads = [
        ReadRequest::stream("acct-1"),
        ReadRequest::stream("acct-1").backward(),
        ReadRequest::stream("acct-1").from(2).limit(5),
        ReadRequest::stream("acct-1").backward().from(8).limit(4),
        ReadRequest::stream("acct-2").backward().from(1),
        ReadRequest::stream("nobody"),
        ReadRequest::all(),
        ReadRequest::all().backward(),
        ReadRequest::all().from(5).limit(7),
        ReadRequest::all().backward().limit(10),
        ReadRequest::all().limit(3),
        ReadRequest::all().as_of(AsOf::Position(10)),
        ReadRequest::category("acct"),
        ReadRequest::category("acct").backward().limit(8),
        ReadRequest::event_types(["Odd"]),
        ReadRequest::event_types(["Odd"]).backward().from(20),
    ];
    for request in reads {
        let before = requests(s.addr(), WIRE_OK).await;
        let by_pages = framed.read(request.clone()).await.unwrap();
        let by_grpc = grpc.read(request.clone()).await.unwrap();
        assert_eq!(by_pages.head(), by_grpc.head(), "{request:?}");
        let (by_pages, by_grpc) = (collect(by_pages).await, collect(by_grpc).await);
        let ids = |v: &[annal_core::RecordedEvent]| -> Vec<(u64, u64)> {
            v.iter().map(|e| (e.position, e.revision)).collect()
        };
        assert_eq!(ids(&by_pages), ids(&by_grpc), "{request:?}");
        assert_eq!(by_pages, by_grpc, "{request:?}");
        // One page for every three events, and one more when the last page was full.
        let pages = requests(s.addr(), WIRE_OK).await - before;
        let full = by_pages.len() as u64 / 3;
        assert!(
            pages == full || pages == full + 1,
            "{request:?}: {} events in {pages} pages",
            by_pages.len()
        );
        assert!(pages >= 1, "{request:?}");
    }

    // A forward read ends at the head of its first page: events appended while it is read
    // are not part of it.
    let mut read = framed.read(ReadRequest::all()).await.unwrap();
    let head = read.head().expect("a head");
    let first = annal_core::next_item(&mut read).await.unwrap().unwrap();
    assert_eq!(first.position, 0);
    for _ in 0..5 {
        framed
            .append(one("late-1", ExpectedRevision::Any))
            .await
            .unwrap();
    }
    let rest = collect(read).await;
    assert_eq!(rest.len() as u64, head, "positions 1 to the head, {head}");
    assert!(rest.iter().all(|e| e.position <= head));
    s.server.shutdown().await.unwrap();
}

async fn collect(mut read: annal_core::EventStream) -> Vec<annal_core::RecordedEvent> {
    let mut out = Vec::new();
    while let Some(e) = annal_core::next_item(&mut read).await {
        out.push(e.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_frames_too_large_or_malformed_are_refused_alone() {
    let _serial = SERIAL.lock().await;
    let s = start().await;
    s.client()
        .await
        .append(one("r-1", ExpectedRevision::NoStream))
        .await
        .unwrap();
    let mut c = raw(s.addr()).await;
    hello(&mut c, "").await;
    send(
        &mut c,
        Kind::Read as u8,
        4,
        &vec![0u8; wire::MAX_READ_REQUEST + 1],
    )
    .await;
    let (id, e) = error(&mut c).await;
    assert_eq!(id, 4);
    assert!(
        matches!(&e, Error::TooLarge { what, limit, .. } if what == "read request" && *limit == wire::MAX_READ_REQUEST),
        "{e:?}"
    );
    send(&mut c, Kind::Read as u8, 5, &[0xff, 0xff, 0xff]).await;
    let (id, e) = error(&mut c).await;
    assert_eq!(id, 5);
    assert!(
        problem(&e).contains("does not hold an annal.v1.ReadRequest"),
        "{e}"
    );
    // A read of no source names what is missing, as over gRPC.
    send(&mut c, Kind::Read as u8, 6, &[]).await;
    let (id, e) = error(&mut c).await;
    assert_eq!(id, 6);
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");
    // The connection goes on: a valid read is answered with its page.
    let request = pb::ReadRequest::from(ReadRequest::stream("r-1")).encode_to_vec();
    send(&mut c, Kind::Read as u8, 7, &request).await;
    let (h, payload) = frame(&mut c).await.expect("a Page");
    assert_eq!((h.kind, h.id), (Kind::Page as u8, 7));
    let page = wire::parse_page(&payload).expect("a page");
    assert_eq!((page.head, page.more), (Some(0), false));
    let events = pb::packed::decode(&annal_core::Bytes::copy_from_slice(page.packed)).unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].stream_id.as_str(), "r-1");
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_no_pages_is_let_go_and_stalls_nobody() {
    let _serial = SERIAL.lock().await;
    let write_timeout = Duration::from_secs(3);
    let s = start_with(|c| {
        c.limits.write_timeout = write_timeout;
        c.limits.max_answer_bytes = 8 << 20;
    })
    .await;
    let client = s.client().await;
    // About 4 MiB of events: a read of the whole log is 16 pages.
    for i in 0..64 {
        let events = (0..64)
            .map(|_| NewEvent::new("Big", vec![b'x'; 1000]))
            .collect();
        client
            .append(AppendRequest::stream(
                format!("big-{i}"),
                ExpectedRevision::Any,
                events,
            ))
            .await
            .unwrap();
    }
    // A client that asks for the whole log a hundred times and reads nothing.
    let mut c = raw(s.addr()).await;
    hello(&mut c, "").await;
    let request = pb::ReadRequest::from(ReadRequest::all()).encode_to_vec();
    let started = std::time::Instant::now();
    for id in 1..=100 {
        send(&mut c, Kind::Read as u8, id, &request).await;
    }
    // Meanwhile another client reads the whole log, page by page, and appends.
    for round in 0..3 {
        let all = client.read_to_vec(ReadRequest::all()).await.unwrap();
        assert_eq!(all.len(), 64 * 64 + round);
        client
            .append(one("meanwhile", ExpectedRevision::Any))
            .await
            .unwrap();
    }
    assert!(
        started.elapsed() < write_timeout,
        "the others were served while the silent client held its pages: {:?}",
        started.elapsed()
    );
    // The silent client is let go after the write timeout: it gets some of its pages, then
    // the connection ends.
    tokio::time::sleep(write_timeout * 2).await;
    let mut pages = 0;
    while let Some((h, _)) = frame(&mut c).await {
        assert_eq!(h.kind, Kind::Page as u8, "{h:?}");
        pages += 1;
    }
    assert!(pages < 100, "{pages} pages of 100 were sent");
    // And its pages gave their share of the answer budget back.
    let all = client.read_to_vec(ReadRequest::all()).await.unwrap();
    assert!(all.len() > 64 * 64);
    s.server.shutdown().await.unwrap();
}
