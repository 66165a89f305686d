//! Clients that hold what they can and send nothing, or send too slowly: each test plays one
//! attack against a server with its default settings (timeouts shortened where the test
//! waits for them) and asserts the bound the server keeps meanwhile.

mod common;

use std::time::{Duration, Instant};

use annal_core::{AppendRequest, EventStore, ExpectedRevision, NewEvent};
use annal_wire::{self as wire, Header, Kind, HEADER_LEN};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

/// The metrics and the CPU time are the process's: the tests here run one at a time, so
/// that one can count what it caused.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits until `/metrics` shows at least `n` append bodies being received.
async fn receiving_at_least(addr: std::net::SocketAddr, n: f64) {
    tokio::time::timeout(WAIT, async {
        while metric(addr, "annal_append_bodies_receiving").await < n {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the attackers' bodies are being received");
}

/// An HTTP/1.1 request head sent on a new connection; the body is the caller's to send.
async fn head(addr: std::net::SocketAddr, path: &str, headers: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-type: application/json\r\n{headers}\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s
}

/// What the server sent before closing, or within `within`.
async fn answer(s: &mut TcpStream, within: Duration) -> String {
    let mut got = Vec::new();
    let _ = tokio::time::timeout(within, s.read_to_end(&mut got)).await;
    String::from_utf8_lossy(&got).into_owned()
}

/// A framed connection that has said Hello and been answered.
async fn framed(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut out = wire::PREFACE.to_vec();
    wire::put_frame(&mut out, Kind::Hello, 1, b"");
    s.write_all(&out).await.unwrap();
    let mut h = [0u8; HEADER_LEN];
    s.read_exact(&mut h).await.unwrap();
    let h = Header::parse(&h);
    assert_eq!(h.kind, Kind::Ready as u8, "{h:?}");
    let mut payload = vec![0u8; h.len as usize];
    s.read_exact(&mut payload).await.unwrap();
    s
}

/// The header of an Append frame of `len` bytes, with no payload after it.
async fn append_header(s: &mut TcpStream, id: u32, len: u32) {
    let h = Header {
        len,
        kind: Kind::Append as u8,
        id,
    };
    s.write_all(&h.encode()).await.unwrap();
}

fn one(stream: &str) -> AppendRequest {
    AppendRequest::stream(
        stream,
        ExpectedRevision::Any,
        vec![NewEvent::new("Noted", br#"{"n":1}"#.to_vec())],
    )
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_bodies_that_never_arrive_hold_back_no_other_append() {
    let _serial = SERIAL.lock().await;
    let s = start().await;
    let addr = s.addr();
    let limits = annal_server::Limits::default();
    let http_limit = 2 * limits.max_append_bytes + (1 << 20);
    let framed_limit = limits.max_append_bytes + (1 << 20);

    // A declared length over the limit is refused before any of it is read.
    let mut huge = head(addr, "/v1/append", "content-length: 10000000000\r\n").await;
    let refused = answer(&mut huge, WAIT).await;
    assert!(refused.starts_with("HTTP/1.1 413"), "{refused}");
    assert!(refused.contains("too_large"), "{refused}");

    // Four of each kind, each declaring the largest body allowed and sending none of it:
    // together they declare about 1.3 GB, five times the in-flight budget.
    let mut attackers = Vec::new();
    for i in 0..4 {
        let h = format!("content-length: {http_limit}\r\n");
        attackers.push(head(addr, "/v1/append", &h).await);
        let path = format!("/v1/streams/chunked-{i}");
        attackers.push(head(addr, &path, "transfer-encoding: chunked\r\n").await);
        let mut f = framed(addr).await;
        append_header(&mut f, 1, framed_limit as u32).await;
        attackers.push(f);
    }
    receiving_at_least(addr, 12.0).await;

    // Meanwhile another client's one-event appends go through as if they were alone.
    let client = s.client().await;
    let mut took = Vec::new();
    for i in 0..200 {
        let started = Instant::now();
        tokio::time::timeout(WAIT, client.append(one(&format!("fine-{}", i % 10))))
            .await
            .expect("an append is not held back")
            .unwrap();
        took.push(started.elapsed());
    }
    let worst = p99(took);
    assert!(worst < Duration::from_millis(100), "p99 {worst:?}");
    // And over HTTP.
    let r = http(
        addr,
        "POST",
        "/v1/streams/fine-http",
        &[],
        r#"{"events":[{"event_type":"Noted","data":{"n":1}}]}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        metric(addr, "annal_append_bodies_receiving").await >= 12.0,
        "the attackers still hold their connections"
    );
    drop(attackers);
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_bodies_that_stop_arriving_or_trickle_are_dropped() {
    let _serial = SERIAL.lock().await;
    let timeout = Duration::from_millis(600);
    let s = start_with(|c| c.limits.body_timeout = timeout).await;
    let addr = s.addr();

    let mut silent = head(addr, "/v1/append", "content-length: 1000\r\n").await;
    let mut chunked = head(addr, "/v1/streams/c", "transfer-encoding: chunked\r\n").await;
    let mut frames = framed(addr).await;
    append_header(&mut frames, 7, 1000).await;
    // One byte every 100 ms: far below the minimum rate.
    let mut trickle = head(addr, "/v1/append", "content-length: 1000\r\n").await;
    let trickling = tokio::spawn(async move {
        for _ in 0..100 {
            if trickle.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        answer(&mut trickle, WAIT).await
    });

    let started = Instant::now();
    for s in [&mut silent, &mut chunked] {
        let a = answer(s, WAIT).await;
        assert!(a.starts_with("HTTP/1.1 408"), "{a}");
        assert!(a.contains("arrived too slowly"), "{a}");
    }
    let a = trickling.await.unwrap();
    assert!(a.starts_with("HTTP/1.1 408"), "{a}");
    // The framed client is told why, and its connection closed.
    let mut h = [0u8; HEADER_LEN];
    frames.read_exact(&mut h).await.unwrap();
    let h = Header::parse(&h);
    assert_eq!((h.kind, h.id), (Kind::Error as u8, 7), "{h:?}");
    let mut payload = vec![0u8; h.len as usize];
    frames.read_exact(&mut payload).await.unwrap();
    let status = wire::decode_status(&payload).unwrap();
    assert!(
        status.message().contains("arrived too slowly"),
        "{status:?}"
    );
    assert_eq!(
        answer(&mut frames, WAIT).await,
        "",
        "then the connection ends"
    );
    let all = started.elapsed();
    assert!(all >= timeout && all < timeout * 8, "{all:?}");
    assert_eq!(metric(addr, "annal_append_bodies_receiving").await, 0.0);
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_that_each_hold_part_of_a_spent_budget_all_finish() {
    let _serial = SERIAL.lock().await;
    // The smallest budget these limits allow: 1.5 MiB.
    let s = start_with(|c| {
        c.limits.max_append_bytes = 256 << 10;
        c.limits.max_event_bytes = 256 << 10;
        c.limits.max_inflight_append_bytes = 2 * (256 << 10) + (1 << 20);
    })
    .await;
    let addr = s.addr();
    // 40 appends of 200 KiB send their first 64 KiB, 2.5 MiB in all, before any sends the
    // rest: the budget is spent by parts of bodies that each need more of it.
    let n = 40;
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(n));
    let mut tasks = Vec::new();
    for i in 0..n {
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let data = "z".repeat(200 << 10);
            let body = format!(r#"{{"events":[{{"event_type":"Big","data":"{data}"}}]}}"#);
            let h = format!("content-length: {}\r\n", body.len());
            let mut c = head(addr, &format!("/v1/streams/part-{i}"), &h).await;
            let (first, rest) = body.as_bytes().split_at(64 << 10);
            c.write_all(first).await.unwrap();
            barrier.wait().await;
            c.write_all(rest).await.unwrap();
            answer(&mut c, WAIT).await
        }));
    }
    for t in tasks {
        let a = t.await.unwrap();
        assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    }
    assert!(
        metric(addr, "annal_append_overdrafts_total").await >= 1.0,
        "the budget was spent by parts of bodies"
    );
    s.server.shutdown().await.unwrap();
}

/// CPU time this process has used, user and system.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // After the command's closing parenthesis: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // The kernel counts in USER_HZ, 100 per second on Linux.
    Duration::from_millis(ticks * 10)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_prefaces_cost_no_cpu_while_they_wait() {
    let _serial = SERIAL.lock().await;
    let s = start().await;
    let addr = s.addr();
    let mut waiting = Vec::new();
    for _ in 0..300 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(&wire::PREFACE[..3]).await.unwrap();
        waiting.push(c);
    }
    // A window of time in which nothing happens but the 300 connections waiting.
    let (cpu, wall) = (cpu_time(), Instant::now());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = cpu_time() - cpu;
    let wall = wall.elapsed();
    assert!(used < wall / 10, "{used:?} of CPU in {wall:?}");
    // The rest of a preface, when it comes, is read as one.
    let mut c = waiting.pop().unwrap();
    let mut out = wire::PREFACE[3..].to_vec();
    wire::put_frame(&mut out, Kind::Hello, 1, b"");
    c.write_all(&out).await.unwrap();
    let mut h = [0u8; HEADER_LEN];
    tokio::time::timeout(WAIT, c.read_exact(&mut h))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(Header::parse(&h).kind, Kind::Ready as u8);
    drop(waiting);
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_escapes_and_unknown_parameters_are_refused_by_name() {
    let _serial = SERIAL.lock().await;
    let s = start().await;
    let addr = s.addr();
    let append = r#"{"events":[{"event_type":"Noted","data":{"n":1}}]}"#;
    let r = http(addr, "POST", "/v1/streams/s-1", &[], append).await;
    assert_eq!(r.status, 200, "{}", r.text());
    for (method, path) in [
        ("GET", "/v1/streams/a%zzb"),
        ("GET", "/v1/streams/a%zzb/events"),
        ("POST", "/v1/streams/a%zzb"),
        ("GET", "/v1/streams/a%2"),
    ] {
        let body = if method == "POST" { append } else { "" };
        let r = http(addr, method, path, &[], body).await;
        assert_eq!(r.status, 400, "{method} {path}: {}", r.text());
        assert_eq!(r.json()["error"]["field"], "path", "{}", r.text());
        assert!(r.text().contains("malformed %-escape"), "{}", r.text());
    }
    for (method, path, name) in [
        ("GET", "/v1/events?strem=s-1", "strem"),
        ("GET", "/v1/streams/s-1/events?asof=5", "asof"),
        ("GET", "/v1/streams?limit=1&colour=red", "colour"),
        ("POST", "/v1/streams/s-1?expected=0", "expected"),
    ] {
        let body = if method == "POST" { append } else { "" };
        let r = http(addr, method, path, &[], body).await;
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        let message = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(message.contains(&format!("'{name}'")), "{message}");
    }
    // Nothing was appended by the refused requests, and known parameters still work.
    let r = http(addr, "GET", "/v1/events?stream=s-1&from=0", &[], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["events"].as_array().unwrap().len(),
        1,
        "{}",
        r.text()
    );
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_points_beyond_the_head_are_refused_by_name() {
    let _serial = SERIAL.lock().await;
    let s = start().await;
    let addr = s.addr();
    let client = s.client().await;
    for i in 0..3 {
        client.append(one(&format!("r-{i}"))).await.unwrap();
    }
    let r = http(addr, "GET", "/v1/subscribe?after=1000000", &[], "").await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["field"], "after", "{}", r.text());
    assert!(
        r.text().contains("beyond the head of the log (2)"),
        "{}",
        r.text()
    );
    let r = http(addr, "GET", "/v1/subscribe", &[("last-event-id", "3")], "").await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["field"], "Last-Event-ID", "{}", r.text());
    let e = client
        .subscribe(annal_core::SubscribeRequest::new(
            annal_core::Source::All,
            annal_core::SubscribeFrom::After(3),
        ))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&e, annal_core::Error::InvalidArgument { field, .. } if field == "from"),
        "{e:?}"
    );
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_whose_clients_stop_reading_give_their_slots_back() {
    let _serial = SERIAL.lock().await;
    let s = start_with(|c| {
        c.limits.write_timeout = Duration::from_secs(2);
        c.limits.max_reads = 4;
    })
    .await;
    let addr = s.addr();
    let client = s.client().await;
    // 20 MB of events: a read of them all is far more than sockets and queues hold.
    let data = format!("\"{}\"", "x".repeat(1000)).into_bytes();
    for b in 0..20 {
        let events = (0..1000)
            .map(|_| NewEvent::new("Big", data.clone()))
            .collect();
        let request = AppendRequest::stream(format!("big-{b}"), ExpectedRevision::Any, events);
        client.append(request).await.unwrap();
    }
    let stalled = || async {
        metric(addr, "annal_stalled_reads_total").await
            + metric(addr, "annal_stalled_connections_total").await
    };
    let stalled_before = stalled().await;
    // Four reads of the whole log, as many as the server serves at once, whose clients
    // never read a byte of their answers.
    let mut stuck = Vec::new();
    for _ in 0..4 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /v1/events?limit=20000 HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .await
            .unwrap();
        // Its answer has begun (the read holds its slot), and is read no further.
        let mut status = [0u8; 12];
        c.read_exact(&mut status).await.unwrap();
        assert_eq!(&status, b"HTTP/1.1 200");
        stuck.push(c);
    }
    let probe = || async {
        http(addr, "GET", "/v1/events?limit=1", &[], "")
            .await
            .status
    };
    let mut seen = Vec::new();
    tokio::time::timeout(WAIT, async {
        loop {
            let status = probe().await;
            if seen.last() != Some(&status) {
                seen.push(status);
            }
            if status == 503 {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the stuck reads hold every slot: {seen:?}"));
    // After the write timeout the four are stopped, though their clients stay connected,
    // and their slots come back.
    tokio::time::timeout(WAIT, async {
        while stalled().await < stalled_before + 4.0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the stuck reads are stopped by the write timeout");
    tokio::time::timeout(WAIT, async {
        loop {
            match probe().await {
                200 => break,
                503 => tokio::task::yield_now().await,
                other => panic!("{other}"),
            }
        }
    })
    .await
    .expect("a read is served again");
    // And the server closed their connections: each reads to its end.
    for mut c in stuck {
        let mut sink = Vec::new();
        tokio::time::timeout(WAIT, c.read_to_end(&mut sink))
            .await
            .expect("the server closed the connection")
            .ok();
    }
    s.server.shutdown().await.unwrap();
}

/// A connection that opens HTTP/2 (the client preface and its SETTINGS) and then only
/// lets the server's pings arrive.
async fn h2_silent(addr: std::net::SocketAddr) -> TcpStream {
    let mut c = TcpStream::connect(addr).await.unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    c.write_all(&hello).await.unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_connections_never_keep_a_new_client_out() {
    let _serial = SERIAL.lock().await;
    let s = start().await;
    let addr = s.addr();
    // 1,100 connections of each kind, 4,400 in all against a cap of 1,024: framed ones idle
    // after their Hello, HTTP/2 ones that never make a request, HTTP/1.1 ones whose headers
    // never end, and HTTP/1.1 ones whose body stops after a byte.
    let mut idle = Vec::new();
    for _ in 0..1100 {
        idle.push(framed(addr).await);
        idle.push(h2_silent(addr).await);
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"POST /v1/read HTTP/1.1\r\nhost: localhost\r\n")
            .await
            .unwrap();
        idle.push(c);
        let mut c = head(addr, "/v1/read", "content-length: 100\r\n").await;
        c.write_all(b"{").await.unwrap();
        idle.push(c);
    }
    // A new client connects and appends at once, over the framed protocol and over HTTP.
    let started = Instant::now();
    let client = s.client().await;
    client.append(one("newcomer")).await.unwrap();
    let r = http(
        addr,
        "POST",
        "/v1/streams/newcomer-http",
        &[],
        r#"{"events":[{"event_type":"Noted","data":{"n":1}}]}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(metric(addr, "annal_connections_closed_total{reason=\"evicted\"}").await >= 3000.0);
    drop(idle);
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_unauthenticated_connections_are_closed_in_time() {
    let _serial = SERIAL.lock().await;
    let short = Duration::from_millis(300);
    let s = start_with(|c| {
        c.limits.idle_timeout = short;
        c.limits.handshake_timeout = short;
        c.write_tokens = vec!["w-token-0123456789".into()];
    })
    .await;
    let addr = s.addr();
    let started = Instant::now();
    // With tokens required, an HTTP/2 connection that makes no request, and an HTTP/1.1
    // one that only asks for /health, are closed after the handshake timeout.
    let mut h2 = h2_silent(addr).await;
    let mut health = TcpStream::connect(addr).await.unwrap();
    health
        .write_all(b"GET /health HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    // An authenticated keep-alive connection is closed once idle for the idle timeout,
    // and a framed one idle after its Hello too.
    let mut kept = TcpStream::connect(addr).await.unwrap();
    kept.write_all(
        b"GET /v1/info HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer w-token-0123456789\r\n\r\n",
    )
    .await
    .unwrap();
    let mut f = TcpStream::connect(addr).await.unwrap();
    let mut out = wire::PREFACE.to_vec();
    wire::put_frame(&mut out, Kind::Hello, 1, b"w-token-0123456789");
    f.write_all(&out).await.unwrap();
    for (c, what) in [
        (&mut h2, "HTTP/2 without a request"),
        (&mut health, "HTTP/1.1 without a token"),
        (&mut kept, "HTTP/1.1 idle"),
        (&mut f, "framed idle"),
    ] {
        let mut sink = Vec::new();
        tokio::time::timeout(WAIT, c.read_to_end(&mut sink))
            .await
            .unwrap_or_else(|_| panic!("{what}: still open"))
            .ok();
        if what == "HTTP/1.1 idle" {
            let text = String::from_utf8_lossy(&sink);
            assert!(text.starts_with("HTTP/1.1 200"), "{what}: {text}");
        }
    }
    assert!(started.elapsed() >= short);
    // A client whose connection the server closed while it was idle appends as before.
    let client = annal_client::Client::builder(s.url.clone())
        .token("w-token-0123456789")
        .connect()
        .await
        .unwrap();
    client.append(one("before-idle")).await.unwrap();
    let idle_closed = || async {
        let auth = [("authorization", "Bearer w-token-0123456789")];
        let m = http(addr, "GET", "/metrics", &auth, "").await.text();
        m.lines()
            .find_map(|l| l.strip_prefix("annal_connections_closed_total{reason=\"idle\"} "))
            .map_or(0.0, |v| v.trim().parse::<f64>().unwrap())
    };
    let closed = idle_closed().await;
    tokio::time::timeout(WAIT, async {
        while idle_closed().await <= closed {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the client's idle connection is closed");
    client.append(one("after-idle")).await.unwrap();
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_costly_append_condition_holds_back_no_other_writer() {
    let _serial = SERIAL.lock().await;
    let s = start().await;
    let addr = s.addr();
    let client = s.client().await;
    // 200,000 events tagged `a`, none also tagged `b`: a condition on "a and b" looks at
    // every one of them and finds nothing.
    for b in 0..200 {
        let events = (0..1000)
            .map(|_| NewEvent::new("Seen", b"{}".to_vec()).with_tag("a"))
            .collect();
        client
            .append(AppendRequest::stream(
                format!("seen-{b}"),
                ExpectedRevision::Any,
                events,
            ))
            .await
            .unwrap();
    }
    let costly = annal_core::Query {
        items: vec![annal_core::QueryItem {
            types: vec![],
            tags: vec!["a".into(), "b".into()],
        }],
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let checks = {
        let (client, stop, costly) = (s.client().await, stop.clone(), costly.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let request = one(&format!("decided-{n}")).with_condition(costly.clone(), None);
                client.append(request).await.unwrap();
                n += 1;
            }
            n
        })
    };
    let mut took = Vec::new();
    for i in 0..100 {
        let started = Instant::now();
        client.append(one(&format!("plain-{i}"))).await.unwrap();
        took.push(started.elapsed());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let decided = checks.await.unwrap();
    assert!(decided >= 1, "the costly conditions ran meanwhile");
    let worst = p99(took);
    assert!(worst < Duration::from_millis(50), "p99 {worst:?}");

    // A query past the limits is refused, naming the limit.
    let items: Vec<String> = (0..101)
        .map(|i| format!(r#"{{"tags":["t{i}"]}}"#))
        .collect();
    let body = format!(
        r#"{{"streams":[{{"stream_id":"q","events":[{{"event_type":"Noted","data":{{}}}}]}}],"condition":{{"query":{{"items":[{}]}}}}}}"#,
        items.join(",")
    );
    let r = http(addr, "POST", "/v1/append", &[], &body).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("more than the limit of 100"),
        "{}",
        r.text()
    );
    s.server.shutdown().await.unwrap();
}

/// This process's resident memory now, and its peak since the peak was last reset.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb = |name: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 1024
    };
    (kb("VmRSS:"), kb("VmHWM:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_that_never_read_stay_within_the_answer_budget() {
    let _serial = SERIAL.lock().await;
    let budget = 512 << 20;
    let s = start_with(|c| c.limits.max_answer_bytes = budget).await;
    let addr = s.addr();
    let budget = budget as u64;
    let client = s.client().await;
    client.append(one("first")).await.unwrap();
    // The peak is counted from here (Linux: writing 5 to clear_refs resets it).
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let (idle, _) = memory();
    // 200 subscribers of the whole log that never read a byte.
    let mut subscribers = Vec::new();
    for _ in 0..200 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /v1/subscribe HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .await
            .unwrap();
        subscribers.push(c);
    }
    // 500,000 events appended meanwhile.
    let data = format!("\"{}\"", "v".repeat(100)).into_bytes();
    for b in 0..500 {
        let events = (0..1000)
            .map(|_| NewEvent::new("Noted", data.clone()))
            .collect();
        let request = AppendRequest::stream(format!("n-{}", b % 10), ExpectedRevision::Any, events);
        client.append(request).await.unwrap();
    }
    let (_, peak) = memory();
    let mib = |b: u64| b / (1 << 20);
    // On top of the answers' budget: the store's own memory (the index entries of 500,000
    // events) and the allocator's slack. Without the budget, 200 subscribers of 50 MB of
    // events would hold 10 GB.
    let store = 128 << 20;
    assert!(
        peak < idle + budget + store,
        "peak {} MiB, idle {} MiB, budget {} MiB, store {} MiB",
        mib(peak),
        mib(idle),
        mib(budget),
        mib(store)
    );
    // Those over their share were stopped. One that reads on is told why, and resumes
    // where it was; one not stopped reads on through the events (its queue was full).
    assert!(metric(addr, "annal_stopped_answers_total").await >= 1.0);
    let mut got = None;
    for c in &mut subscribers {
        if let Some(text) = read_until_or(c, "fell behind", 16 << 20).await {
            got = Some(text);
            break;
        }
    }
    let got = got.expect("a stopped subscriber");
    let stopped = got.rfind("event: error").expect("told why it was stopped");
    assert!(
        got[stopped..].contains("fell behind"),
        "{}",
        &got[stopped..]
    );
    let last: u64 = got[..stopped]
        .rmatch_indices("\nid: ")
        .next()
        .map(|(i, _)| got[i + 5..].split('\n').next().unwrap().parse().unwrap())
        .expect("events before the error");
    let id = last.to_string();
    let mut again = TcpStream::connect(addr).await.unwrap();
    again
        .write_all(
            format!("GET /v1/subscribe HTTP/1.1\r\nhost: localhost\r\nlast-event-id: {id}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let text = read_until(&mut again, "\nid: ").await;
    let first = text
        .split("\nid: ")
        .nth(1)
        .unwrap()
        .split('\n')
        .next()
        .unwrap();
    assert_eq!(first.parse::<u64>().unwrap(), last + 1, "{text}");
    drop(subscribers);
    s.server.shutdown().await.unwrap();
}

/// What a connection sends until it has sent `marker` and the end of that line; `None`
/// once it has sent `limit` bytes without it.
async fn read_until_or(c: &mut TcpStream, marker: &str, limit: usize) -> Option<String> {
    let mut buf = vec![0u8; 64 << 10];
    let mut text = String::new();
    let mut read = 0;
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(at) = text.find(marker) {
                if text[at + marker.len()..].contains('\n') {
                    return Some(text);
                }
            }
            if read > limit {
                return None;
            }
            let n = c.read(&mut buf).await.unwrap();
            assert!(n > 0, "the connection ended before '{marker}'");
            read += n;
            // Only the tail is searched: what came long before the marker is not kept.
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
            if text.len() > 1 << 20 {
                let from = text.len() - (512 << 10);
                let from = (from..text.len())
                    .find(|&i| text.is_char_boundary(i))
                    .unwrap_or(0);
                text = text[from..].to_string();
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("'{marker}' or {limit} bytes within the wait"))
}

/// What a connection sends until it has sent `marker` and the end of that line.
async fn read_until(c: &mut TcpStream, marker: &str) -> String {
    read_until_or(c, marker, usize::MAX)
        .await
        .expect("no limit was set")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_that_parsers_cannot_read_is_refused_and_never_breaks_a_page() {
    let _serial = SERIAL.lock().await;
    let s = start().await;
    let addr = s.addr();
    let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
    for (data, says) in [
        (deep.as_str(), "nests deeper than 128 levels"),
        ("1e999999", "beyond the range of a double"),
        (r#""\ud800""#, "half of a UTF-16 pair"),
        (r#"{"a":["\udc00"]}"#, "half of a UTF-16 pair"),
    ] {
        let body = format!(r#"{{"events":[{{"event_type":"Odd","data":{data}}}]}}"#);
        let r = http(addr, "POST", "/v1/streams/odd", &[], &body).await;
        assert_eq!(r.status, 400, "{}", r.text());
        assert!(r.text().contains(says), "{says}: {}", r.text());
    }
    let fine = r#"{"pair":"\ud83d\ude00","big":1e300,"deep":[[[[1]]]]}"#;
    let body = format!(r#"{{"events":[{{"event_type":"Fine","data":{fine}}}]}}"#);
    let r = http(addr, "POST", "/v1/streams/odd", &[], &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The same data stored through an API that takes bytes is served so that the page
    // still parses: as base64.
    let client = s.client().await;
    let odd: Vec<NewEvent> = [deep.as_str(), "1e999999", r#""\ud800""#]
        .iter()
        .map(|d| NewEvent::new("Odd", d.as_bytes().to_vec()))
        .collect();
    client
        .append(AppendRequest::stream("odd", ExpectedRevision::Any, odd))
        .await
        .unwrap();
    let r = http(addr, "GET", "/v1/streams/odd/events", &[], "").await;
    assert_eq!(r.status, 200);
    let page: serde_json::Value = serde_json::from_slice(&r.body).expect("the page parses");
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 4);
    assert!(events[0]["data"].is_object(), "{}", events[0]);
    for e in &events[1..] {
        assert!(
            e.get("data").is_none() && e["data_base64"].is_string(),
            "{e}"
        );
    }
    s.server.shutdown().await.unwrap();
}
