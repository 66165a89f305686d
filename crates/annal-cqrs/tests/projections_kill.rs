//! A runner killed with SIGKILL mid-stream and started again leaves a read model equal, row
//! for row, to a fresh replay: for SQLite and PostgreSQL, on the embedded engine and
//! through a server. The runner lives in a child process (this test binary run again, on
//! the ignored test `child`); the parent kills it as its checkpoint passes marks.

mod common;

use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use annal_client::Client;
use annal_core::{AppendRequest, EventStore, ExpectedRevision, RecordedEvent, Source};
use annal_cqrs::projection::{Changes, ColumnType::*, Projection, Runner, Settings, Sink, Table};
use annal_cqrs::{to_new, Context};
use annal_engine::Store;
use common::AccountEvent;

use common::PG;
const ACCOUNTS: usize = 400;
const DEPOSITS: u64 = 40;

/// Balances, with a running count and the last position per account, so that an event
/// applied twice or lost changes a row.
struct Ledger;

impl Projection for Ledger {
    type Event = AccountEvent;

    fn name(&self) -> &str {
        "ledger"
    }

    fn source(&self) -> Source {
        Source::Category("account".into())
    }

    fn tables(&self) -> Vec<Table> {
        vec![Table::new("ledger")
            .key("id", Text)
            .column("balance", Int)
            .column("events", Int)
            .column("last_position", Int)]
    }

    fn apply(
        &self,
        e: &AccountEvent,
        r: &RecordedEvent,
        out: &mut Changes<'_>,
    ) -> Result<(), String> {
        let amount: i64 = match e {
            AccountEvent::Opened { .. } => {
                out.upsert(
                    "ledger",
                    [
                        (&*r.stream_id).into(),
                        0.into(),
                        1.into(),
                        r.position.into(),
                    ],
                );
                return Ok(());
            }
            AccountEvent::Deposited { amount } => *amount as i64,
            AccountEvent::Withdrawn { amount } => -(*amount as i64),
            AccountEvent::Closed => 0,
        };
        out.execute(
            "UPDATE {ledger} SET balance = balance + $2, events = events + 1, \
             last_position = $3 WHERE id = $1",
            [(&*r.stream_id).into(), amount.into(), r.position.into()],
        );
        Ok(())
    }
}

async fn fill<S: EventStore>(store: &S) -> u64 {
    let mut last = 0;
    for a in 0..ACCOUNTS {
        let mut events = vec![AccountEvent::Opened {
            owner: format!("o{a}"),
        }];
        events.extend((1..=DEPOSITS).map(|amount| AccountEvent::Deposited { amount }));
        last = store
            .append(AppendRequest::stream(
                format!("account-{a}"),
                ExpectedRevision::Any,
                to_new(&events, &Context::new()).unwrap(),
            ))
            .await
            .unwrap()
            .last_position;
    }
    last
}

async fn open_sink(sink: &str) -> Sink {
    match sink.split_once(':').unwrap() {
        ("sqlite", path) => Sink::sqlite(path).unwrap(),
        ("postgres", schema) => Sink::postgres(PG, schema).await.unwrap(),
        _ => unreachable!(),
    }
}

/// The child: runs the ledger from `ANNAL_KILL_STORE` into `ANNAL_KILL_SINK` in small
/// batches until it is killed or has reached `ANNAL_KILL_HEAD`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the kill tests as their child process"]
async fn child() {
    let (Ok(store), Ok(sink), Ok(head)) = (
        std::env::var("ANNAL_KILL_STORE"),
        std::env::var("ANNAL_KILL_SINK"),
        std::env::var("ANNAL_KILL_HEAD"),
    ) else {
        return;
    };
    let head: u64 = head.parse().unwrap();
    let sink = open_sink(&sink).await;
    let settings = Settings {
        batch: 25,
        ..Settings::default()
    };
    let wait = Duration::from_secs(120);
    match store.split_once(':').unwrap() {
        ("dir", dir) => {
            let store = Arc::new(Store::open(dir).unwrap());
            let running = Runner::new(store, sink, Ledger)
                .with_settings(settings)
                .spawn();
            running.wait_for(head, wait).await.unwrap();
            running.stop().await.unwrap();
        }
        (_, url) => {
            let client = Client::builder(url).connect().await.unwrap();
            let running = Runner::new(client, sink, Ledger)
                .with_settings(settings)
                .spawn();
            running.wait_for(head, wait).await.unwrap();
            running.stop().await.unwrap();
        }
    }
}

fn start_child(store: &str, sink: &str, head: u64) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("ANNAL_KILL_STORE", store)
        .env("ANNAL_KILL_SINK", sink)
        .env("ANNAL_KILL_HEAD", head.to_string())
        .spawn()
        .unwrap()
}

/// Starts the child three times, killing it with SIGKILL once its checkpoint passes each
/// mark, then lets a fourth run finish.
async fn kill_and_restart(store: &str, sink: &str, watch: &Sink, head: u64) {
    let total = head + 1;
    // Marks well before the end, so that each kill lands mid-stream.
    for mark in [total / 10, total / 4, total * 2 / 5] {
        let mut child = start_child(store, sink, head);
        watch
            .wait_for("ledger", mark, Duration::from_secs(120))
            .await
            .unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        let at = watch.checkpoint("ledger").await.unwrap().unwrap();
        assert!(at.next_position < total, "killed before the end: {at:?}");
    }
    let mut child = start_child(store, sink, head);
    assert!(child.wait().unwrap().success());
    let cp = watch.checkpoint("ledger").await.unwrap().unwrap();
    assert_eq!(cp.position(), Some(head));
}

/// The read model equals a fresh replay, row for row, and the fold of the log.
async fn equal_to_a_replay<S: EventStore + Clone + 'static>(store: S, sink: &Sink) {
    let r = Runner::new(store, sink.clone(), Ledger)
        .reconcile(false)
        .await
        .unwrap();
    assert_eq!(r.differences, vec![], "rows differ from a fresh replay");
    let rows = sink
        .query("SELECT count(*), CAST(sum(balance) AS BIGINT), CAST(sum(events) AS BIGINT) FROM ledger", &[])
        .await
        .unwrap();
    let per_account = (DEPOSITS * (DEPOSITS + 1) / 2) as i64;
    assert_eq!(rows[0][0].as_int(), Some(ACCOUNTS as i64));
    assert_eq!(rows[0][1].as_int(), Some(per_account * ACCOUNTS as i64));
    assert_eq!(
        rows[0][2].as_int(),
        Some((DEPOSITS as i64 + 1) * ACCOUNTS as i64)
    );
}

struct Sinks {
    spec: String,
    sink: Sink,
    schema: Option<common::Schema>,
    _dir: tempfile::TempDir,
}

async fn sink_of(kind: &str) -> Sinks {
    let dir = tempfile::tempdir().unwrap();
    if kind == "sqlite" {
        let path = dir.path().join("read.db");
        return Sinks {
            spec: format!("sqlite:{}", path.display()),
            sink: Sink::sqlite(&path).unwrap(),
            schema: None,
            _dir: dir,
        };
    }
    let schema = format!("annal_kill_{}_{}", std::process::id(), fastrand::u32(..));
    Sinks {
        spec: format!("postgres:{schema}"),
        sink: Sink::postgres(PG, &schema).await.unwrap(),
        schema: Some(common::Schema::new(schema)),
        _dir: dir,
    }
}

impl Sinks {
    async fn cleanup(self) {
        if let Some(s) = self.schema {
            s.drop_now().await;
        }
    }
}

async fn embedded(kind: &str) {
    let dir = tempfile::tempdir().unwrap();
    let head = fill(&Arc::new(Store::open(dir.path()).unwrap())).await;
    let s = sink_of(kind).await;
    let store = format!("dir:{}", dir.path().display());
    kill_and_restart(&store, &s.spec, &s.sink, head).await;
    equal_to_a_replay(Arc::new(Store::open(dir.path()).unwrap()), &s.sink).await;
    s.cleanup().await;
}

async fn served(kind: &str) {
    let server = common::served().await;
    let head = fill(&server.client).await;
    let s = sink_of(kind).await;
    let store = format!("url:{}", server.url());
    kill_and_restart(&store, &s.spec, &s.sink, head).await;
    equal_to_a_replay(server.client.clone(), &s.sink).await;
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_embedded_into_sqlite() {
    embedded("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_embedded_into_postgres() {
    embedded("postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_served_into_sqlite() {
    served("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_served_into_postgres() {
    served("postgres").await;
}
