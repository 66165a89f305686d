//! The server end to end over loopback: the HTTP API, errors on both APIs, SSE, auth, TLS,
//! metrics, limits, concurrency and resuming subscriptions.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use annal_client::Client;
use annal_core::{
    next_item, AppendRequest, Error, EventStore, EventStoreExt, ExpectedRevision, NewEvent, Query,
    QueryItem, ReadRequest, Source, SubscribeFrom, SubscribeRequest, SubscriptionItem,
    SubscriptionStream,
};
use common::*;

const WAIT: Duration = Duration::from_secs(10);

async fn next(sub: &mut SubscriptionStream) -> SubscriptionItem {
    tokio::time::timeout(WAIT, next_item(sub))
        .await
        .expect("a subscription item within the wait")
        .expect("the subscription goes on")
        .expect("no error")
}

async fn next_event(sub: &mut SubscriptionStream) -> annal_core::RecordedEvent {
    loop {
        match next(sub).await {
            SubscriptionItem::Event(e) => return e,
            SubscriptionItem::Checkpoint { .. } => continue,
            other => panic!("expected an event, got {other:?}"),
        }
    }
}

fn one(stream: &str, expected: ExpectedRevision, event_type: &str) -> AppendRequest {
    AppendRequest::stream(
        stream,
        expected,
        vec![NewEvent::new(event_type, br#"{"n":1}"#.to_vec())],
    )
}

/// Appends one event of `event_type` to each of the streams `{prefix}-0` to `{prefix}-{n-1}`.
async fn append_one_each(client: &Client, prefix: &str, n: usize, event_type: &str) {
    for i in 0..n {
        client
            .append(one(
                &format!("{prefix}-{i}"),
                ExpectedRevision::Any,
                event_type,
            ))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_api_appends_reads_and_answers_errors_as_json() {
    let s = start_with(|c| c.limits.max_append_bytes = 64 * 1024).await;
    let addr = s.addr();

    let r = http(
        addr,
        "POST",
        "/v1/streams/account-1",
        &[],
        r#"{"expected_revision":"no_stream","events":[
            {"event_type":"Opened","data":{"owner":"ada"},"tags":["account:1"],
             "metadata":{"actor":"teller","correlation_id":"5b0e1c9e-3a55-4d0b-9f43-3f1c8d0c2a11"}},
            {"event_type":"Blob","data_base64":"/wAB"}]}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["streams"][0]["revision"], 1);
    assert_eq!(v["last_position"], 1);

    // Read back: JSON stays JSON, bytes come back as base64, metadata intact.
    let r = http(addr, "GET", "/v1/streams/account-1/events", &[], "").await;
    assert_eq!(r.status, 200);
    let v = r.json();
    let events = v["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["data"]["owner"], "ada");
    assert_eq!(events[0]["metadata"]["actor"], "teller");
    assert_eq!(
        events[0]["metadata"]["correlation_id"],
        "5b0e1c9e-3a55-4d0b-9f43-3f1c8d0c2a11"
    );
    assert_eq!(events[1]["data_base64"], "/wAB");
    assert_eq!(events[1]["content_type"], "application/octet-stream");
    assert!(v.get("next").is_none(), "no next page: {v}");

    // Paging: the limit gives a next page, backward too.
    let r = http(addr, "GET", "/v1/events?limit=1", &[], "").await;
    assert_eq!(r.json()["next"], 1);
    let r = http(
        addr,
        "GET",
        "/v1/streams/account-1/events?direction=backward&limit=1",
        &[],
        "",
    )
    .await;
    let v = r.json();
    assert_eq!(v["events"][0]["revision"], 1);
    assert_eq!(v["next"], 0);

    // A conflict names the stream, what was expected and what is.
    let r = http(
        addr,
        "POST",
        "/v1/streams/account-1",
        &[],
        r#"{"expected_revision":0,"events":[{"event_type":"Deposited","data":{}}]}"#,
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.text());
    let e = &r.json()["error"];
    assert_eq!(e["code"], "wrong_expected_revision");
    assert_eq!(e["stream"], "account-1");
    assert_eq!(e["expected"], "revision 0");
    assert_eq!(e["actual"], 1);

    // A bad request names the field; nothing is written.
    let r = http(
        addr,
        "POST",
        "/v1/append",
        &[],
        r#"{"streams":[{"stream_id":"a-1","events":[{"event_type":"A"},{"event_type":"B","id":"not-a-uuid"}]}]}"#,
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["field"], "streams[0].events[1].id");
    let r = http(
        addr,
        "POST",
        "/v1/streams/a-1",
        &[],
        r#"{"events":[{"event_type":""}]}"#,
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["field"], "event type");
    let r = http(addr, "POST", "/v1/streams/a-1", &[], "{not json").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["field"], "body");
    let r = http(addr, "GET", "/v1/streams/a-1", &[], "").await;
    assert_eq!(r.status, 404, "nothing was written to a-1: {}", r.text());

    // Too large: 413, as JSON.
    let big = "x".repeat(100 * 1024);
    let body = format!(r#"{{"events":[{{"event_type":"Big","data":"{big}"}}]}}"#);
    let r = http(addr, "POST", "/v1/streams/big-1", &[], &body).await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "too_large");

    // A DCB condition over several streams: the second append fails on the first's event.
    let cond = r#"{"streams":[{"stream_id":"course-1","events":[{"event_type":"Enrolled","tags":["student:7"]}]},
                   {"stream_id":"student-7","events":[{"event_type":"Enrolled","tags":["student:7"]}]}],
                   "condition":{"query":{"items":[{"types":["Enrolled"],"tags":["student:7"]}]}}}"#;
    let r = http(addr, "POST", "/v1/append", &[], cond).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = http(addr, "POST", "/v1/append", &[], cond).await;
    assert_eq!(r.status, 409);
    assert_eq!(r.json()["error"]["code"], "condition_failed");
    assert_eq!(r.json()["error"]["position"], 2);

    // Reads by query, category and type; listings; info.
    let r = http(
        addr,
        "POST",
        "/v1/read",
        &[],
        r#"{"source":{"query":{"items":[{"tags":["student:7"]}]}},"direction":"backward"}"#,
    )
    .await;
    let positions: Vec<u64> = r.json()["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions, vec![3, 2]);
    let r = http(addr, "GET", "/v1/events?category=account", &[], "").await;
    assert_eq!(r.json()["events"].as_array().unwrap().len(), 2);
    let r = http(addr, "GET", "/v1/events?types=Enrolled,Other", &[], "").await;
    assert_eq!(r.json()["events"].as_array().unwrap().len(), 2);
    // Filters combine: a category with types, a stream prefix with tags.
    let r = http(
        addr,
        "GET",
        "/v1/events?category=account&types=Other",
        &[],
        "",
    )
    .await;
    assert_eq!(
        r.json()["events"].as_array().unwrap().len(),
        0,
        "{}",
        r.text()
    );
    let r = http(
        addr,
        "GET",
        "/v1/events?prefix=student-&tags=student:7",
        &[],
        "",
    )
    .await;
    assert_eq!(
        r.json()["events"].as_array().unwrap().len(),
        1,
        "{}",
        r.text()
    );
    let r = http(addr, "GET", "/v1/events?stream=a-1&types=B", &[], "").await;
    assert_eq!(r.status, 400);
    let r = http(addr, "GET", "/v1/events?as_of=1", &[], "").await;
    assert_eq!(r.json()["events"].as_array().unwrap().len(), 2);
    let r = http(addr, "GET", "/v1/events?as_of=last-tuesday", &[], "").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["field"], "as_of");
    let r = http(addr, "GET", "/v1/streams?limit=2", &[], "").await;
    let v = r.json();
    assert_eq!(v["streams"][0]["stream_id"], "account-1");
    assert_eq!(v["next_after"], "course-1");
    let r = http(addr, "GET", "/v1/categories", &[], "").await;
    assert_eq!(r.json()["categories"].as_array().unwrap().len(), 3);
    let r = http(addr, "GET", "/v1/info", &[], "").await;
    assert_eq!(r.json()["head"], 3);
    let r = http(
        addr,
        "GET",
        "/v1/position-at?time=2000-01-01T00:00:00Z",
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.json().get("position").is_none());

    // Unknown routes and methods answer JSON too.
    let r = http(addr, "GET", "/v2/nothing", &[], "").await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let r = http(addr, "DELETE", "/v1/info", &[], "").await;
    assert_eq!(r.status, 405);

    // Events of no stream, guarded by a condition: the second claim of a name fails.
    let claim = |after: u64| {
        format!(
            r#"{{"events":[{{"event_type":"UsernameClaimed","tags":["username:ann"]}}],
                "condition":{{"query":{{"items":[{{"tags":["username:ann"]}}]}},"after":{after}}}}}"#
        )
    };
    let at = http(addr, "GET", "/v1/info", &[], "").await.json()["head"]
        .as_u64()
        .unwrap();
    let r = http(addr, "POST", "/v1/append", &[], &claim(at)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["streams"], serde_json::json!([]));
    assert_eq!(r.json()["first_position"], at + 1);
    let r = http(addr, "POST", "/v1/append", &[], &claim(at)).await;
    assert_eq!(r.status, 409, "{}", r.text());
    let r = http(addr, "GET", "/v1/events?tags=username:ann", &[], "").await;
    let events = r.json()["events"].as_array().unwrap().clone();
    assert_eq!(events.len(), 1);
    // The read says the head it was served at.
    assert_eq!(r.json()["head"], at + 1, "{}", r.text());
    assert_eq!(
        (
            events[0]["stream_id"].as_str(),
            events[0]["revision"].as_u64()
        ),
        (Some(""), Some(0))
    );
    // The audit trail: by correlation id and by actor, through GET and POST.
    let txn = "0195f3a4-0000-7000-8000-0000000000aa";
    let body = format!(
        r#"{{"events":[{{"event_type":"Paid","metadata":{{"correlation_id":"{txn}","actor":"clerk"}}}}]}}"#
    );
    let r = http(addr, "POST", "/v1/streams/pay-1", &[], &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let at = r.json()["first_position"].as_u64();
    for path in [
        format!("/v1/events?correlation={txn}"),
        "/v1/events?actor=clerk".to_string(),
    ] {
        let r = http(addr, "GET", &path, &[], "").await;
        let events = r.json()["events"].as_array().unwrap().clone();
        assert_eq!(events.len(), 1, "{path}");
        assert_eq!(events[0]["position"].as_u64(), at, "{path}");
    }
    let read = format!(r#"{{"source":{{"correlation":"{txn}"}}}}"#);
    let r = http(addr, "POST", "/v1/read", &[], &read).await;
    assert_eq!(
        r.json()["events"].as_array().unwrap().len(),
        1,
        "{}",
        r.text()
    );
    let r = http(addr, "GET", "/v1/events?correlation=nope", &[], "").await;
    assert_eq!(
        (r.status, r.json()["error"]["field"].as_str()),
        (400, Some("correlation"))
    );
    let r = http(addr, "GET", "/v1/events?actor=clerk&category=pay", &[], "").await;
    assert_eq!(
        (r.status, r.json()["error"]["field"].as_str()),
        (400, Some("filter"))
    );

    // A stream id left empty is refused: events of no stream go in `events`.
    let r = http(
        addr,
        "POST",
        "/v1/append",
        &[],
        r#"{"streams":[{"stream_id":"","events":[{"event_type":"A"}]}]}"#,
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["field"], "streams[0].stream_id");

    // The OpenAPI document describes the routes it serves.
    let doc = http(addr, "GET", "/openapi.json", &[], "").await.json();
    for path in [
        "/v1/streams/{stream_id}",
        "/v1/append",
        "/v1/events",
        "/v1/subscribe",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from the OpenAPI document"
        );
    }
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_errors_come_back_as_the_engine_errors() {
    let s = start_with(|c| c.limits.max_append_bytes = 64 * 1024).await;
    let client = s.client().await;
    client
        .append(one("s-1", ExpectedRevision::NoStream, "A"))
        .await
        .unwrap();
    let e = client
        .append(one("s-1", ExpectedRevision::Exact(5), "A"))
        .await
        .unwrap_err();
    assert_eq!(
        e,
        Error::WrongExpectedRevision {
            stream: "s-1".into(),
            expected: ExpectedRevision::Exact(5),
            actual: Some(0),
        }
    );
    let e = client
        .append(one("", ExpectedRevision::NoStream, "A"))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument { field, .. } if field == "expected revision"),
        "{e:?}"
    );
    let e = client
        .read(ReadRequest::stream(""))
        .await
        .err()
        .expect("the stream of no stream cannot be read");
    assert!(
        matches!(&e, Error::InvalidArgument { field, .. } if field == "stream id"),
        "{e:?}"
    );
    let big = AppendRequest::stream(
        "s-2",
        ExpectedRevision::Any,
        vec![NewEvent::new("Big", vec![b'x'; 200 * 1024])],
    );
    let e = client.append(big).await.unwrap_err();
    assert!(matches!(e, Error::TooLarge { .. }), "{e:?}");
    let e = client
        .read(ReadRequest::query(Query::default()))
        .await
        .err()
        .expect("an empty query is refused");
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");
    assert_eq!(
        client.read_to_vec(ReadRequest::all()).await.unwrap().len(),
        1
    );
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_answer_the_same_events_packed_or_as_messages() {
    use annal_proto as pb;
    let s = start_with(|c| c.limits.read_batch_events = 7).await;
    let client = s.client().await;
    for i in 0..30u64 {
        let mut e = NewEvent::new("T", format!("{{\"i\":{i}}}")).with_tag(format!("n:{i}"));
        if i % 3 == 0 {
            e.metadata.actor = Some("ada".into());
            e.metadata.correlation_id = Some(annal_core::Uuid::new_v4());
            e.metadata.extra.insert("k".into(), "v".into());
        }
        client
            .append(AppendRequest::stream(
                format!("p-{}", i % 4),
                ExpectedRevision::Any,
                vec![e],
            ))
            .await
            .unwrap();
    }
    let mut raw = pb::event_store_client::EventStoreClient::connect(s.url.clone())
        .await
        .unwrap();
    // Forward reads of the whole log (limited or not) are packed straight from the log's
    // records; the others (a stream, backward, a query or category) from decoded events.
    let reads = [
        (ReadRequest::all(), 30, 5),
        (ReadRequest::all().from(5).limit(11), 11, 2),
        (ReadRequest::all().from(26), 4, 1),
        (ReadRequest::stream("p-1"), 8, 2),
        (ReadRequest::all().backward().limit(9), 9, 2),
        (ReadRequest::query(annal_core::Query::all()).from(3), 27, 4),
        (ReadRequest::category("p"), 30, 5),
    ];
    for (read, count, batches_expected) in reads {
        let mut by_mode = Vec::new();
        for packed in [false, true] {
            let mut request = pb::ReadRequest::from(read.clone());
            request.packed = packed;
            let mut stream = raw.read(request).await.unwrap().into_inner();
            let mut events = Vec::new();
            let mut batches = 0;
            while let Some(batch) = stream.message().await.unwrap() {
                assert_eq!(
                    batch.events.is_empty(),
                    packed,
                    "the batch comes the way it was asked for"
                );
                assert_eq!(batch.packed.is_empty(), !packed);
                events.extend(batch.into_events().unwrap());
                batches += 1;
            }
            assert_eq!(
                batches, batches_expected,
                "{read:?}: {count} events in batches of 7"
            );
            by_mode.push(events);
        }
        assert_eq!(by_mode[0], by_mode[1], "{read:?}");
        assert_eq!(by_mode[0], client.read_to_vec(read.clone()).await.unwrap());
        assert_eq!(by_mode[0].len(), count, "{read:?}");
    }
    let from5: Vec<u64> = client
        .read_to_vec(ReadRequest::all().from(5).limit(11))
        .await
        .unwrap()
        .iter()
        .map(|e| e.position)
        .collect();
    assert_eq!(from5, (5..16).collect::<Vec<_>>());
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_delivers_history_the_marker_live_events_and_resumes_after_last_event_id() {
    let s = start().await;
    let client = s.client().await;
    append_one_each(&client, "order", 3, "Placed").await;
    client
        .append(one("user-1", ExpectedRevision::Any, "Joined"))
        .await
        .unwrap();
    let addr = s.addr();
    // History, the marker, a heartbeat while nothing happens, then a live event.
    let mut sse = Sse::open(addr, "/v1/subscribe?category=order&heartbeat_ms=100", &[]).await;
    sse.until("event: caught-up").await;
    sse.until("event: heartbeat").await;
    client
        .append(one("order-9", ExpectedRevision::Any, "Placed"))
        .await
        .unwrap();
    let text = sse.until("id: 4").await;
    let ids: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .collect();
    assert!(text.contains("event: caught-up"), "{text}");
    // History 0..2, the marker at the head (3), possibly a checkpoint, then live 4.
    assert_eq!(&ids[..4], &["0", "1", "2", "3"], "{text}");
    assert_eq!(ids.last(), Some(&"4"));
    assert!(text.contains("event: heartbeat"), "{text}");

    // Resuming with Last-Event-ID skips what was seen.
    let text = sse_until(
        addr,
        "/v1/subscribe?category=order",
        &[("last-event-id", "1")],
        "caught-up",
    )
    .await;
    let ids: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .collect();
    assert_eq!(ids, vec!["2", "4", "4"], "{text}");
    s.server.shutdown().await.unwrap();
}

/// Reads a Server-Sent Events response raw until `until` has arrived.
async fn sse_until(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    until: &str,
) -> String {
    Sse::open(addr, path, headers).await.until(until).await
}

const WRITE: &str = "write-token-0123456789";
const READ: &str = "read-token-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_refuses_requests_without_a_valid_token_and_touches_nothing() {
    let s = start_with(|c| {
        c.write_tokens = vec![WRITE.into()];
        c.read_tokens = vec![READ.into()];
    })
    .await;
    let addr = s.addr();
    let append = r#"{"events":[{"event_type":"A"}]}"#;

    // HTTP: none, wrong, read-only, write.
    let r = http(addr, "POST", "/v1/streams/s-1", &[], append).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "unauthenticated");
    assert_eq!(r.headers.get("www-authenticate").unwrap(), "Bearer");
    let r = http(
        addr,
        "POST",
        "/v1/streams/s-1",
        &[("authorization", "Bearer wrong-token-000000000")],
        append,
    )
    .await;
    assert_eq!(r.status, 401);
    // The scheme's name is case-insensitive.
    for scheme in ["bearer", "BEARER"] {
        let r = http(
            addr,
            "GET",
            "/v1/info",
            &[("authorization", &format!("{scheme} {READ}"))],
            "",
        )
        .await;
        assert_eq!(r.status, 200, "{scheme}: {}", r.text());
    }
    let bearer_read = format!("Bearer {READ}");
    let r = http(
        addr,
        "POST",
        "/v1/streams/s-1",
        &[("authorization", &bearer_read)],
        append,
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"]["code"], "forbidden");
    // A stream may be called "events"; appending to it is still a write.
    let r = http(
        addr,
        "POST",
        "/v1/streams/events",
        &[("authorization", &bearer_read)],
        append,
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    // Snapshots: a read token gets them, but neither keeps nor deletes them.
    let snapshot = r#"{"revision":0,"data":{"n":1}}"#;
    for (method, body) in [("POST", snapshot), ("DELETE", "")] {
        let r = http(
            addr,
            method,
            "/v1/streams/s-1/snapshots",
            &[("authorization", &bearer_read)],
            body,
        )
        .await;
        assert_eq!(r.status, 403, "{method}: {}", r.text());
    }
    let r = http(
        addr,
        "GET",
        "/v1/streams/s-1/snapshots",
        &[("authorization", &bearer_read)],
        "",
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text());
    let r = http(addr, "GET", "/v1/info", &[], "").await;
    assert_eq!(r.status, 401, "reads need a token too");
    let r = http(
        addr,
        "GET",
        "/v1/info",
        &[("authorization", &bearer_read)],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.json().get("head").is_none(), "nothing was written");
    // Health, readiness and the API document stay open.
    assert_eq!(http(addr, "GET", "/health", &[], "").await.status, 200);
    assert_eq!(
        http(addr, "GET", "/openapi.json", &[], "").await.status,
        200
    );

    // gRPC: the same rules, as UNAUTHENTICATED and PERMISSION_DENIED.
    let anonymous = s.client().await;
    let e = anonymous
        .append(one("s-1", ExpectedRevision::Any, "A"))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Unauthenticated(_)), "{e:?}");
    let e = anonymous.read(ReadRequest::all()).await.err().unwrap();
    assert!(matches!(e, Error::Unauthenticated(_)), "{e:?}");
    let reader = Client::builder(s.url.clone())
        .token(READ)
        .connect()
        .await
        .unwrap();
    let e = reader
        .append(one("s-1", ExpectedRevision::Any, "A"))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::PermissionDenied(_)), "{e:?}");
    let e = reader
        .put_snapshot(annal_core::NewSnapshot::new("s-1", 0, 1, b"{}".to_vec()))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::PermissionDenied(_)), "{e:?}");
    let e = reader.delete_snapshots("s-1").await.unwrap_err();
    assert!(matches!(e, Error::PermissionDenied(_)), "{e:?}");
    assert_eq!(reader.get_snapshot("s-1", None).await.unwrap(), None);
    assert_eq!(
        reader.head().await.unwrap(),
        None,
        "refused requests wrote nothing"
    );
    let writer = Client::builder(s.url.clone())
        .token(WRITE)
        .connect()
        .await
        .unwrap();
    writer
        .append(one("s-1", ExpectedRevision::Any, "A"))
        .await
        .unwrap();
    assert_eq!(
        reader.read_to_vec(ReadRequest::all()).await.unwrap().len(),
        1
    );
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_grpc_and_http_on_one_port() {
    let cert = self_signed();
    let s = start_with(|c| c.tls = Some(cert.files())).await;
    let client = Client::builder(s.url.clone())
        .ca_certificate(cert.cert_pem.clone())
        .domain("localhost")
        .connect()
        .await
        .unwrap();
    client
        .append(one("tls-1", ExpectedRevision::NoStream, "A"))
        .await
        .unwrap();
    assert_eq!(
        client
            .read_to_vec(ReadRequest::stream("tls-1"))
            .await
            .unwrap()
            .len(),
        1
    );
    let r = https(
        s.addr(),
        &cert.cert_pem,
        "GET",
        "/v1/streams/tls-1",
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["count"], 1);
    // Plain text to a TLS port gets nowhere, and says the connection failed.
    let plain = Client::connect(format!("http://{}", s.addr())).await;
    if let Ok(c) = plain {
        let e = c.head().await.unwrap_err();
        assert!(
            matches!(&e, Error::Unavailable(m) if m.contains("the connection to the server failed")),
            "{e:?}"
        );
    }
    // A certificate it was not given to trust is refused, saying what to do.
    let other = self_signed();
    let e = Client::builder(s.url.clone())
        .ca_certificate(other.cert_pem.clone())
        .connect()
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&e, Error::Unavailable(m) if m.contains("with --ca FILE")),
        "{e:?}"
    );
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_signed_certificate_that_marks_itself_a_ca_is_trusted_when_given() {
    let cert = self_signed_ca();
    let s = start_with(|c| c.tls = Some(cert.files())).await;
    // By the address, as the URL gives it: the certificate is the one given to trust.
    let client = Client::builder(s.url.clone())
        .ca_certificate(cert.cert_pem.clone())
        .connect()
        .await
        .unwrap();
    client
        .append(one("ca-1", ExpectedRevision::NoStream, "A"))
        .await
        .unwrap();
    assert_eq!(client.head().await.unwrap(), Some(0));
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_readiness() {
    let s = start().await;
    let client = s.client().await;
    append_one_each(&client, "m", 5, "A").await;
    let _ = client
        .append(one("m-0", ExpectedRevision::NoStream, "A"))
        .await;
    let _sub = client
        .subscribe(SubscribeRequest::new(Source::All, SubscribeFrom::Now))
        .await
        .unwrap();
    let addr = s.addr();
    assert_eq!(http(addr, "GET", "/health", &[], "").await.status, 200);
    assert_eq!(http(addr, "GET", "/ready", &[], "").await.status, 200);
    let m = http(addr, "GET", "/metrics", &[], "").await.text();
    for needle in [
        "annal_appends_total{result=\"ok\"}",
        "annal_appends_total{result=\"conflict\"}",
        "annal_events_written_total",
        "annal_bytes_written_total",
        "annal_append_seconds_bucket",
        "annal_fsync_seconds_bucket",
        "annal_subscriptions_active",
        "annal_head_position",
        "annal_requests_total",
    ] {
        assert!(m.contains(needle), "{needle} missing from /metrics:\n{m}");
    }
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_clients_append_and_subscribe_at_once() {
    const WRITERS: usize = 16;
    const EACH: usize = 60;
    let s = start().await;
    let total = WRITERS * EACH;
    let mut subscribers = Vec::new();
    for source in [
        Source::All,
        Source::Category("even".into()),
        Source::Query(Query::item(QueryItem::tags(["odd"]))),
    ] {
        let client = s.client().await;
        let mut sub = client
            .subscribe(SubscribeRequest::new(source.clone(), SubscribeFrom::Start))
            .await
            .unwrap();
        let expect = if source == Source::All {
            total
        } else {
            total / 2
        };
        subscribers.push(tokio::spawn(async move {
            let _client = client;
            let mut positions = Vec::new();
            while positions.len() < expect {
                match next(&mut sub).await {
                    SubscriptionItem::Event(e) => positions.push(e.position),
                    SubscriptionItem::CaughtUp { .. } | SubscriptionItem::Checkpoint { .. } => {}
                }
            }
            positions
        }));
    }
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let client = s.client().await;
        writers.push(tokio::spawn(async move {
            let parity = if w % 2 == 0 { "even" } else { "odd" };
            for i in 0..EACH {
                let e = NewEvent::new("Wrote", format!("{{\"i\":{i}}}")).with_tag(parity);
                let r = client
                    .append(AppendRequest::stream(
                        format!("{parity}-{w}"),
                        ExpectedRevision::Exact(i as u64).into_first(i),
                        vec![e],
                    ))
                    .await
                    .unwrap();
                assert_eq!(r.revision(), i as u64);
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let log = s
        .client()
        .await
        .read_to_vec(ReadRequest::all())
        .await
        .unwrap();
    assert_eq!(log.len(), total);
    let ids: HashSet<_> = log.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), total, "no event twice");
    let all: Vec<u64> = (0..total as u64).collect();
    let even: Vec<u64> = log
        .iter()
        .filter(|e| e.stream_id.starts_with("even"))
        .map(|e| e.position)
        .collect();
    let odd: Vec<u64> = log
        .iter()
        .filter(|e| e.tags.iter().any(|t| t == "odd"))
        .map(|e| e.position)
        .collect();
    let got: Vec<Vec<u64>> = futures_join(subscribers).await;
    assert_eq!(
        got[0], all,
        "the unfiltered subscriber saw every position once, in order"
    );
    assert_eq!(got[1], even);
    assert_eq!(got[2], odd);
    s.server.shutdown().await.unwrap();
}

trait FirstAppend {
    fn into_first(self, i: usize) -> ExpectedRevision;
}

impl FirstAppend for ExpectedRevision {
    /// `NoStream` for the first event of a stream, the revision before it otherwise.
    fn into_first(self, i: usize) -> ExpectedRevision {
        if i == 0 {
            ExpectedRevision::NoStream
        } else {
            ExpectedRevision::Exact(i as u64 - 1)
        }
    }
}

async fn futures_join<T: Send + 'static>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for h in handles {
        out.push(
            tokio::time::timeout(WAIT * 3, h)
                .await
                .expect("in time")
                .unwrap(),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_disconnects_resumes_from_its_checkpoint_with_no_gap_or_repeat() {
    let s = start().await;
    let writer = s.client().await;
    let wanted = || Source::EventTypes(vec!["Paid".into()]);
    let mut delivered = Vec::new();
    let mut checkpoint = None;
    // Three rounds: subscribe from the last checkpoint, take what comes, drop the connection
    // while more is written.
    for round in 0..3u64 {
        let client = s.client().await;
        let from = checkpoint.map_or(SubscribeFrom::Start, SubscribeFrom::After);
        let mut sub = client
            .subscribe(SubscribeRequest::new(wanted(), from))
            .await
            .unwrap();
        for i in 0..10u64 {
            let t = if i % 3 == 0 { "Paid" } else { "Viewed" };
            writer
                .append(one(&format!("order-{round}-{i}"), ExpectedRevision::Any, t))
                .await
                .unwrap();
        }
        let head = writer.head().await.unwrap().unwrap();
        // Read until a checkpoint or event covers the head.
        loop {
            match next(&mut sub).await {
                SubscriptionItem::Event(e) => {
                    assert_eq!(e.event_type, "Paid");
                    delivered.push(e.position);
                    checkpoint = Some(e.position);
                }
                SubscriptionItem::Checkpoint { position }
                | SubscriptionItem::CaughtUp {
                    position: Some(position),
                } => {
                    checkpoint = Some(position);
                }
                SubscriptionItem::CaughtUp { position: None } => {}
            }
            if checkpoint >= Some(head) {
                break;
            }
        }
        // More is written while nobody listens.
        for i in 10..13u64 {
            writer
                .append(one(
                    &format!("order-{round}-{i}"),
                    ExpectedRevision::Any,
                    "Paid",
                ))
                .await
                .unwrap();
        }
        drop(sub);
        drop(client);
    }
    // A last subscriber collects the rest.
    let client = s.client().await;
    let mut sub = client
        .subscribe(SubscribeRequest::new(
            wanted(),
            checkpoint.map_or(SubscribeFrom::Start, SubscribeFrom::After),
        ))
        .await
        .unwrap();
    let expected: Vec<u64> = writer
        .read_to_vec(ReadRequest::event_types(["Paid"]))
        .await
        .unwrap()
        .iter()
        .map(|e| e.position)
        .collect();
    while delivered.len() < expected.len() {
        delivered.push(next_event(&mut sub).await.position);
    }
    assert_eq!(
        delivered, expected,
        "every match once, in order, across reconnects"
    );
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_holds_back_no_writer_and_the_limit_is_enforced() {
    let s = start_with(|c| {
        c.limits.max_subscriptions = 2;
        c.limits.read_batch_events = 64;
        c.limits.subscription_buffer = 2;
    })
    .await;
    let client = s.client().await;
    let mut idle = client
        .subscribe(SubscribeRequest::new(Source::All, SubscribeFrom::Start))
        .await
        .unwrap();
    let _second = client
        .subscribe(SubscribeRequest::new(Source::All, SubscribeFrom::Now))
        .await
        .unwrap();
    let e = client
        .subscribe(SubscribeRequest::new(Source::All, SubscribeFrom::Now))
        .await
        .err()
        .expect("a third subscription is refused");
    assert!(
        matches!(&e, Error::Unavailable(m) if m.contains("max_subscriptions")),
        "{e:?}"
    );

    // 4,000 events in batches while the idle subscriber reads nothing.
    for b in 0..40 {
        let events = (0..100)
            .map(|i| NewEvent::new("E", format!("{{\"i\":{i}}}")))
            .collect();
        tokio::time::timeout(
            WAIT,
            client.append(AppendRequest::stream(
                format!("s-{b}"),
                ExpectedRevision::Any,
                events,
            )),
        )
        .await
        .expect("writers are not held back by a subscriber that does not read")
        .unwrap();
    }
    // It still gets everything, in order, when it finally reads.
    let mut next_position = 0;
    while next_position < 4_000 {
        match next(&mut idle).await {
            SubscriptionItem::Event(e) => {
                assert_eq!(e.position, next_position);
                next_position += 1;
            }
            SubscriptionItem::CaughtUp { .. } | SubscriptionItem::Checkpoint { .. } => {}
        }
    }
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_appends_in_flight_and_ends_subscriptions() {
    let s = start().await;
    let client = s.client().await;
    let mut sub = client
        .subscribe(SubscribeRequest::new(Source::All, SubscribeFrom::Start))
        .await
        .unwrap();
    assert!(matches!(
        next(&mut sub).await,
        SubscriptionItem::CaughtUp { .. }
    ));
    let acked = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    // How many appends were acknowledged so far, to wait on.
    let (count, mut counted) = tokio::sync::watch::channel(0usize);
    let count = Arc::new(count);
    let mut writers = Vec::new();
    for w in 0..8 {
        let (client, acked, count) = (client.clone(), acked.clone(), count.clone());
        writers.push(tokio::spawn(async move {
            for i in 0..1_000 {
                let e = NewEvent::new("E", b"{}".to_vec());
                let id = e.id;
                match client
                    .append(AppendRequest::stream(
                        format!("w-{w}"),
                        ExpectedRevision::Any,
                        vec![e],
                    ))
                    .await
                {
                    Ok(_) => {
                        acked.lock().unwrap().insert(id);
                        count.send_modify(|n| *n += 1);
                    }
                    Err(_) if i > 0 => return,
                    Err(e) => panic!("the first append failed: {e}"),
                }
            }
        }));
    }
    // Shut down while every writer is appending.
    tokio::time::timeout(WAIT, counted.wait_for(|&n| n >= 64))
        .await
        .expect("the writers got going")
        .unwrap();
    let dir = s.data.clone();
    let keep = s._dir;
    s.server.shutdown().await.unwrap();
    for w in writers {
        w.await.unwrap();
    }
    // The subscription ended with an error that says why.
    let mut ended = false;
    for _ in 0..100_000 {
        match tokio::time::timeout(WAIT, next_item(&mut sub))
            .await
            .unwrap()
        {
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                assert!(matches!(e, Error::Unavailable(_)), "{e:?}");
                ended = true;
                break;
            }
            None => {
                ended = true;
                break;
            }
        }
    }
    assert!(ended, "the subscription ended at shutdown");
    // Every acknowledged append is in the store, once.
    let store = annal_engine::Store::open(&dir).unwrap();
    let ids: Vec<_> = store
        .read_iter(ReadRequest::all())
        .unwrap()
        .map(|e| e.unwrap().id)
        .collect();
    let unique: HashSet<_> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "no event twice");
    let acked = acked.lock().unwrap();
    assert!(!acked.is_empty());
    for id in acked.iter() {
        assert!(unique.contains(id), "acknowledged event {id} is missing");
    }
    drop(keep);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_of_damaged_data_answers_an_error_never_a_short_success() {
    let s = start().await;
    let client = s.client().await;
    append_one_each(&client, "d", 20, "A").await;
    // Damage a record in the middle of the log, under the running server.
    let seg = std::fs::read_dir(s.data.join("segments"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&seg).unwrap();
    // Records end where the segment's preallocated zeros begin.
    let end = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
    let at = 64 + (end - 64) / 2;
    bytes[at] ^= 0x5a;
    std::fs::write(&seg, &bytes).unwrap();

    let r = http(s.addr(), "GET", "/v1/events", &[], "").await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "corruption");
    let e = client.read_to_vec(ReadRequest::all()).await.unwrap_err();
    assert!(matches!(e, Error::Corruption { .. }), "{e:?}");
    s.server.shutdown().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_share_a_small_budget_without_waiting_on_each_other_for_ever() {
    let s = start_with(|c| {
        c.limits.max_append_bytes = 64 * 1024;
        c.limits.max_event_bytes = 64 * 1024;
        c.limits.max_inflight_append_bytes = 2 * 64 * 1024 + (1 << 20);
    })
    .await;
    let mut tasks = Vec::new();
    for w in 0..24 {
        let (url, addr) = (s.url.clone(), s.addr());
        tasks.push(tokio::spawn(async move {
            let client = Client::connect(url).await.unwrap();
            for i in 0..5 {
                if w % 2 == 0 {
                    let events = (0..4)
                        .map(|_| NewEvent::new("Big", vec![b'x'; 12_000]))
                        .collect();
                    client
                        .append(AppendRequest::stream(
                            format!("b-{w}"),
                            ExpectedRevision::Any,
                            events,
                        ))
                        .await
                        .unwrap();
                } else {
                    let data = "y".repeat(40_000);
                    let body = format!(r#"{{"events":[{{"event_type":"Big","data":"{data}"}}]}}"#);
                    let r = http(addr, "POST", &format!("/v1/streams/h-{w}"), &[], &body).await;
                    assert_eq!(r.status, 200, "{i}: {}", r.text());
                }
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(WAIT * 3, t)
            .await
            .expect("no append waits for ever")
            .unwrap();
    }
    let log = s
        .client()
        .await
        .read_to_vec(ReadRequest::all())
        .await
        .unwrap();
    assert_eq!(log.len(), 12 * 5 * 4 + 12 * 5);
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_larger_than_a_page_arrive_whole_and_in_order() {
    let s = start().await;
    let client = s.client().await;
    for b in 0..11 {
        let mut request = AppendRequest::default();
        for i in 0..1000 {
            request.streams.push(annal_core::StreamAppend::new(
                format!("s-{:05}", b * 1000 + i),
                ExpectedRevision::NoStream,
                vec![NewEvent::new("A", b"{}".to_vec())],
            ));
        }
        client.append(request).await.unwrap();
    }
    let all = client
        .list_streams(annal_core::ListStreams::default())
        .await
        .unwrap();
    assert_eq!(all.len(), 11_000, "more than one 10,000-entry page");
    assert!(all.windows(2).all(|w| w[0].stream_id < w[1].stream_id));
    let some = client
        .list_streams(annal_core::ListStreams {
            limit: 10_200,
            after: Some("s-00099".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(some.len(), 10_200);
    assert_eq!(some[0].stream_id, "s-00100");
    assert_eq!(some.last().unwrap().stream_id, "s-10299");
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_names_the_cause_once_a_panic_poisons_the_store_and_reads_go_on() {
    use annal_engine::io::sim::SimFs;
    let fs = SimFs::new();
    let engine = annal_engine::Config::default().fs(std::sync::Arc::new(fs.clone()));
    let store = annal_engine::Store::open_with("/db", engine).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config =
        annal_server::Config::new(dir.path().join("unused"), "127.0.0.1:0".parse().unwrap());
    let server = annal_server::Server::serve(store, config).await.unwrap();
    let addr = server.local_addr();
    let append = r#"{"events":[{"event_type":"A"}]}"#;
    let r = http(addr, "POST", "/v1/streams/s-1", &[], append).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(http(addr, "GET", "/ready", &[], "").await.status, 200);

    fs.panic_in_thread("annal-writer");
    let r = http(addr, "POST", "/v1/streams/s-1", &[], append).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "poisoned", "{}", r.text());
    let r = http(addr, "GET", "/ready", &[], "").await;
    assert_eq!(r.status, 503);
    let why = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        why.contains("the writer thread panicked: injected panic"),
        "{why}"
    );
    // Reads are still served, and the health check still answers.
    let r = http(addr, "GET", "/v1/streams/s-1/events", &[], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["events"].as_array().unwrap().len(), 1);
    assert_eq!(http(addr, "GET", "/health", &[], "").await.status, 200);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_tls_key_is_refused_saying_what_to_do_before_the_store_opens() {
    let cert = self_signed();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("encrypted.pem");
    std::fs::write(
        &key,
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIFHDBOBgkqhkiG9w0BBQ0wQTApBgkqhkiG9w0BBQwwHAQI\n-----END ENCRYPTED PRIVATE KEY-----\n",
    )
    .unwrap();
    let mut config =
        annal_server::Config::new(dir.path().join("data"), "127.0.0.1:0".parse().unwrap());
    config.tls = Some(annal_server::config::TlsFiles {
        cert: cert.cert.clone(),
        key,
    });
    let e = annal_server::Server::start(config).await.err().unwrap();
    let text = format!("{e:#}");
    assert!(text.contains("holds an encrypted private key"), "{text}");
    assert!(text.contains("openssl pkey"), "{text}");
    assert!(!dir.path().join("data").exists(), "no store was opened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_keeps_gets_and_deletes_snapshots() {
    let s = start_with(|_| {}).await;
    let addr = s.addr();
    let r = http(
        addr,
        "POST",
        "/v1/streams/account-9",
        &[],
        r#"{"events":[{"event_type":"Opened"},{"event_type":"Deposited"},{"event_type":"Deposited"}]}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let put = |body: &'static str| http(addr, "POST", "/v1/streams/account-9/snapshots", &[], body);
    let r = put(r#"{"revision":1,"schema_version":2,"data":{"balance":10}}"#).await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = put(r#"{"revision":2,"data_base64":"/wAB"}"#).await;
    assert_eq!(r.status, 204, "{}", r.text());

    let r = http(addr, "GET", "/v1/streams/account-9/snapshots", &[], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(
        (v["revision"].as_u64(), v["schema_version"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(
        v["data_base64"], "/wAB",
        "data that is not JSON comes back as base64"
    );
    assert!(v["taken_at"].as_str().unwrap().ends_with('Z'), "{v}");
    let r = http(
        addr,
        "GET",
        "/v1/streams/account-9/snapshots?at_or_before=1",
        &[],
        "",
    )
    .await;
    let v = r.json();
    assert_eq!(
        (v["revision"].as_u64(), v["schema_version"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(v["data"]["balance"], 10, "JSON stays JSON");
    let r = http(
        addr,
        "GET",
        "/v1/streams/account-9/snapshots?at_or_before=0",
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 404);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no snapshot at or before revision 0"),
        "{}",
        r.text()
    );

    // Bad input is refused, naming the problem, and keeps nothing.
    for (body, status, says) in [
        (r#"{"revision":3,"data":{}}"#, 400, "is at revision 2"),
        (r#"{"revision":1}"#, 400, "neither data nor data_base64"),
        (
            r#"{"revision":1,"data":{},"data_base64":"AA=="}"#,
            400,
            "give one",
        ),
        (r#"{"revision":1,"data_base64":"%%"}"#, 400, "not base64"),
        (
            r#"{"revision":1,"data":{},"extra":1}"#,
            400,
            "unknown field",
        ),
    ] {
        let r = put(body).await;
        assert_eq!(r.status, status, "{body}: {}", r.text());
        assert!(r.text().contains(says), "{body}: {}", r.text());
    }
    let r = http(
        addr,
        "POST",
        "/v1/streams/nothing-1/snapshots",
        &[],
        r#"{"revision":0,"data":{}}"#,
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text());

    // The engine counts what it made durable (other tests of this process add to it).
    let puts = metric(addr, "annal_snapshot_writes_total{op=\"put\"}").await;
    assert!(puts >= 2.0, "{puts}");
    let r = http(addr, "DELETE", "/v1/streams/account-9/snapshots", &[], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["deleted"], 2);
    let deletes = metric(addr, "annal_snapshot_writes_total{op=\"delete\"}").await;
    assert!(deletes >= 1.0, "{deletes}");
    let r = http(addr, "GET", "/v1/streams/account-9/snapshots", &[], "").await;
    assert_eq!(r.status, 404);
    // Snapshots are no events.
    let r = http(addr, "GET", "/v1/events", &[], "").await;
    assert_eq!(r.json()["events"].as_array().unwrap().len(), 3);
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_reads_an_actors_events_within_a_time_range() {
    let s = start_with(|_| {}).await;
    let addr = s.addr();
    let client = s.client().await;
    let mut times = Vec::new();
    for i in 0..3 {
        let mut e = NewEvent::new("Noted", format!("{{\"i\":{i}}}"));
        e.metadata.actor = Some("ada".into());
        let r = client
            .append(AppendRequest::stream(
                format!("note-{i}"),
                ExpectedRevision::Any,
                vec![e, NewEvent::new("Other", b"{}".to_vec())],
            ))
            .await
            .unwrap();
        times.push(r.recorded_at);
        // The next append is recorded at a later instant.
        while annal_core::Timestamp::now() <= r.recorded_at {
            tokio::task::yield_now().await;
        }
    }
    let positions = |path: String| async move {
        let r = http(addr, "GET", &path, &[], "").await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        r.json()["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["position"].as_u64().unwrap())
            .collect::<Vec<_>>()
    };
    let t1 = times[1].to_string();
    assert_eq!(positions("/v1/events?actor=ada".into()).await, [0, 2, 4]);
    assert_eq!(
        positions(format!("/v1/events?actor=ada&since={t1}")).await,
        [2, 4]
    );
    assert_eq!(
        positions(format!("/v1/events?actor=ada&as_of={t1}")).await,
        [0, 2]
    );
    assert_eq!(
        positions(format!("/v1/events?actor=ada&since={t1}&as_of={t1}")).await,
        [2]
    );
    assert_eq!(
        positions(format!("/v1/events?since={t1}")).await,
        [2, 3, 4, 5]
    );
    // Paging with since kept: from goes on where a page ended; an earlier from does not
    // reach back past since.
    assert_eq!(
        positions(format!("/v1/events?since={t1}&from=4")).await,
        [4, 5]
    );
    assert_eq!(
        positions(format!("/v1/events?since={t1}&from=0")).await,
        [2, 3, 4, 5]
    );
    let body = format!(r#"{{"source":{{"actor":"ada"}},"since":"{t1}"}}"#);
    let r = http(addr, "POST", "/v1/read", &[], &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["events"].as_array().unwrap().len(), 2);

    for (path, says) in [
        (
            format!("/v1/streams/note-1/events?since={t1}"),
            "one stream",
        ),
        (
            format!("/v1/events?actor=ada&since={t1}&direction=backward"),
            "forward reads",
        ),
        ("/v1/events?actor=ada&since=yesterday".to_string(), "since"),
    ] {
        let r = http(addr, "GET", &path, &[], "").await;
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        assert!(r.text().contains(says), "{path}: {}", r.text());
    }
    s.server.shutdown().await.unwrap();
}
