//! Annal's benchmarks: named workloads run against the embedded engine and, in the same run
//! on the same machine, against PostgreSQL with the classic hand-rolled `events` table.
//! Every figure is durable: Annal acknowledges after fdatasync, PostgreSQL runs with
//! `synchronous_commit = on`.
//!
//! | workload | what                                                                  |
//! |----------|-----------------------------------------------------------------------|
//! | W1       | single-event appends from 1, 16 and 64 writers, each on its own streams |
//! | W2       | batches of 100 events from 1 and 16 writers                           |
//! | W3       | reading one stream of 10,000 events                                   |
//! | W4       | reading the whole log forward (10 million events; 200,000 in quick)   |
//! | W5       | reopening that store (100,000 streams): time and resident memory      |
//! | W6       | latency from append to delivery to a live subscriber, beside the raw fsync latency of the same disk |
//! | W8       | commands (load, decide, append) of a bank account from 1 and 16 handlers on accounts of their own, embedded and through the server |
//! | W9       | loading one bank account of 100,000 events (10,000 in quick), replayed whole and from a snapshot at its last event, embedded and through the server |
//! | W11      | a projection rebuilt into SQLite and PostgreSQL (1 million events; 100,000 in quick) beside a naive projector committing each event alone, and a live projection's lag from append to row under W1's 16 writers |
//! | W12      | scale: a store of many single-event streams reopened in a fresh process: time, memory, reads, an incremental checkpoint, the stop (`run_scale`, see `scale.rs`) |
//! | W10      | consumer groups through the network beside NATS JetStream and RabbitMQ (`run_groups`, see `groups.rs`) |

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use annal_cqrs::projection::Sink;
use annal_engine::Store;
use serde_json::json;

mod brokers;
mod commands;
mod engine;
mod groups;
pub mod net;
mod pg;
mod projections;
mod scale;
pub mod stats;

pub use engine::{reopen_probe, Reopened};
pub use scale::{probe as scale_probe, Scaled};

/// How a benchmark run is set up.
#[derive(Debug, Clone)]
pub struct Options {
    /// A smoke run of a minute or two instead of the full workloads.
    pub quick: bool,
    /// PostgreSQL to compare with.
    pub pg_url: String,
    /// Where the stores go (a temporary folder when `None`).
    pub dir: Option<PathBuf>,
    /// Which workloads to run (`W1` ... `W7`); all when empty.
    pub workloads: Vec<String>,
    /// The `annal` binary, run as a fresh process for W5 and as the server for the network
    /// workloads.
    pub probe_exe: PathBuf,
    /// The UmaDB server for the network workloads (`umadb` on the PATH when `None`).
    pub umadb: Option<PathBuf>,
    /// The NATS server (with JetStream) W10 compares with.
    pub nats_url: String,
    /// The RabbitMQ server W10 compares with.
    pub amqp_url: String,
}

struct Sizes {
    append_secs: f64,
    w9_events: u64,
    w3_reps: u32,
    w4_events: u64,
    w4_streams: u64,
    w6_events: usize,
    w11_events: u64,
    w11_naive_secs: f64,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                append_secs: 1.5,
                w9_events: 10_000,
                w3_reps: 5,
                w4_events: 200_000,
                w4_streams: 2_000,
                w6_events: 300,
                w11_events: 100_000,
                w11_naive_secs: 1.5,
            }
        } else {
            Sizes {
                append_secs: 6.0,
                w9_events: 100_000,
                w3_reps: 30,
                w4_events: 10_000_000,
                w4_streams: 100_000,
                w6_events: 2_000,
                w11_events: 1_000_000,
                w11_naive_secs: 5.0,
            }
        }
    }
}

/// A progress bar on standard error (hidden when it is not a terminal).
#[derive(Clone)]
pub struct Progress(indicatif::ProgressBar);

impl Progress {
    fn new(label: &str, total: u64) -> Progress {
        let bar = indicatif::ProgressBar::new(total).with_style(
            indicatif::ProgressStyle::with_template(
                "{prefix:>28} {bar:30} {human_pos}/{human_len} {per_sec} {elapsed}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_prefix(label.to_string());
        Progress(bar)
    }
    fn spinner(label: &str) -> Progress {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_prefix(label.to_string());
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix:>28} {spinner} {human_pos} {per_sec} {elapsed}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress(bar)
    }
    pub fn inc(&self, n: u64) {
        self.0.inc(n);
    }
    pub fn set(&self, n: u64) {
        self.0.set_position(n);
    }
    fn done(&self) {
        self.0.finish_and_clear();
    }
}

/// One row of the report.
#[derive(Debug, Clone)]
pub struct Row {
    pub workload: String,
    pub unit: String,
    pub annal: Option<f64>,
    /// The peer measured in the same run (PostgreSQL, or UmaDB through the network).
    pub peer: Option<f64>,
    /// True for throughputs, false for times and sizes.
    pub higher_is_better: bool,
}

impl Row {
    /// How many times better Annal is than PostgreSQL.
    pub fn ratio(&self) -> Option<f64> {
        let (a, p) = (self.annal?, self.peer?);
        if a <= 0.0 || p <= 0.0 {
            return None;
        }
        Some(if self.higher_is_better { a / p } else { p / a })
    }
}

/// What a run measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub machine: String,
    /// The peer's short name, for the table's header.
    pub peer_name: String,
    /// The peer's version and settings; `None` when it did not answer.
    pub peer: Option<String>,
    pub quick: bool,
    pub rows: Vec<Row>,
}

/// What tasks that each return a count did, per second since `start`.
pub(crate) async fn per_second(
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<u64>>>,
    start: std::time::Instant,
) -> anyhow::Result<f64> {
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

fn row(workload: &str, unit: &str, annal: Option<f64>, peer: Option<f64>, higher: bool) -> Row {
    Row {
        workload: workload.into(),
        unit: unit.into(),
        annal,
        peer,
        higher_is_better: higher,
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown cpu".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or_else(
            || "?".into(),
            |kb| format!("{:.0} GiB", kb as f64 / 1048576.0),
        );
    format!("{cores} cores ({cpu}), {mem} memory")
}

fn wants(opts: &Options, w: &str) -> bool {
    opts.workloads.is_empty() || opts.workloads.iter().any(|x| x.eq_ignore_ascii_case(w))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Where a run keeps its stores: the given folder, or a temporary one here (removed when the
/// guard drops).
fn work_dir(opts: &Options) -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
    Ok(match &opts.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            (d.clone(), None)
        }
        None => {
            let tmp = tempfile::Builder::new()
                .prefix("annal-bench")
                .tempdir_in(".")?;
            (tmp.path().to_path_buf(), Some(tmp))
        }
    })
}

/// Runs the whole-stack workloads through the network: `annal serve` beside the UmaDB
/// server (see [`net`]).
pub async fn run_network(opts: &Options) -> anyhow::Result<Report> {
    let umadb = net::find_umadb(opts.umadb.clone())?;
    let (dir, _guard) = work_dir(opts)?;
    let mut report = Report {
        machine: machine(),
        quick: opts.quick,
        ..Report::default()
    };
    net::run(opts, &umadb, &dir, &mut report).await?;
    Ok(report)
}

/// Runs W12: fills a store with `streams` single-event streams through the engine, then
/// measures it from a fresh process (`annal bench-scale-probe`, see [`scale`]).
pub async fn run_scale(opts: &Options, streams: u64) -> anyhow::Result<Report> {
    anyhow::ensure!(
        streams >= 1_000,
        "W12 needs at least 1,000 streams, not {streams}"
    );
    let (dir, _guard) = work_dir(opts)?;
    let mut report = Report {
        machine: machine(),
        peer_name: "peer".into(),
        peer: Some("none: W12 measures Annal alone".into()),
        quick: opts.quick,
        ..Report::default()
    };
    let store_dir = dir.join("scale");
    let size = |path: &Path| -> u64 {
        fn walk(p: &Path) -> u64 {
            match std::fs::metadata(p) {
                Ok(m) if m.is_dir() => std::fs::read_dir(p)
                    .map(|d| d.flatten().map(|e| walk(&e.path())).sum())
                    .unwrap_or(0),
                Ok(m) => m.len(),
                Err(_) => 0,
            }
        }
        walk(path)
    };
    {
        let store = Arc::new(Store::open(&store_dir)?);
        let p = Progress::new("W12 filling", streams);
        let start = std::time::Instant::now();
        scale::fill(store.clone(), streams, &p).await?;
        let secs = start.elapsed().as_secs_f64();
        p.done();
        let p = Progress::spinner("W12 closing the filled store");
        Arc::try_unwrap(store)
            .map_err(|_| anyhow::anyhow!("store still shared"))?
            .close()?;
        p.done();
        report.rows.push(row(
            &format!("W12 fill {streams} single-event streams, 500 a request"),
            "events/s",
            Some(streams as f64 / secs),
            None,
            true,
        ));
    }
    let on_disk = size(&store_dir);
    let p = Progress::spinner("W12 reopening in a fresh process");
    let out = std::process::Command::new(&opts.probe_exe)
        .arg("bench-scale-probe")
        .arg(&store_dir)
        .arg(streams.to_string())
        .output()?;
    p.done();
    anyhow::ensure!(
        out.status.success(),
        "the scale probe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: Scaled = serde_json::from_slice(&out.stdout)?;
    let mib = |b: u64| b as f64 / 1048576.0;
    let mut add = |name: &str, unit: &str, v: f64| {
        report.rows.push(row(name, unit, Some(v), None, false));
    };
    add("W12 store size on disk", "MiB", mib(on_disk));
    add(
        &format!("W12 reopen {streams} streams"),
        "ms",
        s.open_secs * 1000.0,
    );
    add("W12 resident memory after reopen", "MiB", mib(s.rss_open));
    add(
        "W12 resident memory after a checkpoint",
        "MiB",
        mib(s.rss_checkpointed),
    );
    add(
        "    of which the process before opening",
        "MiB",
        mib(s.rss_before),
    );
    for (when, parts) in [
        ("after reopen", &s.parts_open),
        ("after a checkpoint", &s.parts_checkpointed),
    ] {
        for (part, bytes) in [
            (
                "heads files' filters and fences",
                parts.heads_filters_and_fences,
            ),
            (
                "heads changed and the heads cache",
                parts.heads_in_memory_and_cache,
            ),
            ("index runs' fences", parts.run_fences),
            ("index runs' filters kept", parts.run_filters),
            ("the id filter", parts.id_filter),
        ] {
            add(&format!("    {when}: {part}"), "MiB", mib(bytes));
        }
    }
    for (when, (p50, p99)) in [("right after reopen", s.read_first), ("warm", s.read_warm)] {
        for (q, v) in [("p50", p50), ("p99", p99)] {
            add(
                &format!("W12 read a 10-event stream {when}, {q}"),
                "ms",
                v * 1000.0,
            );
        }
    }
    add(
        "W12 checkpoint after 1,000 appends to old streams, written",
        "MiB",
        mib(s.checkpoint_bytes),
    );
    add(
        "W12 checkpoint after 1,000 appends to old streams",
        "ms",
        s.checkpoint_secs * 1000.0,
    );
    add("W12 stop", "ms", s.stop_secs * 1000.0);
    Ok(report)
}

/// Runs W10, consumer groups through the network: `annal serve` beside the NATS JetStream
/// and RabbitMQ servers on this machine (see [`groups`]).
pub async fn run_groups(opts: &Options) -> anyhow::Result<Report> {
    let (dir, _guard) = work_dir(opts)?;
    let sizes = groups::GroupSizes::new(opts.quick);
    let mut report = Report {
        machine: machine(),
        peer_name: "peer".into(),
        quick: opts.quick,
        ..Report::default()
    };
    let annal = groups::annal(opts, &sizes, &dir).await?;
    let mut peers = Vec::new();
    match brokers::nats(&opts.nats_url, &sizes).await {
        Ok((about, figures)) => peers.push(("NATS JetStream", about, Some(figures))),
        Err(e) => {
            eprintln!(
                "NATS at {} did not answer ({e:#}): no NATS figures.",
                opts.nats_url
            );
            peers.push(("NATS JetStream", "did not answer".into(), None));
        }
    }
    match brokers::rabbitmq(&opts.amqp_url, &sizes).await {
        Ok((about, figures)) => peers.push(("RabbitMQ", about, Some(figures))),
        Err(e) => {
            eprintln!(
                "RabbitMQ at {} did not answer ({e:#}): no RabbitMQ figures.",
                opts.amqp_url
            );
            peers.push(("RabbitMQ", "did not answer".into(), None));
        }
    }
    report.peer = Some(
        peers
            .iter()
            .map(|(name, about, _)| format!("{name}: {about}"))
            .collect::<Vec<_>>()
            .join("; "),
    );
    for (name, _, figures) in &peers {
        groups::rows(&mut report, &annal, name, figures.as_ref());
    }
    Ok(report)
}

/// Runs the workloads and returns the report.
pub async fn run(opts: &Options) -> anyhow::Result<Report> {
    let sizes = Sizes::new(opts.quick);
    let (dir, _guard) = work_dir(opts)?;
    let mut report = Report {
        machine: machine(),
        peer_name: "PostgreSQL".into(),
        quick: opts.quick,
        ..Report::default()
    };
    let pg = match pg::PgBench::create(&opts.pg_url).await {
        Ok(p) => {
            report.peer = Some(p.describe().await?);
            Some(p)
        }
        Err(e) => {
            eprintln!(
                "PostgreSQL at {} does not answer ({e:#}): running Annal alone.",
                opts.pg_url
            );
            None
        }
    };
    let result = run_workloads(opts, &sizes, &dir, pg.as_ref(), &mut report).await;
    if let Some(p) = pg {
        if let Err(e) = p.drop_db().await {
            eprintln!("could not drop the benchmark database: {e:#}");
        }
    }
    result?;
    Ok(report)
}

async fn run_workloads(
    opts: &Options,
    sizes: &Sizes,
    dir: &Path,
    pg: Option<&pg::PgBench>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let dur = Duration::from_secs_f64(sizes.append_secs);
    let small = Arc::new(Store::open(dir.join("appends"))?);
    if wants(opts, "W1") {
        for writers in [1usize, 16, 64] {
            let label = format!("W1 annal x{writers}");
            let p = Progress::spinner(&label);
            let a = engine::appends(small.clone(), &format!("w1x{writers}"), writers, 1, dur, &p)
                .await?;
            p.done();
            let pgv = match pg {
                Some(pg) => {
                    let p = Progress::spinner(&format!("W1 postgres x{writers}"));
                    let v = pg::appends(pg, &format!("w1x{writers}"), writers, 1, dur, &p).await?;
                    p.done();
                    Some(v)
                }
                None => None,
            };
            report.rows.push(row(
                &format!("W1 append 1 event, {writers} writers"),
                "events/s",
                Some(a),
                pgv,
                true,
            ));
        }
    }
    if wants(opts, "W2") {
        for writers in [1usize, 16] {
            let p = Progress::spinner(&format!("W2 annal x{writers}"));
            let a = engine::appends(
                small.clone(),
                &format!("w2x{writers}"),
                writers,
                100,
                dur,
                &p,
            )
            .await?;
            p.done();
            let pgv = match pg {
                Some(pg) => {
                    let p = Progress::spinner(&format!("W2 postgres x{writers}"));
                    let v =
                        pg::appends(pg, &format!("w2x{writers}"), writers, 100, dur, &p).await?;
                    p.done();
                    Some(v)
                }
                None => None,
            };
            report.rows.push(row(
                &format!("W2 append batches of 100, {writers} writers"),
                "events/s",
                Some(a),
                pgv,
                true,
            ));
        }
    }
    if wants(opts, "W6") {
        let p = Progress::new("W6 annal live delivery", sizes.w6_events as u64);
        let (p50, p99) = engine::live_latency(small.clone(), sizes.w6_events, &p).await?;
        p.done();
        let (f50, f99) = engine::fsync_latency(dir, sizes.w6_events.min(500))?;
        report.rows.push(row(
            "W6 append to live delivery p50",
            "ms",
            Some(ms(p50)),
            None,
            false,
        ));
        report.rows.push(row(
            "W6 append to live delivery p99",
            "ms",
            Some(ms(p99)),
            None,
            false,
        ));
        report.rows.push(row(
            "    raw fsync of the same disk p50",
            "ms",
            Some(ms(f50)),
            None,
            false,
        ));
        report.rows.push(row(
            "    raw fsync of the same disk p99",
            "ms",
            Some(ms(f99)),
            None,
            false,
        ));
    }
    if wants(opts, "W8") || wants(opts, "W9") {
        // A store of their own: the one W1 and W2 filled holds millions of events and is
        // still merging their index runs.
        let own = Arc::new(Store::open(dir.join("toolkit"))?);
        toolkit_workloads(opts, sizes, dir, &own, pg, report).await?;
    }
    drop(small);
    if wants(opts, "W11") {
        projection_workloads(opts, sizes, dir, pg.is_some(), report).await?;
    }
    if wants(opts, "W3") {
        let store = Store::open(dir.join("w3"))?;
        engine::fill_w3(&store).await?;
        let p = Progress::new("W3 annal read stream", 10_000 * u64::from(sizes.w3_reps));
        let a = engine::read_stream(&store, sizes.w3_reps, &p)?;
        p.done();
        let pgv = match pg {
            Some(pg) => {
                pg.truncate().await?;
                pg::fill_w3(pg).await?;
                let p = Progress::new("W3 postgres read stream", 10_000 * u64::from(sizes.w3_reps));
                let v = pg::read_stream(pg, sizes.w3_reps, &p).await?;
                p.done();
                Some(v)
            }
            None => None,
        };
        report.rows.push(row(
            "W3 read one stream of 10,000 events",
            "events/s",
            Some(a),
            pgv,
            true,
        ));
    }
    if wants(opts, "W4") || wants(opts, "W5") {
        let big = dir.join("big");
        let n = sizes.w4_events;
        {
            let store = Arc::new(Store::open(&big)?);
            let p = Progress::new("filling annal", n);
            engine::fill(store.clone(), n, sizes.w4_streams, &p).await?;
            p.done();
            Arc::try_unwrap(store)
                .map_err(|_| anyhow::anyhow!("store still shared"))?
                .close()?;
        }
        if wants(opts, "W4") {
            let store = Store::open(&big)?;
            let p = Progress::new("W4 annal read all", n);
            let a = engine::read_all(&store, n, &p)?;
            p.done();
            let p = Progress::new("W4 annal read all by chunks", n);
            let chunks = engine::read_all_chunks(&store, n, &p)?;
            p.done();
            drop(store);
            let pgv = match pg {
                Some(pg) => {
                    pg.truncate().await?;
                    let p = Progress::new("filling postgres", n);
                    pg::fill(pg, "fill", n, sizes.w4_streams, &p).await?;
                    p.done();
                    let p = Progress::spinner("W4 postgres read all");
                    let v = pg::read_all(pg, n).await?;
                    p.done();
                    Some(v)
                }
                None => None,
            };
            report.rows.push(row(
                &format!("W4 read the whole log ({n} events)"),
                "events/s",
                Some(a),
                pgv,
                true,
            ));
            report.rows.push(row(
                &format!("W4 read the whole log ({n} events) a chunk at a time"),
                "events/s",
                Some(chunks),
                pgv,
                true,
            ));
        }
        if wants(opts, "W5") {
            let out = std::process::Command::new(&opts.probe_exe)
                .arg("bench-reopen-probe")
                .arg(&big)
                .output()?;
            anyhow::ensure!(
                out.status.success(),
                "the reopen probe failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            let secs = v["open_secs"].as_f64().unwrap_or(f64::NAN);
            let rss = v["rss_after"].as_f64().unwrap_or(f64::NAN) / 1048576.0;
            let settled = v["rss_settled"].as_f64().unwrap_or(f64::NAN) / 1048576.0;
            let base = v["rss_before"].as_f64().unwrap_or(f64::NAN) / 1048576.0;
            report.rows.push(row(
                &format!("W5 reopen {n} events, {} streams", sizes.w4_streams),
                "ms",
                Some(secs * 1000.0),
                None,
                false,
            ));
            report.rows.push(row(
                "W5 resident memory after reopen",
                "MiB",
                Some(rss),
                None,
                false,
            ));
            report.rows.push(row(
                "W5 resident memory once the id filter is built",
                "MiB",
                Some(settled),
                None,
                false,
            ));
            report.rows.push(row(
                "    of which the process before opening",
                "MiB",
                Some(base),
                None,
                false,
            ));
        }
    }
    Ok(())
}

fn fmt_num(v: Option<f64>, unit: &str) -> String {
    match v {
        None => "-".into(),
        Some(v) if unit == "events/s" => {
            let s = format!("{:.0}", v);
            let mut out = String::new();
            for (i, c) in s.chars().enumerate() {
                if i > 0 && (s.len() - i) % 3 == 0 {
                    out.push(',');
                }
                out.push(c);
            }
            out
        }
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) if v >= 1.0 => format!("{v:.2}"),
        Some(v) => format!("{v:.3}"),
    }
}

/// The report as a Markdown table.
pub fn table(report: &Report) -> String {
    let mut s = String::new();
    s.push_str(&format!("machine: {}\n", report.machine));
    s.push_str(&format!(
        "peer: {}\n\n",
        report
            .peer
            .clone()
            .unwrap_or_else(|| format!("none ({} did not answer)", report.peer_name))
    ));
    let peer = &report.peer_name;
    s.push_str(&format!(
        "| workload | unit | Annal | {peer} | Annal vs {peer} |\n"
    ));
    s.push_str("|---|---|---:|---:|---:|\n");
    for r in &report.rows {
        let ratio = r.ratio().map_or("-".into(), |x| format!("{x:.1}x"));
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            r.workload,
            r.unit,
            fmt_num(r.annal, &r.unit),
            fmt_num(r.peer, &r.unit),
            ratio
        ));
    }
    s
}

/// The report as JSON.
pub fn to_json(report: &Report) -> serde_json::Value {
    json!({
        "machine": report.machine,
        "peer_name": report.peer_name,
        "peer": report.peer,
        "quick": report.quick,
        "rows": report.rows.iter().map(|r| json!({
            "workload": r.workload,
            "unit": r.unit,
            "annal": r.annal,
            "peer": r.peer,
            "higher_is_better": r.higher_is_better,
            "ratio": r.ratio(),
        })).collect::<Vec<_>>(),
    })
}

/// W8 and W9: the toolkit's write side, embedded and through a server of this run's own,
/// beside the same loop on PostgreSQL.
async fn toolkit_workloads(
    opts: &Options,
    sizes: &Sizes,
    dir: &Path,
    store: &Arc<Store>,
    pg: Option<&pg::PgBench>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let dur = Duration::from_secs_f64(sizes.append_secs);
    let server = net::start_annal(&opts.probe_exe, &dir.join("w8-server"))?;
    let client = annal_client::Client::connect(&server.url).await?;
    if wants(opts, "W8") {
        for handlers in [1usize, 16] {
            let p = Progress::spinner(&format!("W8 annal embedded x{handlers}"));
            let embedded = commands::annal(
                store.clone(),
                &format!("e{handlers}"),
                handlers,
                false,
                dur,
                &p,
            )
            .await?;
            p.done();
            let p = Progress::spinner(&format!("W8 annal server x{handlers}"));
            let served = commands::annal(
                client.clone(),
                &format!("s{handlers}"),
                handlers,
                false,
                dur,
                &p,
            )
            .await?;
            p.done();
            let pgv = match pg {
                Some(pg) => {
                    let p = Progress::spinner(&format!("W8 postgres x{handlers}"));
                    let v =
                        commands::postgres(pg, &format!("p{handlers}"), handlers, dur, &p).await?;
                    p.done();
                    Some(v)
                }
                None => None,
            };
            let mut w8_rows = |note: &str, embedded, served| {
                for (how, v) in [("embedded", embedded), ("through the server", served)] {
                    report.rows.push(row(
                        &format!("W8 commands, {handlers} handler(s), {how}{note}"),
                        "commands/s",
                        Some(v),
                        pgv,
                        true,
                    ));
                }
            };
            w8_rows("", embedded, served);
            if handlers == 16 {
                // The same with each handler keeping the states its commands leave: an
                // account's later commands decide without reading it. PostgreSQL's loop,
                // beside it, still reads each time.
                let p = Progress::spinner("W8 annal embedded x16, states kept");
                let embedded = commands::annal(store.clone(), "ek", 16, true, dur, &p).await?;
                p.done();
                let p = Progress::spinner("W8 annal server x16, states kept");
                let served = commands::annal(client.clone(), "sk", 16, true, dur, &p).await?;
                p.done();
                w8_rows(", states kept", embedded, served);
            }
        }
    }
    if wants(opts, "W9") {
        // Each store is measured once the background work the fill left (index merges) is
        // done: the numbers are of loading, not of sharing two cores with a merge.
        let n = sizes.w9_events;
        let p = Progress::spinner("W9 filling");
        commands::fill_long(&**store, "long", n).await?;
        commands::fill_long(&client, "long", n).await?;
        commands::settle(std::process::id()).await;
        commands::settle(server.pid()).await;
        p.done();
        for from_snapshot in [false, true] {
            let embedded = commands::hydrate(store.clone(), "long", n, 9, from_snapshot).await?;
            let served = commands::hydrate(client.clone(), "long", n, 9, from_snapshot).await?;
            let pgv = match (pg, from_snapshot) {
                (Some(pg), false) => Some(commands::hydrate_postgres(pg, "long", n, 9).await?),
                (Some(pg), true) => {
                    Some(commands::hydrate_postgres_snapshot(pg, "long", n, 9).await?)
                }
                (None, _) => None,
            };
            let what = match from_snapshot {
                false => "no snapshot",
                true => "from a snapshot at its last event",
            };
            for (how, v) in [("embedded", embedded), ("through the server", served)] {
                report.rows.push(row(
                    &format!("W9 load an account of {n} events, {what}, {how}"),
                    "ms",
                    Some(v),
                    pgv,
                    false,
                ));
            }
        }
    }
    drop(server);
    Ok(())
}

/// W11: a projection rebuilt into SQLite and PostgreSQL beside the naive projector, and a
/// live projection's lag under load.
async fn projection_workloads(
    opts: &Options,
    sizes: &Sizes,
    dir: &Path,
    with_pg: bool,
    report: &mut Report,
) -> anyhow::Result<()> {
    let store = Arc::new(Store::open(dir.join("projections"))?);
    let n = sizes.w11_events;
    let p = Progress::new("W11 filling", n);
    let n = projections::fill(store.clone(), n, &p).await?;
    p.done();
    let naive_for = Duration::from_secs_f64(sizes.w11_naive_secs);
    let mut schemas = Vec::new();
    for kind in ["SQLite", "PostgreSQL"] {
        if kind == "PostgreSQL" && !with_pg {
            continue;
        }
        let mut fresh = |what: &str| {
            let name = format!("annal_bench_w11_{what}_{}", std::process::id());
            schemas.push(name.clone());
            name
        };
        let (batched, one_by_one, lag) = match kind {
            "SQLite" => (
                Sink::sqlite(dir.join("w11-rebuild.db"))?,
                Sink::sqlite(dir.join("w11-naive.db"))?,
                Sink::sqlite(dir.join("w11-lag.db"))?,
            ),
            _ => (
                Sink::postgres(&opts.pg_url, &fresh("rebuild")).await?,
                Sink::postgres(&opts.pg_url, &fresh("naive")).await?,
                Sink::postgres(&opts.pg_url, &fresh("lag")).await?,
            ),
        };
        let p = Progress::new(&format!("W11 rebuild into {kind}"), n);
        let rebuilt = projections::rebuild(store.clone(), batched, n, &p).await?;
        p.done();
        let p = Progress::new(&format!("W11 naive into {kind}"), n);
        let naive = projections::naive(store.clone(), one_by_one, naive_for, &p).await?;
        p.done();
        report.rows.push(row(
            &format!("W11 rebuild a projection into {kind}"),
            "events/s",
            Some(rebuilt),
            None,
            true,
        ));
        report.rows.push(row(
            &format!("    naive: a transaction per event, into {kind}"),
            "events/s",
            Some(naive),
            None,
            true,
        ));
        let p = Progress::spinner(&format!("W11 live lag, {kind}"));
        let (p50, p99) = projections::live_lag(
            store.clone(),
            lag,
            16,
            Duration::from_secs_f64(sizes.append_secs),
            &p,
        )
        .await?;
        p.done();
        for (q, v) in [("p50", p50), ("p99", p99)] {
            report.rows.push(row(
                &format!("W11 append to row visible in {kind} {q}, 16 writers"),
                "ms",
                Some(ms(v)),
                None,
                false,
            ));
        }
    }
    for s in schemas {
        let sink = Sink::postgres(&opts.pg_url, &s).await?;
        if let Err(e) = sink.execute(&format!("DROP SCHEMA {s} CASCADE"), &[]).await {
            eprintln!("could not drop schema {s}: {e}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_favour_the_better_side() {
        assert_eq!(
            row("x", "events/s", Some(200.0), Some(20.0), true).ratio(),
            Some(10.0)
        );
        assert_eq!(
            row("x", "ms", Some(2.0), Some(8.0), false).ratio(),
            Some(4.0)
        );
        assert_eq!(row("x", "ms", Some(2.0), None, false).ratio(), None);
        assert_eq!(fmt_num(Some(1234567.4), "events/s"), "1,234,567");
    }
}
