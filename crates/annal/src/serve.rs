//! `annal serve`: configuration from flags, `ANNAL_*` variables and a TOML file, logging, and
//! the signals that stop the server.

use std::path::PathBuf;

use annal_server::config::LogFormat;
use annal_server::{Server, Settings};
use clap::Args;

/// Every setting of the server. Each flag can also be given as the environment variable
/// shown, and in the TOML file (`--config`) under the name in the server's documentation;
/// flags win over variables, variables over the file, the file over the defaults.
#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// A TOML file of settings.
    #[arg(long, env = "ANNAL_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The store folder [default: ./annal-data].
    #[arg(long, env = "ANNAL_DATA", value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// The address for gRPC and HTTP, one port [default: 127.0.0.1:2113].
    #[arg(long, env = "ANNAL_LISTEN", value_name = "HOST:PORT")]
    pub listen: Option<String>,
    /// `text` or `json` log lines on standard error (RUST_LOG sets the level) [default: text].
    #[arg(long, env = "ANNAL_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// TLS certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "ANNAL_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM); needs --tls-cert.
    #[arg(long, env = "ANNAL_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// A bearer token that may read (repeat, or comma-separate in the variable).
    #[arg(
        long = "read-token",
        env = "ANNAL_READ_TOKENS",
        value_delimiter = ',',
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub read_tokens: Vec<String>,
    /// A bearer token that may read and append (repeat, or comma-separate in the variable).
    #[arg(
        long = "write-token",
        env = "ANNAL_WRITE_TOKENS",
        value_delimiter = ',',
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub write_tokens: Vec<String>,
    /// Open connections at most [default: 1024].
    #[arg(long, env = "ANNAL_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<String>,
    /// Concurrent HTTP/2 requests, or framed appends in flight, per connection [default: 256].
    #[arg(long, env = "ANNAL_MAX_STREAMS_PER_CONNECTION", value_name = "N")]
    pub max_streams_per_connection: Option<String>,
    /// Live subscriptions at most; more are refused [default: 1024].
    #[arg(long, env = "ANNAL_MAX_SUBSCRIPTIONS", value_name = "N")]
    pub max_subscriptions: Option<String>,
    /// Streamed reads at once; more are refused [default: 256].
    #[arg(long, env = "ANNAL_MAX_READS", value_name = "N")]
    pub max_reads: Option<String>,
    /// Bytes of appends received and processed at once; more wait [default: 268435456].
    #[arg(long, env = "ANNAL_MAX_INFLIGHT_APPEND_BYTES", value_name = "BYTES")]
    pub max_inflight_append_bytes: Option<String>,
    /// The largest event, in bytes [default: 16777216].
    #[arg(long, env = "ANNAL_MAX_EVENT_BYTES", value_name = "BYTES")]
    pub max_event_bytes: Option<String>,
    /// The largest append request, in bytes [default: 67108864].
    #[arg(long, env = "ANNAL_MAX_APPEND_BYTES", value_name = "BYTES")]
    pub max_append_bytes: Option<String>,
    /// Events per streamed batch [default: 2048].
    #[arg(long, env = "ANNAL_READ_BATCH_EVENTS", value_name = "N")]
    pub read_batch_events: Option<String>,
    /// Batches queued per subscriber before it is paused [default: 8].
    #[arg(long, env = "ANNAL_SUBSCRIPTION_BUFFER", value_name = "N")]
    pub subscription_buffer: Option<String>,
    /// Heartbeat interval of idle subscriptions, e.g. 5s [default: 5s].
    #[arg(long, env = "ANNAL_HEARTBEAT", value_name = "DURATION")]
    pub heartbeat: Option<String>,
    /// How long shutdown waits for requests in flight [default: 30s].
    #[arg(long, env = "ANNAL_SHUTDOWN_GRACE", value_name = "DURATION")]
    pub shutdown_grace: Option<String>,
}

impl ServeArgs {
    /// The flag and variable layer, with the problems of numbers that do not parse.
    fn settings(&self, problems: &mut Vec<String>) -> Settings {
        let mut number = |name: &str, v: &Option<String>| -> Option<u64> {
            let text = v.as_deref()?;
            match text.trim().parse::<u64>() {
                Ok(n) => Some(n),
                Err(_) => {
                    problems.push(format!("{name}: '{text}' is not a whole number"));
                    None
                }
            }
        };
        Settings {
            data: self.data.clone(),
            listen: self.listen.clone(),
            log_format: self.log_format.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            read_tokens: (!self.read_tokens.is_empty()).then(|| self.read_tokens.clone()),
            write_tokens: (!self.write_tokens.is_empty()).then(|| self.write_tokens.clone()),
            max_connections: number("max_connections", &self.max_connections),
            max_streams_per_connection: number(
                "max_streams_per_connection",
                &self.max_streams_per_connection,
            ),
            max_subscriptions: number("max_subscriptions", &self.max_subscriptions),
            max_reads: number("max_reads", &self.max_reads),
            max_inflight_append_bytes: number(
                "max_inflight_append_bytes",
                &self.max_inflight_append_bytes,
            ),
            max_event_bytes: number("max_event_bytes", &self.max_event_bytes),
            max_append_bytes: number("max_append_bytes", &self.max_append_bytes),
            read_batch_events: number("read_batch_events", &self.read_batch_events),
            subscription_buffer: number("subscription_buffer", &self.subscription_buffer),
            heartbeat: self.heartbeat.clone(),
            shutdown_grace: self.shutdown_grace.clone(),
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Runs the server until SIGINT or SIGTERM; a second signal exits at once. Returns the exit
/// code: 0 after a clean stop, 2 when the configuration is refused.
pub fn serve(args: ServeArgs) -> anyhow::Result<std::process::ExitCode> {
    let mut problems = Vec::new();
    let flags = args.settings(&mut problems);
    let file = match &args.config {
        None => Settings::default(),
        Some(path) => Settings::from_file(path).unwrap_or_else(|e| {
            problems.push(e);
            Settings::default()
        }),
    };
    let config = match flags.over(file).resolve() {
        Ok(c) if problems.is_empty() => c,
        Ok(_) => return refuse(&problems),
        Err(more) => {
            problems.extend(more);
            return refuse(&problems);
        }
    };
    init_logging(config.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("annal-serve")
        .build()?;
    runtime.block_on(async move {
        let server = Server::start(config).await?;
        // The handlers are in place before the line that says the server is up, so a signal
        // sent as soon as it is read stops the server cleanly instead of killing it.
        let mut signals = Signals::new()?;
        // Tests and scripts read this line to learn the port.
        println!("annal serving on {}", server.local_addr());
        signals.next().await;
        tracing::info!("stopping: finishing requests in flight (a second signal exits at once)");
        tokio::spawn(async move {
            signals.next().await;
            eprintln!("second signal: exiting now");
            std::process::exit(130);
        });
        server.shutdown().await?;
        tracing::info!("stopped cleanly");
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(std::process::ExitCode::SUCCESS)
}

fn refuse(problems: &[String]) -> anyhow::Result<std::process::ExitCode> {
    eprintln!(
        "error: the configuration has {} problem(s); not starting:",
        problems.len()
    );
    for p in problems {
        eprintln!("  - {p}");
    }
    Ok(std::process::ExitCode::from(2))
}

/// SIGTERM and SIGINT, listened for from the moment this is made.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
