//! `annal bench` (feature `bench`): the benchmark workloads beside PostgreSQL, through the
//! network beside the UmaDB server, or (W10) consumer groups beside NATS JetStream and
//! RabbitMQ.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// A smoke run of a minute or two.
    #[arg(long)]
    quick: bool,
    /// The PostgreSQL server to compare with.
    #[arg(
        long,
        default_value = "postgres://postgres@127.0.0.1:5432/postgres",
        env = "ANNAL_BENCH_PG"
    )]
    pg: String,
    /// Where to put the stores (default: a temporary folder here, removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Only these workloads, e.g. `--workloads W1,W4`.
    #[arg(long, value_delimiter = ',')]
    workloads: Vec<String>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Run the whole-stack workloads through the network instead: `annal serve` beside
    /// the UmaDB server, both on loopback.
    #[arg(long)]
    network: bool,
    /// Run W10 instead: consumer groups through the network, `annal serve` beside the
    /// NATS JetStream and RabbitMQ servers.
    #[arg(long, conflicts_with = "network")]
    groups: bool,
    /// Run W12 instead: a store of this many single-event streams, built through the
    /// engine and reopened in a fresh process.
    #[arg(long, value_name = "STREAMS", conflicts_with_all = ["network", "groups"])]
    scale: Option<u64>,
    /// The NATS server (with JetStream) W10 compares with.
    #[arg(
        long,
        default_value = "nats://127.0.0.1:4222",
        env = "ANNAL_BENCH_NATS"
    )]
    nats: String,
    /// The RabbitMQ server W10 compares with.
    #[arg(
        long,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        env = "ANNAL_BENCH_AMQP"
    )]
    amqp: String,
    /// The UmaDB server binary [default: `umadb` on the PATH].
    #[arg(long, env = "ANNAL_BENCH_UMADB", value_name = "PATH")]
    umadb: Option<PathBuf>,
    /// The `annal` binary the workloads run as a process of its own (the server with
    /// --network, W5's reopening without) [default: this one], to compare two builds
    /// driven by the same clients.
    #[arg(long, value_name = "PATH")]
    server: Option<PathBuf>,
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let opts = annal_bench::Options {
        quick: args.quick,
        pg_url: args.pg,
        dir: args.dir,
        workloads: args.workloads,
        probe_exe: match args.server {
            Some(path) => path,
            None => std::env::current_exe()?,
        },
        umadb: args.umadb,
        nats_url: args.nats,
        amqp_url: args.amqp,
    };
    let rt = tokio::runtime::Runtime::new()?;
    let report = if let Some(streams) = args.scale {
        rt.block_on(annal_bench::run_scale(&opts, streams))?
    } else if args.groups {
        rt.block_on(annal_bench::run_groups(&opts))?
    } else if args.network {
        rt.block_on(annal_bench::run_network(&opts))?
    } else {
        rt.block_on(annal_bench::run(&opts))?
    };
    print!("{}", annal_bench::table(&report));
    if let Some(path) = args.json {
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&annal_bench::to_json(&report))?,
        )
        .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Opens the store in `dir` in this fresh process and prints what W5 measures, as JSON.
pub fn reopen_probe(dir: &Path) -> anyhow::Result<ExitCode> {
    let r = annal_bench::reopen_probe(dir)?;
    println!(
        "{}",
        serde_json::json!({
            "open_secs": r.open_secs,
            "rss_after": r.rss_after,
            "rss_settled": r.rss_settled,
            "rss_before": r.rss_before,
        })
    );
    Ok(ExitCode::SUCCESS)
}

/// Reopens the W12 store of `streams` streams in `dir` in this fresh process and prints
/// what W12 measures, as JSON.
pub fn scale_probe(dir: &Path, streams: u64) -> anyhow::Result<ExitCode> {
    let r = annal_bench::scale_probe(dir, streams)?;
    println!("{}", serde_json::to_string(&r)?);
    Ok(ExitCode::SUCCESS)
}
