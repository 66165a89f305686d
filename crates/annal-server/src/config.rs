//! The server's configuration: [`Settings`], every setting with its default and its
//! meaning (written once, in the `settings!` list below), and the validated [`Config`].
//!
//! Settings come in four layers, highest first: command-line flags, `ANNAL_*` environment
//! variables (the setting's name in capitals: `ANNAL_MAX_CONNECTIONS`), a TOML file, and the
//! defaults. The layers are merged by figment; [`Sources::load`] reads each setting on its
//! own and checks them all, so that a server with a bad configuration refuses to start with
//! the whole list of problems, each naming the setting and where its value came from.
//! `annal serve --help` shows every setting with its default, from the same list.
//!
//! With no token configured, authentication is off.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written the human way: `5s`, `250ms`, `1m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span(pub Duration);

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map(Span).map_err(|e| {
            serde::de::Error::custom(format!(
                "'{text}' is not a duration like '5s' or '250ms' ({e})"
            ))
        })
    }
}

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        humantime::format_duration(self.0).fmt(f)
    }
}

/// A list of bearer tokens: a TOML array or one string, each string holding one token or
/// several separated by commas (as an environment variable gives them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Tokens(pub Vec<String>);

impl<'de> Deserialize<'de> for Tokens {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Given {
            One(String),
            Many(Vec<String>),
        }
        let given = match Given::deserialize(d)? {
            Given::One(text) => vec![text],
            Given::Many(list) => list,
        };
        Ok(Tokens(
            given
                .iter()
                .flat_map(|text| text.split(','))
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect(),
        ))
    }
}

impl std::fmt::Display for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

/// How a setting's default reads in `--help` (`None`: none is shown).
pub trait ShowDefault {
    fn show(&self) -> Option<String>;
}

macro_rules! show_by_display {
    ($($t:ty),*) => {$(
        impl ShowDefault for $t {
            fn show(&self) -> Option<String> {
                Some(self.to_string())
            }
        }
    )*};
}
show_by_display!(u64, String, Span);

impl ShowDefault for PathBuf {
    fn show(&self) -> Option<String> {
        Some(self.display().to_string())
    }
}

impl<T: ShowDefault> ShowDefault for Option<T> {
    fn show(&self) -> Option<String> {
        self.as_ref().and_then(ShowDefault::show)
    }
}

impl ShowDefault for Tokens {
    fn show(&self) -> Option<String> {
        (!self.0.is_empty()).then(|| self.to_string())
    }
}

/// One setting, as `--help` and the environment layer need it.
#[derive(Debug, Clone, Copy)]
pub struct About {
    /// The name in the TOML file; upper-cased after `ANNAL_` in the environment.
    pub name: &'static str,
    /// The command-line flag, without its dashes.
    pub flag: &'static str,
    /// What the value is, for `--help`.
    pub value: &'static str,
    /// What it does.
    pub help: &'static str,
    /// True when the flag may be given more than once (its values make a list).
    pub repeats: bool,
}

/// Defines [`Settings`] (each field with its default and its meaning), its `Default`, the
/// list of [`About`]s, and the reading of each setting on its own from the merged layers.
macro_rules! settings {
    ($(
        $(#[doc = $doc:literal])+
        $name:ident: $ty:ty = $default:expr, flag $flag:literal, value $value:literal $(, $repeats:ident)?;
    )*) => {
        /// Every setting of the server, with its default.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct Settings {
            $( $(#[doc = $doc])+ pub $name: $ty, )*
        }

        impl Default for Settings {
            fn default() -> Self {
                Settings { $( $name: $default, )* }
            }
        }

        impl Settings {
            /// Every setting, in the order `--help` shows them.
            pub const ABOUT: &'static [About] = &[$(About {
                name: stringify!($name),
                flag: $flag,
                value: $value,
                help: concat!($($doc),+),
                repeats: settings!(@repeats $($repeats)?),
            }),*];

            /// Each setting's default as `--help` shows it, by name.
            pub fn defaults_shown() -> Vec<(&'static str, Option<String>)> {
                let d = Settings::default();
                vec![$( (stringify!($name), ShowDefault::show(&d.$name)) ),*]
            }

            /// Reads each setting on its own from the merged layers, so that every bad value
            /// is reported, not only the first; a bad one keeps its default.
            fn extract_each(figment: &Figment, problems: &mut Vec<String>) -> Settings {
                let d = Settings::default();
                Settings {$(
                    $name: match figment.extract_inner_lossy::<$ty>(stringify!($name)) {
                        Ok(v) => v,
                        Err(e) => {
                            problems.push(describe(stringify!($name), e));
                            d.$name
                        }
                    },
                )*}
            }
        }
    };
    (@repeats repeats) => { true };
    (@repeats) => { false };
}

settings! {
    /// The store folder.
    data: PathBuf = PathBuf::from("./annal-data"), flag "data", value "DIR";
    /// The address for gRPC and HTTP, one port.
    listen: String = "127.0.0.1:2113".into(), flag "listen", value "HOST:PORT";
    /// `text` or `json` log lines on standard error (RUST_LOG sets the level).
    log_format: String = "text".into(), flag "log-format", value "FORMAT";
    /// TLS certificate chain (PEM); needs the key.
    tls_cert: Option<PathBuf> = None, flag "tls-cert", value "FILE";
    /// TLS private key (PEM); needs the certificate.
    tls_key: Option<PathBuf> = None, flag "tls-key", value "FILE";
    /// A bearer token that may read (repeat the flag, or comma-separate in the variable;
    /// prefer the variable or the file: every local user can see a process's flags).
    read_tokens: Tokens = Tokens::default(), flag "read-token", value "TOKEN", repeats;
    /// A bearer token that may read and append (repeat the flag, or comma-separate in the
    /// variable; prefer the variable or the file).
    write_tokens: Tokens = Tokens::default(), flag "write-token", value "TOKEN", repeats;
    /// Open connections at most; a new one beyond them closes the one idle the longest, or
    /// is closed at once when every one is busy.
    max_connections: u64 = 1024, flag "max-connections", value "N";
    /// Concurrent HTTP/2 requests, or framed appends in flight, per connection.
    max_streams_per_connection: u64 = 256, flag "max-streams-per-connection", value "N";
    /// Live subscriptions at most (gRPC and SSE); more are refused.
    max_subscriptions: u64 = 1024, flag "max-subscriptions", value "N";
    /// Streamed reads at once (gRPC and HTTP); more are refused.
    max_reads: u64 = 256, flag "max-reads", value "N";
    /// Consumer groups at most; creating more is refused.
    max_groups: u64 = 256, flag "max-groups", value "N";
    /// Bytes of appends received and processed at once; more wait (at least twice
    /// max_append_bytes and 1 MiB, room for one base64 JSON append).
    max_inflight_append_bytes: u64 = 256 << 20, flag "max-inflight-append-bytes", value "BYTES";
    /// Bytes of read and subscription answers waiting for their clients, all together, and
    /// 1 MiB for each read or subscription open; when they run short, a client holding more
    /// than its share is stopped (it resumes from its last position), and a new one is
    /// refused while there is no room for it.
    max_answer_bytes: u64 = 1 << 30, flag "max-answer-bytes", value "BYTES";
    /// The largest event, in bytes.
    max_event_bytes: u64 = annal_core::validate::DEFAULT_MAX_EVENT_SIZE as u64, flag "max-event-bytes", value "BYTES";
    /// The largest append request, in bytes.
    max_append_bytes: u64 = 64 << 20, flag "max-append-bytes", value "BYTES";
    /// Bytes of stream heads blocks the store caches from its heads files (the heads
    /// changed since the last checkpoint are in memory besides).
    head_cache_bytes: u64 = 64 << 20, flag "head-cache-bytes", value "BYTES";
    /// Bytes the Bloom filter over the event ids of many index runs may take; the runs it
    /// leaves out answer for their ids from their own filters, read from disk when large.
    id_filter_bytes: u64 = 128 << 20, flag "id-filter-bytes", value "BYTES";
    /// Events per streamed batch (and at most about 4 MiB).
    read_batch_events: u64 = 2048, flag "read-batch-events", value "N";
    /// Batches queued per subscriber before it is paused.
    subscription_buffer: u64 = 8, flag "subscription-buffer", value "N";
    /// Heartbeat interval of idle subscriptions.
    heartbeat: Span = Span(Duration::from_secs(5)), flag "heartbeat", value "DURATION";
    /// How long a shutdown waits for requests in flight.
    shutdown_grace: Span = Span(Duration::from_secs(30)), flag "shutdown-grace", value "DURATION";
    /// How long a new connection has to send its first bytes, or to finish its TLS
    /// handshake; with tokens required, to make its first authenticated request.
    handshake_timeout: Span = Span(Duration::from_secs(10)), flag "handshake-timeout", value "DURATION";
    /// How long an HTTP/1.1 client has to send a request's headers.
    header_timeout: Span = Span(Duration::from_secs(10)), flag "header-timeout", value "DURATION";
    /// How long a connection may stay open with no request in flight. With tokens
    /// required, a connection must make an authenticated request within handshake_timeout.
    idle_timeout: Span = Span(Duration::from_secs(60)), flag "idle-timeout", value "DURATION";
    /// How long a framed client has to say Hello after its preface.
    hello_timeout: Span = Span(Duration::from_secs(10)), flag "hello-timeout", value "DURATION";
    /// How long an append's body (HTTP or gRPC, or a framed append's payload) may take
    /// beyond one second per body_min_rate bytes received; a slower body is dropped.
    body_timeout: Span = Span(Duration::from_secs(10)), flag "body-timeout", value "DURATION";
    /// The slowest rate, in bytes per second, at which an append's body may keep arriving
    /// once body_timeout is spent.
    body_min_rate: u64 = 64 << 10, flag "body-min-rate", value "BYTES";
    /// How long an answer may wait for its client to take any of it: a read (or a
    /// connection) whose client takes nothing for this long is stopped, giving back its
    /// slot.
    write_timeout: Span = Span(Duration::from_secs(30)), flag "write-timeout", value "DURATION";
    /// How long the answers still queued when a framed connection ends may take to be read.
    answer_timeout: Span = Span(Duration::from_secs(10)), flag "answer-timeout", value "DURATION";
    /// How often a quiet HTTP/2 connection is pinged.
    ping_interval: Span = Span(Duration::from_secs(30)), flag "ping-interval", value "DURATION";
    /// How long an answer to a ping may take before the connection is closed.
    ping_timeout: Span = Span(Duration::from_secs(20)), flag "ping-timeout", value "DURATION";
}

/// A problem with one setting, in words: figment's message names where the value came from.
fn describe(name: &str, e: figment::Error) -> String {
    let from = match &e.metadata {
        Some(m) => match &m.source {
            Some(source) => format!(" (from {} {source})", m.name),
            None => format!(" (from {})", m.name),
        },
        None => String::new(),
    };
    use figment::error::{Actual, Kind};
    let what = match &e.kind {
        Kind::InvalidType(Actual::Str(text), expected)
        | Kind::InvalidValue(Actual::Str(text), expected)
            if expected.contains("u64") =>
        {
            format!("'{text}' is not a whole number")
        }
        Kind::Message(message) => message.clone(),
        other => other.to_string(),
    };
    format!("{name}: {what}{from}")
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where the TLS certificate chain and private key are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Limits that keep memory bounded under load, and how long a client may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_streams_per_connection: u32,
    pub max_subscriptions: usize,
    pub max_reads: usize,
    pub max_groups: usize,
    pub max_inflight_append_bytes: usize,
    pub max_answer_bytes: usize,
    pub max_event_bytes: usize,
    pub max_append_bytes: usize,
    pub head_cache_bytes: usize,
    pub id_filter_bytes: u64,
    pub read_batch_events: usize,
    pub subscription_buffer: usize,
    pub heartbeat: Duration,
    pub shutdown_grace: Duration,
    pub handshake_timeout: Duration,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub hello_timeout: Duration,
    pub body_timeout: Duration,
    pub body_min_rate: u64,
    pub write_timeout: Duration,
    pub answer_timeout: Duration,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        let mut problems = Vec::new();
        let limits = Settings::default().limits(&mut problems);
        debug_assert!(problems.is_empty(), "{problems:?}");
        limits
    }
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub data: PathBuf,
    pub listen: SocketAddr,
    pub log_format: LogFormat,
    pub tls: Option<TlsFiles>,
    pub read_tokens: Vec<String>,
    pub write_tokens: Vec<String>,
    pub limits: Limits,
}

impl Config {
    /// The defaults with a store folder and a listen address: what tests start.
    pub fn new(data: impl Into<PathBuf>, listen: SocketAddr) -> Config {
        Config {
            data: data.into(),
            listen,
            log_format: LogFormat::Text,
            tls: None,
            read_tokens: Vec::new(),
            write_tokens: Vec::new(),
            limits: Limits::default(),
        }
    }

    /// True when requests must carry a token.
    pub fn auth_enabled(&self) -> bool {
        !self.read_tokens.is_empty() || !self.write_tokens.is_empty()
    }
}

/// A layer of settings given as text, one value (or several, for a list) per setting name:
/// the command-line flags, or the `ANNAL_*` environment. Values are read as the setting's
/// type when it is extracted (`5` as a number for a count, as text for a token).
#[derive(Debug, Clone, Default)]
pub struct TextLayer {
    /// Where the values came from, for messages: "command-line flag", ...
    pub origin: &'static str,
    pub values: Vec<(String, Vec<String>)>,
    /// Values that could not be read as text, one message each.
    pub problems: Vec<String>,
}

impl TextLayer {
    /// The `ANNAL_*` variables of the settings, from `vars` (the environment as the
    /// operating system gives it: other variables need not be text).
    pub fn environment(
        vars: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
    ) -> TextLayer {
        let mut values = Vec::new();
        let mut problems = Vec::new();
        for (key, value) in vars {
            let Some(name) = key.to_str().and_then(|k| k.strip_prefix("ANNAL_")) else {
                continue;
            };
            let name = name.to_ascii_lowercase();
            if !Settings::ABOUT.iter().any(|a| a.name == name) {
                continue;
            }
            match value.into_string() {
                Ok(value) => values.push((name, vec![value])),
                Err(value) => problems.push(format!(
                    "environment variable {key:?} is not valid UTF-8: {value:?}",
                    key = key.to_string_lossy()
                )),
            }
        }
        TextLayer {
            origin: "environment variable",
            values,
            problems,
        }
    }
}

impl Provider for TextLayer {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.origin)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        for (name, values) in &self.values {
            let repeats = Settings::ABOUT.iter().any(|a| a.name == name && a.repeats);
            let value = match values.as_slice() {
                [one] if !repeats => Value::from(one.clone()),
                many => Value::from(many.to_vec()),
            };
            dict.insert(name.clone(), value);
        }
        Ok(Profile::Default.collect(dict))
    }
}

/// Where settings come from, highest layer first.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub flags: TextLayer,
    pub environment: TextLayer,
    /// A TOML file of settings.
    pub file: Option<PathBuf>,
}

impl Sources {
    /// Merges the layers over the defaults, reads every setting and checks it: the
    /// configuration, or every problem found.
    pub fn load(&self) -> Result<Config, Vec<String>> {
        let mut problems = [&self.flags, &self.environment]
            .iter()
            .flat_map(|layer| layer.problems.iter().cloned())
            .collect::<Vec<_>>();
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = &self.file {
            // Read and parsed here first, so that a file that cannot be used is one problem,
            // not one for every setting.
            match std::fs::read_to_string(path).map(|t| t.parse::<toml::Table>()) {
                Ok(Ok(_)) => figment = figment.merge(Toml::file_exact(path)),
                Ok(Err(e)) => problems.push(format!(
                    "the config file {} is not valid TOML: {}",
                    path.display(),
                    e.to_string().trim_end()
                )),
                Err(e) => problems.push(format!(
                    "cannot read the config file {}: {e}",
                    path.display()
                )),
            }
        }
        let figment = figment
            .merge(self.environment.clone())
            .merge(self.flags.clone());
        match figment.data() {
            Ok(data) => {
                for key in data.values().flat_map(|dict| dict.keys()) {
                    if !Settings::ABOUT.iter().any(|a| a.name == *key) {
                        problems.push(unknown(&figment, key));
                    }
                }
            }
            Err(e) => problems.push(e.to_string()),
        }
        let settings = Settings::extract_each(&figment, &mut problems);
        match settings.resolve() {
            Ok(config) if problems.is_empty() => Ok(config),
            Ok(_) => Err(problems),
            Err(more) => {
                problems.extend(more);
                Err(problems)
            }
        }
    }
}

/// The problem of a setting no one knows.
fn unknown(figment: &Figment, key: &str) -> String {
    let from = figment
        .find_metadata(key)
        .map(|m| match &m.source {
            Some(source) => format!(" (in {} {source})", m.name),
            None => format!(" (in {})", m.name),
        })
        .unwrap_or_default();
    format!("{key}: there is no such setting{from}")
}

impl Settings {
    /// Reads a TOML settings file alone over the defaults (for tools and tests).
    pub fn from_file(path: &Path) -> Result<Config, Vec<String>> {
        Sources {
            file: Some(path.to_path_buf()),
            ..Sources::default()
        }
        .load()
    }

    /// The limits these settings give, with a problem for each one out of its range.
    fn limits(&self, problems: &mut Vec<String>) -> Limits {
        let d = Settings::default();
        let mut count = |name: &str, n: u64, default: u64, max: u64| -> usize {
            if n == 0 {
                problems.push(format!("{name}: must be at least 1"));
                default as usize
            } else if n > max {
                problems.push(format!("{name}: {n} is over the maximum of {max}"));
                default as usize
            } else {
                n as usize
            }
        };
        let max_connections = count(
            "max_connections",
            self.max_connections,
            d.max_connections,
            1 << 20,
        );
        let max_streams_per_connection = count(
            "max_streams_per_connection",
            self.max_streams_per_connection,
            d.max_streams_per_connection,
            1 << 16,
        ) as u32;
        let max_subscriptions = count(
            "max_subscriptions",
            self.max_subscriptions,
            d.max_subscriptions,
            1 << 20,
        );
        let max_reads = count("max_reads", self.max_reads, d.max_reads, 1 << 16);
        let max_groups = count("max_groups", self.max_groups, d.max_groups, 1 << 16);
        let max_event_bytes = count(
            "max_event_bytes",
            self.max_event_bytes,
            d.max_event_bytes,
            3 << 30,
        );
        let max_append_bytes = count(
            "max_append_bytes",
            self.max_append_bytes,
            d.max_append_bytes,
            3 << 30,
        );
        let head_cache_bytes = count(
            "head_cache_bytes",
            self.head_cache_bytes,
            d.head_cache_bytes,
            1 << 40,
        );
        let id_filter_bytes = count(
            "id_filter_bytes",
            self.id_filter_bytes,
            d.id_filter_bytes,
            1 << 40,
        ) as u64;
        let max_inflight_append_bytes = count(
            "max_inflight_append_bytes",
            self.max_inflight_append_bytes,
            d.max_inflight_append_bytes,
            1 << 40,
        );
        let max_answer_bytes = count(
            "max_answer_bytes",
            self.max_answer_bytes,
            d.max_answer_bytes,
            1 << 40,
        );
        let read_batch_events = count(
            "read_batch_events",
            self.read_batch_events,
            d.read_batch_events,
            100_000,
        );
        let subscription_buffer = count(
            "subscription_buffer",
            self.subscription_buffer,
            d.subscription_buffer,
            1024,
        );
        let body_min_rate = count(
            "body_min_rate",
            self.body_min_rate,
            d.body_min_rate,
            1 << 40,
        );
        if max_event_bytes > max_append_bytes {
            problems.push(format!(
                "max_event_bytes: {max_event_bytes} is over max_append_bytes ({max_append_bytes}); an event that size could never be appended"
            ));
        }
        let room = max_append_bytes.saturating_mul(2).saturating_add(1 << 20);
        if room > max_inflight_append_bytes {
            problems.push(format!(
                "max_inflight_append_bytes: {max_inflight_append_bytes} is below {room}, twice max_append_bytes ({max_append_bytes}) and 1 MiB; the largest append, sent as base64 JSON, could never be received"
            ));
        }
        let mut duration = |name: &str, span: Span, default: Span| -> Duration {
            if span.0.is_zero() {
                problems.push(format!("{name}: must be longer than zero"));
                default.0
            } else if span.0 > Duration::from_secs(3600) {
                problems.push(format!("{name}: '{span}' is longer than the maximum of 1h"));
                default.0
            } else {
                span.0
            }
        };
        Limits {
            max_connections,
            max_streams_per_connection,
            max_subscriptions,
            max_reads,
            max_groups,
            max_inflight_append_bytes,
            max_answer_bytes,
            max_event_bytes,
            max_append_bytes,
            head_cache_bytes,
            id_filter_bytes,
            read_batch_events,
            subscription_buffer,
            heartbeat: duration("heartbeat", self.heartbeat, d.heartbeat),
            shutdown_grace: duration("shutdown_grace", self.shutdown_grace, d.shutdown_grace),
            handshake_timeout: duration(
                "handshake_timeout",
                self.handshake_timeout,
                d.handshake_timeout,
            ),
            header_timeout: duration("header_timeout", self.header_timeout, d.header_timeout),
            idle_timeout: duration("idle_timeout", self.idle_timeout, d.idle_timeout),
            hello_timeout: duration("hello_timeout", self.hello_timeout, d.hello_timeout),
            body_timeout: duration("body_timeout", self.body_timeout, d.body_timeout),
            body_min_rate: body_min_rate as u64,
            write_timeout: duration("write_timeout", self.write_timeout, d.write_timeout),
            answer_timeout: duration("answer_timeout", self.answer_timeout, d.answer_timeout),
            ping_interval: duration("ping_interval", self.ping_interval, d.ping_interval),
            ping_timeout: duration("ping_timeout", self.ping_timeout, d.ping_timeout),
        }
    }

    /// Checks every setting and the ones that depend on each other: the configuration, or
    /// every problem found.
    pub fn resolve(self) -> Result<Config, Vec<String>> {
        let mut problems = Vec::new();
        let d = Settings::default();
        let limits = self.limits(&mut problems);
        let listen = match self.listen.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                problems.push(format!(
                    "listen: '{}' is not an address of the form HOST:PORT with an IP host (e.g. {})",
                    self.listen, d.listen
                ));
                None
            }
        };
        let data = self.data;
        if data.as_os_str().is_empty() {
            problems.push("data: the store folder must not be empty".into());
        } else if data.exists() && !data.is_dir() {
            problems.push(format!(
                "data: {} exists and is not a folder",
                data.display()
            ));
        }
        let log_format = match self.log_format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                problems.push(format!(
                    "log_format: '{other}' is neither 'text' nor 'json'"
                ));
                LogFormat::Text
            }
        };
        let tls = match (self.tls_cert, self.tls_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                for (name, p) in [("tls_cert", &cert), ("tls_key", &key)] {
                    if !p.is_file() {
                        problems.push(format!("{name}: {} is not a readable file", p.display()));
                    }
                }
                Some(TlsFiles { cert, key })
            }
            (Some(_), None) => {
                problems.push("tls_key: missing; tls_cert needs a private key".into());
                None
            }
            (None, Some(_)) => {
                problems.push("tls_cert: missing; tls_key needs a certificate".into());
                None
            }
        };
        let mut tokens = |name: &str, list: Tokens| -> Vec<String> {
            for t in &list.0 {
                if t.len() < 16 {
                    problems.push(format!(
                        "{name}: a token of {} characters is too short to be secret (at least 16)",
                        t.len()
                    ));
                } else if !t.chars().all(|c| c.is_ascii_graphic()) {
                    problems.push(format!(
                        "{name}: tokens may hold only visible ASCII characters"
                    ));
                }
            }
            list.0
        };
        let read_tokens = tokens("read_tokens", self.read_tokens);
        let write_tokens = tokens("write_tokens", self.write_tokens);

        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Config {
            data,
            listen: listen.expect("checked above"),
            log_format,
            tls,
            read_tokens,
            write_tokens,
            limits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(origin: &'static str, values: &[(&str, &str)]) -> TextLayer {
        TextLayer {
            origin,
            values: values
                .iter()
                .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
                .collect(),
            problems: Vec::new(),
        }
    }

    fn env(vars: &[(&str, &str)]) -> TextLayer {
        TextLayer::environment(vars.iter().map(|(k, v)| (k.into(), v.into())))
    }

    #[test]
    fn an_environment_value_that_is_not_text_is_refused_and_others_are_ignored() {
        use std::os::unix::ffi::OsStringExt;
        let bad = || std::ffi::OsString::from_vec(b"/data/\xff".to_vec());
        let sources = Sources {
            environment: TextLayer::environment([
                ("ANNAL_DATA".into(), bad()),
                ("LANG".into(), bad()),
                (bad(), "x".into()),
            ]),
            ..Sources::default()
        };
        let problems = sources.load().unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("ANNAL_DATA") && problems[0].contains("not valid UTF-8"),
            "{problems:?}"
        );
    }

    #[test]
    fn nothing_set_gives_the_defaults() {
        let c = Sources::default().load().unwrap();
        let d = Settings::default();
        assert_eq!(c.listen, d.listen.parse().unwrap());
        assert_eq!(c.data, d.data);
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.limits.max_connections as u64, d.max_connections);
        assert!(!c.auth_enabled());
    }

    #[test]
    fn higher_layers_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("annal.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:1\"\ndata = \"/from/file\"\nheartbeat = \"1s\"\nmax_reads = 7\n",
        )
        .unwrap();
        let sources = Sources {
            flags: text("command-line flag", &[("listen", "127.0.0.1:2")]),
            environment: env(&[
                ("ANNAL_LISTEN", "127.0.0.1:3"),
                ("ANNAL_MAX_READS", "9"),
                ("ANNAL_HEAD_CACHE_BYTES", "1048576"),
                ("ANNAL_SERVER", "not a setting"),
                ("HOME", "/elsewhere"),
            ]),
            file: Some(path),
        };
        let c = sources.load().unwrap();
        assert_eq!(c.listen.port(), 2);
        assert_eq!(c.limits.max_reads, 9);
        assert_eq!(c.limits.head_cache_bytes, 1 << 20);
        assert_eq!(c.data, PathBuf::from("/from/file"));
        assert_eq!(c.limits.heartbeat, Duration::from_secs(1));
    }

    #[test]
    fn tokens_come_as_a_list_or_comma_separated() {
        let sources = Sources {
            environment: env(&[("ANNAL_WRITE_TOKENS", "aaaaaaaaaaaaaaaa,1234567890123456")]),
            flags: TextLayer {
                origin: "command-line flag",
                values: vec![(
                    "read_tokens".into(),
                    vec!["rrrrrrrrrrrrrrrr".into(), "9999999999999999".into()],
                )],
                problems: Vec::new(),
            },
            file: None,
        };
        let c = sources.load().unwrap();
        assert_eq!(c.write_tokens, ["aaaaaaaaaaaaaaaa", "1234567890123456"]);
        assert_eq!(c.read_tokens, ["rrrrrrrrrrrrrrrr", "9999999999999999"]);
    }

    #[test]
    fn every_problem_is_reported_together_with_where_it_came_from() {
        let sources = Sources {
            flags: text(
                "command-line flag",
                &[
                    ("listen", "nowhere"),
                    ("log_format", "xml"),
                    ("tls_cert", "/no/such/cert.pem"),
                    ("write_tokens", "short"),
                    ("max_subscriptions", "0"),
                    ("heartbeat", "soon"),
                ],
            ),
            environment: env(&[("ANNAL_MAX_READS", "many")]),
            file: None,
        };
        let problems = sources.load().unwrap_err();
        let all = problems.join("\n");
        for needle in [
            "listen: 'nowhere'",
            "log_format: 'xml'",
            "tls_key: missing",
            "write_tokens: a token of 5 characters",
            "max_subscriptions: must be at least 1",
            "heartbeat: ",
            "'soon' is not a duration",
            "max_reads: ",
            "environment variable",
        ] {
            assert!(all.contains(needle), "missing '{needle}' in:\n{all}");
        }
        assert_eq!(problems.len(), 7, "{all}");
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("annal.toml");
        std::fs::write(&path, "listn = \"127.0.0.1:1\"\n").unwrap();
        let e = Settings::from_file(&path).unwrap_err().join("\n");
        assert!(e.contains("listn: there is no such setting"), "{e}");
        assert!(e.contains("annal.toml"), "{e}");
    }

    #[test]
    fn the_defaults_are_shown_for_every_setting_that_has_one() {
        let shown = Settings::defaults_shown();
        assert_eq!(shown.len(), Settings::ABOUT.len());
        let of = |name: &str| shown.iter().find(|(n, _)| *n == name).unwrap().1.clone();
        assert_eq!(of("listen").as_deref(), Some("127.0.0.1:2113"));
        assert_eq!(of("heartbeat").as_deref(), Some("5s"));
        assert_eq!(of("max_connections").as_deref(), Some("1024"));
        assert_eq!(of("tls_cert"), None);
        assert_eq!(of("write_tokens"), None);
    }
}
