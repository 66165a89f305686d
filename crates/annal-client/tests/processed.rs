//! The processed-events helper against a real PostgreSQL: a member that crashes after its
//! effect commits and before its ack gets the event again, and the event has no second
//! effect.

#![cfg(feature = "postgres")]

use annal_client::{processed, Client, GroupArgs, GroupCall};
use annal_core::{AppendRequest, EventStore, ExpectedRevision, NewEvent};
use annal_server::{Config, Server};
use tokio_postgres::NoTls;

async fn pg(dbname: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 user=postgres dbname={dbname}"),
        NoTls,
    )
    .await
    .expect("PostgreSQL on 127.0.0.1:5432");
    tokio::spawn(conn);
    c
}

#[tokio::test]
async fn a_redelivered_event_has_no_second_effect() {
    let db = format!("annal_processed_{}", std::process::id());
    let admin = pg("postgres").await;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db}"))
        .await
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .unwrap();
    let mut store = pg(&db).await;
    processed::ensure_table(&store).await.unwrap();
    processed::ensure_table(&store).await.unwrap();
    store
        .batch_execute("CREATE TABLE effects (stream text, revision bigint)")
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(Config::new(
        dir.path().join("data"),
        "127.0.0.1:0".parse().unwrap(),
    ))
    .await
    .unwrap();
    let c = Client::connect(format!("http://{}", server.local_addr()))
        .await
        .unwrap();
    c.group_call(
        GroupCall::Create,
        GroupArgs {
            json: r#"{"name":"fx","source":{"category":"video"}}"#.into(),
            ..GroupArgs::default()
        },
    )
    .await
    .unwrap();
    for v in 0..10 {
        let events = (0..20).map(|_| NewEvent::new("Step", "{}")).collect();
        c.append(AppendRequest::stream(
            format!("video-{v}"),
            ExpectedRevision::Any,
            events,
        ))
        .await
        .unwrap();
    }

    let (mut effects, mut skipped, mut handled) = (0, 0, 0);
    'member: loop {
        let mut member = c.join_group("fx", "worker").await.unwrap();
        while let Ok(Some(d)) =
            tokio::time::timeout(std::time::Duration::from_secs(1), member.next()).await
        {
            let d = d.unwrap();
            handled += 1;
            let tx = store.transaction().await.unwrap();
            if processed::claim(&tx, "worker", &d.event).await.unwrap() {
                tx.execute(
                    "INSERT INTO effects VALUES ($1, $2)",
                    &[&d.event.stream_id.as_str(), &(d.event.revision as i64)],
                )
                .await
                .unwrap();
                tx.commit().await.unwrap();
                effects += 1;
            } else {
                skipped += 1;
            }
            if handled % 17 == 0 {
                // Crash between the commit and the ack: the event comes back.
                member.leave();
                continue 'member;
            }
            d.ack().await.unwrap();
        }
        break;
    }
    assert_eq!(effects, 200);
    assert!(skipped >= 10, "{skipped} redeliveries skipped");
    let row = store
        .query_one(
            "SELECT count(*), count(DISTINCT (stream, revision)) FROM effects",
            &[],
        )
        .await
        .unwrap();
    let (all, distinct): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!((all, distinct), (200, 200), "every event's effect once");
    let first = {
        let mut r = c
            .read(annal_core::ReadRequest::stream("video-0").limit(1))
            .await
            .unwrap();
        annal_core::next_item(&mut r).await.unwrap().unwrap()
    };
    assert!(processed::handled(&store, "worker", first.id)
        .await
        .unwrap());
    assert!(!processed::handled(&store, "another", first.id)
        .await
        .unwrap());
    drop(store);
    server.shutdown().await.unwrap();
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .await
        .unwrap();
}
