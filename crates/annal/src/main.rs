//! `annal`: the event store's one binary.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod alloc;
#[cfg(feature = "bench")]
mod bench;
mod client;
mod dump;
mod groups;
mod render;
mod serve;

#[derive(Parser)]
#[command(
    name = "annal",
    version,
    about = "Annal: an event store and CQRS toolkit"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the event store server: gRPC and HTTP/JSON on one port.
    Serve(Box<serve::ServeArgs>),
    /// Append one event to a stream.
    Append {
        #[command(flatten)]
        remote: client::Remote,
        #[command(flatten)]
        args: client::AppendArgs,
    },
    /// Print a stream's events.
    Read {
        #[command(flatten)]
        remote: client::Remote,
        #[command(flatten)]
        args: client::ReadArgs,
    },
    /// Print the log's events, or a category's, or those of some types or tags.
    ReadAll {
        #[command(flatten)]
        remote: client::Remote,
        #[command(flatten)]
        args: client::ReadAllArgs,
    },
    /// Follow new events as they are written, like `tail -f`.
    Tail {
        #[command(flatten)]
        remote: client::Remote,
        #[command(flatten)]
        args: client::TailArgs,
    },
    /// List streams.
    Streams {
        #[command(flatten)]
        remote: client::Remote,
        #[command(flatten)]
        args: client::StreamsArgs,
    },
    /// What the server knows of a stream, or of itself.
    Info {
        #[command(flatten)]
        remote: client::Remote,
        #[command(flatten)]
        args: client::InfoArgs,
    },
    /// A stream's latest snapshot (at or before a revision), or delete its snapshots.
    Snapshot {
        #[command(flatten)]
        remote: client::Remote,
        #[command(flatten)]
        args: client::SnapshotArgs,
    },
    /// Every consumer group, a line each: floor, lag, in flight, parked, members.
    Groups {
        #[command(flatten)]
        remote: client::Remote,
    },
    /// Create, show, change or delete a consumer group; list, replay or discard its parked
    /// events.
    Group {
        #[command(flatten)]
        remote: client::Remote,
        #[command(subcommand)]
        cmd: groups::GroupCmd,
    },
    /// Verify a store folder offline: frames, checksums, gapless positions and revisions,
    /// and that the indexes, stream heads and snapshots agree with the log. Exits 1 when it
    /// finds a problem.
    Check {
        /// The store folder.
        dir: PathBuf,
        /// Memory for stream heads, in bytes (about 300 a stream). A store with more streams
        /// than fit is read in several passes, each following a share of them.
        #[arg(long, value_name = "BYTES", default_value_t = annal_engine::check::DEFAULT_CHECK_MEMORY,
              value_parser = clap::value_parser!(u64).range(1 << 20..))]
        memory: u64,
    },
    /// Run the benchmark workloads against Annal and, in the same run, PostgreSQL (or, with
    /// --network, against Annal's server and the UmaDB server). Built with the `bench`
    /// feature.
    #[cfg(feature = "bench")]
    Bench(bench::BenchArgs),
    /// (internal) Opens a store in a fresh process for the W5 benchmark.
    #[cfg(feature = "bench")]
    #[command(hide = true)]
    BenchReopenProbe { dir: PathBuf },
    /// (internal) Reopens a store in a fresh process for the W12 benchmark.
    #[cfg(feature = "bench")]
    #[command(hide = true)]
    BenchScaleProbe { dir: PathBuf, streams: u64 },
    /// Print a store's events, oldest first, reading the folder directly.
    Dump {
        /// The store folder.
        dir: PathBuf,
        /// Start at this log position.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Print at most this many events.
        #[arg(long)]
        limit: Option<u64>,
        /// Only events of this stream.
        #[arg(long)]
        stream: Option<String>,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Serve(args) = cli.command {
        alloc::return_freed_memory_at_once();
        // The server sets up its own logging from its configuration.
        return match serve::serve(*args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs a command against the server at `server` on a small runtime, turning failures into
/// exit codes.
fn remote<F, Fut>(server: &str, f: F) -> anyhow::Result<ExitCode>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<ExitCode, client::Failure>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match rt.block_on(f()) {
        Ok(code) => Ok(code),
        Err(failure) => {
            let text = format!("{:#}", failure.error);
            // A plain connection to a TLS port fails inside HTTP/2, not with a refusal.
            let hint = if server.starts_with("http://")
                && text.contains("the connection to the server failed")
            {
                " (if the server serves TLS, use https://)"
            } else {
                ""
            };
            eprintln!("error: {text}{hint}");
            Ok(ExitCode::from(failure.code))
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Cmd::Serve(_) => unreachable!("handled in main"),
        Cmd::Append { remote: r, args } => remote(&r.server.clone(), || async move {
            client::append(&r, args).await
        }),
        Cmd::Read { remote: r, args } => {
            remote(
                &r.server.clone(),
                || async move { client::read(&r, args).await },
            )
        }
        Cmd::ReadAll { remote: r, args } => remote(&r.server.clone(), || async move {
            client::read_all(&r, args).await
        }),
        Cmd::Tail { remote: r, args } => {
            remote(
                &r.server.clone(),
                || async move { client::tail(&r, args).await },
            )
        }
        Cmd::Streams { remote: r, args } => remote(&r.server.clone(), || async move {
            client::streams(&r, args).await
        }),
        Cmd::Info { remote: r, args } => {
            remote(
                &r.server.clone(),
                || async move { client::info(&r, args).await },
            )
        }
        Cmd::Snapshot { remote: r, args } => remote(&r.server.clone(), || async move {
            client::snapshot(&r, args).await
        }),
        Cmd::Groups { remote: r } => {
            remote(&r.server.clone(), || async move { groups::list(&r).await })
        }
        Cmd::Group { remote: r, cmd } => {
            remote(
                &r.server.clone(),
                || async move { groups::group(&r, cmd).await },
            )
        }
        Cmd::Check { dir, memory } => check(dir, memory),
        #[cfg(feature = "bench")]
        Cmd::Bench(args) => bench::run(args),
        #[cfg(feature = "bench")]
        Cmd::BenchReopenProbe { dir } => bench::reopen_probe(&dir),
        #[cfg(feature = "bench")]
        Cmd::BenchScaleProbe { dir, streams } => bench::scale_probe(&dir, streams),
        Cmd::Dump {
            dir,
            from,
            limit,
            stream,
            json,
        } => {
            dump::dump(&dir, from, limit, stream.as_deref(), json)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn check(dir: PathBuf, memory: u64) -> anyhow::Result<ExitCode> {
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template(
            "checking {bar:40} {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let report = annal_engine::check::check_with(&dir, memory, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .with_context(|| format!("checking {}", dir.display()))?;
    bar.finish_and_clear();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{}: {} events in {} streams, {} segments, {} bytes, {} checkpointed index entries, {} snapshots",
        dir.display(),
        report.events,
        report.streams,
        report.segments,
        report.bytes,
        report.index_entries,
        report.snapshots
    )?;
    if report.passes > 1 {
        writeln!(
            out,
            "read in {} passes: every stream's head at once would take more than --memory {memory}",
            report.passes
        )?;
    }
    for n in &report.notes {
        writeln!(out, "note: {n}")?;
    }
    for p in &report.problems {
        writeln!(out, "problem: {p}")?;
    }
    if report.is_ok() {
        writeln!(out, "ok")?;
        Ok(ExitCode::SUCCESS)
    } else {
        writeln!(out, "{} problem(s) found", report.problems.len())?;
        Ok(ExitCode::from(1))
    }
}
