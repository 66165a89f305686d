//! `annal serve`: configuration from flags, `ANNAL_*` variables and a TOML file, logging, and
//! the signals that stop the server.

use std::path::PathBuf;

use annal_server::config::{LogFormat, Settings, Sources, TextLayer};
use annal_server::Server;
use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};

/// Every setting of the server, as flags made from the server's list of settings: each
/// with its meaning, its default and its environment variable, so that `--help` shows what
/// the server uses. Flags win over variables, variables over the file (`--config`), the
/// file over the defaults.
#[derive(Debug, Default)]
pub struct ServeArgs {
    /// A TOML file of settings.
    config: Option<PathBuf>,
    /// The flags given, by setting name.
    flags: Vec<(String, Vec<String>)>,
}

impl Args for ServeArgs {
    fn augment_args(cmd: Command) -> Command {
        let defaults = Settings::defaults_shown();
        let mut cmd = cmd.arg(
            Arg::new("config")
                .long("config")
                .value_name("FILE")
                .env("ANNAL_CONFIG")
                .value_parser(clap::value_parser!(PathBuf))
                .help("A TOML file of settings (the names below, with underscores)"),
        );
        for about in Settings::ABOUT {
            let default = defaults
                .iter()
                .find(|(name, _)| *name == about.name)
                .and_then(|(_, shown)| shown.clone());
            let mut help = about.help.split_whitespace().collect::<Vec<_>>().join(" ");
            if let Some(d) = default {
                help.push_str(&format!(" [default: {d}]"));
            }
            help.push_str(&format!(
                " [env: ANNAL_{}]",
                about.name.to_ascii_uppercase()
            ));
            let mut arg = Arg::new(about.name)
                .long(about.flag)
                .value_name(about.value)
                .help(help);
            if about.repeats {
                arg = arg.action(ArgAction::Append);
            }
            cmd = cmd.arg(arg);
        }
        cmd
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for ServeArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut flags = Vec::new();
        for about in Settings::ABOUT {
            if let Some(values) = matches.get_many::<String>(about.name) {
                flags.push((about.name.to_string(), values.cloned().collect()));
            }
        }
        Ok(ServeArgs {
            config: matches.get_one::<PathBuf>("config").cloned(),
            flags,
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
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
    let sources = Sources {
        flags: TextLayer {
            origin: "command-line flag",
            values: args.flags,
            problems: Vec::new(),
        },
        environment: TextLayer::environment(std::env::vars_os()),
        file: args.config,
    };
    let config = match sources.load() {
        Ok(c) => c,
        Err(problems) => return refuse(&problems),
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
