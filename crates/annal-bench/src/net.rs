//! Whole-stack workloads through the network: `annal serve` beside the UmaDB server, in the
//! same run, each driven by a Rust gRPC client built on the same stack (tonic), with the same
//! concurrency, the same events (about 250 bytes of JSON each) and the same kind of
//! concurrency check on every append.
//!
//! | workload | what |
//! |---|---|
//! | W1 | single-event appends from 1, 16 and 64 clients, each client its own connection and its own 8 streams; every append checks the stream (Annal: expected revision; UmaDB: a condition on the stream's tag after its last position) |
//! | W2 | batches of 100 events from 1 and 16 clients, checked the same way |
//!
//! Annal's client appends over its framed protocol (docs/wire-protocol.md), as it does by
//! default; W1 at 64 clients and W2 at 16 are also run with it on gRPC only, beside the same
//! UmaDB figure.
//! | W4 | reading the whole log through one connection (2 million events; 200,000 in quick) |
//! | W6 | latency from calling append to a live subscriber on another connection receiving the event |
//! | W7 | a flood of large appends: 64 clients, each with 4 appends of one 1 MiB event in flight, 1 GiB in all (256 MiB in quick), against a server of its own; its throughput and the server's peak resident memory above its idle size. Annal once over the framed protocol and once over gRPC |
//!
//! Both servers acknowledge an append only after it is on disk (fdatasync).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use annal_client::Client;
use annal_core::{
    next_item, AppendRequest, EventStore, ExpectedRevision, NewEvent, ReadRequest, Source,
    SubscribeFrom, SubscribeRequest, SubscriptionItem,
};
use anyhow::Context;

use crate::stats::{payload, percentile};
use crate::{ms, row, wants, Options, Progress, Report};

#[allow(clippy::all, missing_docs)]
mod uma {
    tonic::include_proto!("umadb.v1");
}

use uma::dcb_client::DcbClient;

/// A server process this run started; stopped (by its pid) when dropped.
pub(crate) struct Server {
    child: Child,
    pub url: String,
}

impl Server {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub(crate) fn start_annal(exe: &Path, dir: &Path) -> anyhow::Result<Server> {
    use std::io::BufRead;
    let mut child = Command::new(exe)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {} serve", exe.display()))?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().context("no stdout")?).read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix("annal serving on ")
        .with_context(|| format!("annal serve said {line:?}"))?
        .to_string();
    Ok(Server {
        child,
        url: format!("http://{addr}"),
    })
}

async fn start_umadb(exe: &Path, dir: &Path) -> anyhow::Result<Server> {
    let port = free_port()?;
    let child = Command::new(exe)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--db-path"])
        .arg(dir.join("uma.db"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let server = Server {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let started = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(20),
            "UmaDB did not listen on port {port} within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(server)
}

/// A connection to UmaDB set up as UmaDB's own Rust client sets it up.
async fn uma_connect(url: &str) -> anyhow::Result<DcbClient<tonic::transport::Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())?
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(10))
        .initial_stream_window_size(Some(4 * 1024 * 1024))
        .initial_connection_window_size(Some(8 * 1024 * 1024))
        .connect()
        .await?;
    Ok(DcbClient::new(channel).max_decoding_message_size(64 << 20))
}

fn uma_event(i: u64, tag: &str) -> uma::Event {
    uma::Event {
        event_type: "Deposited".into(),
        tags: vec![tag.to_string()],
        data: payload(i),
        uuid: annal_core::Uuid::new_v4().to_string(),
        metadata: Vec::new(),
    }
}

fn annal_event(i: u64, tag: &str) -> NewEvent {
    NewEvent::new("Deposited", payload(i)).with_tag(tag)
}

/// Runs `clients` tasks until `duration` is up; each returns how many events it wrote.
async fn clients<F, Fut>(clients: usize, duration: Duration, f: F) -> anyhow::Result<f64>
where
    F: Fn(usize, Instant) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<u64>> + Send + 'static,
{
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = (0..clients).map(|c| tokio::spawn(f(c, deadline))).collect();
    crate::per_second(tasks, start).await
}

/// W1/W2 against Annal: each client on its own 8 streams, expected revision on every append;
/// appends over the framed protocol (the client's default) or, with `framed` false, gRPC.
async fn annal_appends(
    url: &str,
    tag: &str,
    n: usize,
    batch: usize,
    framed: bool,
    duration: Duration,
    progress: &Progress,
) -> anyhow::Result<f64> {
    let mut conns = Vec::new();
    for _ in 0..n {
        conns.push(
            Client::builder(url.to_string())
                .framed(framed)
                .connect()
                .await?,
        );
    }
    let conns = Arc::new(Mutex::new(conns));
    clients(n, duration, |c, deadline| {
        let (conns, tag, progress) = (conns.clone(), tag.to_string(), progress.clone());
        async move {
            let client = conns
                .lock()
                .expect("not poisoned")
                .pop()
                .context("a client")?;
            let mut revs: [Option<u64>; 8] = [None; 8];
            let (mut written, mut i) = (0u64, 0u64);
            while Instant::now() < deadline {
                let k = (i % 8) as usize;
                let stream = format!("{tag}-{c}-{k}");
                let label = format!("stream:{stream}");
                let events = (0..batch as u64)
                    .map(|j| annal_event(i * batch as u64 + j, &label))
                    .collect();
                let expected = revs[k].map_or(ExpectedRevision::NoStream, ExpectedRevision::Exact);
                let r = client
                    .append(AppendRequest::stream(stream, expected, events))
                    .await?;
                revs[k] = Some(r.revision());
                written += batch as u64;
                i += 1;
                progress.inc(batch as u64);
            }
            Ok(written)
        }
    })
    .await
}

/// W1/W2 against UmaDB: each client on its own 8 tags, a condition on the tag after its last
/// position on every append (the DCB form of an expected revision).
async fn uma_appends(
    url: &str,
    tag: &str,
    n: usize,
    batch: usize,
    duration: Duration,
    progress: &Progress,
) -> anyhow::Result<f64> {
    let mut conns = Vec::new();
    for _ in 0..n {
        conns.push(uma_connect(url).await?);
    }
    let conns = Arc::new(Mutex::new(conns));
    clients(n, duration, |c, deadline| {
        let (conns, tag, progress) = (conns.clone(), tag.to_string(), progress.clone());
        async move {
            let mut client = conns
                .lock()
                .expect("not poisoned")
                .pop()
                .context("a client")?;
            let mut last: [Option<u64>; 8] = [None; 8];
            let (mut written, mut i) = (0u64, 0u64);
            while Instant::now() < deadline {
                let k = (i % 8) as usize;
                let label = format!("stream:{tag}-{c}-{k}");
                let events = (0..batch as u64)
                    .map(|j| uma_event(i * batch as u64 + j, &label))
                    .collect();
                let condition = uma::AppendCondition {
                    fail_if_events_match: Some(uma::Query {
                        items: vec![uma::QueryItem {
                            types: Vec::new(),
                            tags: vec![label.clone()],
                        }],
                    }),
                    after: last[k],
                };
                let r = client
                    .append(uma::AppendRequest {
                        events,
                        condition: Some(condition),
                        tracking_info: None,
                    })
                    .await?
                    .into_inner();
                last[k] = Some(r.position);
                written += batch as u64;
                i += 1;
                progress.inc(batch as u64);
            }
            Ok(written)
        }
    })
    .await
}

/// Fills with `events` events in batches of 1,000 from 4 clients, unchecked.
async fn annal_fill(url: &str, events: u64, progress: &Progress) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for w in 0..4u64 {
        let client = Client::connect(url.to_string()).await?;
        let progress = progress.clone();
        tasks.push(tokio::spawn(async move {
            let mut b = w;
            while b * 1000 < events {
                let label = format!("stream:fill-{}", b % 1000);
                let batch = (0..1000)
                    .map(|j| annal_event(b * 1000 + j, &label))
                    .collect();
                client
                    .append(AppendRequest::stream(
                        format!("fill-{}", b % 1000),
                        ExpectedRevision::Any,
                        batch,
                    ))
                    .await?;
                progress.inc(1000);
                b += 4;
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

async fn uma_fill(url: &str, events: u64, progress: &Progress) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for w in 0..4u64 {
        let mut client = uma_connect(url).await?;
        let progress = progress.clone();
        tasks.push(tokio::spawn(async move {
            let mut b = w;
            while b * 1000 < events {
                let label = format!("stream:fill-{}", b % 1000);
                let batch = (0..1000).map(|j| uma_event(b * 1000 + j, &label)).collect();
                client
                    .append(uma::AppendRequest {
                        events: batch,
                        condition: None,
                        tracking_info: None,
                    })
                    .await?;
                progress.inc(1000);
                b += 4;
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// W4 against Annal: the whole log through one connection, every event decoded.
async fn annal_read_all(url: &str, expect: u64, progress: &Progress) -> anyhow::Result<f64> {
    let client = Client::connect(url.to_string()).await?;
    let start = Instant::now();
    let mut events = client.read(ReadRequest::all()).await?;
    let mut n = 0u64;
    while let Some(e) = next_item(&mut events).await {
        std::hint::black_box(e?);
        n += 1;
        if n.is_multiple_of(65_536) {
            progress.inc(65_536);
        }
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    anyhow::ensure!(n == expect, "read {n} events from Annal, expected {expect}");
    Ok(rate)
}

/// W4 against UmaDB, with the largest batch it allows.
async fn uma_read_all(url: &str, expect: u64, progress: &Progress) -> anyhow::Result<f64> {
    let mut client = uma_connect(url).await?;
    let start = Instant::now();
    let mut stream = client
        .read(uma::ReadRequest {
            query: None,
            start: None,
            backwards: Some(false),
            limit: None,
            batch_size: Some(4096),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut n = 0u64;
    while let Some(batch) = stream.message().await? {
        let k = batch.events.len() as u64;
        std::hint::black_box(batch);
        n += k;
        progress.inc(k);
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    anyhow::ensure!(n == expect, "read {n} events from UmaDB, expected {expect}");
    Ok(rate)
}

/// When each W6 event was sent, by its index.
type Sent = Arc<Mutex<Vec<Option<Instant>>>>;

fn latencies(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    (percentile(&samples, 50.0), percentile(&samples, 99.0))
}

/// W6 against Annal.
async fn annal_live(
    url: &str,
    count: usize,
    progress: &Progress,
) -> anyhow::Result<(Duration, Duration)> {
    let reader = Client::connect(url.to_string()).await?;
    let writer = Client::connect(url.to_string()).await?;
    let mut sub = reader
        .subscribe(SubscribeRequest::new(
            Source::Stream("w6-live".into()),
            SubscribeFrom::Now,
        ))
        .await?;
    match next_item(&mut sub).await {
        Some(Ok(SubscriptionItem::CaughtUp { .. })) => {}
        other => anyhow::bail!("expected the caught-up marker, got {other:?}"),
    }
    let sent: Sent = Arc::new(Mutex::new(vec![None; count]));
    let task = {
        let sent = sent.clone();
        tokio::spawn(async move {
            for i in 0..count {
                sent.lock().expect("not poisoned")[i] = Some(Instant::now());
                writer
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
    let mut samples = Vec::with_capacity(count);
    while samples.len() < count {
        let item = tokio::time::timeout(Duration::from_secs(30), next_item(&mut sub))
            .await?
            .context("the subscription ended")??;
        if let SubscriptionItem::Event(e) = item {
            let now = Instant::now();
            let at = sent.lock().expect("not poisoned")[e.revision as usize]
                .context("delivered before it was sent")?;
            samples.push(now - at);
            progress.inc(1);
        }
    }
    task.await??;
    Ok(latencies(samples))
}

/// W6 against UmaDB.
async fn uma_live(
    url: &str,
    count: usize,
    progress: &Progress,
) -> anyhow::Result<(Duration, Duration)> {
    let mut reader = uma_connect(url).await?;
    let mut writer = uma_connect(url).await?;
    let head = reader
        .head(uma::HeadRequest {})
        .await?
        .into_inner()
        .position;
    let query = uma::Query {
        items: vec![uma::QueryItem {
            types: Vec::new(),
            tags: vec!["w6-live".into()],
        }],
    };
    let mut sub = reader
        .subscribe(uma::SubscribeRequest {
            query: Some(query),
            after: head,
            batch_size: None,
        })
        .await?
        .into_inner();
    let sent: Sent = Arc::new(Mutex::new(vec![None; count]));
    let task = {
        let sent = sent.clone();
        tokio::spawn(async move {
            for i in 0..count {
                let mut e = uma_event(i as u64, "w6-live");
                e.data = format!("{{\"i\":{i}}}").into_bytes();
                sent.lock().expect("not poisoned")[i] = Some(Instant::now());
                writer
                    .append(uma::AppendRequest {
                        events: vec![e],
                        condition: None,
                        tracking_info: None,
                    })
                    .await?;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Ok::<(), anyhow::Error>(())
        })
    };
    let mut samples = Vec::with_capacity(count);
    while samples.len() < count {
        let batch = tokio::time::timeout(Duration::from_secs(30), sub.message())
            .await??
            .context("the subscription ended")?;
        let now = Instant::now();
        for e in batch.events {
            let i = samples.len();
            let at =
                sent.lock().expect("not poisoned")[i].context("delivered before it was sent")?;
            std::hint::black_box(e);
            samples.push(now - at);
            progress.inc(1);
        }
    }
    task.await??;
    Ok(latencies(samples))
}

/// The same appends with Annal's client on gRPC only, beside the same UmaDB figure: what the
/// framed protocol adds.
async fn grpc_row(
    report: &mut Report,
    url: &str,
    tag: &str,
    n: usize,
    batch: usize,
    uma: f64,
    dur: Duration,
) -> anyhow::Result<()> {
    let p = Progress::spinner(&format!("{tag} annal x{n} over gRPC"));
    let a = annal_appends(url, &format!("{tag}x{n}"), n, batch, false, dur, &p).await?;
    p.done();
    let what = if batch == 1 {
        "W1 append 1 event"
    } else {
        "W2 append batches of 100"
    };
    report.rows.push(row(
        &format!("{what}, {n} clients, Annal over gRPC only"),
        "events/s",
        Some(a),
        Some(uma),
        true,
    ));
    Ok(())
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn umadb_version(exe: &Path) -> String {
    Command::new(exe)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "UmaDB".into())
}

/// Runs the network workloads against both servers.
pub async fn run(
    opts: &Options,
    umadb: &Path,
    dir: &Path,
    report: &mut Report,
) -> anyhow::Result<()> {
    let quick = opts.quick;
    let dur = Duration::from_secs_f64(if quick { 1.5 } else { 6.0 });
    let w4_events: u64 = if quick { 200_000 } else { 2_000_000 };
    let w6_events = if quick { 300 } else { 2_000 };
    report.peer_name = "UmaDB".into();
    report.peer = Some(format!(
        "{} server on loopback (fdatasync before every acknowledgement), driven by a tonic client set up as UmaDB's own",
        umadb_version(umadb)
    ));

    let annal_dir = dir.join("annal");
    let uma_dir = dir.join("umadb");
    std::fs::create_dir_all(&uma_dir)?;
    let annal = start_annal(&opts.probe_exe, &annal_dir)?;
    let uma = start_umadb(umadb, &uma_dir).await?;

    if wants(opts, "W1") {
        for n in [1usize, 16, 64] {
            let p = Progress::spinner(&format!("W1 annal x{n}"));
            let a = annal_appends(&annal.url, &format!("w1x{n}"), n, 1, true, dur, &p).await?;
            p.done();
            let p = Progress::spinner(&format!("W1 umadb x{n}"));
            let u = uma_appends(&uma.url, &format!("w1x{n}"), n, 1, dur, &p).await?;
            p.done();
            report.rows.push(row(
                &format!("W1 append 1 event, {n} client{}", plural(n)),
                "events/s",
                Some(a),
                Some(u),
                true,
            ));
            if n == 64 {
                grpc_row(report, &annal.url, "w1g", n, 1, u, dur).await?;
            }
        }
    }
    if wants(opts, "W2") {
        for n in [1usize, 16] {
            let p = Progress::spinner(&format!("W2 annal x{n}"));
            let a = annal_appends(&annal.url, &format!("w2x{n}"), n, 100, true, dur, &p).await?;
            p.done();
            let p = Progress::spinner(&format!("W2 umadb x{n}"));
            let u = uma_appends(&uma.url, &format!("w2x{n}"), n, 100, dur, &p).await?;
            p.done();
            report.rows.push(row(
                &format!("W2 append batches of 100, {n} client{}", plural(n)),
                "events/s",
                Some(a),
                Some(u),
                true,
            ));
            if n == 16 {
                grpc_row(report, &annal.url, "w2g", n, 100, u, dur).await?;
            }
        }
    }
    if wants(opts, "W6") {
        let p = Progress::new("W6 annal live delivery", w6_events as u64);
        let (a50, a99) = annal_live(&annal.url, w6_events, &p).await?;
        p.done();
        let p = Progress::new("W6 umadb live delivery", w6_events as u64);
        let (u50, u99) = uma_live(&uma.url, w6_events, &p).await?;
        p.done();
        report.rows.push(row(
            "W6 append to live delivery p50",
            "ms",
            Some(ms(a50)),
            Some(ms(u50)),
            false,
        ));
        report.rows.push(row(
            "W6 append to live delivery p99",
            "ms",
            Some(ms(a99)),
            Some(ms(u99)),
            false,
        ));
    }
    drop(annal);
    drop(uma);

    if wants(opts, "W4") {
        // Fresh stores holding exactly the events to read.
        let annal_dir = dir.join("annal-w4");
        let uma_dir = dir.join("umadb-w4");
        std::fs::create_dir_all(&uma_dir)?;
        let annal = start_annal(&opts.probe_exe, &annal_dir)?;
        let uma = start_umadb(umadb, &uma_dir).await?;
        let p = Progress::new("filling annal", w4_events);
        annal_fill(&annal.url, w4_events, &p).await?;
        p.done();
        let p = Progress::new("filling umadb", w4_events);
        uma_fill(&uma.url, w4_events, &p).await?;
        p.done();
        let p = Progress::new("W4 annal read all", w4_events);
        let a = annal_read_all(&annal.url, w4_events, &p).await?;
        p.done();
        let p = Progress::new("W4 umadb read all", w4_events);
        let u = uma_read_all(&uma.url, w4_events, &p).await?;
        p.done();
        report.rows.push(row(
            &format!("W4 read the whole log ({w4_events} events)"),
            "events/s",
            Some(a),
            Some(u),
            true,
        ));
    }
    if wants(opts, "W7") {
        w7(opts, umadb, dir, report).await?;
    }
    Ok(())
}

/// The resident memory of a process and its peak so far, in MiB.
fn memory_of(pid: u32) -> anyhow::Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |name: &str| -> anyhow::Result<f64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        let n: f64 = line.split_whitespace().nth(1).context("a size")?.parse()?;
        Ok(n / 1024.0)
    };
    Ok((kib("VmRSS:")?, kib("VmHWM:")?))
}

/// W7's clients, connections and appends in flight on each, and the size of each append.
const W7_CLIENTS: usize = 64;
const W7_IN_FLIGHT: usize = 4;
const W7_BYTES: usize = 1 << 20;

/// Runs `append` for `rounds` rounds on each of W7's appends in flight, and gives the MiB/s
/// and the server's peak memory above `idle`.
async fn flood<C, F, Fut>(
    pid: u32,
    conns: Vec<C>,
    rounds: usize,
    progress: &Progress,
    append: F,
) -> anyhow::Result<(f64, f64)>
where
    C: Clone + Send + 'static,
    F: Fn(C, String) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let (idle, _) = memory_of(pid)?;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (c, conn) in conns.into_iter().enumerate() {
        for k in 0..W7_IN_FLIGHT {
            let (conn, append, progress) = (conn.clone(), append.clone(), progress.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..rounds {
                    append(conn.clone(), format!("w7-{c}-{k}-{i}")).await?;
                    progress.inc(1);
                }
                anyhow::Ok(())
            }));
        }
    }
    for t in tasks {
        t.await??;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (_, peak) = memory_of(pid)?;
    let mib = (W7_CLIENTS * W7_IN_FLIGHT * rounds * W7_BYTES) as f64 / (1 << 20) as f64;
    Ok((mib / elapsed, peak - idle))
}

async fn annal_flood(
    exe: &Path,
    dir: &Path,
    framed: bool,
    rounds: usize,
    progress: &Progress,
) -> anyhow::Result<(f64, f64)> {
    let server = start_annal(exe, dir)?;
    let mut conns = Vec::new();
    for _ in 0..W7_CLIENTS {
        let client = Client::builder(server.url.clone())
            .framed(framed)
            .connect()
            .await?;
        conns.push(Arc::new(client));
    }
    flood(
        server.child.id(),
        conns,
        rounds,
        progress,
        |client, stream| async move {
            let e = NewEvent::new("Large", vec![b'x'; W7_BYTES])
                .with_content_type("application/octet-stream");
            client
                .append(AppendRequest::stream(
                    stream,
                    ExpectedRevision::Any,
                    vec![e],
                ))
                .await?;
            Ok(())
        },
    )
    .await
}

async fn uma_flood(
    exe: &Path,
    dir: &Path,
    rounds: usize,
    progress: &Progress,
) -> anyhow::Result<(f64, f64)> {
    let server = start_umadb(exe, dir).await?;
    let mut conns = Vec::new();
    for _ in 0..W7_CLIENTS {
        conns.push(uma_connect(&server.url).await?);
    }
    flood(
        server.child.id(),
        conns,
        rounds,
        progress,
        |mut client, tag| async move {
            let event = uma::Event {
                event_type: "Large".into(),
                tags: vec![tag],
                data: vec![b'x'; W7_BYTES],
                uuid: annal_core::Uuid::new_v4().to_string(),
                metadata: Vec::new(),
            };
            client
                .append(uma::AppendRequest {
                    events: vec![event],
                    condition: None,
                    tracking_info: None,
                })
                .await?;
            Ok(())
        },
    )
    .await
}

/// W7: the flood, against each server started for it alone.
async fn w7(opts: &Options, umadb: &Path, dir: &Path, report: &mut Report) -> anyhow::Result<()> {
    let rounds = if opts.quick { 1 } else { 4 };
    let appends = (W7_CLIENTS * W7_IN_FLIGHT * rounds) as u64;
    let mut annal = Vec::new();
    for (framed, name) in [(true, "framed"), (false, "gRPC")] {
        let p = Progress::new(&format!("W7 annal flood over {name}"), appends);
        let at = dir.join(format!("annal-w7-{name}"));
        annal.push(annal_flood(&opts.probe_exe, &at, framed, rounds, &p).await?);
        p.done();
    }
    let p = Progress::new("W7 umadb flood", appends);
    let uma_dir = dir.join("umadb-w7");
    std::fs::create_dir_all(&uma_dir)?;
    let (u_rate, u_peak) = uma_flood(umadb, &uma_dir, rounds, &p).await?;
    p.done();
    let what = "W7 flood of 1 MiB appends, 64 clients x 4";
    for ((rate, peak), how) in annal.into_iter().zip(["", ", Annal over gRPC only"]) {
        report.rows.push(row(
            &format!("{what}{how}"),
            "MiB/s",
            Some(rate),
            Some(u_rate),
            true,
        ));
        report.rows.push(row(
            &format!("{what}{how}, server memory above idle"),
            "MiB",
            Some(peak),
            Some(u_peak),
            false,
        ));
    }
    Ok(())
}

/// Where the UmaDB server is: the given path, or `umadb` on the PATH.
pub fn find_umadb(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        anyhow::ensure!(p.is_file(), "{} is not the UmaDB server", p.display());
        return Ok(p);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|d| d.join("umadb"))
        .find(|p| p.is_file())
        .context("no umadb server found: install it with `bash scripts/bench-network.sh` (pip install umadb==0.7.8) or pass --umadb PATH")
}
