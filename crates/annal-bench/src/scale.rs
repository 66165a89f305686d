//! W12: scale with the number of streams. A store of many streams of one event each (one
//! aggregate per order, per account), among them up to 1,000 streams of ten events spread
//! through the log, is built through the engine; then a fresh process (`annal
//! bench-scale-probe`) measures what a restart costs: the time to reopen and the resident
//! memory after it, reads of 1,000 random ten-event streams right after the reopen and of
//! the same streams again (warm), the resident memory after a checkpoint, what a checkpoint after 1,000 appends to
//! old streams writes, and the time to stop.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use annal_core::{
    AppendRequest, EventStore, ExpectedRevision, NewEvent, ReadRequest, StreamAppend,
};
use annal_engine::Store;

use crate::stats::{payload, percentile, resident_bytes};
use crate::Progress;

/// Streams of one event per append request while filling.
const PER_REQUEST: u64 = 500;

/// The most ten-event streams among the single-event ones.
const TENS: u64 = 1_000;

/// Reads of a random ten-event stream per measurement.
const READS: usize = 1_000;

/// Appends to old streams before the measured checkpoint.
const TOUCHED: u64 = 1_000;

/// The ten-event streams a store of `streams` streams holds: one in each of the first
/// requests that are multiples of the spacing.
fn tens(streams: u64) -> u64 {
    (streams / PER_REQUEST).clamp(1, TENS)
}

/// Fills `store` with `streams` streams of one event (`one-{i}`) and [`tens`] streams of ten
/// (`ten-{k}`), spread evenly through the log; four writers, 500 streams a request.
pub async fn fill(store: Arc<Store>, streams: u64, progress: &Progress) -> anyhow::Result<()> {
    let requests = streams.div_ceil(PER_REQUEST);
    let spacing = (requests / tens(streams)).max(1);
    let writers = 4u64;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (store, progress) = (store.clone(), progress.clone());
        tasks.push(tokio::spawn(async move {
            let mut r = w;
            while r < requests {
                let first = r * PER_REQUEST;
                let last = (first + PER_REQUEST).min(streams);
                let mut appends: Vec<StreamAppend> = (first..last)
                    .map(|i| {
                        StreamAppend::new(
                            format!("one-{i}"),
                            ExpectedRevision::NoStream,
                            vec![NewEvent::new("Placed", payload(i))],
                        )
                    })
                    .collect();
                if r % spacing == 0 && r / spacing < tens(streams) {
                    let k = r / spacing;
                    appends.push(StreamAppend::new(
                        format!("ten-{k}"),
                        ExpectedRevision::NoStream,
                        (0..10)
                            .map(|j| NewEvent::new("Placed", payload(j)))
                            .collect(),
                    ));
                }
                store
                    .append(AppendRequest {
                        streams: appends,
                        condition: None,
                    })
                    .await?;
                progress.inc(last - first);
                r += writers;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// The parts of the engine's memory W12 reports, in bytes (see `annal_engine::Memory`).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Parts {
    pub heads_filters_and_fences: u64,
    pub heads_in_memory_and_cache: u64,
    pub run_fences: u64,
    pub run_filters: u64,
    pub id_filter: u64,
}

impl From<annal_engine::Memory> for Parts {
    fn from(m: annal_engine::Memory) -> Parts {
        Parts {
            heads_filters_and_fences: m.heads_footers,
            heads_in_memory_and_cache: m.heads_changed + m.head_cache,
            run_fences: m.run_fences,
            run_filters: m.run_filters,
            id_filter: m.id_filter,
        }
    }
}

/// What W12 measures in its fresh process.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Scaled {
    pub open_secs: f64,
    /// Resident bytes before opening, right after, and after a checkpoint.
    pub rss_before: u64,
    pub rss_open: u64,
    pub rss_checkpointed: u64,
    /// What the engine says it holds, by part, after the reopen and after the checkpoint.
    pub parts_open: Parts,
    pub parts_checkpointed: Parts,
    /// Reading a random ten-event stream right after the reopen, then the same streams
    /// again: p50 and p99 in seconds.
    pub read_first: (f64, f64),
    pub read_warm: (f64, f64),
    /// Bytes written by the checkpoint after 1,000 appends to old streams.
    pub checkpoint_bytes: u64,
    pub checkpoint_secs: f64,
    pub stop_secs: f64,
}

/// Bytes this process has written through `write` and its kin so far.
fn written() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("wchar:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Reads the ten-event streams `picks`, one at a time: p50 and p99 seconds of a read.
fn read_tens(store: &Store, picks: &[u64]) -> anyhow::Result<(f64, f64)> {
    let mut samples = Vec::with_capacity(picks.len());
    for pick in picks {
        let id = format!("ten-{pick}");
        let t = Instant::now();
        let mut n = 0;
        for e in store.read_iter(ReadRequest::stream(id.as_str()))? {
            std::hint::black_box(e?);
            n += 1;
        }
        samples.push(t.elapsed());
        anyhow::ensure!(n == 10, "{id} holds {n} events, not 10");
    }
    samples.sort();
    let secs = |d: Duration| d.as_secs_f64();
    Ok((
        secs(percentile(&samples, 50.0)),
        secs(percentile(&samples, 99.0)),
    ))
}

/// W12, in a fresh process: reopens the store of `streams` streams in `dir` and measures.
pub fn probe(dir: &Path, streams: u64) -> anyhow::Result<Scaled> {
    // The store's reads and checkpoints block; only the appends need a runtime.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let rss_before = resident_bytes("self").unwrap_or(0);
    let start = Instant::now();
    let store = Store::open(dir)?;
    let open_secs = start.elapsed().as_secs_f64();
    let rss_open = resident_bytes("self").unwrap_or(0);
    let parts_open = store.memory().into();
    // Warm: the same streams again, their blocks and events now in the page cache.
    let picks: Vec<u64> = (0..READS).map(|_| fastrand::u64(..tens(streams))).collect();
    let read_first = read_tens(&store, &picks)?;
    let read_warm = read_tens(&store, &picks)?;
    store.checkpoint_blocking()?;
    let rss_checkpointed = resident_bytes("self").unwrap_or(0);
    let parts_checkpointed = store.memory().into();
    for _ in 0..TOUCHED / 100 {
        // A hundred different streams, spread over the whole key space.
        let base = fastrand::u64(..streams);
        let appends = (0..100)
            .map(|k| {
                let i = (base + k * (streams / 100).max(1)) % streams;
                StreamAppend::new(
                    format!("one-{i}"),
                    ExpectedRevision::Any,
                    vec![NewEvent::new("Shipped", payload(i))],
                )
            })
            .collect();
        rt.block_on(store.append(AppendRequest {
            streams: appends,
            condition: None,
        }))?;
    }
    let before = written();
    let t = Instant::now();
    store.checkpoint_blocking()?;
    let checkpoint_secs = t.elapsed().as_secs_f64();
    let checkpoint_bytes = written().saturating_sub(before);
    let t = Instant::now();
    store.close()?;
    let stop_secs = t.elapsed().as_secs_f64();
    Ok(Scaled {
        open_secs,
        rss_before,
        rss_open,
        rss_checkpointed,
        parts_open,
        parts_checkpointed,
        read_first,
        read_warm,
        checkpoint_bytes,
        checkpoint_secs,
        stop_secs,
    })
}
