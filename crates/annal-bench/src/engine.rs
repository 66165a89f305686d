//! The workloads against Annal's embedded engine.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use annal_core::{
    next_item, AppendRequest, EventStore, ExpectedRevision, NewEvent, ReadRequest, Source,
    SubscribeFrom, SubscribeRequest, SubscriptionItem,
};
use annal_engine::Store;

use crate::stats::{payload, percentile};
use crate::Progress;

fn expected(rev: Option<u64>) -> ExpectedRevision {
    rev.map_or(ExpectedRevision::NoStream, ExpectedRevision::Exact)
}

/// W1/W2: `writers` concurrent writers, each on its own 8 streams, appending batches of
/// `batch` events until `duration` is up. Returns events per second.
pub async fn appends(
    store: Arc<Store>,
    tag: &str,
    writers: usize,
    batch: usize,
    duration: Duration,
    progress: &Progress,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        let tag = tag.to_string();
        let progress = progress.clone();
        tasks.push(tokio::spawn(async move {
            let mut revs: [Option<u64>; 8] = [None; 8];
            let mut n = 0u64;
            let mut i = 0u64;
            while Instant::now() < deadline {
                let k = (i % 8) as usize;
                let events = (0..batch)
                    .map(|j| NewEvent::new("Deposited", payload(i * batch as u64 + j as u64)))
                    .collect();
                let r = store
                    .append(AppendRequest::stream(
                        format!("{tag}-{w}-{k}"),
                        expected(revs[k]),
                        events,
                    ))
                    .await?;
                revs[k] = Some(r.revision());
                n += batch as u64;
                i += 1;
                progress.inc(batch as u64);
            }
            Ok::<u64, anyhow::Error>(n)
        }));
    }
    crate::per_second(tasks, start).await
}

/// Fills a store with `events` events spread over `streams` streams, in batches of 100.
pub async fn fill(
    store: Arc<Store>,
    events: u64,
    streams: u64,
    progress: &Progress,
) -> anyhow::Result<()> {
    let batches = events / 100;
    let writers = 4u64;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        let progress = progress.clone();
        tasks.push(tokio::spawn(async move {
            let mut b = w;
            while b < batches {
                let events = (0..100)
                    .map(|j| NewEvent::new("Deposited", payload(b * 100 + j)))
                    .collect();
                store
                    .append(AppendRequest::stream(
                        format!("fill-{}", b % streams),
                        ExpectedRevision::Any,
                        events,
                    ))
                    .await?;
                progress.inc(100);
                b += writers;
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// W3 set-up: a stream of 10,000 events interleaved with another stream's.
pub async fn fill_w3(store: &Store) -> anyhow::Result<()> {
    for b in 0..100u64 {
        for stream in ["w3-target", "w3-noise"] {
            let events = (0..100)
                .map(|j| NewEvent::new("Deposited", payload(b * 100 + j)))
                .collect();
            store
                .append(AppendRequest::stream(stream, ExpectedRevision::Any, events))
                .await?;
        }
    }
    Ok(())
}

/// W3: reads the 10,000-event stream `reps` times. Returns events per second.
pub fn read_stream(store: &Store, reps: u32, progress: &Progress) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut n = 0u64;
    for _ in 0..reps {
        for e in store.read_iter(ReadRequest::stream("w3-target"))? {
            let e = e?;
            n += 1;
            std::hint::black_box(&e);
        }
        progress.inc(10_000);
    }
    anyhow::ensure!(n == 10_000 * u64::from(reps), "read {n} events");
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// W4: reads the whole log forward. Returns events per second.
pub fn read_all(store: &Store, expect: u64, progress: &Progress) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut n = 0u64;
    for e in store.read_iter(ReadRequest::all())? {
        let e = e?;
        std::hint::black_box(&e);
        n += 1;
        if n.is_multiple_of(65_536) {
            progress.inc(65_536);
        }
    }
    anyhow::ensure!(n == expect, "read {n} events, expected {expect}");
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// W4 a chunk at a time ([`Store::read_chunks`]). Returns events per second.
pub fn read_all_chunks(store: &Store, expect: u64, progress: &Progress) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut n = 0u64;
    for chunk in store.read_chunks(ReadRequest::all())? {
        let chunk = chunk?;
        for e in &chunk {
            std::hint::black_box(e);
        }
        n += chunk.len() as u64;
        progress.inc(chunk.len() as u64);
    }
    anyhow::ensure!(n == expect, "read {n} events, expected {expect}");
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// W6: latency from calling append to a live subscriber receiving the event, for `count`
/// events appended one at a time. Returns (p50, p99).
pub async fn live_latency(
    store: Arc<Store>,
    count: usize,
    progress: &Progress,
) -> anyhow::Result<(Duration, Duration)> {
    let mut sub = store
        .subscribe(SubscribeRequest::new(
            Source::Stream("w6-live".into()),
            SubscribeFrom::Now,
        ))
        .await?;
    match next_item(&mut sub).await {
        Some(Ok(SubscriptionItem::CaughtUp { .. })) => {}
        other => anyhow::bail!("expected the caught-up marker, got {other:?}"),
    }
    let sent: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; count]));
    let writer = {
        let (store, sent) = (store.clone(), sent.clone());
        tokio::spawn(async move {
            for i in 0..count {
                sent.lock().expect("not poisoned")[i] = Some(Instant::now());
                store
                    .append(AppendRequest::stream(
                        "w6-live",
                        ExpectedRevision::Any,
                        vec![NewEvent::new("Ping", format!("{{\"i\":{i}}}"))],
                    ))
                    .await?;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Ok::<(), anyhow::Error>(())
        })
    };
    let mut latencies = Vec::with_capacity(count);
    while latencies.len() < count {
        let item = tokio::time::timeout(Duration::from_secs(30), next_item(&mut sub))
            .await?
            .ok_or_else(|| anyhow::anyhow!("subscription ended"))??;
        let now = Instant::now();
        if let SubscriptionItem::Event(e) = item {
            let i = e.revision as usize % count;
            let at = sent.lock().expect("not poisoned")[i]
                .ok_or_else(|| anyhow::anyhow!("event {i} delivered before it was sent"))?;
            latencies.push(now - at);
            progress.inc(1);
        }
    }
    writer.await??;
    latencies.sort();
    Ok((percentile(&latencies, 50.0), percentile(&latencies, 99.0)))
}

/// The raw latency of a 256-byte append plus fdatasync on the disk holding `dir`: the floor
/// under any durable acknowledgement. Returns (p50, p99).
pub fn fsync_latency(dir: &Path, count: usize) -> anyhow::Result<(Duration, Duration)> {
    use std::io::Write;
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path)?;
    let buf = [b'x'; 256];
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        f.write_all(&buf)?;
        f.sync_data()?;
        samples.push(t.elapsed());
    }
    drop(f);
    std::fs::remove_file(&path)?;
    samples.sort();
    Ok((percentile(&samples, 50.0), percentile(&samples, 99.0)))
}

/// What W5 measures in its fresh process.
pub struct Reopened {
    pub open_secs: f64,
    /// Resident bytes before opening, right after, and once the store has settled (the
    /// checkpoint thread has built the id filter from the runs, which it does after open).
    pub rss_before: u64,
    pub rss_after: u64,
    pub rss_settled: u64,
}

/// W5, in a fresh process: opens the store and measures time and memory.
pub fn reopen_probe(dir: &Path) -> anyhow::Result<Reopened> {
    let rss_before = crate::stats::resident_bytes("self").unwrap_or(0);
    let start = Instant::now();
    let store = Store::open(dir)?;
    let open_secs = start.elapsed().as_secs_f64();
    let rss_after = crate::stats::resident_bytes("self").unwrap_or(0);
    // A checkpoint with nothing new is answered once the work queued before it is done.
    store.checkpoint_blocking()?;
    let rss_settled = crate::stats::resident_bytes("self").unwrap_or(0);
    store.close()?;
    Ok(Reopened {
        open_secs,
        rss_before,
        rss_after,
        rss_settled,
    })
}
