//! W10, consumer groups through the network: `annal serve` beside the NATS JetStream and
//! RabbitMQ servers running on this machine, each fed the same messages (about 250 bytes)
//! and drained by 1, 4 and 16 consumers that acknowledge every message on its own.
//!
//! | system | what is durable before it is acknowledged |
//! |---|---|
//! | Annal | events: fsynced before the append is answered; acks: in the groups journal, fsynced (one sync per queue of batches) before the ack is answered and before the key's next event is handed out; keys held by one member at a time, in order |
//! | NATS JetStream | a file-storage stream, a durable pull consumer with explicit acks; the server's defaults: messages and acks written, and fsynced every `sync_interval` (2 minutes), not per message; no order across consumers |
//! | RabbitMQ | a quorum queue (fsynced by its Raft log before a publisher confirm), persistent messages, publisher confirms, manual acks with a prefetch; no order across consumers |
//!
//! Throughput is messages acknowledged per second from the first consumer's start to the
//! last ack, over a backlog appended before. Latency is from the publish call to a
//! consumer receiving the message, with 4 consumers and one message in flight at a time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use annal_client::{Client, GroupArgs, GroupCall};
use annal_core::{AppendRequest, EventStore, ExpectedRevision, NewEvent, StreamAppend};

use crate::stats::{payload, percentile};
use crate::{row, Options, Progress, Report};

/// How much work W10 does.
pub(crate) struct GroupSizes {
    /// The backlog each run drains.
    pub messages: u64,
    /// Distinct keys (streams) the backlog is spread over.
    pub keys: u64,
    /// Messages timed one at a time for the latency.
    pub latency_samples: usize,
}

impl GroupSizes {
    pub(crate) fn new(quick: bool) -> Self {
        if quick {
            GroupSizes {
                messages: 20_000,
                keys: 1_000,
                latency_samples: 200,
            }
        } else {
            GroupSizes {
                messages: 200_000,
                keys: 10_000,
                latency_samples: 2_000,
            }
        }
    }
}

/// The consumer counts W10 runs.
pub(crate) const CONSUMERS: [usize; 3] = [1, 4, 16];

/// Appends the backlog: `messages` events spread round-robin over `keys` streams, 500 an
/// append.
async fn fill_annal(c: &Client, s: &GroupSizes, category: &str) -> anyhow::Result<()> {
    let mut i = 0;
    while i < s.messages {
        let mut r = AppendRequest::default();
        let end = (i + 500).min(s.messages);
        for n in i..end {
            r = r.and(StreamAppend::new(
                format!("{category}-{}", n % s.keys),
                ExpectedRevision::Any,
                vec![NewEvent::new("Job", payload(n))],
            ));
        }
        c.append(r).await?;
        i = end;
    }
    Ok(())
}

async fn create_group(c: &Client, name: &str, category: &str, start: &str) -> anyhow::Result<()> {
    let def = serde_json::json!({
        "name": name,
        "source": {"category": category},
        "start": start,
        "settings": {"max_in_flight": 256}
    });
    c.group_call(
        GroupCall::Create,
        GroupArgs {
            json: def.to_string(),
            ..GroupArgs::default()
        },
    )
    .await?;
    Ok(())
}

/// One member: takes deliveries and acks each one, many acks in flight, until `left`
/// reaches zero.
async fn annal_member(
    c: Client,
    group: String,
    left: Arc<AtomicU64>,
    p: Progress,
) -> anyhow::Result<u64> {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    let mut member = c.join_group(&group, "bench").await?;
    let mut acks = FuturesUnordered::new();
    let mut done = 0;
    loop {
        if left.load(Ordering::Relaxed) == 0 && acks.is_empty() {
            break;
        }
        tokio::select! {
            Some(r) = acks.next(), if !acks.is_empty() => {
                let r: annal_core::Result<()> = r;
                r?;
                done += 1;
                p.inc(1);
                left.fetch_sub(1, Ordering::Relaxed);
            }
            d = member.next(), if acks.len() < 512 && left.load(Ordering::Relaxed) > 0 => {
                let Some(d) = d else { break };
                let d = d?;
                acks.push(async move { d.ack().await });
            }
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    Ok(done)
}

/// Annal's acknowledged events per second with `members` members draining the backlog.
async fn annal_drain(c: &Client, s: &GroupSizes, members: usize) -> anyhow::Result<f64> {
    let group = format!("drain-{members}");
    create_group(c, &group, "job", "beginning").await?;
    let left = Arc::new(AtomicU64::new(s.messages));
    let p = Progress::new(&format!("W10 annal x{members}"), s.messages);
    let started = Instant::now();
    let tasks: Vec<_> = (0..members)
        .map(|_| {
            tokio::spawn(annal_member(
                c.clone(),
                group.clone(),
                Arc::clone(&left),
                p.clone(),
            ))
        })
        .collect();
    let mut acked = 0;
    for t in tasks {
        acked += t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    p.done();
    anyhow::ensure!(
        acked >= s.messages,
        "only {acked} of {} acknowledged",
        s.messages
    );
    c.group_call(
        GroupCall::Delete,
        GroupArgs {
            name: group,
            ..GroupArgs::default()
        },
    )
    .await?;
    Ok(s.messages as f64 / secs)
}

/// Annal's delivery latency: from the append call to a member receiving the event, one at
/// a time, 4 members.
async fn annal_latency(c: &Client, s: &GroupSizes) -> anyhow::Result<Vec<Duration>> {
    create_group(c, "latency", "live", "end").await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Instant>(1024);
    let mut members = Vec::new();
    for _ in 0..4 {
        let mut m = c.join_group("latency", "bench").await?;
        let tx = tx.clone();
        members.push(tokio::spawn(async move {
            while let Some(Ok(d)) = m.next().await {
                let _ = tx.send(Instant::now()).await;
                let _ = d.ack().await;
            }
        }));
    }
    let samples = one_at_a_time(s.latency_samples, &mut rx, |i| async move {
        c.append(AppendRequest::stream(
            format!("live-{}", i % 64),
            ExpectedRevision::Any,
            vec![NewEvent::new("Job", payload(i))],
        ))
        .await?;
        Ok(())
    })
    .await?;
    for m in members {
        m.abort();
    }
    Ok(samples)
}

/// W10's Annal figures: drain rates by member count, and latency p50 and p99.
pub(crate) struct Figures {
    pub drain: Vec<(usize, f64)>,
    pub p50: Duration,
    pub p99: Duration,
}

impl Figures {
    pub(crate) fn new(drain: Vec<(usize, f64)>, mut samples: Vec<Duration>) -> Figures {
        samples.sort();
        Figures {
            drain,
            p50: percentile(&samples, 50.0),
            p99: percentile(&samples, 99.0),
        }
    }
}

/// Times `n` messages one at a time: from calling `publish(i)` to a consumer saying (on
/// `arrivals`) that it received one.
pub(crate) async fn one_at_a_time<F, Fut>(
    n: usize,
    arrivals: &mut tokio::sync::mpsc::Receiver<Instant>,
    mut publish: F,
) -> anyhow::Result<Vec<Duration>>
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut samples = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let sent = Instant::now();
        publish(i).await?;
        let got = tokio::time::timeout(Duration::from_secs(10), arrivals.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("the consumers stopped"))?;
        samples.push(got - sent);
    }
    Ok(samples)
}

pub(crate) async fn annal(
    opts: &Options,
    s: &GroupSizes,
    dir: &std::path::Path,
) -> anyhow::Result<Figures> {
    let server = crate::net::start_annal(&opts.probe_exe, &dir.join("annal-groups"))?;
    let c = Client::connect(server.url.clone()).await?;
    let p = Progress::spinner("W10 annal backlog");
    fill_annal(&c, s, "job").await?;
    p.done();
    let mut drain = Vec::new();
    for n in CONSUMERS {
        drain.push((n, annal_drain(&c, s, n).await?));
    }
    let samples = annal_latency(&c, s).await?;
    Ok(Figures::new(drain, samples))
}

/// Adds W10's rows: Annal beside one peer.
pub(crate) fn rows(report: &mut Report, annal: &Figures, peer_name: &str, peer: Option<&Figures>) {
    for (n, rate) in &annal.drain {
        let other = peer.and_then(|p| p.drain.iter().find(|(m, _)| m == n).map(|(_, r)| *r));
        report.rows.push(row(
            &format!("W10 drain, {n} consumer(s), ack each: Annal vs {peer_name}"),
            "messages/s",
            Some(*rate),
            other,
            true,
        ));
    }
    report.rows.push(row(
        &format!("W10 publish to delivery p50, 4 consumers: Annal vs {peer_name}"),
        "ms",
        Some(crate::ms(annal.p50)),
        peer.map(|p| crate::ms(p.p50)),
        false,
    ));
    report.rows.push(row(
        &format!("W10 publish to delivery p99, 4 consumers: Annal vs {peer_name}"),
        "ms",
        Some(crate::ms(annal.p99)),
        peer.map(|p| crate::ms(p.p99)),
        false,
    ));
}
