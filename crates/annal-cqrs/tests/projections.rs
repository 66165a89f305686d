//! Projections into SQLite and PostgreSQL, on the embedded engine and through a client of a
//! server: every check runs all four ways. Read models are checked against a fold of the
//! log itself, so an event applied twice or skipped shows as a wrong balance.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use annal_core::{
    AppendRequest, EventStore, EventStoreExt, ExpectedRevision, ReadRequest, RecordedEvent, Source,
};
use annal_cqrs::projection::{
    Changes, ColumnType::*, DifferenceKind, OnFailure, Phase, Projection, ProjectionError, Runner,
    Settings, Sink, Table, Value,
};
use annal_cqrs::{decode_recorded, to_new, Context, Upcasters};
use common::AccountEvent;

const WAIT: Duration = Duration::from_secs(30);

/// Balances per account: `{name}_rows` holds (id, owner, balance, events).
struct Balances {
    name: String,
    table: String,
    version: u32,
    deposit: String,
    /// A deposit of exactly this amount is refused, this many times (`u32::MAX`: always).
    refuse: Option<(u64, Arc<AtomicU32>)>,
    /// A deposit of exactly this amount makes SQL the sink refuses.
    bad_sql: Option<u64>,
    /// How much a deposit counts (version 2 counts cents).
    scale: u64,
    applied: Arc<AtomicUsize>,
}

impl Balances {
    fn new(name: &str) -> Self {
        let table = format!("{name}_rows");
        Balances {
            name: name.to_string(),
            deposit: format!(
                "UPDATE {{{table}}} SET balance = balance + $2, events = events + 1 WHERE id = $1"
            ),
            table,
            version: 1,
            refuse: None,
            bad_sql: None,
            scale: 1,
            applied: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl Projection for Balances {
    type Event = AccountEvent;

    fn name(&self) -> &str {
        &self.name
    }

    fn version(&self) -> u32 {
        self.version
    }

    fn source(&self) -> Source {
        Source::Category("account".into())
    }

    fn tables(&self) -> Vec<Table> {
        vec![Table::new(&self.table)
            .key("id", Text)
            .column("owner", Text)
            .column("balance", Int)
            .column("events", Int)
            .index("by_owner", &["owner"])]
    }

    fn apply(
        &self,
        event: &AccountEvent,
        recorded: &RecordedEvent,
        out: &mut Changes<'_>,
    ) -> Result<(), String> {
        self.applied.fetch_add(1, Ordering::SeqCst);
        let id = Value::from(&*recorded.stream_id);
        match event {
            AccountEvent::Opened { owner } => {
                out.upsert(&self.table, [id, owner.into(), 0.into(), 1.into()])
            }
            AccountEvent::Deposited { amount } => {
                if let Some((bad, left)) = &self.refuse {
                    if amount == bad
                        && left
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .is_ok()
                    {
                        return Err(format!("a deposit of {amount} is refused"));
                    }
                }
                if self.bad_sql == Some(*amount) {
                    out.execute(
                        format!("INSERT INTO {{{}}} (id) VALUES (NULL)", self.table),
                        [],
                    );
                    return Ok(());
                }
                out.execute(self.deposit.clone(), [id, (amount * self.scale).into()])
            }
            AccountEvent::Withdrawn { amount } => out.execute(
                format!(
                    "UPDATE {{{}}} SET balance = balance - $2, events = events + 1 WHERE id = $1",
                    self.table
                ),
                [id, (amount * self.scale).into()],
            ),
            AccountEvent::Closed => out.delete(&self.table, [id]),
        }
        Ok(())
    }
}

type Rows = BTreeMap<String, (String, i64, i64)>;

/// The read model a fold of the log gives, skipping deposits of the amounts in `skip`.
async fn expected<S: EventStore>(store: &S, scale: i64, skip: &[u64]) -> Rows {
    let mut rows = Rows::new();
    let events = store
        .read_to_vec(ReadRequest::source(Source::Category("account".into())))
        .await
        .unwrap();
    for r in events {
        for e in decode_recorded::<AccountEvent>(&r, &Upcasters::new()).unwrap() {
            let id = r.stream_id.to_string();
            match e {
                AccountEvent::Opened { owner } => {
                    rows.insert(id, (owner, 0, 1));
                }
                AccountEvent::Deposited { amount } if !skip.contains(&amount) => {
                    let row = rows.get_mut(&id).unwrap();
                    row.1 += amount as i64 * scale;
                    row.2 += 1;
                }
                AccountEvent::Deposited { .. } => {}
                AccountEvent::Withdrawn { amount } => {
                    let row = rows.get_mut(&id).unwrap();
                    row.1 -= amount as i64 * scale;
                    row.2 += 1;
                }
                AccountEvent::Closed => {
                    rows.remove(&id);
                }
            }
        }
    }
    rows
}

async fn rows(sink: &Sink, table: &str) -> Rows {
    sink.query(
        &format!("SELECT id, owner, balance, events FROM {table}"),
        &[],
    )
    .await
    .unwrap()
    .into_iter()
    .map(|r| {
        let text = |v: &Value| v.as_text().unwrap().to_string();
        (
            text(&r[0]),
            (text(&r[1]), r[2].as_int().unwrap(), r[3].as_int().unwrap()),
        )
    })
    .collect()
}

/// Appends to accounts `first..first+n`: an opening, then `deposits` deposits of
/// 1, 2, 3... and a withdrawal of 1; every fifth account is closed. Returns the last
/// position.
async fn activity<S: EventStore>(store: &S, first: usize, n: usize, deposits: u64) -> u64 {
    let mut last = 0;
    for a in first..first + n {
        let mut events = vec![AccountEvent::Opened {
            owner: format!("owner{}", a % 7),
        }];
        events.extend((1..=deposits).map(|amount| AccountEvent::Deposited { amount }));
        events.push(AccountEvent::Withdrawn { amount: 1 });
        if a % 5 == 4 {
            events.push(AccountEvent::Closed);
        }
        let r = store
            .append(AppendRequest::stream(
                format!("account-{a}"),
                ExpectedRevision::Any,
                to_new(&events, &Context::new()).unwrap(),
            ))
            .await
            .unwrap();
        last = r.last_position;
    }
    last
}

/// A sink of a test's own: a SQLite file in a temporary folder, or a PostgreSQL schema that
/// is dropped at the end.
pub struct TestSink {
    pub sink: Sink,
    schema: Option<common::Schema>,
    _dir: Option<tempfile::TempDir>,
}

impl TestSink {
    async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        TestSink {
            sink: Sink::sqlite(dir.path().join("read.db")).unwrap(),
            schema: None,
            _dir: Some(dir),
        }
    }

    async fn postgres() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let schema = format!(
            "annal_t{}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst),
            fastrand::u32(..)
        );
        TestSink {
            sink: Sink::postgres(PG, &schema).await.unwrap(),
            schema: Some(common::Schema::new(schema)),
            _dir: None,
        }
    }

    /// Another handle on the same read models (another process would open one).
    async fn reopen(&self) -> Sink {
        match (&self.schema, &self._dir) {
            (Some(s), _) => Sink::postgres(PG, s.name()).await.unwrap(),
            (None, Some(d)) => Sink::sqlite(d.path().join("read.db")).unwrap(),
            _ => unreachable!(),
        }
    }

    async fn cleanup(self) {
        if let Some(s) = self.schema {
            s.drop_now().await;
        }
    }
}

use common::PG;

/// Emits each check `async fn name<S>(store: S, sink: &TestSink)` four ways: the embedded
/// engine or a server, into SQLite or PostgreSQL.
macro_rules! every_way {
    ($($name:ident),* $(,)?) => {
        mod embedded_sqlite { $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let e = $crate::common::embedded();
                let s = $crate::TestSink::sqlite().await;
                super::$name(e.store.clone(), &s).await;
                s.cleanup().await;
            }
        )* }
        mod embedded_postgres { $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let e = $crate::common::embedded();
                let s = $crate::TestSink::postgres().await;
                super::$name(e.store.clone(), &s).await;
                s.cleanup().await;
            }
        )* }
        mod served_sqlite { $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let e = $crate::common::served().await;
                let s = $crate::TestSink::sqlite().await;
                super::$name(e.client.clone(), &s).await;
                s.cleanup().await;
            }
        )* }
        mod served_postgres { $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let e = $crate::common::served().await;
                let s = $crate::TestSink::postgres().await;
                super::$name(e.client.clone(), &s).await;
                s.cleanup().await;
            }
        )* }
    };
}

every_way!(
    history_then_live_then_a_restart_apply_each_event_once,
    two_runners_of_one_projection_never_both_apply_a_batch,
    a_new_version_is_rebuilt_in_a_shadow_copy_while_the_live_one_answers,
    a_failing_event_stops_the_runner_where_it_is,
    skipped_events_are_recorded_and_the_rest_applied,
    retries_get_past_a_passing_failure,
    reconciliation_finds_missing_extra_and_different_rows_and_repairs_them,
    read_your_writes_waits_for_the_position,
    a_stop_is_heard_while_history_is_still_coming,
    a_stop_is_heard_while_a_retry_waits,
);

/// A retry that would wait an hour does not hold a stop: neither an event the projection
/// refuses nor one the sink refuses. The event stays unapplied and unrecorded.
async fn a_stop_is_heard_while_a_retry_waits<S>(store: S, t: &TestSink)
where
    S: EventStore + Clone + 'static,
{
    activity(&store, 0, 3, 5).await;
    for (name, in_the_sink) in [("waiting", false), ("waiting_sink", true)] {
        let mut p = Balances::new(name);
        let refusals = Arc::new(AtomicU32::new(u32::MAX));
        match in_the_sink {
            true => p.bad_sql = Some(3),
            false => p.refuse = Some((3, refusals.clone())),
        }
        let running = Runner::new(store.clone(), t.sink.clone(), p)
            .with_settings(Settings {
                on_failure: OnFailure::Retry {
                    attempts: 5,
                    backoff: Duration::from_secs(3600),
                },
                ..Settings::default()
            })
            .spawn();
        // The event at fault (the deposit of 3, position 3) has been tried once.
        let mut status = running.watch();
        match in_the_sink {
            true => {
                status.wait_for(|s| s.applied >= 3).await.unwrap();
            }
            false => {
                while refusals.load(Ordering::SeqCst) == u32::MAX {
                    tokio::task::yield_now().await;
                }
            }
        }
        tokio::time::timeout(WAIT, running.stop())
            .await
            .unwrap_or_else(|_| panic!("{name}: the stop waited for the retry"))
            .unwrap();
        let cp = t.sink.checkpoint(name).await.unwrap().unwrap();
        assert!(cp.next_position <= 3, "{name}: at {}", cp.next_position);
        assert!(t.sink.failures(name).await.unwrap().is_empty());
    }
}

async fn a_stop_is_heard_while_history_is_still_coming<S>(store: S, t: &TestSink)
where
    S: EventStore + Clone + 'static,
{
    let head = activity(&store, 0, 100, 20).await;
    let running = Runner::new(store.clone(), t.sink.clone(), Balances::new("halted"))
        .with_settings(Settings {
            batch: 1,
            ..Settings::default()
        })
        .spawn();
    let mut status = running.watch();
    status.wait_for(|s| s.applied >= 10).await.unwrap();
    running.stop().await.unwrap();
    let cp = t.sink.checkpoint("halted").await.unwrap().unwrap();
    assert!(
        cp.next_position > 0 && cp.next_position < head,
        "stopped mid-history, not at {} of {head}",
        cp.next_position
    );
}

async fn history_then_live_then_a_restart_apply_each_event_once<S>(store: S, t: &TestSink)
where
    S: EventStore + Clone + 'static,
{
    activity(&store, 0, 30, 8).await;
    let running = Runner::new(store.clone(), t.sink.clone(), Balances::new("main")).spawn();
    let head = activity(&store, 30, 10, 3).await;
    running.wait_for(head, WAIT).await.unwrap();
    // The checkpoint can reach the head before the runner takes the subscription's
    // caught-up marker: the phase follows soon after.
    let mut status = running.watch();
    tokio::time::timeout(WAIT, status.wait_for(|s| s.phase == Phase::Live))
        .await
        .expect("the runner goes live once it has caught up")
        .unwrap();
    assert_eq!(
        rows(&t.sink, "main_rows").await,
        expected(&store, 1, &[]).await
    );
    running.stop().await.unwrap();

    // Written while no runner ran; a new one starts from the checkpoint, small batches.
    let head = activity(&store, 40, 10, 5).await;
    let running = Runner::new(store.clone(), t.sink.clone(), Balances::new("main"))
        .with_settings(Settings {
            batch: 7,
            ..Settings::default()
        })
        .spawn();
    running.wait_for(head, WAIT).await.unwrap();
    assert_eq!(
        rows(&t.sink, "main_rows").await,
        expected(&store, 1, &[]).await
    );
    let cp = t.sink.checkpoint("main").await.unwrap().unwrap();
    assert_eq!(cp.position(), Some(head));
    assert_eq!((cp.version, cp.generation, cp.rebuild), (1, 0, None));
    running.stop().await.unwrap();
}

async fn two_runners_of_one_projection_never_both_apply_a_batch<S>(store: S, t: &TestSink)
where
    S: EventStore + Clone + 'static,
{
    let other = t.reopen().await;
    let small = || Settings {
        batch: 3,
        ..Settings::default()
    };
    let a = Runner::new(store.clone(), t.sink.clone(), Balances::new("twice"))
        .with_settings(small())
        .spawn();
    let b = Runner::new(store.clone(), other, Balances::new("twice"))
        .with_settings(small())
        .spawn();
    let head = activity(&store, 0, 40, 6).await;
    a.wait_for(head, WAIT).await.unwrap();
    b.wait_for(head, WAIT).await.unwrap();
    assert_eq!(
        rows(&t.sink, "twice_rows").await,
        expected(&store, 1, &[]).await
    );
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

async fn a_new_version_is_rebuilt_in_a_shadow_copy_while_the_live_one_answers<S>(
    store: S,
    t: &TestSink,
) where
    S: EventStore + Clone + 'static,
{
    let head = activity(&store, 0, 20, 5).await;
    let v1 = Runner::new(store.clone(), t.sink.clone(), Balances::new("versioned")).spawn();
    v1.wait_for(head, WAIT).await.unwrap();
    v1.stop().await.unwrap();
    let v1_rows = expected(&store, 1, &[]).await;

    // Version 2 counts cents; its apply is held on the 50th event, mid-rebuild.
    let (hold, held) = std::sync::mpsc::channel::<()>();
    let (reached, at_hold) = tokio::sync::oneshot::channel::<()>();
    let gate = std::sync::Mutex::new(Some((held, reached)));
    struct Held {
        inner: Balances,
        gate: std::sync::Mutex<
            Option<(
                std::sync::mpsc::Receiver<()>,
                tokio::sync::oneshot::Sender<()>,
            )>,
        >,
    }
    impl Projection for Held {
        type Event = AccountEvent;
        fn name(&self) -> &str {
            self.inner.name()
        }
        fn version(&self) -> u32 {
            2
        }
        fn source(&self) -> Source {
            self.inner.source()
        }
        fn tables(&self) -> Vec<Table> {
            self.inner.tables()
        }
        fn apply(
            &self,
            e: &AccountEvent,
            r: &RecordedEvent,
            out: &mut Changes<'_>,
        ) -> Result<(), String> {
            if r.position == 50 {
                if let Some((held, reached)) = self.gate.lock().unwrap().take() {
                    reached.send(()).unwrap();
                    held.recv().unwrap();
                }
            }
            self.inner.apply(e, r, out)
        }
    }
    let mut inner = Balances::new("versioned");
    inner.scale = 100;
    let v2 = Runner::new(store.clone(), t.sink.clone(), Held { inner, gate })
        .with_settings(Settings {
            batch: 10,
            ..Settings::default()
        })
        .spawn();
    at_hold.await.unwrap();
    // Mid-rebuild: the live table still answers, with version 1's rows.
    assert_eq!(v2.status().phase, Phase::Rebuilding);
    assert_eq!(rows(&t.sink, "versioned_rows").await, v1_rows);
    let cp = t.sink.checkpoint("versioned").await.unwrap().unwrap();
    assert_eq!(cp.version, 1);
    assert!(
        matches!(cp.rebuild, Some((2, n)) if n > 0 && n <= 50),
        "{cp:?}"
    );
    hold.send(()).unwrap();

    let head = activity(&store, 20, 3, 2).await;
    v2.wait_for(head, WAIT).await.unwrap();
    assert_eq!(
        rows(&t.sink, "versioned_rows").await,
        expected(&store, 100, &[]).await
    );
    let cp = t.sink.checkpoint("versioned").await.unwrap().unwrap();
    assert_eq!((cp.version, cp.generation, cp.rebuild), (2, 1, None));
    v2.stop().await.unwrap();

    // Version 1 code no longer runs against version 2's tables.
    let e = Runner::new(store.clone(), t.sink.clone(), Balances::new("versioned"))
        .run()
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ProjectionError::VersionAhead {
                stored: 2,
                ours: 1,
                ..
            }
        ),
        "{e}"
    );

    // A rebuild on demand swaps a second time, with the same rows.
    let mut again = Balances::new("versioned");
    again.version = 2;
    again.scale = 100;
    let cp = Runner::new(store.clone(), t.sink.clone(), again)
        .rebuild()
        .await
        .unwrap();
    assert_eq!(
        (cp.version, cp.generation, cp.position()),
        (2, 2, Some(head))
    );
    assert_eq!(
        rows(&t.sink, "versioned_rows").await,
        expected(&store, 100, &[]).await
    );
}

async fn a_failing_event_stops_the_runner_where_it_is<S>(store: S, t: &TestSink)
where
    S: EventStore + Clone + 'static,
{
    let head = activity(&store, 0, 10, 5).await;
    let mut p = Balances::new("strict");
    p.refuse = Some((4, Arc::new(AtomicU32::new(u32::MAX))));
    let e = Runner::new(store.clone(), t.sink.clone(), p)
        .run()
        .await
        .unwrap_err();
    // Account 0's deposit of 4 is its fifth event, at position 4.
    let ProjectionError::Failed {
        position, error, ..
    } = &e
    else {
        panic!("{e}")
    };
    assert_eq!(
        (*position, error.as_str()),
        (4, "a deposit of 4 is refused")
    );
    let cp = t.sink.checkpoint("strict").await.unwrap().unwrap();
    assert_eq!(
        cp.next_position, 4,
        "the checkpoint stays just before the event"
    );
    let failures = t.sink.failures("strict").await.unwrap();
    assert_eq!(failures.len(), 1);
    assert_eq!(
        (
            failures[0].position,
            failures[0].action.as_str(),
            failures[0].stream_id.as_str()
        ),
        (4, "stopped", "account-0")
    );
    assert!(head > 4);
}

async fn skipped_events_are_recorded_and_the_rest_applied<S>(store: S, t: &TestSink)
where
    S: EventStore + Clone + 'static,
{
    let head = activity(&store, 0, 12, 5).await;
    let mut p = Balances::new("lenient");
    p.refuse = Some((2, Arc::new(AtomicU32::new(u32::MAX))));
    // The sink refuses the SQL a deposit of 4 makes: the batch it is in is applied event by
    // event, and only that one is left out.
    p.bad_sql = Some(4);
    let running = Runner::new(store.clone(), t.sink.clone(), p)
        .with_settings(Settings {
            on_failure: OnFailure::Skip,
            ..Settings::default()
        })
        .spawn();
    running.wait_for(head, WAIT).await.unwrap();
    assert_eq!(
        rows(&t.sink, "lenient_rows").await,
        expected(&store, 1, &[2, 4]).await
    );
    let failures = t.sink.failures("lenient").await.unwrap();
    assert_eq!(failures.len(), 24, "two per account");
    assert!(failures.iter().all(|f| f.action == "skipped"));
    assert!(failures.iter().any(|f| f.error.contains("refused")));
    assert!(
        failures
            .iter()
            .any(|f| f.error.to_lowercase().contains("null")),
        "the sink's own error is kept: {failures:?}"
    );
    assert_eq!(running.status().failed, 24);
    running.stop().await.unwrap();
}

async fn retries_get_past_a_passing_failure<S>(store: S, t: &TestSink)
where
    S: EventStore + Clone + 'static,
{
    let head = activity(&store, 0, 3, 5).await;
    let mut p = Balances::new("patient");
    let refusals = Arc::new(AtomicU32::new(2));
    p.refuse = Some((3, refusals.clone()));
    let running = Runner::new(store.clone(), t.sink.clone(), p)
        .with_settings(Settings {
            on_failure: OnFailure::Retry {
                attempts: 3,
                backoff: Duration::from_millis(1),
            },
            ..Settings::default()
        })
        .spawn();
    running.wait_for(head, WAIT).await.unwrap();
    assert_eq!(refusals.load(Ordering::SeqCst), 0);
    assert_eq!(
        rows(&t.sink, "patient_rows").await,
        expected(&store, 1, &[]).await
    );
    assert!(t.sink.failures("patient").await.unwrap().is_empty());
    running.stop().await.unwrap();
}

async fn reconciliation_finds_missing_extra_and_different_rows_and_repairs_them<S>(
    store: S,
    t: &TestSink,
) where
    S: EventStore + Clone + 'static,
{
    let head = activity(&store, 0, 15, 4).await;
    let running = Runner::new(store.clone(), t.sink.clone(), Balances::new("checked")).spawn();
    running.wait_for(head, WAIT).await.unwrap();
    let clean = Runner::new(store.clone(), t.sink.clone(), Balances::new("checked"))
        .reconcile(false)
        .await
        .unwrap();
    assert_eq!(clean.differences, vec![]);
    assert_eq!(clean.next_position, head + 1);

    let s = &t.sink;
    s.execute(
        "UPDATE checked_rows SET balance = 999 WHERE id = 'account-1'",
        &[],
    )
    .await
    .unwrap();
    s.execute("DELETE FROM checked_rows WHERE id = 'account-2'", &[])
        .await
        .unwrap();
    s.execute(
        "INSERT INTO checked_rows (id, owner, balance, events) VALUES ('account-x', 'x', 1, 1)",
        &[],
    )
    .await
    .unwrap();
    let found = Runner::new(store.clone(), t.sink.clone(), Balances::new("checked"))
        .reconcile(false)
        .await
        .unwrap();
    let kinds: Vec<(String, DifferenceKind)> = found
        .differences
        .iter()
        .map(|d| (d.key[0].as_text().unwrap().to_string(), d.kind.clone()))
        .collect();
    assert_eq!(
        kinds,
        [
            (
                "account-1".into(),
                DifferenceKind::Different(vec!["balance".into()])
            ),
            ("account-2".into(), DifferenceKind::Missing),
            ("account-x".into(), DifferenceKind::Extra),
        ]
    );
    assert_eq!(
        found.differences[0].live.as_ref().unwrap()[2],
        Value::Int(999)
    );
    assert_ne!(
        rows(s, "checked_rows").await,
        expected(&store, 1, &[]).await
    );

    // The runner goes on while the repair replays.
    let head = activity(&store, 15, 5, 2).await;
    let repaired = Runner::new(store.clone(), t.sink.clone(), Balances::new("checked"))
        .reconcile(true)
        .await
        .unwrap();
    assert_eq!(repaired.differences.len(), 3);
    running.wait_for(head, WAIT).await.unwrap();
    assert_eq!(
        rows(s, "checked_rows").await,
        expected(&store, 1, &[]).await
    );
    let after = Runner::new(store.clone(), t.sink.clone(), Balances::new("checked"))
        .reconcile(false)
        .await
        .unwrap();
    assert_eq!(after.differences, vec![]);
    // The check copy is gone.
    assert!(s
        .query("SELECT 1 FROM checked_rows__check", &[])
        .await
        .is_err());
    running.stop().await.unwrap();
}

async fn read_your_writes_waits_for_the_position<S>(store: S, t: &TestSink)
where
    S: EventStore + Clone + 'static,
{
    let running = Runner::new(store.clone(), t.sink.clone(), Balances::new("fresh")).spawn();
    let elsewhere = t.reopen().await;
    for a in 0..20 {
        let head = activity(&store, a, 1, 1).await;
        running.wait_for(head, WAIT).await.unwrap();
        let id = format!("account-{a}");
        let row = t
            .sink
            .query(
                "SELECT balance FROM fresh_rows WHERE id = $1",
                &[Value::Text(id.clone())],
            )
            .await
            .unwrap();
        // Every fifth account is closed, and its row deleted.
        let wanted = if a % 5 == 4 {
            vec![]
        } else {
            vec![vec![Value::Int(0)]]
        };
        assert_eq!(row, wanted, "{id}");
        elsewhere.wait_for("fresh", head, WAIT).await.unwrap();
    }
    // An event of another category moves the checkpoint too, though nothing is applied.
    let other = store
        .append(AppendRequest::stream(
            "other-1",
            ExpectedRevision::Any,
            to_new(&[AccountEvent::Closed], &Context::new()).unwrap(),
        ))
        .await
        .unwrap();
    running.wait_for(other.last_position, WAIT).await.unwrap();
    let e = running
        .wait_for(other.last_position + 1, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("did not reach position"), "{e}");
    running.stop().await.unwrap();
}
