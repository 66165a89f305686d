//! W8 and W9: the toolkit's write side. The guide's bank account, decided with `annal-cqrs`: commands
//! (load, decide, append) from concurrent handlers on separate accounts, and the hydration
//! of one long account; beside the same loop on PostgreSQL's `events` table, with the same
//! decider and the same JSON decoding.

use std::time::{Duration, Instant};

use annal_core::{AppendRequest, EventStore, ExpectedRevision, NewSnapshot};
use annal_cqrs::{decode, to_new, CommandHandler, Context, Decider};

use crate::pg::PgBench;
use crate::{per_second, Progress};

/// Commands each account takes: it is opened, then deposited into, then a new one starts,
/// so that every load replays a short history whatever the run's length.
const COMMANDS_PER_ACCOUNT: u64 = 20;

/// The bank account of the toolkit's guide (docs/guide.md).
#[allow(dead_code)] // the bench opens and deposits; the guide's other commands go unused
pub(crate) mod account {
    include!("../../annal-cqrs/guide/account.rs");
}
use account::{Account, AccountEvent, BankAccount, Command};

/// The `i`-th command of a handler: which account, and what.
fn nth(tag: &str, handler: usize, i: u64) -> (String, Command) {
    let account = format!("{tag}-{handler}-{}", i / COMMANDS_PER_ACCOUNT);
    let command = match i % COMMANDS_PER_ACCOUNT {
        0 => Command::Open {
            owner: "bench".into(),
        },
        k => Command::Deposit { amount: k },
    };
    (account, command)
}

/// W8 against Annal (embedded, or a client of a server): `handlers` tasks each running
/// commands on accounts of their own for `duration`. With `kept`, each handler keeps the
/// state its last command left (`with_state_cache`), so that only an account's first
/// command reads its stream. Returns commands per second.
pub async fn annal<S: EventStore + Clone + 'static>(
    store: S,
    tag: &str,
    handlers: usize,
    kept: bool,
    duration: Duration,
    progress: &Progress,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for h in 0..handlers {
        let handler = CommandHandler::new(store.clone()).with_state_cache(usize::from(kept) * 16);
        let (tag, progress) = (tag.to_string(), progress.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < deadline {
                let (account, command) = nth(&tag, h, i);
                let done = handler
                    .handle::<BankAccount>(&account, &command, &Context::new())
                    .await?;
                anyhow::ensure!(done.written == 1, "command {i} wrote {}", done.written);
                i += 1;
                progress.inc(1);
            }
            Ok::<u64, anyhow::Error>(i)
        }));
    }
    per_second(tasks, start).await
}

/// W8 against PostgreSQL: the same loop, loading with one `SELECT` of the stream and
/// appending with an `INSERT` whose unique (stream, revision) is the concurrency check.
pub async fn postgres(
    pg: &PgBench,
    tag: &str,
    handlers: usize,
    duration: Duration,
    progress: &Progress,
) -> anyhow::Result<f64> {
    let mut clients = Vec::new();
    for _ in 0..handlers {
        clients.push(pg.client().await?);
    }
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for (h, client) in clients.into_iter().enumerate() {
        let (tag, progress) = (tag.to_string(), progress.clone());
        tasks.push(tokio::spawn(async move {
            let load = prepare_fold(&client).await?;
            let insert = client
                .prepare(
                    "INSERT INTO events (stream_id, revision, event_id, event_type, data, metadata) \
                     VALUES ($1, $2, $3::text::uuid, $4, $5::text::jsonb, $6::text::jsonb)",
                )
                .await?;
            let mut i = 0u64;
            while Instant::now() < deadline {
                let (account, command) = nth(&tag, h, i);
                let (state, revision) = fold(&client, &load, &account).await?;
                let events = BankAccount::decide(&state, &command)?;
                let context = Context::new();
                let metadata = serde_json::json!({
                    "correlation_id": context.correlation_id.to_string(),
                    "causation_id": context.causation_id.to_string(),
                })
                .to_string();
                let stream = annal_cqrs::stream_id::<BankAccount>(&account);
                let first = revision.map_or(0, |r| r + 1);
                for (next, e) in (first..).zip(to_new(&events, &context)?) {
                    let data = std::str::from_utf8(&e.data)?;
                    client
                        .execute(
                            &insert,
                            &[
                                &stream,
                                &next,
                                &e.id.to_string(),
                                &e.event_type.as_str(),
                                &data,
                                &metadata,
                            ],
                        )
                        .await?;
                }
                i += 1;
                progress.inc(1);
            }
            Ok::<u64, anyhow::Error>(i)
        }));
    }
    per_second(tasks, start).await
}

/// The statement [`fold`] runs: an account's events in revision order.
async fn prepare_fold(
    client: &tokio_postgres::Client,
) -> anyhow::Result<tokio_postgres::Statement> {
    Ok(client
        .prepare(
            "SELECT revision, event_type, data::text FROM events \
             WHERE stream_id = $1 ORDER BY revision",
        )
        .await?)
}

/// An account's state and last revision, folded from PostgreSQL.
async fn fold(
    client: &tokio_postgres::Client,
    load: &tokio_postgres::Statement,
    account: &str,
) -> anyhow::Result<(Account, Option<i64>)> {
    let stream = annal_cqrs::stream_id::<BankAccount>(account);
    let rows = client.query(load, &[&stream]).await?;
    let mut state = Account::default();
    let mut revision = None;
    for row in rows {
        let (rev, ty, data): (i64, &str, &str) = (row.get(0), row.get(1), row.get(2));
        state = BankAccount::evolve(state, &decode(ty, data.as_bytes())?);
        revision = Some(rev);
    }
    Ok((state, revision))
}

/// W9 set-up: one account of `events` events, written in batches of 1,000.
pub async fn fill_long<S: EventStore>(store: &S, account: &str, events: u64) -> anyhow::Result<()> {
    let stream = annal_cqrs::stream_id::<BankAccount>(account);
    let context = Context::new();
    let mut written = 0;
    while written < events {
        let batch: Vec<AccountEvent> = (written..(written + 1000).min(events))
            .map(|i| {
                if i == 0 {
                    AccountEvent::Opened {
                        owner: "bench".into(),
                    }
                } else {
                    AccountEvent::Deposited { amount: i % 100 }
                }
            })
            .collect();
        written += batch.len() as u64;
        store
            .append(AppendRequest::stream(
                stream.as_str(),
                ExpectedRevision::Any,
                to_new(&batch, &context)?,
            ))
            .await?;
    }
    Ok(())
}

/// W9 against Annal: the median time of `reps` loads of the account. Returns milliseconds.
/// With `from_snapshot`, a snapshot of the account at its last event is kept first, and
/// every load starts from it; without, the account has none and every load replays it all.
pub async fn hydrate<S: EventStore>(
    store: S,
    account: &str,
    events: u64,
    reps: usize,
    from_snapshot: bool,
) -> anyhow::Result<f64> {
    let handler = CommandHandler::new(store);
    if from_snapshot {
        let full = handler.load::<BankAccount>(account).await?;
        let snapshot = NewSnapshot::new(
            annal_cqrs::stream_id::<BankAccount>(account),
            events - 1,
            1,
            serde_json::to_vec(&full.state)?,
        );
        handler.store().put_snapshot(snapshot).await?;
    }
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = Instant::now();
        let loaded = handler.load::<BankAccount>(account).await?;
        times.push(start.elapsed());
        let (snapshot, replayed) = match from_snapshot {
            true => (Some(events - 1), 0),
            false => (None, events),
        };
        anyhow::ensure!(
            loaded.snapshot == snapshot && loaded.replayed == replayed && loaded.state.balance > 0,
            "loaded from snapshot {:?}, replayed {}",
            loaded.snapshot,
            loaded.replayed
        );
    }
    Ok(median_ms(times))
}

/// W9 against PostgreSQL: the account written server-side, then folded `reps` times.
pub async fn hydrate_postgres(
    pg: &PgBench,
    account: &str,
    events: u64,
    reps: usize,
) -> anyhow::Result<f64> {
    let client = pg.client().await?;
    let stream = annal_cqrs::stream_id::<BankAccount>(account);
    client
        .execute(
            "INSERT INTO events (stream_id, revision, event_id, event_type, data) \
             SELECT $1, g, gen_random_uuid(), \
                    CASE WHEN g = 0 THEN 'Opened' ELSE 'Deposited' END, \
                    CASE WHEN g = 0 THEN '{\"owner\":\"bench\"}'::jsonb \
                         ELSE jsonb_build_object('amount', g % 100) END \
             FROM generate_series(0, $2::bigint - 1) g",
            &[&stream, &(events as i64)],
        )
        .await?;
    let load = prepare_fold(&client).await?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = Instant::now();
        let (state, revision) = fold(&client, &load, account).await?;
        times.push(start.elapsed());
        anyhow::ensure!(
            state.owner.is_some() && state.balance > 0 && revision == Some(events as i64 - 1),
            "folded to revision {revision:?}"
        );
    }
    Ok(median_ms(times))
}

/// W9 against PostgreSQL from a snapshot: the hand-rolled way, a `snapshots` table beside
/// `events` holding the account's state at its last event (written after
/// [`hydrate_postgres`] filled the account), loaded with the events after it, `reps` times.
pub async fn hydrate_postgres_snapshot(
    pg: &PgBench,
    account: &str,
    events: u64,
    reps: usize,
) -> anyhow::Result<f64> {
    let client = pg.client().await?;
    let stream = annal_cqrs::stream_id::<BankAccount>(account);
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS snapshots (stream_id text, revision bigint, \
             data jsonb NOT NULL, PRIMARY KEY (stream_id, revision))",
        )
        .await?;
    let all = prepare_fold(&client).await?;
    let (state, revision) = fold(&client, &all, account).await?;
    let state_json = serde_json::to_string(&state)?;
    client
        .execute(
            "INSERT INTO snapshots VALUES ($1, $2, $3::text::jsonb)",
            &[&stream, &revision, &state_json],
        )
        .await?;
    let latest = client
        .prepare(
            "SELECT revision, data::text FROM snapshots \
             WHERE stream_id = $1 ORDER BY revision DESC LIMIT 1",
        )
        .await?;
    let after = client
        .prepare(
            "SELECT revision, event_type, data::text FROM events \
             WHERE stream_id = $1 AND revision > $2 ORDER BY revision",
        )
        .await?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = Instant::now();
        let row = client.query_one(&latest, &[&stream]).await?;
        let (mut revision, data): (i64, &str) = (row.get(0), row.get(1));
        let mut state: Account = serde_json::from_str(data)?;
        for row in client.query(&after, &[&stream, &revision]).await? {
            let (rev, ty, data): (i64, &str, &str) = (row.get(0), row.get(1), row.get(2));
            state = BankAccount::evolve(state, &decode(ty, data.as_bytes())?);
            revision = rev;
        }
        times.push(start.elapsed());
        anyhow::ensure!(
            state.balance > 0 && revision == events as i64 - 1,
            "loaded to revision {revision}"
        );
    }
    Ok(median_ms(times))
}

fn median_ms(mut times: Vec<Duration>) -> f64 {
    times.sort_unstable();
    times
        .get(times.len() / 2)
        .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

/// Waits until the process `pid` has been idle (at most one clock tick of CPU in 300 ms) or
/// 30 s have passed, so that a measurement does not share the cores with the background
/// work (index merges) that the writes before it left.
pub async fn settle(pid: u32) {
    fn cpu_ticks(pid: u32) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The fields after the command name, which is in parentheses.
        let rest = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some(utime + stime)
    }
    let started = Instant::now();
    let Some(mut before) = cpu_ticks(pid) else {
        return;
    };
    while started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let Some(now) = cpu_ticks(pid) else {
            return;
        };
        if now <= before + 1 {
            return;
        }
        before = now;
    }
}
