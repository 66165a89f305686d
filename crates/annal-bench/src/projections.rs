//! W11: the toolkit's read side. A balances projection of the guide's bank account rebuilt
//! from a log of bank-account events into SQLite and into PostgreSQL, beside a naive
//! projector that commits each event (with its checkpoint) in its own transaction; and the
//! lag of a live projection, from an append to its row being visible, under W1's load of
//! sixteen single-event writers.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use annal_core::{AppendRequest, EventStore, ExpectedRevision, RecordedEvent, Source};
use annal_cqrs::projection::{Changes, ColumnType, Projection, Runner, Settings, Sink, Table};
use annal_cqrs::{to_new, Context};
use annal_engine::Store;

use crate::commands::account::AccountEvent;
use crate::stats::percentile;
use crate::Progress;

/// Events per account: an opening and deposits.
const EVENTS_PER_ACCOUNT: u64 = 20;

/// Balances per account.
pub struct Balances;

impl Projection for Balances {
    type Event = AccountEvent;

    fn name(&self) -> &str {
        "balances"
    }

    fn source(&self) -> Source {
        Source::Category("bench".into())
    }

    fn tables(&self) -> Vec<Table> {
        vec![Table::new("balances")
            .key("id", ColumnType::Text)
            .column("owner", ColumnType::Text)
            .column("balance", ColumnType::Int)
            .column("events", ColumnType::Int)]
    }

    fn apply(
        &self,
        e: &AccountEvent,
        r: &RecordedEvent,
        out: &mut Changes<'_>,
    ) -> Result<(), String> {
        let id = (&*r.stream_id).into();
        match e {
            AccountEvent::Opened { owner } => {
                out.upsert("balances", [id, owner.into(), 0.into(), 1.into()])
            }
            AccountEvent::Deposited { amount } => out.execute(
                "UPDATE {balances} SET balance = balance + $2, events = events + 1 WHERE id = $1",
                [id, (*amount).into()],
            ),
            AccountEvent::Withdrawn { amount } => out.execute(
                "UPDATE {balances} SET balance = balance - $2, events = events + 1 WHERE id = $1",
                [id, (*amount).into()],
            ),
            AccountEvent::Closed => out.delete("balances", [id]),
        }
        Ok(())
    }
}

/// Appends `events` bank-account events (accounts of 20), from 8 writers.
pub async fn fill(store: Arc<Store>, events: u64, progress: &Progress) -> anyhow::Result<u64> {
    let accounts = events / EVENTS_PER_ACCOUNT;
    let writers = 8;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (store, progress) = (store.clone(), progress.clone());
        tasks.push(tokio::spawn(async move {
            let mut a = w;
            while a < accounts {
                let mut batch = vec![AccountEvent::Opened {
                    owner: format!("owner-{}", a % 1000),
                }];
                batch.extend(
                    (1..EVENTS_PER_ACCOUNT).map(|amount| AccountEvent::Deposited { amount }),
                );
                store
                    .append(AppendRequest::stream(
                        format!("bench-{a}"),
                        ExpectedRevision::NoStream,
                        to_new(&batch, &Context::new())?,
                    ))
                    .await?;
                progress.inc(EVENTS_PER_ACCOUNT);
                a += writers;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(accounts * EVENTS_PER_ACCOUNT)
}

/// Rebuilds the balances into an empty `sink`: events per second.
pub async fn rebuild(
    store: Arc<Store>,
    sink: Sink,
    events: u64,
    progress: &Progress,
) -> anyhow::Result<f64> {
    let runner = Runner::new(store, sink, Balances);
    let mut status = runner.watch();
    let p = progress.clone();
    let shown = tokio::spawn(async move {
        while status.changed().await.is_ok() {
            let s = status.borrow_and_update().clone();
            p.set(s.rebuilding.unwrap_or(s.checkpoint));
        }
    });
    let start = Instant::now();
    let cp = runner.rebuild().await?;
    let secs = start.elapsed().as_secs_f64();
    shown.abort();
    anyhow::ensure!(
        cp.next_position >= events,
        "the rebuild stopped at {} of {events}",
        cp.next_position
    );
    Ok(events as f64 / secs)
}

/// The naive projector: the same projection with a transaction per event, for `duration`
/// from the start of the log: events per second.
pub async fn naive(
    store: Arc<Store>,
    sink: Sink,
    duration: Duration,
    progress: &Progress,
) -> anyhow::Result<f64> {
    let running = Runner::new(store, sink, Balances)
        .with_settings(Settings {
            batch: 1,
            ..Settings::default()
        })
        .spawn();
    let start = Instant::now();
    let mut status = running.watch();
    let p = progress.clone();
    let _ = tokio::time::timeout(duration, async move {
        while status.changed().await.is_ok() {
            let applied = status.borrow_and_update().applied;
            p.set(applied);
        }
    })
    .await;
    let applied = running.status().applied;
    let secs = start.elapsed().as_secs_f64();
    running.stop().await?;
    Ok(applied as f64 / secs)
}

/// The lag of a live projection into `sink` while `writers` append single events for
/// `duration`: from the moment an append is sent to the moment the runner's checkpoint
/// passes its position (its row committed). Returns (p50, p99).
pub async fn live_lag(
    store: Arc<Store>,
    sink: Sink,
    writers: usize,
    duration: Duration,
    progress: &Progress,
) -> anyhow::Result<(Duration, Duration)> {
    let running = Runner::new(store.clone(), sink, Balances).spawn();
    if let Some(head) = store.head().await? {
        running.wait_for(head, Duration::from_secs(600)).await?;
    }
    // When the checkpoint was seen passing each value.
    let seen: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let mut status = running.watch();
    let watcher = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while status.changed().await.is_ok() {
                let at = status.borrow_and_update().checkpoint;
                seen.lock().unwrap().push((at, Instant::now()));
            }
        })
    };
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (store, progress) = (store.clone(), progress.clone());
        tasks.push(tokio::spawn(async move {
            let mut sent = Vec::new();
            let mut i = 0u64;
            while Instant::now() < deadline {
                let event = if i == 0 {
                    AccountEvent::Opened {
                        owner: "lag".into(),
                    }
                } else {
                    AccountEvent::Deposited { amount: 1 }
                };
                let start = Instant::now();
                let r = store
                    .append(AppendRequest::stream(
                        format!("bench-lag{w}"),
                        ExpectedRevision::Any,
                        to_new(&[event], &Context::new())?,
                    ))
                    .await?;
                sent.push((r.last_position, start));
                progress.inc(1);
                i += 1;
            }
            anyhow::Ok(sent)
        }));
    }
    let mut sent = Vec::new();
    for t in tasks {
        sent.extend(t.await??);
    }
    let last = sent.iter().map(|s| s.0).max().unwrap_or(0);
    running.wait_for(last, Duration::from_secs(60)).await?;
    running.stop().await?;
    watcher.await.ok();
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let mut lags: Vec<Duration> = sent
        .iter()
        .filter_map(|(position, start)| {
            let i = seen.partition_point(|(at, _)| *at <= *position);
            seen.get(i)
                .map(|(_, t)| t.saturating_duration_since(*start))
        })
        .collect();
    anyhow::ensure!(!lags.is_empty(), "no append was seen applied");
    lags.sort();
    Ok((percentile(&lags, 50.0), percentile(&lags, 99.0)))
}
