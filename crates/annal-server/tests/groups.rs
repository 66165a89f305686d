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
