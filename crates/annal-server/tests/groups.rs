//! Consumer groups through the server: defined, changed and deleted over HTTP, kept across
//! a restart, and bad input answered with errors that name the problem.

mod common;

use annal_server::{Config, Server};
use common::http;
use serde_json::json;

const JSON: &[(&str, &str)] = &[("content-type", "application/json")];

async fn post(addr: std::net::SocketAddr, path: &str, body: serde_json::Value) -> common::Reply {
    http(addr, "POST", path, JSON, &body.to_string()).await
}

#[tokio::test]
async fn groups_are_created_changed_listed_and_deleted_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::new(dir.path().join("data"), "127.0.0.1:0".parse().unwrap());
    let server = Server::start(config.clone()).await.unwrap();
    let addr = server.local_addr();
    assert!(
        !dir.path().join("data/groups").exists(),
        "a store with no group has no journal"
    );

    let r = post(
        addr,
        "/v1/groups",
        json!({
            "name": "videos",
            "source": {"category": "video"},
            "settings": {"max_attempts": 3, "on_park": "skip"}
        }),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let g = r.json();
    assert_eq!(g["definition"]["name"], "videos");
    assert_eq!(g["definition"]["settings"]["max_attempts"], 3);
    assert_eq!(g["definition"]["settings"]["on_park"], "skip");
    assert_eq!(
        g["definition"]["settings"]["max_in_flight"], 100,
        "defaults fill in"
    );
    assert_eq!(g["floor"], 0);

    // A second group starts at the end of the log.
    let c = common::TestServer::client_for(addr).await;
    use annal_core::{EventStore, ExpectedRevision, NewEvent};
    c.append(annal_core::AppendRequest::stream(
        "video-1",
        ExpectedRevision::Any,
        vec![
            NewEvent::new("Uploaded", "{}"),
            NewEvent::new("Started", "{}"),
        ],
    ))
    .await
    .unwrap();
    let r = post(
        addr,
        "/v1/groups",
        json!({"name": "late", "source": "all", "start": "end"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["floor"], 2);

    let r = http(
        addr,
        "PATCH",
        "/v1/groups/videos",
        JSON,
        &json!({"max_in_flight": 7}).to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["definition"]["settings"]["max_in_flight"], 7);
    assert_eq!(
        r.json()["definition"]["settings"]["max_attempts"],
        3,
        "the rest stays"
    );

    let list = http(addr, "GET", "/v1/groups", &[], "").await.json();
    let names: Vec<&str> = list["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["definition"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["late", "videos"]);

    server.shutdown().await.unwrap();
    let server = Server::start(config.clone()).await.unwrap();
    let addr = server.local_addr();
    let g = http(addr, "GET", "/v1/groups/videos", &[], "").await.json();
    assert_eq!(g["definition"]["settings"]["max_in_flight"], 7, "{g}");
    assert_eq!(g["definition"]["source"], json!({"category": "video"}));
    let g = http(addr, "GET", "/v1/groups/late", &[], "").await.json();
    assert_eq!(g["floor"], 2, "{g}");

    let r = http(addr, "DELETE", "/v1/groups/late", &[], "").await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = http(addr, "GET", "/v1/groups/late", &[], "").await;
    assert_eq!(r.status, 404);
    assert!(r.text().contains("consumer group 'late'"), "{}", r.text());
    server.shutdown().await.unwrap();
    let server = Server::start(config).await.unwrap();
    let list = http(server.local_addr(), "GET", "/v1/groups", &[], "")
        .await
        .json();
    assert_eq!(list["groups"].as_array().unwrap().len(), 1, "{list}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_group_requests_are_refused_with_the_problem_named() {
    let s = common::start().await;
    let addr = s.addr();
    let cases = [
        (json!({"name": "a b", "source": "all"}), "group name"),
        (
            json!({"name": "g", "source": {"stream": "video-1"}}),
            "a single stream cannot feed a group",
        ),
        (
            json!({"name": "g", "source": "all", "settings": {"max_in_flight": 0}}),
            "max_in_flight",
        ),
        (
            json!({"name": "g", "source": "all", "settings": {"retry_backoff_ms": 5000, "max_backoff_ms": 10}}),
            "retry_backoff",
        ),
        (
            json!({"name": "g", "source": "all", "settings": {"colour": "red"}}),
            "colour",
        ),
    ];
    for (body, problem) in cases {
        let r = post(addr, "/v1/groups", body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert!(r.text().contains(problem), "{body}: {}", r.text());
    }
    let r = post(addr, "/v1/groups", json!({"name": "g", "source": "all"})).await;
    assert_eq!(r.status, 201);
    let r = post(addr, "/v1/groups", json!({"name": "g", "source": "all"})).await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("exists already"), "{}", r.text());
    for (method, path, body) in [
        ("GET", "/v1/groups/nope", ""),
        ("DELETE", "/v1/groups/nope", ""),
        ("GET", "/v1/groups/nope/parked", ""),
        ("POST", "/v1/groups/nope/parked/replay", "{}"),
    ] {
        let r = http(addr, method, path, JSON, body).await;
        assert_eq!(r.status, 404, "{method} {path}: {}", r.text());
        assert!(r.text().contains("consumer group 'nope'"), "{}", r.text());
    }
    let r = post(addr, "/v1/groups/g/parked/discard", json!({"position": 9})).await;
    assert_eq!(r.status, 404);
    assert!(
        r.text().contains("parked event at position 9"),
        "{}",
        r.text()
    );
    let r = http(
        addr,
        "PATCH",
        "/v1/groups/g",
        JSON,
        &json!({"buffer": 0}).to_string(),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("buffer"), "{}", r.text());
}

#[tokio::test]
async fn groups_need_a_write_token_to_change() {
    let s = common::start_with(|c| {
        c.read_tokens = vec!["reader".into()];
        c.write_tokens = vec!["writer".into()];
    })
    .await;
    let addr = s.addr();
    let body = json!({"name": "g", "source": "all"}).to_string();
    let r = http(
        addr,
        "POST",
        "/v1/groups",
        &[
            ("content-type", "application/json"),
            ("authorization", "Bearer reader"),
        ],
        &body,
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    let r = http(
        addr,
        "POST",
        "/v1/groups",
        &[
            ("content-type", "application/json"),
            ("authorization", "Bearer writer"),
        ],
        &body,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = http(
        addr,
        "GET",
        "/v1/groups/g",
        &[("authorization", "Bearer reader")],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use annal_client::{Client, GroupArgs, GroupCall};
use annal_core::{AppendRequest, EventStore, ExpectedRevision, NewEvent};

async fn create(c: &Client, definition: serde_json::Value) -> serde_json::Value {
    let json = c
        .group_call(
            GroupCall::Create,
            GroupArgs {
                json: definition.to_string(),
                ..GroupArgs::default()
            },
        )
        .await
        .unwrap();
    serde_json::from_str(&json).unwrap()
}

async fn call(c: &Client, call: GroupCall, name: &str, position: Option<u64>) -> serde_json::Value {
    let json = c
        .group_call(
            call,
            GroupArgs {
                name: name.into(),
                position,
                ..GroupArgs::default()
            },
        )
        .await
        .unwrap();
    serde_json::from_str(&json).unwrap_or(serde_json::Value::Null)
}

async fn append(c: &Client, stream: &str, types: &[&str]) {
    let events = types.iter().map(|t| NewEvent::new(*t, "{}")).collect();
    c.append(AppendRequest::stream(stream, ExpectedRevision::Any, events))
        .await
        .unwrap();
}

async fn next(m: &mut annal_client::Member) -> annal_client::Delivery {
    tokio::time::timeout(Duration::from_secs(5), m.next())
        .await
        .expect("a delivery in time")
        .expect("the membership goes on")
        .expect("a delivery, not an error")
}

/// One handling of an event: by whom, of what, and when it began and was acknowledged.
#[derive(Debug, Clone)]
struct Handled {
    member: usize,
    stream: String,
    revision: u64,
    began: Instant,
    acked: Instant,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_hold_each_key_alone_and_handle_it_in_order() {
    let s = common::start().await;
    let c = s.client().await;
    create(&c, json!({"name": "work", "source": {"category": "job"}})).await;
    for i in 0..20 {
        append(&c, &format!("job-{i}"), &["a", "b", "c", "d", "e"]).await;
    }
    let log: Arc<Mutex<Vec<Handled>>> = Arc::default();
    let mut tasks = Vec::new();
    for m in 0..3 {
        let c = c.clone();
        let log = Arc::clone(&log);
        tasks.push(tokio::spawn(async move {
            let mut member = c.join_group("work", &format!("m{m}")).await.unwrap();
            let mut seed = 7 + m as u64;
            while let Ok(Some(d)) =
                tokio::time::timeout(Duration::from_secs(2), member.next()).await
            {
                let d = d.unwrap();
                let began = Instant::now();
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                tokio::time::sleep(Duration::from_micros(seed >> 54)).await;
                let acked = Instant::now();
                let e = d.event.clone();
                d.ack().await.unwrap();
                log.lock().unwrap().push(Handled {
                    member: m,
                    stream: e.stream_id.to_string(),
                    revision: e.revision,
                    began,
                    acked,
                });
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 100, "every event once, none twice");
    let members: std::collections::BTreeSet<usize> = log.iter().map(|h| h.member).collect();
    assert!(members.len() >= 2, "the work was shared: {members:?}");
    for i in 0..20 {
        let stream = format!("job-{i}");
        let mut of: Vec<&Handled> = log.iter().filter(|h| h.stream == stream).collect();
        of.sort_by_key(|h| h.began);
        let revisions: Vec<u64> = of.iter().map(|h| h.revision).collect();
        assert_eq!(revisions, vec![0, 1, 2, 3, 4], "{stream} in order");
        for w in of.windows(2) {
            assert!(
                w[1].began >= w[0].acked,
                "{stream}: revision {} began before revision {} was acknowledged",
                w[1].revision,
                w[0].revision
            );
        }
    }
    let g = call(&c, GroupCall::Get, "work", None).await;
    assert_eq!(g["floor"], 100, "{g}");
    assert_eq!(g["acknowledged"], 100, "{g}");
    let acks = common::metric(s.addr(), r#"annal_group_acks_total{group="work"}"#).await;
    assert_eq!(acks, 100.0);
    let lag = common::metric(s.addr(), r#"annal_group_lag_events{group="work"}"#).await;
    assert_eq!(lag, 0.0);
    let members = common::metric(s.addr(), r#"annal_group_members{group="work"}"#).await;
    assert_eq!(members, 0.0, "every member left");
}

#[tokio::test]
async fn failures_retry_then_park_and_parked_events_replay_in_order() {
    let s = common::start().await;
    let c = s.client().await;
    create(
        &c,
        json!({"name": "videos", "source": {"category": "video"},
               "settings": {"max_attempts": 2, "retry_backoff_ms": 10, "max_backoff_ms": 20}}),
    )
    .await;
    append(&c, "video-1", &["Uploaded", "Started", "Completed"]).await;
    append(&c, "video-2", &["Uploaded"]).await;
    let mut m = c.join_group("videos", "worker").await.unwrap();
    // video-1's first event fails twice: parked; video-2 goes on; video-1 waits behind it.
    let mut seen = Vec::new();
    loop {
        let d = next(&mut m).await;
        seen.push((d.event.stream_id.to_string(), d.event.revision, d.attempt));
        if d.event.stream_id == "video-1" {
            d.nack("transcoder crashed").await.unwrap();
        } else {
            d.ack().await.unwrap();
        }
        if seen.iter().filter(|s| s.0 == "video-1").count() == 2
            && seen.iter().any(|s| s.0 == "video-2")
        {
            break;
        }
    }
    assert!(
        seen.contains(&("video-1".into(), 0, 1)) && seen.contains(&("video-1".into(), 0, 2)),
        "{seen:?}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let parked = call(&c, GroupCall::Parked, "videos", None).await;
    let parked = parked["parked"].as_array().unwrap().clone();
    assert_eq!(parked.len(), 3, "{parked:?}");
    assert_eq!(parked[0]["key"], "video-1");
    assert_eq!(parked[0]["attempts"], 2);
    assert_eq!(parked[0]["member"], "worker");
    assert!(parked[0]["reason"]
        .as_str()
        .unwrap()
        .contains("transcoder crashed"));
    assert_eq!(parked[1]["waiting"], true);
    assert_eq!(parked[2]["waiting"], true);

    // Replayed, the parked event comes back first, then the ones that waited, in order.
    assert_eq!(
        call(&c, GroupCall::Replay, "videos", None).await["count"],
        1
    );
    for revision in 0..3 {
        let d = next(&mut m).await;
        assert_eq!(
            (d.event.stream_id.as_str(), d.event.revision),
            ("video-1", revision)
        );
        d.ack().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let parked = call(&c, GroupCall::Parked, "videos", None).await;
    assert_eq!(parked["parked"].as_array().unwrap().len(), 0, "{parked}");
}

#[tokio::test]
async fn skip_mode_goes_on_past_a_parked_event_and_discard_drops_it() {
    let s = common::start().await;
    let c = s.client().await;
    create(
        &c,
        json!({"name": "g", "source": "all", "settings": {"on_park": "skip"}}),
    )
    .await;
    append(&c, "order-1", &["Placed", "Paid"]).await;
    let mut m = c.join_group("g", "w").await.unwrap();
    let d = m.next().await.unwrap().unwrap();
    assert_eq!(d.event.revision, 0);
    d.park("bad payload").await.unwrap();
    let d = m.next().await.unwrap().unwrap();
    assert_eq!(d.event.revision, 1, "the key goes on");
    d.ack().await.unwrap();
    let parked = call(&c, GroupCall::Parked, "g", None).await;
    assert_eq!(parked["parked"][0]["position"], 0);
    assert_eq!(parked["parked"][0]["attempts"], 1);
    assert_eq!(call(&c, GroupCall::Discard, "g", Some(0)).await["count"], 1);
    let g = call(&c, GroupCall::Get, "g", None).await;
    assert_eq!(
        (g["parked"].clone(), g["floor"].clone()),
        (json!(0), json!(2)),
        "{g}"
    );
}

#[tokio::test]
async fn an_ack_after_the_lease_moved_is_refused_and_the_event_goes_to_another_member() {
    let s = common::start().await;
    let c = s.client().await;
    create(
        &c,
        json!({"name": "g", "source": "all",
               "settings": {"ack_timeout_ms": 200, "retry_backoff_ms": 0}}),
    )
    .await;
    append(&c, "video-9", &["Uploaded"]).await;
    let mut slow = c.join_group("g", "slow").await.unwrap();
    let first = slow.next().await.unwrap().unwrap();
    let mut fast = c.join_group("g", "fast").await.unwrap();
    // The slow member's lease runs out; the event is delivered again, maybe to either.
    let again = tokio::select! {
        d = fast.next() => d.unwrap().unwrap(),
        d = slow.next() => d.unwrap().unwrap(),
    };
    assert_eq!((again.position, again.attempt), (first.position, 2));
    let e = first.ack().await.unwrap_err();
    assert!(
        matches!(e, annal_core::Error::InvalidArgument { .. }),
        "{e:?}"
    );
    assert!(
        e.to_string().contains("lease") || e.to_string().contains("stale"),
        "{e}"
    );
    again.ack().await.unwrap();
    let e = again.ack().await.unwrap_err();
    assert!(e.to_string().contains("not in flight"), "{e}");
}

#[tokio::test]
async fn a_member_that_leaves_or_is_lost_gives_its_keys_to_the_others() {
    let s = common::start().await;
    let c = s.client().await;
    create(
        &c,
        json!({"name": "g", "source": "all", "settings": {"member_timeout_ms": 300}}),
    )
    .await;
    append(&c, "a-1", &["x", "y"]).await;
    let mut first = c.join_group("g", "first").await.unwrap();
    let held = first.next().await.unwrap().unwrap();
    assert_eq!(held.event.revision, 0);
    let mut second = c.join_group("g", "second").await.unwrap();
    first.leave();
    let d = tokio::time::timeout(Duration::from_secs(5), second.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (d.event.revision, d.attempt),
        (0, 1),
        "a leave is no failed attempt"
    );
    d.ack().await.unwrap();
    let d = second.next().await.unwrap().unwrap();
    assert_eq!(d.event.revision, 1);
    d.ack().await.unwrap();
    let g = call(&c, GroupCall::Get, "g", None).await;
    assert!(g["rebalances"].as_u64().unwrap() >= 3, "{g}");
    assert_eq!(g["members"].as_array().unwrap().len(), 1, "{g}");
}

/// The requests of a hand-driven member: a join, then nothing (no heartbeat).
struct Silent(Option<annal_proto::ConsumeRequest>);

impl futures_core::Stream for Silent {
    type Item = annal_proto::ConsumeRequest;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        match self.0.take() {
            Some(join) => std::task::Poll::Ready(Some(join)),
            None => std::task::Poll::Pending,
        }
    }
}

#[tokio::test]
async fn a_member_that_stops_heartbeating_is_lost_and_its_event_counts_a_failed_attempt() {
    let s = common::start().await;
    let c = s.client().await;
    create(
        &c,
        json!({"name": "g", "source": "all", "settings": {"member_timeout_ms": 300, "retry_backoff_ms": 0}}),
    )
    .await;
    append(&c, "video-3", &["Uploaded"]).await;
    let mut raw = annal_proto::event_store_client::EventStoreClient::connect(s.url.clone())
        .await
        .unwrap();
    let join = annal_proto::ConsumeRequest {
        kind: Some(annal_proto::consume_request::Kind::Join(
            annal_proto::JoinGroup {
                group: "g".into(),
                member: "hung".into(),
            },
        )),
    };
    let mut hung = raw.consume(Silent(Some(join))).await.unwrap().into_inner();
    let mut got_delivery = false;
    for _ in 0..2 {
        let m = hung.message().await.unwrap().unwrap();
        got_delivery |= matches!(
            m.kind,
            Some(annal_proto::consume_response::Kind::Deliveries(_))
        );
    }
    assert!(got_delivery, "the hung member got the event");
    // The lost member is told so, and its stream ends.
    let mut told = None;
    while let Some(m) = hung.message().await.transpose() {
        if let Err(status) = m {
            told = Some(status);
            break;
        }
    }
    let told = told.expect("the lost member is told");
    assert!(told.message().contains("was lost"), "{told:?}");
    let mut healthy = c.join_group("g", "healthy").await.unwrap();
    let d = next(&mut healthy).await;
    assert_eq!(
        d.attempt, 2,
        "the lost member's delivery was a failed attempt"
    );
    d.ack().await.unwrap();
    let g = call(&c, GroupCall::Get, "g", None).await;
    let names: Vec<&str> = g["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["healthy"], "{g}");
}

/// The `data` of the last SSE event named `name` in `text`.
fn sse_data(text: &str, name: &str) -> serde_json::Value {
    let at = text.rfind(&format!("event: {name}\n")).expect("the event");
    let line = text[at..]
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .expect("its data");
    serde_json::from_str(line).unwrap()
}

#[tokio::test]
async fn a_member_over_http_takes_deliveries_as_sse_and_acks_by_request() {
    let s = common::start().await;
    let addr = s.addr();
    let c = s.client().await;
    create(
        &c,
        json!({"name": "web", "source": "all", "settings": {"on_park": "skip"}}),
    )
    .await;
    append(&c, "order-7", &["Placed", "Paid", "Shipped"]).await;
    let mut sse = common::Sse::open(addr, "/v1/groups/web/consume?member=browser", &[]).await;
    let text = sse.until("event: delivery").await;
    let joined = sse_data(&text, "joined");
    let member = joined["member"].as_u64().unwrap();
    assert_eq!(joined["max_in_flight"], 100);
    let d = sse_data(&text, "delivery");
    assert_eq!(d["event"]["event_type"], "Placed");
    assert_eq!(d["attempt"], 1);
    let settle =
        |d: &serde_json::Value| json!({"position": d["position"], "epoch": d["epoch"]}).to_string();
    let ack = format!("/v1/groups/web/members/{member}/ack");
    let r = http(addr, "POST", &ack, JSON, &settle(&d)).await;
    assert_eq!(r.status, 204, "{}", r.text());
    // The same ack again: settled already.
    let r = http(addr, "POST", &ack, JSON, &settle(&d)).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("not in flight"), "{}", r.text());

    let text = sse.until("\"Paid\"").await;
    let d = sse_data(&text, "delivery");
    assert_eq!(d["event"]["event_type"], "Paid");
    let nack = format!("/v1/groups/web/members/{member}/nack");
    let body = json!({"position": d["position"], "epoch": d["epoch"], "reason": "card declined", "park": true});
    let r = http(addr, "POST", &nack, JSON, &body.to_string()).await;
    assert_eq!(r.status, 204, "{}", r.text());
    let text = sse.until("\"Shipped\"").await;
    let d = sse_data(&text, "delivery");
    let r = http(addr, "POST", &ack, JSON, &settle(&d)).await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = http(
        addr,
        "POST",
        &format!("/v1/groups/web/members/{member}/heartbeat"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());

    let parked = http(addr, "GET", "/v1/groups/web/parked", &[], "")
        .await
        .json();
    assert_eq!(parked["parked"][0]["reason"], "card declined");
    assert_eq!(parked["parked"][0]["member"], "browser");
    let g = http(addr, "GET", "/v1/groups/web", &[], "").await.json();
    assert_eq!(g["members"][0]["name"], "browser");

    // Closing the stream leaves the group.
    drop(sse);
    let started = std::time::Instant::now();
    loop {
        let g = http(addr, "GET", "/v1/groups/web", &[], "").await.json();
        if g["members"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{g}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = http(addr, "POST", &ack, JSON, &settle(&d)).await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.text().contains("member"), "{}", r.text());
    let r = http(
        addr,
        "POST",
        "/v1/groups/web/members/x/ack",
        JSON,
        &settle(&d),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
}

/// The requests of a member that heartbeats and never reads what it is sent.
struct Greedy {
    join: Option<annal_proto::ConsumeRequest>,
    beat: tokio::time::Interval,
}

impl futures_core::Stream for Greedy {
    type Item = annal_proto::ConsumeRequest;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        if let Some(join) = self.join.take() {
            return std::task::Poll::Ready(Some(join));
        }
        self.beat.poll_tick(cx).map(|_| {
            Some(annal_proto::ConsumeRequest {
                kind: Some(annal_proto::consume_request::Kind::Heartbeat(
                    annal_proto::Empty {},
                )),
            })
        })
    }
}

#[tokio::test]
async fn a_member_that_takes_and_never_acks_holds_up_no_other_key_and_loses_its_leases() {
    let s = common::start().await;
    let c = s.client().await;
    create(
        &c,
        json!({"name": "g", "source": "all",
               "settings": {"max_in_flight": 5, "ack_timeout_ms": 300, "retry_backoff_ms": 0, "max_attempts": 100}}),
    )
    .await;
    for i in 0..20 {
        append(&c, &format!("s-{i}"), &["a", "b"]).await;
    }
    let mut raw = annal_proto::event_store_client::EventStoreClient::connect(s.url.clone())
        .await
        .unwrap();
    let join = annal_proto::ConsumeRequest {
        kind: Some(annal_proto::consume_request::Kind::Join(
            annal_proto::JoinGroup {
                group: "g".into(),
                member: "greedy".into(),
            },
        )),
    };
    let greedy = Greedy {
        join: Some(join),
        beat: tokio::time::interval(Duration::from_millis(50)),
    };
    // It joins first and takes its fill, then never reads nor acks again.
    let _greedy = raw.consume(greedy).await.unwrap().into_inner();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let g = call(&c, GroupCall::Get, "g", None).await;
    assert_eq!(g["members"][0]["in_flight"], 5, "{g}");

    let started = Instant::now();
    let mut healthy = c.join_group("g", "healthy").await.unwrap();
    let mut done = std::collections::BTreeSet::new();
    while done.len() < 40 {
        let d = next(&mut healthy).await;
        done.insert(d.position);
        d.ack().await.unwrap();
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "the healthy member took {took:?}"
    );
    let g = call(&c, GroupCall::Get, "g", None).await;
    assert_eq!(g["floor"], 40, "{g}");
    assert!(
        g["redelivered"].as_u64().unwrap() >= 5,
        "the greedy member's leases moved: {g}"
    );
}

#[tokio::test]
async fn groups_and_members_are_bounded_and_the_refusal_names_the_setting() {
    let s = common::start_with(|c| c.limits.max_groups = 2).await;
    let c = s.client().await;
    create(
        &c,
        json!({"name": "a", "source": "all", "settings": {"max_members": 1}}),
    )
    .await;
    create(&c, json!({"name": "b", "source": "all"})).await;
    let e = c
        .group_call(
            GroupCall::Create,
            GroupArgs {
                json: json!({"name": "c", "source": "all"}).to_string(),
                ..GroupArgs::default()
            },
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("max_groups"), "{e}");
    let _one = c.join_group("a", "one").await.unwrap();
    let e = c.join_group("a", "two").await.err().unwrap();
    assert!(e.to_string().contains("max_members"), "{e}");
    let r = http(
        s.addr(),
        "GET",
        "/v1/groups/a/consume?member=three",
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("max_members"), "{}", r.text());
}

#[tokio::test]
async fn keyed_by_correlation_a_transaction_is_held_alone_across_its_streams() {
    let s = common::start().await;
    let c = s.client().await;
    create(
        &c,
        json!({"name": "tx", "source": "all", "settings": {"key_by": "correlation"}}),
    )
    .await;
    let (x, y) = (annal_core::Uuid::new_v4(), annal_core::Uuid::new_v4());
    let with = |corr: annal_core::Uuid, t: &str| {
        NewEvent::new(t, "{}").with_metadata(annal_core::Metadata {
            correlation_id: Some(corr),
            ..Default::default()
        })
    };
    for (stream, corr, t) in [
        ("order-1", x, "Placed"),
        ("payment-1", x, "Charged"),
        ("order-2", y, "Placed"),
    ] {
        c.append(AppendRequest::stream(
            stream,
            ExpectedRevision::Any,
            vec![with(corr, t)],
        ))
        .await
        .unwrap();
    }
    let mut a = c.join_group("tx", "a").await.unwrap();
    let mut b = c.join_group("tx", "b").await.unwrap();
    // Two deliveries go out: x's first event and y's; x's second waits for its first.
    let first = next(&mut a).await;
    let second =
        tokio::select! { d = b.next() => d.unwrap().unwrap(), d = a.next() => d.unwrap().unwrap() };
    let mut got = [
        first.event.stream_id.to_string(),
        second.event.stream_id.to_string(),
    ];
    got.sort();
    assert_eq!(got, ["order-1", "order-2"]);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), b.next())
            .await
            .is_err()
            && tokio::time::timeout(Duration::from_millis(10), a.next())
                .await
                .is_err(),
        "payment-1 shares x with order-1, which is not acknowledged"
    );
    let x_first = if first.event.stream_id == "order-1" {
        first
    } else {
        second
    };
    x_first.ack().await.unwrap();
    let third =
        tokio::select! { d = b.next() => d.unwrap().unwrap(), d = a.next() => d.unwrap().unwrap() };
    assert_eq!(third.event.stream_id, "payment-1");
}

#[tokio::test]
async fn a_member_outlives_the_body_timeout_of_appends() {
    let s = common::start_with(|c| c.limits.body_timeout = Duration::from_millis(200)).await;
    let c = s.client().await;
    create(&c, json!({"name": "g", "source": "all"})).await;
    let mut m = c.join_group("g", "patient").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    append(&c, "late-1", &["Arrived"]).await;
    let d = next(&mut m).await;
    d.ack().await.unwrap();
    let g = call(&c, GroupCall::Get, "g", None).await;
    assert_eq!(g["members"][0]["name"], "patient", "{g}");
}

#[tokio::test]
async fn an_ack_from_before_a_change_never_settles_a_delivery_after_it() {
    let s = common::start().await;
    let addr = s.addr();
    let c = s.client().await;
    create(&c, json!({"name": "g", "source": "all"})).await;
    append(&c, "video-5", &["Uploaded", "Started"]).await;
    let mut first = common::Sse::open(addr, "/v1/groups/g/consume?member=a", &[]).await;
    let text = first.until("event: delivery").await;
    let old_member = sse_data(&text, "joined")["member"].as_u64().unwrap();
    let old = sse_data(&text, "delivery");
    // The group is changed: its task starts again, and the event is delivered anew.
    let r = http(
        addr,
        "PATCH",
        "/v1/groups/g",
        JSON,
        &json!({"max_in_flight": 10}).to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mut second = common::Sse::open(addr, "/v1/groups/g/consume?member=b", &[]).await;
    let text = second.until("event: delivery").await;
    let new_member = sse_data(&text, "joined")["member"].as_u64().unwrap();
    let new = sse_data(&text, "delivery");
    assert_eq!(new["position"], old["position"]);
    assert_ne!(
        new_member, old_member,
        "member ids are not reused across the group's tasks"
    );
    // The late ack of the first member, for the same position, names a member that is gone.
    let body = json!({"position": old["position"], "epoch": old["epoch"]}).to_string();
    let r = http(
        addr,
        "POST",
        &format!("/v1/groups/g/members/{old_member}/ack"),
        JSON,
        &body,
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text());
    let g = http(addr, "GET", "/v1/groups/g", &[], "").await.json();
    assert_eq!(g["in_flight"], 1, "the new delivery is still held: {g}");
    drop(first);
    drop(second);
}
